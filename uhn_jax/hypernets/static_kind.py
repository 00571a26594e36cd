"""The ``static`` kind: Ha et al.'s static hypernetwork in the one training loop.

The kernels of ``hypernet.static_layers`` are generated from learned block embeddings by one
two-layer linear generator shared by every block (:class:`uhn_jax.hypernets.static.
StaticHyperNet`); every other parameter of the base model (biases, the other layers) is
trained directly. Params are ``{"hyper": {generator, embeddings}, "direct": the rest}``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from uhn_jax.hypernets import base
from uhn_jax.hypernets.static import StaticHyperNet


@functools.lru_cache(maxsize=64)
def hypernet(model, hypernet_cfg) -> StaticHyperNet:
    """The static hypernetwork of ``model`` for the config's layers and sizes."""
    n, block = hypernet_cfg.embedding_size, hypernet_cfg.block_size
    return StaticHyperNet.for_model(
        model, hypernet_cfg.static_layers, z_dim=n, hidden=n, in_base=block, out_base=block
    )


def _without(params: dict, names) -> dict:
    """``params`` without the ``kernel`` of each layer path in ``names`` (copies the path)."""
    out = dict(params)
    for name in names:
        *parents, layer = name.split("/")
        node = out
        for p in parents:
            node[p] = dict(node[p])
            node = node[p]
        node[layer] = {k: v for k, v in node[layer].items() if k != "kernel"}
    return out


@dataclasses.dataclass(frozen=True)
class Static(base.Kind):
    """Ha et al.'s static hypernetwork; see the module docstring."""

    name: str = "static"
    config_groups: tuple[str, ...] = ("hypernet",)

    def init(self, setup, key):
        net = hypernet(setup.model, setup.hypernet)
        k_hyper, k_base = jax.random.split(key)
        direct = _without(setup.model.init(k_base), [n for n, _ in net.generated])
        return {"hyper": net.init(k_hyper), "direct": direct}, {}

    def target_params(self, setup, params, constants, cond):
        net = hypernet(setup.model, setup.hypernet)
        return net.target_params(params["hyper"], params["direct"])

    def num_trained(self, params) -> dict[str, int]:
        hyper = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["hyper"]))
        direct = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["direct"]))
        return {"num_generator_params": hyper, "num_direct_params": direct}


base.register(Static())
