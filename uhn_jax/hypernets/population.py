"""A population: ``M`` networks of one base model trained side by side in one compiled step,
each with hyperparameters of its own (what a model zoo is built from, :mod:`uhn_jax.training.zoo`).

Every member's state has a leading member axis ``M``: params, optimiser state, and the per-member
hyperparameters :data:`HPARAMS` (learning rate, weight decay, init scale, seed) as ``(M,)``
arrays. One member's step is an ordinary direct-training step with its own AdamW; the population
runs it for all members through :func:`over_members`, either ``jax.vmap`` (dense models, and any
model off CPU) or ``lax.map`` (convolutions on CPU, where XLA runs a vmapped conv with a kernel
per member as a slow grouped convolution), in ``lanes`` parallel lanes so that the member axis
can be split over a device mesh. A member whose update would make its loss or params NaN/Inf is
frozen at its last finite params (:func:`guarded_update`) and the step it diverged at is kept,
so one exploding learning rate never stops the other members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

#: Per-member hyperparameters, each an ``(M,)`` array of the population state.
HPARAMS = ("lr", "weight_decay", "init_scale", "seed")
#: How the member step runs over the members: ``vmap``, ``map`` (``lax.map``) or ``auto``.
MEMBER_MAPS = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class Population:
    """The static description of a population (hashable: a jit static argument).

    Attributes:
      model: the base model (``init(key)``, ``apply(params, x, train=, rng=)``).
      size: members ``M``.
      warmup_steps: linear warm-up of every member's learning rate (then constant).
      member_map: ``vmap`` or ``map`` (resolved, see :func:`resolve_member_map`).
      lanes: parallel lanes of ``map`` (the mesh's device count; ``size`` is a multiple).
    """

    model: Any
    size: int
    warmup_steps: int = 0
    member_map: str = "vmap"
    lanes: int = 1

    def __post_init__(self):
        if self.size < 1 or self.size % self.lanes:
            raise ValueError(
                f"a population of {self.size} members cannot be split into {self.lanes} lanes"
            )
        if self.member_map not in ("vmap", "map"):
            raise ValueError(f"member_map must be 'vmap' or 'map', got {self.member_map!r}")


def resolve_member_map(member_map: str, family: str) -> str:
    """``auto`` as ``map`` for convolutional families on CPU, ``vmap`` otherwise."""
    if member_map not in MEMBER_MAPS:
        raise ValueError(f"member_map must be one of {MEMBER_MAPS}, got {member_map!r}")
    if member_map != "auto":
        return member_map
    conv = "cnn" in family
    return "map" if conv and jax.default_backend() == "cpu" else "vmap"


def over_members(pop: Population, fn: Callable, *trees):
    """``fn`` applied to each member's slice of ``trees`` (leading axis ``M``), stacked back."""
    if pop.member_map == "vmap":
        return jax.vmap(fn)(*trees)
    lanes = pop.lanes

    def fold(x):
        return x.reshape(lanes, x.shape[0] // lanes, *x.shape[1:])

    def per_lane(*lane_trees):
        return jax.lax.map(lambda args: fn(*args), lane_trees)

    out = jax.vmap(per_lane)(*jax.tree.map(fold, trees))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)


def member_key(seed: jax.Array) -> jax.Array:
    """A member's base PRNG key from its int seed (traceable)."""
    return jax.random.key(seed)


def init_member(model, seed: jax.Array, init_scale: jax.Array):
    """One member's params: the model's own init from ``seed``, every leaf times ``init_scale``."""
    params = model.init(jax.random.fold_in(member_key(seed), 2))
    return jax.tree.map(lambda p: p * init_scale.astype(p.dtype), params)


def optimizer(pop: Population, lr: jax.Array, weight_decay: jax.Array):
    """One member's AdamW: peak ``lr`` (traced, per member) after ``warmup_steps`` of linear
    warm-up, then constant; decoupled ``weight_decay`` (times the learning rate, as PyTorch)."""
    warm = pop.warmup_steps

    def schedule(count):
        if not warm:
            return lr
        return lr * jnp.minimum((count + 1) / (warm + 1), 1.0)

    return optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=weight_decay)


def init(pop: Population, hparams: dict) -> tuple[Any, Any]:
    """``(params, opt_state)`` of every member (leading axis ``M``) from ``hparams``
    (:data:`HPARAMS` arrays of shape ``(M,)``)."""

    def one(h):
        params = init_member(pop.model, h["seed"], h["init_scale"])
        return params, optimizer(pop, h["lr"], h["weight_decay"]).init(params)

    return over_members(pop, one, hparams)


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite (a scalar bool)."""
    leaves = [
        jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def guarded_update(pop: Population, params, opt_state, grads, loss, h: dict, diverged_at, step):
    """One member's AdamW update, kept only while the member is healthy.

    Returns:
      ``(params, opt_state, diverged_at)``: the updated ones, or the old ones when the member
      has diverged before (``diverged_at >= 0``) or does now (its loss, new params or new
      optimiser state are NaN/Inf; ``diverged_at`` becomes ``step``).
    """
    tx = optimizer(pop, h["lr"], h["weight_decay"])
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    healthy = diverged_at < 0
    # The optimiser state too: a huge gradient can overflow Adam's second moment to Inf while
    # the update (m / sqrt(v)) stays finite, and a checkpoint must hold finite values only.
    ok = healthy & jnp.isfinite(loss) & all_finite(new_params) & all_finite(new_opt)

    def pick(new, old):
        return jnp.where(ok, new, old)

    params = jax.tree.map(pick, new_params, params)
    opt_state = jax.tree.map(pick, new_opt, opt_state)
    diverged_at = jnp.where(healthy & ~ok, step, diverged_at)
    return params, opt_state, diverged_at
