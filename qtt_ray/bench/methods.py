"""The methods the replay benchmark compares, and the per-fold artefacts they share.

A method is a factory: given one episode (test dataset, seed, pool, leave-one-dataset-out
training set) it does its OFFLINE work (meta-training, cached per fold) and returns a
zero-argument constructor of the online searcher, whose wall time ``replay`` counts on the clock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtt_ray.bench import BenchError
from qtt_ray.bench.peers import (
    ASHA,
    Hyperband,
    Oracle,
    RandomFull,
    RandomOneEpoch,
    ShortlistProbe,
    ZeroShot,
    ZeroShotModel,
)
from qtt_ray.core.protocol import Optimizer
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import SearchSpace, config_key

Constructor = Callable[[], Optimizer]


@dataclass
class Episode:
    """One replay: a test dataset, a seed, its pool of recorded runs and the training set."""

    dataset: str
    seed: int
    pool: list[Run]
    meta_features: dict[str, float]
    space: SearchSpace
    max_epochs: int
    train: MetaDataset  # the other datasets (leave-one-dataset-out)

    @property
    def configs(self) -> list[Any]:
        return [run.config for run in self.pool]


@dataclass
class FoldCache:
    """Meta-trained artefacts per training fold: in memory, and predictors also on disk."""

    directory: Path | None = None
    # seed of meta-training; None: the episode's seed, so replay seeds also cover the spread
    # between meta-trainings (measured on the SAM2 folds: up to 0.06 regret between two seeds)
    predictor_seed: int | None = 0
    predictors: dict[str, Any] = field(default_factory=dict)
    zero_shot: dict[tuple[str, int], ZeroShotModel] = field(default_factory=dict)
    contents: dict[int, tuple[MetaDataset, str]] = field(default_factory=dict)

    def seed_for(self, episode_seed: int) -> int:
        return episode_seed if self.predictor_seed is None else self.predictor_seed

    def fold_key(self, train: MetaDataset, seed: int | None = None) -> str:
        """Identity of a training fold: its runs (ids and contents), meta-features, space,
        meta-training seed and the core's training code. Run ids alone are no identity: a
        collection names a run after its dataset and configuration, so the same datasets
        collected again (another --image-size or --model, into another file) reused the
        predictors cached for the first file."""
        digest = hashlib.sha256()
        digest.update(self._content_key(train).encode())
        seed = self.seed_for(0) if seed is None else seed
        digest.update(f"{train.max_epochs}/{seed}".encode())
        digest.update(_core_fingerprint().encode())
        return digest.hexdigest()[:16]

    def _content_key(self, train: MetaDataset) -> str:
        """Hash of the fold's space, runs and meta-features, once per fold object (0.07 s for
        Meta-Album's 4,665 runs, asked for by every method of every episode)."""
        known = self.contents.get(id(train))
        if known is not None and known[0] is train:
            return known[1]
        digest = hashlib.sha256()
        digest.update(json.dumps(train.space.to_json(), sort_keys=True).encode())
        for run in sorted(train.runs, key=lambda r: r.run_id):
            digest.update(json.dumps([run.run_id, run.dataset, config_key(run.config)]).encode())
            digest.update(run.scores.tobytes() + run.costs.tobytes())
        digest.update(json.dumps(train.meta_features, sort_keys=True).encode())
        self.contents[id(train)] = (train, digest.hexdigest())  # holds it: the id stays its own
        return self.contents[id(train)][1]

    def trained_predictors(self, train: MetaDataset, seed: int = 0) -> Any:
        """The fold's predictors meta-trained with ``seed_for(seed)``."""
        from qtt_ray.core import train_predictors
        from qtt_ray.core.predictors import Predictors

        seed = self.seed_for(seed)
        key = self.fold_key(train, seed)
        if key not in self.predictors:
            folder = self.directory / f"predictors-{key}" if self.directory else None
            if folder is not None and (folder / "predictors.json").is_file():
                self.predictors[key] = Predictors.load(folder, train.space)
            else:
                print(f"  meta-training predictors for fold {key} ({len(train.datasets)} datasets)",
                      file=sys.stderr, flush=True)
                predictors = train_predictors(train, seed=seed)
                if folder is not None:
                    predictors.save(folder)
                self.predictors[key] = predictors
        return self.predictors[key]

    def zero_shot_model(self, train: MetaDataset, seed: int) -> ZeroShotModel:
        key = (self.fold_key(train), seed)
        if key not in self.zero_shot:
            self.zero_shot[key] = ZeroShotModel(train, seed=seed)
        return self.zero_shot[key]


@functools.lru_cache(maxsize=1)
def _core_fingerprint() -> str:
    """Hash of the core's sources, read once per process (a run uses one version)."""
    core = Path(__file__).resolve().parents[1] / "core"
    digest = hashlib.sha256()
    for path in sorted(core.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# -- factories ----------------------------------------------------------------------------------
def _random(ep: Episode, cache: FoldCache) -> Constructor:
    return lambda: RandomFull(ep.configs, ep.max_epochs, ep.seed)


def _random_one_epoch(ep: Episode, cache: FoldCache) -> Constructor:
    return lambda: RandomOneEpoch(ep.configs, ep.max_epochs, ep.seed)


def _asha(ep: Episode, cache: FoldCache) -> Constructor:
    return lambda: ASHA(ep.configs, ep.max_epochs, ep.seed)


def _hyperband(ep: Episode, cache: FoldCache) -> Constructor:
    return lambda: Hyperband(ep.configs, ep.max_epochs, ep.seed)


def _oracle(ep: Episode, cache: FoldCache) -> Constructor:
    return lambda: Oracle(ep.pool, ep.max_epochs, ep.seed)


def _oracle_zero_shot_top(count: int) -> Callable[[Episode, FoldCache], Constructor]:
    """The oracle restricted to the zero-shot regressor's ``count`` top-ranked configurations."""

    def factory(ep: Episode, cache: FoldCache) -> Constructor:
        model = cache.zero_shot_model(ep.train, ep.seed)
        shortlist = model.ranking(ep.configs, ep.meta_features)[:count]
        return lambda: Oracle(ep.pool, ep.max_epochs, ep.seed, shortlist)

    return factory


def _shortlist_probe(shortlist: int, probe_epochs: int
                     ) -> Callable[[Episode, FoldCache], Constructor]:
    def factory(ep: Episode, cache: FoldCache) -> Constructor:
        order = cache.zero_shot_model(ep.train, ep.seed).ranking(ep.configs, ep.meta_features)
        return lambda: ShortlistProbe(ep.configs, ep.max_epochs, ep.seed, order, shortlist,
                                      probe_epochs)

    return factory


def _zero_shot(ep: Episode, cache: FoldCache) -> Constructor:
    model = cache.zero_shot_model(ep.train, ep.seed)
    return lambda: ZeroShot(ep.configs, ep.max_epochs, ep.seed, model, ep.meta_features)


def _quicktune(meta: bool, cost_aware: bool, acquisition: str | None = None,
               **more: Any) -> Callable[[Episode, FoldCache], Constructor]:
    options = ({} if acquisition is None else {"acquisition": acquisition}) | more

    def factory(ep: Episode, cache: FoldCache) -> Constructor:
        try:
            from qtt_ray.core import QuickTunePolicy, untrained_predictors
        except ImportError as err:
            raise BenchError(
                f"quicktune methods need qtt_ray.core.QuickTunePolicy ({err}); "
                "install the full package"
            ) from err
        if meta:
            # the policy copies what it adapts
            predictors = cache.trained_predictors(ep.train, ep.seed)
        else:
            predictors = untrained_predictors(
                ep.space, sorted(ep.meta_features), max_epochs=ep.max_epochs, seed=ep.seed
            )
        return lambda: QuickTunePolicy(
            ep.space, ep.configs, ep.meta_features, predictors, max_epochs=ep.max_epochs,
            seed=ep.seed, cost_aware=cost_aware, **options,
        )

    return factory


def _quicktunetool(ep: Episode, cache: FoldCache) -> Constructor:
    from qtt_ray.bench.quicktunetool import quicktunetool_constructor

    return quicktunetool_constructor(ep, cache.directory)


METHODS: dict[str, Callable[[Episode, FoldCache], Constructor]] = {
    "random": _random,
    "random-1epoch": _random_one_epoch,
    "asha": _asha,
    "hyperband": _hyperband,
    "zero-shot": _zero_shot,
    "zero-shot-probe-2x1": _shortlist_probe(2, 1),
    "zero-shot-probe-3x1": _shortlist_probe(3, 1),
    "zero-shot-probe-3x2": _shortlist_probe(3, 2),
    "quicktune": _quicktune(meta=True, cost_aware=True),
    "quicktune-no-meta": _quicktune(meta=False, cost_aware=True),
    "quicktune-no-cost": _quicktune(meta=True, cost_aware=False),
    "quicktune-lookahead": _quicktune(meta=True, cost_aware=True, acquisition="lookahead"),
    "quicktune-no-exploit": _quicktune(meta=True, cost_aware=True, exploit_epochs=0),
    "quicktune-no-forest": _quicktune(meta=True, cost_aware=True, zero_shot_first=False,
                                      quality_ranking="prior"),
    "quicktune-exploit3": _quicktune(meta=True, cost_aware=True, exploit_epochs=3),
    "quicktune-prior-quality": _quicktune(meta=True, cost_aware=True, quality_ranking="prior"),
    "quicktune-forest-quality": _quicktune(meta=True, cost_aware=True, quality_ranking="forest"),
    "quicktune-late-start": _quicktune(meta=True, cost_aware=True, late_start=True),
    "quicktunetool": _quicktunetool,
    "oracle": _oracle,
    "oracle-zero-shot-top10": _oracle_zero_shot_top(10),
}
BOUNDS = frozenset({"oracle", "oracle-zero-shot-top10"})  # they know the curves: not searchers
# ablations of the zero-shot peer, measured once in docs/benchmarks.md: not in the default set
PROBES = frozenset(m for m in METHODS if m.startswith("zero-shot-probe-"))
DEFAULT_METHODS = [m for m in METHODS if m not in BOUNDS | PROBES]
# methods whose decisions use the remaining budget (``ask(remaining_s)``); the others plan the
# same for any deadline, so one replay serves every budget
BUDGET_AWARE = frozenset(
    BOUNDS | {"quicktune", "quicktune-no-meta", "quicktune-no-cost", "quicktune-lookahead",
              "quicktune-no-exploit", "quicktune-no-forest", "quicktune-exploit3",
              "quicktune-prior-quality", "quicktune-forest-quality", "quicktune-late-start"})


def check_methods(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise BenchError(
            f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}"
        )
    return names
