"""The ``ensemble`` kind: a deep ensemble of directly trained networks in one run.

``hypernet.ensemble_size`` copies of the base model, each from its own initialisation, train
side by side: every step splits the batch into equal shares, one per member (the same images
per network and step as ``mode=diverse`` with ``hypernet.noise_batch`` equal to the ensemble
size), through the model's batched ``apply_many`` when it has one. The members are the baseline
population of :mod:`uhn_jax.analysis.report` (a deep ensemble against generated networks);
``results.json``'s test metric is the first member's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from uhn_jax.hypernets import base


@dataclasses.dataclass(frozen=True)
class Ensemble(base.Kind):
    """A deep ensemble trained in one run; see the module docstring."""

    name: str = "ensemble"
    config_groups: tuple[str, ...] = ("hypernet",)

    def validate(self, exp) -> None:
        k, b = exp.hypernet.ensemble_size, exp.train.batch_size
        if b % k:
            raise ValueError(
                f"train.batch_size ({b}) must be a multiple of hypernet.ensemble_size ({k}): "
                "each member trains on its own equal share of every batch"
            )

    def init(self, setup, key):
        keys = jax.random.split(key, setup.hypernet.ensemble_size)
        return {"members": jax.vmap(setup.model.init)(keys)}, {}

    def target_params(self, setup, params, constants, cond):
        return jax.tree.map(lambda a: a[0], params["members"])

    def population(self, setup, params, constants, key, n: int):
        del key, n
        return params["members"]

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        if not train:
            return super().forward(setup, params, constants, cond, x, train=train, rng=rng)
        k = setup.hypernet.ensemble_size
        xs = x.reshape(k, x.shape[0] // k, *x.shape[1:])
        out = base.apply_many(setup, params["members"], xs, cond, train=train, rng=rng)
        return out.reshape(x.shape[0], *out.shape[2:]), None

    def num_trained(self, params) -> dict[str, int]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        return {"num_direct_params": count}


base.register(Ensemble())
