"""HyperLSTM (Ha, Dai & Le 2016), the layer-norm LSTM baseline, and a character language model.

The dynamic hypernetwork in its memory-efficient weight-scaling form. A small *hyper* LSTM
(``hyper_features`` units, e.g. 128) reads the input and the main LSTM's previous hidden state,
and at every step its output rescales the rows of the main LSTM's fixed weight matrices. For
each gate ``g`` in ``(i, g, f, o)``, with ``H`` main units and embeddings of size ``N_z``::

    x̂_t         = [x_t ; h_{t-1}]
    ĉ_t, ĥ_t    = LNLSTM_hyper(x̂_t, (ĉ_{t-1}, ĥ_{t-1}))           # the hyper LSTM
    z_x^g, z_h^g = W_ĥx^g ĥ_t + 1,  W_ĥh^g ĥ_t + 1                  # embeddings, R^{N_z}
    z_b^g        = W_ĥb^g ĥ_t
    d_x^g, d_h^g = W_xz^g z_x^g,  W_hz^g z_h^g                      # scales, R^H
    b^g          = W_bz^g z_b^g + b_0^g                             # dynamic bias, R^H
    y^g          = LN(d_h^g ⊙ W_h^g h_{t-1}) + LN(d_x^g ⊙ W_x^g x_t) + b^g
    c_t          = σ(y^f + forget_bias) ⊙ c_{t-1} + σ(y^i) ⊙ tanh(y^g)
    h_t          = σ(y^o) ⊙ tanh(LN(c_t))

``LN`` is layer norm over each gate's ``H`` units (a learned scale per unit; the shift is
``b_0``), and ``LN(c_t)`` has a learned scale and shift. With ``d_x = d_h = 1`` and
``W_bz = 0`` this is exactly :class:`LayerNormLSTMCell`, the paper's LN-LSTM baseline; the
hyper cell itself is a :class:`LayerNormLSTMCell` too, as in the paper's code. ``ĥ_t`` is the
hyper cell's *new* output (it has already seen ``x_t`` and ``h_{t-1}``), as in the paper's code.

Initialisation. The paper's code draws ``W_ĥx = W_ĥh = 0`` (so ``z = 1``) and sets
``W_xz = W_hz`` to the constant ``0.1 / N_z`` (so ``d = 0.1``), which layer norm undoes. Here
``W_ĥx, W_ĥh, W_ĥb ~ N(0, 0.01²)`` and ``W_xz, W_hz ~ (1 + N(0, 0.05²)) / N_z``, so ``d ≈ 1``
with a spread of about ``0.05 / sqrt(N_z)``: at initialisation the cell is an LN-LSTM whose weight
rows are rescaled by a few percent. The spread matters: a constant ``d`` is a no-op under layer
norm, so the embeddings would get no gradient at all in the first step. ``W_bz ~ N(0, 0.01²)``
(zero in the paper's code) for the same reason.

The plain LSTM is Flax's :class:`flax.linen.OptimizedLSTMCell`. :class:`CharLM` wraps any of
the three (``CELLS``) as Embed -> ``nn.RNN`` -> Dense, :func:`matched_features` finds the
LSTM or LN-LSTM size with a HyperLSTM's parameter count, and :func:`bpc` is the metric.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Carry = Any

NUM_GATES = 4  # i (input), g (candidate), f (forget), o (output), in that order
CELLS = ("lstm", "layernorm_lstm", "hyperlstm")
# The paper's forget-gate bias (its code adds 1.0 before the sigmoid).
FORGET_BIAS = 1.0
# Std of the hypernetwork's ĥ -> z projections and of the dynamic-bias projection W_bz.
EMBED_INIT_STD = 0.01
# Relative std of the z -> d projections around 1 / N_z; see the module docstring.
SCALE_INIT_SPREAD = 0.05


def _scale_init(spread: float) -> Callable[..., Array]:
    """``(1 + spread · N(0, 1)) / N_z`` for a ``(gates, N_z, H)`` kernel, so ``d = W z ≈ 1``."""

    def init(key, shape, dtype=jnp.float32):
        n_z = shape[-2]
        return (1.0 + spread * jax.random.normal(key, shape, dtype)) / n_z

    return init


class LayerNormLSTMCell(nn.RNNCellBase):
    """LSTM with layer norm on each gate's input and recurrent terms and on the cell state.

    ``y = LN(d_h ⊙ W_h h) + LN(d_x ⊙ W_x x) + b + d_b`` per gate, ``h' = σ(o) ⊙ tanh(LN(c'))``;
    the optional ``scales = (d_x, d_h, d_b)`` (each ``[..., 4, H]``) are how
    :class:`HyperLSTMCell` drives it, and without them it is the paper's LN-LSTM baseline.

    Attributes:
        features: Hidden size ``H``.
        forget_bias: Added to the forget gate's pre-activation.
    """

    features: int
    forget_bias: float = FORGET_BIAS

    @nn.compact
    def __call__(
        self, carry: tuple[Array, Array], inputs: Array, scales: tuple[Array, ...] | None = None
    ) -> tuple[tuple[Array, Array], Array]:
        """One step.

        Args:
            carry: ``(c, h)``, each ``[..., H]``.
            inputs: ``[..., D]``.
            scales: Optional ``(d_x, d_h, d_b)``, each ``[..., 4, H]``.

        Returns:
            ``((c', h'), h')``.
        """
        c, h = carry
        gates = (NUM_GATES, self.features)
        wx = nn.DenseGeneral(gates, use_bias=False, name="x")(inputs)
        wh = nn.DenseGeneral(
            gates, use_bias=False, kernel_init=nn.initializers.orthogonal(), name="h"
        )(h)
        bias = self.param("bias", nn.initializers.zeros_init(), gates)
        if scales is not None:
            d_x, d_h, d_b = scales
            wx, wh, bias = d_x * wx, d_h * wh, bias + d_b
        # Normalise each gate over its own H units: scale per (gate, unit), the shift is `bias`.
        ln = dict(use_bias=False, reduction_axes=-1, feature_axes=(-2, -1))
        y = nn.LayerNorm(**ln, name="ln_h")(wh) + nn.LayerNorm(**ln, name="ln_x")(wx) + bias
        i, g, f, o = (y[..., k, :] for k in range(NUM_GATES))
        new_c = nn.sigmoid(f + self.forget_bias) * c + nn.sigmoid(i) * jnp.tanh(g)
        new_h = nn.sigmoid(o) * jnp.tanh(nn.LayerNorm(name="ln_c")(new_c))
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
        """Zeros ``(c, h)`` of shape ``input_shape[:-1] + (features,)``; ``rng`` is unused."""
        del rng
        zeros = jnp.zeros((*input_shape[:-1], self.features), jnp.float32)
        return zeros, zeros

    @property
    def num_feature_axes(self) -> int:
        return 1


class _GateEmbedding(nn.Module):
    """ĥ -> per-gate embedding z (``N_z``) -> per-gate vector (``H``): one of d_x, d_h, d_b."""

    features: int
    embed_features: int
    z_bias: bool
    out_init: Callable[..., Array]

    @nn.compact
    def __call__(self, hyper_h: Array) -> Array:
        z = nn.DenseGeneral(
            (NUM_GATES, self.embed_features),
            use_bias=self.z_bias,
            kernel_init=nn.initializers.normal(EMBED_INIT_STD),
            bias_init=nn.initializers.ones_init(),
            name="z",
        )(hyper_h)
        w = self.param("kernel", self.out_init, (NUM_GATES, self.embed_features, self.features))
        return jnp.einsum("...gz,gzh->...gh", z, w)


class HyperLSTMCell(nn.RNNCellBase):
    """Ha et al.'s HyperLSTM cell (weight-scaling form); the equations are in the module docstring.

    The carry is ``(c, h, hyper_c, hyper_h)``; the output is the main ``h``. Applied with
    ``mutable=["intermediates"]``, a step sows ``d_x``, ``d_h`` and ``d_b`` (``[..., 4, H]``).

    Attributes:
        features: Main LSTM size ``H``.
        hyper_features: Hyper LSTM size (the paper uses 128).
        embed_features: Embedding size ``N_z`` (the paper uses 4 to 64).
        forget_bias: Added to both LSTMs' forget-gate pre-activations.
    """

    features: int
    hyper_features: int = 128
    embed_features: int = 16
    forget_bias: float = FORGET_BIAS

    @nn.compact
    def __call__(self, carry: tuple[Array, ...], inputs: Array) -> tuple[tuple[Array, ...], Array]:
        """One step: ``((c, h, hyper_c, hyper_h), x) -> ((c', h', hyper_c', hyper_h'), h')``."""
        c, h, hyper_c, hyper_h = carry
        hyper_in = jnp.concatenate([inputs, h], axis=-1)
        (hyper_c, hyper_h), _ = LayerNormLSTMCell(
            self.hyper_features, self.forget_bias, name="hyper"
        )((hyper_c, hyper_h), hyper_in)
        embed = dict(features=self.features, embed_features=self.embed_features)
        scale_init = _scale_init(SCALE_INIT_SPREAD)
        d_x = _GateEmbedding(**embed, z_bias=True, out_init=scale_init, name="embed_x")(hyper_h)
        d_h = _GateEmbedding(**embed, z_bias=True, out_init=scale_init, name="embed_h")(hyper_h)
        bias_init = nn.initializers.normal(EMBED_INIT_STD)
        d_b = _GateEmbedding(**embed, z_bias=False, out_init=bias_init, name="embed_b")(hyper_h)
        for name, value in (("d_x", d_x), ("d_h", d_h), ("d_b", d_b)):
            self.sow("intermediates", name, value)
        (c, h), _ = LayerNormLSTMCell(self.features, self.forget_bias, name="main")(
            (c, h), inputs, scales=(d_x, d_h, d_b)
        )
        return (c, h, hyper_c, hyper_h), h

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> tuple[Array, ...]:
        """Zeros ``(c, h, hyper_c, hyper_h)`` for batch ``input_shape[:-1]``; ``rng`` is unused."""
        del rng
        batch = input_shape[:-1]
        main = jnp.zeros((*batch, self.features), jnp.float32)
        hyper = jnp.zeros((*batch, self.hyper_features), jnp.float32)
        return main, main, hyper, hyper

    @property
    def num_feature_axes(self) -> int:
        return 1


def make_cell(
    cell: str, features: int, hyper_features: int = 128, embed_features: int = 16
) -> nn.RNNCellBase:
    """The recurrent cell named ``cell`` (one of ``CELLS``).

    Args:
        cell: ``"lstm"`` (Flax's ``OptimizedLSTMCell``), ``"layernorm_lstm"`` or ``"hyperlstm"``.
        features: Hidden size of the (main) LSTM.
        hyper_features: Hyper LSTM size; ``"hyperlstm"`` only.
        embed_features: Embedding size ``N_z``; ``"hyperlstm"`` only.

    Returns:
        An unbound cell.

    Raises:
        ValueError: If ``cell`` is unknown.
    """
    if cell == "lstm":
        return nn.OptimizedLSTMCell(features)
    if cell == "layernorm_lstm":
        return LayerNormLSTMCell(features)
    if cell == "hyperlstm":
        return HyperLSTMCell(features, hyper_features, embed_features)
    raise ValueError(f"Unknown cell {cell!r}; choose one of {CELLS}")


class CharLM(nn.Module):
    """Character language model: Embed -> ``nn.RNN(cell)`` -> Dense(vocab).

    Attributes:
        vocab_size: Number of token ids.
        features: Hidden size of the (main) LSTM.
        cell: One of ``CELLS``.
        embed_dim: Size of the character embedding.
        hyper_features: Hyper LSTM size (``cell="hyperlstm"``).
        embed_features: HyperLSTM embedding size ``N_z`` (``cell="hyperlstm"``).
    """

    vocab_size: int
    features: int
    cell: str = "hyperlstm"
    embed_dim: int = 32
    hyper_features: int = 128
    embed_features: int = 16

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        """Logits ``[B, T, vocab_size]`` for token ids ``[B, T]``; position t predicts t + 1."""
        x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(tokens)
        cell = make_cell(self.cell, self.features, self.hyper_features, self.embed_features)
        h = nn.RNN(cell, name="rnn")(x)
        return nn.Dense(self.vocab_size, name="out")(h)


def param_count(module: nn.Module, *example_inputs: Any) -> int:
    """Number of parameters of ``module`` applied to ``example_inputs``, without allocating.

    Args:
        module: An unbound Linen module.
        *example_inputs: Arrays or ``jax.ShapeDtypeStruct``s, as for ``module.init``.

    Returns:
        The total size of the ``params`` collection.
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), *example_inputs)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


def charlm_param_count(model: CharLM) -> int:
    """:func:`param_count` of a :class:`CharLM` (it does not depend on batch or length)."""
    return param_count(model, jax.ShapeDtypeStruct((1, 1), jnp.int32))


def matched_features(model: CharLM, cell: str) -> int:
    """The size of ``cell`` whose :class:`CharLM` has the parameter count nearest ``model``'s.

    A CharLM's count is exactly quadratic in ``features`` (``a H² + b H + c``), so it is read off
    the counts at ``H = 1, 2, 3`` and solved, then the two integers around the root are compared.

    Args:
        model: The reference model, e.g. a HyperLSTM CharLM.
        cell: The cell to size, e.g. ``"lstm"`` or ``"layernorm_lstm"``.

    Returns:
        ``features`` for ``model.clone(cell=cell, features=...)``.
    """
    target = charlm_param_count(model)

    def count(h: int) -> int:
        return charlm_param_count(model.clone(cell=cell, features=h))

    n1, n2, n3 = count(1), count(2), count(3)
    a = (n3 - 2 * n2 + n1) / 2
    b = n2 - n1 - 3 * a
    c0 = n1 - a - b
    if a > 0:
        root = (-b + math.sqrt(b * b - 4 * a * (c0 - target))) / (2 * a)
    else:
        root = (target - c0) / b
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(sorted(candidates), key=lambda h: abs(count(h) - target))


def bpc(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Bits per character: mean cross-entropy over (unmasked) positions, divided by ln 2.

    Args:
        logits: ``[..., vocab]``.
        targets: Integer ids ``[...]``.
        mask: Optional weights ``[...]`` (1 counts, 0 is padding).

    Returns:
        A scalar.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if mask is None:
        return ce.mean() / math.log(2)
    mask = mask.astype(ce.dtype)
    return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0) / math.log(2)
