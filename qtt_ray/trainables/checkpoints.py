"""Loading a trial checkpoint that may be corrupt: fall back to the trial's previous one.

Ray restores a trial from its LATEST checkpoint only, and would retry that same broken folder
until ``max_failures`` is spent. The trainables verify each folder's manifest
(``state_io.verify_manifest``); on ``CheckpointError`` this module lists the trial's other
checkpoints on the experiment storage (local, NFS or cloud: Ray's own filesystem handle), newest
first, and loads the first that verifies. ``CheckpointConfig(num_to_keep>=2)`` keeps the previous
one until a newer one exists, so one bad save costs one epoch of re-training, not the trial.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtt_ray.integrity import CheckpointError

log = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


def trial_checkpoints(storage: Any) -> list[str]:
    """The trial's checkpoint folders on ``storage`` (a Ray StorageContext), newest first."""
    from pyarrow.fs import FileSelector, FileType

    if storage is None:
        return []
    fs = storage.storage_filesystem
    try:
        infos = fs.get_file_info(FileSelector(storage.trial_fs_path, allow_not_found=True))
    except OSError:
        return []
    found = []
    for info in infos:
        match = _CHECKPOINT_DIR.match(info.base_name)
        if info.type == FileType.Directory and match:
            found.append((int(match.group(1)), info.path))
    return [path for _, path in sorted(found, reverse=True)]


def load_with_fallback(
    checkpoint_dir: str | Path, load: Callable[[str], int], storage: Any
) -> tuple[int, str | None]:
    """``load(folder) -> epoch`` the given folder; if it is corrupt, the newest previous
    checkpoint of the trial that loads. Returns (epoch, the fallback folder or None)."""
    try:
        return load(str(checkpoint_dir)), None
    except CheckpointError as first:
        error = first
    from ray.tune import Checkpoint

    bad = Path(checkpoint_dir).resolve()
    for path in trial_checkpoints(storage):
        if Path(path).resolve() == bad:
            continue
        try:
            with Checkpoint(path, storage.storage_filesystem).as_directory() as folder:
                epoch = load(folder)
        except CheckpointError as err:
            log.warning("checkpoint %s is unusable too: %s", path, err)
            continue
        log.warning("%s; continuing from the previous checkpoint %s (epoch %d)", error, path,
                    epoch)
        return epoch, path
    raise CheckpointError(f"{error}; and no earlier checkpoint of this trial loads") from error
