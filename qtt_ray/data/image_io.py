"""Reading one image or one mask file with Pillow into the arrays the data layer uses.

Images become (H, W, 3) uint8 RGB (grayscale replicated, alpha dropped). Masks become (H, W)
uint8 class indices; a mask that cannot hold class indices (a colour-coded RGB mask, negative,
fractional or > 255 values, shapes kept only in the alpha channel) raises ``DataError``; a 16-bit
binary mask (0/65535, as ImageJ or ``skimage.img_as_uint`` write it) reads like an 8-bit 0/255 one.
Decoding problems surface as ``CorruptFileError`` so the folder reader can skip that pair with a
warning.

An image's EXIF orientation is applied (size and pixels), as every photo viewer, browser,
annotation tool and OpenCV do: a phone photo stored sideways with "rotate 90" in its EXIF is
annotated upright, so its mask has the upright size. Masks are label arrays and are read as
stored. Float images whose values lie in 0..1 are scaled to 0..255; other high-bit-depth images
are stretched per image onto 8 bits (non-finite pixels, e.g. a no-data NaN, become 0).

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
from PIL import ExifTags, Image, UnidentifiedImageError

from qtt_ray.data.errors import DataError

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError)
_DOWNSCALE_HINT = "downscale it (e.g. to 4096 px on the longest side) or leave it out"
_SIXTEEN_BIT_WHITE = 65535
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})


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


def _orientation(handle: Image.Image) -> int:
    """The EXIF orientation (1 = upright) read from the header only: a PNG whose eXIf chunk
    follows the pixel data (against the PNG spec) counts as upright rather than being decoded
    here, so the header and the decoded image always agree. TIFFs count as upright: Pillow
    itself reports their upright size on opening and turns their pixels on loading."""
    if handle.format == "TIFF" or (handle.format == "PNG" and "exif" not in handle.info):
        return 1
    try:
        value = handle.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the image
        return 1
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def read_orientation(path: Path) -> int:
    """The image's EXIF orientation, 1..8 (1 = stored upright); for error messages."""
    with _opened(path) as handle:
        return _orientation(handle)


def read_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` without decoding the pixels (cheap for every file); the size
    is the upright one when the image's EXIF orientation turns it by 90 degrees."""
    with _opened(path) as handle:
        width, height = handle.size
        if _orientation(handle) in _SWAPS_SIDES:
            width, height = height, width
        return (width, height), handle.mode


def _decode(path: Path, upright: bool = False) -> Image.Image:
    with _opened(path) as handle:
        orientation = _orientation(handle) if upright else 1
        handle.load()
        if orientation in _ORIENTATIONS:
            return handle.transpose(_ORIENTATIONS[orientation])
        return handle.copy()


def _to_eight_bits(picture: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit or float grayscale picture as (H, W) uint8 (see the module docstring)."""
    gray = np.asarray(picture, dtype=np.float64)
    finite = np.isfinite(gray)
    if not finite.all():
        gray = np.where(finite, gray, 0.0)
    values = gray[finite]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if picture.mode == "F" and low >= 0.0 and high <= 1.0:  # a 0..1 float image
        gray = gray * 255.0
    elif high > 255.0 or low < 0.0:  # high-bit-depth: stretch its range onto 8 bits
        gray = (gray - low) / max(high - low, 1e-12) * 255.0
    gray = np.where(finite, gray, 0.0)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """The upright image as (H, W, 3) uint8 RGB and its source channel count (1 grayscale,
    3 colour)."""
    picture = _decode(path, upright=True)
    mode = picture.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray8 = _to_eight_bits(picture)
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
        values = np.asarray(picture.getchannel(0), dtype=np.uint8)
        _refuse_alpha_only(path, values, picture)
        return values
    if mode in _SIXTEEN_BIT_MODES:
        return _narrow_to_uint8(path, np.asarray(picture))
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(picture, dtype=np.uint8)[:, :, :3]
        _refuse_alpha_only(path, rgb, picture)
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


def _refuse_alpha_only(path: Path, colour: np.ndarray, picture: Image.Image) -> None:
    """A mask whose colour is one value everywhere while its alpha varies keeps its shapes in
    the transparency (a cut-out): read by colour it would be silently empty (or all one class)."""
    if "A" not in picture.getbands() or colour.size == 0 or colour.min() != colour.max():
        return
    alpha = np.asarray(picture.getchannel("A"))
    if alpha.min() != alpha.max():
        raise DataError(
            f"mask {path} keeps its shapes only in the alpha (transparency) channel, its colour "
            "is the same everywhere: store class indices 0..K in a single-channel (L or "
            "palette) PNG, e.g. 1 where alpha > 0"
        )


def _narrow_to_uint8(path: Path, values: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit / float masks are accepted when every value is an integer in 0..255, and
    a 16-bit binary mask (only 0 and 65535) reads as 0/255, the 8-bit binary encoding."""
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.rint(values))):
        raise DataError(
            f"mask {path} holds non-integer values: store integer class indices 0..K"
        )
    low, high = int(values.min()), int(values.max())
    if high == _SIXTEEN_BIT_WHITE and low >= 0 and np.all(
        (values == 0) | (values == _SIXTEEN_BIT_WHITE)
    ):
        return np.where(values == _SIXTEEN_BIT_WHITE, 255, 0).astype(np.uint8)
    if low < 0:
        raise DataError(f"mask {path} holds negative values ({low}): store class indices 0..K")
    if high > 255:
        raise DataError(
            f"mask {path} holds values up to {high}: more than 255 classes are not supported; "
            "store class indices 0..K with K <= 255 in an 8-bit PNG"
        )
    return values.astype(np.uint8)
