"""The differentiable box-prompt forward: shapes, batching per box, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from qtt_ray.data import Example
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.lora import make_trainable

S = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def base():
    return build_model(resolve_spec("micro", image_size=S, seed=0))


def example(seed: int, boxes: list[list[float]]) -> Example:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(len(boxes), S, S)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 1
    return Example(
        image=torch.randn(3, S, S, generator=generator),
        boxes=torch.tensor(boxes),
        masks=masks,
        class_ids=torch.arange(1, len(boxes) + 1),
    )


def test_collate_concatenates_boxes_and_remembers_their_image():
    batch = collate([example(0, [[1, 2, 30, 40]]), example(1, [[0, 0, 10, 10], [5, 5, 60, 60]])])
    assert batch.images.shape == (2, 3, S, S)
    assert batch.boxes.shape == (3, 4) and batch.masks.shape == (3, S, S)
    assert batch.box_image.tolist() == [0, 1, 1]
    assert batch.class_ids.tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="without boxes"):
        collate([example(2, [[0, 0, 3, 3]]), Example(
            torch.zeros(3, S, S), torch.zeros(0, 4), torch.zeros(0, S, S), torch.zeros(0).long()
        )])


def test_logits_per_box_do_not_depend_on_the_rest_of_the_batch(base):
    first, second = example(0, [[1, 2, 30, 40]]), example(1, [[0, 0, 10, 10], [5, 5, 60, 60]])
    with torch.no_grad():
        batch = collate([first, second])
        together = box_logits(base, batch.images, batch.boxes, batch.box_image)
        alone = collate([second])
        separate = box_logits(base, alone.images, alone.boxes, alone.box_image)
    assert together.shape == (3, S, S)
    torch.testing.assert_close(together[1:], separate, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(together[1], together[2])  # the box prompt matters


def test_gradients_reach_lora_and_decoder_only(base):
    config = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0}
    model = make_trainable(copy.deepcopy(base), config).train()
    batch = collate([example(0, [[1, 2, 30, 40]]), example(1, [[5, 5, 60, 60]])]).to("cpu")
    logits = box_logits(model, batch.images, batch.boxes, batch.box_image)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.masks).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(".lora_A." in n for n in grads) and any(".lora_B." in n for n in grads)
    assert any(n.startswith("sam_mask_decoder.") for n in grads)
    assert not any(n.startswith("sam_prompt_encoder.") for n in grads)
    assert all("lora_" in n for n in grads if n.startswith("image_encoder."))


def test_examples_keep_their_targets_as_bytes_and_batches_as_floats():
    """A worker keeps every training example in memory: float32 targets took 4x the bytes
    (camvid at 1024 px, about 10 classes per image: 5.4 GB of examples per worker). A batch
    keeps them as bytes until it is on the device (a quarter of the host-to-GPU copy)."""
    import numpy as np

    from qtt_ray.data.example import example_from_resized

    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 3:9], mask[10:14, 10:12] = 1, 2
    example = example_from_resized(torch.zeros(3, 16, 16), mask)
    assert example.masks.dtype == torch.uint8 and example.masks.shape == (2, 16, 16)
    collated = collate([example])
    assert collated.masks.dtype == torch.uint8
    batch = collated.to("cpu")
    assert batch.masks.dtype == torch.float32
    assert torch.equal(batch.masks, example.masks.float())
    assert batch.masks.sum().item() == 4 * 6 + 4 * 2
