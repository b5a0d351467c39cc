"""Search spaces: hyperparameters, conditions, seeded sampling and the fixed-width encoding.

One place owns the definition of the QTT-SEG search space (the paper's Table 3). The core works
with any ``SearchSpace`` (the Meta-Album meta-dataset brings its own), so nothing here is SAM2
specific except the ``SAM2_SPACE`` instance at the bottom.

Encoding (used by every predictor): each categorical hyperparameter gets its FULL one-hot width,
each numeric one a single column scaled to [0, 1] (on log scale where the space is log-spaced),
and every conditional hyperparameter an extra "active" column; an inactive value encodes as 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Value = int | float | str | bool
Config = dict[str, Value]
Scale = Literal["linear", "log", "index"]


class SpaceError(ValueError):
    """A configuration or a space description that does not fit the search space."""


@dataclass(frozen=True)
class Condition:
    """The hyperparameter is active only when ``parent`` takes one of ``values``."""

    parent: str
    values: tuple[Value, ...]

    def holds(self, config: Config) -> bool:
        return config.get(self.parent) in self.values


@dataclass(frozen=True)
class Categorical:
    """Unordered choices, one-hot encoded with one column per choice."""

    name: str
    choices: tuple[Value, ...]
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if len(self.choices) < 1 or len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"{self.name}: choices must be non-empty and unique")

    @property
    def width(self) -> int:
        return len(self.choices)

    def sample(self, rng: np.random.Generator) -> Value:
        return self.choices[int(rng.integers(len(self.choices)))]

    def encode(self, value: Value) -> list[float]:
        row = [0.0] * len(self.choices)
        row[self.index(value)] = 1.0
        return row

    def index(self, value: Value) -> int:
        for i, choice in enumerate(self.choices):
            if _same(choice, value):
                return i
        raise SpaceError(f"{self.name}={value!r} is not one of {list(self.choices)}")

    def canonical(self, value: Value) -> Value:
        return self.choices[self.index(value)]


@dataclass(frozen=True)
class Ordinal:
    """Ordered numeric values (a grid), encoded as one column in [0, 1].

    ``scale`` says how: ``log`` (log-spaced values, e.g. the learning rate), ``linear``, or
    ``index`` (the rank of the value, for grids that contain 0 but are spaced geometrically).
    """

    name: str
    values: tuple[float, ...]
    scale: Scale = "linear"
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if len(self.values) < 1 or list(self.values) != sorted(set(self.values)):
            raise SpaceError(f"{self.name}: values must be unique and increasing")
        if self.scale == "log" and self.values[0] <= 0:
            raise SpaceError(f"{self.name}: a log-scaled grid needs positive values")

    @property
    def width(self) -> int:
        return 1

    def sample(self, rng: np.random.Generator) -> Value:
        return self.values[int(rng.integers(len(self.values)))]

    def index(self, value: Value) -> int:
        number = float(value)
        if not math.isfinite(number):  # NaN is "close" to nothing, yet argmin would pick 0
            raise SpaceError(f"{self.name}={value!r} is not one of {list(self.values)}")
        distances = [abs(number - v) for v in self.values]
        best = int(np.argmin(distances))
        if distances[best] > 1e-9 * max(1.0, abs(number)):
            raise SpaceError(f"{self.name}={value!r} is not one of {list(self.values)}")
        return best

    def canonical(self, value: Value) -> Value:
        return self.values[self.index(value)]

    def encode(self, value: Value) -> list[float]:
        if len(self.values) == 1:
            return [0.0]
        if self.scale == "index":
            return [self.index(value) / (len(self.values) - 1)]
        return [_unit(float(value), self.values[0], self.values[-1], self.scale == "log")]


@dataclass(frozen=True)
class Float:
    """A continuous range, encoded as one column in [0, 1] (log scale if ``log``)."""

    name: str
    low: float
    high: float
    log: bool = False
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise SpaceError(f"{self.name}: need 0 < low < high for log, low < high otherwise")

    @property
    def width(self) -> int:
        return 1

    def sample(self, rng: np.random.Generator) -> Value:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def canonical(self, value: Value) -> Value:
        number = float(value)
        if not self.low - 1e-12 <= number <= self.high + 1e-12:
            raise SpaceError(f"{self.name}={value!r} is outside [{self.low}, {self.high}]")
        return number

    def encode(self, value: Value) -> list[float]:
        return [_unit(float(value), self.low, self.high, self.log)]


Hyperparameter = Categorical | Ordinal | Float


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of hyperparameters; parents must come before their conditional children."""

    hyperparameters: tuple[Hyperparameter, ...]
    name: str = "space"
    _by_name: dict[str, Hyperparameter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Hyperparameter] = {}
        for hp in self.hyperparameters:
            if hp.name in by_name:
                raise SpaceError(f"duplicate hyperparameter {hp.name!r}")
            if hp.condition is not None and hp.condition.parent not in by_name:
                raise SpaceError(
                    f"{hp.name}: condition parent {hp.condition.parent!r} must come before it"
                )
            by_name[hp.name] = hp
        object.__setattr__(self, "_by_name", by_name)

    @property
    def names(self) -> list[str]:
        return [hp.name for hp in self.hyperparameters]

    def __getitem__(self, name: str) -> Hyperparameter:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- configurations -------------------------------------------------------------------
    def is_active(self, name: str, config: Config) -> bool:
        hp = self._by_name[name]
        if hp.condition is None:
            return True
        return self.is_active(hp.condition.parent, config) and hp.condition.holds(config)

    def sample(self, rng: np.random.Generator | int) -> Config:
        """One configuration holding only its active hyperparameters."""
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        config: Config = {}
        for hp in self.hyperparameters:
            value = hp.sample(rng)  # always draw, so the stream does not depend on conditions
            if hp.condition is None or (
                hp.condition.parent in config and hp.condition.holds(config)
            ):
                config[hp.name] = _plain(value)
        return config

    def sample_many(self, n: int, seed: int) -> list[Config]:
        """``n`` distinct configurations (fewer only if the space is smaller), seeded."""
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        pool: list[Config] = []
        for _ in range(50 * n + 100):
            config = self.sample(rng)
            key = config_key(config)
            if key not in seen:
                seen.add(key)
                pool.append(config)
                if len(pool) == n:
                    break
        return pool

    def validate(self, config: Config) -> Config:
        """Return the canonical form of ``config`` (active values only); raise on bad input."""
        unknown = set(config) - set(self._by_name)
        if unknown:
            raise SpaceError(f"unknown hyperparameters {sorted(unknown)} for space {self.name}")
        clean: Config = {}
        for hp in self.hyperparameters:
            if not self._active_in(hp, clean):
                continue
            if hp.name not in config:
                raise SpaceError(f"missing active hyperparameter {hp.name!r}")
            clean[hp.name] = _plain(hp.canonical(config[hp.name]))
        return clean

    def _active_in(self, hp: Hyperparameter, partial: Config) -> bool:
        return hp.condition is None or (
            hp.condition.parent in partial and hp.condition.holds(partial)
        )

    # -- encoding -------------------------------------------------------------------------
    @property
    def encoded_width(self) -> int:
        return sum(hp.width + (1 if hp.condition is not None else 0) for hp in self.hyperparameters)

    def encoded_columns(self) -> list[str]:
        columns: list[str] = []
        for hp in self.hyperparameters:
            if isinstance(hp, Categorical):
                columns += [f"{hp.name}={c}" for c in hp.choices]
            else:
                columns.append(hp.name)
            if hp.condition is not None:
                columns.append(f"{hp.name}:active")
        return columns

    def encode(self, config: Config) -> np.ndarray:
        """Fixed-width float vector; inactive hyperparameters are zeros with active flag 0."""
        row: list[float] = []
        clean = self.validate(config)
        for hp in self.hyperparameters:
            active = hp.name in clean
            row += hp.encode(clean[hp.name]) if active else [0.0] * hp.width
            if hp.condition is not None:
                row.append(1.0 if active else 0.0)
        return np.asarray(row, dtype=np.float32)

    def encode_many(self, configs: list[Config]) -> np.ndarray:
        if not configs:
            return np.zeros((0, self.encoded_width), dtype=np.float32)
        return np.stack([self.encode(c) for c in configs])

    # -- serialisation --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        hyperparameters = [_hp_to_json(hp) for hp in self.hyperparameters]
        return {"name": self.name, "hyperparameters": hyperparameters}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchSpace:
        try:
            hps = tuple(_hp_from_json(item) for item in data["hyperparameters"])
        except (KeyError, TypeError) as err:
            raise SpaceError(f"malformed search-space description: {err}") from err
        return cls(hps, name=str(data.get("name", "space")))


def config_key(config: Config) -> str:
    """A stable string identity for a configuration (sorted JSON).

    Numbers are compared as floats, so 1 and 1.0 (an int grid value and the same value read
    back from Parquet or JSON) give the same key.
    """
    return json.dumps({k: _key_value(v) for k, v in config.items()}, sort_keys=True)


def _key_value(value: Any) -> Value:
    value = _plain(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _same(a: Value, b: Value) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _plain(value: Any) -> Value:
    """numpy scalars -> Python scalars; integral floats stay floats (JSON round trips)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unit(value: float, low: float, high: float, log: bool) -> float:
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)


def _hp_to_json(hp: Hyperparameter) -> dict[str, Any]:
    data: dict[str, Any] = {"name": hp.name}
    if isinstance(hp, Categorical):
        data.update(type="categorical", choices=list(hp.choices))
    elif isinstance(hp, Ordinal):
        data.update(type="ordinal", values=list(hp.values), scale=hp.scale)
    else:
        data.update(type="float", low=hp.low, high=hp.high, log=hp.log)
    if hp.condition is not None:
        data["condition"] = {"parent": hp.condition.parent, "values": list(hp.condition.values)}
    return data


def _hp_from_json(data: dict[str, Any]) -> Hyperparameter:
    cond = data.get("condition")
    condition = Condition(cond["parent"], tuple(cond["values"])) if cond else None
    kind = data["type"]
    if kind == "categorical":
        return Categorical(data["name"], tuple(data["choices"]), condition)
    if kind == "ordinal":
        values = tuple(float(v) for v in data["values"])
        return Ordinal(data["name"], values, data.get("scale", "linear"), condition)
    if kind == "float":
        low, high = float(data["low"]), float(data["high"])
        return Float(data["name"], low, high, bool(data.get("log")), condition)
    raise SpaceError(f"unknown hyperparameter type {kind!r} for {data.get('name')!r}")


# ---------------------------------------------------------------------------------------------
# The QTT-SEG search space (paper, Table 3). Names match the columns of qttseg_sam2_curves.csv.
# AdamW and BCE+Dice are fixed, so they are not hyperparameters here.
# ---------------------------------------------------------------------------------------------
LEARNING_RATES = (
    1e-5, 1.2e-5, 1.5e-5, 2e-5, 2.5e-5, 3.5e-5, 5e-5, 6e-5, 6.5e-5, 1e-4, 1.2e-4, 1.8e-4,
    2.5e-4, 3.2e-4, 4e-4, 4.8e-4, 5e-4, 5.5e-4, 8e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3,
    6e-3, 7e-3,
)
SCHEDULERS = ("cosine", "onecycle", "plateau", "cosine_warm", "step", "poly")
MAX_EPOCHS = 10  # the maximum fidelity; LR schedules are always laid out over it

_LORA = Condition("lora", (1,))


def _when(sched: str) -> Condition:
    return Condition("sched", (sched,))


SAM2_SPACE = SearchSpace(
    (
        Ordinal("lora", (0, 1)),
        Ordinal("lora_rank", (4, 8, 16), "log", _LORA),
        Ordinal("lora_dropout", (0.0, 0.1), "linear", _LORA),
        Ordinal("lr", LEARNING_RATES, "log"),
        Ordinal("weight_decay", (0.0, 1e-5, 5e-5, 1e-4), "index"),
        Ordinal("horizontal_flip", (0, 1)),
        Ordinal("vertical_flip", (0, 1)),
        Ordinal("random_rotate", (0, 1)),
        Categorical("sched", SCHEDULERS),
        Ordinal("decay_rate", (0.1, 0.5, 0.8), "linear", _when("plateau")),
        Ordinal("patience_epochs", (0, 1, 2), "linear", _when("plateau")),
        Ordinal("cosine_t0", (2, 3, 5), "linear", _when("cosine_warm")),
        Ordinal("cosine_t_mult", (1, 2), "linear", _when("cosine_warm")),
        Ordinal(
            "onecycle_pct_start",
            tuple(round(0.03 + 0.005 * i, 3) for i in range(15)),
            "linear",
            _when("onecycle"),
        ),
        Ordinal(
            "onecycle_div_factor",
            (10, 15, 20, 25, 30, 40, 50, 65, 80, 100),
            "log",
            _when("onecycle"),
        ),
        Ordinal(
            "onecycle_final_div_factor",
            (10, 20, 40, 80, 160, 320, 640, 1000),
            "log",
            _when("onecycle"),
        ),
        Ordinal("step_size", (3, 5), "linear", _when("step")),
        Ordinal("poly_power", (0.5, 0.9, 1.0), "linear", _when("poly")),
    ),
    name="qttseg-sam2",
)
