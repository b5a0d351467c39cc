"""Reading one image or one mask file with Pillow into the arrays the data layer uses.

Images become (H, W, 3) uint8 RGB (grayscale replicated, alpha dropped). Masks become (H, W)
uint8 class indices; a mask that cannot hold class indices (a colour-coded RGB mask, negative,
fractional or > 255 values) raises ``DataError``. Decoding problems surface as ``CorruptFileError``
so the folder reader can skip that pair with a warning.

Huge files are refused, not skipped: an image above Pillow's ``Image.MAX_IMAGE_PIXELS`` (about
89 Mpx; Pillow itself only warns up to twice that, then calls it a decompression bomb) raises
``DataError`` naming the file and the fix. Downscaling on load would still have to decode the
whole picture first (PNG has no reduced decode), and SAM2 sees at most 1024 x 1024 anyway.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from qtt_ray.data.errors import DataError

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError)
_DOWNSCALE_HINT = "downscale it (e.g. to 4096 px on the longest side) or leave it out"


class CorruptFileError(Exception):
    """An image or mask file that Pillow cannot open or decode."""


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses oversized files with DataError (see the module docstring)
    and turns decoding failures into CorruptFileError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            handle = Image.open(path)
    except Image.DecompressionBombError as error:
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise DataError(
            f"{path} has more than {2 * limit} pixels (Pillow's decompression-bomb limit): "
            f"{_DOWNSCALE_HINT}"
        ) from error
    except _DECODE_ERRORS as error:
        raise CorruptFileError(f"{path}: {error}") from error
    with handle:
        width, height = handle.size
        max_pixels = Image.MAX_IMAGE_PIXELS
        if max_pixels is not None and width * height > max_pixels:
            raise DataError(
                f"{path} is {width}x{height} = {width * height} pixels, above the "
                f"{max_pixels}-pixel limit (Image.MAX_IMAGE_PIXELS): {_DOWNSCALE_HINT}"
            )
        try:
            yield handle
        except _DECODE_ERRORS as error:
            raise CorruptFileError(f"{path}: {error}") from error


def read_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` without decoding the pixels (cheap for every file)."""
    with _opened(path) as handle:
        return handle.size, handle.mode


def _decode(path: Path) -> Image.Image:
    with _opened(path) as handle:
        handle.load()
        return handle.copy()


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """The image as (H, W, 3) uint8 RGB and its source channel count (1 grayscale, 3 colour)."""
    picture = _decode(path)
    mode = picture.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(picture, dtype=np.float64)
        low, high = float(gray.min()), float(gray.max())
        if high > 255.0 or low < 0.0:  # high-bit-depth: stretch its range onto 8 bits
            gray = (gray - low) / max(high - low, 1e-12) * 255.0
        gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2), 1
    if mode in GRAYSCALE_MODES:  # "1", "L", "LA": alpha dropped
        gray8 = np.asarray(picture.getchannel(0).convert("L"), dtype=np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2), 1
    # RGB, RGBA (alpha dropped, not composited), P, CMYK, YCbCr, ...
    rgb = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb), 3


def read_mask(path: Path) -> np.ndarray:
    """The mask's raw class values as (H, W) uint8; values are checked, not yet remapped."""
    picture = _decode(path)
    mode = picture.mode
    if mode == "1":
        return np.asarray(picture, dtype=np.uint8)
    if mode in ("L", "P"):  # palette masks: the indices are the classes
        return np.asarray(picture, dtype=np.uint8)
    if mode in ("LA", "PA"):
        return np.asarray(picture.getchannel(0), dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        return _narrow_to_uint8(path, np.asarray(picture))
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(picture, dtype=np.uint8)[:, :, :3]
        if not (np.array_equal(rgb[:, :, 0], rgb[:, :, 1])
                and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])):
            raise DataError(
                f"mask {path} is a colour (RGB) mask with differing channels: store class "
                "indices 0..K in a single-channel (L or palette) PNG"
            )
        return np.ascontiguousarray(rgb[:, :, 0])
    raise DataError(
        f"mask {path} has unsupported mode {mode}: store class indices 0..K in an 8-bit "
        "single-channel (L or palette) PNG"
    )


def _narrow_to_uint8(path: Path, values: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit / float masks are accepted when every value is an integer in 0..255."""
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.rint(values))):
        raise DataError(
            f"mask {path} holds non-integer values: store integer class indices 0..K"
        )
    low, high = int(values.min()), int(values.max())
    if low < 0:
        raise DataError(f"mask {path} holds negative values ({low}): store class indices 0..K")
    if high > 255:
        raise DataError(
            f"mask {path} holds values up to {high}: more than 255 classes are not supported; "
            "store class indices 0..K with K <= 255 in an 8-bit PNG"
        )
    return values.astype(np.uint8)
