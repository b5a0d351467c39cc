"""Items of an iterator made one ahead in a background thread (a one-worker DataLoader).

Why: a trial's training step waits for its GPU at least twice (the finite-loss and
finite-gradient checks read values back), and while it waits the CPU could already augment,
jitter and collate the next batch. numpy and torch release the GIL in that work. The producer
consumes the iterator in order, so every random draw it makes happens in the same order as
without it: a prefetched epoch is bit-identical to a plain one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetched(Generic[T]):
    """Iterate ``items`` with up to ``depth`` of them made ahead; ``close()`` (or leaving a
    ``with`` block) stops the producer after the item it is making, e.g. when a diverged epoch
    ends early. An exception in the producer is raised in the consumer, at that item."""

    def __init__(self, items: Iterable[T], depth: int = 1) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(items),),
                                        name="qtt-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
