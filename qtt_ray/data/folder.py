"""Reading and validating a dataset folder: ``images/<stem>.<ext>`` + ``masks/<stem>.png``.

Scanning looks at every pair once (image header, full mask) because the class count K is the
maximum label over the WHOLE folder and because a bad mask should fail before any training starts;
only the subsampled images are decoded afterwards. Mask labels: 0 = background, 1..K classes; a
folder whose masks only hold 0 and 255 is binary and 255 reads as class 1.

Only the files directly inside ``images/`` and ``masks/`` count: subfolders are never entered, so
a symbolic link that loops back to a parent cannot make the scan hang; a looping or broken link in
place of a file is skipped with a warning. Images smaller than ``MIN_IMAGE_SIDE`` pixels a side
are refused (SAM2's image embedding has one cell per 16 input pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qtt_ray.data.errors import DataError, warn
from qtt_ray.data.image_io import (
    GRAYSCALE_MODES,
    CorruptFileError,
    read_header,
    read_image,
    read_mask,
    read_orientation,
)
from qtt_ray.data.sample import Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIX = ".png"
# masks that are named in the "save masks as PNG" hint: image formats, and GIF (DRIVE's own)
OTHER_MASK_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != MASK_SUFFIX) + (".gif", ".webp")
BINARY_WHITE = 255
MIN_IMAGE_SIDE = 16
_EXAMPLES = 3


@dataclass
class FolderScan:
    """What scanning a folder found: the usable pairs and the label facts of all masks."""

    root: Path
    pairs: dict[str, tuple[Path, Path]]  # stem -> (image file, mask file), sorted by stem
    num_classes: int
    num_channels: int  # 1 if every image is grayscale, else 3
    white_is_class_one: bool  # binary 0/255 masks
    empty_stems: set[str] = field(default_factory=set)


def files_by_stem(
    folder: Path, suffixes: Sequence[str], warnings: list[str] | None = None
) -> dict[str, Path]:
    """The files of ``folder`` (not its subfolders) ending in ``suffixes``, by stem; two files
    with one stem are an error, broken or looping symbolic links are skipped with a warning."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        raise DataError(
            f"cannot list {folder} ({error.strerror or error}): check that the folder exists and "
            "is readable (chmod u+rx)"
        ) from error
    broken = [p for p in entries if p.suffix.lower() in suffixes and p.is_symlink()
              and not p.exists()]
    if broken and warnings is not None:
        warn(
            warnings,
            f"{folder}: skipped {len(broken)} broken or looping symbolic link(s), e.g. "
            f"{broken[0].name}; point them at real files",
        )
    for path in entries:
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(
                f"{found[path.stem]} and {path.name} share the stem '{path.stem}': keep one file "
                "per stem"
            )
        found[path.stem] = path
    return found


def _require_dir(path: Path, what: str) -> None:
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{what} {path} is a broken or looping symbolic link: point it at a real folder"
        )
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(
            f"{what} {path} {problem}: a dataset folder holds images/<stem>.jpg|png and "
            "masks/<stem>.png (or use 'demo')"
        )


def _match_pairs(root: Path, warnings: list[str]) -> dict[str, tuple[Path, Path]]:
    _require_dir(root, "dataset folder")
    _require_dir(root / "images", "image folder")
    _require_dir(root / "masks", "mask folder")
    images = files_by_stem(root / "images", IMAGE_SUFFIXES, warnings)
    if not images:
        raise DataError(
            f"no images in {root / 'images'}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    masks = files_by_stem(root / "masks", (MASK_SUFFIX,), warnings)
    lossy = files_by_stem(root / "masks", OTHER_MASK_SUFFIXES)
    hint = (
        f" ({len(lossy)} mask file(s) are not PNG, e.g. {next(iter(lossy.values())).name}: "
        "save masks as PNG)" if lossy else ""
    )
    matched = sorted(images.keys() & masks.keys())
    no_mask = sorted(images.keys() - masks.keys())
    no_image = sorted(masks.keys() - images.keys())
    hint += _near_misses({s: images[s] for s in no_mask}, {s: masks[s] for s in no_image})
    if not matched:
        raise DataError(
            f"{root}: none of {len(images)} images has a mask of the same stem among "
            f"{len(masks)} PNG masks (e.g. {images[no_mask[0]].name} needs "
            f"masks/{no_mask[0]}{MASK_SUFFIX}){hint}"
        )
    if no_mask or no_image:
        warn(
            warnings,
            f"{root}: skipped {len(no_mask)} image(s) without a mask "
            f"{[images[s].name for s in no_mask[:_EXAMPLES]]} and {len(no_image)} mask(s) "
            f"without an image {[masks[s].name for s in no_image[:_EXAMPLES]]}; "
            f"using {len(matched)} pairs{hint}",
        )
    return {stem: (images[stem], masks[stem]) for stem in matched}


def _exif_note(image_file: Path, image_size: tuple[int, int], mask_size: tuple[int, int]) -> str:
    """Why an image and its mask may differ by a quarter turn: the image's EXIF orientation."""
    if mask_size != image_size[::-1]:
        return ""
    orientation = read_orientation(image_file)
    if orientation == 1:
        return ""
    return (
        f" upright (its EXIF orientation {orientation} turns the stored {mask_size[0]}x"
        f"{mask_size[1]} pixels, which the mask matches): masks must match the photo as viewers "
        "show it; save the photo upright without the EXIF orientation, or turn the mask"
    )


def _near_misses(images: dict[str, Path], masks: dict[str, Path]) -> str:
    """A hint naming masks that differ from an image's stem only by letter case or by keeping
    the image's extension (``a.jpg.png``): the pairing is exact, so say what to rename."""
    by_key: dict[str, Path] = {}
    for stem, path in masks.items():
        key = stem.casefold()
        for suffix in IMAGE_SUFFIXES:
            if key.endswith(suffix):
                key = key[: -len(suffix)]
                break
        by_key.setdefault(key, path)
    misses = [(images[stem], by_key[stem.casefold()]) for stem in sorted(images)
              if stem.casefold() in by_key]
    if not misses:
        return ""
    image, mask = misses[0]
    return (
        f" ({len(misses)} mask(s) nearly match an image, e.g. masks/{mask.name} for "
        f"{image.name}: rename each mask to the image's exact stem + .png, here "
        f"{image.stem}{MASK_SUFFIX})"
    )


def mask_labels(mask_file: Path, values: np.ndarray) -> set[int]:
    """Foreground labels of one mask; 255 beside other labels (anti-aliased edges, an ignore
    label) is refused, since it would silently become a class of its own."""
    counts = np.bincount(values.ravel(), minlength=256)
    labels = {int(v) for v in np.flatnonzero(counts)} - {0}
    if BINARY_WHITE in labels and len(labels) > 1:
        shown = sorted(labels)[:6]
        raise DataError(
            f"mask {mask_file} mixes 255 with labels {shown}: values must be class indices "
            "0..K (0/255 is accepted for binary masks only); map gray levels to 1..K (e.g. "
            "127 -> 1, 255 -> 2), or re-save without anti-aliasing or ignore labels"
        )
    return labels


def reads_white_as_class_one(labels_by_file: dict[Path, set[int]]) -> bool:
    """Whether a set of masks is binary 0/255 (255 then reads as class 1). One folder must use
    one encoding: 255 in some masks and class indices in others is refused, because no single
    reading gives both the same classes."""
    all_labels = set().union(*labels_by_file.values())
    binary = all_labels == {BINARY_WHITE}
    if BINARY_WHITE in all_labels and not binary:
        first = next(file for file, labels in labels_by_file.items() if BINARY_WHITE in labels)
        raise DataError(
            f"mask {first} uses 255 while other masks use labels "
            f"{sorted(all_labels - {BINARY_WHITE})[:6]}: use one encoding, class indices 0..K "
            "(0/255 only for binary datasets)"
        )
    return binary


def class_indices(mask: np.ndarray, binary_white: bool) -> np.ndarray:
    """A mask as class indices 0..K: binary 0/255 masks become 0/1."""
    return (mask == BINARY_WHITE).astype(np.uint8) if binary_white else mask


def check_image_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image below ``MIN_IMAGE_SIDE`` pixels a side (``size`` is width, height)."""
    if min(size) < MIN_IMAGE_SIDE:
        raise DataError(
            f"image {path} is {size[0]}x{size[1]} pixels, too small: every side needs at least "
            f"{MIN_IMAGE_SIDE} pixels; upscale it or leave it out"
        )


def scan_folder(root: Path, warnings: list[str]) -> FolderScan:
    """Pair, validate and label-check every image/mask of ``root``; skip corrupt files."""
    candidates = _match_pairs(root, warnings)
    pairs: dict[str, tuple[Path, Path]] = {}
    labels_by_stem: dict[str, set[int]] = {}
    modes: set[str] = set()
    first_error = ""
    for stem, (image_file, mask_file) in candidates.items():
        try:
            image_size, image_mode = read_header(image_file)
            check_image_size(image_file, image_size)
            mask_size, _ = read_header(mask_file)
            if image_size != mask_size:
                raise DataError(
                    f"mask {mask_file} is {mask_size[0]}x{mask_size[1]} but image "
                    f"{image_file.name} is {image_size[0]}x{image_size[1]}"
                    + (_exif_note(image_file, image_size, mask_size)
                       or ": masks must have their image's size")
                )
            labels_by_stem[stem] = mask_labels(mask_file, read_mask(mask_file))
        except CorruptFileError as error:
            warn(warnings, f"skipped unreadable or corrupt file {error}")
            first_error = first_error or str(error)
            continue
        pairs[stem] = (image_file, mask_file)
        modes.add(image_mode)
    if not pairs:
        raise DataError(
            f"{root}: all {len(candidates)} image/mask pairs are unreadable, e.g. {first_error}: "
            "re-export the files (or check their read permissions)"
        )

    all_labels = set().union(*labels_by_stem.values())
    binary = reads_white_as_class_one(
        {pairs[stem][1]: labels for stem, labels in labels_by_stem.items()}
    )
    num_classes = 1 if binary else max(all_labels, default=0)
    if num_classes == 0:
        raise DataError(f"{root}: every mask is empty (all 0): masks need foreground classes 1..K")
    if num_classes > 2 and len(all_labels) * 2 < num_classes:
        warn(
            warnings,
            f"{root}: masks use only labels {sorted(all_labels)[:10]} of 1..{num_classes}; "
            "are they class indices (not gray levels)?",
        )
    empty = {stem for stem, labels in labels_by_stem.items() if not labels}
    if empty:
        warn(
            warnings,
            f"{root}: {len(empty)} of {len(pairs)} masks are empty (no foreground), e.g. "
            f"{sorted(empty)[:_EXAMPLES]}; kept and counted, they give no box prompt so "
            "training and evaluation skip them",
        )
    num_channels = 1 if modes <= GRAYSCALE_MODES else 3
    return FolderScan(root, pairs, num_classes, num_channels, binary, empty)


def load_samples(
    scan: FolderScan, order: Sequence[str], count: int, warnings: list[str]
) -> tuple[list[Sample], list[str]]:
    """Decode the first ``count`` readable pairs of ``order``; returns them and the reasons of
    the pairs that turned out corrupt on decoding (skipped with a warning), so an error that
    follows can name a file."""
    samples: list[Sample] = []
    corrupt: list[str] = []
    for stem in order:
        if len(samples) == count:
            break
        image_file, mask_file = scan.pairs[stem]
        try:
            image, _ = read_image(image_file)
            mask = read_mask(mask_file)
        except CorruptFileError as error:
            warn(warnings, f"skipped unreadable or corrupt file {error}")
            corrupt.append(str(error))
            continue
        samples.append(Sample(stem=stem, image=image,
                              mask=class_indices(mask, scan.white_is_class_one)))
    return samples, corrupt
