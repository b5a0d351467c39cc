"""Trial checkpoints nobody will read again are deleted, so a long run's disk stays bounded: a
trial the search finished for good (Tune ``TERMINATED``) loses its checkpoints at once unless it
holds the best model so far (``best/`` is exported from the best trial's latest checkpoint), and
the rest go once the run has exported ``best/`` (``prune_trial_checkpoints``). With an official
SAM2 a trial keeps tens of MB (two checkpoints of the LoRA adapter, mask decoder and AdamW
state), and a long run finishes hundreds of trials.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from qtt_ray.results import best_of
from qtt_ray.trainables.checkpoints import remove_checkpoint_folders

log = logging.getLogger(__name__)


class FinishedTrialPruner(Callback):
    """Deletes the checkpoints of finished trials that are not the best so far, as they finish
    and whenever the best moves on. ``recorder`` is the run's ``TrialRecorder`` (Tune pickles
    both into its experiment state, so a resumed run keeps pruning)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.pending: dict[str, tuple[Any, str]] = {}  # finished, kept: (filesystem, folder)
        self.removed = 0
        self.bytes = 0

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        storage = getattr(trial, "storage", None)
        if storage is None:
            return
        self.pending[trial.trial_id] = (storage.storage_filesystem, storage.trial_fs_path)
        self._prune()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict, **info: Any) -> None:
        if self.pending:
            self._prune()  # the best may have moved on from a finished trial

    def _prune(self) -> None:
        best = best_of(self.recorder.records())[0]
        best_id = None if best is None else best.trial_id
        for trial_id in [t for t in self.pending if t != best_id]:
            filesystem, folder = self.pending.pop(trial_id)
            try:
                removed, size = remove_checkpoint_folders(filesystem, folder)
            except OSError as err:  # storage gone for a moment: the end-of-run pruning retries
                log.warning("could not remove the checkpoints of trial %s: %s", trial_id, err)
                continue
            self.removed, self.bytes = self.removed + removed, self.bytes + size
