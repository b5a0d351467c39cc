"""Run a check as a user without root's power over file modes (tests of unreadable and
unwritable paths mean nothing as root, and CI runs as root)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest


def _drop_root_file_powers() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn``: remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    a root child's exec'd program obeys file modes like any user (on root-owned files, the owner
    bits). Dropping to ``nobody`` is no option: the interpreter may live in root's 0700 home."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_as_a_plain_user(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args``: as this user, or as root without its power over file modes."""
    preexec = _drop_root_file_powers if os.geteuid() == 0 else None
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=120, preexec_fn=preexec)
    except subprocess.SubprocessError as error:
        if "preexec_fn" not in str(error):
            raise
        pytest.skip("root cannot drop its file-permission capabilities here (no CAP_SETPCAP)")
