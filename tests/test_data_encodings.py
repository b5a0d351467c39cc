"""Image and mask encodings real domain datasets arrive in: phone photos with an EXIF
orientation, float and 16-bit images, 16-bit binary masks, cut-out masks whose shapes live in
the alpha channel, mask names that nearly match their image, and bad seeds or fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from qtt_ray.data import DataError, load_dataset
from qtt_ray.data.image_io import read_header, read_image, read_mask

ORIENTATION_TAG = 0x0112
ROTATE_90_CW = 6  # "the stored pixels must turn 90 degrees clockwise to show upright"


def _dirs(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _box_mask(height: int, width: int, label: int = 1) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[4 : height // 2, 6 : width // 2] = label
    return mask


def _save_oriented(image: np.ndarray, path: Path, orientation: int) -> None:
    picture = Image.fromarray(image)
    exif = picture.getexif()
    exif[ORIENTATION_TAG] = orientation
    picture.save(path, exif=exif)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_exif_rotated_photo_loads_upright_with_its_upright_mask(tmp_path: Path,
                                                                suffix: str) -> None:
    """A phone photo stored 48 wide x 32 tall with "rotate 90" shows 32 x 48; its annotation is
    drawn on what the tool shows, so the mask is 32 wide x 48 tall and must pair with it."""
    root = _dirs(tmp_path)
    for i in range(3):
        path = root / "images" / f"p{i}{suffix}"
        _save_oriented(_noise(32, 48, seed=i), path, ROTATE_90_CW)
        Image.fromarray(_box_mask(48, 32)).save(root / "masks" / f"p{i}.png")
    dataset = load_dataset(root, num_images=3)
    for sample in dataset.samples:
        upright = ImageOps.exif_transpose(Image.open(root / "images" / f"{sample.stem}{suffix}"))
        assert sample.image.shape == (48, 32, 3)
        np.testing.assert_array_equal(sample.image, np.asarray(upright.convert("RGB")))
    assert dataset.meta_features["height"] == 48 and dataset.meta_features["width"] == 32


def test_exif_rotation_of_a_square_photo_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    """A square photo gives no size mismatch to notice: the object must still land under its
    mask. Stored, the bright square is top-left; upright (turned clockwise) it is top-right,
    where the annotator drew it."""
    root = _dirs(tmp_path)
    stored = np.full((64, 64, 3), 20, np.uint8)
    stored[4:20, 4:20] = 235
    mask = np.zeros((64, 64), np.uint8)
    mask[4:20, 44:60] = 1
    for i in range(2):
        _save_oriented(stored, root / "images" / f"s{i}.png", ROTATE_90_CW)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    for sample in load_dataset(root, num_images=2).samples:
        brightness = sample.image.mean(axis=2)
        assert brightness[sample.mask == 1].mean() > 200
        assert brightness[sample.mask == 0].mean() < 40


def test_header_size_agrees_with_the_decoded_upright_image(tmp_path: Path) -> None:
    """``predict`` sizes its outputs and box files by the header: it must match the pixels."""
    path = tmp_path / "photo.jpg"
    _save_oriented(_noise(32, 48), path, ROTATE_90_CW)
    (width, height), _ = read_header(path)
    image, _ = read_image(path)
    assert (height, width) == image.shape[:2] == (48, 32)


def test_mask_matching_the_stored_not_the_upright_photo_names_the_exif_orientation(
    tmp_path: Path,
) -> None:
    root = _dirs(tmp_path)
    _save_oriented(_noise(32, 48), root / "images" / "p0.jpg", ROTATE_90_CW)
    Image.fromarray(_box_mask(32, 48)).save(root / "masks" / "p0.png")
    _save_oriented(_noise(32, 48), root / "images" / "p1.jpg", 1)
    Image.fromarray(_box_mask(32, 48)).save(root / "masks" / "p1.png")
    with pytest.raises(DataError, match="EXIF orientation 6") as error:
        load_dataset(root, num_images=2)
    message = _one_line(error)
    assert "p0.png" in message and "upright" in message


# --- high-bit-depth and float images ------------------------------------------------------------


def test_float_image_in_0_1_is_not_read_as_black(tmp_path: Path) -> None:
    """Float TIFFs (microscopy, remote sensing) usually hold 0..1: they must span 0..255."""
    values = np.linspace(0.0, 1.0, 32 * 48, dtype=np.float32).reshape(32, 48)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    image, channels = read_image(path)
    assert channels == 1
    assert image.min() == 0 and image.max() == 255
    np.testing.assert_array_equal(image[:, :, 0], np.rint(values * 255.0).astype(np.uint8))


def test_float_image_with_no_data_pixels_is_stretched_over_its_finite_values(
    tmp_path: Path,
) -> None:
    values = np.linspace(100.0, 1100.0, 32 * 48, dtype=np.float32).reshape(32, 48)
    values[0, :5] = np.nan
    values[1, :5] = np.inf
    path = tmp_path / "nodata.tif"
    Image.fromarray(values).save(path)
    with np.errstate(invalid="raise"):
        image, _ = read_image(path)
    assert image[0, :5].max() == 0 and image[1, :5].max() == 0
    assert image[0, 5, 0] == 0 and image[-1, -1, 0] == 255  # the finite range spans 0..255


# --- masks ---------------------------------------------------------------------------------------


def test_16_bit_binary_mask_reads_as_binary(tmp_path: Path) -> None:
    """ImageJ and ``skimage.img_as_uint`` save binary masks as 0/65535."""
    root = _dirs(tmp_path)
    for i in range(3):
        Image.fromarray(_noise(24, 32, seed=i)).save(root / "images" / f"s{i}.png")
        white = _box_mask(24, 32, label=1).astype(np.uint16) * 65535
        Image.fromarray(white).save(root / "masks" / f"s{i}.png")
    dataset = load_dataset(root, num_images=3)
    assert dataset.num_classes == 1
    for sample in dataset.samples:
        np.testing.assert_array_equal(sample.mask, _box_mask(24, 32, label=1))


def test_16_bit_mask_above_255_that_is_not_binary_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    values = _box_mask(24, 32).astype(np.uint16) * 65535
    values[0, 0] = 7
    Image.fromarray(values).save(path)
    with pytest.raises(DataError, match="up to 65535"):
        read_mask(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_mask_kept_only_in_the_alpha_channel_is_refused(tmp_path: Path, mode: str) -> None:
    """A cut-out (colour uniform, shape in transparency) read by colour would be empty."""
    root = _dirs(tmp_path)
    for i in range(3):
        Image.fromarray(_noise(24, 32, seed=i)).save(root / "images" / f"s{i}.png")
        alpha = _box_mask(24, 32, label=255)
        colour = np.zeros((24, 32, 3 if mode == "RGBA" else 1), np.uint8)
        pixels = np.concatenate([colour, alpha[:, :, None]], axis=2)
        Image.fromarray(pixels, mode).save(root / "masks" / f"s{i}.png")
    with pytest.raises(DataError, match="alpha") as error:
        load_dataset(root, num_images=3)
    assert "s0.png" in _one_line(error)


def test_gray_label_mask_with_a_transparent_background_still_loads(tmp_path: Path) -> None:
    """Alpha beside labels in the colour channels is only transparency: the labels count."""
    labels = _box_mask(24, 32, label=2)
    pixels = np.stack([labels, labels, labels, np.where(labels > 0, 255, 0)], axis=2)
    path = tmp_path / "m.png"
    Image.fromarray(pixels.astype(np.uint8), "RGBA").save(path)
    np.testing.assert_array_equal(read_mask(path), labels)


# --- mask names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_name", "mask_name"),
    [("IMG_0001.JPG", "img_0001.png"), ("a0.jpg", "a0.jpg.png")],
)
def test_mask_names_that_nearly_match_name_the_rename(tmp_path: Path, image_name: str,
                                                      mask_name: str) -> None:
    root = _dirs(tmp_path)
    Image.fromarray(_noise(24, 32)).save(root / "images" / image_name)
    Image.fromarray(_box_mask(24, 32)).save(root / "masks" / mask_name)
    with pytest.raises(DataError, match="nearly match") as error:
        load_dataset(root)
    message = _one_line(error)
    assert f"masks/{mask_name} for {image_name}" in message
    assert f"{Path(image_name).stem}.png" in message


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_bad_seed_is_a_data_error(seed: object) -> None:
    with pytest.raises(DataError, match="seed="):
        load_dataset("demo", num_images=4, seed=seed)  # type: ignore[arg-type]


def test_numpy_integer_seed_is_accepted() -> None:
    assert load_dataset("demo", num_images=4, seed=np.int64(3)).seed == 3


@pytest.mark.parametrize("fraction", ["0.2", None, True])
def test_non_numeric_val_fraction_is_a_data_error(fraction: object) -> None:
    with pytest.raises(DataError, match="val_fraction="):
        load_dataset("demo", num_images=4, val_fraction=fraction)  # type: ignore[arg-type]
