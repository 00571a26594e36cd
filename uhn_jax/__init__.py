"""uhn_jax: hypernetworks in JAX/Flax, with the universal hypernetwork (UHN) at the core.

The public API, in pipeline order (each name documented where it is defined):

* core: :mod:`layouts` (``from_params``, ``flatten``, ``unflatten``), :mod:`descriptors`
  (``build_descriptors``);
* generator: :class:`Generator`, :class:`GeneratorConfig`, ``init_generator``, ``generate``;
* data: ``register_dataset`` and ``register_formula`` (open dataset registry);
* models: :mod:`models` (the library's base models), ``register_family``;
  :class:`FlaxModel` and ``hypernetize`` for any Flax Linen or NNX module;
* hypernetwork kinds: :class:`Kind`, ``register_kind``;
* training: ``run`` (one experiment), ``compare`` (direct vs UHN over seeds),
  ``run_multitask``; :class:`Experiment` and ``from_config_dict`` build its config.
"""

from uhn_jax import config, generator, hypernets, models
from uhn_jax.config import Experiment, GeneratorConfig, from_config_dict
from uhn_jax.core import descriptors, layouts
from uhn_jax.core.descriptors import build as build_descriptors
from uhn_jax.core.layouts import Layout, flatten, from_params, unflatten
from uhn_jax.data.formulas import register_formula
from uhn_jax.data.registry import register_dataset
from uhn_jax.generator import Generator, generate
from uhn_jax.generator import init as init_generator
from uhn_jax.hypernets import Kind
from uhn_jax.hypernets import register as register_kind
from uhn_jax.models import FlaxModel, register_family
from uhn_jax.models.hypernetize import HyperModel, hypernetize
from uhn_jax.training.experiments import compare
from uhn_jax.training.multitask import run as run_multitask
from uhn_jax.training.train import run

__all__ = [
    "Experiment",
    "FlaxModel",
    "Generator",
    "GeneratorConfig",
    "HyperModel",
    "Kind",
    "Layout",
    "build_descriptors",
    "compare",
    "config",
    "descriptors",
    "flatten",
    "from_config_dict",
    "from_params",
    "generate",
    "generator",
    "hypernets",
    "hypernetize",
    "init_generator",
    "layouts",
    "models",
    "register_dataset",
    "register_family",
    "register_formula",
    "register_kind",
    "run",
    "run_multitask",
    "unflatten",
]
