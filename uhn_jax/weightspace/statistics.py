"""The baselines of SNE: weight statistics (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights") and the flattened weights.

:func:`features` puts a network's statistics in fixed slots that exist for any depth: the
first layer, the hidden layers pooled (every layer between the first and the last, their
values concatenated) and the last layer, each with the mean, variance and the quantiles 0, 25,
50, 75 and 100 % of its kernel and of its bias (:data:`FEATURE_NAMES`); then the number of
layers, log10 of the number of params, and whether the hidden slot is filled (a slot without
values is zeros). Three predictors read them or the weights:

* :class:`FeatureMLP` on the standardised statistics (``stats_mlp``) or on the standardised
  flattened weights (``flat_mlp``: :func:`flat_weights`, for networks of one layout only),
  both trained by :mod:`uhn_jax.training.predictor`, as SNE is;
* gradient-boosted trees on the statistics (``stats_gbt``, :func:`fit_gbt`: scikit-learn's
  ``HistGradientBoostingRegressor``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from uhn_jax.weightspace import chunking

STATS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
SLOTS = ("first", "hidden", "last")
PARTS = ("kernel", "bias")
#: The names of :func:`features`' values, in order.
FEATURE_NAMES = tuple(f"{s}_{p}_{q}" for s in SLOTS for p in PARTS for q in STATS) + (
    "num_layers", "log10_params", "has_hidden",
)  # fmt: skip


def value_statistics(values: np.ndarray) -> np.ndarray:
    """``[7]``: :data:`STATS` of ``values`` (any shape; zeros when empty), in float64."""
    v = np.asarray(values, np.float64).reshape(-1)
    if not v.size:
        return np.zeros(len(STATS))
    quantiles = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return np.concatenate([[v.mean(), v.var()], quantiles])


def _slot(layers: Sequence[chunking.Layer]) -> np.ndarray:
    kernels = [x.kernel.reshape(-1) for x in layers]
    biases = [x.bias for x in layers if x.bias is not None]
    pooled = [np.concatenate(v) if v else np.zeros(0) for v in (kernels, biases)]
    return np.concatenate([value_statistics(v) for v in pooled])


def features(params: Any) -> np.ndarray:
    """The statistics of a network (:data:`FEATURE_NAMES`), float32.

    Raises:
      ValueError: for a params tree :func:`chunking.read_layers` cannot read.
    """
    layers = chunking.read_layers(params)
    hidden = layers[1:-1]
    slots = [_slot(layers[:1]), _slot(hidden), _slot(layers[-1:])]
    size = sum(x.kernel.size + x.extras.size for x in layers)
    extra = [len(layers), math.log10(size), float(bool(hidden))]
    return np.concatenate([*slots, extra]).astype(np.float32)


def layout_signature(params: Any) -> tuple:
    """The tree paths and leaf shapes of ``params``: equal for networks of one layout."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return tuple((jax.tree_util.keystr(path), np.shape(x)) for path, x in leaves)


def flat_weights(params_list: Sequence[Any], names: Sequence[str] | None = None) -> np.ndarray:
    """``[n, N]``: every network's leaves flattened in tree order, for networks of one layout.

    Raises:
      ValueError: when the networks' layouts differ, naming two networks (by ``names``, else
        their index) and how their layouts differ.
    """
    if not params_list:
        raise ValueError("flat_weights: no network given")
    first = layout_signature(params_list[0])
    rows = []
    for i, params in enumerate(params_list):
        sig = layout_signature(params)
        if sig != first:
            a, b = (names[0], names[i]) if names else ("network 0", f"network {i}")
            diff = sorted(set(sig) ^ set(first))[:2]
            raise ValueError(
                f"the flattened weights need networks of one layout, but {a} and {b} differ "
                f"(e.g. {diff}); flat_mlp applies only to tasks whose networks share one "
                "architecture"
            )
        leaves = jax.tree_util.tree_leaves(params)
        rows.append(np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in leaves]))
    return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` per feature, both from the training rows; a feature that is
    constant in training (std below ``floor``) is only centred, so a test network where it
    differs (another depth, in a cross-architecture task) is not blown up."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, floor: float = 1e-6) -> Standardizer:
        x = np.asarray(x, np.float64)
        std = x.std(0)
        return cls(x.mean(0), np.where(std > floor, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)


class FeatureMLP(nn.Module):
    """An MLP ``{"x": [B, F]} -> [B]`` in [0, 1] (ReLU hidden layers, sigmoid output)."""

    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, batch) -> jax.Array:
        h = batch["x"]
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return jax.nn.sigmoid(nn.Dense(1)(h)[:, 0])


@dataclasses.dataclass(frozen=True)
class GbtSettings:
    """``HistGradientBoostingRegressor``'s settings (scikit-learn's names)."""

    max_iter: int = 200
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20


def fit_gbt(x: np.ndarray, y: np.ndarray, settings: GbtSettings, seed: int):
    """Gradient-boosted trees fitted to ``y`` (no early stopping: a fixed ``max_iter``)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        max_iter=settings.max_iter,
        learning_rate=settings.learning_rate,
        max_leaf_nodes=settings.max_leaf_nodes,
        min_samples_leaf=settings.min_samples_leaf,
        early_stopping=False,
        random_state=seed,
    )
    return model.fit(np.asarray(x, np.float64), np.asarray(y, np.float64))
