"""Pieces of the conditional hypernetwork: the weight-generator MLP and the generated target MLP.

A target layer ``(n_in, n_out)`` is a flat vector of ``n_in * n_out + n_out`` values: the
row-major ``[n_in, n_out]`` kernel, then the bias. :class:`WeightGenerator` emits such vectors
(or chunks of them); :func:`apply_generated_weights` runs the target MLP on them, per sample
(``jax.vmap``) or with one set of weights for the whole batch; :func:`factored_linear` runs one
layer straight from the generator's features without forming any per-sample kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

#: Activations of the target network and of the generator's hidden layers, by name.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}
#: Epsilon of the non-affine LayerNorm on the generator's last hidden features.
FEATURE_NORM_EPS = 1e-6


def activation_fn(name: str, argument: str = "activation") -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``.

    Raises:
      ValueError: naming ``argument``, the value and the known activations.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"{argument} must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def layer_size(n_in: int, n_out: int) -> int:
    """Values of one generated target layer: kernel then bias."""
    return n_in * n_out + n_out


def split_layer(flat: jax.Array, n_in: int, n_out: int) -> tuple[jax.Array, jax.Array]:
    """``(kernel [..., n_in, n_out], bias [..., n_out])`` of a flat generated layer ``[..., n]``."""
    nw = n_in * n_out
    lead = flat.shape[:-1]
    return flat[..., :nw].reshape(*lead, n_in, n_out), flat[..., nw : nw + n_out]


def check_positive_ints(name: str, values: Sequence[int], allow_empty: bool = False) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``values`` are positive ints (and, unless
    ``allow_empty``, at least one)."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok or (not values and not allow_empty):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")


def check_hidden_sizes(name: str, values: Sequence[int]) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``values`` are positive ints, the last at
    least 2: the features are layer-normalised before the head, and one feature is always 0
    (every generated weight would be the head's bias, whatever the condition)."""
    check_positive_ints(name, values)
    if values[-1] < 2:
        raise ValueError(
            f"{name}: the last hidden width must be at least 2 (the features are "
            f"layer-normalised before the head; one feature is always 0), got {tuple(values)}"
        )


def hyperfan_in_init(std: float, zero_tail: int = 0):
    """Normal(0, std^2) kernel init whose last ``zero_tail`` columns (the target biases) are 0."""

    def init(key, shape, dtype=jnp.float32):
        k = std * jax.random.normal(key, shape, dtype)
        return k.at[..., shape[-1] - zero_tail :].set(0.0) if zero_tail else k

    return init


def normalise_features(h: jax.Array) -> jax.Array:
    """Non-affine LayerNorm: every row then has ``sum(h**2) == width`` (up to eps), whatever
    the condition, which is what makes the hyperfan-in init exact (see :class:`WeightGenerator`)."""
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(var + FEATURE_NORM_EPS)


class WeightGenerator(nn.Module):
    """``Dense -> act`` per hidden size, a non-affine LayerNorm, then the linear ``head``.

    Hyperfan-in: the normalised features ``e`` (width ``H``) satisfy ``sum_k e_k^2 = H`` for
    every input, and the head's kernel ``A`` is drawn i.i.d. ``N(0, head_std^2)`` with a zero
    bias, so each output ``sum_k A_kp e_k`` has variance ``H * head_std^2`` given any input.
    ``head_std = 1 / sqrt(H * fan_in)`` therefore gives generated weights of variance
    ``1 / fan_in`` (Chang et al. 2020, with the feature norm removing the dependence on the
    conditioning's distribution).

    Attributes:
      input_size: width of the input (conditioning, plus any layer/chunk embedding).
      hidden_sizes: widths of the hidden layers.
      out_size: values emitted per call.
      head_std: init std of the head's kernel.
      zero_tail: trailing head columns initialised to 0 (the target biases start at 0).
      activation: name of the hidden activation (:data:`ACTIVATIONS`).
    """

    input_size: int
    hidden_sizes: tuple[int, ...]
    out_size: int
    head_std: float
    zero_tail: int = 0
    activation: str = "relu"

    def setup(self):
        self.hidden = [nn.Dense(h) for h in self.hidden_sizes]
        self.head = nn.Dense(
            self.out_size, kernel_init=hyperfan_in_init(self.head_std, self.zero_tail)
        )

    def features(self, u: jax.Array) -> jax.Array:
        """The normalised last hidden features ``[..., H]`` of inputs ``[..., input_size]``."""
        if u.shape[-1] != self.input_size:
            raise ValueError(
                f"generator input must have {self.input_size} features, got shape {u.shape}"
            )
        act = activation_fn(self.activation, "generator_activation")
        for dense in self.hidden:
            u = act(dense(u))
        return normalise_features(u)

    def __call__(self, u: jax.Array) -> jax.Array:
        """``out_size`` generated values per input row."""
        return self.head(self.features(u))


def build_weight_generator(
    conditioning_size: int,
    target_in: int,
    target_out: int,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: str = "relu",
) -> WeightGenerator:
    """One MLP from a condition to one target layer's ``target_in * target_out + target_out``
    values (kernel, then bias), hyperfan-in initialised: weights of variance ``1/target_in``,
    biases 0.

    Args:
      conditioning_size: width of the condition.
      target_in: fan-in of the target layer.
      target_out: fan-out of the target layer.
      hidden_sizes: the generator's hidden widths.
      activation: the generator's hidden activation.

    Returns:
      The Linen module: ``init(key, c)`` and ``apply(variables, c)``, ``c`` of shape
      ``[..., conditioning_size]``.
    """
    check_positive_ints("conditioning_size", [conditioning_size])
    check_positive_ints("(target_in, target_out)", [target_in, target_out])
    check_hidden_sizes("hidden_sizes", list(hidden_sizes))
    activation_fn(activation)
    return WeightGenerator(
        input_size=conditioning_size,
        hidden_sizes=tuple(hidden_sizes),
        out_size=layer_size(target_in, target_out),
        head_std=1.0 / math.sqrt(hidden_sizes[-1] * target_in),
        zero_tail=target_out,
        activation=activation,
    )


def check_target(
    data: jax.Array, generated: Sequence[jax.Array], target_layer_sizes: Sequence[tuple[int, int]]
) -> bool:
    """Checks generated layers against the sizes and the data; True if they are per sample."""
    if len(generated) != len(target_layer_sizes):
        raise ValueError(
            f"generated has {len(generated)} layers but target_layer_sizes has "
            f"{len(target_layer_sizes)}: {target_layer_sizes}"
        )
    ranks = {g.ndim for g in generated}
    if len(ranks) != 1 or ranks - {1, 2}:
        shapes = [g.shape for g in generated]
        raise ValueError(f"generated must be all [n] or all [batch, n], got shapes {shapes}")
    for i, (g, (n_in, n_out)) in enumerate(zip(generated, target_layer_sizes, strict=True)):
        if g.shape[-1] != layer_size(n_in, n_out) or (g.ndim == 2 and g.shape[0] != len(data)):
            raise ValueError(
                f"generated[{i}] has shape {g.shape}; layer ({n_in}, {n_out}) needs "
                f"{layer_size(n_in, n_out)} values per row and data has {len(data)} rows"
            )
    return ranks == {2}


def apply_generated_weights(
    data: jax.Array,
    generated: Sequence[jax.Array],
    target_layer_sizes: Sequence[tuple[int, int]],
    activation: str = "relu",
) -> jax.Array:
    """The target MLP run with generated weights: ``activation`` between layers, none after
    the last.

    Args:
      data: inputs ``[batch, target_layer_sizes[0][0]]``.
      generated: per layer, flat values ``[batch, n_in*n_out + n_out]`` (each row its own
        network, run through ``jax.vmap``) or ``[n_in*n_out + n_out]`` (one network for the
        whole batch: one batched matmul per layer).
      target_layer_sizes: ``(n_in, n_out)`` per layer.
      activation: name in :data:`ACTIVATIONS`.

    Returns:
      ``[batch, target_layer_sizes[-1][1]]``.
    """
    act = activation_fn(activation)
    per_sample = check_target(data, generated, target_layer_sizes)
    last = len(target_layer_sizes) - 1

    def run(x, layers):
        for i, (flat, (n_in, n_out)) in enumerate(zip(layers, target_layer_sizes, strict=True)):
            w, b = split_layer(flat, n_in, n_out)
            x = x @ w + b
            x = act(x) if i < last else x
        return x

    return jax.vmap(run)(data, tuple(generated)) if per_sample else run(data, generated)


def factored_linear(
    x_BI: jax.Array, h_BH: jax.Array, k_HS: jax.Array, b_S: jax.Array, n_in: int, n_out: int
) -> jax.Array:
    """One generated layer ``x W(h) + bias(h)`` where ``[W | bias] = h @ k + b`` per sample,
    computed without any ``[batch, n_in, n_out]`` tensor.

    ``sum_i x_i sum_k h_k K[k, i, o]`` is one GEMM over ``(k, i)`` of the outer product
    ``h x`` (``[B, H*n_in]``) when ``n_in <= n_out``, else one GEMM ``x @ K[i, (k, o)]``
    (``[B, H*n_out]``) then a per-sample contraction with ``h``: whichever intermediate is
    smaller.

    Args:
      x_BI: layer inputs.
      h_BH: the generator's last features per sample.
      k_HS: the generator head's kernel (its first ``n_in*n_out + n_out`` columns are used).
      b_S: the head's bias.
      n_in: fan-in.
      n_out: fan-out.

    Returns:
      ``[B, n_out]``.
    """
    (b, h), nw = h_BH.shape, n_in * n_out
    k_HIO = k_HS[:, :nw].reshape(h, n_in, n_out)
    if n_in <= n_out:
        outer = (h_BH[:, :, None] * x_BI[:, None, :]).reshape(b, h * n_in)
        y = outer @ k_HIO.reshape(h * n_in, n_out)
    else:
        u_BHO = (x_BI @ k_HIO.transpose(1, 0, 2).reshape(n_in, h * n_out)).reshape(b, h, n_out)
        y = jnp.einsum("bh,bho->bo", h_BH, u_BHO)
    w_IO, bias_O = split_layer(b_S, n_in, n_out)
    return y + x_BI @ w_IO + h_BH @ k_HS[:, nw : nw + n_out] + bias_O
