"""Seeded use of torch's global random generator, one thread at a time.

Dropout and weight initialisation draw from torch's process-wide generator, and the policy
fine-tunes its network on a background thread. Two seeded sections running at once (a policy's
background adaptation and a second policy being built or adapting in the same process, as in
the replay) would draw from each other's stream and make decisions depend on thread timing.
``seeded`` holds a process-wide lock for the section, forks the generator state (the caller's
stream is left as it was) and seeds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GLOBAL_RNG = threading.RLock()  # re-entrant: a seeded section may build a seeded module


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    with _GLOBAL_RNG, torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
