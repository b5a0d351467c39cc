"""Work a trial actor does ahead of Tune's request: the staged checkpoint and the spare base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_model_finetune import PLAIN, tiny_dataset

from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.trainables.ahead import AheadOfTime

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = {**PLAIN, "sched": "cosine"}


@pytest.fixture(scope="module")
def trial() -> tuple[FineTuner, torch.nn.Module]:
    spec = resolve_spec("micro", image_size=64, seed=0)
    base = build_model(spec)
    tuner = FineTuner(spec, CONFIG, tiny_dataset(), base=base, batch_size=2)
    tuner.train_epoch()
    tuner.evaluate()
    return tuner, base


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_staged_checkpoint_is_byte_for_byte_the_synchronous_one(trial, tmp_path: Path) -> None:
    tuner, _ = trial
    ahead = AheadOfTime()
    try:
        ahead.stage(tuner)
        assert ahead.take_staged(tuner, tmp_path / "staged")
        tuner.save(tmp_path / "direct")
        assert _files(tmp_path / "staged") == _files(tmp_path / "direct")
        assert not ahead.take_staged(tuner, tmp_path / "again")  # taken once
    finally:
        ahead.close()


def test_a_staged_checkpoint_of_another_epoch_or_trial_is_never_handed_out(
    trial, tmp_path: Path
) -> None:
    tuner, base = trial
    other = FineTuner(tuner.spec, CONFIG, tuner.dataset, base=base, batch_size=2)
    ahead = AheadOfTime()
    try:
        ahead.stage(other)
        assert not ahead.take_staged(tuner, tmp_path / "a")
        ahead.stage(tuner)
        tuner.epoch += 1  # the tuner moved on after the staging
        try:
            assert not ahead.take_staged(tuner, tmp_path / "b")
        finally:
            tuner.epoch -= 1
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        ahead.stage(tuner)
        staged_folder = ahead._staged[2]
        ahead.discard_staged()
        assert not staged_folder.exists()
    finally:
        ahead.close()


def test_the_spare_is_an_untouched_independent_copy_of_the_base(trial) -> None:
    _, base = trial
    ahead = AheadOfTime()
    try:
        assert ahead.take_spare() is None
        ahead.prepare_spare(base)
        spare = ahead.take_spare()
        assert spare is not None and spare is not base
        for (name, a), (_, b) in zip(base.state_dict().items(), spare.state_dict().items(),
                                     strict=True):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr() or a.numel() == 0, name
        assert ahead.take_spare() is None  # handed out once
    finally:
        ahead.close()
