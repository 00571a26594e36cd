# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The conditional hypernetwork (Ha et al. 2016): `mode=conditional`
#
# A condition vector drives one small weight-generator MLP per tensor of the base model; the
# base model then runs with the generated weights ([docs/conditional.md](../docs/conditional.md)).
# With a fixed one-hot condition there is one generated network; with `conditioning="input"`
# every example is encoded into its own condition and gets its own network (data-adaptive
# weights). Both train through the same loop as the UHN, here on scikit-learn's digits with the
# demo's MLP 64-64 (`configs/digits_conditional.py`).

# %%
import os
import tempfile
from pathlib import Path

import numpy as np

import uhn_jax
from configs import digits_conditional
from uhn_jax import plots
from uhn_jax.analysis import figures
from uhn_jax.analysis.figures import show
from uhn_jax.training import experiments

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


def load(conditioning):
    """``configs/digits_conditional.py:<conditioning>``, with a test accuracy every 50 steps."""
    cfg = digits_conditional.get_config(conditioning)
    cfg.train.eval_every = 50
    if TINY:
        cfg.hypernet.hidden_sizes = (8,)
        cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = 20, 5, 10
    return uhn_jax.from_config_dict(cfg)


# %% [markdown]
# ## One condition: the MLP against the same MLP trained directly
#
# `compare` trains `mode=direct` and the config's mode with the loop of `uhn-jax train`.

# %%
onehot = load("onehot")
print(uhn_jax.compare(onehot, WORKDIR / "conditional", seeds=1, progress=False))

# %% [markdown]
# ## One network per example
#
# `conditioning="input"`: a learned linear encoding of each image is its condition.

# %%
adaptive = uhn_jax.run(load("input"), WORKDIR / "adaptive", progress=False)
print(
    f"data-adaptive: test accuracy {adaptive['test_metric']:.4f}, "
    f"{adaptive['num_generator_params']:,} generator params"
)

# %% [markdown]
# ## Curves
#
# `plots.curves` overlays any runs' logged values, here the test accuracy of the three.

# %%
groups = {
    "direct": [WORKDIR / "conditional" / "direct_seed0"],
    "conditional, one-hot": [WORKDIR / "conditional" / "conditional_seed0"],
    "conditional, per example": [WORKDIR / "adaptive"],
}
show(
    plots.curves(
        groups, "test_accuracy", WORKDIR / "plots" / "test_accuracy.png", title="digits, MLP 64-64"
    )
)

# %% [markdown]
# ## What the first layer learned
#
# The first layer's kernel is `(64 pixels, 64 units)`: each unit's 64 weights, drawn as an 8x8
# image, are the pattern it responds to. Top: trained directly; bottom: generated from the
# one-hot condition (weights of the latest checkpoints, `experiments.load_model_params`). Each
# image has its own colour scale; the printed stds compare the scales.

# %%
kernels = {
    label: np.asarray(experiments.load_model_params(run[0])[1]["layer_000"]["kernel"])
    for label, run in list(groups.items())[:2]
}
plt = figures.pyplot()
fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for row, (label, kernel) in zip(axes, kernels.items(), strict=True):
    for unit, ax in enumerate(row):
        field = kernel[:, unit].reshape(8, 8)
        ax.imshow(field, cmap="RdBu_r", vmin=-abs(field).max(), vmax=abs(field).max())
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(label, fontsize=8)
fig.suptitle("First-layer units of the digits MLP (red +, blue -)")
show(figures.save(fig, WORKDIR / "plots" / "first_layer_units.png"))
for label, kernel in kernels.items():
    print(f"{label}: first-layer kernel std {kernel.std():.4f}")
