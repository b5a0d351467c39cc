"""The performance predictor: a deep-kernel Gaussian process over learning-curve samples.

Network: MLP encoders for the configuration (full one-hot encoding), the dataset meta-features
(narrow, with dropout: meta-datasets hold few distinct datasets), the padded curve prefix with
its mask, the target fidelity t/max_epochs, and the frozen ``ConfigPrior``'s quality score of the
configuration (on a task, a per-pool table may replace it: ``set_pool_quality``); concatenated
and mapped to a 16-d embedding.
GP head: exact GP on the embedding with a Matern-5/2 ScaleKernel plus a ConstantKernel, a
Gaussian likelihood, trained with the exact marginal log-likelihood.

Two choices differ from the textbook ConstantMean DKL, both for ranking before the first
observation of a task:
- the mean is ConstantMean + a linear map of the embedding and of the prior quality (plus the
  last observed score), so the meta-learned network predicts on its own when the GP has no point
  of the new task yet (a ConstantMean GP conditioned on nothing predicts the same value for every
  configuration). ``mean_from_embedding=False`` maps the prior quality only. Measured
  leave-one-dataset-out on the SAM2 curves over 3 meta-training seeds, the prior-only mean ranks
  unseen configurations better (Spearman 0.703 vs 0.683) but predicts the same for every epoch;
  in the replay (10 seeds, one 600 s replay read off at each budget) it scored 0.165/0.108/0.082/
  0.051/0.028 at 60/120/180/300/600 s against 0.141/0.099/0.077/0.048/0.030 with the embedding;
- the ConstantKernel models an unknown per-dataset offset: meta-training batches come from one
  dataset at a time, so the marginal likelihood integrates the dataset's level out and the
  network learns the within-dataset ranking; online, one observation of the task shifts every
  prediction of that task through this shared term.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gpytorch
import numpy as np
import torch
from torch import nn

from qtt_ray.core.errors import PredictorError
from qtt_ray.core.features import FeatureSpec
from qtt_ray.core.seeding import seeded
from qtt_ray.core.threads import torch_threads
from qtt_ray.space import Config

DTYPE = torch.float64


@dataclass
class PerformanceArchitecture:
    """Sizes of the network (stored in the artefact's JSON)."""

    config_hidden: int = 32
    meta_hidden: int = 8
    curve_hidden: int = 16
    joint_hidden: int = 32
    embedding: int = 16
    dropout: float = 0.2
    config_dropout: float = 0.6  # each run has its own configuration: don't let it memorise
    prior_members: int = 5  # ensemble size of the configuration prior (ConfigPrior)
    prior_hidden: int = 32
    # False: the GP mean maps the prior quality only (see the module docstring)
    mean_from_embedding: bool = True


class ConfigPrior(nn.Module):
    """An ensemble of small MLPs: configuration -> quality within a dataset (normal-score scale).

    Meta-trained first, on each training dataset's best scores as gaussianised ranks per dataset,
    so the datasets' different score levels cannot dominate (measured LOO on the SAM2 curves:
    raw-score targets rank a held-out dataset's runs at Spearman 0.47, per-dataset z-scores at
    0.6-0.7).
    It is then frozen and feeds the deep kernel and the GP mean: with no point of a new task the
    GP mean ranks configurations through it. Members are batched weights (one einsum each).
    """

    def __init__(self, width: int, members: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(members, width, hidden))
        self.b1 = nn.Parameter(torch.zeros(members, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(members, hidden, hidden))
        self.b2 = nn.Parameter(torch.zeros(members, 1, hidden))
        self.w3 = nn.Parameter(torch.zeros(members, hidden, 1))  # untrained: 0 everywhere
        self.dropout = nn.Dropout(0.2)
        with torch.no_grad():  # nn.Linear's default initialisation, per member
            self.w1.uniform_(-(width**-0.5), width**-0.5)
            self.w2.uniform_(-(hidden**-0.5), hidden**-0.5)

    def members(self, config: torch.Tensor) -> torch.Tensor:
        """(members, n) predictions."""
        h = self.dropout(torch.relu(torch.einsum("ni,mih->mnh", config, self.w1) + self.b1))
        h = torch.relu(torch.einsum("mni,mih->mnh", h, self.w2) + self.b2)
        return torch.einsum("mni,mio->mno", h, self.w3).squeeze(-1)

    def forward(self, config: torch.Tensor) -> torch.Tensor:
        return self.members(config).mean(dim=0)

    def input_group_norm(self) -> torch.Tensor:
        """Sum over members and input columns of the norm of that column's first-layer weights:
        the group-lasso penalty that switches whole inputs off."""
        return self.w1.pow(2).sum(dim=2).add(1e-12).sqrt().sum()


class FeatureExtractor(nn.Module):
    """Input row -> embedding; the row layout is ``FeatureSpec.assemble``'s."""

    def __init__(self, spec: FeatureSpec, arch: PerformanceArchitecture) -> None:
        super().__init__()
        self.widths = [spec.config_width, spec.meta_width, 2 * spec.max_epochs, 1]
        self.config_net = nn.Sequential(
            nn.Linear(spec.config_width, arch.config_hidden),
            nn.ReLU(),
            nn.Linear(arch.config_hidden, arch.config_hidden),
            nn.ReLU(),
            nn.Dropout(arch.config_dropout),
        )
        self.meta_net = nn.Sequential(
            nn.Linear(max(spec.meta_width, 1), arch.meta_hidden),
            nn.ReLU(),
            nn.Dropout(arch.dropout),
        )
        self.curve_net = nn.Sequential(nn.Linear(2 * spec.max_epochs, arch.curve_hidden), nn.ReLU())
        joint_in = arch.config_hidden + arch.meta_hidden + arch.curve_hidden + 2
        self.joint = nn.Sequential(
            nn.Linear(joint_in, arch.joint_hidden),
            nn.ReLU(),
            nn.Linear(arch.joint_hidden, arch.embedding),
        )

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        config, meta, curve, fidelity = torch.split(x, self.widths, dim=-1)
        if meta.shape[-1] == 0:  # a space without meta-features still gets a (constant) input
            meta = torch.zeros(*meta.shape[:-1], 1, dtype=x.dtype)
        parts = [
            self.config_net(config),
            self.meta_net(meta),
            self.curve_net(curve),
            fidelity,
            quality.unsqueeze(-1),
        ]
        return self.joint(torch.cat(parts, dim=-1))


class EmbeddingMean(gpytorch.means.Mean):
    """ConstantMean plus a linear map of the prior quality, and of the embedding when
    ``from_embedding`` (see the module docstring). Input: the embedding with the quality as its
    last column."""

    def __init__(self, width: int, from_embedding: bool) -> None:
        super().__init__()
        self.from_embedding = from_embedding
        self.constant = gpytorch.means.ConstantMean()
        self.linear = nn.Linear(width + 1 if from_embedding else 1, 1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        inputs = z if self.from_embedding else z[..., -1:]
        return self.constant(z) + self.linear(inputs).squeeze(-1)


class PoolQuality:
    """Quality values of known configuration rows, found by exact match of the row.

    Rows are keyed by an integer hash of their float64 bits (exact, whatever the batch) and
    checked column by column after the lookup, so a collision falls back to the prior instead
    of borrowing another row's value. This runs in every GP forward (adaptation steps too): a
    dense (rows x pool) comparison cost ~5x the prior itself.
    """

    def __init__(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self.rows, self.values = rows.contiguous(), values
        generator = torch.Generator().manual_seed(0)
        self._weights = torch.randint(1, 2**62, (rows.shape[1],), generator=generator) * 2 + 1
        self._sorted_keys, self._order = torch.sort(self._keys(self.rows))

    def _keys(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.contiguous().view(torch.int64) * self._weights).sum(dim=-1)  # wraps

    def lookup(self, config: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(value of the matching row, whether one matched) per configuration row."""
        position = torch.searchsorted(self._sorted_keys, self._keys(config))
        index = self._order[position.clamp_max(len(self._order) - 1)]
        found = (self.rows[index] == config).all(dim=-1)
        return self.values[index], found


class DeepKernelGP(gpytorch.models.ExactGP):
    def __init__(
        self,
        spec: FeatureSpec,
        arch: PerformanceArchitecture,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
    ) -> None:
        super().__init__(None, None, likelihood)
        self.curve_start = spec.config_width + spec.meta_width
        self.max_epochs = spec.max_epochs
        self.config_width = spec.config_width
        self.prior = ConfigPrior(spec.config_width, arch.prior_members, arch.prior_hidden)
        self.pool_quality: PoolQuality | None = None  # a per-task input, not a weight
        self.extractor = FeatureExtractor(spec, arch)
        self.mean_module = EmbeddingMean(arch.embedding, arch.mean_from_embedding)
        self.covar_module = (
            gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5))
            + gpytorch.kernels.ConstantKernel()
        )

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        quality = self.quality(x[..., : self.config_width])
        z = self.extractor(x, quality)
        mean = self.mean_module(torch.cat([z, quality.unsqueeze(-1)], dim=-1))
        mean = mean + self.last_score(x)
        return gpytorch.distributions.MultivariateNormal(mean, self.covar_module(z))

    def quality(self, config: torch.Tensor) -> torch.Tensor:
        """The frozen ConfigPrior's quality of each configuration row; rows found in the
        ``pool_quality`` table (see ``PerformancePredictor.set_pool_quality``) take its value."""
        with torch.no_grad():  # meta-trained before the GP and frozen (see ConfigPrior)
            if self.pool_quality is not None:
                values, found = self.pool_quality.lookup(config)
                if bool(found.all()):  # the policy's rows all come from its pool
                    return values
            self.prior.eval()
            quality = self.prior(config)
            return quality if self.pool_quality is None else torch.where(found, values, quality)

    def last_score(self, x: torch.Tensor) -> torch.Tensor:
        """The last observed score of each curve prefix (0 without one): the mean predicts the
        change from it, so an observed curve counts from the first epoch on."""
        values = x[..., self.curve_start : self.curve_start + self.max_epochs]
        mask = x[..., self.curve_start + self.max_epochs : self.curve_start + 2 * self.max_epochs]
        length = mask.sum(dim=-1).long()
        last = values.gather(-1, (length - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return torch.where(length > 0, last, torch.zeros_like(last))


class PerformancePredictor:
    """Mean and variance of the score of a configuration at a target epoch.

    ``condition(x, y)`` sets the points of the current task the GP is conditioned on (none by
    default: the meta-learned prior); ``predict`` then gives the posterior.
    """

    def __init__(
        self, spec: FeatureSpec, arch: PerformanceArchitecture | None = None, seed: int = 0
    ) -> None:
        self.spec = spec
        self.arch = arch or PerformanceArchitecture()
        with seeded(seed):
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
            )
            self.model = DeepKernelGP(spec, self.arch, likelihood).to(DTYPE)
        with torch.no_grad():  # an untrained prior predicts one constant for everything
            self.model.mean_module.linear.weight.zero_()
        self.initialise_hyperparameters()
        self.mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.model.likelihood, self.model)
        self._context: tuple[torch.Tensor, torch.Tensor] | None = None

    def initialise_hyperparameters(self, score_mean: float = 0.5) -> None:
        """Scales of scores in 0..1 (gpytorch's defaults assume unit-variance targets).

        Starting at noise 1e-3, outputscale and offset variance 0.02 and the mean at the
        training scores' average, the GP head needs no thousand steps to find its scale.
        """
        model = self.model
        model.likelihood.noise = 1e-3
        model.covar_module.kernels[0].outputscale = 0.02
        model.covar_module.kernels[0].base_kernel.lengthscale = 1.0
        model.covar_module.kernels[1].constant = torch.tensor(0.02, dtype=DTYPE)
        model.mean_module.constant.constant = score_mean

    def parameter_groups(self, lr: float, head_lr: float) -> list[dict[str, Any]]:
        """Network weights at ``lr``; the few GP hyperparameters at the faster ``head_lr``."""
        head: list[nn.Parameter] = []
        network: list[nn.Parameter] = []
        for name, parameter in self.model.named_parameters():
            if name.startswith("prior."):
                continue
            (network if name.startswith("extractor.") or "linear" in name else head).append(
                parameter
            )
        return [{"params": network, "lr": lr}, {"params": head, "lr": head_lr}]

    def prior_quality(self, config_x: np.ndarray) -> np.ndarray:
        """The ConfigPrior's quality of encoded configurations (``FeatureSpec.encode_configs``)."""
        with torch.no_grad():
            self.model.prior.eval()
            return self.model.prior(_tensor(config_x)).numpy().copy()

    def set_pool_quality(self, config_x: np.ndarray | None, quality: np.ndarray | None) -> None:
        """Use ``quality`` instead of the ConfigPrior's value for these encoded configurations
        (None: the prior everywhere). A per-task input, not a weight: ``state_dict`` leaves it
        out, ``copy`` keeps it. The policy passes the zero-shot forest's ranking here."""
        if config_x is None or quality is None:
            self.model.pool_quality = None
            return
        rows, values = _tensor(config_x), _tensor(quality).reshape(-1)
        if rows.ndim != 2 or rows.shape[1] != self.model.config_width or len(rows) != len(values):
            raise PredictorError(
                f"set_pool_quality: {tuple(rows.shape)} configuration rows of width "
                f"{self.model.config_width} expected, with one quality each ({len(values)} given)"
            )
        if not torch.isfinite(values).all():
            raise PredictorError("set_pool_quality: quality values must be finite")
        self.model.pool_quality = PoolQuality(rows, values)

    # -- inputs ---------------------------------------------------------------------------
    def inputs(
        self,
        configs: Sequence[Config],
        meta_features: dict[str, float],
        curves: Sequence[Sequence[float]],
        epochs: Sequence[int],
    ) -> np.ndarray:
        return self.spec.inputs(configs, meta_features, curves, epochs)

    # -- training -------------------------------------------------------------------------
    def batch_loss(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        dropout: bool = True,
        mean_weight: float = 1.0,
    ) -> torch.Tensor:
        """Loss of one batch of one dataset: -MLL per point + ``mean_weight`` x mean-fit term.

        The mean-fit term is the within-batch-centred squared error of the prior mean, divided
        by the batch's score variance (1 - R^2 of the within-dataset ranking). The MLL alone
        lets the kernel explain a dataset through in-batch correlations, which a zero-shot
        prediction (no point of the task yet) cannot use; this term makes the mean rank on its own.
        """
        xt, yt = _tensor(x), _tensor(y)
        self.model.train()
        if not dropout:  # validation: the likelihood needs train mode, the network does not
            self.model.extractor.eval()
        self.model.set_train_data(xt, yt, strict=False)
        with gpytorch.settings.cholesky_jitter(1e-6):
            prior = self.model(xt)
            loss = -self.mll(prior, yt)
        if mean_weight > 0 and yt.shape[0] > 1:
            residual = prior.mean - yt
            centred = residual - residual.mean()
            loss = loss + mean_weight * centred.pow(2).mean() / yt.var().clamp_min(1e-4)
        return loss

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def adapt(
        self, x: np.ndarray, y: np.ndarray, max_steps: int, max_seconds: float | None, seed: int
    ) -> int:
        """Fine-tune on the current task's points; returns the number of steps taken.

        Bounded by ``max_steps`` and ``max_seconds`` (whichever comes first); seeded, so the
        same points and the same step count give the same weights.
        """
        if max_steps <= 0 or len(y) < 2:
            return 0
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        steps = 0
        with seeded(seed), torch_threads(1):
            start = time.perf_counter()  # the limit counts from here, not from lock waiting
            for steps in range(1, max_steps + 1):  # noqa: B007 - the count is the result
                optimizer.zero_grad()
                loss = self.batch_loss(x, y)
                loss.backward()
                optimizer.step()
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    break
        self._apply_context()
        return steps

    # -- prediction -----------------------------------------------------------------------
    def condition(self, x: np.ndarray | None, y: np.ndarray | None) -> None:
        """Condition the GP on the given points of the current task (None: no points)."""
        if x is None or y is None or len(y) == 0:
            self._context = None
        else:
            self._context = (_tensor(x), _tensor(y))
        self._apply_context()

    def _apply_context(self) -> None:
        self.model.eval()
        if self._context is None:
            self.model.train_inputs = None
            self.model.train_targets = None
            self.model.prediction_strategy = None
        else:
            self.model.set_train_data(*self._context, strict=False)

    def predict_inputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model.training:
            self._apply_context()
        with torch.no_grad(), torch_threads(1):
            mean, var = self._posterior(_tensor(x))
        return mean.numpy().copy(), var.clamp_min(1e-10).numpy().copy()

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact GP posterior of the observed score (noise included) at ``x``.

        The same algebra as ``likelihood(model(x))`` in eval mode (one Cholesky of the
        conditioning points' covariance plus noise), written out: gpytorch's lazy-tensor
        machinery cost ~7 ms of every ~9 ms decision, on matrices of a few hundred rows.
        """
        model = self.model
        noise = model.likelihood.noise.reshape(())
        if self._context is None:
            prior = model.forward(x)
            return prior.mean, prior.variance + noise
        train_x, train_y = self._context
        n = len(train_y)
        joint = model.forward(torch.cat([train_x, x]))
        mean, covariance = joint.mean, joint.lazy_covariance_matrix.to_dense()
        chol = _cholesky(covariance[:n, :n] + noise * torch.eye(n, dtype=covariance.dtype))
        cross = covariance[n:, :n]
        alpha = torch.cholesky_solve((train_y - mean[:n]).unsqueeze(-1), chol).squeeze(-1)
        reduced = torch.linalg.solve_triangular(chol, cross.T, upper=False)
        variance = covariance[n:, n:].diagonal() - (reduced * reduced).sum(0) + noise
        return mean[n:] + cross @ alpha, variance

    def predict(
        self,
        configs: Sequence[Config],
        meta_features: dict[str, float],
        curves: Sequence[Sequence[float]],
        epochs: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the score at ``epochs`` given each curve prefix (numpy)."""
        return self.predict_inputs(self.inputs(configs, meta_features, curves, epochs))

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k: v.to(DTYPE) for k, v in state.items()})
        self._apply_context()

    def architecture_json(self) -> dict[str, Any]:
        return asdict(self.arch)

    def copy(self) -> PerformancePredictor:
        """An independent copy (the policy adapts its own copy, never the shared artefact)."""
        twin = PerformancePredictor(self.spec, copy.deepcopy(self.arch))
        twin.load_state_dict(self.state_dict())
        twin.model.pool_quality = self.model.pool_quality  # read-only: shared
        return twin


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor; on failure retried with 1e-6 ... 1e-3 added to the diagonal."""
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    for jitter in (0.0, 1e-6, 1e-5, 1e-4, 1e-3):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return factor
    raise PredictorError("the GP covariance is not positive definite even with jitter")


def _tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(DTYPE)
    return torch.as_tensor(np.ascontiguousarray(values), dtype=DTYPE)
