"""The random searcher without Ray: seeded distinct samples, a finite space used up, and a JSON
state that continues the same sample stream (an interrupted experiment resumes it)."""

from __future__ import annotations

import json

from ray.tune.search import Searcher

from qtt_ray.searchers.random_searcher import RandomSearcher
from qtt_ray.space import SAM2_SPACE, Categorical, SearchSpace, config_key

TINY = SearchSpace((Categorical("optimizer", ("adam", "sgd")),), name="tiny")
THREE = SearchSpace((Categorical("optimizer", ("adam", "sgd", "rmsprop")),), name="three")


def suggestions(searcher: RandomSearcher, count: int, start: int = 0) -> list:
    return [searcher.suggest(f"t{start + i}") for i in range(count)]


def test_without_a_pool_it_samples_distinct_valid_configurations_per_seed() -> None:
    drawn = suggestions(RandomSearcher(SAM2_SPACE, seed=4), 6)
    assert all(SAM2_SPACE.validate(c) == c for c in drawn)
    assert len({config_key(c) for c in drawn}) == 6
    assert suggestions(RandomSearcher(SAM2_SPACE, seed=4), 6) == drawn  # seeded
    assert suggestions(RandomSearcher(SAM2_SPACE, seed=5), 6) != drawn


def test_a_finite_space_is_used_up_without_repeats() -> None:
    searcher = RandomSearcher(TINY, seed=0)
    first, second, third = suggestions(searcher, 3)
    assert sorted([first["optimizer"], second["optimizer"]]) == ["adam", "sgd"]
    assert third == Searcher.FINISHED


def test_a_restored_state_continues_the_sample_stream(tmp_path) -> None:
    original = RandomSearcher(SAM2_SPACE, seed=4)
    suggestions(original, 3)
    state = json.loads(json.dumps(original.get_state()))
    assert state["seed"] == 4 and state["drawn"] >= 3 and len(state["seen"]) == 3
    restored = RandomSearcher(SAM2_SPACE, seed=99)  # the state's seed wins
    restored.set_state(state)
    path = tmp_path / "searcher.json"
    original.save(str(path))
    from_file = RandomSearcher(SAM2_SPACE, seed=7)
    from_file.restore(str(path))
    following = suggestions(original, 3, start=3)
    assert suggestions(restored, 3, start=3) == following
    assert suggestions(from_file, 3, start=3) == following
    # not a repeat of what was drawn before the interruption
    uninterrupted = suggestions(RandomSearcher(SAM2_SPACE, seed=4), 6)
    assert uninterrupted[3:] == following


def test_a_restored_pool_order_continues_and_ends() -> None:
    pool = SAM2_SPACE.sample_many(4, seed=1)
    original = RandomSearcher(SAM2_SPACE, seed=2, pool=pool)
    head = suggestions(original, 2)
    restored = RandomSearcher(SAM2_SPACE, seed=0, pool=pool)
    restored.set_state(json.loads(json.dumps(original.get_state())))
    tail = suggestions(restored, 2, start=2)
    assert tail == suggestions(original, 2, start=2)
    assert sorted(map(config_key, head + tail)) == sorted(map(config_key, pool))  # each once
    assert restored.suggest("t4") == Searcher.FINISHED


def test_a_restored_searcher_never_repeats_what_it_drew_before_the_interruption() -> None:
    for seed in range(5):
        original = RandomSearcher(THREE, seed=seed)
        head = suggestions(original, 2)
        restored = RandomSearcher(THREE, seed=seed)
        restored.set_state(json.loads(json.dumps(original.get_state())))
        rest = restored.suggest("t2")
        assert isinstance(rest, dict)
        assert sorted(c["optimizer"] for c in [*head, rest]) == ["adam", "rmsprop", "sgd"]
        assert restored.suggest("t3") == Searcher.FINISHED
