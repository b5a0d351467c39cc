"""The zero-shot forest: which configuration to train first on a new dataset.

A random forest over (configuration encoding, dataset meta-features) -> each run's best score,
fitted on the meta-training datasets with scikit-learn and then kept as plain arrays (one row per
node of every tree), so an artefact stores it in safetensors and predicting needs neither
scikit-learn nor pickle.

Why a forest and not the GP's prior mean: with no point of the new task, the pick is a pure
zero-shot ranking. Measured leave-one-dataset-out on the SAM2 curves (9 datasets, meta-training
seeds 1-9), training the top pick of each ranker for the budget gives regret 0.104 / 0.056 /
0.046 at 60 / 120 / 180 s for this forest against 0.126 / 0.075 / 0.061 for the meta-trained
GP's prior mean at epoch 1 (and 0.159 / 0.094 / 0.089 for a forest without meta-features, seeds
0-9: raw score levels and the meta-feature splits together let it pick like the most similar
training datasets). In the policy this moved the 10-seed replay at 60 / 120 / 180 s from
0.121 / 0.083 / 0.065 to 0.105 / 0.054 / 0.047 (with ``exploit_epochs`` 3 -> 5; docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qtt_ray.core.errors import PredictorError

LEAF = -1


@dataclass
class ZeroShotForest:
    """Trees flattened into node arrays in scikit-learn's depth-first order, so an inner node's
    left child is the next node and only the right child is stored (``LEAF`` marks a leaf).

    Splits compare float32 inputs with float32 thresholds rounded down, which decides exactly
    as scikit-learn does (it casts inputs to float32 and puts each threshold between two
    float32 values), and keeps 200 SAM2 trees at ~1.7 MB in safetensors.
    """

    roots: np.ndarray  # (trees,) int64: the root node of each tree
    right: np.ndarray  # (nodes,) int64: right child, LEAF for a leaf; left child = node + 1
    feature: np.ndarray  # (nodes,) int64, the input column a split tests
    threshold: np.ndarray  # (nodes,) float32, go left when float32(x[feature]) <= threshold
    value: np.ndarray  # (nodes,) float32, the leaf's prediction
    width: int  # input columns expected

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int, trees: int = 200) -> ZeroShotForest:
        """Fit scikit-learn's RandomForestRegressor (bootstrap, all features per split)."""
        from sklearn.ensemble import RandomForestRegressor

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
            raise PredictorError(
                f"zero-shot forest: need at least 2 rows of inputs and one target each, got "
                f"inputs {x.shape} and targets {y.shape}"
            )
        forest = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1)
        forest.fit(x, y)
        roots, rights, features, thresholds, values = [], [], [], [], []
        offset = 0
        for estimator in forest.estimators_:
            tree = estimator.tree_
            inner = tree.children_left != LEAF
            if (tree.children_left[inner] != np.flatnonzero(inner) + 1).any():
                raise PredictorError(
                    "zero-shot forest: scikit-learn built a tree that is not depth-first; "
                    "install a scikit-learn release from 1.4 on"
                )
            roots.append(offset)
            rights.append(np.where(inner, tree.children_right + offset, LEAF))
            features.append(np.where(inner, tree.feature, 0))
            thresholds.append(_round_down_to_float32(tree.threshold))
            values.append(tree.value.reshape(-1))
            offset += tree.node_count
        return cls(
            np.asarray(roots, dtype=np.int64),
            np.concatenate(rights).astype(np.int64),
            np.concatenate(features).astype(np.int64),
            np.concatenate(thresholds).astype(np.float32),
            np.concatenate(values).astype(np.float32),
            int(x.shape[1]),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Mean over trees of each row's leaf value; all trees walked at once, level by level."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise PredictorError(
                f"zero-shot forest: inputs of shape {x.shape}, expected (n, {self.width}); "
                "the artefact was trained for another search space or meta-features"
            )
        x = x.astype(np.float32)
        node = np.broadcast_to(self.roots, (x.shape[0], self.roots.shape[0])).copy()
        rows = np.arange(x.shape[0])[:, None]
        inner = self.right[node] != LEAF
        while inner.any():
            goes_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(goes_left, node + 1, self.right[node]), node)
            inner = self.right[node] != LEAF
        return self.value[node].astype(np.float64).mean(axis=1)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        arrays = {
            "roots": self.roots.astype(np.int32),
            "right": self.right.astype(np.int32),
            "feature": self.feature.astype(np.int16 if self.width < 2**15 else np.int32),
            "threshold": self.threshold.astype(np.float32),
            "value": self.value.astype(np.float32),
        }
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        state["width"] = torch.tensor([self.width], dtype=torch.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ZeroShotForest:
        try:
            forest = cls(
                state["roots"].numpy().astype(np.int64),
                state["right"].numpy().astype(np.int64),
                state["feature"].numpy().astype(np.int64),
                state["threshold"].numpy().astype(np.float32),
                state["value"].numpy().astype(np.float32),
                int(state["width"].reshape(-1)[0]),
            )
        except KeyError as err:
            raise PredictorError(f"zero-shot forest state lacks {err}") from err
        forest.check()
        return forest

    def check(self) -> None:
        """Reject arrays that would index out of bounds or loop (a corrupted artefact)."""
        n = self.value.shape[0]
        if {a.shape[0] for a in (self.right, self.feature, self.threshold)} != {n} or not n:
            raise PredictorError("zero-shot forest: node arrays of different lengths")
        inner = np.flatnonzero(self.right != LEAF)
        if (
            (self.roots < 0).any()
            or (self.roots >= n).any()
            or (inner + 1 >= n).any()
            or (self.right[inner] >= n).any()
            or (self.feature[inner] < 0).any()
            or (self.feature[inner] >= self.width).any()
        ):
            raise PredictorError("zero-shot forest: a node points outside the arrays")
        if (self.right[inner] <= inner + 1).any():  # both children come after their parent
            raise PredictorError("zero-shot forest: a child precedes its parent (a cycle)")


def forest_inputs(configs_x: np.ndarray, meta_row: np.ndarray) -> np.ndarray:
    """The forest's input rows: each encoded configuration followed by the dataset's encoded
    meta-features (the same layout for meta-training and for a new task's pool)."""
    meta = np.broadcast_to(meta_row, (configs_x.shape[0], np.shape(meta_row)[-1]))
    return np.concatenate([configs_x, meta], axis=1)


def _round_down_to_float32(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each threshold: for float32 inputs, x <= t iff x <= that value."""
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded
