# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Weight-space learning: a model zoo, SNE and IGPG
#
# Weight-space learning treats trained networks as data. This notebook runs the three steps of
# issue 26 on scikit-learn's digits (bundled):
#
# 1. build a *model zoo*: many small networks, each stored with its weights and its test
#    accuracy at several points of its training ([docs/zoo.md](../docs/zoo.md));
# 2. predict a network's test accuracy from its weights alone, with SNE (a set encoder of the
#    weights) against weight statistics ([docs/sne.md](../docs/sne.md));
# 3. generate weights for a dataset and an architecture with IGPG, a VQ-VAE over weight chunks
#    and an autoregressive prior over its codes ([docs/igpg.md](../docs/igpg.md)).
#
# Each step is the Python entry point of a command (`uhn-jax zoo`, `uhn-jax sne`,
# `uhn-jax igpg`) called with a preset from `configs/`.

# %%
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from configs import igpg as igpg_configs
from configs import sne as sne_configs
from configs import zoo as zoo_configs
from uhn_jax.analysis import figures
from uhn_jax.training import igpg, igpg_report, sne, sne_report, zoo
from uhn_jax.weightspace import zoo as zoo_store

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a tiny zoo and a few steps, just to
# exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


# %% [markdown]
# ## 1. Build a zoo
#
# A zoo is made of groups. The networks of a group share the dataset and the architecture and
# train side by side in one compiled step. Each has its own learning rate, weight decay, init
# scale and seed. Every network is stored at each snapshot step, so one network gives several
# records, trained for different lengths.
#
# The zoo here is part of `configs/zoo.py:digits`: 4 MLP groups (widths 16, 32, 64 and 16x16)
# and 2 HaCNN groups (conv, pool, conv, pool, head), 16 networks each, snapshots at steps 50,
# 150, 300 and 600. The preset's residual CNNs are left out, as they train slowly on a CPU.
# In tiny mode it is `digits_tiny`: 2 groups of 4 MLPs, snapshots at steps 3 and 6, near chance.

# %%
ZOO = WORKDIR / "zoo"
if TINY:
    zoo_cfg = zoo_configs.get_config("digits_tiny")
else:
    zoo_cfg = zoo_configs.get_config("digits")
    zoo_cfg.populations.digits_mlp.groups = 4
    zoo_cfg.populations.digits_ha_cnn.groups = 2
    zoo_cfg.populations.digits_cnn.groups = 0  # a population with no groups is left out
print(zoo.format_summary(zoo.build(zoo_cfg, ZOO, progress=False)))

# %% [markdown]
# The records hold each network's metadata. Below, the zoo by architecture and by snapshot.
# The spread of test accuracy within a snapshot is what the predictors below must rank.

# %%
z = zoo_store.load(ZOO)
by_arch, by_step = defaultdict(set), defaultdict(list)
for r in z.records:
    arch = f"{r['family']} {'x'.join(map(str, r['widths']))}"
    head = r["model"].get("head_hidden")  # a HaCNN's hidden dense layers
    arch += f", head {'x'.join(map(str, head))}" if head else ""
    by_arch[arch, r["num_params"]].add(r["network"])
    by_step[r["step"]].append(r["test_accuracy"])
for (arch, params), networks in sorted(by_arch.items()):
    print(f"{arch:<20} {params:>6,} params  {len(networks):>3} networks")
for step, acc in sorted(by_step.items()):
    print(
        f"step {step:>4}: {len(acc)} records, test accuracy {100 * min(acc):.1f} / "
        f"{100 * np.median(acc):.1f} / {100 * max(acc):.1f} % (min / median / max)"
    )

# %% [markdown]
# ## 2. Predict accuracy from weights: SNE against weight statistics
#
# One same-zoo task: a fifth of the networks (a quarter in tiny mode) is held out for testing,
# all snapshots of a network on one side, and each method learns test accuracy from the
# others' weights:
#
# - `sne`: the weights cut into chunks of one unit's incoming weights, read by set attention.
#   The chunks are put in a canonical order, so permuting hidden units changes nothing;
# - `stats_mlp`, `stats_gbt`: 45 statistics of the weights per network (Unterthiner et al.
#   2020), read by an MLP and by gradient-boosted trees.
#
# The MLP on the flattened weights (`flat_mlp`) needs networks of one layout and is left out.
# The score is Kendall's tau between predicted and true test accuracy on the test networks.
# Normal mode uses the `digits` preset's sizes with one seed and 800 steps, tiny mode the
# `digits_tiny` preset (20 steps).

# %%
if TINY:
    sne_cfg = sne_configs.get_config(f"digits_tiny,{ZOO}")
else:
    sne_cfg = sne_configs.get_config(f"digits,{ZOO}")
    sne_cfg.tasks = {"same_zoo": sne_configs.task("same_zoo", datasets=("digits",))}
    sne_cfg.seeds, sne_cfg.train.steps = (0,), 800
sne_cfg.methods = ("sne", "stats_mlp", "stats_gbt")
sne_out = sne.run(sne_cfg, WORKDIR / "sne", progress=False)
print(sne_report.format_table(sne_out))

# %% [markdown]
# Each part writes its test predictions to `runs/<task>/<method>/seed_<s>/result.json`
# (`sne.part_results` reads them). Predicted against true test accuracy, one panel per method
# (the grey line is a perfect prediction; the run also draws SNE's panel alone,
# `sne_scatter.png`). In normal mode (seed 0,
# 65 training networks) SNE ranks the 19 test networks' 76 records at tau 0.74, level with the
# statistics MLP (0.74) and above the trees (0.64); docs/sne.md has SNE ahead on larger zoos.

# %%
parts = sne.part_results(WORKDIR / "sne", sne_out)  # each part's result.json, predictions too
scatter = WORKDIR / "plots" / "sne_scatter.png"
figures.show(sne_report.figure(parts, scatter, methods=sne_cfg.methods))

# %% [markdown]
# ## 3. Generate weights: IGPG
#
# IGPG writes a network's weights given its dataset (seen through some of its images), its task
# and its architecture. Each weight tensor is cut into chunks of 4 values and a VQ-VAE codes
# each chunk with one of 64 codes. A small causal Transformer, conditioned on dataset,
# task and architecture, learns the code sequences of the zoo's networks. A (dataset,
# architecture) pair is held out of both: its generated networks are fine-tuned against random
# initialisation. Reported per pair: the generated networks' test accuracy against the zoo's,
# and their novelty, the distance to the nearest zoo network over the zoo's typical
# nearest-neighbour distance (after aligning hidden units; near 0 is a copy).
#
# This is the `configs/igpg.py:tiny` preset. On the normal zoo it takes the pairs of up to 512
# tokens (MLP 16, MLP 16x16 and HaCNN 8x8), holds out MLP 16x16 and fine-tunes for 100 steps
# instead of 5. Models this small, trained on a few dozen networks with independent seeds,
# write networks near chance, and 64 codes already cost much of the accuracy in
# reconstruction. docs/igpg.md measures larger models, and a fixed-seed zoo on which the prior
# generalises. In normal mode the generated networks score 7-15 % (the zoo's medians: 95-96 %),
# and after 100 steps of fine-tuning the held-out MLP reaches 71 % from generated weights
# against 84 % from random initialisation. They are not copies: their nearest zoo network is
# 0.8-1.6 times the zoo's typical nearest-neighbour distance away.

# %%
igpg_cfg = igpg_configs.get_config(f"tiny,{ZOO}")
if not TINY:  # the tiny preset's pairs (MLPs 8 and 8x8) are not in this zoo
    igpg_cfg.select.max_tokens = 512
    igpg_cfg.heldout = ("digits/mlp-16x16",)
    igpg_cfg.finetune.steps = (0, 10, 100)
igpg_out = igpg.run(igpg_cfg, WORKDIR / "igpg", progress=False)
for png in igpg_report.figures(igpg_out, WORKDIR / "igpg"):
    figures.show(png)

# %% [markdown]
# ## Where next
#
# - The same steps from the command line: `uhn-jax zoo --config configs/zoo.py:digits`,
#   `uhn-jax sne --config configs/sne.py:digits,<zoo>`, `uhn-jax igpg --config
#   configs/igpg.py:digits,<zoo>` (each `--workdir`).
# - On the 768-network fixed-seed zoo (`configs/zoo.py:digits_fixed`), where every network
#   starts from one init, SNE ranks test accuracy at tau 0.89 and IGPG's generated MLPs are
#   working classifiers (`configs/sne.py:digits_fixed`, `configs/igpg.py:fixed`).
# - `uhn_jax.weightspace.zoo.load` opens a zoo: each record's params pytree, its model, and the
#   flattened weights of many networks ([docs/zoo.md](../docs/zoo.md)).
