"""Checkpoint integrity: a manifest of file sizes and sha256 digests, written last.

A folder without its manifest is an interrupted save; a file that does not match it is corrupt
or truncated. Plain Python (no torch, no Ray), so every trainable and the model's state files
share it, and the replay trainable stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete, truncated or corrupt (names the folder and file)."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, names: Iterable[str]) -> Path:
    """Record size + sha256 of ``names`` (files in ``directory``); written last, atomically."""
    folder = Path(directory)
    files = {
        name: {"size": (folder / name).stat().st_size, "sha256": file_digest(folder / name)}
        for name in sorted(names)
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def verify_manifest(directory: str | Path) -> None:
    """Raise ``CheckpointError`` unless every file of the manifest is there, whole and unchanged."""
    folder = Path(directory)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
    except FileNotFoundError as err:
        raise CheckpointError(
            f"{folder}: no {MANIFEST}; the checkpoint was not saved completely"
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder / MANIFEST}: unreadable manifest ({err})") from err
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: checkpoint file {name} is missing")
        size = path.stat().st_size
        if size != int(expected["size"]):
            raise CheckpointError(
                f"{path}: truncated or overwritten ({size} bytes, manifest says "
                f"{expected['size']})"
            )
        if file_digest(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: corrupt (sha256 differs from {MANIFEST})")
