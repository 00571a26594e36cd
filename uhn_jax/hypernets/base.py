"""The interface every hypernetwork kind implements, and the open registry of kinds.

A kind answers these questions for the training loop (``uhn_jax.training``):

* what it trains: :meth:`Kind.init` returns the trainable ``params`` and the frozen
  ``constants`` of a run;
* how those map to the target's weights: :meth:`Kind.target_params` is a pure, jit-safe map
  from ``(params, constants, condition)`` to the base model's params pytree, where the
  condition is the run's descriptor arrays (``uhn_jax.training.setup.DescArrays``);
  :meth:`Kind.forward` runs the base model with them (a data-adaptive kind, whose weights
  depend on each example, overrides it and :meth:`Kind.per_example`);
* what its loss adds: :meth:`Kind.extra_loss` (a regulariser, 0 by default) is added to the
  task loss of every task step;
* how it is optimised: one AdamW at :meth:`Kind.task_lr`, or one per parameter group
  (:meth:`Kind.lr_groups`) through ``optax.multi_transform``;
* whether it has a stage before task training: :meth:`Kind.init_steps` steps of
  :meth:`Kind.init_loss` (the UHN's moment matching), each sub-stage with a fresh optimiser;
* what it writes when a run ends, besides the checkpoints: :meth:`Kind.finish` (files of its
  own, and what ``results.json`` reports about them).

A kind is a frozen dataclass (hashable: it is part of the jit-static run setup) and holds no
arrays. ``setup`` below is the run's static ``uhn_jax.training.setup.Setup``.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp


class Kind(abc.ABC):
    """A hypernetwork kind; see the module docstring."""

    #: The config's ``mode`` value that selects this kind.
    name: str = ""
    #: The kind-specific config groups it reads (``generator``, ``hypernet``); a workdir's
    #: saved config is compared on these and the shared groups only.
    config_groups: tuple[str, ...] = ()

    def validate(self, exp) -> None:
        """Checks across config groups this kind needs (an ``Experiment``), raising a
        ``ValueError`` that names the field; called when a config is built. Nothing by default."""
        del exp

    @abc.abstractmethod
    def init(self, setup, key) -> tuple[Any, Any]:
        """``(params, constants)`` of a fresh run: what the optimiser trains, what stays frozen."""

    @abc.abstractmethod
    def target_params(self, setup, params, constants, cond) -> Any:
        """The base model's params pytree for the condition ``cond``; pure and jit-safe."""

    def per_example(self, setup) -> bool:
        """Whether the target's weights depend on each example (data-adaptive kinds):
        evaluation then runs :meth:`forward` per batch instead of generating them once."""
        return False

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        """``(outputs, aux)``: the base model run on ``x`` with the weights this kind gives it.

        The default generates the target's params once (:meth:`target_params`) and applies the
        base model (as the step's member in a model-set run); ``aux`` is those params. A kind
        whose weights depend on the input overrides this (and :meth:`per_example`).
        """
        model_params = self.target_params(setup, params, constants, cond)
        return apply_base(setup, model_params, x, cond, train=train, rng=rng), model_params

    def init_steps(self, train_cfg) -> int:
        """Steps of the initialisation stage that precedes task training (none by default)."""
        return 0

    def init_loss(self, setup, params, constants, cond, sub_stage: int = 0):
        """``(loss, metrics)`` of initialisation sub-stage ``sub_stage``."""
        raise NotImplementedError(f"kind {self.name!r} has no initialisation stage")

    def extra_loss(self, setup, params, constants, cond, aux):
        """``(loss, metrics)`` added to every task step's loss (``aux`` is :meth:`forward`'s,
        by default the target's params); nothing by default."""
        return jnp.zeros(()), {}

    def task_lr(self, setup) -> float:
        """Peak learning rate of the task stage."""
        return setup.train.lr

    def lr_groups(self, setup) -> dict[str, float] | None:
        """Peak task learning rates by top-level key of ``params``, each group trained through
        its own ``optax.multi_transform`` branch; ``None`` = one optimiser at :meth:`task_lr`."""
        return None

    def population(self, setup, params, constants, key, n: int):
        """The params of the networks this run stands for, stacked on a leading axis: ``n``
        samples of a generative kind, the members of an ensemble; by default the one target
        network (``n`` and ``key`` unused). What :mod:`uhn_jax.analysis.report` measures."""
        del key, n
        one = self.target_params(setup, params, constants, None)
        return jax.tree.map(lambda a: a[None], one)

    def num_trained(self, params) -> dict[str, int]:
        """Parameter counts for ``results.json`` (e.g. ``num_generator_params``)."""
        return {}

    def finish(self, setup, params, constants, workdir) -> dict[str, Any]:
        """Called once when a single-model run ends, before ``results.json`` is written:
        writes the files of the run's own format into ``workdir`` (e.g. an adapter) and
        returns what ``results.json`` reports about them; nothing by default."""
        del setup, params, constants, workdir
        return {}


def apply_base(setup, model_params, x, cond, *, train=False, rng=None):
    """``setup.model.apply``, run as the step's member in a model-set run."""
    kwargs = {} if cond.model_masks is None else {"masks": cond.model_masks}
    return setup.model.apply(model_params, x, train=train, rng=rng, **kwargs)


_KINDS: dict[str, Kind] = {}


def register(kind: Kind, *, overwrite: bool = False) -> Kind:
    """Adds ``kind`` to the registry under ``kind.name`` (the config's ``mode``).

    Raises:
      ValueError: if the name is empty or taken (unless ``overwrite``).
    """
    if not isinstance(kind, Kind):
        raise TypeError(f"register expects a hypernets.Kind instance, got {type(kind).__name__}")
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name; set the class attribute `name`")
    if kind.name in _KINDS and not overwrite:
        raise ValueError(f"a hypernetwork kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    """The kind registered as ``name``.

    Raises:
      ValueError: naming the unknown kind and the known ones.
    """
    if name not in _KINDS:
        raise ValueError(f"mode must be one of {names()}, got {name!r}")
    return _KINDS[name]


def names() -> tuple[str, ...]:
    """The registered kinds' names."""
    return tuple(_KINDS)


def apply_many(setup, model_params, x, cond, *, train=False, rng=None):
    """``M`` networks (params stacked on a leading axis), network ``m`` on its own inputs
    ``x[m]``: the model's ``apply_many`` when it has one, else ``vmap`` (``lax.map`` on CPU,
    where XLA runs a conv with a kernel per network as a slow grouped convolution)."""
    many = getattr(setup.model, "apply_many", None)
    if many is not None and cond.model_masks is None:
        return many(model_params, x)

    def one(p, xi):
        return apply_base(setup, p, xi, cond, train=train, rng=rng)

    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda a: one(*a), (model_params, x))
    return jax.vmap(one)(model_params, x)
