# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A generator of diverse networks (Deutsch et al. 2018): `mode=diverse`
#
# A hypernetwork turns noise `z ~ U(-1, 1)^300` into all the weights of a small CNN. It is
# trained for accuracy and for diversity (an entropy estimate of the generated weights), so each
# draw of `z` is a different network ([docs/diverse.md](../docs/diverse.md)).
# `configs/mnist_diverse.py` runs it on MNIST; this notebook loads that config, swaps the data for
# scikit-learn's digits (bundled) and trains briefly. Then it samples networks from the untrained
# and from the trained generator and compares their accuracies and pairwise distances.

# %%
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

import uhn_jax
from configs import mnist_diverse
from uhn_jax.analysis import figures, populations
from uhn_jax.analysis.figures import show
from uhn_jax.hypernets import diverse
from uhn_jax.training import experiments, tasks

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


# %% [markdown]
# ## Train briefly
#
# Each step generates `hypernet.noise_batch` networks, each trained on its own share of the
# batch. The target is Deutsch et al.'s CNN (conv 5x5 32, conv 5x5 16, dense, dense 10), here on
# 8x8 images. Its dense layer has 32 units instead of the paper's 8, and Adam runs at 1e-3
# instead of 3e-4: with both, the generator leaves its initial plateau at chance (see "Training
# status" in the docs) within 300 steps on digits.

# %%
cfg = mnist_diverse.get_config("1e-5")  # diversity weight (lambda) 1e-5
cfg.data.name = "digits"
cfg.model.head_hidden = (32,)
cfg.train.lr, cfg.train.steps, cfg.train.log_every = 1e-3, 300, 50
if TINY:  # a much smaller generator and target
    cfg.model.widths = (8, 8)
    cfg.hypernet.noise_size, cfg.hypernet.extractor_sizes = 16, (32,)
    cfg.hypernet.code_size, cfg.hypernet.filter_hidden = 4, (8, 8, 8, 8)
    cfg.hypernet.noise_batch, cfg.hypernet.reference_batch = 4, 16
    cfg.train.batch_size, cfg.train.steps, cfg.train.log_every = 4 * 16, 10, 5
result = uhn_jax.run(uhn_jax.from_config_dict(cfg), WORKDIR / "diverse", progress=False)
print(
    f"one generated network: test accuracy {result['test_metric']:.4f}; "
    f"{result['num_generator_params']:,} generator params"
)

# %% [markdown]
# ## Sample networks
#
# `Kind.population` draws `n` noise vectors and generates their (gauge-fixed) networks in one
# jitted call. `kind.init` gives the untrained generator of the same run, for comparison.

# %%
exp, setup, _, dataset, state = experiments.load_run(WORKDIR / "diverse")
n = 16 if TINY else 200
untrained = setup.kind.init(setup, jax.random.key(0))
trained = (state["params"], state["constants"])
x = np.asarray(tasks.prepare_inputs(setup, dataset.x_test))
y = np.asarray(dataset.y_test)
samples = {}
for label, (params, constants) in {"untrained": untrained, "trained": trained}.items():
    nets = setup.kind.population(setup, params, constants, jax.random.key(1), n)
    like = jax.tree.map(lambda a: a[0], nets)
    weights = np.asarray(jax.vmap(diverse.flatten)(nets))

    def apply_fn(w, x, like=like):
        return setup.model.apply(diverse.unflatten(w, like), x)

    acc = populations.accuracies(apply_fn, weights, x, y)
    samples[label] = weights, acc
    print(
        f"{label:>9}: {n} networks of {weights.shape[1]:,} weights, test accuracy "
        f"{acc.mean():.3f} ± {acc.std():.3f}, mean pairwise distance "
        f"{populations.mean_pairwise_distance(weights):.2f}"
    )

# %% [markdown]
# ## Accuracy and distance
#
# The histogram is the trained generator's networks' test accuracy. The distance matrices
# compare the two populations: the untrained generator's networks are all about equally far
# apart, while training pulls some of them together (dark blocks: groups of close networks).
# No two coincide: the printed nearest-neighbour distances stay above zero.

# %%
show(
    figures.accuracy_histogram(
        samples["trained"][1],
        WORKDIR / "plots" / "accuracy.png",
        title=f"Test accuracy of {n} generated networks",
    )
)
plt = figures.pyplot()
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, (label, (weights, _)) in zip(axes, samples.items(), strict=True):
    image = ax.imshow(populations.pairwise_distances(weights), cmap="viridis")
    ax.set(title=f"{label} generator", xlabel="network", ylabel="network")
    fig.colorbar(image, ax=ax, label="weight-space distance")
fig.suptitle("Pairwise distances of gauge-fixed generated networks")
show(figures.save(fig, WORKDIR / "plots" / "distances.png"))
for label, (weights, _) in samples.items():
    nearest = populations.nearest_neighbour_distances(weights)
    print(f"{label:>9}: nearest-neighbour distance {nearest.min():.2f} to {nearest.max():.2f}")

# %% [markdown]
# ## Where next
#
# `uhn-jax analyze --workdir <run>` measures a population in full: the accuracy histogram,
# majority-vote ensembles, entropy against a noise ball, PCA, interpolation paths, FGSM and
# calibration ([docs/analysis.md](../docs/analysis.md)).
