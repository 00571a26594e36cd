# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bring your own model: `hypernetize` a Flax module and train it
#
# `uhn_jax.hypernetize` takes a Flax Linen (or NNX) module the library has never seen and
# returns the same model with its weights predicted by one UHN generator. The descriptors come
# from each parameter's path, shape and owning module (Conv, Dense, LayerNorm, ...), so there
# is nothing to declare. This notebook writes a small CNN, hypernetizes it, looks inside, then
# trains it with the library's loop on scikit-learn's digits against the same module trained
# directly ([docs/hypernetize.md](../docs/hypernetize.md)).

# %%
import os
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

import uhn_jax
from uhn_jax.training import experiments, tasks

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)

# %% [markdown]
# ## Your model
#
# Any Linen module; this one reads the 8x8 digits.


# %%
class Net(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, 8, 8)
        h = nn.leaky_relu(nn.Conv(8, (3, 3))(x[..., None]), 0.1)
        h = nn.Dense(32)(h.reshape(h.shape[0], -1))
        h = nn.LayerNorm()(nn.leaky_relu(h, 0.1))
        return nn.Dense(10)(h)


x_example = jnp.zeros((1, 8, 8))

# %% [markdown]
# ## Hypernetize it
#
# `select` picks the leaves the generator predicts; here every leaf but the LayerNorm's, which
# is trained directly beside the generator.

# %%
gen_cfg = uhn_jax.GeneratorConfig(hidden=16 if TINY else 32, n_freqs=16 if TINY else 64)
hyper = uhn_jax.hypernetize(
    Net(), x_example, select=lambda path: "LayerNorm" not in path[0], generator_config=gen_cfg
)
for leaf in hyper.desc.layout.leaves:
    print(f"generated  {'/'.join(leaf.keys):<18} {leaf.shape}")
variables = hyper.init(jax.random.key(0))
for path, leaf in jax.tree_util.tree_leaves_with_path(variables["direct"]):
    print(f"direct     {'/'.join(k.key for k in path):<18} {leaf.shape}")
count = sum(x.size for x in jax.tree.leaves(variables["generator"]))
print(f"{hyper.desc.num_params:,} generated weights from {count:,} generator params")

# %% [markdown]
# `init` and `apply` are pure and jit-safe: generate, merge with the direct leaves, run the
# module. They drop into any JAX training loop (`hyper.optimizer` and `hyper.init_loss` are the
# other two pieces; see the docs). Here we use the library's loop instead.

# %%
logits = jax.jit(hyper.apply)(variables, jnp.zeros((4, 8, 8)))
print("logits", logits.shape)

# %% [markdown]
# ## Train it with the library's loop
#
# The loop trains base models from the model-family registry, so register `hyper.model` (the
# adapted module, with its `select`) as a family and name it in a config. The loop builds its
# generator from the config's `generator` group, set here to the same sizes. `compare` trains
# the module directly and as a UHN, with checkpoints, logs and results in each run's workdir.

# %%
uhn_jax.register_family(
    "notebook_net", lambda cfg, dataset, dataset_type: hyper.model, overwrite=True
)
cfg = uhn_jax.config.default_config_dict()
cfg.data.name, cfg.model.family = "digits", "notebook_net"
cfg.generator.hidden, cfg.generator.n_freqs = gen_cfg.hidden, gen_cfg.n_freqs
cfg.train.batch_size, cfg.train.lr, cfg.train.init_lr = 128, 3e-3, 1e-3
cfg.train.steps, cfg.train.init_steps = (20, 5) if TINY else (400, 50)
cfg.train.log_every = 5 if TINY else 50
print(uhn_jax.compare(uhn_jax.from_config_dict(cfg), WORKDIR / "byom", seeds=1, progress=False))

# %% [markdown]
# ## The trained weights, in your own module
#
# `load_model_params` reads a run's latest checkpoint and, for the UHN, generates the weights
# once. They are ordinary Flax params: `Net().apply` runs them with no generator in sight (this
# is what `uhn-jax export` writes).

# %%
exp, params = experiments.load_model_params(WORKDIR / "byom" / "uhn_seed0")
dataset = tasks.load_dataset(exp)
logits = Net().apply({"params": params}, jnp.asarray(dataset.x_test))
accuracy = float((logits.argmax(-1) == jnp.asarray(dataset.y_test)).mean())
print(f"Net with generated weights: test accuracy {accuracy:.4f}")
