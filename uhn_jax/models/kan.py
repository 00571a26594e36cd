"""The reference KAN for formula regression (spec §4.4): B-spline layers on a learnable grid.

Each KAN layer maps ``x (B, in)`` to ``y (B, out)`` as

    y = act(x) @ base_kernel + base_bias
        + sum_{i,g} B_g(x_i; t_i) * spline_kernel[i, g, :] * spline_scale[i, :]

where ``B_g(.; t_i)`` are the ``G + k`` B-spline bases of order ``k`` on input ``i``'s own knots
``t_i``. The knots are learnable,
``t_i = lower_i + exp(log_length_i) * cumsum(softmax(logits_i))``, with ``K = G + 2k + 1`` knots
per input. As in the reference, the first knot is ``lower + exp(log_length) * softmax_0``
(``lower + length / K`` at init, not ``lower``) and the last is ``lower + exp(log_length)``;
at init the knots are ``-1 + 2 (j + 1) / K`` for ``j = 0..K-1``, so the grid does not reach past
``[-1, 1]`` and the bases sum to one only on ``[t_k, t_{K-k-1}]`` (``[-1/3, 1/2]`` for G=5,
k=3). The base activation is the identity on layer 0 and SiLU on later layers.

Params tree ``{layer_NNN: {tensor: array}}``. The spec's tensors map to ours as
(PARAM_TYPE: spec tensor, PyTorch shape -> our name, our shape):

- 0: base W, (out, in) -> ``base_kernel``, ``(in, out)``;
- 1: base b, (out,) -> ``base_bias``, ``(out,)``;
- 2: spline W, (out, in, G+k) -> ``spline_kernel``, ``(in, G + k, out)``;
- 3: spline scale, (out, in) -> ``spline_scale``, ``(in, out)``;
- 4: grid lower bound, (in,) -> ``grid_lower``, ``(in,)``;
- 5: grid length (a log-length, used as ``exp``), (in,) -> ``grid_log_length``, ``(in,)``;
- 6: grid knots (softmax logits), (in, G+2k+1) -> ``knot_logits``, ``(in, G + 2k + 1)``.

Output axes come last (Flax convention). The flat vector follows ``jax.tree_util`` order, i.e.
alphabetical tensor names inside each layer, not PARAM_TYPE order; every scalar's descriptor
carries its own PARAM_TYPE, so the order does not matter to the generator.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from uhn_jax.core import descriptors as D


def knots_from_params(lower_I: jax.Array, log_length_I: jax.Array, logits_IK: jax.Array):
    """Strictly increasing knots ``(in, K)``: ``lower + exp(log_length) * cumsum(softmax)``.

    Args:
      lower_I: grid lower bound per input.
      log_length_I: log of the grid length per input.
      logits_IK: knot logits; ``K = G + 2k + 1``.

    Returns:
      Knots ``(in, K)``; the first is ``lower + length * softmax_0`` (never ``lower`` itself)
      and the last is ``lower + length``.
    """
    steps_IK = jax.nn.softmax(logits_IK, axis=-1)
    return lower_I[:, None] + jnp.exp(log_length_I)[:, None] * jnp.cumsum(steps_IK, axis=-1)


def bspline_bases(x_BI: jax.Array, knots_IK: jax.Array, order: int) -> jax.Array:
    """B-spline bases of ``order`` (polynomial degree) by the Cox-de Boor recursion.

    Each input has its own knot vector. Bases are zero outside their support, so near the ends
    of the grid they do not sum to one; on ``[t_order, t_{K-order-1})`` they do. Differentiable
    with respect to both ``x`` and the knots (through the recursion's ratios; the degree-0
    indicators are piecewise constant).

    Args:
      x_BI: inputs ``(B, in)``.
      knots_IK: non-decreasing knots ``(in, K)``; a zero-width interval contributes nothing.
      order: spline order ``k >= 0``.

    Returns:
      Bases ``(B, in, K - order - 1)``.
    """
    x = x_BI[:, :, None]
    t = knots_IK[None]
    bases = ((x >= t[..., :-1]) & (x < t[..., 1:])).astype(x_BI.dtype)
    for p in range(1, order + 1):
        left = _ratio(x - t[..., : -(p + 1)], t[..., p:-1] - t[..., : -(p + 1)])
        right = _ratio(t[..., p + 1 :] - x, t[..., p + 1 :] - t[..., 1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    # Cox-de Boor's 0/0 := 0 convention. Knots are strictly increasing in exact arithmetic, but
    # in float32 a tiny softmax entry can make two neighbours equal; the double `where` keeps
    # both the value and the gradient finite there.
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class KAN:
    """Kolmogorov-Arnold network ``[in, *hidden, out]`` with learnable per-input grids.

    The reference formula KAN is ``KAN(2, 1)`` (254 params), ``KAN(2, 1, grid_size=10)`` for
    jv and yv (364) and ``KAN(2, 4)`` for ellipj (407).

    Attributes:
      in_features: input width (2 for the formulas).
      out_features: output width (1, or 4 for ellipj).
      hidden: hidden widths (reference: one hidden layer of 5).
      grid_size: G, the number of grid intervals.
      spline_order: k, the B-spline order (polynomial degree).
      dataset_type: the reference DatasetType number for the global descriptor.
    """

    in_features: int = 2
    out_features: int = 1
    hidden: tuple[int, ...] = (5,)
    grid_size: int = 5
    spline_order: int = 3
    dataset_type: int = int(D.DatasetType.SPECIAL_ELLIPJ)

    def __post_init__(self):
        for field in ("in_features", "out_features", "grid_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"KAN {field} must be a positive int, got {getattr(self, field)}")
        if any(int(w) < 1 for w in self.hidden):
            raise ValueError(f"KAN hidden must hold positive ints, got {self.hidden}")
        if self.spline_order < 0:
            raise ValueError(f"KAN spline_order must be >= 0, got {self.spline_order}")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` of every KAN layer."""
        dims = (self.in_features, *self.hidden, self.out_features)
        return tuple(zip(dims[:-1], dims[1:], strict=True))

    @property
    def num_knots(self) -> int:
        """K = G + 2k + 1 knots per input."""
        return self.grid_size + 2 * self.spline_order + 1

    @property
    def num_bases(self) -> int:
        """G + k B-spline bases per input."""
        return self.grid_size + self.spline_order

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    @staticmethod
    def _activation(i: int) -> D.ActivationType:
        return D.ActivationType.NONE if i == 0 else D.ActivationType.SILU

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (n_in, n_out) in enumerate(self.sizes):
            fields = {
                "bias_type": 1,
                "output_size": n_out,
                "input_size": n_in,
                "activation_type": int(self._activation(i)),
                "activation_param": 0.0,
                "grid_size": self.grid_size,
                "spline_order": self.spline_order,
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.KAN, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.KAN),
            "task_type": int(D.TaskType.FORMULA_REGRESSION),
            "dataset_type": self.dataset_type,
        }

    def init(self, key: jax.Array) -> dict:
        """Draws params matching the §3.1 KAN targets (mean, std).

        Base kernel and spline scale ``U(+-1/sqrt(in))`` (std ``1/sqrt(3 in)``), spline kernel
        ``N(0, 0.1^2)``, zero base bias, grid lower ``-1``, log-length ``log 2`` and zero knot
        logits (uniform knots on ``(-1, 1]``).
        """
        params = {}
        for i, (n_in, n_out) in enumerate(self.sizes):
            k_w, k_s, k_c = jax.random.split(jax.random.fold_in(key, i), 3)
            bound = 1.0 / math.sqrt(n_in)
            params[self.name(i)] = {
                "base_kernel": jax.random.uniform(k_w, (n_in, n_out), jnp.float32, -bound, bound),
                "base_bias": jnp.zeros((n_out,), jnp.float32),
                "spline_kernel": 0.1
                * jax.random.normal(k_c, (n_in, self.num_bases, n_out), jnp.float32),
                "spline_scale": jax.random.uniform(k_s, (n_in, n_out), jnp.float32, -bound, bound),
                "grid_lower": jnp.full((n_in,), -1.0, jnp.float32),
                "grid_log_length": jnp.full((n_in,), math.log(2.0), jnp.float32),
                "knot_logits": jnp.zeros((n_in, self.num_knots), jnp.float32),
            }
        return params

    def layer_knots(self, params: dict, i: int) -> jax.Array:
        """Knots ``(in, K)`` of layer ``i``."""
        p = params[self.name(i)]
        return knots_from_params(p["grid_lower"], p["grid_log_length"], p["knot_logits"])

    def apply(self, params: dict, x: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
        """Outputs ``(B, out_features)`` for inputs ``(B, in_features)``.

        ``train`` and ``rng`` are accepted for the base-model protocol; the KAN has no dropout.
        """
        del train, rng
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"KAN expects inputs (B, {self.in_features}), got {x.shape}")
        h = x
        for i in range(len(self.sizes)):
            p = params[self.name(i)]
            base_in = h if self._activation(i) == D.ActivationType.NONE else jax.nn.silu(h)
            bases_BIG = bspline_bases(h, self.layer_knots(params, i), self.spline_order)
            spline_IGO = p["spline_kernel"] * p["spline_scale"][:, None, :]
            h = (
                base_in @ p["base_kernel"]
                + p["base_bias"]
                + jnp.einsum("big,igo->bo", bases_BIG, spline_IGO)
            )
        return h
