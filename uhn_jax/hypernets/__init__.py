"""Hypernetwork kinds: what the one training loop trains, and how it maps to base-model weights.

Every kind implements :class:`uhn_jax.hypernets.base.Kind`; the loop looks a kind up by the
config's ``mode`` (``uhn``, ``direct``, ...). Register your own with :func:`register`.
"""

from uhn_jax.hypernets import (
    conditional_kind,
    direct,
    diverse_kind,
    ensemble_kind,
    static_kind,
    uhn,
)
from uhn_jax.hypernets.base import Kind, get, names, register

__all__ = [
    "Kind",
    "conditional_kind",
    "direct",
    "diverse_kind",
    "ensemble_kind",
    "get",
    "names",
    "register",
    "static_kind",
    "uhn",
]
