"""The ``diverse`` kind: Deutsch et al.'s accurate-and-diverse noise-input hypernetwork.

Every task step draws ``hypernet.noise_batch`` noise vectors, generates one network from each
(:class:`uhn_jax.hypernets.diverse.NoiseGenerator`, gauge-fixed), runs network ``m`` on its own
``train.batch_size / noise_batch`` images, and adds ``hypernet.diversity_weight`` times minus
the Kozachenko–Leonenko entropy estimate of the batch of gauge-fixed weight vectors to the
cross-entropy. Params are the generator's; the constants hold the fixed noise of evaluation: a
reference batch for the batch-norm statistics and the noise of the network the loop evaluates
(``results.json``'s test metric is that one network's). :func:`sample` generates any number of
networks in one jitted call, for the analyses of :mod:`uhn_jax.analysis`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from uhn_jax.hypernets import base
from uhn_jax.hypernets import diverse as D


def _layout(model) -> tuple[D.FilterLayer, ...]:
    if not getattr(model, "gauge_chain", False):
        raise ValueError(
            f"mode=diverse gauge-fixes filter scales, which needs a plain chain of ReLU layers "
            f"(a model with gauge_chain = True, e.g. model.family='ha_cnn'); "
            f"{type(model).__name__} is not one"
        )
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return D.filter_layout(shapes)


@functools.lru_cache(maxsize=32)
def generator(model, hypernet_cfg) -> D.NoiseGenerator:
    """The noise generator for ``model``'s filters and the config's sizes."""
    h = hypernet_cfg
    layout = _layout(model)
    if len(h.filter_hidden) != len(layout):
        raise ValueError(
            f"hypernet.filter_hidden needs one width per target layer ({len(layout)}: "
            f"{[layer.name for layer in layout]}), got {h.filter_hidden}"
        )
    return D.NoiseGenerator(
        layout=layout,
        extractor=tuple(h.extractor_sizes),
        code_size=h.code_size,
        hidden=tuple((w,) * h.filter_depth for w in h.filter_hidden),
        slope=h.leaky_slope,
    )


def noise(key, n: int, size: int) -> jax.Array:
    """``n`` noise vectors ``z ~ U(-1, 1)^size``."""
    return jax.random.uniform(key, (n, size), minval=-1.0, maxval=1.0)


def networks(setup, params, z, reference=None) -> dict:
    """Gauge-fixed params of the networks of noise ``z [M, d]``, stacked on a leading axis.

    Batch-norm statistics come from ``reference [R, d]`` when given (evaluation), else from
    ``z`` itself (training).
    """
    gen = generator(setup.model, setup.hypernet)
    n_ref = 0 if reference is None else reference.shape[0]
    zz = z if reference is None else jnp.concatenate([reference, z])
    filters = [f[n_ref:] for f in gen.apply({"params": params}, zz, n_ref)]
    return jax.vmap(lambda fs: D.gauge_fix(D.to_params(fs, gen.layout)))(filters)


@functools.partial(jax.jit, static_argnums=0)
def _networks_jit(setup, params, constants, z):
    return networks(setup, params, z, constants["reference"])


def sample(setup, params, constants, z) -> jax.Array:
    """Flat gauge-fixed weights ``[M, W]`` of the networks of noise ``z [M, d]`` (evaluation
    batch norm), in one jitted, vmapped call."""
    return jax.vmap(D.flatten)(_networks_jit(setup, params, constants, jnp.asarray(z)))


@dataclasses.dataclass(frozen=True)
class Diverse(base.Kind):
    """Deutsch et al.'s noise-input hypernetwork; see the module docstring."""

    name: str = "diverse"
    config_groups: tuple[str, ...] = ("hypernet",)

    def validate(self, exp) -> None:
        h, b = exp.hypernet, exp.train.batch_size
        if b % h.noise_batch:
            raise ValueError(
                f"train.batch_size ({b}) must be a multiple of hypernet.noise_batch "
                f"({h.noise_batch}): each generated network trains on its own equal share"
            )

    def init(self, setup, key):
        h = setup.hypernet
        gen = generator(setup.model, h)
        k_init, k_ref, k_eval = jax.random.split(key, 3)
        params = gen.init(k_init, noise(k_init, h.noise_batch, h.noise_size))["params"]
        constants = {
            "reference": noise(k_ref, h.reference_batch, h.noise_size),
            "eval_noise": noise(k_eval, 1, h.noise_size),
        }
        return params, constants

    def target_params(self, setup, params, constants, cond):
        nets = networks(setup, params, constants["eval_noise"], constants["reference"])
        return jax.tree.map(lambda a: a[0], nets)

    def population(self, setup, params, constants, key, n: int):
        z = noise(key, n, setup.hypernet.noise_size)
        return _networks_jit(setup, params, constants, z)

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        if not train:
            return super().forward(setup, params, constants, cond, x, train=train, rng=rng)
        h = setup.hypernet
        m = h.noise_batch
        z = noise(jax.random.fold_in(rng, 101), m, h.noise_size)
        nets = networks(setup, params, z)
        xs = x.reshape(m, x.shape[0] // m, *x.shape[1:])
        logits = base.apply_many(setup, nets, xs, cond, train=train, rng=rng)
        return logits.reshape(x.shape[0], *logits.shape[2:]), jax.vmap(D.flatten)(nets)

    def extra_loss(self, setup, params, constants, cond, aux):
        h = setup.hypernet
        entropy = D.kl_entropy(aux, h.noise_size)
        loss = -h.diversity_weight * entropy if h.diversity_weight else jnp.zeros(())
        return loss, {"entropy": entropy}

    def num_trained(self, params) -> dict:
        parts = D.part_counts(params)
        return {"num_generator_params": sum(parts.values()), "generator_parts": parts}


base.register(Diverse())
