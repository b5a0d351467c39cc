"""Files we write through a library that creates them 0600 (``tempfile.mkstemp``,
safetensors) get the mode a plain ``open`` would give, so a team can read a shared run folder."""

from __future__ import annotations

import os
from pathlib import Path


def process_umask() -> int:
    """The process umask, read without setting it (``os.umask`` would change it for every
    thread for a moment); 022 where /proc does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def as_if_opened(path: str | Path) -> None:
    """chmod ``path`` to 0666 less the umask: the mode ``open(path, "w")`` would have given."""
    os.chmod(path, 0o666 & ~process_umask())
