"""``seeded``: torch's global generator seeded for one section, one thread at a time."""

from __future__ import annotations

import threading
import time

import torch

from qtt_ray.core.seeding import seeded


def test_a_seeded_section_is_reproducible_and_leaves_the_callers_stream_alone() -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with seeded(5):
        first = torch.rand(3)
        with seeded(6):  # re-entrant: a seeded section may build a seeded module
            torch.rand(3)
    with seeded(5):
        again = torch.rand(3)
    assert torch.equal(first, again)
    assert torch.equal(torch.rand(3), expected)


def test_a_second_thread_waits_until_the_first_section_ends() -> None:
    inside, release = threading.Event(), threading.Event()
    entered_at: list[float] = []

    def holder() -> None:
        with seeded(1):
            inside.set()
            release.wait(5.0)

    def waiter() -> None:
        with seeded(2):
            entered_at.append(time.monotonic())

    first = threading.Thread(target=holder)
    first.start()
    assert inside.wait(5.0)
    second = threading.Thread(target=waiter)
    second.start()
    time.sleep(0.2)
    assert entered_at == []  # still blocked: the two streams would interleave otherwise
    released_at = time.monotonic()
    release.set()
    first.join(5.0)
    second.join(5.0)
    assert len(entered_at) == 1 and entered_at[0] >= released_at
