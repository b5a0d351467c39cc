"""Batches prepared one ahead in a thread: the same epochs bit for bit, a clean stop when an
epoch ends early, and the producer's errors raised where the batch is taken."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from qtt_ray.model.finetune import FineTuner
from qtt_ray.model.lora import trainable_state
from qtt_ray.model.prefetch import Prefetched
from tests.test_model_finetune import AUGMENTED_ONECYCLE, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_items_come_in_order_and_at_most_depth_ahead():
    made: list[int] = []

    def items():
        for i in range(6):
            made.append(i)
            yield i

    taken = []
    with Prefetched(items(), depth=1) as ready:
        for item in ready:
            time.sleep(0.02)  # the producer waits on the full queue meanwhile
            assert len(made) <= item + 3  # this item, one queued, one being put
            taken.append(item)
    assert taken == list(range(6))


def test_closing_early_stops_the_producer():
    made: list[int] = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    before = threading.active_count()
    with Prefetched(endless()) as ready:
        for item in ready:
            if item == 2:
                break
    assert threading.active_count() == before  # joined
    assert len(made) <= 5


def test_an_error_in_the_producer_is_raised_at_its_item():
    def failing():
        yield 1
        raise ValueError("image 7 is unreadable")

    taken = []
    with pytest.raises(ValueError, match="image 7 is unreadable"), Prefetched(failing()) as ready:
        for item in ready:
            taken.append(item)
    assert taken == [1]


def test_a_prefetched_epoch_equals_a_plain_one(spec, base):
    """Augmentation and box jitter draw from the trial's generator in the producer thread: in
    the same order, so the batches, the weights and the generator's state end up the same."""
    data = tiny_dataset(n_train=7)  # an uneven last batch
    plain = FineTuner(spec, AUGMENTED_ONECYCLE, data, base=base, batch_size=2, prefetch=False)
    ahead = FineTuner(spec, AUGMENTED_ONECYCLE, data, base=base, batch_size=2, prefetch=True)
    assert not plain.prefetch and ahead.prefetch
    for _ in range(2):
        want, got = plain.train_epoch(), ahead.train_epoch()
        assert got["loss"] == want["loss"] and got["images"] == want["images"] == 7
    for name, value in trainable_state(plain.model).items():
        assert torch.equal(value, trainable_state(ahead.model)[name]), name
    assert plain.rng.bit_generator.state == ahead.rng.bit_generator.state
    assert plain.evaluate()["iou"] == ahead.evaluate()["iou"]


def test_prefetching_is_for_gpus_by_default(spec, base):
    assert not FineTuner(spec, AUGMENTED_ONECYCLE, tiny_dataset(), base=base).prefetch


def test_a_diverged_prefetched_epoch_ends_and_leaves_no_thread(spec, base):
    tuner = FineTuner(spec, AUGMENTED_ONECYCLE, tiny_dataset(n_train=8), base=base,
                      batch_size=2, prefetch=True)
    with torch.no_grad():  # the first batch's loss is NaN: the epoch ends there
        tuner.model.sam_mask_decoder.output_upscaling[0].weight.fill_(float("nan"))
    before = threading.active_count()
    result = tuner.train_epoch()
    assert result["diverged"] and result["images"] == 0
    assert threading.active_count() == before
