"""The throughput benchmark runs and reports consistent numbers."""

from __future__ import annotations

import numpy as np
import pytest

from qtt_ray.data import Sample, SegDataset
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.throughput import measure_throughput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_finetuner_and_bare_loop_are_timed_on_the_same_images():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(7):
        image = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 20:50] = 1
        samples.append(Sample(f"s{i}", image, mask))
    data = SegDataset("t", "synthetic", samples[:5], samples[5:], 1, {}, [], 0)
    spec = resolve_spec("micro", image_size=64)
    config = {
        "lora": 1, "lora_rank": 8, "lora_dropout": 0.0, "lr": 1e-3, "weight_decay": 0.0,
        "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine",
    }
    report = measure_throughput(spec, config, data, batch_size=2, base=build_model(spec))
    assert report.images == 5
    assert report.finetuner_images_per_s == pytest.approx(5 / report.finetuner_epoch_s)
    assert report.bare_images_per_s == pytest.approx(5 / report.bare_epoch_s)
    assert report.eval_images_per_s > 0
    assert report.overhead == pytest.approx(report.finetuner_epoch_s / report.bare_epoch_s - 1)
    assert set(report.to_json()) >= {"finetuner_images_per_s", "bare_images_per_s", "overhead"}
