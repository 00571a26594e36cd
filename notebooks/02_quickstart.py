# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: a universal hypernetwork for the digits MLP
#
# This notebook takes the demo experiment, `configs/digits_mlp.py`, apart:
#
# 1. load the config and build its MLP, the MLP's descriptors and the UHN generator by hand;
# 2. generate all the MLP's weights from the untrained generator and look at them;
# 3. train the UHN, and the same MLP directly, with the loop `uhn-jax train` runs;
# 4. plot the training curves, and the generated weights against the directly trained ones.
#
# The data is scikit-learn's digits (1,797 real 8x8 images, bundled, no download). Run it top to
# bottom; it takes a minute or two on a CPU.

# %%
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import uhn_jax
from configs import digits_mlp
from uhn_jax import plots
from uhn_jax.analysis.figures import show
from uhn_jax.core import descriptors
from uhn_jax.training import experiments, tasks
from uhn_jax.training import setup as setup_lib

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


# %% [markdown]
# ## 1. The config, the model, its descriptors and the generator
#
# A config is a `ConfigDict`; `from_config_dict` validates it into the frozen `Experiment` the
# library reads. The tiny settings only shrink the generator and the number of steps.

# %%
cfg = digits_mlp.get_config()
cfg.train.eval_every = 50  # also log the test accuracy every 50 steps, for the curves
if TINY:
    cfg.generator.n_freqs, cfg.generator.hidden = 16, 16
    cfg.train.steps, cfg.train.init_steps = 20, 5
    cfg.train.log_every, cfg.train.eval_every = 5, 10
exp = uhn_jax.from_config_dict(cfg)
print(exp.data.name, exp.model.family, exp.model.widths, exp.train.steps, "steps")

# %% [markdown]
# The model family registry turns `model.family` and the dataset into a base model: a frozen
# dataclass with pure `init` and `apply`. Its layout lists every tensor's path, shape and offset
# in the flat weight vector `w[N]`; it is built from shapes alone.

# %%
dataset = tasks.load_dataset(exp)
model = setup_lib.build_model(exp, dataset)
layout = uhn_jax.from_params(jax.eval_shape(model.init, jax.random.key(0)))
print(f"{type(model).__name__}: {layout.size:,} weights")
for leaf in layout.leaves:
    print(f"  {'/'.join(leaf.keys):<20} {leaf.shape!s:<10} offset {leaf.offset}")

# %% [markdown]
# Every weight gets a descriptor: which layer, which kind of tensor, which output and input unit.
# These integers, Fourier-encoded, are all the generator sees of the weight it is asked for.

# %%
desc = uhn_jax.build_descriptors(layout, model.layers(), model.global_fields())
print("index descriptors:", desc.index.shape)
shown = descriptors.INDEX_FIELDS[:5]
print(" ".join(f"{name:>11}" for name in shown))
for row in (0, 1, 64, layout.size - 1):  # two biases, the first kernel weight, the last weight
    print(" ".join(f"{int(v):>11}" for v in desc.index[row, : len(shown)]))

# %%
gen = uhn_jax.generator.from_config(exp.generator, desc.index_ranges())
variables = uhn_jax.init_generator(gen, jax.random.key(1))
print(f"generator: {uhn_jax.generator.num_params(variables):,} params")

# %% [markdown]
# ## 2. Generate the weights
#
# `generate` maps the `(N, 10)` descriptors to `w[N]` (pure, differentiable and jit-safe);
# `unflatten` turns it back into the MLP's params. Before training, each tensor's spread is far
# from the usual initialisation's (the target column): the moment-matching stage at the start of
# training pulls them together.

# %%
w = uhn_jax.generate(gen, variables, jnp.asarray(desc.index))
params = uhn_jax.unflatten(w, layout)
print(f"{'tensor':<20} {'mean':>8} {'std':>8} {'target std':>10}")
for leaf, (_, target_std) in zip(layout.leaves, desc.targets, strict=True):
    values = np.asarray(w[leaf.offset : leaf.offset + leaf.size])
    name = "/".join(leaf.keys)
    print(f"{name:<20} {values.mean():>8.4f} {values.std():>8.4f} {target_std:>10.4f}")
logits = model.apply(params, jnp.asarray(dataset.x_test))
accuracy = float((logits.argmax(-1) == jnp.asarray(dataset.y_test)).mean())
print(f"untrained generator: test accuracy {accuracy:.3f} (chance is 0.1)")

# %% [markdown]
# ## 3. Train: the UHN and the MLP trained directly
#
# `uhn_jax.compare` runs `uhn_jax.run`, the loop behind `uhn-jax train`, once per mode and seed:
# direct training of the MLP, then the UHN (moment matching, then the task), which builds the
# same model, descriptors and generator from the config as above. Each run writes a resumable
# work directory with checkpoints, `metrics.jsonl` and `results.json`.

# %%
table = uhn_jax.compare(exp, WORKDIR / "quickstart", seeds=1, progress=False)
print(table)

# %% [markdown]
# ## 4. Curves and weights
#
# `plots.plot_workdir` is what `uhn-jax plot --workdir ...` runs. For a compare workdir it draws
# the training accuracy, test accuracy and loss of both modes, the weights (below) and the fit
# of the moment-matching stage (`init_fit.png`: when the stage ends, each generated tensor's std
# against its target, as in the table of part 2). The UHN's steps count its moment-matching
# steps too, so its task training starts later on the x-axis.

# %%
written = plots.plot_workdir(WORKDIR / "quickstart")
for png in written:
    print(png.relative_to(WORKDIR))
for png in written:
    if png.stem in ("test_accuracy", "loss", "init_fit"):
        show(png)

# %% [markdown]
# The trained runs' base-model weights, from their latest checkpoints (for the UHN, generated
# once from the trained generator), and one histogram per tensor of the generated against the
# directly trained weights. (`plot_workdir` drew the same figure, `weights.png`, with
# `plots.weight_comparison`.)

# %%
direct = experiments.load_model_params(WORKDIR / "quickstart" / "direct_seed0")[1]
generated = experiments.load_model_params(WORKDIR / "quickstart" / "uhn_seed0")[1]
weights = {"generated (UHN)": generated, "trained directly": direct}
out = WORKDIR / "quickstart" / "plots" / "weights_generated_vs_trained.png"
show(plots.weight_histograms(weights, out, title="digits MLP: generated and trained weights"))
flat = {label: np.asarray(uhn_jax.flatten(p, layout)) for label, p in weights.items()}
print(f"{'tensor':<20} " + "  ".join(f"{'std ' + label:>22}" for label in flat))
for leaf in layout.leaves:
    stds = [w_N[leaf.offset : leaf.offset + leaf.size].std() for w_N in flat.values()]
    print(f"{'/'.join(leaf.keys):<20} " + "  ".join(f"{std:>22.4f}" for std in stds))

# %% [markdown]
# The MLP applies a non-affine LayerNorm before every layer after the first, so the task loss
# leaves much of the weights' overall scale free: two solutions of the same accuracy can differ
# in width here.

# %% [markdown]
# ## Where next
#
# - The same run from the command line: `uhn-jax compare --config configs/digits_mlp.py
#   --workdir runs/demo --seeds 3`, then `uhn-jax plot --workdir runs/demo`.
# - `03_bring_your_own_model` does this for a Flax model of your own (`uhn_jax.hypernetize`).
# - `04_conditional`, `05_ha_static` and `06_diverse` train the other hypernetwork kinds.
