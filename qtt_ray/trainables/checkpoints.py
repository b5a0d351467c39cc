"""Loading a trial checkpoint that may be corrupt: fall back to the trial's previous one.

Ray restores a trial from its LATEST checkpoint only, and would retry that same broken folder
until ``max_failures`` is spent. The trainables verify each folder's manifest
(``state_io.verify_manifest``); on ``CheckpointError`` this module lists the trial's other
checkpoints on the experiment storage (local, NFS or cloud: Ray's own filesystem handle), newest
first, and loads the first that verifies. ``CheckpointConfig(num_to_keep>=2)`` keeps the previous
one until a newer one exists, so one bad save costs one epoch of re-training, not the trial.

The storage helpers (``storage_filesystem``, ``probe_storage``, ``remove_trial_checkpoints``)
work through pyarrow filesystems, as Ray does, so that ``--storage s3://...`` or ``file://...``
is checked before start-up and pruned after a finished run like a local folder.
"""

from __future__ import annotations

import logging
import os
import posixpath
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


def storage_filesystem(storage: str) -> tuple[Any, str]:
    """``(filesystem, path)`` of a Ray ``storage_path``, resolved as Ray resolves it: a URI
    (``s3://``, ``gs://``, ``file://``) by pyarrow, anything else as a local folder. An object
    store's paths have no scheme (``bucket/prefix/...``): they open only with their filesystem."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    if "://" in storage:
        return FileSystem.from_uri(storage)
    return LocalFileSystem(), str(Path(storage).absolute())


def probe_storage(fs: Any, path: str) -> None:
    """Create ``path`` and write and delete a file there, so that storage Ray could not use
    fails now, not after the model is built; folders made for the probe go again, empty (Ray
    makes them itself). Raises ``OSError`` (a path component that is a file, no permission, no
    bucket)."""
    from pyarrow.fs import FileSelector, FileType

    made = []  # the folders the probe creates, deepest first
    folder = path.rstrip("/") or path
    while folder and fs.get_file_info(folder).type == FileType.NotFound:
        made.append(folder)
        parent = posixpath.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if fs.get_file_info(path).type == FileType.File:
        raise NotADirectoryError(f"{path} is a file, not a folder")
    fs.create_dir(path, recursive=True)
    probe = posixpath.join(path, f".qtt-probe-{os.urandom(4).hex()}")
    with fs.open_output_stream(probe) as out:
        out.write(b"probe")
    fs.delete_file(probe)
    for made_dir in made:
        if fs.get_file_info(FileSelector(made_dir, allow_not_found=True)):
            break  # something else writes there now: leave it
        fs.delete_dir(made_dir)


def remove_trial_checkpoints(fs: Any, experiment_path: str) -> tuple[int, int]:
    """Delete the ``<trial>/checkpoint_*`` folders of one experiment on any filesystem (local,
    ``file://``, object store); returns (folders, bytes) removed. A folder that cannot be
    deleted stays and is not counted."""
    from pyarrow.fs import FileSelector, FileType

    removed, size = 0, 0
    trials = fs.get_file_info(FileSelector(experiment_path, allow_not_found=True))
    for trial in sorted(trials, key=lambda info: info.path):
        if trial.type == FileType.Directory:
            trial_removed, trial_size = remove_checkpoint_folders(fs, trial.path)
            removed, size = removed + trial_removed, size + trial_size
    return removed, size


def remove_checkpoint_folders(fs: Any, trial_path: str) -> tuple[int, int]:
    """Delete one trial's ``checkpoint_*`` folders; returns (folders, bytes) removed."""
    from pyarrow.fs import FileSelector, FileType

    removed, size = 0, 0
    for folder in sorted(fs.get_file_info(FileSelector(trial_path, allow_not_found=True)),
                         key=lambda info: info.path):
        if folder.type != FileType.Directory or not folder.base_name.startswith("checkpoint_"):
            continue
        try:
            files = fs.get_file_info(FileSelector(folder.path, recursive=True))
            folder_size = sum(f.size or 0 for f in files if f.type == FileType.File)
            fs.delete_dir(folder.path)
        except OSError as err:
            log.warning("could not remove checkpoint %s: %s", folder.path, err)
            continue
        removed, size = removed + 1, size + folder_size
    return removed, size
