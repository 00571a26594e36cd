"""Deutsch et al. (2018), *Generating neural networks with neural networks*: the components.

Noise in, a whole working network out, trained for accuracy **and** diversity:

* :class:`NoiseGenerator`: ``z ~ U(-1, 1)^d`` -> an *extractor* MLP -> one code per filter of
  every target layer -> one *weight generator* per layer, an MLP shared by all filters of that
  layer and applied to each filter's code (the paper's parameter sharing). Leaky-ReLU, batch
  norm after every layer but each sub-network's output, no biases.
* :func:`filter_layout` reads the target's layers as filters: a conv's filter is one output
  channel's ``k·k·in`` weights and its bias; a dense layer's filter is one output unit's ``in``
  weights and bias; the last layer is one filter of all its weights (the paper's choice).
* :func:`gauge_fix` picks one representative of the network's trivial symmetries: every filter
  but the last layer's is scaled to unit root-mean-square (the scale moves into the next
  layer's matching input channel, which leaves a ReLU/max-pool network's function unchanged)
  and the logit biases are shifted to zero mean (softmax is unchanged).
* :func:`kl_entropy` is the Kozachenko–Leonenko entropy estimate of a batch of weight vectors
  (nearest-neighbour distances; ``dim · mean log ε + ψ(N)`` as in the paper's Appendix A.5,
  with ``dim`` the noise size, the dimension of the generated manifold).

Batch norm and evaluation. In training the statistics are the noise batch's own, as in the
paper. A single network must be a function of its own ``z``, so for evaluation the statistics
come from a fixed *reference* batch of noise vectors (``n_ref`` leading rows of the input),
an estimate of the population statistics that needs no running averages.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

#: Added under square roots and logarithms.
EPS = 1e-8
#: Added to a filter's mean square before its square root (filters of deep layers can have
#: mean squares near 1e-6 before the gauge is fixed, so EPS would bias them).
SCALE_EPS = 1e-20


class FilterLayer(NamedTuple):
    """One target layer seen as filters: ``count`` filters of ``size`` numbers each."""

    name: str
    kind: str  # "conv", "dense" or "last"
    count: int
    size: int
    kernel_shape: tuple[int, ...]


def filter_layout(params: dict) -> tuple[FilterLayer, ...]:
    """The filters of a plain feed-forward model's params ``{layer: {kernel, bias}}``.

    Layers are taken in key order; a 4-D kernel ``(k, k, in, out)`` is a conv, a 2-D kernel
    ``(in, out)`` a dense layer; the last layer is one filter of all its weights.

    Raises:
        ValueError: If a layer is not exactly ``{kernel, bias}`` with a 2-D or 4-D kernel.
    """
    names = sorted(params)
    layers = []
    for i, name in enumerate(names):
        layer = params[name]
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            raise ValueError(
                f"layer {name!r} must hold exactly a kernel and a bias to be generated filter "
                f"by filter, got {sorted(layer) if isinstance(layer, dict) else type(layer)}"
            )
        shape = tuple(layer["kernel"].shape)
        if len(shape) not in (2, 4):
            raise ValueError(f"layer {name!r}: kernel shape {shape} is neither conv nor dense")
        fan_in, out = math.prod(shape[:-1]), shape[-1]
        if i == len(names) - 1:
            layers.append(FilterLayer(name, "last", 1, fan_in * out + out, shape))
        else:
            layers.append(
                FilterLayer(name, "conv" if len(shape) == 4 else "dense", out, fan_in + 1, shape)
            )
    return tuple(layers)


def to_params(filters: list[Array], layout: tuple[FilterLayer, ...]) -> dict:
    """One network's params from its generated filters (``[count, size]`` per layer)."""
    params = {}
    for f, layer in zip(filters, layout, strict=True):
        shape = layer.kernel_shape
        if layer.kind == "last":
            n = math.prod(shape)
            params[layer.name] = {"kernel": f[0, :n].reshape(shape), "bias": f[0, n:]}
        else:
            kernel = f[:, :-1].reshape(layer.count, *shape[:-1])
            params[layer.name] = {"kernel": jnp.moveaxis(kernel, 0, -1), "bias": f[:, -1]}
    return params


def gauge_fix(params: dict) -> dict:
    """The representative of ``params``'s symmetry class (see the module docstring).

    Valid for a chain of ReLU (or leaky-ReLU) layers with positively homogeneous pooling and a
    channels-last flatten before the first dense layer, such as :class:`uhn_jax.models.
    ha_cnn.HaCNN`.
    """
    names = sorted(params)
    out = {n: dict(params[n]) for n in names}
    for name, nxt in zip(names[:-1], names[1:], strict=True):
        kernel, bias = out[name]["kernel"], out[name]["bias"]
        fan_in = math.prod(kernel.shape[:-1])
        axes = tuple(range(kernel.ndim - 1))
        scale = jnp.sqrt(((kernel**2).sum(axes) + bias**2) / (fan_in + 1) + SCALE_EPS)  # [out]
        out[name] = {"kernel": kernel / scale, "bias": bias / scale}
        k_next = out[nxt]["kernel"]
        channels = scale.shape[0]
        if k_next.ndim == 4:  # conv -> conv: the next kernel's input-channel axis
            k_next = k_next * scale[:, None]
        else:  # -> dense: rows in (..., channel) order (a channels-last flatten)
            rows = k_next.reshape(-1, channels, k_next.shape[-1]) * scale[:, None]
            k_next = rows.reshape(k_next.shape)
        out[nxt] = dict(out[nxt], kernel=k_next)
    last = out[names[-1]]
    out[names[-1]] = dict(last, bias=last["bias"] - last["bias"].mean())
    return out


def flatten(params: dict) -> Array:
    """The params as one vector (layers in key order, kernel then bias)."""
    return jnp.concatenate(
        [params[n][k].ravel() for n in sorted(params) for k in ("kernel", "bias")]
    )


def unflatten(w: Array, like: dict) -> dict:
    """The inverse of :func:`flatten`: params shaped like ``like`` from the vector ``w``."""
    out, start = {}, 0
    for name in sorted(like):
        out[name] = {}
        for k in ("kernel", "bias"):
            shape = like[name][k].shape
            size = math.prod(shape)
            out[name][k] = w[start : start + size].reshape(shape)
            start += size
    return out


def kl_entropy(w: Array, dim: int) -> Array:
    """Kozachenko–Leonenko entropy estimate of the rows of ``w`` (``[N, W]``, ``N >= 2``):
    ``dim · mean_i log ε_i + ψ(N)``, ``ε_i`` the Euclidean distance to the nearest other row.

    The constants of the full estimator (``-ψ(1)``, the unit ball's log-volume) are left out,
    as in the paper; ``ψ(N)`` is kept so that values at different ``N`` are comparable.

    Raises:
        ValueError: If ``N < 2`` (a batch of one has no nearest neighbour).
    """
    n = w.shape[0]
    if n < 2:
        raise ValueError(
            f"the entropy estimate needs at least two weight vectors, got {n}: a batch of one "
            "has no nearest neighbour"
        )
    diff = w[:, None, :] - w[None, :, :]
    dist = jnp.sqrt((diff**2).sum(-1) + EPS)
    dist = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dist)
    return dim * jnp.log(dist.min(axis=1) + EPS).mean() + jax.scipy.special.digamma(float(n))


def _batch_norm(h: Array, n_ref: int, axes: tuple[int, ...]) -> Array:
    """Normalises over ``axes`` with the statistics of the first ``n_ref`` rows (all if 0)."""
    ref = h[:n_ref] if n_ref else h
    mean = ref.mean(axes, keepdims=True)
    var = ref.var(axes, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(var + 1e-7)


class NoiseGenerator(nn.Module):
    """Extractor + per-layer weight generators (see the module docstring).

    As in the paper's code: weights drawn with variance ``0.01 / fan_in``; every hidden layer
    is Dense (no bias) -> leaky-ReLU -> batch norm with a learned scale and offset; each
    sub-network's output layer is a plain Dense. (The paper's parameter table counts the weight
    matrices; the batch-norm scales and offsets come on top, :func:`part_counts`.)

    Attributes:
        layout: The target's filters (:func:`filter_layout`).
        extractor: Hidden widths of the extractor (the paper: 300, 300).
        code_size: Size of each filter's code (the paper: 15).
        hidden: Hidden widths of each layer's weight generator, one tuple per layer (the
            paper's MNIST CNN: (40, 40), (100, 100), (100, 100), (60, 60)).
        slope: Leaky-ReLU slope (the paper's code: 0.05).
    """

    layout: tuple[FilterLayer, ...]
    extractor: tuple[int, ...]
    code_size: int
    hidden: tuple[tuple[int, ...], ...]
    slope: float

    def _hidden(self, h: Array, width: int, name: str, n_ref: int, axes) -> Array:
        h = nn.Dense(width, use_bias=False, kernel_init=INIT, name=name)(h)
        h = nn.leaky_relu(h, self.slope)
        scale = self.param(f"{name}_bn_scale", nn.initializers.ones_init(), (width,))
        offset = self.param(f"{name}_bn_offset", nn.initializers.zeros_init(), (width,))
        return _batch_norm(h, n_ref, axes) * scale + offset

    @nn.compact
    def __call__(self, z: Array, n_ref: int = 0) -> list[Array]:
        """Filters ``[M, count, size]`` per layer for noise ``z [M, d]``; batch-norm statistics
        from the first ``n_ref`` rows (0 = all of ``z``)."""
        h = z
        for i, width in enumerate(self.extractor):
            h = self._hidden(h, width, f"extractor_{i}", n_ref, (0,))
        total = sum(layer.count for layer in self.layout)
        codes = nn.Dense(
            total * self.code_size, use_bias=False, kernel_init=INIT, name="extractor_codes"
        )(h)
        codes = codes.reshape(z.shape[0], total, self.code_size)
        out, start = [], 0
        for layer, widths in zip(self.layout, self.hidden, strict=True):
            g = codes[:, start : start + layer.count]
            start += layer.count
            for j, width in enumerate(widths):
                g = self._hidden(g, width, f"{layer.name}_{j}", n_ref, (0, 1))
            head = nn.Dense(layer.size, use_bias=False, kernel_init=INIT, name=f"{layer.name}_out")
            out.append(head(g))
        return out


#: The paper's code: ``variance_scaling(0.01)``, i.e. weights of variance ``0.01 / fan_in``.
#: The generated numbers then start with std about 0.1 in every layer, and the networks (after
#: the gauge moves every filter's scale into the last layer) with logits of std about 0.4.
INIT = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")


def part_counts(params: dict) -> dict[str, int]:
    """Weights of the extractor and of each layer's weight generator (the paper's table), and
    the batch-norm scales and offsets on top (``batch_norm``), from a
    :class:`NoiseGenerator`'s params."""
    counts = {"extractor": 0, "batch_norm": 0}
    for name, leaf in params.items():
        if not isinstance(leaf, dict):  # a batch-norm scale or offset
            counts["batch_norm"] += int(leaf.size)
            continue
        part = "extractor" if name.startswith("extractor_") else name.rsplit("_", 1)[0]
        counts[part] = counts.get(part, 0) + int(leaf["kernel"].size)
    return counts
