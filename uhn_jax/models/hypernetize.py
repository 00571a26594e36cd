"""``hypernetize``: any Flax Linen or NNX model with its weights predicted by a UHN generator.

>>> hyper = hypernetize(module, x_example)          # Linen; or hypernetize(nnx_module)
>>> variables = hyper.init(jax.random.key(0))
>>> tx = hyper.optimizer(optax.adam(1e-3), optax.adam(1e-3))
>>> logits = hyper.apply(variables, x)               # generates, merges, runs the module

The layout, descriptors and generation plan are built once (numpy) when the model is
hypernetized; ``init``, ``apply`` and the rest are pure, jit-safe functions of ``variables``:

* ``"generator"``: the generator's trainable params (label ``"generator"``);
* ``"generator_constants"``: its frozen collections, e.g. the Fourier matrices (``"frozen"``);
* ``"direct"``: the base params that are not generated, trained directly (``"direct"``);
* ``"state"``: the base model's non-param state (Linen collections such as ``batch_stats``, or
  the NNX non-``Param`` variables), never touched by the optimiser (``"frozen"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from uhn_jax import config, generator
from uhn_jax.core import descriptors, layouts
from uhn_jax.models import flax_adapter
from uhn_jax.models.flax_adapter import FlaxModel

#: Keys of a HyperModel's variables, and the optimiser label of each.
LABELS = {
    "generator": "generator",
    "generator_constants": "frozen",
    "direct": "direct",
    "state": "frozen",
}


@dataclasses.dataclass(frozen=True, eq=False)
class HyperModel:
    """A Flax model whose selected params a UHN generator predicts; see the module docstring.

    Attributes:
      model: the adapted base model (its ``select`` decides what is generated).
      gen: the generator module.
      desc: the descriptors of the generated leaves.
      plan: the generation plan and its numpy arrays (``generator.plan``).
      chunk_size: scalars generated at once (None: one pass).
    """

    model: FlaxModel
    gen: generator.Generator
    desc: descriptors.ModelDescriptors
    plan: tuple[generator.Plan, dict]
    chunk_size: int | None = None

    def init(self, key: jax.Array) -> dict:
        """Fresh variables: generator params and constants, direct params and state."""
        k_gen, k_base = jax.random.split(key)
        gen_vars = dict(generator.init(self.gen, k_gen))
        base = self.model.init_variables(k_base)
        return {
            "generator": gen_vars.pop("params"),
            "generator_constants": gen_vars,
            "direct": self.model.split(base["params"])[1],
            "state": base["state"],
        }

    def generate_flat(self, variables: Mapping) -> jax.Array:
        """The generated weights ``w[N]`` (float32, layout order of ``desc.layout``)."""
        gen_vars = {"params": variables["generator"], **variables["generator_constants"]}
        structure = self.desc.structure_input if self.gen.structure else None
        plan_, arrays = self.plan
        return generator.generate_planned(
            self.gen, gen_vars, plan_, arrays, structure, chunk_size=self.chunk_size
        )

    def generate(self, variables: Mapping) -> dict:
        """The generated leaves as a nested dict, in their own dtypes."""
        return layouts.unflatten(self.generate_flat(variables), self.desc.layout)

    def params(self, variables: Mapping) -> dict:
        """The full base-model params: generated merged with direct."""
        return self.model.merge(self.generate(variables), variables["direct"])

    def apply(self, variables: Mapping, x: Any, *args, **kwargs):
        """Generates the selected leaves, merges them and runs the module.

        ``args``/``kwargs`` go to the module as in :meth:`FlaxModel.call`: Linen takes
        ``mutable=`` and ``rngs=`` as in ``module.apply`` (then the result is
        ``(outputs, updated collections)``); NNX takes ``train=``, ``rngs=`` and
        ``mutable=True``.
        """
        return self.model.call(self.params(variables), variables["state"], x, *args, **kwargs)

    def target_variables(self, variables: Mapping) -> dict:
        """The full base-model variables, for export: Linen ``{"params": ..., **collections}``
        (ready for ``module.apply``); NNX ``{"params": ..., "state": ...}`` (see
        :meth:`FlaxModel.to_nnx`)."""
        if self.model.framework == "linen":
            return {"params": self.params(variables), **variables["state"]}
        return {"params": self.params(variables), "state": variables["state"]}

    def init_loss(self, variables: Mapping) -> jax.Array:
        """Moment matching (spec §3.1): the mean over generated tensors of the squared
        differences between each tensor's (mean, std) and its init target (by default the
        leaf's own initial statistics). Minimise it briefly before training on a task."""
        w = self.generate_flat(variables)
        seg = jnp.asarray(self.desc.segment_ids)
        n = len(self.desc.grids)
        count = jnp.asarray([g.size for g in self.desc.grids], jnp.float32)
        mean = jax.ops.segment_sum(w, seg, n) / count
        var = jax.ops.segment_sum((w - mean[seg]) ** 2, seg, n) / count
        stats = jnp.stack([mean, jnp.sqrt(var + 1e-12)], axis=1)
        return jnp.mean(jnp.sum((stats - self.desc.targets) ** 2, axis=1))

    def apply_updates(self, variables: Mapping, updates: Mapping) -> dict:
        """``optax.apply_updates`` on the generator and direct params only: the frozen entries
        pass through unchanged, so integer or PRNG-key state (NNX RNG streams, caches) works
        with gradients taken ``allow_int=True``."""
        out = dict(variables)
        for k in ("generator", "direct"):
            out[k] = optax.apply_updates(variables[k], updates[k])
        return out

    def labels(self, variables: Mapping) -> dict:
        """The ``optax.multi_transform`` label of every leaf (see :data:`LABELS`)."""
        return {
            k: jax.tree_util.tree_map(lambda _, v=v: v, variables[k]) for k, v in LABELS.items()
        }

    def optimizer(
        self, generator_tx: optax.GradientTransformation, direct_tx=None
    ) -> optax.GradientTransformation:
        """``optax.multi_transform``: ``generator_tx`` for the generator, ``direct_tx`` (default
        ``generator_tx``) for the direct params, and zero updates for the frozen rest."""
        transforms = {
            "generator": generator_tx,
            "direct": generator_tx if direct_tx is None else direct_tx,
            "frozen": optax.set_to_zero(),
        }
        return optax.multi_transform(transforms, self.labels)


def hypernetize(
    module: Any,
    example_input: Any = None,
    *,
    variables: Mapping | None = None,
    select: flax_adapter.Select | None = None,
    generator_config: config.GeneratorConfig | None = None,
    key: jax.Array | None = None,
    **adapter_kwargs,
) -> HyperModel:
    """A UHN that generates the selected params of a Flax model.

    Args:
      module: a Linen module (with ``example_input`` or ``variables``), an NNX module, or the
        ``(graphdef, state, ...)`` of one.
      example_input: Linen: an example input (a tuple is several positional arguments).
      variables: Linen: the module's variables (their values set the init targets).
      select: predicate on a params leaf's path (tuple of strings); default every leaf.
      generator_config: the generator's settings (default ``config.GeneratorConfig()``).
        ``chunk_size`` 0 generates in one pass; ``chain_depth`` must be 0.
      key: the Linen init key that sets the init targets (default ``jax.random.key(0)``).
      **adapter_kwargs: more options of :meth:`FlaxModel.from_linen` (``global_fields`` and
        keyword arguments of ``module.init``) or :meth:`FlaxModel.from_nnx` (``state_types``,
        ``global_fields``).

    Raises:
      ValueError: before any compilation, for an undescribable leaf, an empty selection, a
        describer's bad output or an unsupported NNX variable, each naming the leaf.
    """
    cfg = config.GeneratorConfig() if generator_config is None else generator_config
    if hasattr(cfg, "validate"):
        cfg.validate()
    if getattr(cfg, "chain_depth", 0):
        raise ValueError("hypernetize supports generator_config.chain_depth = 0 only")
    if isinstance(module, nnx.Module | tuple):
        model = FlaxModel.from_nnx(module, select, **adapter_kwargs)
    else:
        model = FlaxModel.from_linen(
            module, example_input, variables=variables, select=select, key=key, **adapter_kwargs
        )
    desc = model.build_descriptors()
    structure = desc.structure_ranges() if cfg.structure else None
    gen = generator.from_config(cfg, desc.index_ranges(), structure)
    generator.check(gen, desc)
    plan_, arrays = generator.plan(gen, desc)
    arrays = jax.tree_util.tree_map(np.asarray, arrays)
    return HyperModel(model, gen, desc, (plan_, arrays), cfg.chunk_size or None)
