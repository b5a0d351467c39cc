"""Reading dataset folders: every shared dataset loads, and each kind of bad input is caught."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qtt_ray.data import DataError, Sample, load_dataset
from qtt_ray.data.image_io import read_mask

SHARED_DATASETS = (
    "camvid",
    "ccp_human_parsing",
    "crackforest_cracks",
    "cxr_covid_anatomy",
    "cxr_covid_lungs",
    "cxr_covid_opacity",
    "drive_retina_vessels",
    "kvasir_polyp",
    "monuseg_nuclei",
    "person_removebg",
    "soybean_rust_leaf",
)
EXPECTED_CLASSES = {"camvid": 11, "ccp_human_parsing": 14, "cxr_covid_anatomy": 4}
GRAYSCALE = {"cxr_covid_anatomy", "cxr_covid_lungs", "cxr_covid_opacity"}


def _image(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(height: int = 24, width: int = 32, label: int = 1, dtype: type = np.uint8) -> np.ndarray:
    mask = np.zeros((height, width), dtype=dtype)
    mask[4:12, 6:20] = label
    return mask


def _write(root: Path, stem: str, image: Image.Image | None, mask: Image.Image | None,
           image_suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if image is not None:
        image.save(root / "images" / f"{stem}{image_suffix}")
    if mask is not None:
        mask.save(root / "masks" / f"{stem}.png")


def _good_folder(root: Path, count: int = 6, label: int = 1) -> Path:
    for i in range(count):
        mask = Image.fromarray(_mask(label=label))
        _write(root, f"s{i:02d}", Image.fromarray(_image(seed=i)), mask)
    return root


# --- the real shared datasets -------------------------------------------------------------------


@pytest.mark.parametrize("name", SHARED_DATASETS)
def test_every_shared_dataset_loads(shared_dir: Path, name: str) -> None:
    dataset = load_dataset(shared_dir / "data" / name, num_images=20, seed=3)
    assert (len(dataset.train), len(dataset.val)) == (16, 4)
    # a rare class that only the 4 validation images hold is warned about (and still evaluated)
    assert dataset.name == name
    assert [w for w in dataset.warnings if "only in validation images" not in w] == []
    assert dataset.num_classes == EXPECTED_CLASSES.get(name, 1)
    features = dataset.meta_features
    assert features["num_classes"] == dataset.num_classes
    assert features["num_channels"] == (1 if name in GRAYSCALE else 3)
    assert features["num_samples"] >= 20 and 200 <= features["height"] <= 512
    for sample in dataset.samples:
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        assert sample.mask.shape == sample.image.shape[:2]
        assert 0 < sample.mask.max() <= dataset.num_classes


def test_human_parsing_reads_masks_not_masks_fine(shared_dir: Path) -> None:
    root = shared_dir / "data" / "ccp_human_parsing"
    dataset = load_dataset(root, num_images=4, seed=0)
    sample = dataset.train[0]
    expected = np.asarray(Image.open(root / "masks" / f"{sample.stem}.png"))
    assert np.array_equal(sample.mask, expected)


# --- formats that must be accepted ----------------------------------------------------------------


def test_binary_255_masks_become_class_one(tmp_path: Path) -> None:
    _good_folder(tmp_path, label=255)
    dataset = load_dataset(tmp_path, num_images=6)
    assert dataset.num_classes == 1
    for sample in dataset.samples:
        assert set(np.unique(sample.mask)) == {0, 1}


def test_grayscale_rgba_and_la_images_become_rgb(tmp_path: Path) -> None:
    rgb = _image()
    gray = rgb[:, :, 0]
    _write(tmp_path, "gray", Image.fromarray(gray), Image.fromarray(_mask()))
    _write(tmp_path, "rgba", Image.fromarray(np.dstack([rgb, np.zeros_like(gray)])),
           Image.fromarray(_mask()))
    _write(tmp_path, "la", Image.fromarray(np.dstack([gray, gray])).convert("LA"),
           Image.fromarray(_mask()), image_suffix=".png")
    _write(tmp_path, "jpeg", Image.fromarray(rgb), Image.fromarray(_mask()), image_suffix=".jpeg")
    dataset = load_dataset(tmp_path, num_images=4)
    by_stem = {sample.stem: sample.image for sample in dataset.samples}
    assert np.array_equal(by_stem["gray"], np.dstack([gray, gray, gray]))
    assert np.array_equal(by_stem["rgba"], rgb)  # alpha 0 dropped, not composited
    assert np.array_equal(by_stem["la"][:, :, 2], gray)
    assert dataset.meta_features["num_channels"] == 3  # mixed folder counts as colour


def test_all_grayscale_folder_has_one_channel(tmp_path: Path) -> None:
    for i in range(3):
        gray = Image.fromarray(_image(seed=i)[:, :, 0])
        _write(tmp_path, f"g{i}", gray, Image.fromarray(_mask()))
    assert load_dataset(tmp_path, num_images=3).meta_features["num_channels"] == 1


def test_palette_and_16_bit_masks_are_class_indices(tmp_path: Path) -> None:
    palette = Image.fromarray(_mask(label=2)).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    _write(tmp_path, "pal", Image.fromarray(_image()), palette)
    sixteen = Image.fromarray(_mask(label=3).astype(np.uint16))
    _write(tmp_path, "deep", Image.fromarray(_image(seed=1)), sixteen)
    assert Image.open(tmp_path / "masks" / "deep.png").mode.startswith("I")
    dataset = load_dataset(tmp_path, num_images=2)
    assert dataset.num_classes == 3
    labels = {sample.stem: set(np.unique(sample.mask)) for sample in dataset.samples}
    assert labels == {"pal": {0, 2}, "deep": {0, 3}}


def test_num_classes_is_the_max_label_of_the_whole_folder(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=8)
    _write(tmp_path, "s99", Image.fromarray(_image()), Image.fromarray(_mask(label=5)))
    for seed in range(4):
        assert load_dataset(tmp_path, num_images=2, seed=seed).num_classes == 5


# --- recoverable problems: warnings, logged and collected ----------------------------------------


def test_unmatched_pairs_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    _good_folder(tmp_path, count=4)
    _write(tmp_path, "lonely_image", Image.fromarray(_image()), None)
    _write(tmp_path, "lonely_mask", None, Image.fromarray(_mask()))
    with caplog.at_level(logging.WARNING, logger="qtt_ray.data"):
        dataset = load_dataset(tmp_path, num_images=10)
    assert len(dataset.samples) == 4
    pairing = [w for w in dataset.warnings if "without a mask" in w]
    assert len(pairing) == 1
    assert "1 image(s)" in pairing[0] and "1 mask(s)" in pairing[0]
    assert "lonely_image.png" in pairing[0]
    assert any("without a mask" in record.getMessage() for record in caplog.records)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=4)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    _write(tmp_path, "broken", None, Image.fromarray(_mask()))
    jpeg = tmp_path / "images" / "cut.jpg"
    Image.fromarray(_image(seed=9)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # header fine, pixel data truncated
    _write(tmp_path, "cut", None, Image.fromarray(_mask()))
    dataset = load_dataset(tmp_path, num_images=10)
    assert sorted(s.stem for s in dataset.samples) == ["s00", "s01", "s02", "s03"]
    assert any("broken.jpg" in w for w in dataset.warnings)
    assert any("cut.jpg" in w for w in dataset.warnings)
    assert dataset.meta_features["num_samples"] == 4


def test_corrupt_mask_is_skipped_with_a_warning(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=3)
    _write(tmp_path, "badmask", Image.fromarray(_image()), None)
    (tmp_path / "masks" / "badmask.png").write_bytes(b"\x89PNG garbage")
    dataset = load_dataset(tmp_path, num_images=10)
    assert len(dataset.samples) == 3
    assert any("badmask.png" in w for w in dataset.warnings)


def test_sparse_labels_are_reported(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=3, label=40)  # gray levels rather than class indices?
    dataset = load_dataset(tmp_path, num_images=3)
    assert dataset.num_classes == 40
    assert any("only labels [40] of 1..40" in w for w in dataset.warnings)


def test_empty_masks_are_kept_counted_and_reported(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=4)
    _write(tmp_path, "empty", Image.fromarray(_image()), Image.fromarray(_mask(label=0)))
    dataset = load_dataset(tmp_path, num_images=5)
    assert "empty" in {sample.stem for sample in dataset.samples}
    assert dataset.meta_features["num_samples"] == 5
    assert dataset.meta_features["empty_mask_fraction"] == pytest.approx(0.2)
    assert any("1 of 5 masks are empty" in w for w in dataset.warnings)


def test_more_images_requested_than_available_uses_all(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=5)
    dataset = load_dataset(tmp_path, num_images=100)
    assert len(dataset.samples) == 5
    assert any("num_images=100" in w and "using all 5" in w for w in dataset.warnings)


# --- errors: DataError naming the file or option -------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile is a file, not a folder"):
        load_dataset(tmp_path / "afile")


def test_data_warnings_reach_no_last_resort_handler(tmp_path: Path) -> None:
    """Without logging configured (a plain CLI process; pytest installs its own handlers),
    a warning is kept for the CLI to print once, not also written bare by logging."""
    import subprocess
    import sys

    _good_folder(tmp_path, count=4)
    _write(tmp_path, "lonely_image", Image.fromarray(_image()), None)
    code = ("import sys; from qtt_ray.data import load_dataset; "
            "d = load_dataset(sys.argv[1], num_images=10); print(len(d.warnings))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], check=True)
    assert int(done.stdout) >= 1 and "without a mask" not in done.stderr


def test_missing_masks_subfolder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="masks"):
        load_dataset(tmp_path)


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"no images in .*images"):
        load_dataset(tmp_path)


def test_no_pair_matches(tmp_path: Path) -> None:
    _write(tmp_path, "a", Image.fromarray(_image()), None)
    _write(tmp_path, "b", None, Image.fromarray(_mask()))
    with pytest.raises(DataError, match=r"none of 1 images .* 1 PNG masks .*a\.png"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("suffix", [".jpg", ".gif"])
def test_non_png_masks_are_named_in_the_error(tmp_path: Path, suffix: str) -> None:
    """JPEG masks, and GIF ones (DRIVE ships its vessel masks as GIF)."""
    _write(tmp_path, "a", Image.fromarray(_image()), None)
    Image.fromarray(_mask()).save(tmp_path / "masks" / f"a{suffix}")
    with pytest.raises(DataError, match=rf"not PNG, e\.g\. a\{suffix}: save masks as PNG"):
        load_dataset(tmp_path)


def test_size_mismatch(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=3)
    _write(tmp_path, "odd", Image.fromarray(_image()), Image.fromarray(_mask(20, 30)))
    with pytest.raises(DataError, match=r"odd\.png is 30x20 but image odd\.png is 32x24"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("values", [(0, 37, 255), (0, 1, 255)])
def test_mask_mixing_255_with_labels(tmp_path: Path, values: tuple[int, ...]) -> None:
    _good_folder(tmp_path, count=3)
    mask = np.zeros((24, 32), np.uint8)
    for i, value in enumerate(values):
        mask[i * 5 : i * 5 + 5] = value
    _write(tmp_path, "aliased", Image.fromarray(_image()), Image.fromarray(mask))
    with pytest.raises(DataError, match=r"aliased\.png mixes 255.*map gray levels to 1\.\.K"):
        load_dataset(tmp_path)


def test_binary_255_masks_mixed_with_multiclass_masks(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=3, label=2)
    _write(tmp_path, "white", Image.fromarray(_image()), Image.fromarray(_mask(label=255)))
    with pytest.raises(DataError, match=r"white\.png uses 255"):
        load_dataset(tmp_path)


def test_colour_coded_rgb_mask(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=3)
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[4:12, 6:20] = (128, 64, 0)
    _write(tmp_path, "colour", Image.fromarray(_image()), Image.fromarray(colour))
    with pytest.raises(DataError, match=r"colour\.png is a colour \(RGB\) mask"):
        load_dataset(tmp_path)


def test_gray_stored_as_rgb_mask_is_accepted(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=2)
    gray = _mask(label=2)
    _write(tmp_path, "rgbgray", Image.fromarray(_image()), Image.fromarray(np.dstack([gray] * 3)))
    dataset = load_dataset(tmp_path, num_images=3)
    assert dataset.num_classes == 2


def test_more_than_255_classes(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=2)
    _write(tmp_path, "many", Image.fromarray(_image()),
           Image.fromarray(_mask(label=300, dtype=np.uint16)))
    with pytest.raises(DataError, match=r"many\.png holds values up to 300"):
        load_dataset(tmp_path)


def test_non_integer_float_mask(tmp_path: Path) -> None:
    # PNG cannot hold floats; a float TIFF reaches the mask reader only when called directly
    floats_path = tmp_path / "float.tif"
    Image.fromarray(_mask(dtype=np.float32) * 0.5).save(floats_path)
    with pytest.raises(DataError, match=r"float\.tif holds non-integer values"):
        read_mask(floats_path)


def test_all_masks_empty(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path, f"e{i}", Image.fromarray(_image()), Image.fromarray(_mask(label=0)))
    with pytest.raises(DataError, match="every mask is empty"):
        load_dataset(tmp_path)


def test_duplicate_stems(tmp_path: Path) -> None:
    _good_folder(tmp_path, count=2)
    Image.fromarray(_image()).save(tmp_path / "images" / "s00.jpg")
    with pytest.raises(DataError, match="share the stem 's00'"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("num_images", [1, 0, -3])
def test_num_images_below_two(tmp_path: Path, num_images: int) -> None:
    _good_folder(tmp_path, count=3)
    with pytest.raises(DataError, match=f"num_images={num_images}"):
        load_dataset(tmp_path, num_images=num_images)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_bad_val_fraction(tmp_path: Path, fraction: float) -> None:
    _good_folder(tmp_path, count=3)
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(tmp_path, val_fraction=fraction)


def test_sample_rejects_wrong_arrays() -> None:
    with pytest.raises(DataError, match="sample x: mask size"):
        Sample("x", _image(), _mask(10, 10))
    with pytest.raises(DataError, match="uint8"):
        Sample("y", _image().astype(np.float32), _mask())
