"""Work a trial actor does ahead of time, while Tune handles the result it just returned.

After every ``step()`` Tune processes the result on the driver (the policy's decision, the
callbacks: ~10 ms), then asks the actor to save a checkpoint (``checkpoint_frequency=1``) and,
for a new trial, to reset. Done on request, the save (~15 ms: safetensors + JSON + manifest) and
the new trial's copy of the base model (~13 ms) sit between two epochs on the slot. Both are
known in advance: the checkpoint is of the state the step left, and the base never changes. So
a one-thread pool starts them when the step returns, and the request only collects the result.
Nothing changes in what is saved or trained: the staged folder holds exactly what a synchronous
``FineTuner.save`` writes, and it is discarded whenever the tuner moved on.

Every method that touches the tuner must call ``settle()`` first, so the pool never reads a
model while the actor trains it.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


class AheadOfTime:
    """One staged checkpoint of one tuner at one epoch, and one spare copy of the base."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qtt-ahead")
        self._staged: tuple[Any, int, Path, Future[None]] | None = None
        self._spare: Future[nn.Module] | None = None

    def stage(self, tuner: Any) -> None:
        """Start writing ``tuner.save`` for its current epoch into a private folder."""
        self.discard_staged()
        folder = Path(tempfile.mkdtemp(prefix="qtt-staged-"))
        self._staged = (tuner, tuner.epoch, folder, self._pool.submit(tuner.save, folder))

    def take_staged(self, tuner: Any, checkpoint_dir: str | Path) -> bool:
        """Move the staged files of ``tuner`` at its current epoch into ``checkpoint_dir``.

        False (and nothing written) when there is no such staged save or it failed: the caller
        then saves synchronously, which raises the error where Tune expects it.
        """
        staged, self._staged = self._staged, None
        if staged is None:
            return False
        owner, epoch, folder, future = staged
        try:
            future.result()
            if owner is not tuner or epoch != tuner.epoch:
                return False
            target = Path(checkpoint_dir)
            target.mkdir(parents=True, exist_ok=True)
            for item in folder.iterdir():
                shutil.move(str(item), str(target / item.name))
            return True
        except Exception as err:  # noqa: BLE001 - the synchronous save reports it properly
            log.warning("staged checkpoint failed (%s); saving synchronously", err)
            return False
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def discard_staged(self) -> None:
        """Drop the staged save (if any) and wait until the pool is idle."""
        staged, self._staged = self._staged, None
        self.settle()  # the thread may still be writing into the folder or copying the base
        if staged is not None:
            shutil.rmtree(staged[2], ignore_errors=True)

    def prepare_spare(self, base: nn.Module) -> None:
        """Start a deep copy of ``base`` for the next new trial, unless one is ready."""
        if self._spare is None:
            self._spare = self._pool.submit(copy.deepcopy, base)

    def take_spare(self) -> nn.Module | None:
        """The untouched copy of the base, or None (then the caller copies it itself)."""
        spare, self._spare = self._spare, None
        if spare is None or spare.exception() is not None:
            return None
        return spare.result()

    def settle(self) -> None:
        """Wait until the pool is idle (it may be reading the tuner's tensors)."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self.discard_staged()
        self._spare = None
        self._pool.shutdown(wait=True)
