"""Hypernetwork kinds: what the one training loop trains, and how it maps to base-model weights.

Every kind implements :class:`uhn_jax.hypernets.base.Kind`; the loop looks a kind up by the
config's ``mode`` (``uhn``, ``direct``, ...). Register your own with :func:`register`.
"""

from uhn_jax.hypernets import (
    adapt_kind,
    conditional_kind,
    continual,
    direct,
    diverse_kind,
    ensemble_kind,
    ewc,
    static_kind,
    uhn,
)
from uhn_jax.hypernets.base import Kind, get, names, register

__all__ = [
    "Kind",
    "adapt_kind",
    "conditional_kind",
    "continual",
    "direct",
    "diverse_kind",
    "ensemble_kind",
    "ewc",
    "get",
    "names",
    "register",
    "static_kind",
    "uhn",
]
