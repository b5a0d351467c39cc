"""Building SAM2: official SAM2.1 checkpoints (hub id or local file) and the CPU-sized ``micro``.

``resolve_spec`` turns what the user typed (``--model``, ``--checkpoint``) into a ``ModelSpec``
once, on the driver; ``build_model(spec)`` rebuilds exactly the same network anywhere (an actor, a
later ``predict``) and never falls back to something else. Only ``auto`` may fall back: to
``micro`` when no official tiny checkpoint can be found, with a loud warning. A full-size
architecture with random weights (``tiny:random``: speed measurements on a GPU where no checkpoint
can be had) is asked for by name, never a fallback.

The spec carries the seed because SAM2's prompt encoder owns a random buffer
(``pe_layer.positional_encoding_gaussian_matrix``): two randomly initialised bases built with
different seeds give different outputs even with identical adapters.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from qtt_ray.cli import one_line

LOG = logging.getLogger(__name__)

TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# hub id -> (hydra config inside the sam2 package, checkpoint file name in the hub repository);
# the same table as sam2.build_sam.HF_MODEL_ID_TO_FILENAMES, owned here so that resolving a name
# never needs sam2's import side effects.
HUB_MODELS: dict[str, tuple[str, str]] = {
    "facebook/sam2.1-hiera-tiny": (TINY_CONFIG, "sam2.1_hiera_tiny.pt"),
    "facebook/sam2.1-hiera-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "facebook/sam2.1-hiera-base-plus": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "sam2.1_hiera_base_plus.pt",
    ),
    "facebook/sam2.1-hiera-large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
    "facebook/sam2-hiera-tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
    "facebook/sam2-hiera-small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "facebook/sam2-hiera-base-plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "facebook/sam2-hiera-large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
}
SIZE_ALIASES = {
    size: f"facebook/sam2.1-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")
}
MICRO = "micro"
AUTO = "auto"
RANDOM_INIT = ":random"  # suffix of a named architecture built with random weights
DEFAULT_MODEL = AUTO
CHECKPOINT_ENV = "QTT_SAM2_CHECKPOINT"
MICRO_IMAGE_SIZE = 128
NATIVE_IMAGE_SIZE = 1024
MICRO_WARNING = (
    "WARNING: no official SAM2.1 checkpoint found (set --checkpoint or $QTT_SAM2_CHECKPOINT, or "
    "allow a hub download): using the randomly initialised 'micro' SAM2 - quality numbers are "
    "meaningless, only the machinery is exercised."
)
_WARNED_RANDOM: set[str] = set()
RANDOM_WARNING = (
    "WARNING: --model {name}: randomly initialised weights at full size - for timing only, "
    "quality numbers are meaningless."
)

# The micro model: the tiny config with every width and depth shrunk, same classes and code
# paths (~0.8 M parameters). Constraints (measured): image size a multiple of 32; a global
# attention block must not be a q-pool block; window_spec >= 2 where the next stage pools;
# d_model a multiple of 16. The memory modules are unused for single images: shrunk to a minimum.
_MICRO_DIM = 32
_MICRO_MEM = 16


def micro_overrides(image_size: int) -> list[str]:
    """Hydra overrides that turn ``sam2.1_hiera_t.yaml`` into the micro model."""
    d, mem, feat = _MICRO_DIM, _MICRO_MEM, image_size // 16
    attn = "++model.memory_attention.layer"
    return [
        "++model.image_encoder.trunk.embed_dim=16",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_spec=[8,4,4,2]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
        f"++model.image_encoder.neck.d_model={d}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={d}",
        f"++model.memory_attention.d_model={d}",
        "++model.memory_attention.num_layers=1",
        f"{attn}.d_model={d}",
        f"{attn}.dim_feedforward={2 * d}",
        f"{attn}.self_attention.embedding_dim={d}",
        f"{attn}.self_attention.feat_sizes=[{feat},{feat}]",
        f"{attn}.cross_attention.embedding_dim={d}",
        f"{attn}.cross_attention.feat_sizes=[{feat},{feat}]",
        f"{attn}.cross_attention.kv_in_dim={mem}",
        f"++model.memory_encoder.in_dim={d}",
        f"++model.memory_encoder.out_dim={mem}",
        f"++model.memory_encoder.position_encoding.num_pos_feats={mem}",
        f"++model.memory_encoder.mask_downsampler.embed_dim={d}",
        f"++model.memory_encoder.fuser.layer.dim={d}",
        "++model.memory_encoder.fuser.num_layers=1",
    ]


class ModelError(ValueError):
    """A model name, checkpoint or image size that cannot be used (one-line message)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same base network: JSON-able, no tensors."""

    name: str  # "micro" or a hub id such as "facebook/sam2.1-hiera-tiny"
    config_name: str
    image_size: int
    checkpoint: str | None
    seed: int
    is_pretrained: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        try:
            return cls(
                name=str(data["name"]),
                config_name=str(data["config_name"]),
                image_size=int(data["image_size"]),
                checkpoint=None if data.get("checkpoint") is None else str(data["checkpoint"]),
                seed=int(data["seed"]),
                is_pretrained=bool(data["is_pretrained"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"malformed model spec {json.dumps(data)[:200]}: {err}") from err


def canonical_name(model: str) -> str:
    """``tiny`` -> ``facebook/sam2.1-hiera-tiny``; hub ids, ``micro`` and ``auto`` unchanged;
    ``tiny:random`` -> ``facebook/sam2.1-hiera-tiny:random``."""
    name = model.strip()
    if name.lower().endswith(RANDOM_INIT):
        base = canonical_name(name[: -len(RANDOM_INIT)])
        if base not in HUB_MODELS:
            raise ModelError(f"--model {model!r}: {RANDOM_INIT} applies to the official "
                             f"architectures (e.g. tiny{RANDOM_INIT}); micro is random already")
        return base + RANDOM_INIT
    name = SIZE_ALIASES.get(name.lower(), name)
    if name in HUB_MODELS or name in (MICRO, AUTO):
        return name
    choices = ", ".join([AUTO, MICRO, *SIZE_ALIASES, *HUB_MODELS])
    raise ModelError(f"--model {model!r} is unknown; choose one of: {choices}")


def resolve_spec(
    model: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    seed: int = 0,
    allow_download: bool = True,
) -> ModelSpec:
    """Pin down which network to build; only ``auto`` may fall back (to micro, with a warning).

    ``auto``: an explicit ``checkpoint``, else ``$QTT_SAM2_CHECKPOINT``, else the SAM2.1 tiny
    checkpoint from the Hugging Face cache, else a download when the hub is reachable; otherwise
    ``micro``. A named hub model needs ``checkpoint`` or the hub (cache or download). ``micro``
    is randomly initialised unless ``checkpoint`` is given. A checkpoint that is found but does
    not fit is an error when building, never a silent fallback.
    """
    name = canonical_name(model)
    if name.endswith(RANDOM_INIT):
        if checkpoint is not None:
            raise ModelError(f"--model {name} is built with random weights; drop --checkpoint "
                             f"or the {RANDOM_INIT} suffix")
        if name not in _WARNED_RANDOM:  # resolved again by pinned() and every actor
            _WARNED_RANDOM.add(name)
            LOG.warning(RANDOM_WARNING.format(name=name))
        return _spec(name, None, image_size, seed)
    if checkpoint is not None:
        _require_file(Path(checkpoint))
    if name == AUTO:
        found = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
        if found is not None:
            _require_file(Path(found), option=CHECKPOINT_ENV if checkpoint is None else None)
        else:
            tiny = SIZE_ALIASES["tiny"]
            found = find_hub_checkpoint(tiny, download=False)
            if found is None and allow_download and hub_reachable():
                found = find_hub_checkpoint(tiny, download=True)
        if found is None:
            LOG.warning(MICRO_WARNING)
            return _spec(MICRO, None, image_size, seed)
        return _spec(SIZE_ALIASES["tiny"], str(found), image_size, seed)
    if name == MICRO:
        return _spec(MICRO, None if checkpoint is None else str(checkpoint), image_size, seed)
    if checkpoint is None:
        found = find_hub_checkpoint(name, download=allow_download)
        if found is None:
            raise ModelError(
                f"--model {name}: checkpoint not in the Hugging Face cache and not downloadable "
                f"here; pass --checkpoint PATH to a local {HUB_MODELS[name][1]}"
            )
        checkpoint = found
    return _spec(name, str(checkpoint), image_size, seed)


def _spec(name: str, checkpoint: str | None, image_size: int | None, seed: int) -> ModelSpec:
    default = MICRO_IMAGE_SIZE if name == MICRO else NATIVE_IMAGE_SIZE
    size = default if image_size is None else int(image_size)
    if size < 32 or size % 32:
        raise ModelError(f"--image-size {size} is invalid; use a positive multiple of 32")
    config = TINY_CONFIG if name == MICRO else HUB_MODELS[name.removesuffix(RANDOM_INIT)][0]
    return ModelSpec(name, config, size, checkpoint, int(seed), checkpoint is not None)


def _require_file(path: Path, option: str | None = None) -> None:
    if not path.is_file():
        where = f"${option}" if option else "--checkpoint"
        raise ModelError(f"{where} {path}: no such file; give the path of a SAM2 .pt checkpoint")


# -- the Hugging Face hub ------------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time (tests change it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "huggingface"
    return Path(home) / "hub"


def find_hub_checkpoint(model_id: str, download: bool = True) -> Path | None:
    """The checkpoint file of ``model_id`` from the local hub cache, else downloaded, else None.

    ``huggingface_hub`` is an optional dependency: without it nothing is found.
    """
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    filename = HUB_MODELS[model_id][1]
    cache = hub_cache_dir()
    cached = try_to_load_from_cache(model_id, filename, cache_dir=cache)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if not download or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        return Path(hf_hub_download(repo_id=model_id, filename=filename, cache_dir=cache))
    except Exception as err:  # noqa: BLE001 - any hub/network failure means "not available"
        LOG.info("hub download of %s failed: %s", model_id, err)
        return None


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """A quick TCP probe, so ``auto`` does not sit through ~25 s of hub retries offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


# -- building ----------------------------------------------------------------------------------
def build_model(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The SAM2Base network of ``spec`` in eval mode on ``device``; raises ModelError on misfit.

    Random parts are drawn from ``spec.seed`` inside a forked RNG, so the caller's global torch
    stream is untouched and the same spec always gives the same network.
    """
    from sam2.build_sam import build_sam2  # heavy import (initialises Hydra): only when needed

    overrides = [f"++model.image_size={spec.image_size}"]
    if spec.name == MICRO:
        overrides += micro_overrides(spec.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        # postprocessing off: its eval-only dynamic multimask fallback uses an untrained head
        model = build_sam2(
            spec.config_name,
            ckpt_path=None,
            device="cpu",
            mode="eval",
            hydra_overrides_extra=overrides,
            apply_postprocessing=False,
        )
    if spec.checkpoint is not None:
        load_checkpoint(model, Path(spec.checkpoint), spec.name)
    return model.to(device).eval()


def load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Strictly load ``{"model": state_dict}`` from ``path``; misfits become one-line errors."""
    _require_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors have many types
        detail = one_line(err).split(". ")[0][:160]  # not torch's "set weights_only=False"
        raise ModelError(
            f"checkpoint {path}: not a readable torch checkpoint ({detail}); pass an official "
            "SAM2.1 .pt file (a dict with a 'model' state dict), re-download it if it was cut off"
        ) from err
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise ModelError(f"checkpoint {path}: expected a dict with a 'model' state dict")
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip()[:160] if len(first) > 1 else (first[0][:160] if first else "")
        raise ModelError(
            f"checkpoint {path} does not match model {name!r} ({detail}); pass the checkpoint "
            f"that belongs to --model, or the --model it was trained for"
        ) from err


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``{"model": state_dict}`` in the official layout (tests, exported bases)."""
    torch.save({"model": model.state_dict()}, Path(path))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
