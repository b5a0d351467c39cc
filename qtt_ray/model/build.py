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

import hashlib
import json
import logging
import os
import socket
import warnings
from dataclasses import asdict, dataclass, replace
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
    "WARNING: --model auto found no official SAM2.1 checkpoint (pass --checkpoint PATH, set "
    f"${CHECKPOINT_ENV} - read by --model auto only - or allow a hub download): using the "
    "randomly initialised 'micro' SAM2 - quality numbers are meaningless, only the machinery is "
    "exercised."
)
SIZE_WARNING = (
    "WARNING: --image-size {size}: the official SAM2 checkpoints are trained at "
    f"{NATIVE_IMAGE_SIZE} px; another size changes the image encoder's positional embedding "
    "and usually lowers quality."
)
_WARNED_SIZE: set[tuple[str, int]] = set()
# image-encoder blocks (sum of the Hiera stages) -> the --model that has that many
BLOCKS_TO_SIZE = {5: MICRO, 12: "tiny", 16: "small", 24: "base-plus", 48: "large"}
SAM2_1_ONLY_KEY = "no_obj_embed_spatial"  # a SAM2.1 parameter that SAM2.0 checkpoints lack
HASH_CHUNK = 1 << 22
_HASHES: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256
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
    # the checkpoint's bytes and SHA-256, recorded when tuning starts: a rebuild refuses another
    # file; None in specs written before they were recorded (then nothing is checked)
    checkpoint_size: int | None = None
    checkpoint_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def same_base(self, other: ModelSpec) -> bool:
        """The same network, wherever its checkpoint lies now (a moved file is the same base);
        fingerprints are compared when both sides have one."""
        if _placeless(self) != _placeless(other):
            return False
        if self.checkpoint_sha256 and other.checkpoint_sha256:
            return self.checkpoint_sha256 == other.checkpoint_sha256
        return True

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
                checkpoint_size=_optional_int(data.get("checkpoint_size")),
                checkpoint_sha256=_optional_str(data.get("checkpoint_sha256")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"malformed model spec {json.dumps(data)[:200]}: {err}") from err


def _placeless(spec: ModelSpec) -> ModelSpec:
    """``spec`` without where its checkpoint lies or its fingerprint (only whether it has one)."""
    where = None if spec.checkpoint is None else ""
    return replace(spec, checkpoint=where, checkpoint_size=None, checkpoint_sha256=None)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


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
        spec = _spec(SIZE_ALIASES["tiny"], str(found), image_size, seed)
        _warn_off_native_size(spec)
        return spec
    if name == MICRO:
        return _spec(MICRO, None if checkpoint is None else str(checkpoint), image_size, seed)
    if checkpoint is None:
        checkpoint = _named_hub_checkpoint(name, allow_download)
    spec = _spec(name, str(checkpoint), image_size, seed)
    _warn_off_native_size(spec)
    return spec


def _named_hub_checkpoint(name: str, allow_download: bool) -> Path:
    """The cached checkpoint of a named hub model, else a download - only after the same quick
    probe as ``auto``, so an offline machine fails at once instead of after ~30 s of retries."""
    found = find_hub_checkpoint(name, download=False)
    if found is None and allow_download and hub_reachable():
        found = find_hub_checkpoint(name, download=True)
    if found is None:
        raise ModelError(
            f"--model {name}: checkpoint not in the Hugging Face cache and the hub is not "
            f"reachable; pass --checkpoint PATH to a local {HUB_MODELS[name][1]}"
        )
    return found


def _warn_off_native_size(spec: ModelSpec) -> None:
    """Official weights at another input size work but are off their training size: say so
    once per process (the spec is resolved again by every actor)."""
    key = (spec.name, spec.image_size)
    if spec.name != MICRO and spec.image_size != NATIVE_IMAGE_SIZE and key not in _WARNED_SIZE:
        _WARNED_SIZE.add(key)
        LOG.warning(SIZE_WARNING.format(size=spec.image_size))


def _spec(name: str, checkpoint: str | None, image_size: int | None, seed: int) -> ModelSpec:
    default = MICRO_IMAGE_SIZE if name == MICRO else NATIVE_IMAGE_SIZE
    size = default if image_size is None else int(image_size)
    if size < 32 or size % 32:
        raise ModelError(f"--image-size {size} is invalid; use a positive multiple of 32")
    config = TINY_CONFIG if name == MICRO else HUB_MODELS[name.removesuffix(RANDOM_INIT)][0]
    return ModelSpec(name, config, size, checkpoint, int(seed), checkpoint is not None)


def recorded_spec(
    name: str, checkpoint: str | None, image_size: int | None, seed: int,
    fingerprint: tuple[int, str] | None = None,
) -> ModelSpec:
    """The spec of an already pinned run (canonical ``name``), without looking for the file:
    a resume or predict may need to re-point a checkpoint that has moved."""
    spec = _spec(canonical_name(name), checkpoint, image_size, seed)
    return with_fingerprint(spec, fingerprint)


def _require_file(path: Path, option: str | None = None) -> None:
    where = f"${option}" if option else "--checkpoint"
    if path.is_dir():
        raise ModelError(f"{where} {path}: is a directory; give the path of the SAM2 checkpoint "
                         "file (.pt or .safetensors) inside it")
    if not path.is_file():
        raise ModelError(f"{where} {path}: no such file; give the path of a SAM2 .pt checkpoint")


# -- the checkpoint's fingerprint ----------------------------------------------------------------
def checkpoint_fingerprint(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(bytes, SHA-256 hex) of a checkpoint file; hashed once per process and file version."""
    file = Path(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return stat.st_size, _HASHES[key]


def with_fingerprint(spec: ModelSpec, fingerprint: tuple[int, str] | None = None) -> ModelSpec:
    """``spec`` with its checkpoint's size and SHA-256: ``fingerprint`` as recorded, else
    measured now (tune start); a spec without checkpoint is returned unchanged."""
    if spec.checkpoint is None:
        return spec
    size, sha256 = fingerprint or checkpoint_fingerprint(spec.checkpoint)
    return replace(spec, checkpoint_size=int(size), checkpoint_sha256=str(sha256))


def verify_checkpoint(spec: ModelSpec, full: bool = True) -> None:
    """Refuse a checkpoint file that is not the recorded one: size always, SHA-256 when
    ``full`` (actors skip the hash: the driver checked the same file at start or resume)."""
    if spec.checkpoint is None or spec.checkpoint_size is None:
        return  # random weights, or a spec recorded before fingerprints: nothing to compare
    path = Path(spec.checkpoint)
    _require_file(path)
    size = path.stat().st_size
    sha256 = checkpoint_fingerprint(path)[1] if full and spec.checkpoint_sha256 else None
    if size != spec.checkpoint_size or (sha256 is not None and sha256 != spec.checkpoint_sha256):
        found = f"{size} bytes" + (f", sha256 {sha256[:12]}" if sha256 else "")
        raise ModelError(
            f"checkpoint {path}: not the file this model was tuned with ({found}; expected "
            f"{spec.checkpoint_size} bytes, sha256 {str(spec.checkpoint_sha256)[:12]}); pass "
            "--checkpoint PATH to the original checkpoint"
        )


def locate_checkpoint(spec: ModelSpec, override: str | os.PathLike[str] | None = None
                      ) -> ModelSpec:
    """Find a recorded base checkpoint again (predict, resume): ``override`` (--checkpoint),
    else the recorded path, else for hub models the current Hugging Face cache; the file must
    match the recorded fingerprint."""
    if spec.checkpoint is None:
        if override is not None:
            raise ModelError(f"--checkpoint {override}: this model ({spec.name}) has random "
                             "weights and no base checkpoint to re-point; drop --checkpoint")
        return spec
    if override is not None:
        _require_file(Path(override))
        moved = replace(spec, checkpoint=os.path.abspath(override))
    elif Path(spec.checkpoint).is_file():
        moved = spec
    else:
        moved = replace(spec, checkpoint=str(_find_moved(spec)))
    verify_checkpoint(moved)
    return moved


def _find_moved(spec: ModelSpec) -> Path:
    """A hub model's checkpoint from the current cache, when the recorded file is gone."""
    name = spec.name.removesuffix(RANDOM_INIT)
    found = find_hub_checkpoint(name, download=False) if name in HUB_MODELS else None
    if found is None:
        digest = f" (sha256 {spec.checkpoint_sha256[:12]})" if spec.checkpoint_sha256 else ""
        raise ModelError(
            f"base checkpoint {spec.checkpoint} is gone (moved or deleted); pass --checkpoint "
            f"PATH to where that file{digest} is now"
        )
    return found


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
        torch.random.default_generator.manual_seed(spec.seed)  # CPU only: built on the CPU
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
        verify_checkpoint(spec, full=False)  # the bytes; the hash is checked by the caller
        load_checkpoint(model, Path(spec.checkpoint), spec.name)
    return model.to(device).eval()


def load_checkpoint(model: nn.Module, path: Path, name: str) -> None:
    """Strictly load SAM2 weights from ``path``; misfits become one-line errors that say which
    ``--model`` the file looks like."""
    state = read_state_dict(path)
    expected = model.state_dict()
    detail = _mismatch(expected, state)
    if detail:
        raise ModelError(f"checkpoint {path} does not match model {name!r} ({detail}); "
                         f"{_model_hint(state, name)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied: torch says which
        raise ModelError(f"checkpoint {path} does not load into model {name!r} "
                         f"({one_line(err)[:200]})") from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint: ``{"model": state_dict}`` (official), a bare state dict, or
    a .safetensors file; never unpickles arbitrary objects."""
    _require_file(path)
    payload = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if (not isinstance(payload, dict) or not payload
            or not all(isinstance(v, torch.Tensor) for v in payload.values())):
        raise ModelError(
            f"checkpoint {path}: expected SAM2 weights - a dict with a 'model' state dict "
            "(official .pt), a bare state dict of tensors, or a .safetensors file"
        )
    return {str(key): value for key, value in payload.items()}


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length, then the JSON header."""
    with path.open("rb") as stream:
        head = stream.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _read_safetensors(path: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"checkpoint {path}: not a readable .safetensors file "
                         f"({one_line(err)[:160]}); re-download it if it was cut off") from err


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors have many types
        if _refused_pickle(path, err):
            raise ModelError(
                f"checkpoint {path}: not a plain tensor checkpoint (it holds pickled Python "
                "objects, e.g. a whole model, which are not loaded for safety); save "
                "{'model': model.state_dict()} or a .safetensors file instead"
            ) from err
        detail = one_line(err).split(". ")[0][:160]
        if "Weights only load failed" in detail:  # torch's unpickler met bytes it cannot parse
            detail = "not a file written by torch.save"
        raise ModelError(
            f"checkpoint {path}: not a readable torch checkpoint ({detail}); pass an official "
            "SAM2.1 .pt file, re-download it if it was cut off"
        ) from err


def _refused_pickle(path: Path, err: BaseException) -> bool:
    """Did torch's safe unpickler refuse Python objects (a whole model, a plain pickle), as
    opposed to bytes that are no checkpoint at all (cut off, another format)?"""
    text = str(err)
    if "Weights only load failed" not in text:
        return False
    if "Unsupported operand" not in text:
        return True  # a blocked global: pickled Python objects
    with path.open("rb") as stream:
        return stream.read(1) == b"\x80"  # a pickle's protocol marker: objects torch can't read


def _mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """Counts of missing, unexpected and mis-shaped keys, each with whole example names."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {list(state[key].shape)} vs {list(value.shape)}"
              for key, value in expected.items()
              if key in state and state[key].shape != value.shape]
    parts = [_examples(found, label) for label, found in (
        ("missing key", missing), ("unexpected key", unexpected),
        ("shape mismatch (file vs model)", shapes)) if found]
    return "; ".join(parts)


def _examples(found: list[str], label: str, shown: int = 2) -> str:
    """``N label(s): first, second, +M more`` - whole names, never cut mid-name."""
    count = len(found)
    noun = label if count == 1 else label.replace("key", "keys").replace("mismatch ", "mismatches ")
    more = f", +{count - shown} more" if count > shown else ""
    return f"{count} {noun}: {', '.join(found[:shown])}{more}"


def guess_model(state: dict[str, torch.Tensor]) -> str | None:
    """The ``--model`` a state dict looks like, from its image-encoder block count and
    whether it has SAM2.1's ``no_obj_embed_spatial``; None when unrecognisable."""
    blocks = {key.split(".")[3] for key in state if key.startswith("image_encoder.trunk.blocks.")}
    size = BLOCKS_TO_SIZE.get(len(blocks))
    if size is None or size == MICRO:
        return size
    if SAM2_1_ONLY_KEY not in state:
        return f"facebook/sam2-hiera-{size}"
    return size


def _model_hint(state: dict[str, torch.Tensor], name: str) -> str:
    guess = guess_model(state)
    if guess is None or canonical_name(guess) == name.removesuffix(RANDOM_INIT):
        return "pass the checkpoint that belongs to --model, or the --model it was trained for"
    what = ("a SAM2.0 checkpoint" if guess.startswith("facebook/sam2-") else
            f"a SAM2 {guess} checkpoint")
    return f"the file looks like {what}: pass --model {guess}"


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``{"model": state_dict}`` in the official layout (tests, exported bases)."""
    torch.save({"model": model.state_dict()}, Path(path))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
