"""Base (target) models: functional networks whose every parameter a UHN can generate.

A base model is a frozen, hashable dataclass with

* ``init(key) -> params``: a params pytree ``{layer_name: {tensor: array}}`` drawn from the
  same (mean, std) targets the UHN initialisation stage matches;
* ``apply(params, x, *, train=False, rng=None) -> outputs``: a pure function;
* ``layers() -> tuple[LayerSpec, ...]`` and ``global_fields() -> dict``: what the descriptors
  need.

Families are looked up by name in an open registry (:mod:`uhn_jax.models.registry`); any Flax
module joins through :class:`uhn_jax.models.flax_adapter.FlaxModel`.
"""

from uhn_jax.models import families  # noqa: F401  (registers the built-in families)
from uhn_jax.models.cnn import CNN
from uhn_jax.models.flax_adapter import FlaxModel
from uhn_jax.models.gnn import GAT, GCN
from uhn_jax.models.kan import KAN
from uhn_jax.models.mlp import MLP
from uhn_jax.models.recursive import RecursiveUHN
from uhn_jax.models.registry import family_names, get_family, register_family
from uhn_jax.models.transformer import Transformer

__all__ = [
    "CNN",
    "FlaxModel",
    "GAT",
    "GCN",
    "KAN",
    "MLP",
    "RecursiveUHN",
    "Transformer",
    "family_names",
    "get_family",
    "register_family",
]
