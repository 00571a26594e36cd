"""The ``conditional`` kind: the classic conditional hypernetwork over any base model.

A condition vector drives one weight generator per target tensor (the base model's layout
leaves): ``c -> MLP -> LayerNorm -> Linear -> the tensor's values``, the components of
:mod:`uhn_jax.hypernets.conditional_layers`. Each generator starts with hyperfan-in statistics
(Chang et al. 2020): its tensor's values have the init target's mean and std (the targets the
UHN's moment matching uses), so no initialisation stage is needed.

``hypernet.conditioning`` chooses the condition:

* ``onehot`` / ``random``: one fixed vector for the run (a task one-hot, or a random draw from
  the seed), kept in the frozen constants; the target's weights are generated once per step;
* ``input``: data-adaptive weights. A linear encoder of each flattened example gives its
  condition, and every example runs with its own generated network (:meth:`per_example`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import descriptors, layouts
from uhn_jax.hypernets import base
from uhn_jax.hypernets import conditional_layers as layers


@functools.lru_cache(maxsize=64)
def _targets(model, layout) -> np.ndarray:
    """``(T, 2)`` init (mean, std) of the generated tensors, from the model's descriptors."""
    return descriptors.build(layout, model.layers(), model.global_fields()).targets


def _generators(setup) -> list[layers.WeightGenerator]:
    """One weight generator per layout leaf, its head scaled to the leaf's target std."""
    h = setup.hypernet
    width = h.hidden_sizes[-1]
    return [
        layers.WeightGenerator(
            input_size=h.conditioning_size,
            hidden_sizes=tuple(h.hidden_sizes),
            out_size=leaf.size,
            head_std=float(std) / math.sqrt(width),
            activation=h.activation,
        )
        for leaf, (_, std) in zip(
            setup.layout.leaves, _targets(setup.model, setup.layout), strict=True
        )
    ]


def _input_size(setup) -> int:
    shape = getattr(setup.model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "hypernet.conditioning='input' encodes each example, so the base model must declare "
            f"its input_shape; {type(setup.model).__name__} does not"
        )
    return int(np.prod(shape))


@dataclasses.dataclass(frozen=True)
class Conditional(base.Kind):
    """Condition in, whole tensors out; see the module docstring."""

    name: str = "conditional"
    config_groups: tuple[str, ...] = ("hypernet",)

    def validate(self, exp) -> None:
        layers.check_hidden_sizes("hypernet.hidden_sizes", tuple(exp.hypernet.hidden_sizes))

    def per_example(self, setup) -> bool:
        return setup.hypernet.conditioning == "input"

    def init(self, setup, key):
        h = setup.hypernet
        c = jnp.zeros((h.conditioning_size,))
        k_gen, k_cond = jax.random.split(key)
        gens = _generators(setup)
        keys = jax.random.split(k_gen, len(gens))
        params = {"generators": [g.init(k, c)["params"] for g, k in zip(gens, keys, strict=True)]}
        constants = {"offsets": jnp.asarray(_targets(setup.model, setup.layout)[:, 0])}
        if h.conditioning == "onehot":
            constants["condition"] = jnp.zeros((h.conditioning_size,)).at[0].set(1.0)
        elif h.conditioning == "random":
            constants["condition"] = jax.random.normal(k_cond, (h.conditioning_size,))
        else:
            d = _input_size(setup)
            kernel = jax.random.normal(k_cond, (d, h.conditioning_size)) / math.sqrt(d)
            params["encoder"] = {"kernel": kernel, "bias": jnp.zeros((h.conditioning_size,))}
        return params, constants

    def generate(self, setup, params, constants, c) -> jax.Array:
        """The flat weights ``w[N]`` of the target for one condition ``c``."""
        gens = _generators(setup)
        pieces = [
            g.apply({"params": p}, c) + constants["offsets"][i]
            for i, (g, p) in enumerate(zip(gens, params["generators"], strict=True))
        ]
        return jnp.concatenate(pieces)

    def target_params(self, setup, params, constants, cond):
        if self.per_example(setup):
            raise ValueError(
                "hypernet.conditioning='input' gives every example its own weights; there are "
                "no single target params to export"
            )
        w_N = self.generate(setup, params, constants, constants["condition"])
        return layouts.unflatten(w_N, setup.layout)

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        if not self.per_example(setup):
            return super().forward(setup, params, constants, cond, x, train=train, rng=rng)
        enc = params["encoder"]
        c_B = x.reshape(x.shape[0], -1) @ enc["kernel"] + enc["bias"]

        def one(c, xi):
            p = layouts.unflatten(self.generate(setup, params, constants, c), setup.layout)
            return base.apply_base(setup, p, xi[None], cond, train=train, rng=rng)[0]

        return jax.vmap(one)(c_B, x), None

    def num_trained(self, params) -> dict[str, int]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        return {"num_generator_params": count}


base.register(Conditional())
