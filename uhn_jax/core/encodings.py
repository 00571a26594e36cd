"""Encodings of normalised descriptors: Gaussian Fourier features, positional, raw (spec §1.6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

ENCODINGS = ("fourier", "positional", "raw")


def gaussian_matrix(key: jax.Array, in_dim: int, n_freqs: int, sigma: float) -> jax.Array:
    """The frozen projection ``B ~ N(0, 1) * sigma`` of shape ``(in_dim, n_freqs)``."""
    return jax.random.normal(key, (in_dim, n_freqs), jnp.float32) * sigma


def fourier(x_ND: jax.Array, b_DF: jax.Array) -> jax.Array:
    """Gaussian Fourier features ``[cos(x B), sin(x B)]`` (no 2*pi factor): ``(N, 2F)``."""
    proj_NF = x_ND @ b_DF
    return jnp.concatenate([jnp.cos(proj_NF), jnp.sin(proj_NF)], axis=-1)


def positional(x_ND: jax.Array, n: int = 32, alpha: float = 1.0, sigma: float = 100.0) -> jax.Array:
    """Positional features ``[sin, cos]`` of ``x_d * alpha * sigma**(j/n)``: ``(N, 2 n D)``."""
    freqs_J = alpha * sigma ** (jnp.arange(n, dtype=jnp.float32) / n)
    proj = (x_ND[..., :, None] * freqs_J).reshape(*x_ND.shape[:-1], -1)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def output_dim(encoding: str, in_dim: int, n_freqs: int, n_positional: int = 32) -> int:
    """Width of an encoding's output."""
    if encoding == "fourier":
        return 2 * n_freqs
    if encoding == "positional":
        return 2 * n_positional * in_dim
    if encoding == "raw":
        return in_dim
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
