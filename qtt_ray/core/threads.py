"""Run torch on one thread inside a context, then restore the caller's setting.

The core's tensors are tiny (batches of ~128 rows, 16-d embeddings): intra-op threading only
adds synchronisation, and on a busy machine it made a training step 10-40x slower (measured:
11 ms vs 117-480 ms per step on 2 shared cores). The thread count is process-global, so it is
changed only inside this context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
