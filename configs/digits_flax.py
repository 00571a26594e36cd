"""A user's own Flax model (Linen or NNX) trained by the library on digits: UHN against direct.

The module below stands for any model of yours: a grouped Conv, a positional Embed, a nested
block with LayerNorm and Dense. Nothing in uhn_jax knows it; the lines under "user code" adapt
it (`FlaxModel`), register it as a model family and name it in the config.

Commands (``:nnx`` for the NNX version; about 2 minutes each on 2 CPU cores):

  uhn-jax compare --config configs/digits_flax.py --workdir runs/flax --seeds 1
  uhn-jax compare --config configs/digits_flax.py:nnx --workdir runs/flax_nnx --seeds 1

Expected: UHN within 2 pp of direct training of the same module (docs/hypernetize.md).
"""

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

import uhn_jax


class Block(nn.Module):
    """Residual LayerNorm -> Dense, nested inside Net."""

    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(x.shape[-1])(nn.LayerNorm()(nn.leaky_relu(x, 0.1)))


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, 8, 8) normalised digits
        h = nn.Conv(16, (3, 3), strides=2)(x[..., None])
        h = nn.Conv(16, (3, 3), feature_group_count=2)(nn.leaky_relu(h, 0.1))
        h = h.reshape(h.shape[0], 16, 16) + nn.Embed(16, 16)(jnp.arange(16))
        h = nn.Dense(32)(nn.leaky_relu(h.reshape(h.shape[0], -1), 0.1))
        return nn.Dense(10)(nn.leaky_relu(Block()(h), 0.1))


class NnxBlock(nnx.Module):
    def __init__(self, width, rngs):
        self.norm, self.dense = nnx.LayerNorm(width, rngs=rngs), nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x):
        return x + self.dense(self.norm(nnx.leaky_relu(x, 0.1)))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), strides=2, rngs=rngs)
        self.conv2 = nnx.Conv(16, 16, (3, 3), feature_group_count=2, rngs=rngs)
        self.pos = nnx.Embed(16, 16, rngs=rngs)
        self.dense, self.block = nnx.Linear(256, 32, rngs=rngs), NnxBlock(32, rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        h = self.conv2(nnx.leaky_relu(self.conv1(x[..., None]), 0.1))
        h = h.reshape(h.shape[0], 16, 16) + self.pos(jnp.arange(16))
        h = self.dense(nnx.leaky_relu(h.reshape(h.shape[0], -1), 0.1))
        return self.head(nnx.leaky_relu(self.block(h), 0.1))


def get_config(framework: str = "linen"):
    # ---- user code: adapt the module, register it, name it in a config ----
    if framework == "nnx":
        model = uhn_jax.FlaxModel.from_nnx(NnxNet(nnx.Rngs(0)))
    else:
        model = uhn_jax.FlaxModel.from_linen(Net(), jnp.zeros((1, 8, 8)))
    family = f"digits_flax_{framework}"
    uhn_jax.register_family(family, lambda cfg, dataset, dataset_type: model, overwrite=True)
    config = uhn_jax.config.default_config_dict()
    config.data.name, config.model.family = "digits", family
    config.generator.n_freqs = 256
    config.train.batch_size, config.train.steps, config.train.lr = 128, 400, 3e-3
    config.train.init_steps, config.train.init_lr = 50, 1e-3
    return config
