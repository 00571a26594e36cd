# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Universal hypernetworks on digits: one model, many models, and a UHN that generates a UHN
#
# This notebook walks through the three settings of `uhn_jax` on scikit-learn's digits (bundled, no
# download), each in a minute or two on a CPU:
#
# 1. **Single model**: a UHN generates every weight of an MLP; compare with direct training.
# 2. **Many models**: one UHN trained over a set of MLP architectures, evaluated on architectures it
#    never saw.
# 3. **Recursive**: the UHN generates another UHN, which generates the MLP.
#
# All model logic lives in the library; the notebook only sets configs and reads results. Every run
# writes a resumable work directory (checkpoints, `metrics.jsonl`, `results.json`).

# %%
import os
import tempfile
from pathlib import Path

from uhn_jax import config as config_lib
from uhn_jax.training import model_sets, train

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


def digits_config(steps, init_steps):
    cfg = config_lib.default_config_dict()
    cfg.data.name = "digits"
    cfg.model.widths = (64, 64)
    cfg.generator.n_freqs = 256 if not TINY else 16
    cfg.generator.hidden = 64 if not TINY else 16
    cfg.train.batch_size = 128
    cfg.train.steps = steps if not TINY else 3
    cfg.train.init_steps = init_steps if not TINY else 2
    cfg.train.lr = 3e-3
    cfg.train.init_lr = 1e-3
    cfg.train.log_every = 50 if not TINY else 1
    cfg.train.checkpoint_every = 1000
    return cfg


# %% [markdown]
# ## 1. Single model
#
# The generator maps each weight's descriptor (layer, parameter type, output and input index, …) to
# its value. First a short moment-matching stage pulls each generated tensor's mean and std to the
# usual initialisation statistics, then the task loss trains the generator through the MLP.

# %%
cfg = digits_config(steps=400, init_steps=50)
results = {}
for mode in ("direct", "uhn"):
    cfg.mode = mode
    exp = config_lib.from_config_dict(cfg)
    results[mode] = train.run(exp, WORKDIR / f"single_{mode}", progress=False)
    r = results[mode]
    print(
        f"{mode:>6}: test accuracy {r['test_metric']:.4f}, {r['num_target_params']:,} MLP "
        f"params, {r['num_generator_params']:,} generator params, {r['wall_s']:.0f} s"
    )

# %% [markdown]
# ## 2. Many models, one generator
#
# A model set is a JSON list of architectures drawn from a family: here MLPs with 1 or 2 hidden
# layers of width 16–64. The last few are held out. With the structure encoder on, the generator
# also reads a description of each layer, so it can tell the architectures apart. Every member
# runs inside the largest one with masks, so the whole set compiles one training step.

# %%
family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(16, 32, 48, 64))
mset = model_sets.sample(family, n=12 if not TINY else 3, num_held_out=3 if not TINY else 1, seed=0)
set_path = model_sets.save(mset, WORKDIR / "digits_set.json")
print(f"{len(mset.hold_in)} hold-in and {len(mset.held_out)} held-out architectures:")
for arch in mset.models:
    print("  ", arch["widths"])

cfg = digits_config(steps=600, init_steps=100)
cfg.mode = "uhn"
cfg.generator.structure = True
cfg.model.model_set = str(set_path)
if TINY:  # a set of 3 may hold out a width the hold-in members never use
    cfg.generator.out_of_range = "clip"
multi = train.run(config_lib.from_config_dict(cfg), WORKDIR / "multi", progress=False)
print(f"hold-in members:  {multi['hold_in_test_metric']:.4f} mean test accuracy")
print(f"held-out members: {multi['held_out_test_metric']:.4f} (never trained on)")
compiles = multi["train_step_compiles"]
print(f"train-step compiles for {multi['num_members']} architectures: {compiles}")

# %%
try:
    from IPython.display import Image, display

    display(Image(filename=str(WORKDIR / "multi" / "members.png")))
except ImportError:
    print("plot written to", WORKDIR / "multi" / "members.png")

# %% [markdown]
# ## 3. A UHN that generates a UHN
#
# With `generator.chain_depth = K`, the trained generator H0 produces the weights of another
# hypernetwork H1, which produces H2, …, and H_K produces the MLP. Only H0 is trained; the
# gradient flows through the whole chain. The initialisation stage is split into K + 1 parts, one
# per generated network.

# %%
cfg = digits_config(steps=600, init_steps=100)
cfg.mode = "uhn"
cfg.generator.structure = True
cfg.generator.chain_depth = 1
cfg.train.grad_clip = 0.01
rec = train.run(config_lib.from_config_dict(cfg), WORKDIR / "recursive_k1", progress=False)
print(f"H0 -> H1 -> MLP: test accuracy {rec['test_metric']:.4f} ({rec['wall_s']:.0f} s)")

# %% [markdown]
# ## Where next
#
# - `uhn-jax compare --config configs/digits_mlp.py --workdir runs/demo --seeds 3` runs part 1 over
#   three seeds and prints a table.
# - `configs/digits_mlp_set.py` trains over 100 architectures; `configs/digits_recursive.py:K` is
#   the recursive chain of depth K.
# - To plug a generator into your own JAX code, see `02_quickstart` and the README's quick tour
#   (`descriptors.build`, `generator.generate`, `layouts.unflatten`).
