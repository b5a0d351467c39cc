"""Bad input the data layer must survive: each case ends in a one-line DataError that names the
file and the fix, or loads with a warning. (Duplicate stems, palette/16-bit masks, LA images in a
mixed folder and ``num_images`` above the folder size are covered in test_data_folder.py.)"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plain_user import run_as_a_plain_user

from qtt_ray.data import DataError, load_dataset
from qtt_ray.data.errors import printable
from qtt_ray.data.folder import MIN_IMAGE_SIDE
from qtt_ray.data.split import seeded_order
from qtt_ray.model.evaluate import prompted_examples


def _pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def _mask(height: int = 24, width: int = 32, label: int = 1) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[4:12, 6:20] = label
    return mask


def _folder(root: Path, count: int = 4) -> Path:
    for i in range(count):
        image = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        _pair(root, f"s{i}", image, _mask())
    return root


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    message.encode("utf-8")  # printable on any UTF-8 terminal
    return message


# --- folders ----------------------------------------------------------------------------------


def test_empty_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="images/<stem>") as error:
        load_dataset(tmp_path)
    assert str(tmp_path / "images") in _one_line(error)


def test_empty_images_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images in .*expected files ending in"):
        load_dataset(tmp_path)


def test_unreadable_images_folder(tmp_path: Path) -> None:
    _folder(tmp_path)
    code = ("import sys\nfrom qtt_ray.data import DataError, load_dataset\ntry:\n"
            "    load_dataset(sys.argv[1])\nexcept DataError as error:\n"
            "    print(error, end='')\n    sys.exit(3)\n")
    (tmp_path / "images").chmod(0o000)
    try:
        done = run_as_a_plain_user(code, str(tmp_path))
    finally:
        (tmp_path / "images").chmod(0o755)
    assert done.returncode == 3, done.stderr[-2000:]  # a DataError, not a traceback
    assert re.fullmatch(r"cannot list \S*images \(Permission denied\): check that the folder "
                        r"exists and is readable \(chmod u\+rx\)", done.stdout), done.stdout


@pytest.mark.timeout(30)
def test_symlink_loops_neither_hang_nor_crash(tmp_path: Path) -> None:
    _folder(tmp_path)
    os.symlink("self.png", tmp_path / "images" / "self.png")  # a file link pointing at itself
    os.symlink("..", tmp_path / "images" / "parent")  # a folder loop: never entered
    os.symlink(tmp_path / "masks", tmp_path / "masks" / "again")
    dataset = load_dataset(tmp_path, num_images=4)
    assert len(dataset.samples) == 4
    assert any("looping symbolic link" in w and "self.png" in w for w in dataset.warnings)


def test_images_folder_that_is_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    os.symlink("images", tmp_path / "images")
    with pytest.raises(DataError, match="broken or looping symbolic link: point it at a real"):
        load_dataset(tmp_path)


# --- sizes ------------------------------------------------------------------------------------


def test_a_single_image_cannot_be_split(tmp_path: Path) -> None:
    _folder(tmp_path, count=1)
    with pytest.raises(DataError, match="only 1 usable .*at least 2 .*one to validate") as error:
        load_dataset(tmp_path)
    assert str(tmp_path) in _one_line(error)


def test_all_pairs_unreadable_names_a_file_and_its_problem(tmp_path: Path) -> None:
    """The warnings that named each file never reach the user when loading then fails: the
    error itself must say which file is bad and why."""
    _folder(tmp_path, count=3)
    for image in (tmp_path / "images").iterdir():
        image.write_bytes(b"")
    with pytest.raises(DataError, match="all 3 image/mask pairs are unreadable") as error:
        load_dataset(tmp_path)
    assert "s0.png: cannot identify image file" in _one_line(error)


def test_too_few_decodable_pairs_names_a_file_and_its_problem(tmp_path: Path) -> None:
    """Truncated files pass the header scan and fail only when decoded."""
    _folder(tmp_path, count=3)
    for image in sorted((tmp_path / "images").iterdir())[1:]:
        image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DataError, match="only 1 of 3 image/mask pairs decode") as error:
        load_dataset(tmp_path, num_images=3)
    message = _one_line(error)
    assert re.search(r"s[12]\.png: image file is truncated", message)


@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 40)])
def test_too_small_image_names_the_file_and_the_minimum(tmp_path: Path, size) -> None:
    _folder(tmp_path, count=3)
    height, width = size
    mask = np.ones((height, width), np.uint8)
    _pair(tmp_path, "tiny", np.zeros((height, width, 3), np.uint8), mask)
    with pytest.raises(DataError, match=f"at least {MIN_IMAGE_SIDE} pixels") as error:
        load_dataset(tmp_path)
    assert "tiny.png" in _one_line(error)
    assert _one_line(error).count("x") >= 1 and f"{width}x{height}" in str(error.value)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels but holds no pixel data: a decompression bomb as
    seen by the header, written in microseconds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_20000_px_image_is_refused_as_a_decompression_bomb(tmp_path: Path) -> None:
    _folder(tmp_path, count=3)
    _png_header_only(tmp_path / "images" / "huge.png", 20000, 20000)
    Image.fromarray(_mask()).save(tmp_path / "masks" / "huge.png")
    with pytest.raises(DataError, match="decompression-bomb limit.*downscale it") as error:
        load_dataset(tmp_path)
    assert "huge.png" in _one_line(error)


def test_image_above_the_pixel_limit_is_refused_not_just_warned(tmp_path: Path, monkeypatch):
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse already there."""
    _folder(tmp_path, count=3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 32 - 1)
    with pytest.raises(DataError, match=r"is 32x24 = 768 pixels, above the 767-pixel limit"):
        load_dataset(tmp_path)


# --- image and mask formats --------------------------------------------------------------------


def test_grayscale_with_alpha_counts_as_grayscale(tmp_path: Path) -> None:
    for i in range(3):
        gray = np.random.default_rng(i).integers(0, 256, (24, 32), dtype=np.uint8)
        la = Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), mode="LA")
        (tmp_path / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "masks").mkdir(parents=True, exist_ok=True)
        la.save(tmp_path / "images" / f"la{i}.png")
        Image.fromarray(_mask()).save(tmp_path / "masks" / f"la{i}.png")
    dataset = load_dataset(tmp_path, num_images=3)
    assert dataset.meta_features["num_channels"] == 1
    for sample in dataset.samples:  # the gray values, not the alpha, in all three channels
        assert np.array_equal(sample.image[:, :, 0], sample.image[:, :, 2])
        assert sample.image.max() > 7


def test_16_bit_grayscale_image_is_stretched_to_8_bits(tmp_path: Path) -> None:
    _folder(tmp_path, count=2)
    deep = np.linspace(0, 4000, 24 * 32).reshape(24, 32).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "images" / "deep.png")
    Image.fromarray(_mask()).save(tmp_path / "masks" / "deep.png")
    dataset = load_dataset(tmp_path, num_images=3)
    image = {s.stem: s.image for s in dataset.samples}["deep"]
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255


# --- classes ----------------------------------------------------------------------------------


def test_class_only_in_validation_is_warned_and_still_evaluated(tmp_path: Path) -> None:
    _folder(tmp_path, count=5)
    Image.fromarray(_mask(label=2)).save(tmp_path / "masks" / "s3.png")  # the only class-2 mask
    seed = next(s for s in range(100) if seeded_order([f"s{i}" for i in range(5)], s)[0] == "s3")
    dataset = load_dataset(tmp_path, num_images=5, seed=seed, val_fraction=0.2)
    assert [s.stem for s in dataset.val] == ["s3"]
    message = next(w for w in dataset.warnings if "only in validation" in w)
    assert "[2]" in message and "'s3'" in message and "--num-images" in message
    (example,) = prompted_examples(dataset.val, 64)
    assert example.class_ids.tolist() == [2]  # evaluated with its own box prompt


def test_no_unseen_class_warning_when_training_covers_all_classes(tmp_path: Path) -> None:
    _folder(tmp_path, count=5)
    dataset = load_dataset(tmp_path, num_images=5)
    assert not any("only in validation" in w for w in dataset.warnings)


# --- file names -------------------------------------------------------------------------------


def test_non_utf8_file_names_load_and_print(tmp_path: Path) -> None:
    _folder(tmp_path, count=2)
    images, masks = os.fsencode(tmp_path / "images"), os.fsencode(tmp_path / "masks")
    image = np.random.default_rng(9).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(images + b"/caf\xe9.png")  # Latin-1 bytes, invalid UTF-8
    Image.fromarray(_mask()).save(masks + b"/caf\xe9.png")
    Image.fromarray(image).save(images + b"/lonely\xff.png")  # no mask: warned by name
    dataset = load_dataset(tmp_path, num_images=3)
    assert os.fsencode("caf\udce9") in {os.fsencode(s.stem) for s in dataset.samples}
    lonely = next(w for w in dataset.warnings if "without a mask" in w)
    lonely.encode("utf-8")

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(images + b"/t\xffny.png")
    Image.fromarray(np.ones((2, 2), np.uint8)).save(masks + b"/t\xffny.png")
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert "t\\xffny.png" in _one_line(error)


def test_printable_escapes_undecodable_bytes_and_control_characters() -> None:
    assert printable("a\udcffb") == "a\\xffb"
    assert printable("line\nbreak\t.png") == "line\\nbreak\\t.png"
    assert printable("ünïcode ok") == "ünïcode ok"
    assert printable("\ud800") == "\\ud800"
