"""Random search over the space (full training of every configuration): the simplest baseline.

Seeded and stateful in JSON, so an interrupted experiment resumes the same sample stream. Tune
checkpoints the searcher but never the scheduler, so the searcher also carries the state of a
scheduler that has some (``scheduler``: ASHA's rungs, see ``qtt_ray.searchers.asha``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from qtt_ray.searchers.properties import AcceptsSearchProperties
from qtt_ray.space import Config, SearchSpace, config_key


class RandomSearcher(AcceptsSearchProperties, Searcher):
    """Suggests distinct configurations sampled from ``space`` with ``seed``."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        metric: str = "iou",
        mode: str = "max",
        pool: list[Config] | None = None,
        scheduler: Any = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.seed = int(seed)
        # with a pool (e.g. recorded runs to replay): a seeded random order of the pool
        self.pool = [dict(c) for c in pool] if pool is not None else None
        self._drawn = 0  # how many samples were drawn, so a restore replays the stream
        self._seen: set[str] = set()
        self._rng = np.random.default_rng(self.seed)
        self.scheduler = scheduler  # None, or has state_dict / load_state_dict

    # Searcher.FINISHED is a string, which Ray's annotation leaves out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.pool is not None:
            order = np.random.default_rng(self.seed).permutation(len(self.pool))
            if self._drawn >= len(order):
                return Searcher.FINISHED
            config = self.pool[int(order[self._drawn])]
            self._drawn += 1
            self._seen.add(config_key(config))
            return dict(config)
        for _ in range(1000):
            config = self.space.sample(self._rng)
            self._drawn += 1
            key = config_key(config)
            if key not in self._seen:
                self._seen.add(key)
                return config
        return Searcher.FINISHED  # the (finite) space is used up

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Random search learns nothing from results."""

    def get_state(self) -> dict[str, Any]:
        state = {"seed": self.seed, "drawn": self._drawn, "seen": sorted(self._seen)}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._rng = np.random.default_rng(self.seed)
        for _ in range(int(state["drawn"]) if self.pool is None else 0):
            self.space.sample(self._rng)
        self._drawn = int(state["drawn"])
        self._seen = set(state["seen"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))
