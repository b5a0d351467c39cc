"""A procedural demo dataset that needs no download, plus writing samples as a dataset folder.

Each image is rendered from its own seeded generator (``seed``, index, kind), so the dataset is
identical on every machine and a smaller ``n`` gives a prefix of a larger one. To keep the task
from being trivial: textured, smoothly shaded backgrounds; objects whose colour contrast varies
from strong to faint; soft (blurred) edges in the image while the mask stays hard; a low-contrast
background-coloured distractor shape in half of the images; pixel noise; occlusion between objects.

* ``binary``: 1-3 objects (rotated ellipses or random star-shaped polygons), all class 1.
* ``multiclass``: 3 classes told apart by shape and colour family — 1 = reddish ellipses,
  2 = greenish polygons, 3 = bluish elongated bars; each image holds a random non-empty subset.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from qtt_ray.data.errors import DataError
from qtt_ray.data.sample import Sample

DEMO_KINDS: dict[str, int] = {"binary": 1, "multiclass": 3}  # kind -> number of classes
DEMO_SOURCES: dict[str, str] = {"demo": "binary", "demo-multiclass": "multiclass"}
_CLASS_COLOURS = {1: (200.0, 70.0, 60.0), 2: (70.0, 170.0, 80.0), 3: (60.0, 90.0, 200.0)}
_MIN_SIZE = 32


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int, channels: int
) -> np.ndarray:
    """(height, width, channels) noise with structure at about max(height, width) / cells px."""
    grid = rng.normal(size=(channels, cells, cells)).astype(np.float32)
    planes = [
        np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BICUBIC))
        for plane in grid
    ]
    return np.stack(planes, axis=2)


def _texture(
    rng: np.random.Generator, height: int, width: int, colour: np.ndarray, strength: float
) -> np.ndarray:
    """A colour field with blotches, a faint stripe pattern and a shading gradient."""
    scale = float(max(height, width))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / scale
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(0.04, 0.15) * 160.0 / scale  # stripes of similar pixel width
    stripes = np.sin(2.0 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    gradient = (xx - 0.5) * rng.uniform(-40, 40) + (yy - 0.5) * rng.uniform(-40, 40)
    blotches = _smooth_noise(rng, height, width, int(rng.integers(4, 10)), 3) * strength
    fine = _smooth_noise(rng, height, width, max(int(scale) // 6, 4), 1) * (strength * 0.5)
    shading = (stripes * (strength * 0.4) + gradient)[:, :, None]
    return colour.astype(np.float32) + blotches + fine + shading


def _ellipse(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[tuple]:
    angle = rng.uniform(0.0, np.pi)
    axes = radius * np.array([1.0, rng.uniform(0.45, 1.0)])
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    points = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
    return _placed(points, angle, centre)


def _polygon(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[tuple]:
    count = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, size=count))
    radii = radius * rng.uniform(0.55, 1.0, size=count)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return _placed(points, 0.0, centre)


def _bar(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[tuple]:
    half_width = radius * rng.uniform(0.2, 0.35)
    points = np.array([[-radius, -half_width], [radius, -half_width],
                       [radius, half_width], [-radius, half_width]])
    return _placed(points, rng.uniform(0.0, np.pi), centre)


def _placed(points: np.ndarray, angle: float, centre: np.ndarray) -> list[tuple]:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T + centre
    return [(float(x), float(y)) for x, y in moved]


_SHAPES = {1: _ellipse, 2: _polygon, 3: _bar}


def _paint(image: np.ndarray, polygon: list[tuple], texture_of) -> np.ndarray:
    """Blend a textured polygon into ``image`` with soft edges; returns its hard mask."""
    size = image.shape[0]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=255)
    hard = np.asarray(canvas) > 127
    soft = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.9)), dtype=np.float32) / 255.0
    rows, columns = np.flatnonzero(soft.any(axis=1)), np.flatnonzero(soft.any(axis=0))
    if rows.size:  # texture only the polygon's bounding box: a third of the cost
        box = np.s_[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        alpha = soft[box][:, :, None]
        patch = texture_of(rows[-1] + 1 - rows[0], columns[-1] + 1 - columns[0])
        image[box] = alpha * patch + (1.0 - alpha) * image[box]
    return hard


def _render(kind: str, index: int, size: int, rng: np.random.Generator) -> Sample:
    background_colour = rng.uniform(60, 190, size=3)
    image = _texture(rng, size, size, background_colour, strength=rng.uniform(8, 25))
    mask = np.zeros((size, size), dtype=np.uint8)

    def centre() -> np.ndarray:
        return rng.uniform(0.15 * size, 0.85 * size, size=2)

    if rng.random() < 0.5:  # faint distractor first, so objects are never hidden by it
        near = background_colour + rng.normal(0.0, 12.0, size=3)
        polygon = _SHAPES[int(rng.integers(1, 4))](rng, centre(), rng.uniform(0.08, 0.2) * size)
        _paint(image, polygon, lambda h, w: _texture(rng, h, w, near, 10.0))

    objects: list[int] = []
    if kind == "binary":
        objects = [1] * int(rng.integers(1, 4))
    else:
        present = [c for c in (1, 2, 3) if rng.random() < 0.6] or [int(rng.integers(1, 4))]
        for class_id in present:
            objects += [class_id] * int(rng.integers(1, 3))
        rng.shuffle(objects)
    for class_id in objects:
        shape = class_id if kind == "multiclass" else int(rng.integers(1, 3))
        polygon = _SHAPES[shape](rng, centre(), rng.uniform(0.08, 0.24) * size)
        if kind == "multiclass":
            colour = np.asarray(_CLASS_COLOURS[class_id]) + rng.normal(0.0, 20.0, size=3)
        else:
            direction = rng.normal(size=3)
            contrast = rng.uniform(30.0, 100.0)
            colour = background_colour + direction / np.linalg.norm(direction) * contrast
        strength = rng.uniform(6, 18)
        hard = _paint(image, polygon, lambda h, w, c=colour, s=strength: _texture(rng, h, w, c, s))
        mask[hard] = class_id

    image = image + rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Sample(stem=f"{kind}_{index:04d}", image=pixels, mask=mask)


def make_demo_dataset(
    kind: str = "binary", n: int = 120, size: int = 160, seed: int = 1234
) -> list[Sample]:
    """``n`` deterministic ``size`` x ``size`` samples of the ``binary`` or ``multiclass`` demo."""
    if kind not in DEMO_KINDS:
        raise DataError(f"demo kind {kind!r} is unknown: use one of {sorted(DEMO_KINDS)}")
    if n < 1:
        raise DataError(f"demo n={n} must be at least 1")
    if size < _MIN_SIZE:
        raise DataError(f"demo size={size} must be at least {_MIN_SIZE} pixels")
    return [
        Sample(stem=sample.stem, image=sample.image.copy(), mask=sample.mask.copy())
        for sample in _rendered(kind, n, size, seed)
    ]


@functools.lru_cache(maxsize=4)
def _rendered(kind: str, n: int, size: int, seed: int) -> tuple[Sample, ...]:
    """Rendering costs about a second; tests and trials in one process reuse it (callers get
    copies, so the cached arrays never change)."""
    kind_code = list(DEMO_KINDS).index(kind)
    return tuple(
        _render(kind, index, size, np.random.default_rng([seed, kind_code, index]))
        for index in range(n)
    )


def write_dataset_folder(samples: Sequence[Sample], root: Path) -> Path:
    """Write ``samples`` as ``root/images/<stem>.png`` + ``root/masks/<stem>.png``; returns root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for sample in samples:
        Image.fromarray(sample.image).save(root / "images" / f"{sample.stem}.png")
        Image.fromarray(sample.mask).save(root / "masks" / f"{sample.stem}.png")
    return root
