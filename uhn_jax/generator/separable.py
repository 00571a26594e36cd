"""The separable first layer: Fourier tables, the angle-addition matmul and its non-uniform FFT.

A separable tensor's normalised descriptors are sums ``row + col`` of a per-row and a per-column
part (see :func:`uhn_jax.generator.plan`), so the Fourier projection splits,
``(r + c) B = a_r + b_c``, and the first Linear over ``[cos, sin]`` needs only ``(R + C) F``
cos/sin evaluations instead of ``R C F``. This module evaluates that layer from the Linear's
``kernel``/``bias`` and the frozen Fourier matrix ``B``; ``Generator`` wraps it as methods.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import encodings

if TYPE_CHECKING:  # type hints only: module and plan import this module
    from uhn_jax.generator.module import Generator
    from uhn_jax.generator.planning import Plan

#: Requested relative accuracy of the non-uniform FFT first layer (:func:`nufft_hidden`),
#: near the float32 limit. The float32 Fourier phases themselves carry ~1e-4 rad of rounding.
NUFFT_EPS = 1e-6
#: FINUFFT's grid upsampling factor: 1.25 (smaller FFTs, wider kernels) was 2-4x faster than 2.0
#: for the reference generator's first layer on a 2-core CPU.
NUFFT_UPSAMPLING = 1.25
#: ``separable_method="auto"`` takes the non-uniform FFT for groups whose tensors average at
#: least this many (rows x input-index) grid points; below it FINUFFT's per-transform overhead
#: loses to the matmul (the reference MNIST CNN's 16-64 channel convs, for one).
NUFFT_MIN_GRID = 8192


def tables(b_DF, rows_R10, cols_C10):
    """Fourier tables ``([cos a | sin a] (R, 2F), [cos b | sin b] (C, 2F))`` of a separable
    tensor's rows and columns, ``a = rows B`` and ``b = cols B``.

    They depend only on the frozen ``B`` and on fixed descriptors, so a training run computes
    them once (:func:`uhn_jax.generator.with_tables`) instead of every step. Inputs are already
    normalised (see :func:`uhn_jax.generator.plan`).
    """
    return encodings.fourier(rows_R10, b_DF), encodings.fourier(cols_C10, b_DF)


def matmul_hidden(kernel_2FH, bias_H, row_table_R2F, col_table_C2F, dtype):
    """First-layer output ``(C * R, H)`` (column-major over rows) of a separable tensor.

    By the angle-addition identities the first Linear over ``[cos, sin]`` becomes one matmul of
    a per-column table ``[cos b_c, sin b_c]`` (C, 2F) with per-row matrices
    ``[cos a_r W_c + sin a_r W_s ; cos a_r W_s - sin a_r W_c]`` (2F, H). That never forms the
    (R C, 2F) feature matrix. The tables come from :func:`tables`; ``dtype`` is the matmul
    operand dtype (:func:`uhn_jax.generator.resolve_matmul_dtype`).
    """
    cos_FR, sin_FR = (t.T for t in jnp.split(row_table_R2F, 2, axis=1))
    h_CRH = separable_linear(kernel_2FH, cos_FR, sin_FR, col_table_C2F, dtype)
    c, r, h = h_CRH.shape
    return h_CRH.reshape(c * r, h) + bias_H


def _row_matrices(kernel_2FH, cos_FR, sin_FR):
    """The per-row matrices ``(2F, R, H)`` of :func:`matmul_hidden`."""
    w_c, w_s = jnp.split(kernel_2FH[:, None, :], 2, axis=0)  # (F, 1, H) each
    cos_a, sin_a = cos_FR[..., None], sin_FR[..., None]
    return jnp.concatenate([cos_a * w_c + sin_a * w_s, cos_a * w_s - sin_a * w_c], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def separable_linear(kernel_2FH, cos_FR, sin_FR, g_C2F, dtype):
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
    out = separable_linear(kernel_2FH, cos_FR, sin_FR, g_C2F, dtype)
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


separable_linear.defvjp(_separable_linear_fwd, _separable_linear_bwd)


# ----------------------------------------------------------------------------- non-uniform FFT


def nufft_hidden(kernel_2FH, bias_H, b_DF, row0_10, drow_10, cols_C10, n_rows, col_shape):
    """:func:`matmul_hidden` by a non-uniform FFT, for descriptors affine in the indices.

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
      kernel_2FH, bias_H: the first Linear's parameters.
      b_DF: the frozen index Fourier matrix.
      row0_10: normalised descriptor of the first of ``n_rows`` consecutive rows of one
        tensor (:func:`uhn_jax.generator.plan`'s rows, of a group it marked ``linear``).
      drow_10: the step between consecutive rows' descriptors.
      cols_C10: the group's normalised column descriptors.
      n_rows: rows to generate (static).
      col_shape: the column axes' sizes, the input index last (static).

    Returns:
      ``(C * n_rows, H)``, column-major over the rows, as :func:`matmul_hidden`.
    """
    from jax_finufft import nufft1, options

    f = b_DF.shape[1]
    a_HF = (kernel_2FH[:f] - 1j * kernel_2FH[f:]).T.astype(jnp.complex64)
    delta, psi_QF = _column_phases(b_DF, cols_C10, col_shape)
    beta = drow_10 @ b_DF
    n_in = col_shape[-1]
    # Row o is mode o - n_rows // 2 of the centred transform (input index likewise).
    phase_F = (row0_10 + cols_C10[0]) @ b_DF + (n_rows // 2) * beta + (n_in // 2) * delta[-1]
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
    return h_CRH + bias_H


def _column_phases(b_DF, cols_C10, col_shape):
    """``(delta, psi_QF)``: per column axis, the phase step ``(F,)`` of one index step, and the
    phases ``(Q, F)`` of every index combination of the axes before the input index."""
    f = b_DF.shape[1]
    strides = np.cumprod((1,) + tuple(col_shape[::-1]))[::-1][1:]
    col0 = cols_C10[0]
    delta = [
        (cols_C10[s] - col0) @ b_DF if n > 1 else jnp.zeros((f,), jnp.float32)
        for s, n in zip(strides, col_shape, strict=True)
    ]
    lead = tuple(col_shape[:-1])
    if lead:
        grid_QK = np.indices(lead).reshape(len(lead), -1).T.astype(np.float32)
        psi_QF = jnp.asarray(grid_QK) @ jnp.stack(delta[:-1])
    else:
        psi_QF = jnp.zeros((1, f), jnp.float32)
    return delta, psi_QF


@functools.cache
def have_finufft() -> bool:
    """Whether the optional ``jax-finufft`` package imports."""
    try:
        import jax_finufft  # noqa: F401
    except ImportError:
        return False
    return True


def use_nufft(
    gen: Generator, plan_: Plan, chunk_size: int | None, mesh: jax.sharding.Mesh | None = None
) -> tuple[bool, ...]:
    """Per separable group, whether :func:`uhn_jax.generator.generate_planned` evaluates its
    first layer with :func:`nufft_hidden` instead of the matmul.

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
    if not (have_finufft() and backend == "cpu"):
        if method == "nufft":
            raise ValueError(
                "generator.separable_method='nufft' needs the jax-finufft package and a CPU "
                f"backend (jax-finufft installed: {have_finufft()}, backend: {backend})"
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
