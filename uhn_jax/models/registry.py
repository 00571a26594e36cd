"""The open registry of model families: config ``model.family`` -> a base model.

A family's builder takes the validated ``ModelConfig``, the loaded dataset and the dataset's
descriptor value, and returns a base model: an object with ``init(key) -> params`` and
``apply(params, x, *, train=False, rng=None)`` that describes itself with ``layers()`` and
``global_fields()`` (the library's models, and :class:`uhn_jax.models.FlaxModel` for any Flax
module). Register your own family from your code (or from the config file that names it)::

    models.register_family("mine", lambda cfg, ds, dataset_type: FlaxModel.from_linen(...))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Builder = Callable[[Any, Any, int], Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered model family."""

    name: str
    build: Builder
    #: Optional ``validate(model_cfg)`` raising ``ValueError`` naming a bad field.
    validate: Callable[[Any], None] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    build: Builder,
    *,
    validate: Callable[[Any], None] | None = None,
    overwrite: bool = False,
) -> Family:
    """Registers ``build(model_cfg, dataset, dataset_type) -> model`` as family ``name``.

    Raises:
      ValueError: if ``name`` is taken (unless ``overwrite``) or empty.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a model family needs a non-empty name, got {name!r}")
    if name in _FAMILIES and not overwrite:
        raise ValueError(f"model family {name!r} is already registered; pass overwrite=True")
    family = Family(name, build, validate)
    _FAMILIES[name] = family
    return family


def get_family(name: str) -> Family:
    """The family registered as ``name``.

    Raises:
      ValueError: naming the unknown family and the registered ones.
    """
    if name not in _FAMILIES:
        raise ValueError(
            f"model.family must be one of {family_names()}, got {name!r} (register your own "
            "with uhn_jax.models.register_family)"
        )
    return _FAMILIES[name]


def family_names() -> tuple[str, ...]:
    """Names of the registered families, in registration order."""
    return tuple(_FAMILIES)


def build(model_cfg, dataset, dataset_type: int):
    """The base model of ``model_cfg`` for ``dataset``."""
    return get_family(model_cfg.family).build(model_cfg, dataset, dataset_type)
