"""Files around ``python -m qtt_ray.predict``: finding the tuned adapter in a run folder, reading
the images, the boxes file and reference masks, and writing masks and overlays.

Boxes file: JSON ``{"<file name or stem>": [box, ...]}``; a box is ``[x0, y0, x1, y1]`` (class 1),
``[x0, y0, x1, y1, class_id]`` or ``{"box": [x0, y0, x1, y1], "class": class_id}`` (no other
keys; ``class`` may be left out for 1), in the ORIGINAL image's pixel coordinates with inclusive
corners (``x1`` is the last column inside), the convention of SAM2's ``mask_to_box`` and of the
boxes training derives from masks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from qtt_ray.data.errors import DataError, printable
from qtt_ray.data.folder import (
    IMAGE_SUFFIXES,
    MASK_SUFFIX,
    class_indices,
    files_by_stem,
    mask_labels,
    reads_white_as_class_one,
)
from qtt_ray.data.image_io import CorruptFileError, read_mask
from qtt_ray.model.adapter import META, WEIGHTS

BEST_ADAPTER = "best"  # where qtt_ray.tune exports the best configuration's adapter
BOXES_EXAMPLE = '{"image.png": [[x0, y0, x1, y1], [x0, y0, x1, y1, class_id]]}'
BOX_FORMS = ('[x0, y0, x1, y1], [x0, y0, x1, y1, class_id] or '
             '{"box": [x0, y0, x1, y1], "class": class_id}')
BOX_KEYS = frozenset({"box", "class"})  # the dict form's keys: anything else is a mistake
# class colours for masks shown on images: background transparent, then a qualitative palette
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0),
)
OVERLAY_ALPHA = 0.45


class PredictError(ValueError):
    """Bad input to predict: a run folder, images folder, boxes file or option (one line)."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(printable(message), *args)


@dataclass
class Prompt:
    """The box prompts of one image in original-image pixel coordinates."""

    boxes: np.ndarray  # (K, 4) float64 inclusive xyxy: the file's numbers, clipped to the image
    class_ids: list[int] = field(default_factory=list)


# -- inputs ------------------------------------------------------------------------------------
def find_adapter_dir(run: Path) -> Path:
    """The exported adapter of a run: ``run`` itself, ``run/best`` or results.json's
    ``extra["adapter"]``."""
    if not run.is_dir():
        raise PredictError(f"--run {run}: no such folder; pass the output folder of qtt_ray.tune")
    candidates = [run, run / BEST_ADAPTER]
    results = run / "results.json"
    if results.is_file():
        try:
            recorded = json.loads(results.read_text()).get("extra", {}).get("adapter")
        except (json.JSONDecodeError, AttributeError, OSError):
            recorded = None
        if isinstance(recorded, str):
            path = Path(recorded)
            candidates.append(path if path.is_absolute() else run / path)
    for folder in candidates:
        if (folder / META).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise PredictError(
        f"--run {run}: no tuned adapter ({META} + {WEIGHTS}) in it or in {run / BEST_ADAPTER}; "
        "pass the output folder of a finished qtt_ray.tune run (or the adapter folder itself)"
    )


def list_images(folder: Path) -> dict[str, Path]:
    """Images of ``folder`` (or of its ``images/`` subfolder, for a dataset folder) by stem."""
    if not folder.is_dir():
        raise PredictError(f"--images {folder}: no such folder; pass a folder of images")
    try:
        images = files_by_stem(folder, IMAGE_SUFFIXES)
        if not images and (folder / "images").is_dir():
            images = files_by_stem(folder / "images", IMAGE_SUFFIXES)
    except DataError as error:
        raise PredictError(f"--images: {error}") from error
    if not images:
        raise PredictError(
            f"--images {folder}: no images (files ending in {', '.join(IMAGE_SUFFIXES)})"
        )
    return images


def read_reference_masks(folder: Path, stems: list[str]) -> dict[str, np.ndarray]:
    """``<stem>.png`` class-index masks for the stems that have one; images without a mask are
    simply not evaluated. Labels follow the dataset loader's rules (``qtt_ray.data.folder``), so
    a folder that tuning refuses is refused here with the same message, and binary 0/255 masks
    read as 0/1 exactly as in training."""
    if not folder.is_dir():
        raise PredictError(f"--masks {folder}: no such folder; pass a folder of <stem>.png masks")
    try:
        files = files_by_stem(folder, (MASK_SUFFIX,))
    except DataError as error:
        raise PredictError(f"--masks: {error}") from error
    masks: dict[str, np.ndarray] = {}
    labels: dict[Path, set[int]] = {}
    try:
        for stem in sorted(set(stems) & files.keys()):  # sorted like the loader's scan
            masks[stem] = read_mask(files[stem])
            labels[files[stem]] = mask_labels(files[stem], masks[stem])
        binary = reads_white_as_class_one(labels)
    except CorruptFileError as error:
        raise PredictError(f"--masks: unreadable mask {error}") from error
    except DataError as error:
        raise PredictError(f"--masks: {error}") from error
    if not masks:
        raise PredictError(
            f"--masks {folder}: no <stem>.png mask for any of the {len(stems)} images; masks "
            "must share their image's stem"
        )
    return {stem: class_indices(masks[stem], binary) for stem in stems if stem in masks}


def read_boxes_file(path: Path, images: dict[str, Path], sizes: dict[str, tuple[int, int]]
                    ) -> dict[str, Prompt]:
    """The prompts of a boxes file (see the module docstring), clipped to each image;
    ``sizes`` holds (height, width) per stem."""
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except FileNotFoundError as error:
        raise PredictError(f"--boxes {path}: no such file") from error
    except _DuplicateKeyError as error:
        raise PredictError(
            f"--boxes {path}: the key {error.key!r} appears twice in one object; JSON keeps only "
            "the last, so merge the two lists of boxes into one"
        ) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PredictError(
            f"--boxes {path}: not readable JSON ({error}); expected {BOXES_EXAMPLE}"
        ) from error
    if not isinstance(data, dict):
        raise PredictError(f"--boxes {path}: the top level must be an object like {BOXES_EXAMPLE}")
    by_name = {file.name: stem for stem, file in images.items()}
    prompts: dict[str, Prompt] = {}
    key_of: dict[str, str] = {}
    for key, entries in data.items():
        stem = by_name.get(key, key if key in images else None)
        if stem is None:
            raise PredictError(
                f"--boxes {path}: {key!r} names no image in --images; use an image's file name "
                "or stem"
            )
        if stem in key_of:
            raise PredictError(
                f"--boxes {path}: {key_of[stem]!r} and {key!r} both name {images[stem].name}; "
                "merge their boxes under one key"
            )
        key_of[stem] = key
        where = f"--boxes {path}: {key!r}"
        if not isinstance(entries, list):
            raise PredictError(f"{where} must map to a list of boxes, e.g. {BOXES_EXAMPLE}")
        height, width = sizes[stem]
        prompts[stem] = parse_boxes(entries, where, height, width)
    return prompts


def parse_boxes(entries: list[Any], where: str, height: int, width: int) -> Prompt:
    """One image's boxes in any of the boxes file's forms, checked and clipped to the image;
    ``where`` starts each error message (the file and the image)."""
    parsed = [_parse_box(entry, f"{where}[{i}]", height, width) for i, entry in enumerate(entries)]
    return Prompt(
        boxes=np.array([box for box, _ in parsed], dtype=np.float64).reshape(-1, 4),
        class_ids=[class_id for _, class_id in parsed],
    )


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a repeated key that ``json`` would silently drop."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKeyError(key)
        data[key] = value
    return data


def _parse_box(entry: Any, where: str, height: int, width: int) -> tuple[list[float], int]:
    class_id: Any = 1
    if isinstance(entry, dict):
        unknown = sorted(str(key) for key in entry if key not in BOX_KEYS)
        if unknown or "box" not in entry:
            problem = f"unknown key {unknown[0]!r}" if unknown else "no 'box' key"
            raise PredictError(f"{where}: {problem} in {entry!r}; a box is {BOX_FORMS}")
        coords, class_id = entry["box"], entry.get("class", 1)
    elif isinstance(entry, list) and len(entry) == 5:
        coords, class_id = entry[:4], entry[4]
    else:
        coords = entry
    if not (isinstance(coords, list) and len(coords) == 4
            and all(_is_number(v) and math.isfinite(v) for v in coords)):
        raise PredictError(f"{where}: a box is 4 finite numbers [x0, y0, x1, y1], got {entry!r}")
    if not (_is_number(class_id) and float(class_id).is_integer() and 1 <= class_id <= 255):
        raise PredictError(f"{where}: class id {class_id!r} must be an integer in 1..255")
    x0, y0, x1, y1 = (float(v) for v in coords)
    if x1 < x0 or y1 < y0:
        raise PredictError(f"{where}: box {coords} has x1 < x0 or y1 < y0; write [x0, y0, x1, y1]")
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        raise PredictError(
            f"{where}: box {coords} lies outside the {width}x{height} image; coordinates are "
            "original-image pixels"
        )
    clipped = [min(max(x0, 0.0), width - 1), min(max(y0, 0.0), height - 1),
               min(max(x1, 0.0), width - 1), min(max(y1, 0.0), height - 1)]
    return clipped, int(class_id)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boxes_to_input(boxes: np.ndarray, height: int, width: int, image_size: int) -> np.ndarray:
    """Inclusive pixel boxes of an H x W image -> the S x S model input's pixel coordinates.

    Pixel centres map onto pixel centres (``(x + 0.5) * S / W - 0.5``), matching the pixel-centre
    nearest-neighbour resize that gives training its boxes; clipped to ``[0, S - 1]``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([image_size / width, image_size / height] * 2)
    mapped = (boxes + 0.5) * scale - 0.5
    return np.clip(mapped, 0.0, image_size - 1).astype(np.float32)


# -- outputs -----------------------------------------------------------------------------------
def colour_of(class_id: int) -> tuple[int, int, int]:
    return PALETTE[(int(class_id) - 1) % len(PALETTE)]


def colourise(mask: np.ndarray) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) uint8 picture: black background, one colour per class."""
    picture = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for class_id in np.unique(mask):
        if class_id:
            picture[mask == class_id] = colour_of(int(class_id))
    return picture


def boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another class: the outline of each region."""
    padded = np.pad(mask, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = ((centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
               | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:]))
    return differs & (mask > 0)


def overlay(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray | None = None,
            class_ids: list[int] | None = None, gray: bool = False) -> np.ndarray:
    """The image with the class map blended in, each region outlined in its full colour, and
    the box prompts drawn (uint8 RGB). ``gray`` dims the image to gray first, so that masks stay
    visible on objects of their own colour."""
    blended = image.astype(np.float32)
    if gray:
        luminance = blended @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        blended = np.repeat(luminance[:, :, None] * 0.7, 3, axis=2)
    colours = colourise(mask)
    foreground = mask > 0
    blended[foreground] = ((1.0 - OVERLAY_ALPHA) * blended[foreground]
                           + OVERLAY_ALPHA * colours[foreground].astype(np.float32))
    edges = boundary(mask)
    blended[edges] = colours[edges]
    picture = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if boxes is not None and len(boxes):
        draw = ImageDraw.Draw(picture)
        line = max(1, round(max(mask.shape) / 256))
        for i, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
            class_id = class_ids[i] if class_ids else 1
            draw.rectangle([float(v) for v in box], outline=colour_of(class_id), width=line)
    return np.asarray(picture)


def write_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
