"""Is a generated network new? Its distance to the nearest network of a zoo after aligning
hidden units, and how often the two disagree (for any generator: IGPG, a diverse
hypernetwork's samples, ...).

Two networks that differ by a permutation of hidden units compute the same function, so raw
weight distances overstate how different they are. :func:`align` permutes one network's
hidden units to match another's by weight matching (Ainsworth et al. 2023, *Git Re-Basin*):
for each group of units that must move together, the Hungarian assignment
(``scipy.optimize.linear_sum_assignment``) of the summed similarity of every weight that
touches a unit (its incoming kernel column, bias, and the next layer's kernel row, with the
other axes in their current order), repeated over the groups in random order until no
assignment changes. The permutation of a layer's units is propagated to the next layer's
inputs, including through a flattened feature map (the HaCNN head reads ``positions x
channels``, channels last) and a residual skip (an MLP's equal-width layers added to their
input share one permutation).

:func:`check` reports, for each generated network, the L2 distance (of all params) to its
nearest zoo network before and after alignment, each relative to the zoo's typical
nearest-neighbour distance (the median over zoo networks of the distance to their nearest
other zoo network, measured the same way), and the rate at which its predictions on test
images disagree with those of its nearest (aligned) zoo network. A ratio well below 1 means a
near copy of a zoo network; about 1 or above, a network as far from the zoo as its members
are from each other.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from uhn_jax.models.ha_cnn import HaCNN
from uhn_jax.models.mlp import MLP


@dataclasses.dataclass(frozen=True)
class AxisPerm:
    """Axis ``axis`` of a leaf moves with permutation ``perm``; an axis of
    ``positions * units`` values (a flattened map, channels last) moves its units only."""

    axis: int
    perm: str
    positions: int = 1


@dataclasses.dataclass(frozen=True)
class PermSpec:
    """Which leaf axes move with which permutation: ``sizes`` of the permutations (hidden
    unit groups), and per leaf (``("layer_001", "kernel")``) its permuted axes."""

    sizes: Mapping[str, int]
    axes: Mapping[tuple[str, ...], tuple[AxisPerm, ...]]


def _layer_axes(name, kind, in_perm, out_perm, positions) -> dict:
    """The permuted axes of one layer's kernel and bias."""
    kernel = []
    in_axis, out_axis = (2, 3) if kind == "conv" else (0, 1)
    if in_perm is not None:
        kernel.append(AxisPerm(in_axis, in_perm, positions))
    if out_perm is not None:
        kernel.append(AxisPerm(out_axis, out_perm))
    bias = (AxisPerm(0, out_perm),) if out_perm is not None else ()
    return {(name, "kernel"): tuple(kernel), (name, "bias"): bias}


def _mlp_spec(model: MLP) -> PermSpec:
    sizes, axes, previous = {}, {}, None
    last = len(model.sizes) - 1
    for i, (n_in, n_out) in enumerate(model.sizes):
        out = None
        if i < last:
            # The MLP adds an equal-width hidden layer to its input (its skip): both share
            # one permutation.
            skip = 0 < i and n_in == n_out
            out = previous if skip else f"P{i}"
            sizes[out] = n_out
        axes |= _layer_axes(model.name(i), "dense", previous, out, 1)
        previous = out
    return PermSpec(sizes, axes)


def _ha_cnn_spec(model: HaCNN) -> PermSpec:
    sizes, axes, previous = {}, {}, None
    for i, (_, c_out) in enumerate(model.convs()):
        sizes[f"P{i}"] = c_out
        axes |= _layer_axes(model.name(i), "conv", previous, f"P{i}", 1)
        previous = f"P{i}"
    positions = model.flat_features // model.convs()[1][1]
    dense = model.dense()
    for j, (_, d_out) in enumerate(dense):
        i = 2 + j
        out = f"P{i}" if j < len(dense) - 1 else None
        if out is not None:
            sizes[out] = d_out
        axes |= _layer_axes(model.name(i), "dense", previous, out, positions if j == 0 else 1)
        previous = out
    return PermSpec(sizes, axes)


def permutation_spec(model) -> PermSpec:
    """The :class:`PermSpec` of a base model's params.

    Raises:
      ValueError: for a model other than :class:`~uhn_jax.models.MLP` and
        :class:`~uhn_jax.models.ha_cnn.HaCNN` (naming its type).
    """
    if isinstance(model, MLP):
        return _mlp_spec(model)
    if isinstance(model, HaCNN):
        return _ha_cnn_spec(model)
    raise ValueError(
        f"novelty alignment handles MLP and HaCNN params; got a {type(model).__name__} (add "
        "its permutation spec to uhn_jax.analysis.novelty)"
    )


def _flat(params: Any) -> dict[tuple[str, ...], np.ndarray]:
    return {
        tuple(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float64)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def _take(x: np.ndarray, ap: AxisPerm, perm: np.ndarray) -> np.ndarray:
    if ap.positions == 1:
        return np.take(x, perm, axis=ap.axis)
    shape = x.shape
    split = shape[: ap.axis] + (ap.positions, shape[ap.axis] // ap.positions) + shape[ap.axis + 1 :]
    return np.take(x.reshape(split), perm, axis=ap.axis + 1).reshape(shape)


def _permute_leaf(x: np.ndarray, aps, perms: Mapping[str, np.ndarray], skip_axis=None):
    for ap in aps:
        if ap.axis != skip_axis:
            x = _take(x, ap, perms[ap.perm])
    return x


def _permute_flat(spec: PermSpec, flat: dict, perms: Mapping[str, np.ndarray]) -> dict:
    return {k: _permute_leaf(x, spec.axes.get(k, ()), perms) for k, x in flat.items()}


def _unflatten(like: Any, flat: dict) -> Any:
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [flat[tuple(str(getattr(k, "key", k)) for k in path)] for path, _ in paths]
    return jax.tree_util.tree_unflatten(treedef, [np.asarray(v, np.float32) for v in leaves])


def permute(spec: PermSpec, params: Any, perms: Mapping[str, np.ndarray]) -> Any:
    """``params`` with every hidden-unit group ``g`` reordered by ``perms[g]`` (unit ``i`` of
    the result is unit ``perms[g][i]`` of ``params``); the function is unchanged."""
    return _unflatten(params, _permute_flat(spec, _flat(params), perms))


def _unit_matrix(x: np.ndarray, ap: AxisPerm) -> np.ndarray:
    """``[units, rest]``: the values of each unit of axis ``ap``."""
    if ap.positions > 1:
        shape = x.shape
        x = x.reshape(
            shape[: ap.axis] + (ap.positions, shape[ap.axis] // ap.positions) + shape[ap.axis + 1 :]
        )
        return np.moveaxis(x, ap.axis + 1, 0).reshape(x.shape[ap.axis + 1], -1)
    return np.moveaxis(x, ap.axis, 0).reshape(x.shape[ap.axis], -1)


def align(
    spec: PermSpec, ref: Any, other: Any, *, iterations: int = 30, seed: int = 0
) -> tuple[Any, dict[str, np.ndarray]]:
    """``other`` with its hidden units permuted to match ``ref`` by weight matching (see the
    module docstring), and the permutations (``permute(spec, other, perms)``)."""
    a, b = _flat(ref), _flat(other)
    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        changed = False
        for g in rng.permutation(sorted(spec.sizes)):
            sim = np.zeros((spec.sizes[g], spec.sizes[g]))
            for keys, aps in spec.axes.items():
                for ap in aps:
                    if ap.perm == g:
                        # The leaf's other axes in their current order (a square residual
                        # layer's other axis may carry g too).
                        rest = _permute_leaf(b[keys], aps, perms, skip_axis=ap.axis)
                        sim += _unit_matrix(a[keys], ap) @ _unit_matrix(rest, ap).T
            new = optimize.linear_sum_assignment(sim, maximize=True)[1]
            changed |= not np.array_equal(new, perms[g])
            perms[g] = new
        if not changed:
            break
    return _unflatten(other, _permute_flat(spec, b, perms)), perms


def align_all(model, reference: Any, networks: list, *, iterations: int = 30) -> list:
    """Every network of ``networks`` with its hidden units permuted to match ``reference``
    (a population put in one unit order: what an order-sensitive model of weights sees)."""
    spec = permutation_spec(model)
    return [align(spec, reference, p, iterations=iterations)[0] for p in networks]


def distance(p: Any, q: Any) -> float:
    """The L2 distance between two params pytrees of one structure (all leaves)."""
    fp, fq = _flat(p), _flat(q)
    return float(np.sqrt(sum(((fp[k] - fq[k]) ** 2).sum() for k in fp)))


@functools.cache
def _predictor(model):
    return jax.jit(lambda p, x: model.apply(p, x).argmax(-1))


def _predictions(models: list, params_list: list, x) -> np.ndarray:
    """``[M, n]``: each network's predicted classes (one program per model)."""
    x = jnp.asarray(x)
    return np.stack(
        [np.asarray(_predictor(m)(p, x)) for m, p in zip(models, params_list, strict=True)]
    )


def _zoo_nn(spec, zoo: list, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Each zoo network's distance to its nearest other one: ``(raw [Z], aligned [Z])``."""
    z = len(zoo)
    raw, aligned = np.full((z, z), np.inf), np.full((z, z), np.inf)
    for i in range(z):
        for j in range(i + 1, z):
            raw[i, j] = raw[j, i] = distance(zoo[i], zoo[j])
            moved = align(spec, zoo[i], zoo[j], iterations=iterations)[0]
            aligned[i, j] = aligned[j, i] = distance(zoo[i], moved)
    return raw.min(1), aligned.min(1)


def _spread(predictions) -> float | None:
    """The mean disagreement over all pairs of ``predictions`` (``None`` for fewer than 2)."""
    n = len(predictions)
    if n < 2:
        return None
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean([(predictions[i] != predictions[j]).mean() for i, j in pairs]))


def check(
    model, generated: list, zoo: list, x_test, *, iterations: int = 30, zoo_models=None
) -> dict[str, Any]:
    """The novelty of ``generated`` networks against ``zoo`` networks of one architecture.

    Args:
      model: the base model (an MLP or a HaCNN), for the alignment and the predictions.
      generated: params pytrees of the generated networks.
      zoo: params pytrees of at least 2 zoo networks of the same architecture.
      x_test: test inputs (prepared as the model reads them).
      iterations: the weight-matching rounds' limit.
      zoo_models: each zoo network's own base model, when they differ from ``model`` in what
        does not change the params' shapes (e.g. the activation slope); default ``model``.

    Returns:
      ``zoo_nn_raw`` and ``zoo_nn_aligned`` (the zoo's median nearest-neighbour distances),
      and per generated network (``networks``): ``nearest`` (index into ``zoo``, after
      alignment), ``distance_raw``, ``distance_aligned``, ``ratio_raw``, ``ratio_aligned``
      (each over the zoo's median of the same kind), ``disagreement`` (fraction of
      ``x_test`` predicted differently from the nearest); and their medians; and the
      spread of each set, ``generated_spread`` and ``zoo_spread``: the mean over its pairs
      of networks of their disagreement (``None`` for a single generated network), so that
      generated networks that all agree with each other are visible.

    Raises:
      ValueError: for fewer than 2 zoo networks, or a model :func:`permutation_spec` cannot
        align.
    """
    if len(zoo) < 2 or not generated:
        raise ValueError(
            f"novelty.check needs generated networks and >= 2 zoo networks, got "
            f"{len(generated)} and {len(zoo)}"
        )
    spec = permutation_spec(model)
    nn_raw, nn_aligned = _zoo_nn(spec, zoo, iterations)
    zoo_raw, zoo_aligned = float(np.median(nn_raw)), float(np.median(nn_aligned))
    rows = []
    for g in generated:
        raw = [distance(g, z) for z in zoo]
        aligned = [distance(g, align(spec, g, z, iterations=iterations)[0]) for z in zoo]
        k = int(np.argmin(aligned))
        rows.append({"nearest": k, "distance_raw": min(raw), "distance_aligned": aligned[k]})
    pred_gen = _predictions([model] * len(generated), generated, x_test)
    pred_zoo = _predictions(zoo_models or [model] * len(zoo), zoo, x_test)
    for row, p in zip(rows, pred_gen, strict=True):
        row["disagreement"] = float((p != pred_zoo[row["nearest"]]).mean())
        row["ratio_raw"] = row["distance_raw"] / max(zoo_raw, 1e-12)
        row["ratio_aligned"] = row["distance_aligned"] / max(zoo_aligned, 1e-12)
    keys = ("distance_raw", "distance_aligned", "ratio_raw", "ratio_aligned", "disagreement")
    return {
        "generated_spread": _spread(pred_gen),
        "zoo_spread": _spread(pred_zoo),
        "zoo_networks": len(zoo),
        "zoo_nn_raw": zoo_raw,
        "zoo_nn_aligned": zoo_aligned,
        "networks": rows,
        **{f"median_{k}": float(np.median([r[k] for r in rows])) for k in keys},
    }
