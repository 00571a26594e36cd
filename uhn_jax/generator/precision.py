"""Mixed-precision matmuls of the generator's first layer: dtype choice, custom VJP, Dense hook."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from uhn_jax.core import checks
from uhn_jax.generator import settings


@functools.cache
def cpu_has_native_bf16() -> bool:
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
    (:func:`cpu_has_native_bf16`), float32 elsewhere (other CPUs emulate bf16 GEMMs and run
    them slower than float32).
    """
    checks.choice("matmul_dtype", name, settings.MATMUL_DTYPES)
    if name == "auto":
        fast = jax.default_backend() != "cpu" or cpu_has_native_bf16()
        name = "bfloat16" if fast else "float32"
    return jnp.dtype(name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_matmul(a, b, dtype):
    """``a @ b`` with operands rounded to ``dtype`` and float32 accumulation and output; the
    backward matmuls round their operands the same way (plain autodiff would run them in
    float32, because the cotangent is float32)."""
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(a, b, dtype):
    return mixed_matmul(a, b, dtype), (a.astype(dtype), b.astype(dtype))


def _mixed_matmul_bwd(dtype, res, ct):
    a, b = res
    ct = ct.astype(dtype)
    da = jnp.matmul(ct, b.T, preferred_element_type=jnp.float32)
    a2, ct2 = a.reshape(-1, a.shape[-1]), ct.reshape(-1, ct.shape[-1])
    db = jnp.matmul(a2.T, ct2, preferred_element_type=jnp.float32)
    return da, db


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def dot_general(dtype: jnp.dtype):
    """A ``dot_general`` for ``nn.Dense`` whose operands are rounded to ``dtype`` (``None``,
    Flax's default ``lax.dot_general``, for float32)."""
    if dtype == jnp.float32:
        return None

    def rounded_dot_general(lhs, rhs, dimension_numbers, precision=None, **_):
        assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
        return mixed_matmul(lhs, rhs, dtype)

    return rounded_dot_general
