"""``python -m qtt_ray.predict``: segment new images with a tuned run's adapter and box prompts.

    python -m qtt_ray.predict --run RUN --images DIR --out DIR [--boxes boxes.json | --masks DIR]
        [--checkpoint PATH]

The tuned LoRA + mask decoder are loaded onto the base SAM2 rebuilt from the adapter's ModelSpec
(same model, checkpoint and seed), so the reload reproduces the tuned model exactly. The base
checkpoint is needed: ``--checkpoint`` says where it is now if it moved (a hub model is also
looked up in the current Hugging Face cache); it must be the recorded file (size, SHA-256).
Prompts come from a boxes file (original-image pixels, see ``qtt_ray.predict_io``) or, for
evaluation, from reference masks: one tight box per class present, computed exactly as validation
does. A class too small to survive the resize to the model's input (validation drops it) is
prompted with its original tight box in a separate pass, so validation's logits stay untouched;
predict.json lists those images as ``lost_at_input_size``. Writes ``masks/<stem>.png`` (class
values, original size), ``overlays/<stem>.png`` and ``predict.json``, whose boxes are
original-image pixels: a boxes file's boxes as given (clipped to the image), or the tight box of
each prompted class in the reference mask.

``--out`` must not overlap the inputs, and its ``masks/`` and ``overlays/`` must be new, empty or
an earlier predict's (``predict.json`` beside them): these are then replaced as a whole at the
end, so a crash leaves the earlier predictions intact and a re-run never mixes old and new masks.

IoU (with reference masks) is the training metric (``qtt_ray.model.metrics``) at the model's
input size, batched like validation, so predicting a run's validation images reproduces its
validation IoU; ``iou_full_res`` scores the masks as written, at the original size, for every
image with a reference mask (an unprompted class scores 0). Both are dataset-level means over the
classes of the reference masks; ``per_class_iou`` and ``per_class_iou_full_res`` hold each
class's IoU (``images_per_class``: how many reference masks hold it), each image's row its own
``iou`` and ``iou_full_res``, and the printed summary a per-class table when there are several.

Images are decoded and segmented a chunk of ``--batch-size`` at a time, so memory does not grow
with the number of images.

In Python, ``segment`` runs the same code path on one image (see its docstring).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
from qtt_ray.model.adapter import META, WEIGHTS, LoadedAdapter, load_adapter
from qtt_ray.model.build import ModelError, ModelSpec, canonical_name
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.metrics import IoUAccumulator, semantic_prediction
from qtt_ray.precision import PRECISIONS, PrecisionError, resolve_precision
from qtt_ray.predict_io import (
    PredictError,
    Prompt,
    boxes_to_input,
    find_adapter_dir,
    list_images,
    overlay,
    parse_boxes,
    read_boxes_file,
    read_reference_masks,
    write_png,
)

SUMMARY = "predict.json"
OUTPUTS = ("masks", "overlays")  # the folders predict writes under --out
DEFAULT_BATCH_SIZE = 4  # the FineTuner's default: same batches, bit-identical validation logits
PROG = "python -m qtt_ray.predict"


# -- the model side, shared with qtt_ray.pictures ------------------------------------------------
@torch.no_grad()
def example_logits(
    model: nn.Module, examples: Sequence[Example], device: str | torch.device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "fp32",
) -> list[torch.Tensor]:
    """(K, S, S) box logits on CPU per example (each needs K >= 1), batched like
    ``evaluate_model`` so the numbers match validation's bit for bit (at the same resolved
    ``precision``)."""
    model.eval()
    out: list[torch.Tensor] = []
    step = max(1, int(batch_size))
    for first in range(0, len(examples), step):
        batch = collate(examples[first : first + step]).to(device)
        logits = box_logits(model, batch.images, batch.boxes, batch.box_image,
                            precision).float().cpu()
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
    precision: str = "fp32",
) -> list[np.ndarray]:
    """Class maps at each sample's original size, prompted by its ground truth's tight boxes
    (validation's prompts); a sample without foreground gets an empty map."""
    examples = [make_example(sample, image_size) for sample in samples]
    prompted = [e for e in examples if e.num_boxes > 0]
    logits = iter(example_logits(model, prompted, device, batch_size, precision))
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
    example: Example | None  # None: no box prompt that survives at the input size
    boxes: np.ndarray  # (K + L, 4) original-image inclusive xyxy of example's, then lost's prompts
    # classes of the reference mask that vanish at the input size (validation skips them),
    # prompted with their original tight box; a separate pass keeps validation's logits exact
    lost: Example | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def class_ids(self) -> list[int]:
        return [int(c) for e in (self.example, self.lost) if e is not None
                for c in e.class_ids.tolist()]


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


def trained_classes(adapter_dir: Path) -> list[int] | None:
    """The class ids of the run's training data (adapter.json ``info["classes"]``); None for an
    adapter exported before they were recorded, or a value that is not a list of ints."""
    try:
        classes = json.loads((adapter_dir / META).read_text()).get("info", {}).get("classes")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(classes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return None
    return sorted(set(classes))


def _unseen_classes(trained: list[int] | None, references: Mapping[str, np.ndarray],
                    prompts: Mapping[str, Prompt] | None) -> tuple[list[int] | None, list[str]]:
    """Class ids of --masks / --boxes that the run never trained on, and the options naming
    them; (None, []) when the run did not record its classes."""
    if trained is None:
        return None, []
    known = set(trained)
    found: dict[str, set[int]] = {"--masks": set(), "--boxes": set()}
    for mask in references.values():
        found["--masks"] |= {int(c) for c in np.unique(mask)} - {0} - known
    for prompt in (prompts or {}).values():
        found["--boxes"] |= set(prompt.class_ids) - known
    unseen = sorted(found["--masks"] | found["--boxes"])
    return unseen, [option for option, ids in found.items() if ids]


def check_out(out: Path, inputs: Mapping[str, Path], boxes: Path | None) -> None:
    """Refuse an --out whose writing would destroy or mix with files predict did not write:
    masks/ or overlays/ overlapping an input folder (a dataset folder as --out would overwrite
    its ground truth), non-empty without an earlier predict's predict.json, or not a folder."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out}: exists and is not a folder; pass a new folder or an "
                           "earlier predict's output folder")
    for name in OUTPUTS:
        target = (out / name).resolve()
        for option, folder in inputs.items():
            source = folder.resolve()
            if target == source or target.is_relative_to(source) or source.is_relative_to(target):
                raise PredictError(
                    f"--out {out}: predict would write {out / name}, which overlaps the {option} "
                    f"folder {folder} and would overwrite or delete your input files; choose "
                    "another --out folder"
                )
    if boxes is not None and (out / SUMMARY).resolve() == boxes.resolve():
        raise PredictError(f"--out {out}: predict would overwrite the --boxes file {boxes} with "
                           f"its {SUMMARY}; choose another --out folder")
    earlier = (out / SUMMARY).is_file()
    for name in OUTPUTS:
        folder = out / name
        if not (folder.exists() or folder.is_symlink()):
            continue
        if not folder.is_dir():
            raise PredictError(f"--out {out}: {folder} exists and is not a folder; choose "
                               "another --out folder")
        try:
            holds_files = any(folder.iterdir())
        except OSError as error:
            raise PredictError(f"--out {out}: cannot read {folder} ({error}); choose another "
                               "--out folder") from error
        if holds_files and not earlier:
            raise PredictError(
                f"--out {out}: {folder} already holds files and there is no {SUMMARY}, so "
                "predict did not write them; choose a new or empty --out folder (an earlier "
                "predict's output is replaced)"
            )


def _staging_folder(out: Path) -> Path:
    """A private folder under --out for this run's outputs, made before any work so an
    unwritable --out fails at once, in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".predict-", dir=out))
    except OSError as error:
        raise PredictError(f"--out {out}: cannot write there ({error.strerror or error}); "
                           "choose a folder you can write to") from error


def _publish(staging: Path, out: Path, summary: dict[str, Any]) -> None:
    """Put the staged masks/, overlays/ and predict.json in place of any earlier ones (moved
    aside, then deleted): one rename each, so no folder ever mixes two runs' files."""
    (staging / SUMMARY).write_text(json.dumps(summary, indent=1))
    previous = staging / "previous"
    previous.mkdir()
    for name in (*OUTPUTS, SUMMARY):
        target = out / name
        if target.exists() or target.is_symlink():
            os.replace(target, previous / name)
        os.replace(staging / name, target)


def _box_example(image_s: torch.Tensor, boxes: np.ndarray, class_ids: Sequence[int],
                 height: int, width: int, target_s: np.ndarray | None) -> Example:
    """An Example prompted by original-image boxes: the one recipe of boxes files, ``segment``
    and the classes lost at the input size, so all give the same logits."""
    image_size = int(image_s.shape[-1])
    if target_s is None:
        target_s = np.zeros((image_size, image_size), np.uint8)
    masks = np.stack([target_s == c for c in class_ids]).astype(np.uint8)
    return Example(
        image=image_s,
        boxes=torch.from_numpy(boxes_to_input(boxes, height, width, image_size)),
        masks=torch.from_numpy(masks.reshape(len(class_ids), image_size, image_size)),
        class_ids=torch.tensor(list(class_ids), dtype=torch.int64),
    )


def _load_job(stem: str, file: Path, reference: np.ndarray | None, prompt: Prompt | None,
              image_size: int) -> Job:
    try:
        (width, height), _ = read_header(file)
        image, _ = read_image(file)
    except CorruptFileError as error:
        raise PredictError(f"--images: unreadable image {error}") from error
    _check_reference_size(file, reference, width, height)
    if prompt is None:  # prompts from the reference mask, exactly as validation makes them
        if reference is None:
            return Job(stem, file, image, reference, None, np.zeros((0, 4)))
        example = make_example(Sample(stem, image, reference), image_size)
        kept = example.class_ids.tolist()
        lost_ids = [int(c) for c in np.unique(reference) if c and int(c) not in kept]
        lost = None
        if lost_ids:  # gone by the resize: their original tight box, mapped like a boxes
            # file's (a sub-pixel box is a point, as a one-pixel object's training box is)
            lost = _box_example(example.image, _tight_boxes(reference, lost_ids), lost_ids,
                                height, width, None)
        boxes = _tight_boxes(reference, [*kept, *lost_ids])
        return Job(stem, file, image, reference, example if kept else None, boxes, lost)
    if len(prompt.boxes) == 0:
        return Job(stem, file, image, reference, None, np.zeros((0, 4)))
    target = None if reference is None else resize_mask(reference, image_size)
    example = _box_example(preprocess_image(image, image_size), prompt.boxes, prompt.class_ids,
                           height, width, target)
    return Job(stem, file, image, reference, example, prompt.boxes)


def _check_reference_size(file: Path, reference: np.ndarray | None, width: int, height: int
                          ) -> None:
    if reference is not None and reference.shape != (height, width):
        raise PredictError(
            f"--masks: the mask of {file.name} is {reference.shape[1]}x{reference.shape[0]} but "
            f"the image is {width}x{height}; masks must have their image's size"
        )


def _tight_boxes(reference: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """The tight original-image box of each prompted class: what the input-size prompt stands
    for, exact (mapping the input box back would be off by a fraction of a pixel). Every class
    of the resized mask is in the original, so each box exists."""
    boxes = [tight_box(reference == class_id) for class_id in class_ids]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _json_box(box: np.ndarray) -> list[int | float]:
    """A box for predict.json: whole numbers as integers, so a file's box reads back as given."""
    return [int(v) if float(v).is_integer() else float(v) for v in box.tolist()]


def _job_prediction(job: Job, logits: Sequence[torch.Tensor]) -> np.ndarray:
    """The class map at the original size from the job's prompts' logits (validation's, then
    the lost classes'): empty without any prompt."""
    if not logits:
        return np.zeros(job.size, np.uint8)
    return semantic_map(torch.cat(list(logits)), torch.tensor(job.class_ids, dtype=torch.int64),
                        job.size)


def predict_folder(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    boxes: str | Path | None = None,
    masks: str | Path | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: str | Path | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Segment every image of ``images`` with the tuned adapter of ``run``; returns the summary
    that is also written as ``out/predict.json``. ``checkpoint``: where the base checkpoint is
    now, when it moved since tuning; ``precision``: the forward's (``qtt_ray.precision``)."""
    start = time.perf_counter()
    if boxes is None and masks is None:
        raise PredictError("give --boxes boxes.json or --masks DIR: SAM2 needs box prompts")
    device = resolve_device(device)
    try:
        precision = resolve_precision(precision, device)
    except PrecisionError as error:
        raise PredictError(f"--precision: {error}") from error
    adapter_dir = find_adapter_dir(Path(run))
    spec = check_adapter_model(adapter_dir)
    files = list_images(Path(images))
    stems = list(files)
    references = read_reference_masks(Path(masks), stems) if masks is not None else {}
    sizes = {}  # (height, width) from the headers: the images are decoded one chunk at a time
    for stem, file in files.items():
        try:
            (width, height), _ = read_header(file)
        except CorruptFileError as error:
            raise PredictError(f"--images: unreadable image {error}") from error
        sizes[stem] = (height, width)
        _check_reference_size(file, references.get(stem), width, height)
    prompts: dict[str, Prompt] | None = None
    if boxes is not None:
        prompts = read_boxes_file(Path(boxes), files, sizes)
    out_dir = Path(out)
    inputs = {"--images": next(iter(files.values())).parent}
    if masks is not None:
        inputs["--masks"] = Path(masks)
    check_out(out_dir, inputs, None if boxes is None else Path(boxes))
    trained = trained_classes(adapter_dir)
    unseen, options = _unseen_classes(trained, references, prompts)
    if unseen:
        print(
            f"{PROG}: warning: {' and '.join(options)} use class id(s) "
            f"{', '.join(map(str, unseen))} that this run never trained on (its classes: "
            f"{', '.join(map(str, trained or []))}); box prompts are class-agnostic, so their "
            "masks are still made, but their IoU is for classes the model was not tuned on",
            file=sys.stderr,
        )
    created = not out_dir.exists()
    staging = _staging_folder(out_dir)
    try:
        summary = _predict_into(staging, out_dir, adapter_dir, spec, files, references, prompts,
                                device, batch_size, checkpoint, precision)
        summary.update(
            boxes_file=None if boxes is None else str(boxes),
            masks_dir=None if masks is None else str(masks),
            unseen_classes=unseen,
            seconds=time.perf_counter() - start,
        )
        try:
            _publish(staging, out_dir, summary)
        except OSError as error:
            raise PredictError(f"--out {out_dir}: cannot write there ({error}); choose a folder "
                               "you can write to") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
    return summary


def _predict_into(staging: Path, out_dir: Path, adapter_dir: Path, spec: ModelSpec,
                  files: dict[str, Path], references: dict[str, np.ndarray],
                  prompts: dict[str, Prompt] | None, device: str, batch_size: int,
                  checkpoint: str | Path | None, precision: str) -> dict[str, Any]:
    """Load the model, segment every image and write its mask and overlay under ``staging``;
    the summary (without the timing and input paths).

    Images stream through in chunks of ``batch_size`` prompted images (plus the unprompted ones
    between them), so memory does not grow with the folder: each image's K logit maps at the
    input size (4 MB per class at 1024 px) are dropped once its mask is written. The chunks cut
    the prompted images exactly where ``example_logits`` cuts its batches, so the batches, and
    with them the logits, are validation's."""
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
    scores = _Scores()
    rows: list[dict[str, Any]] = []
    for chunk in _job_chunks(files, references, prompts, size, batch_size):
        logits_of = _chunk_logits(loaded.model, chunk, device, batch_size, precision)
        for job in chunk:
            row, prediction, picture = _finish_job(job, logits_of.pop(job.stem, []), size,
                                                   scores)
            try:
                write_png(prediction, staging / "masks" / f"{job.stem}.png")
                write_png(picture, staging / "overlays" / f"{job.stem}.png")
            except OSError as error:
                raise PredictError(f"--out {out_dir}: cannot write there ({error}); choose a "
                                   "folder you can write to") from error
            row["mask"] = f"masks/{job.stem}.png"
            row["overlay"] = f"overlays/{job.stem}.png"
            rows.append(row)
    for name in OUTPUTS:  # even with no image written, replace the earlier folders
        (staging / name).mkdir(exist_ok=True)

    overall, overall_full = scores.input_size, scores.full_res
    evaluated = bool(overall.present)
    return {
        "adapter": str(adapter_dir),
        "model": loaded.spec.to_json(),
        "config": loaded.config,
        "device": device,
        "precision": precision,
        "image_size": size,
        "prompts": "boxes file" if prompts is not None else "reference masks",
        "iou": overall.score() if evaluated else None,
        "iou_full_res": overall_full.score() if overall_full.present else None,
        "per_class_iou": ({str(c): v for c, v in overall.per_class().items()}
                          if evaluated else None),
        "per_class_iou_full_res": ({str(c): v for c, v in overall_full.per_class().items()}
                                   if overall_full.present else None),
        "images_per_class": ({str(c): scores.images[c] for c in sorted(scores.images)}
                             if scores.images else None),
        "images": rows,
        "unprompted": [row["image"] for row in rows if not row["class_ids"]],
        "lost_at_input_size": [row["image"] for row in rows if "lost_at_input_size" in row],
    }


@dataclass
class _Scores:
    """The folder's IoU as it accumulates: the training metric at the input size, the masks
    as written at the original size, and how many reference masks hold each class."""

    input_size: IoUAccumulator = field(default_factory=IoUAccumulator)
    full_res: IoUAccumulator = field(default_factory=IoUAccumulator)
    images: dict[int, int] = field(default_factory=dict)


def _job_chunks(files: Mapping[str, Path], references: Mapping[str, np.ndarray],
                prompts: Mapping[str, Prompt] | None, size: int, batch_size: int
                ) -> Iterator[list[Job]]:
    """The jobs in file order, loaded lazily, in chunks that each hold ``batch_size`` prompted
    jobs (the last may hold fewer) and the unprompted jobs among them."""
    chunk: list[Job] = []
    prompted = 0
    for stem, file in files.items():
        prompt = None if prompts is None else prompts.get(stem, Prompt(np.zeros((0, 4))))
        job = _load_job(stem, file, references.get(stem), prompt, size)
        chunk.append(job)
        prompted += job.example is not None
        if prompted == batch_size:
            yield chunk
            chunk, prompted = [], 0
    if chunk:
        yield chunk


def _chunk_logits(model: nn.Module, chunk: Sequence[Job], device: str, batch_size: int,
                  precision: str) -> dict[str, list[torch.Tensor]]:
    """Each job's logits: its validation prompts' first (one batch of ``example_logits``),
    then those of the classes lost at the input size (a separate pass)."""
    prompted = [job for job in chunk if job.example is not None]
    main_logits = example_logits(model, [job.example for job in prompted if job.example],
                                 device, batch_size, precision)
    logits_of = {job.stem: [lg] for job, lg in zip(prompted, main_logits, strict=True)}
    rescued = [job for job in chunk if job.lost is not None]
    lost_logits = example_logits(model, [job.lost for job in rescued if job.lost],
                                 device, batch_size, precision)
    for job, lg in zip(rescued, lost_logits, strict=True):
        logits_of.setdefault(job.stem, []).append(lg)
    return logits_of


def _finish_job(job: Job, logits: Sequence[torch.Tensor], size: int, scores: _Scores
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The job's row of predict.json (its scores added to ``scores``), its class map and its
    overlay picture."""
    row: dict[str, Any] = {"image": job.file.name, "stem": job.stem,
                           "boxes": [_json_box(box) for box in job.boxes],
                           "class_ids": job.class_ids, "iou": None}
    if job.lost is not None:
        row["lost_at_input_size"] = job.lost.class_ids.tolist()
    prediction = _job_prediction(job, logits)
    if job.reference is not None:  # the masks as written, for every image with a reference
        target = torch.from_numpy(job.reference.astype(np.int64))
        mine_full = IoUAccumulator()
        for accumulator in (scores.full_res, mine_full):
            accumulator.add(torch.from_numpy(prediction.astype(np.int64)), target)
        row["iou_full_res"] = mine_full.score() if mine_full.present else None
        for class_id in mine_full.present:
            scores.images[class_id] = scores.images.get(class_id, 0) + 1
        if job.example is not None:  # the training metric: validation's prompts only
            target_s = torch.from_numpy(resize_mask(job.reference, size).astype(np.int64))
            predicted_s = semantic_prediction(logits[0], job.example.class_ids)
            mine = IoUAccumulator()
            for accumulator in (scores.input_size, mine):
                accumulator.add(predicted_s, target_s)
            row["iou"] = mine.score()
    boxes_drawn = np.array(row["boxes"], dtype=np.float32).reshape(-1, 4)
    return row, prediction, overlay(job.image, prediction, boxes_drawn, row["class_ids"])


# -- the Python entry point ----------------------------------------------------------------------
Box = Sequence[float] | np.ndarray  # inclusive [x0, y0, x1, y1] in the image's pixels


def segment(
    model: LoadedAdapter | nn.Module,
    image: np.ndarray,
    boxes: Mapping[int, Box] | Sequence[Any],
    image_size: int | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """The (H, W) uint8 class-id mask of one image from box prompts: ``predict``'s own code path
    (the same preprocessing, box mapping, forward and upsampling), so its masks equal
    ``predict --batch-size 1``'s bit for bit (other batch sizes may differ in the last bits of
    a logit). ``precision``: as predict's ``--precision``, for the model's device.

    ``model``: ``load_adapter(run / "best")`` (or its ``.model``, then ``image_size`` defaults
    to the model's own); it runs on the device it is on. ``image``: (H, W, 3) uint8 RGB, as
    ``PIL.Image.open(f).convert("RGB")`` gives (gray (H, W) and RGBA are taken like predict
    reads them). ``boxes``: ``{class_id: [x0, y0, x1, y1]}`` or a list of boxes in any form of
    predict's boxes file; corners in the image's pixels, inclusive (``x1`` is the last column
    inside). Bad boxes raise ``PredictError`` (a ValueError). No box: an all-zero mask.

    >>> import numpy as np
    >>> from qtt_ray.model import build_model, resolve_spec
    >>> from qtt_ray.predict import segment
    >>> model = build_model(resolve_spec("micro", image_size=64))  # or load_adapter(run/"best")
    >>> picture = np.zeros((80, 120, 3), np.uint8)
    >>> mask = segment(model, picture, {1: [10, 10, 50, 40], 2: [60, 20, 110, 70]})
    >>> mask.shape, mask.dtype
    ((80, 120), dtype('uint8'))
    """
    network = model.model if isinstance(model, LoadedAdapter) else model
    if image_size is None:
        sam: Any = network  # a SAM2Base (sam2 ships no types)
        image_size = (model.spec.image_size if isinstance(model, LoadedAdapter)
                      else int(sam.image_size))
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise PredictError(f"segment: the image must be (H, W, 3) uint8 RGB, got "
                           f"{pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    if isinstance(boxes, Mapping):
        entries: list[Any] = [{"box": _plain(box), "class": _plain(class_id)}
                              for class_id, box in boxes.items()]
    else:
        entries = [_plain(box) for box in boxes]
    prompt = parse_boxes(entries, "segment: boxes", height, width)
    if not prompt.class_ids:
        return np.zeros((height, width), np.uint8)
    example = _box_example(preprocess_image(pixels, image_size), prompt.boxes, prompt.class_ids,
                           height, width, None)
    device = next(network.parameters()).device
    logits = example_logits(network, [example], device, 1, resolve_precision(precision, device))[0]
    return semantic_map(logits, example.class_ids, (height, width))


def _plain(value: Any) -> Any:
    """numpy arrays and scalars as Python lists and numbers, as a JSON boxes file gives them."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else (
        list(value) if isinstance(value, tuple) else value)


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
    elif summary["iou_full_res"] is not None:
        lines.append(f"IoU {summary['iou_full_res']:.4f} at the original size")
    lines += per_class_lines(summary)
    if summary["unprompted"]:
        lines.append(f"{len(summary['unprompted'])} image(s) had no box prompt: empty masks")
    lost = summary.get("lost_at_input_size") or []
    if lost:
        lines.append(
            f"{len(lost)} image(s) have objects that vanish at the model's "
            f"{summary['image_size']} px input (e.g. {lost[0]}): prompted with their original "
            f"box, left out of the input-size IoU (see lost_at_input_size in {SUMMARY})"
        )
    lines.append(
        f"wrote {len(rows)} masks to {out / 'masks'}, overlays to {out / 'overlays'}, summary "
        f"{out / SUMMARY} ({summary['seconds']:.1f} s on {summary['device']}, "
        f"{summary['precision']})"
    )
    return "\n".join(printable(line) for line in lines)


def per_class_lines(summary: dict[str, Any]) -> list[str]:
    """The per-class IoU table of a multiclass evaluation (the IoU above is their mean); none
    for a single class, whose IoU is the one above."""
    full = summary.get("per_class_iou_full_res") or {}
    if len(full) < 2:
        return []
    at_input = summary.get("per_class_iou") or {}
    images = summary.get("images_per_class") or {}
    lines = [f"per class: IoU at the {summary['image_size']} px input / at the original size "
             "(images holding the class)"]
    for class_id, value in full.items():
        here = at_input.get(class_id)
        shown = "-" if here is None else f"{here:.4f}"
        lines.append(f"  class {class_id:>3}  {shown:>6} / {value:.4f}  "
                     f"({images.get(class_id, 0)})")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Segment images with a tuned SAM2 adapter and box prompts. One of --boxes or "
            "--masks is required; both may be combined (the boxes prompt, the masks score)."
        ),
        epilog=(
            f"Writes OUT/masks/<stem>.png (class ids, original size), OUT/overlays/<stem>.png "
            f"(the mask and the prompts on the image) and OUT/{SUMMARY} (prompts in "
            "original-image pixels, per-image, per-class and overall IoU when --masks is given). "
            "Python: "
            "qtt_ray.predict.segment(load_adapter(RUN/best), image, {class_id: box})."
        ),
    )
    parser.add_argument("--run", required=True, type=Path,
                        help="output folder of qtt_ray.tune (or an exported adapter folder)")
    parser.add_argument("--images", required=True, type=Path,
                        help="folder of images (or a dataset folder with images/)")
    parser.add_argument(
        "--out", required=True, type=Path,
        help="folder for masks/, overlays/ and predict.json: new, empty, or an earlier "
             "predict's output (its masks/ and overlays/ are then replaced as a whole at the end, "
             "a crash keeps them); it may not overlap --images or --masks, and a masks/ or "
             "overlays/ holding files without predict.json is refused",
    )
    parser.add_argument(
        "--boxes", type=Path, default=None,
        help='JSON {"image.png" or "stem": [box, ...]}, a box being [x0, y0, x1, y1] (class 1), '
             '[x0, y0, x1, y1, class_id] or {"box": [x0, y0, x1, y1], "class": class_id}; '
             "corners are ORIGINAL-image pixels, inclusive (x1 is the last column inside), "
             "clipped to the image; images missing from the file get empty masks",
    )
    parser.add_argument(
        "--masks", type=Path, default=None,
        help="reference <stem>.png masks: scored (IoU at the model's input size and at the "
             "original size) and, without --boxes, the prompts (the tight box of each class)",
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the run's base SAM2 checkpoint, if it moved since tuning (must be "
                             "the same file: its size and SHA-256 are checked)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs: auto (default) takes a CUDA GPU if visible")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the forward's: auto (default) = bf16 autocast on GPUs with native "
                             "bf16, fp32 elsewhere (as tuning's trials); bf16, fp16 or fp32")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per forward pass (default {DEFAULT_BATCH_SIZE}, tuning's "
                             "validation batches, so its IoU is reproduced exactly); lower it if "
                             "memory runs out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.batch_size < 1:
            raise PredictError(f"--batch-size {args.batch_size} must be at least 1")
        summary = predict_folder(args.run, args.images, args.out, args.boxes, args.masks,
                                 args.device, args.batch_size, args.checkpoint, args.precision)
        print(format_summary(summary, args.out))
        return 0

    return run_cli(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
