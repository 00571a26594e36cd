"""Functional building blocks shared by the base models (no affine parameters anywhere)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from uhn_jax.core import checks


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Non-affine LayerNorm over the last axis."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def masked_layer_norm(x: jax.Array, units: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Non-affine LayerNorm over the last axis's ``units`` only (bool, broadcastable); the
    other entries come out 0. Equals :func:`layer_norm` of ``x[..., units]`` put back in place."""
    m = units.astype(x.dtype)
    count = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    mean = (x * m).sum(-1, keepdims=True) / count
    var = (((x - mean) * m) ** 2).sum(-1, keepdims=True) / count
    return (x - mean) * jax.lax.rsqrt(var + eps) * m


def group_norm(x_BHWC: jax.Array, groups: int, eps: float = 1e-5) -> jax.Array:
    """Non-affine GroupNorm over (H, W, C/groups), as ``F.group_norm`` without weight/bias."""
    b, h, w, c = x_BHWC.shape
    if c % groups:
        raise ValueError(f"GroupNorm: {c} channels are not divisible into {groups} groups")
    x = x_BHWC.reshape(b, h, w, groups, c // groups)
    mean = x.mean(axis=(1, 2, 4), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + eps)).reshape(b, h, w, c)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``rate == 0`` or ``rng is None``."""
    if rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def torch_default_init(key: jax.Array, layers: dict[str, tuple[tuple[int, ...], int]]) -> dict:
    """``{name: {kernel, bias}}`` with both drawn from ``U(+-1/sqrt(fan_in))`` (PyTorch default).

    Args:
      key: PRNG key; layer ``i`` (in ``layers`` order) uses ``fold_in(key, i)``.
      layers: ``{name: (kernel_shape, fan_in)}``; the bias has the kernel's last dimension.
    """
    params = {}
    for i, (name, (shape, fan_in)) in enumerate(layers.items()):
        k_w, k_b = jax.random.split(jax.random.fold_in(key, i))
        bound = 1.0 / math.sqrt(fan_in)
        params[name] = {
            "kernel": jax.random.uniform(k_w, shape, jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_b, (shape[-1],), jnp.float32, -bound, bound),
        }
    return params


def check_images(name: str, x: jax.Array, input_shape: tuple[int, ...]) -> None:
    """Image inputs must be ``(B, *input_shape)``; one channel may be given or left out, so
    ``(B, H, W)`` and ``(B, H, W, 1)`` both fit ``(H, W)`` or ``(H, W, 1)``."""
    h, w, *c = input_shape
    also = [(h, w, 1)] if not c else [(h, w)] if c == [1] else []
    checks.batch_shape(name, x, input_shape, *also)
