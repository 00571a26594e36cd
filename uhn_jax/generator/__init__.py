"""The UHN generator (spec §2.1) as a Flax Linen module, and chunked weight generation.

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
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import descriptors, encodings
from uhn_jax.core import sharding as sharding_lib


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear init, U(+-1/sqrt(fan_in)), for kernels and biases alike."""
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


#: Values of ``Generator.separable_method``.
SEPARABLE_METHODS = ("matmul", "nufft", "auto")
#: Requested relative accuracy of the non-uniform FFT first layer (:meth:`Generator.nufft_hidden`),
#: near the float32 limit. The float32 Fourier phases themselves carry ~1e-4 rad of rounding.
NUFFT_EPS = 1e-6
#: FINUFFT's grid upsampling factor: 1.25 (smaller FFTs, wider kernels) was 2-4x faster than 2.0
#: for the reference generator's first layer on a 2-core CPU.
NUFFT_UPSAMPLING = 1.25

# ----------------------------------------------------------------------------- matmul precision

#: Values of ``Generator.matmul_dtype``.
MATMUL_DTYPES = ("float32", "bfloat16", "auto")


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bf16 dot-product instructions (AVX512-BF16, which every
    AMX-bf16 CPU also has), as NumPy's runtime CPU detection (cpuid, any OS) reports them.

    On such a CPU (a 2-core Sapphire Rapids VM with AMX) XLA's bf16 GEMMs ran ~6x faster than
    float32 ones; CPUs without them emulate bf16 and run it slower than float32.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2 or another layout: assume no native bf16
        return False
    return bool(__cpu_features__.get("AVX512BF16", False))


def resolve_matmul_dtype(name: str) -> jnp.dtype:
    """The operand dtype of the generator's first-layer matmuls for a ``matmul_dtype`` name.

    ``"auto"`` is bfloat16 on GPU and TPU and on CPUs with native bf16 dot products
    (:func:`_cpu_has_native_bf16`), float32 elsewhere (other CPUs emulate bf16 GEMMs and run
    them slower than float32).
    """
    if name not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got {name!r}")
    if name == "auto":
        fast = jax.default_backend() != "cpu" or _cpu_has_native_bf16()
        name = "bfloat16" if fast else "float32"
    return jnp.dtype(name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_matmul(a, b, dtype):
    """``a @ b`` with operands rounded to ``dtype`` and float32 accumulation and output; the
    backward matmuls round their operands the same way (plain autodiff would run them in
    float32, because the cotangent is float32)."""
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(a, b, dtype):
    return _mixed_matmul(a, b, dtype), (a.astype(dtype), b.astype(dtype))


def _mixed_matmul_bwd(dtype, res, ct):
    a, b = res
    ct = ct.astype(dtype)
    da = jnp.matmul(ct, b.T, preferred_element_type=jnp.float32)
    a2, ct2 = a.reshape(-1, a.shape[-1]), ct.reshape(-1, ct.shape[-1])
    db = jnp.matmul(a2.T, ct2, preferred_element_type=jnp.float32)
    return da, db


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _dot_general(dtype: jnp.dtype):
    """A ``dot_general`` for ``nn.Dense`` whose operands are rounded to ``dtype``."""
    if dtype == jnp.float32:
        return None  # Flax's default, lax.dot_general

    def dot_general(lhs, rhs, dimension_numbers, precision=None, **_):
        assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
        return _mixed_matmul(lhs, rhs, dtype)

    return dot_general


class ResidualBlock(nn.Module):
    """``x + fc2(LN(relu(fc1(LN(relu(x))))))`` with affine LayerNorms."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=1e-5)(nn.relu(x))
        y = _dense(self.hidden, self.hidden)(y)
        y = nn.LayerNorm(epsilon=1e-5)(nn.relu(y))
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
        x = nn.LayerNorm(epsilon=1e-5)(tokens_LD + attn)
        ff = _dense(d, d)(nn.relu(_dense(d, d)(x)))
        x = nn.LayerNorm(epsilon=1e-5)(x + ff)
        if mask_L is None:
            pooled = x.mean(axis=0)
        else:
            pooled = (x * mask_L[:, None]).sum(0) / jnp.maximum(mask_L.sum(), 1.0)
        y = nn.relu(_dense(self.hidden, d)(pooled))
        return _dense(self.hidden, self.hidden, zero=True, name="zero_out")(y)


class Generator(nn.Module):
    """UHN generator. Defaults are the reference MNIST sizes (148,353 params, no structure).

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
      out_of_range: "error" (descriptors are checked on the host, see :func:`check`) or
        "clip" (values are clamped to the declared ranges in-graph).
      matmul_dtype: operand dtype of the first Linear's matmuls (forward and weight gradient),
        the bulk of the FLOPs; accumulation, the rest of the network and the parameters stay
        float32. "float32", "bfloat16" or "auto" (:func:`resolve_matmul_dtype`).
      separable_method: how :func:`generate_planned` evaluates the first layer of separable
        tensors: "matmul" (:meth:`separable_hidden`), "nufft" (:meth:`nufft_hidden`, needs the
        ``jax-finufft`` package and a CPU backend) or "auto" (:func:`use_nufft`).
    """

    index_ranges: descriptors.Ranges
    structure_ranges: descriptors.Ranges | None = None
    hidden: int = 64
    num_blocks: int = 2
    n_freqs: int = 1024
    sigma: float = 100.0
    encoding: str = "fourier"
    structure: bool = False
    structure_freqs: int = 32
    structure_heads: int = 4
    out_of_range: str = "error"
    matmul_dtype: str = "float32"
    separable_method: str = "matmul"

    def setup(self):
        if self.separable_method not in SEPARABLE_METHODS:
            raise ValueError(
                f"separable_method must be one of {SEPARABLE_METHODS}, "
                f"got {self.separable_method!r}"
            )
        if self.encoding not in encodings.ENCODINGS:
            raise ValueError(
                f"encoding must be one of {encodings.ENCODINGS}, got {self.encoding!r}"
            )
        n_in = len(descriptors.INDEX_FIELDS)
        self.index_b = self.variable(
            "constants",
            "index_B",
            lambda: encodings.gaussian_matrix(
                self.make_rng("params"), n_in, self.n_freqs, self.sigma
            ),
        )
        enc_dim = encodings.output_dim(self.encoding, n_in, self.n_freqs)
        self.input_layer = _dense(
            self.hidden, enc_dim, dot_general=_dot_general(resolve_matmul_dtype(self.matmul_dtype))
        )
        self.blocks = [ResidualBlock(self.hidden) for _ in range(self.num_blocks)]
        self.output_layer = _dense(1, self.hidden)
        if self.structure:
            if self.structure_ranges is None:
                raise ValueError("structure=True needs structure_ranges")
            n_s = len(descriptors.GLOBAL_FIELDS) + len(descriptors.STRUCTURE_FIELDS)
            self.structure_b = self.variable(
                "constants",
                "structure_B",
                lambda: encodings.gaussian_matrix(
                    self.make_rng("params"), n_s, self.structure_freqs, self.sigma
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
        """Fourier tables ``([cos a | sin a] (R, 2F), [cos b | sin b] (C, 2F))`` of a separable
        tensor's rows and columns, ``a = rows B`` and ``b = cols B``.

        They depend only on the frozen ``B`` and on fixed descriptors, so a training run
        computes them once (:func:`with_tables`) instead of every step. Inputs are already
        normalised (see :func:`plan`).
        """
        if self.encoding != "fourier":
            raise ValueError("the separable path needs the Fourier encoding")
        b_DF = self.index_b.value
        return encodings.fourier(rows_R10, b_DF), encodings.fourier(cols_C10, b_DF)

    def separable_hidden(self, row_table_R2F, col_table_C2F):
        """First-layer output ``(C * R, H)`` (column-major over rows) of a separable tensor.

        The Fourier projection of a sum splits, ``(r + c) B = a_r + b_c``, and by the
        angle-addition identities the first Linear over ``[cos, sin]`` becomes one matmul of a
        per-column table ``[cos b_c, sin b_c]`` (C, 2F) with per-row matrices
        ``[cos a_r W_c + sin a_r W_s ; cos a_r W_s - sin a_r W_c]`` (2F, H). That needs
        ``(R + C) F`` cos/sin evaluations instead of ``R C F`` and never forms the (R C, 2F)
        feature matrix. The tables come from :meth:`separable_tables`.
        """
        layer = self.input_layer.variables["params"]
        cos_FR, sin_FR = (t.T for t in jnp.split(row_table_R2F, 2, axis=1))
        dtype = resolve_matmul_dtype(self.matmul_dtype)
        h_CRH = _separable_linear(layer["kernel"], cos_FR, sin_FR, col_table_C2F, dtype)
        c, r, h = h_CRH.shape
        return h_CRH.reshape(c * r, h) + layer["bias"]

    def nufft_hidden(self, row0_10, drow_10, cols_C10, n_rows, col_shape):
        """:meth:`separable_hidden` by a non-uniform FFT, for descriptors affine in the indices.

        Within one tensor the normalised descriptors are affine in the integer indices:
        ``row_o = r_0 + o dr`` and ``col = c_0 + sum_j g_j dc_j``. The first Linear's output
        ``sum_f W_c[f] cos(p_f) + W_s[f] sin(p_f)`` with ``p_f = (row + col) B_f`` is then the
        real part of ``sum_f a_f exp(i (o beta_f + g_in delta_f))`` with
        ``a_f = (W_c[f] - i W_s[f]) exp(i (alpha_f + psi_f))``: a 2-D type-1 non-uniform
        discrete Fourier transform of the F complex strengths onto the (rows x input-index)
        grid, batched over H and over the other column axes (``psi`` carries e.g. the kernel
        position of a conv). FINUFFT evaluates it in ``O(F H + R C H log(R C))`` work instead of
        the ``2 R C 2F H`` of the matmul. Its tolerance (:data:`NUFFT_EPS`) is relative to the
        sum of the strengths' magnitudes; in float32 at :data:`NUFFT_UPSAMPLING` the weights come
        out within ~1e-3 of the matmul's scale (tested). Gradients (with respect to the kernel)
        come from its adjoint, a type-2 transform.

        Args:
          row0_10: normalised descriptor of the first of ``n_rows`` consecutive rows of one
            tensor (:func:`plan`'s rows, of a group it marked ``linear``).
          drow_10: the step between consecutive rows' descriptors.
          cols_C10: the group's normalised column descriptors.
          n_rows: rows to generate (static).
          col_shape: the column axes' sizes, the input index last (static).

        Returns:
          ``(C * n_rows, H)``, column-major over the rows, as :meth:`separable_hidden`.
        """
        from jax_finufft import nufft1, options

        layer = self.input_layer.variables["params"]
        f = self.n_freqs
        kernel = layer["kernel"]
        a_HF = (kernel[:f] - 1j * kernel[f:]).T.astype(jnp.complex64)
        b_DF = self.index_b.value
        strides = np.cumprod((1,) + tuple(col_shape[::-1]))[::-1][1:]
        col0 = cols_C10[0]
        delta = [
            (cols_C10[s] - col0) @ b_DF if n > 1 else jnp.zeros((f,), jnp.float32)
            for s, n in zip(strides, col_shape, strict=True)
        ]
        n_in, lead = col_shape[-1], tuple(col_shape[:-1])
        if lead:  # phases of the other column axes' index combinations, (Q, F)
            grid_QK = np.indices(lead).reshape(len(lead), -1).T.astype(np.float32)
            psi_QF = jnp.asarray(grid_QK) @ jnp.stack(delta[:-1])
        else:
            psi_QF = jnp.zeros((1, f), jnp.float32)
        beta = drow_10 @ b_DF
        # Row o is mode o - n_rows // 2 of the centred transform (input index likewise).
        phase_F = (row0_10 + col0) @ b_DF + (n_rows // 2) * beta + (n_in // 2) * delta[-1]
        c_QHF = a_HF[None] * jnp.exp(1j * (phase_F + psi_QF))[:, None, :]
        q, h = c_QHF.shape[:2]

        def wrap(x):  # integer grids only see the phase step modulo 2 pi
            return jnp.mod(x + jnp.pi, 2 * jnp.pi) - jnp.pi

        z = nufft1(
            (n_rows, n_in),
            c_QHF.reshape(q * h, f),  # one batch axis: the transforms share their points
            wrap(beta),
            wrap(delta[-1]),
            eps=NUFFT_EPS,
            iflag=1,
            opts=options.Opts(upsampfac=NUFFT_UPSAMPLING),
        ).reshape(q, h, n_rows, n_in)
        h_CRH = jnp.real(z).transpose(0, 3, 2, 1).reshape(q * n_in * n_rows, h)
        return h_CRH + layer["bias"]

    def from_hidden(self, h_nH, structure_h):
        """Weights ``(n,)`` from first-layer outputs ``(n, H)``: residual blocks and the head."""
        for block in self.blocks:
            h_nH = block(h_nH)
        h_nH = h_nH + structure_h
        return self.output_layer(nn.relu(h_nH))[..., 0]

    def __call__(self, index_n10, structure_L29=None):
        if structure_L29 is None:
            structure_L29 = jnp.zeros((1, 29), jnp.float32)
        return self.from_index(index_n10, self.structure_vector(structure_L29))


def _row_matrices(kernel_2FH, cos_FR, sin_FR):
    """The per-row matrices ``(2F, R, H)`` of :meth:`Generator.separable_hidden`."""
    w_c, w_s = jnp.split(kernel_2FH[:, None, :], 2, axis=0)  # (F, 1, H) each
    cos_a, sin_a = cos_FR[..., None], sin_FR[..., None]
    return jnp.concatenate([cos_a * w_c + sin_a * w_s, cos_a * w_s - sin_a * w_c], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _separable_linear(kernel_2FH, cos_FR, sin_FR, g_C2F, dtype):
    """``h[c, r] = g[c] @ M_r`` for all columns and rows: one ``(C, 2F) @ (2F, R H)`` GEMM.

    The custom VJP keeps only the ``(F, R)`` cos/sin tables and the ``(C, 2F)`` column table as
    residuals (autodiff would save ``(F, R, H)`` broadcasts of them), and reduces the
    ``(2F, R, H)`` cotangent of the row matrices with batched dot products. Only the kernel
    gets a gradient: the tables are functions of frozen Fourier matrices and fixed descriptors.
    Both GEMMs (this one and the weight-gradient one) take ``dtype`` operands and accumulate in
    float32.
    """
    m_2FRH = _row_matrices(kernel_2FH, cos_FR, sin_FR).astype(dtype)
    _, r, h = m_2FRH.shape
    g = g_C2F.astype(dtype)
    return jnp.matmul(g, m_2FRH.reshape(-1, r * h), preferred_element_type=jnp.float32).reshape(
        -1, r, h
    )


def _separable_linear_fwd(kernel_2FH, cos_FR, sin_FR, g_C2F, dtype):
    out = _separable_linear(kernel_2FH, cos_FR, sin_FR, g_C2F, dtype)
    return out, (cos_FR, sin_FR, g_C2F)


def _separable_linear_bwd(dtype, res, dh_CRH):
    cos_FR, sin_FR, g_C2F = res
    c, r, h = dh_CRH.shape
    dh = dh_CRH.reshape(c, r * h).astype(dtype)
    dm_2FRH = jnp.matmul(g_C2F.T.astype(dtype), dh, preferred_element_type=jnp.float32)
    dm_2FRH = dm_2FRH.reshape(-1, r, h)
    dm_c, dm_s = jnp.split(dm_2FRH, 2, axis=0)
    dot = functools.partial(jnp.einsum, "fr,frh->fh")
    dw_c = dot(cos_FR, dm_c) - dot(sin_FR, dm_s)
    dw_s = dot(sin_FR, dm_c) + dot(cos_FR, dm_s)
    zeros = jnp.zeros_like
    return jnp.concatenate([dw_c, dw_s]), zeros(cos_FR), zeros(sin_FR), zeros(g_C2F)


_separable_linear.defvjp(_separable_linear_fwd, _separable_linear_bwd)


def check(gen: Generator, desc: descriptors.ModelDescriptors) -> None:
    """Raises ValueError if ``desc`` leaves ``gen``'s declared ranges (unless it clips)."""
    if gen.out_of_range == "clip":
        return
    own = desc.index_ranges()
    descriptors.check_in_range(own.lo, own.hi, gen.index_ranges, descriptors.INDEX_FIELDS)
    if gen.structure:
        own = desc.structure_ranges()
        names = descriptors.GLOBAL_FIELDS + descriptors.STRUCTURE_FIELDS
        descriptors.check_in_range(own.lo, own.hi, gen.structure_ranges, names)


def init(gen: Generator, key: jax.Array) -> dict:
    """Initialises ``{"params": ..., "constants": ...}`` of a generator."""
    structure = jnp.zeros((1, 29), jnp.float32) if gen.structure else None
    return gen.init(key, jnp.zeros((1, len(descriptors.INDEX_FIELDS)), jnp.float32), structure)


def generate(
    gen: Generator,
    variables: dict,
    index_N10: jax.Array,
    structure_L29: jax.Array | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """Generates the flat weight vector ``w[N]`` for raw index descriptors ``(N, 10)``.

    With ``chunk_size`` the N rows are processed ``chunk_size`` at a time under ``lax.map`` with
    ``jax.checkpoint``: the backward pass keeps only each chunk's descriptors and recomputes the
    ``(chunk, 2 * n_freqs)`` features, so peak memory is set by the chunk, not by N.

    Args:
      gen: the generator module.
      variables: its variables (``params`` and ``constants``).
      index_N10: raw (un-normalised) index descriptors.
      structure_L29: the model's structure input, needed when ``gen.structure``.
      chunk_size: rows per chunk; ``None`` or ``>= N`` generates in one piece.
      mesh: a 1-D device mesh (:func:`uhn_jax.core.sharding.make_mesh`): every chunk's rows are
        split over its devices and ``w`` comes back replicated. ``None``: no constraints.

    Returns:
      float32 ``(N,)``.
    """
    plan_ = Plan(shapes=((index_N10.shape[0],),), separable=(False,))
    arrays = {"direct": index_N10, "rows": [], "cols": []}
    return generate_planned(
        gen, variables, plan_, arrays, structure_L29, chunk_size=chunk_size, mesh=mesh
    )


def num_params(variables: dict) -> int:
    """Trainable parameter count (the ``params`` collection only)."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"])))


def from_config(cfg, index_ranges, structure_ranges=None) -> Generator:
    """Builds a :class:`Generator` from a config object with the generator's fields."""
    fields = {f.name for f in dataclasses.fields(Generator)} - {
        "index_ranges",
        "structure_ranges",
        "parent",
        "name",
    }
    kwargs = {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)}
    return Generator(index_ranges=index_ranges, structure_ranges=structure_ranges, **kwargs)


# ----------------------------------------------------------------------------- planned generation


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of how each tensor of a model is generated.

    Tensors with at least two axes and ``min_separable`` scalars take the separable path
    (:meth:`Generator.separable_hidden`): the last axis (the output index for Linear and HWIO conv
    kernels) enumerates rows, the other axes enumerate columns. Separable tensors whose columns
    are the same (same leading shape and fields, e.g. the repeated convs of a ResNet stage) form
    one group and are generated in one call over their stacked rows. All other tensors share one
    direct, chunked pass over their materialised descriptors.
    """

    shapes: tuple[tuple[int, ...], ...]
    separable: tuple[bool, ...]
    groups: tuple[tuple[int, ...], ...] = ()  # tensor indices of each separable group
    # Per group: descriptors affine in the indices (nothing clipped), so the first layer can be
    # a non-uniform FFT (Generator.nufft_hidden).
    linear: tuple[bool, ...] = ()


def plan(
    gen: Generator, desc: descriptors.ModelDescriptors, min_separable: int = 1024
) -> tuple[Plan, dict]:
    """Splits a model's tensors between the separable and the direct path.

    Args:
      gen: the generator (its ranges normalise the separable descriptors on the host).
      desc: the model's descriptors.
      min_separable: smallest tensor size sent down the separable path; ``0`` disables it.

    Returns:
      ``(plan, arrays)``: the static :class:`Plan` and a pytree of numpy arrays
      ``{"direct": (N_direct, 10) raw descriptors, "rows": [(R, 10)], "cols": [(C, 10)]}``
      with one rows/cols pair per group (rows of its tensors stacked); row and column
      descriptors are normalised and sum to each scalar's normalised descriptor.
    """
    use = gen.encoding == "fourier" and min_separable > 0
    lo, hi, mean, std = descriptors.minmax_stats(gen.index_ranges)
    separable, direct = [], []
    groups: dict[tuple, list[int]] = {}
    linear: dict[tuple, bool] = {}
    group_rows: dict[tuple, list[np.ndarray]] = {}
    group_cols: dict[tuple, np.ndarray] = {}
    for t, g in enumerate(desc.grids):
        sep = use and len(g.shape) >= 2 and g.size >= min_separable
        separable.append(sep)
        if not sep:
            direct.append(g.materialize())
            continue
        const = np.asarray(g.const, np.float32)
        if gen.out_of_range == "clip":
            const = const.clip(lo, hi)
        # Index values past their declared range are clipped: not affine in the index any more.
        top = np.asarray(g.shape) - 1
        affine = bool(np.all((lo[list(g.axes)] <= 0) & (top <= hi[list(g.axes)])))
        base = np.where(np.isin(np.arange(len(const)), g.axes), 0.0, (const - mean) / std)
        r_field = g.axes[-1]
        r_vals = np.arange(g.shape[-1], dtype=np.float32)
        row = np.tile(base, (g.shape[-1], 1))
        row[:, r_field] = (np.clip(r_vals, lo[r_field], hi[r_field]) - mean[r_field]) / std[r_field]
        grid = np.indices(g.shape[:-1]).reshape(len(g.shape) - 1, -1).astype(np.float32)
        col = np.zeros((grid.shape[1], len(const)), np.float32)
        for k, field in enumerate(g.axes[:-1]):
            col[:, field] = (np.clip(grid[k], lo[field], hi[field]) - mean[field]) / std[field]
        key = (g.shape[:-1], g.axes[:-1])
        groups.setdefault(key, []).append(t)
        linear[key] = linear.get(key, True) and affine
        group_rows.setdefault(key, []).append(row.astype(np.float32))
        group_cols[key] = col
    arrays = {
        "direct": (np.concatenate(direct) if direct else np.zeros((0, 10), np.float32)),
        "rows": [np.concatenate(group_rows[k]) for k in groups],
        "cols": [group_cols[k] for k in groups],
    }
    plan_ = Plan(
        tuple(g.shape for g in desc.grids),
        tuple(separable),
        tuple(tuple(ts) for ts in groups.values()),
        tuple(linear[k] for k in groups),
    )
    return plan_, arrays


#: Rows of first-layer output sent through the residual blocks at once on the separable path
#: (under ``jax.checkpoint``). The blocks are elementwise-heavy at width h; chunks this size stay
#: in cache, which made the MNIST MLP's blocks ~1.7x faster forward + backward on a 2-core CPU
#: than one pass over all rows.
TAIL_ROWS = 2048


def generate_planned(
    gen: Generator,
    variables: dict,
    plan_: Plan,
    arrays: dict,
    structure_L29: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: bool = True,
    layer_mask: jax.Array | None = None,
) -> jax.Array:
    """Generates ``w[N]`` following a :class:`Plan`; equals :func:`generate` up to rounding.

    ``layer_mask`` marks the real rows of a zero-padded ``structure_L29`` (multi-model runs).

    ``chunk_size`` bounds the scalars generated at once on both paths: direct rows go
    ``chunk_size`` at a time under ``lax.map`` + ``jax.checkpoint``; a separable tensor with C
    columns ``max(1, chunk_size // C)`` rows at a time. On the separable path the residual
    blocks always run :data:`TAIL_ROWS` first-layer outputs at a time under ``jax.checkpoint``,
    and ``remat`` decides whether a chunk's first layer is recomputed in the backward pass too
    (memory set by the chunk) or its ``(chunk, H)`` output kept (memory ``4 N H`` bytes, no
    recomputation of the dominant matmul); :func:`auto_chunking` picks both from a budget. With
    a ``mesh`` the rows of every chunk are split over its devices (the chunk is rounded up to a
    multiple of the device count) and the returned ``w`` is replicated. Separable groups that
    :func:`use_nufft` picks take :meth:`Generator.nufft_hidden` instead of the matmul, with the
    same chunks (:func:`_nufft_group`). Without ``chunk_size`` every tensor outside those groups
    shares one residual-block loop (:func:`_one_pass`).
    """
    if gen.structure and structure_L29 is None:
        raise ValueError("this generator has a structure path; pass structure_L29")
    s_h = gen.apply(
        variables,
        structure_L29 if structure_L29 is not None else jnp.zeros((1, 29)),
        layer_mask,
        method=Generator.structure_vector,
    )
    if "row_tables" not in arrays:
        arrays = with_tables(gen, variables, arrays)
    nufft = use_nufft(gen, plan_, chunk_size, mesh)
    if chunk_size is None:
        return _one_pass(gen, variables, plan_, arrays, s_h, nufft, mesh)
    direct_w = None
    if "direct_features" in arrays:
        direct_w = _chunked_rows(
            lambda f: gen.apply(variables, f, s_h, method=Generator.from_features),
            arrays["direct_features"],
            chunk_size,
            mesh,
        )
    elif arrays["direct"].shape[0]:
        direct_w = _chunked_rows(
            lambda x: gen.apply(variables, x, s_h, method=Generator.from_index),
            arrays["direct"],
            chunk_size,
            mesh,
        )

    def tail(h):
        return gen.apply(variables, h, s_h, method=Generator.from_hidden)

    pieces: dict[int, jax.Array] = {}
    for g, (group, row_tab, col_tab) in enumerate(
        zip(plan_.groups, arrays["row_tables"], arrays["col_tables"], strict=True)
    ):

        def run(row_tab, col_tab=col_tab):
            h = gen.apply(variables, row_tab, col_tab, method=Generator.separable_hidden)
            w = _chunked_rows(tail, h, TAIL_ROWS, mesh)
            return w.reshape(col_tab.shape[0], row_tab.shape[0]).T

        if nufft[g]:
            w_RC = _nufft_group(gen, variables, plan_, arrays, g, tail, chunk_size, remat)
        else:
            per_chunk = max(1, chunk_size // col_tab.shape[0])
            w_RC = _chunked_rows(run, row_tab, per_chunk, mesh, remat)
        start = 0
        for t in group:
            r = plan_.shapes[t][-1]
            # Rows enumerate the last tensor axis: (R, C) -> C order over (*other axes, R).
            pieces[t] = w_RC[start : start + r].T.reshape(-1)
            start += r
    pieces.update(_direct_pieces(plan_, direct_w))
    w = jnp.concatenate([pieces[t] for t in range(len(plan_.shapes))])
    return sharding_lib.constrain(w, sharding_lib.replicated(mesh))


def _one_pass(gen, variables, plan_, arrays, s_h, nufft, mesh):
    """:func:`generate_planned` without chunks. The first-layer outputs of every tensor on the
    matmul and direct paths, put in weight order, go through one :data:`TAIL_ROWS`-chunked pass
    of the residual blocks and head instead of one pass per group: a smaller compiled program
    (the MNIST CNN config's one-step run: 36.5 s -> 26.5 s, mostly compilation). Groups on the
    non-uniform FFT keep their own passes (:func:`_nufft_group`); merged, the MNIST MLP's step
    was slower."""

    def tail(h):
        return gen.apply(variables, h, s_h, method=Generator.from_hidden)

    if "direct_features" in arrays:
        feats = arrays["direct_features"]
    else:
        feats = gen.apply(variables, arrays["direct"], method=Generator.index_features)
    direct_h = gen.apply(variables, feats, method=Generator.first_layer)
    hidden: dict[int, jax.Array] = {}  # first-layer outputs (C r, H) in weight order
    weights: dict[int, jax.Array] = {}  # flat weights per tensor, nufft groups first
    for g, (group, row_tab, col_tab) in enumerate(
        zip(plan_.groups, arrays["row_tables"], arrays["col_tables"], strict=True)
    ):
        if nufft[g]:
            w_RC = _nufft_group(gen, variables, plan_, arrays, g, tail, None, False)
        else:
            h = gen.apply(variables, row_tab, col_tab, method=Generator.separable_hidden)
            h_CRH = h.reshape(col_tab.shape[0], row_tab.shape[0], -1)
        start = 0
        for t in group:
            r = plan_.shapes[t][-1]
            if nufft[g]:
                weights[t] = w_RC[start : start + r].T.reshape(-1)
            else:
                hidden[t] = h_CRH[:, start : start + r].reshape(-1, h_CRH.shape[-1])
            start += r
    hidden.update(_direct_pieces(plan_, direct_h))
    order = sorted(hidden)
    if order:
        w = _chunked_rows(tail, jnp.concatenate([hidden[t] for t in order]), TAIL_ROWS, mesh)
        off = 0
        for t in order:
            weights[t] = w[off : off + hidden[t].shape[0]]
            off += hidden[t].shape[0]
    w = jnp.concatenate([weights[t] for t in range(len(plan_.shapes))])
    return sharding_lib.constrain(w, sharding_lib.replicated(mesh))


def _direct_pieces(plan_: Plan, rows: jax.Array | None) -> dict[int, jax.Array]:
    """Per tensor on the direct path, its rows of ``rows`` (the direct path's outputs in plan
    order: weights, or first-layer outputs)."""
    pieces, off = {}, 0
    for t, (shape, sep) in enumerate(zip(plan_.shapes, plan_.separable, strict=True)):
        if not sep:
            size = math.prod(shape)
            pieces[t] = rows[off : off + size]
            off += size
    return pieces


def _nufft_group(gen, variables, plan_, arrays, g, tail, chunk_size, remat):
    """Weights ``(R, C)`` of separable group ``g`` through :meth:`Generator.nufft_hidden`.

    Each tensor's rows go ``max(1, chunk_size // C)`` at a time under ``lax.map`` (with
    ``jax.checkpoint`` when ``remat``): a chunk starting at row ``o0`` is the transform with its
    first row's descriptor ``r_0 + o0 dr``. Rows past a tensor's end are computed and dropped.
    """
    group, rows, cols = plan_.groups[g], arrays["rows"][g], arrays["cols"][g]
    col_shape = plan_.shapes[group[0]][:-1]
    n_cols = cols.shape[0]
    out, start = [], 0
    for t in group:
        n_out = plan_.shapes[t][-1]
        per = n_out if chunk_size is None else min(n_out, max(1, chunk_size // n_cols))
        r0 = rows[start]
        dr = rows[start + 1] - r0 if n_out > 1 else jnp.zeros_like(r0)

        def run(o0, r0=r0, dr=dr, per=per):
            h = gen.apply(
                variables, r0 + o0 * dr, dr, cols, per, col_shape, method=Generator.nufft_hidden
            )
            return _chunked_rows(tail, h, TAIL_ROWS).reshape(n_cols, per).T

        num = -(-n_out // per)
        if num == 1:
            w = run(jnp.float32(0))
        else:
            offsets = jnp.arange(num, dtype=jnp.float32) * per
            w = jax.lax.map(jax.checkpoint(run) if remat else run, offsets)
            w = w.reshape(num * per, n_cols)[:n_out]
        out.append(w)
        start += n_out
    return jnp.concatenate(out)


#: ``separable_method="auto"`` takes the non-uniform FFT for groups whose tensors average at
#: least this many (rows x input-index) grid points; below it FINUFFT's per-transform overhead
#: loses to the matmul (the reference MNIST CNN's 16-64 channel convs, for one).
NUFFT_MIN_GRID = 8192


@functools.cache
def _have_finufft() -> bool:
    try:
        import jax_finufft  # noqa: F401
    except ImportError:
        return False
    return True


def use_nufft(
    gen: Generator, plan_: Plan, chunk_size: int | None, mesh: jax.sharding.Mesh | None = None
) -> tuple[bool, ...]:
    """Per separable group, whether :func:`generate_planned` evaluates its first layer with
    :meth:`Generator.nufft_hidden` instead of the matmul.

    Only affine groups (``plan_.linear``) on one device qualify (sharded generation keeps the
    matmul). ``"nufft"`` takes every such group and raises if ``jax-finufft`` is missing or the
    backend is not a CPU (its GPU build is separate); ``"auto"`` takes those whose transforms
    (a tensor's rows, or a chunk's, by the input index) average at least
    :data:`NUFFT_MIN_GRID` grid points, when both are available.
    """
    method = gen.separable_method
    none = (False,) * len(plan_.groups)
    if method == "matmul":
        return none
    backend = jax.default_backend()
    if not (_have_finufft() and backend == "cpu"):
        if method == "nufft":
            raise ValueError(
                "generator.separable_method='nufft' needs the jax-finufft package and a CPU "
                f"backend (jax-finufft installed: {_have_finufft()}, backend: {backend})"
            )
        return none
    if mesh is not None and mesh.size > 1:
        return none
    out = []
    for group, linear in zip(plan_.groups, plan_.linear, strict=True):
        shape = plan_.shapes[group[0]]
        rows = sum(plan_.shapes[t][-1] for t in group) / len(group)
        if chunk_size is not None:
            rows = min(rows, max(1, chunk_size // math.prod(shape[:-1])))
        grid = rows * shape[-2]
        out.append(linear and (method == "nufft" or grid >= NUFFT_MIN_GRID))
    return tuple(out)


#: The direct path's encoded descriptors are cached by :func:`with_tables` up to this size.
DIRECT_FEATURE_CACHE_BYTES = 64 * 2**20


def with_tables(gen: Generator, variables: dict, arrays: dict) -> dict:
    """``arrays`` of :func:`plan` plus the Fourier tables that stay fixed during training.

    Adds ``"row_tables"`` (``(R, 2F)`` per group) and ``"col_tables"`` (``(C, 2F)``), which
    :func:`generate_planned` uses instead of evaluating cos/sin of the row and column
    descriptors again, and, when they take at most :data:`DIRECT_FEATURE_CACHE_BYTES`, the
    direct path's encoded descriptors ``"direct_features"`` (``(N_direct, enc_dim)``). For a
    small target such as the 364-weight formula KAN, those cos/sin were most of a step. All of
    it depends only on the frozen Fourier matrix and fixed descriptors, so a training run
    computes it once; ``generate_planned`` calls this itself when the tables are missing.
    Jit-safe; with descriptor rows split over a mesh, the row tables and features follow.
    """
    tables = [
        gen.apply(variables, rows, cols, method=Generator.separable_tables)
        for rows, cols in zip(arrays["rows"], arrays["cols"], strict=True)
    ]
    out = dict(arrays, row_tables=[t[0] for t in tables], col_tables=[t[1] for t in tables])
    direct = arrays["direct"]
    enc_dim = encodings.output_dim(gen.encoding, direct.shape[1], gen.n_freqs)
    if 0 < direct.shape[0] * enc_dim * 4 <= DIRECT_FEATURE_CACHE_BYTES:
        out["direct_features"] = gen.apply(variables, direct, method=Generator.index_features)
    return out


def auto_chunking(
    gen: Generator, arrays: dict, budget_mib: float, devices: int = 1
) -> tuple[int | None, bool]:
    """Chooses ``(chunk_size, remat)`` for :func:`generate_planned` from a memory budget.

    Estimates (float32, per device) the working set of generation forward + backward:

    * separable chunk of ``r`` rows and C columns: the per-row matrices and their cotangent,
      ``2 * 2F * r * H``, plus first-layer outputs, cotangents and block inputs, ``3 * C * r * H``;
    * direct chunk of ``s`` rows: projections, cos/sin and features, ``3 * 2F * s``, plus
      ``16 * H * s`` for the blocks;
    * kept across chunks: the row and column Fourier tables, and without ``remat`` the
      ``(N_separable, H)`` first-layer outputs.

    Returns ``(None, False)`` (one pass, nothing recomputed: fastest) when that fits in
    ``budget_mib``; otherwise the largest power-of-two chunk that fits, with ``remat`` on
    when the kept outputs alone would take more than half the budget.

    Args:
      gen: the generator (its ``hidden`` and ``n_freqs`` size the buffers).
      arrays: the host arrays of :func:`plan`.
      budget_mib: the memory allowed for generation, in MiB.
      devices: rows are split over this many devices (each holds ``1 / devices`` of a chunk).
    """
    if budget_mib <= 0:
        raise ValueError(f"the generation memory budget must be positive, got {budget_mib} MiB")
    f, h = gen.n_freqs, gen.hidden
    groups = [(r.shape[0], c.shape[0]) for r, c in zip(arrays["rows"], arrays["cols"], strict=True)]
    n_direct = arrays["direct"].shape[0]

    def transient(chunk: int | None) -> float:
        total = 0.0
        for rows, cols in groups:
            r = rows if chunk is None else min(rows, max(1, chunk // cols))
            total += 2 * 2 * f * r * h + 3 * cols * r * h
        s = n_direct if chunk is None else min(n_direct, chunk)
        return 4.0 * (total + s * (3 * 2 * f + 16 * h)) / devices

    tables = 4.0 * sum(2 * f * r / devices + 2 * f * c for r, c in groups)
    kept = 4.0 * sum(r * c * h / devices for r, c in groups)
    budget = budget_mib * 2**20 - tables
    if kept + transient(None) <= budget:
        return None, False
    remat = kept > budget / 2
    avail = budget - (0.0 if remat else kept)
    chunk = 2**30
    while chunk > 1 and transient(chunk) > avail:
        chunk //= 2
    return chunk, remat


def _chunked_rows(fn, rows, chunk_size: int | None, mesh=None, remat: bool = True):
    """``fn(rows)`` evaluated at most ``chunk_size`` rows at a time under ``lax.map``.

    The rows are split into ``ceil(n / chunk_size)`` near-equal chunks (the last one padded
    with zero rows, whose outputs are dropped), so padding stays small. Zeros rather than copies
    of the last row: the backward pass of zero padding is a slice, that of edge padding built
    two zero-filled ``(n, H)`` buffers (20-30 ms of the MNIST CNN step). With ``remat`` each
    chunk runs under
    ``jax.checkpoint``: the backward pass keeps only the chunks' inputs. With a ``mesh``, each
    chunk's rows are split over the devices: the chunk axis of the ``(num_chunks, chunk, d)``
    stack is sharded, so every ``lax.map`` iteration runs on all devices at once.
    """
    n = rows.shape[0]
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    devices = 1 if mesh is None else mesh.size
    if chunk_size is None or chunk_size >= n:
        if devices == 1:
            return fn(rows)
        chunk_size = n
    num_chunks = -(-n // chunk_size)
    # Equal chunks, rounded up to a multiple of the devices (and of 8 rows, which XLA's CPU
    # kernels handle markedly faster, unless chunks are tiny).
    align = devices * (8 if chunk_size >= 64 else 1)
    per_chunk = -(-n // num_chunks)
    chunk_size = -(-per_chunk // align) * align
    num_chunks = -(-n // chunk_size)
    padded = jnp.pad(rows, ((0, num_chunks * chunk_size - n), (0, 0)))
    chunks = padded.reshape(num_chunks, chunk_size, rows.shape[1])
    chunks = sharding_lib.constrain(chunks, sharding_lib.split(mesh, 3, axis=1))
    if num_chunks == 1:
        out = fn(chunks[0])[None]
    else:
        out = jax.lax.map(jax.checkpoint(fn) if remat else fn, chunks)
    return out.reshape(num_chunks * chunk_size, *out.shape[2:])[:n]
