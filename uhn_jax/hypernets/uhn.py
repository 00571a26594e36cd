"""The ``uhn`` kind: one generator predicts every generated scalar from its descriptors.

Params are ``{"generator": ...}``, plus ``"direct"`` when the base model generates only some of
its leaves (a :class:`uhn_jax.models.FlaxModel` with a ``select``): those are trained as they
are. Constants are the generator's frozen normalisation and Fourier matrices.

Before task training, ``train.init_steps`` steps of moment matching (spec §3.1) pull each
generated tensor's mean and std to its target; a recursive run has one sub-stage per chain
element.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax import generator
from uhn_jax.core import layouts
from uhn_jax.hypernets import base, recursion


def split_params(model, params) -> tuple[Any, dict]:
    """``(generated, rest)`` leaves of a base model's params; models without ``split``
    generate every leaf."""
    return model.split(params) if hasattr(model, "split") else (params, {})


@functools.lru_cache(maxsize=64)
def has_direct_leaves(model) -> bool:
    """Whether ``model`` trains some of its leaves directly (they are not generated)."""
    return bool(split_params(model, jax.eval_shape(model.init, jax.random.key(0)))[1])


@dataclasses.dataclass(frozen=True)
class UHN(base.Kind):
    """The universal hypernetwork (spec §2)."""

    name: str = "uhn"
    config_groups: tuple[str, ...] = ("generator",)

    def init(self, setup, key):
        variables = generator.init(setup.gen, key)
        params = {"generator": variables["params"]}
        _, rest = split_params(setup.model, setup.model.init(jax.random.fold_in(key, 1)))
        if rest:
            params["direct"] = rest
        return params, variables["constants"]

    def target_params(self, setup, params, constants, cond):
        w_N = self.generated_flat(setup, params, constants, cond)
        if setup.chain:
            w_N = recursion.weights(setup, w_N, cond, setup.chain.depth)
        generated = layouts.unflatten(w_N, setup.layout)
        if "direct" in params:
            return setup.model.merge(generated, params["direct"])
        return generated

    def generated_flat(self, setup, params, constants, cond) -> jax.Array:
        """H0's flat output: the base model's generated weights, or H1's in a recursive run."""
        cond = recursion.with_inputs(setup, constants, cond)
        w_N = generator.generate_planned(
            setup.gen,
            {"params": params["generator"], "constants": constants},
            setup.plan,
            cond.plan,
            cond.structure if setup.gen.structure else None,
            chunk_size=setup.chunk_size,
            mesh=setup.mesh,
            remat=setup.remat,
            layer_mask=cond.layer_mask,
        )
        if cond.weight_mask is not None:
            w_N = w_N * cond.weight_mask  # a model-set member's weights; zeros elsewhere
        return w_N

    def init_steps(self, train_cfg) -> int:
        return train_cfg.init_steps if train_cfg.init_lr > 0 else 0

    def init_loss(self, setup, params, constants, cond, sub_stage: int = 0):
        """Moment matching: mean over tensors and {mean, std} of (stat - target)^2."""
        mean, std, targets = generated_stats(setup, params, constants, cond, sub_stage)
        err = (jnp.stack([mean, std], axis=1) - targets) ** 2
        if cond.tensor_present is None:
            loss = jnp.mean(err)
        else:  # tensors a member does not have are skipped, as empty tensors in the reference
            loss = (err * cond.tensor_present[:, None]).sum() / (2 * cond.tensor_present.sum())
        return loss, {"init_loss": loss}

    def task_lr(self, setup) -> float:
        scale = recursion.lr_scale(setup.chain.depth) if setup.chain else 1.0
        return setup.train.lr * scale

    def lr_groups(self, setup) -> dict[str, float] | None:
        """The generator at the UHN's rate and, when the model keeps some leaves as they are
        (a ``FlaxModel`` with a ``select``), those at the direct rate."""
        if not has_direct_leaves(setup.model):
            return None
        t = setup.train
        return {"generator": self.task_lr(setup), "direct": t.direct_lr or t.lr}

    def num_trained(self, params) -> dict[str, int]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["generator"]))
        return {"num_generator_params": count}


def tensor_stats(w_N: jax.Array, segment_ids: jax.Array, num_tensors: int, mask_N=None):
    """Per-tensor mean and population std of a flat vector, ``(T,)`` each; with ``mask_N``,
    over the masked scalars only."""
    m = jnp.ones_like(w_N) if mask_N is None else mask_N
    count = jnp.maximum(jax.ops.segment_sum(m, segment_ids, num_tensors), 1.0)
    mean = jax.ops.segment_sum(w_N * m, segment_ids, num_tensors) / count
    sq = m * (w_N - mean[segment_ids]) ** 2
    var = jax.ops.segment_sum(sq, segment_ids, num_tensors) / count
    # The epsilon keeps the gradient finite for tensors whose target std is 0.
    return mean, jnp.sqrt(var + 1e-12)


def generated_stats(setup, params, constants, cond, sub_stage: int = 0):
    """Per-tensor ``(mean, std, targets)`` of the weights the initialisation stage matches.

    In a recursive run, sub-stage d looks at chain element d's generated weights: H_{d+1}'s
    for d < K, f's for d = K. ``targets`` is ``(T, 2)`` (mean, std) per tensor.
    """
    kind = UHN()
    segment_ids, targets = cond.segment_ids, cond.targets
    cond = recursion.with_inputs(setup, constants, cond)
    w_N = kind.generated_flat(setup, params, constants, cond)
    if setup.chain and sub_stage < setup.chain.depth:
        w_N = recursion.weights(setup, w_N, cond, sub_stage)
        segment_ids, targets = cond.chain["segment_ids"], cond.chain["targets"]
    elif setup.chain:
        w_N = recursion.weights(setup, w_N, cond, setup.chain.depth)
    mean, std = tensor_stats(w_N, segment_ids, targets.shape[0], cond.weight_mask)
    return mean, std, targets


base.register(UHN())
