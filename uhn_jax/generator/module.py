"""The UHN generator (spec §2.1) as a Flax Linen module, and building and initialising it.

``Generator`` maps raw index descriptors ``(n, 10)`` to one scalar weight each. Inside, the
descriptors are min/max-normalised with the generator's declared ranges, encoded (Fourier by
default), sent through ``Linear(enc -> h)`` and ``num_blocks`` pre-activation residual blocks
``x + fc2(LN(relu(fc1(LN(relu(x))))))``; optionally a per-model structure vector is added; then
``relu -> Linear(h -> 1)``.

The structure path (``structure=True``) encodes the ``(L, 29)`` structure input with Fourier
features, one post-LN transformer encoder layer, mean pooling over layers and
``Linear -> relu -> Linear`` whose last Linear is zero-initialised, so it starts as a no-op.

Variables: trainable weights live in ``params``; the frozen Fourier matrices live in
``constants`` and are never updated by the optimiser.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import descriptors, encodings
from uhn_jax.generator import precision, separable, settings

#: LayerNorm epsilon: PyTorch's default, which the reference generator uses.
LAYER_NORM_EPS = 1e-5
#: Width of one row of the structure input: the global fields then the per-layer fields (29).
STRUCTURE_DIM = len(descriptors.GLOBAL_FIELDS) + len(descriptors.STRUCTURE_FIELDS)
#: Width of one index descriptor (10).
INDEX_DIM = len(descriptors.INDEX_FIELDS)


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear init, U(+-1/sqrt(fan_in)), for kernels and biases alike (the
    reference generator is a PyTorch model; its parameter statistics at step 0 follow)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(
    features: int, fan_in: int, zero: bool = False, name: str | None = None, dot_general=None
) -> nn.Dense:
    if zero:
        return nn.Dense(features, kernel_init=nn.initializers.zeros, name=name)
    return nn.Dense(
        features,
        kernel_init=_torch_uniform(fan_in),
        bias_init=_torch_uniform(fan_in),
        name=name,
        dot_general=dot_general,
    )


class ResidualBlock(nn.Module):
    """``x + fc2(LN(relu(fc1(LN(relu(x))))))`` with affine LayerNorms."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=LAYER_NORM_EPS)(nn.relu(x))
        y = _dense(self.hidden, self.hidden)(y)
        y = nn.LayerNorm(epsilon=LAYER_NORM_EPS)(nn.relu(y))
        y = _dense(self.hidden, self.hidden)(y)
        return x + y


class StructureEncoder(nn.Module):
    """One post-LN transformer encoder layer over layer tokens, mean-pooled to one vector."""

    d_model: int
    num_heads: int
    hidden: int

    @nn.compact
    def __call__(self, tokens_LD, mask_L=None):
        """``mask_L`` (optional, 0/1 per token) marks the real layers of a zero-padded
        sequence: padded tokens are neither attended to nor pooled."""
        d = self.d_model
        attn_mask = None if mask_L is None else (mask_L > 0)[None, None, :]
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=d, out_features=d, name="attention"
        )(tokens_LD, tokens_LD, mask=attn_mask)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS)(tokens_LD + attn)
        ff = _dense(d, d)(nn.relu(_dense(d, d)(x)))
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS)(x + ff)
        if mask_L is None:
            pooled = x.mean(axis=0)
        else:
            pooled = (x * mask_L[:, None]).sum(0) / jnp.maximum(mask_L.sum(), 1.0)
        y = nn.relu(_dense(self.hidden, d)(pooled))
        return _dense(self.hidden, self.hidden, zero=True, name="zero_out")(y)


_D = settings.DEFAULTS


def _check_ranges(name: str, ranges, width: int) -> None:
    if not isinstance(ranges, descriptors.Ranges) or len(ranges.lo) != width:
        raise ValueError(f"{name} must be a descriptors.Ranges of {width} fields, got {ranges!r}")


class Generator(nn.Module):
    """UHN generator. Defaults are :data:`uhn_jax.generator.settings.DEFAULTS`, those of an
    experiment config: the reference MNIST sizes (148,353 params, no structure).

    Attributes:
      index_ranges: declared ranges of the 10 index fields (min/max normalisation).
      structure_ranges: declared ranges of the 29 structure-input fields (structure path only).
      hidden: width h.
      num_blocks: number of residual blocks.
      n_freqs: index Fourier frequencies (features are 2 * n_freqs wide).
      sigma: Fourier scale.
      encoding: "fourier", "positional" or "raw".
      structure: whether the structure path is on.
      structure_freqs: Fourier frequencies of the structure encoder (d_model = 2 * this).
      structure_heads: attention heads of the structure encoder.
      out_of_range: "error" (descriptors are checked on the host, see :func:`check` and
        :func:`generate`) or "clip" (values are clamped to the declared ranges in-graph).

    Bad sizes and settings raise ValueError naming the field when the module is built.
      matmul_dtype: operand dtype of the first Linear's matmuls (forward and weight gradient),
        the bulk of the FLOPs; accumulation, the rest of the network and the parameters stay
        float32. "float32" (the exact function), "bfloat16" or "auto" (the default,
        :func:`resolve_matmul_dtype`: bfloat16 where bf16 GEMMs are native).
      separable_method: how :func:`generate_planned` evaluates the first layer of separable
        tensors: "matmul" (:meth:`separable_hidden`), "nufft" (:meth:`nufft_hidden`, needs the
        ``jax-finufft`` package and a CPU backend) or "auto" (the default, :func:`use_nufft`).
    """

    index_ranges: descriptors.Ranges
    structure_ranges: descriptors.Ranges | None = None
    hidden: int = _D.hidden
    num_blocks: int = _D.num_blocks
    n_freqs: int = _D.n_freqs
    sigma: float = _D.sigma
    encoding: str = _D.encoding
    structure: bool = _D.structure
    structure_freqs: int = _D.structure_freqs
    structure_heads: int = _D.structure_heads
    out_of_range: str = _D.out_of_range
    matmul_dtype: str = _D.matmul_dtype
    separable_method: str = _D.separable_method

    def __post_init__(self):
        # Bad sizes otherwise surface at init as ZeroDivisionError or "math domain error".
        settings.check_module_fields(self, "Generator.")
        _check_ranges("Generator.index_ranges", self.index_ranges, INDEX_DIM)
        if self.structure:
            if self.structure_ranges is None:
                raise ValueError("Generator: structure=True needs structure_ranges")
            _check_ranges("Generator.structure_ranges", self.structure_ranges, STRUCTURE_DIM)
        super().__post_init__()

    def setup(self):
        self.index_b = self.variable(
            "constants",
            "index_B",
            lambda: encodings.gaussian_matrix(
                self.make_rng("params"), INDEX_DIM, self.n_freqs, self.sigma
            ),
        )
        enc_dim = encodings.output_dim(self.encoding, INDEX_DIM, self.n_freqs)
        dot_general = precision.dot_general(precision.resolve_matmul_dtype(self.matmul_dtype))
        self.input_layer = _dense(self.hidden, enc_dim, dot_general=dot_general)
        self.blocks = [ResidualBlock(self.hidden) for _ in range(self.num_blocks)]
        self.output_layer = _dense(1, self.hidden)
        if self.structure:
            self.structure_b = self.variable(
                "constants",
                "structure_B",
                lambda: encodings.gaussian_matrix(
                    self.make_rng("params"), STRUCTURE_DIM, self.structure_freqs, self.sigma
                ),
            )
            self.structure_encoder = StructureEncoder(
                2 * self.structure_freqs, self.structure_heads, self.hidden
            )

    def _normalize(self, x, ranges):
        # Range errors are raised on the host (see check); in-graph we can only clamp.
        lo, hi, mean, std = descriptors.minmax_stats(ranges)
        if self.out_of_range == "clip":
            x = jnp.clip(x, lo, hi)
        return (x - mean) / std

    def structure_tokens(self, structure_L29):
        """The encoded structure input ``(L, 2 * structure_freqs)`` the structure encoder reads
        (also the input of a generated UHN's structure path, spec §5.3)."""
        x = self._normalize(structure_L29, self.structure_ranges)
        return encodings.fourier(x, self.structure_b.value)

    def structure_vector(self, structure_L29, layer_mask_L=None):
        """Per-model vector ``(h,)`` added to every hidden state (zeros without structure).

        ``layer_mask_L`` (optional) marks the real rows of a zero-padded structure input.
        """
        if not self.structure:
            return jnp.zeros((self.hidden,), jnp.float32)
        x = self._normalize(structure_L29, self.structure_ranges)
        return self.structure_encoder(encodings.fourier(x, self.structure_b.value), layer_mask_L)

    def from_index(self, index_n10, structure_h):
        """Weights ``(n,)`` for raw index descriptors ``(n, 10)`` and a structure vector."""
        return self.from_features(self.index_features(index_n10), structure_h)

    def index_features(self, index_n10):
        """The encoded index ``(n, enc_dim)`` of raw descriptors: a function of the frozen
        constants and the descriptors only, so it can be computed once (:func:`with_tables`)."""
        x = self._normalize(index_n10, self.index_ranges)
        if self.encoding == "fourier":
            return encodings.fourier(x, self.index_b.value)
        if self.encoding == "positional":
            return encodings.positional(x, sigma=self.sigma)
        return x

    def from_features(self, feats_nE, structure_h):
        """Weights ``(n,)`` from encoded index descriptors (:meth:`index_features`)."""
        return self.from_hidden(self.first_layer(feats_nE), structure_h)

    def first_layer(self, feats_nE):
        """First-layer outputs ``(n, H)`` of encoded index descriptors."""
        return self.input_layer(feats_nE)

    def separable_tables(self, rows_R10, cols_C10):
        """The row and column Fourier tables of a separable tensor (:func:`separable.tables`)."""
        if self.encoding != "fourier":
            raise ValueError("the separable path needs the Fourier encoding")
        return separable.tables(self.index_b.value, rows_R10, cols_C10)

    def separable_hidden(self, row_table_R2F, col_table_C2F):
        """First-layer output ``(C * R, H)`` of a separable tensor from its tables, by the
        angle-addition matmul (:func:`separable.matmul_hidden`)."""
        layer = self.input_layer.variables["params"]
        dtype = precision.resolve_matmul_dtype(self.matmul_dtype)
        return separable.matmul_hidden(
            layer["kernel"], layer["bias"], row_table_R2F, col_table_C2F, dtype
        )

    def nufft_hidden(self, row0_10, drow_10, cols_C10, n_rows, col_shape):
        """:meth:`separable_hidden` by a non-uniform FFT, for descriptors affine in the indices
        (:func:`separable.nufft_hidden`, which documents the arguments)."""
        layer = self.input_layer.variables["params"]
        return separable.nufft_hidden(
            layer["kernel"],
            layer["bias"],
            self.index_b.value,
            row0_10,
            drow_10,
            cols_C10,
            n_rows,
            col_shape,
        )

    def from_hidden(self, h_nH, structure_h):
        """Weights ``(n,)`` from first-layer outputs ``(n, H)``: residual blocks and the head."""
        for block in self.blocks:
            h_nH = block(h_nH)
        h_nH = h_nH + structure_h
        return self.output_layer(nn.relu(h_nH))[..., 0]

    def __call__(self, index_n10, structure_L29=None):
        if structure_L29 is None:
            structure_L29 = jnp.zeros((1, STRUCTURE_DIM), jnp.float32)
        return self.from_index(index_n10, self.structure_vector(structure_L29))


def from_config(
    cfg: settings.GeneratorConfig,
    index_ranges: descriptors.Ranges,
    structure_ranges: descriptors.Ranges | None = None,
) -> Generator:
    """Builds a :class:`Generator` from a config object with the generator's fields (a
    :class:`settings.GeneratorConfig`, or any object with some of them; the rest default)."""
    fields = {f.name for f in dataclasses.fields(Generator)} - {
        "index_ranges",
        "structure_ranges",
        "parent",
        "name",
    }
    kwargs = {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)}
    return Generator(index_ranges=index_ranges, structure_ranges=structure_ranges, **kwargs)


def init(gen: Generator, key: jax.Array) -> dict:
    """Initialises ``{"params": ..., "constants": ...}`` of a generator."""
    structure = jnp.zeros((1, STRUCTURE_DIM), jnp.float32) if gen.structure else None
    return gen.init(key, jnp.zeros((1, INDEX_DIM), jnp.float32), structure)


def num_params(variables: dict) -> int:
    """Trainable parameter count (the ``params`` collection only)."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"])))
