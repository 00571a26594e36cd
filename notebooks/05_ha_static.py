# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ha et al.'s static hypernetwork: `mode=static`
#
# In *HyperNetworks* (Ha, Dai, Le 2016, section 3.1) a conv kernel is not trained but generated:
# each 16x16-channel block of it comes from a learned embedding of 4 numbers, through one small
# linear generator shared by every block ([docs/static_hypernet.md](../docs/static_hypernet.md)).
# The paper's CNN has a 7x7 conv 16 -> 16 whose 12,544 weights come from a 4,240-parameter
# generator. `configs/mnist_ha_static.py` runs it on MNIST; this notebook loads that config and
# swaps the data for scikit-learn's digits (bundled), then draws the kernels.

# %%
import json
import os
import tempfile
from pathlib import Path

import uhn_jax
from configs import mnist_ha_static
from uhn_jax import plots
from uhn_jax.analysis.figures import show

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


# %% [markdown]
# ## Train: static against direct
#
# Ha's CNN on 8x8 digits: conv 7x7 1 -> 16, pool, conv 7x7 16 -> 16, pool, Linear. In `static`
# mode only the second kernel is generated; its bias and the other layers train directly, as
# every weight does in `direct` mode.

# %%
cfg = mnist_ha_static.get_config()
cfg.data.name = "digits"
cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = 600, 50, 100
if TINY:
    cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = 20, 5, 10
exp = uhn_jax.from_config_dict(cfg)
print(uhn_jax.compare(exp, WORKDIR / "ha_static", seeds=1, progress=False))
static = json.loads((WORKDIR / "ha_static" / "static_seed0" / "results.json").read_text())
print(
    f"generated kernel: {static['num_generator_params']:,} generator params and embeddings, "
    f"{static['num_direct_params']:,} params trained directly"
)

# %% [markdown]
# ## The kernels
#
# `uhn-jax plot --workdir ... --kernels` draws every conv kernel of each run, from its latest
# checkpoint; `plot_workdir` is the same call. Each row block is an input channel and each
# column block an output channel; mid-grey is zero. First the second kernel trained directly,
# then generated: assembled by one low-dimensional generator, whole rows and columns of the
# generated filters share a pattern and a scale.

# %%
written = plots.plot_workdir(WORKDIR / "ha_static", kernels=True)
for png in written:
    print(png.relative_to(WORKDIR))
for png in written:
    if png.name in ("test_accuracy.png", "kernel_layer_001_kernel.png"):
        show(png)
