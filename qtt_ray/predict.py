"""``python -m qtt_ray.predict``: segment new images with a tuned run's adapter and box prompts.

    python -m qtt_ray.predict --run RUN --images DIR --out DIR [--boxes boxes.json | --masks DIR]
        [--checkpoint PATH]

The tuned LoRA + mask decoder are loaded onto the base SAM2 rebuilt from the adapter's ModelSpec
(same model, checkpoint and seed), so the reload reproduces the tuned model exactly. The base
checkpoint is needed: ``--checkpoint`` says where it is now if it moved (a hub model is also
looked up in the current Hugging Face cache); it must be the recorded file (size, SHA-256).
Prompts come from a boxes file (original-image pixels, see ``qtt_ray.predict_io``) or, for
evaluation, from reference masks: one tight box per class present, computed exactly as validation
does. Writes ``masks/<stem>.png`` (class values, original size), ``overlays/<stem>.png`` and
``predict.json``, whose boxes are original-image pixels: a boxes file's boxes as given (clipped to
the image), or the tight box of each prompted class in the reference mask.

IoU (with reference masks) is the training metric (``qtt_ray.model.metrics``) at the model's
input size, batched like validation, so predicting a run's validation images reproduces its
validation IoU; ``iou_full_res`` scores the masks as written, at the original size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from qtt_ray.cli import one_line, run_cli
from qtt_ray.data import Example, Sample, make_example
from qtt_ray.data.boxes import tight_box
from qtt_ray.data.errors import printable
from qtt_ray.data.example import preprocess_image, resize_mask
from qtt_ray.data.image_io import CorruptFileError, read_header, read_image
from qtt_ray.model.adapter import WEIGHTS, load_adapter
from qtt_ray.model.build import ModelError, ModelSpec, canonical_name
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.metrics import IoUAccumulator, semantic_prediction
from qtt_ray.predict_io import (
    PredictError,
    Prompt,
    boxes_to_input,
    find_adapter_dir,
    list_images,
    overlay,
    read_boxes_file,
    read_reference_masks,
    write_png,
)

SUMMARY = "predict.json"
DEFAULT_BATCH_SIZE = 4  # the FineTuner's default: same batches, bit-identical validation logits
PROG = "python -m qtt_ray.predict"


# -- the model side, shared with qtt_ray.pictures ------------------------------------------------
@torch.no_grad()
def example_logits(
    model: nn.Module, examples: Sequence[Example], device: str | torch.device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[torch.Tensor]:
    """(K, S, S) box logits on CPU per example (each needs K >= 1), batched like
    ``evaluate_model`` so the numbers match validation's bit for bit."""
    model.eval()
    out: list[torch.Tensor] = []
    step = max(1, int(batch_size))
    for first in range(0, len(examples), step):
        batch = collate(examples[first : first + step]).to(device)
        logits = box_logits(model, batch.images, batch.boxes, batch.box_image).float().cpu()
        owner = batch.box_image.cpu()
        out += [logits[owner == image] for image in range(batch.num_images)]
    return out


def semantic_map(logits: torch.Tensor, class_ids: torch.Tensor, size: tuple[int, int]
                 ) -> np.ndarray:
    """(H, W) uint8 class map at ``size`` from (K, S, S) logits: bilinear upsampling of the
    logits (as SAM2's predictor does), then the training metric's argmax rule."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return semantic_prediction(logits, class_ids).to(torch.uint8).numpy()


def predicted_masks(
    model: nn.Module, samples: Sequence[Sample], image_size: int,
    device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[np.ndarray]:
    """Class maps at each sample's original size, prompted by its ground truth's tight boxes
    (validation's prompts); a sample without foreground gets an empty map."""
    examples = [make_example(sample, image_size) for sample in samples]
    prompted = [e for e in examples if e.num_boxes > 0]
    logits = iter(example_logits(model, prompted, device, batch_size))
    return [
        semantic_map(next(logits), e.class_ids, s.mask.shape) if e.num_boxes
        else np.zeros(s.mask.shape, np.uint8)
        for s, e in zip(samples, examples, strict=True)
    ]


# -- the folder side -----------------------------------------------------------------------------
@dataclass
class Job:
    """One image to segment: its pixels, the prompts it got (in the model's input coordinates,
    and in the original image's for people) and, when given, its reference mask."""

    stem: str
    file: Path
    image: np.ndarray
    reference: np.ndarray | None
    example: Example | None  # None: no box prompt, nothing to segment
    boxes: np.ndarray  # (K, 4) original-image inclusive xyxy of example's K prompts

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PredictError("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise PredictError(f"--device {device!r}: use auto, cpu or cuda")
    return device


def check_adapter_model(adapter_dir: Path) -> ModelSpec:
    """Read the adapter's model description first, so a foreign or damaged one fails in one line
    before any network is built."""
    meta = adapter_dir / "adapter.json"
    try:
        spec = ModelSpec.from_json(json.loads(meta.read_text())["model_spec"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise PredictError(f"{meta}: unreadable adapter description ({error})") from error
    try:
        canonical_name(spec.name)
    except ModelError as error:
        raise PredictError(f"{meta}: {error}") from error
    return spec


def _load_job(stem: str, file: Path, reference: np.ndarray | None, prompt: Prompt | None,
              image_size: int) -> Job:
    try:
        (width, height), _ = read_header(file)
        image, _ = read_image(file)
    except CorruptFileError as error:
        raise PredictError(f"--images: unreadable image {error}") from error
    if reference is not None and reference.shape != image.shape[:2]:
        raise PredictError(
            f"--masks: the mask of {file.name} is {reference.shape[1]}x{reference.shape[0]} but "
            f"the image is {width}x{height}; masks must have their image's size"
        )
    boxes = np.zeros((0, 4)) if prompt is None else prompt.boxes  # as given, for people
    if prompt is None:  # prompts from the reference mask, exactly as validation makes them
        example = None
        if reference is not None:
            example = make_example(Sample(stem, image, reference), image_size)
            boxes = _tight_boxes(reference, example.class_ids)
    elif len(prompt.boxes) == 0:
        example = None
    else:
        target = (resize_mask(reference, image_size) if reference is not None
                  else np.zeros((image_size, image_size), np.uint8))
        class_ids = torch.tensor(prompt.class_ids, dtype=torch.int64)
        example = Example(
            image=preprocess_image(image, image_size),
            boxes=torch.from_numpy(boxes_to_input(prompt.boxes, height, width, image_size)),
            masks=torch.from_numpy(
                np.stack([target == c for c in prompt.class_ids]).astype(np.uint8)
            ),
            class_ids=class_ids,
        )
    if example is None or example.num_boxes == 0:
        return Job(stem, file, image, reference, None, np.zeros((0, 4)))
    return Job(stem, file, image, reference, example, boxes)


def _tight_boxes(reference: np.ndarray, class_ids: torch.Tensor) -> np.ndarray:
    """The tight original-image box of each prompted class: what the input-size prompt stands
    for, exact (mapping the input box back would be off by a fraction of a pixel). Every class
    of the resized mask is in the original, so each box exists."""
    boxes = [tight_box(reference == class_id) for class_id in class_ids.tolist()]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _json_box(box: np.ndarray) -> list[int | float]:
    """A box for predict.json: whole numbers as integers, so a file's box reads back as given."""
    return [int(v) if float(v).is_integer() else float(v) for v in box.tolist()]


def predict_folder(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    boxes: str | Path | None = None,
    masks: str | Path | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Segment every image of ``images`` with the tuned adapter of ``run``; returns the summary
    that is also written as ``out/predict.json``. ``checkpoint``: where the base checkpoint is
    now, when it moved since tuning."""
    start = time.perf_counter()
    if boxes is None and masks is None:
        raise PredictError("give --boxes boxes.json or --masks DIR: SAM2 needs box prompts")
    device = resolve_device(device)
    adapter_dir = find_adapter_dir(Path(run))
    spec = check_adapter_model(adapter_dir)
    files = list_images(Path(images))
    stems = list(files)
    references = read_reference_masks(Path(masks), stems) if masks is not None else {}
    prompts: dict[str, Prompt] | None = None
    if boxes is not None:
        sizes = {}
        for stem, file in files.items():
            try:
                (width, height), _ = read_header(file)
            except CorruptFileError as error:
                raise PredictError(f"--images: unreadable image {error}") from error
            sizes[stem] = (height, width)
        prompts = read_boxes_file(Path(boxes), files, sizes)
    try:
        loaded = load_adapter(adapter_dir, device, checkpoint)
    except SafetensorError as error:  # truncated or overwritten weights file
        raise PredictError(
            f"{adapter_dir / WEIGHTS}: unreadable ({one_line(error)[:160]}); "
            "the file is damaged, copy it again from the run folder or re-run tuning"
        ) from error
    except RuntimeError as error:  # a tensor of the wrong shape: another rank or base model
        detail = one_line(error)[:160]
        raise PredictError(
            f"{adapter_dir}: the tuned weights do not fit the model its adapter.json describes "
            f"({detail}); was the folder edited or mixed with another run's files?"
        ) from error
    size = spec.image_size

    jobs = [
        _load_job(stem, files[stem], references.get(stem),
                  None if prompts is None else prompts.get(stem, Prompt(np.zeros((0, 4)))),
                  size)
        for stem in stems
    ]
    prompted = [(job.stem, job.example) for job in jobs if job.example is not None]
    logits = example_logits(loaded.model, [example for _, example in prompted], device,
                            batch_size)
    logits_of = {stem: lg for (stem, _), lg in zip(prompted, logits, strict=True)}

    out_dir = Path(out)
    overall, overall_full = IoUAccumulator(), IoUAccumulator()
    rows: list[dict[str, Any]] = []
    for job in jobs:
        height, width = job.size
        row: dict[str, Any] = {"image": job.file.name, "stem": job.stem, "boxes": [],
                               "class_ids": [], "iou": None}
        if job.example is None:
            prediction = np.zeros((height, width), np.uint8)
        else:
            example, job_logits = job.example, logits_of[job.stem]
            prediction = semantic_map(job_logits, example.class_ids, (height, width))
            row["boxes"] = [_json_box(box) for box in job.boxes]
            row["class_ids"] = example.class_ids.tolist()
            if job.reference is not None:
                target_s = torch.from_numpy(resize_mask(job.reference, size).astype(np.int64))
                predicted_s = semantic_prediction(job_logits, example.class_ids)
                mine = IoUAccumulator()
                for accumulator in (overall, mine):
                    accumulator.add(predicted_s, target_s)
                overall_full.add(torch.from_numpy(prediction.astype(np.int64)),
                                 torch.from_numpy(job.reference.astype(np.int64)))
                row["iou"] = mine.score()
        mask_path = write_png(prediction, out_dir / "masks" / f"{job.stem}.png")
        boxes_drawn = np.array(row["boxes"], dtype=np.float32).reshape(-1, 4)
        picture = overlay(job.image, prediction, boxes_drawn, row["class_ids"])
        overlay_path = write_png(picture, out_dir / "overlays" / f"{job.stem}.png")
        row["mask"] = str(mask_path.relative_to(out_dir))
        row["overlay"] = str(overlay_path.relative_to(out_dir))
        rows.append(row)

    evaluated = bool(overall.present)
    summary = {
        "adapter": str(adapter_dir),
        "model": loaded.spec.to_json(),
        "config": loaded.config,
        "device": device,
        "image_size": size,
        "prompts": "boxes file" if boxes is not None else "reference masks",
        "boxes_file": None if boxes is None else str(boxes),
        "masks_dir": None if masks is None else str(masks),
        "iou": overall.score() if evaluated else None,
        "iou_full_res": overall_full.score() if evaluated else None,
        "per_class_iou": ({str(c): v for c, v in overall.per_class().items()}
                          if evaluated else None),
        "images": rows,
        "unprompted": [row["image"] for row in rows if not row["class_ids"]],
        "seconds": time.perf_counter() - start,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(summary: dict[str, Any], out: Path, limit: int = 20) -> str:
    """A small table of the first ``limit`` images plus the totals."""
    rows = summary["images"]
    width = min(max([len(printable(r["stem"])) for r in rows] + [5]), 40)
    lines = [f"{'image':<{width}}  boxes  iou"]
    for row in rows[:limit]:
        iou = "-" if row["iou"] is None else f"{row['iou']:.3f}"
        lines.append(f"{printable(row['stem'])[:width]:<{width}}  {len(row['boxes']):>5}  {iou}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more (see {out / SUMMARY})")
    if summary["iou"] is not None:
        lines.append(
            f"IoU {summary['iou']:.4f} at the model's {summary['image_size']} px input (the "
            f"training metric), {summary['iou_full_res']:.4f} at the original size"
        )
    if summary["unprompted"]:
        lines.append(f"{len(summary['unprompted'])} image(s) had no box prompt: empty masks")
    lines.append(
        f"wrote {len(rows)} masks to {out / 'masks'}, overlays to {out / 'overlays'}, summary "
        f"{out / SUMMARY} ({summary['seconds']:.1f} s on {summary['device']})"
    )
    return "\n".join(printable(line) for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment images with a tuned SAM2 adapter and box prompts.",
    )
    parser.add_argument("--run", required=True, type=Path,
                        help="output folder of qtt_ray.tune (or an exported adapter folder)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--out", required=True, type=Path, help="folder for masks and overlays")
    parser.add_argument("--boxes", type=Path, default=None,
                        help='JSON {"image.png": [[x0, y0, x1, y1, class_id?], ...]} in pixels')
    parser.add_argument("--masks", type=Path, default=None,
                        help="reference <stem>.png masks: tight boxes per class, and IoU")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the run's base SAM2 checkpoint, if it moved since tuning (must be "
                             "the same file: its size and SHA-256 are checked)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.batch_size < 1:
            raise PredictError(f"--batch-size {args.batch_size} must be at least 1")
        summary = predict_folder(args.run, args.images, args.out, args.boxes, args.masks,
                                 args.device, args.batch_size, args.checkpoint)
        print(format_summary(summary, args.out))
        return 0

    return run_cli(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
