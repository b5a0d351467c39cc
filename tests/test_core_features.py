"""Input encoding of the predictors and the curve -> training-sample transformation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtt_ray.core.errors import PredictorError
from qtt_ray.core.features import BAD_SCORE, FeatureSpec, sanitize_scores
from qtt_ray.core.samples import all_pairs, arrays_from_runs, draw_pairs, pair_inputs, task_pairs
from qtt_ray.meta.dataset import Run
from qtt_ray.space import LEARNING_RATES, SAM2_SPACE

META = {"num_samples": 500.0, "num_classes": 1.0}


def spec(max_epochs: int = 10) -> FeatureSpec:
    datasets = {"a": {"num_samples": 100.0, "num_classes": 1.0}, "b": META}
    return FeatureSpec.fit(SAM2_SPACE, datasets, ["num_classes", "num_samples"], max_epochs)


def onecycle_config() -> dict:
    return {
        "lora": 1,
        "lora_rank": 8,
        "lora_dropout": 0.1,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "horizontal_flip": 0,
        "vertical_flip": 1,
        "random_rotate": 0,
        "sched": "onecycle",
        "onecycle_pct_start": 0.05,
        "onecycle_div_factor": 25,
        "onecycle_final_div_factor": 1000,
    }


def test_config_encoding_has_full_one_hot_log_scale_and_inactive_flags() -> None:
    s = spec()
    row = s.encode_configs([onecycle_config()])[0]
    columns = SAM2_SPACE.encoded_columns()
    assert row.shape[0] == s.config_width == len(columns)
    sched_columns = [c for c in columns if c.startswith("sched=")]
    assert len(sched_columns) == 6  # every level has its column (reference defect 1)
    assert row[columns.index("sched=onecycle")] == 1.0
    assert sum(row[columns.index(c)] for c in sched_columns) == 1.0
    # lr on log scale: 1e-4 sits at log(1e-4/1e-5)/log(7e-3/1e-5) of the range
    expected = math.log(1e-4 / LEARNING_RATES[0]) / math.log(LEARNING_RATES[-1] / LEARNING_RATES[0])
    assert row[columns.index("lr")] == pytest.approx(expected, rel=1e-6)
    # inactive plateau parameters: value 0 and active flag 0; active onecycle ones flagged 1
    assert row[columns.index("decay_rate")] == 0.0
    assert row[columns.index("decay_rate:active")] == 0.0
    assert row[columns.index("onecycle_div_factor:active")] == 1.0


def test_meta_features_are_log1p_standardised_with_stored_statistics() -> None:
    s = spec()
    a = s.encode_meta({"num_samples": 100.0, "num_classes": 1.0})
    b = s.encode_meta(META)
    assert np.allclose(a + b, 0.0)  # two datasets: standardised to -1 / +1
    assert b[1] == pytest.approx(1.0)  # num_samples column (names sorted as given)
    restored = FeatureSpec.from_json(s.to_json())
    assert np.allclose(restored.encode_meta(META), b)
    with pytest.raises(PredictorError, match="num_samples"):
        s.encode_meta({"num_classes": 1.0})


def test_curves_are_padded_masked_and_nan_becomes_bad_score() -> None:
    s = spec(max_epochs=4)
    values, mask = s.encode_curves([[], [0.5, float("nan")]])
    assert values.tolist() == [[0, 0, 0, 0], [0.5, BAD_SCORE, 0, 0]]
    assert mask.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]
    assert sanitize_scores([np.inf, 0.2]).tolist() == [BAD_SCORE, 0.2]
    with pytest.raises(PredictorError, match="max_epochs"):
        s.encode_curves([[0.1] * 5])


def test_assemble_checks_the_width_of_every_part() -> None:
    s = spec(max_epochs=4)
    configs = s.encode_configs([onecycle_config()] * 2)
    values, mask = s.encode_curves([[0.5], []])
    meta = s.encode_meta(META)
    rows = s.assemble(configs, meta, values, mask, np.array([0.5, 0.25]))
    assert rows.shape == (2, s.input_width) and rows[0, -1] == 0.5
    with pytest.raises(PredictorError, match=r"width .*expected"):
        s.assemble(configs, meta, values[:, :3], mask, np.array([0.5, 0.25]))  # a short curve
    with pytest.raises(PredictorError, match="configuration"):
        s.assemble(configs[:, 1:], meta, values, mask, np.array([0.5, 0.25]))


def test_pairs_cover_every_prefix_and_target() -> None:
    runs, prefixes, targets = all_pairs(np.array([3, 1]))
    pairs = set(zip(runs.tolist(), prefixes.tolist(), targets.tolist(), strict=True))
    assert pairs == {(0, 0, 1), (0, 0, 2), (0, 1, 2), (0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 1)}
    runs, prefixes, targets = draw_pairs(np.array([10, 4]), 2000, np.random.default_rng(0))
    lengths = np.array([10, 4])[runs]
    assert np.all((0 <= prefixes) & (prefixes < targets) & (targets <= lengths))
    # half the draws are next-epoch pairs; the other half any p < t (next-epoch by chance 1/t)
    assert 0.6 < np.mean(prefixes == targets - 1) < 0.8
    assert np.mean(prefixes < targets - 1) > 0.2


def test_pair_inputs_show_the_prefix_and_target_the_score_at_t() -> None:
    s = spec(max_epochs=4)
    run = Run("r", "a", onecycle_config(), [0.1, 0.2, np.nan, 0.4], [1.0] * 4)
    data = arrays_from_runs(s, "a", [run], META)
    x, y = pair_inputs(s, data, np.array([0, 0]), np.array([2, 0]), np.array([4, 3]))
    start = s.config_width + s.meta_width
    assert x[0, start : start + 4].tolist() == [0.1, 0.2, 0.0, 0.0]  # curve s_1..s_p
    assert x[0, start + 4 : start + 8].tolist() == [1, 1, 0, 0]  # mask
    assert x[:, -1].tolist() == [1.0, 0.75]  # fidelity t / max_epochs
    assert y.tolist() == [0.4, BAD_SCORE]  # the diverged epoch is a bad score


def triples_of(pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    runs, prefixes, targets = (a.tolist() for a in pairs)
    return list(zip(runs, prefixes, targets, strict=True))


def test_task_pairs_keep_next_epoch_pairs_first_and_respect_the_cap() -> None:
    lengths = np.array([5, 5, 2])
    runs, prefixes, targets = task_pairs(lengths, 12, np.random.default_rng(1))
    assert len(runs) == 12
    next_epoch = prefixes == targets - 1
    assert next_epoch.all()  # 12 next-epoch pairs fill a cap of 12 on their own
    assert len(set(triples_of((runs, prefixes, targets)))) == 12
    few = task_pairs(np.array([2]), 100, np.random.default_rng(1))
    assert len(few[0]) == 3


def test_task_pairs_fill_the_cap_with_longer_range_pairs_after_every_next_epoch_pair() -> None:
    lengths = np.array([5, 5])  # 10 next-epoch pairs, 20 longer-range ones (p < t - 1)
    pairs = task_pairs(lengths, 14, np.random.default_rng(3))
    triples = triples_of(pairs)
    assert len(triples) == 14 and len(set(triples)) == 14
    assert set(triples) <= set(triples_of(all_pairs(lengths)))
    next_epoch = {(r, t - 1, t) for r in (0, 1) for t in range(1, 6)}
    assert next_epoch <= set(triples)
    extra = set(triples) - next_epoch
    assert len(extra) == 4 and all(p < t - 1 for _, p, t in extra)
    assert triples_of(task_pairs(lengths, 14, np.random.default_rng(3))) == triples  # seeded
    draws = [triples_of(task_pairs(lengths, 14, np.random.default_rng(s))) for s in range(20)]
    assert all(len(set(draw)) == 14 for draw in draws)  # never a pair twice
    assert len({tuple(draw) for draw in draws}) > 1  # the extras are a seeded random subset
