"""evaluate_model: the shared validation of the zero-shot base and every tuned model."""

from __future__ import annotations

import numpy as np
import pytest

from qtt_ray.data import Sample
from qtt_ray.model.evaluate import evaluate_model, prompted_examples

S = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def samples(n: int = 3) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = rng.integers(0, 255, size=(S, S, 3), dtype=np.uint8)
        mask = np.zeros((S, S), np.uint8)
        mask[8 + 4 * i : 40, 10 : 30 + 5 * i] = 1
        out.append(Sample(f"s{i}", image, mask))
    return out


def test_a_batch_size_below_one_evaluates_one_image_at_a_time(base):
    # the loop stepped by max(1, batch_size) but sliced by batch_size: 0 gave empty batches
    examples = prompted_examples(samples(), S)
    one = evaluate_model(base, examples, batch_size=1)
    for size in (0, -2):
        got = evaluate_model(base, examples, batch_size=size)
        assert (got["iou"], got["val_loss"]) == (one["iou"], one["val_loss"])
