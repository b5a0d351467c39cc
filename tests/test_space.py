"""The search space: Table 3 exactly, seeded sampling, conditions and the fixed-width encoding."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from qtt_ray.space import (
    LEARNING_RATES,
    SAM2_SPACE,
    Categorical,
    Condition,
    Ordinal,
    SearchSpace,
    SpaceError,
    config_key,
)


def test_table3_values() -> None:
    assert len(LEARNING_RATES) == 27
    assert SAM2_SPACE["lr"].values == LEARNING_RATES
    assert SAM2_SPACE["sched"].choices == (
        "cosine", "onecycle", "plateau", "cosine_warm", "step", "poly",
    )
    assert SAM2_SPACE["lora_rank"].values == (4, 8, 16)
    assert SAM2_SPACE["weight_decay"].values == (0.0, 1e-5, 5e-5, 1e-4)
    pct = SAM2_SPACE["onecycle_pct_start"].values
    assert pct[0] == 0.03 and pct[-1] == 0.1 and len(pct) == 15


def test_names_match_the_meta_dataset_columns(shared_dir) -> None:
    with open(shared_dir / "meta" / "qttseg_sam2_curves.csv") as handle:
        header = next(csv.reader(handle))
    assert set(SAM2_SPACE.names) <= set(header)
    # every recorded configuration is a member of the space once inactive values are dropped
    with open(shared_dir / "meta" / "qttseg_sam2_curves.csv") as handle:
        for row in csv.DictReader(handle):
            raw = {name: row[name] for name in SAM2_SPACE.names}
            raw = {k: (v if k == "sched" else float(v)) for k, v in raw.items()}
            active = {k: v for k, v in raw.items() if SAM2_SPACE.is_active(k, raw)}
            SAM2_SPACE.validate(active)


def test_sampling_is_seeded_and_respects_conditions() -> None:
    first = SAM2_SPACE.sample_many(128, seed=3)
    again = SAM2_SPACE.sample_many(128, seed=3)
    other = SAM2_SPACE.sample_many(128, seed=4)
    assert first == again and first != other
    assert len({config_key(c) for c in first}) == 128
    for config in first:
        assert ("lora_rank" in config) == (config["lora"] == 1)
        assert ("step_size" in config) == (config["sched"] == "step")
        assert ("cosine_t0" in config) == (config["sched"] == "cosine_warm")
        assert SAM2_SPACE.validate(config) == config


def test_encoding_has_full_one_hot_width_and_active_flags() -> None:
    columns = SAM2_SPACE.encoded_columns()
    assert sum(c.startswith("sched=") for c in columns) == 6
    assert SAM2_SPACE.encoded_width == len(columns)
    config = {"lora": 0, "lr": 7e-3, "weight_decay": 0.0, "horizontal_flip": 1,
              "vertical_flip": 0, "random_rotate": 0, "sched": "poly", "poly_power": 0.9}
    row = dict(zip(columns, SAM2_SPACE.encode(config), strict=True))
    assert row["sched=poly"] == 1.0 and sum(row[f"sched={s}"] for s in
                                            SAM2_SPACE["sched"].choices) == 1.0
    assert row["lr"] == pytest.approx(1.0)
    assert row["lora_rank:active"] == 0.0 and row["lora_rank"] == 0.0
    assert row["poly_power:active"] == 1.0 and row["step_size:active"] == 0.0


def test_learning_rate_is_encoded_on_log_scale() -> None:
    lr = SAM2_SPACE["lr"]
    mid = float(np.sqrt(1e-5 * 7e-3))
    geometric = Ordinal("x", (1e-5, mid, 7e-3), "log")
    assert geometric.encode(mid)[0] == pytest.approx(0.5)
    assert lr.encode(1e-4)[0] == pytest.approx(np.log(10) / np.log(700))


def test_bad_configurations_are_named() -> None:
    with pytest.raises(SpaceError, match="lr"):
        SAM2_SPACE.validate({**SAM2_SPACE.sample(0), "lr": 0.5})
    with pytest.raises(SpaceError, match="unknown"):
        SAM2_SPACE.validate({**SAM2_SPACE.sample(0), "momentum": 0.9})
    with pytest.raises(SpaceError, match="missing"):
        SAM2_SPACE.validate({"lora": 0})
    for number in (float("nan"), float("inf"), -float("inf")):  # not snapped onto the grid
        with pytest.raises(SpaceError, match="lr"):
            SAM2_SPACE.validate({**SAM2_SPACE.sample(0), "lr": number})


def test_json_round_trip_and_parent_order() -> None:
    restored = SearchSpace.from_json(SAM2_SPACE.to_json())
    config = SAM2_SPACE.sample(11)
    assert restored.encode(config).tolist() == SAM2_SPACE.encode(config).tolist()
    with pytest.raises(SpaceError, match="before"):
        SearchSpace((Ordinal("child", (1, 2), condition=Condition("parent", (1,))),
                     Categorical("parent", (0, 1))))


def test_config_key_ignores_int_versus_float() -> None:
    config = SAM2_SPACE.sample(5)
    as_floats = {k: (float(v) if not isinstance(v, str) else v) for k, v in config.items()}
    assert config_key(config) == config_key(as_floats)
