# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ha et al.'s HyperLSTM: a character language model on MR
#
# In *HyperNetworks* (Ha, Dai, Le 2016) a small *hyper* LSTM runs next to the main LSTM. At every
# character its output rescales the rows of the main LSTM's weight matrices (`d_x` for the input
# weights, `d_h` for the recurrent ones) and sets a dynamic bias: the weights change at every
# step, yet only `4·H` scales per matrix are generated ([docs/hyperlstm.md](../docs/hyperlstm.md)).
# `configs/mr_charlm.py` trains it as a character language model on the MR movie-review
# sentences, against a plain LSTM with the same parameter count, in bits per character (bpc).
# This notebook builds both cells, trains each briefly through the library's loop, and looks at
# the scales the hypernetwork writes over a sentence.
#
# It needs the MR corpus, Pang & Lee's sentence polarity dataset v1.0 (`rt-polarity.pos` and
# `.neg` from https://www.cs.cornell.edu/people/pabo/movie-review-data/): set `UHN_DATA_DIR` to
# the directory holding them or their `rt_polarity/` folder.

# %%
import math
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import uhn_jax
from configs import mr_charlm
from uhn_jax import plots
from uhn_jax.analysis import figures
from uhn_jax.data import chars
from uhn_jax.models import hyperlstm
from uhn_jax.training import experiments

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: small cells, a 200-line subset of MR and
# a few steps each, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)
if not os.environ.get("UHN_DATA_DIR"):
    raise RuntimeError("set UHN_DATA_DIR to the directory holding MR's rt_polarity/ (see above)")
MR_DIR = Path(os.environ["UHN_DATA_DIR"]).expanduser().resolve()
corpus = chars.load_mr_chars(MR_DIR)  # says where to get MR when its files are missing
print(f"MR: {len(corpus.train):,} training and {len(corpus.test):,} test characters")
if TINY:  # the first 100 sentences of each file, copied as they are
    source = MR_DIR if (MR_DIR / chars.MR_FILES[0]).is_file() else MR_DIR / "rt_polarity"
    MR_DIR = WORKDIR / "mr_subset"
    MR_DIR.mkdir(parents=True, exist_ok=True)
    for name in chars.MR_FILES:
        lines = (source / name).read_bytes().splitlines(keepends=True)[:100]
        (MR_DIR / name).write_bytes(b"".join(lines))
    corpus = chars.load_mr_chars(MR_DIR)
    print(f"tiny subset: {len(corpus.train):,} training and {len(corpus.test):,} test characters")


# %% [markdown]
# ## The cells and their parameters
#
# The config's HyperLSTM has `H = 128` main units, a 128-unit hyper LSTM and embeddings of
# `N_z = 16` numbers per gate, on 64-dimensional character embeddings. Its cell holds a
# layer-norm LSTM (the main one), a second one (the hyper LSTM, reading `[x_t; h_{t-1}]`) and the
# small projections `ĥ → z → d`. An LSTM with the same `H` is much smaller, so the config widens
# the LSTM until the whole language model has the HyperLSTM's count
# (`hyperlstm.matched_features`); that is the comparison trained below.

# %%
H, EMBED = (32, 16) if TINY else (mr_charlm.HYPER_FEATURES, mr_charlm.EMBED_DIM)
hyper_lm = hyperlstm.CharLM(corpus.vocab_size, H, "hyperlstm", embed_dim=EMBED)
H_LSTM = hyperlstm.matched_features(hyper_lm, "lstm")


def cell_parts(cell):
    """Parameters of a cell on EMBED-dimensional inputs, per top-level submodule (no allocation)."""
    x = jax.ShapeDtypeStruct((1, EMBED), jnp.float32)
    carry = cell.initialize_carry(jax.random.key(0), x.shape)
    shapes = jax.eval_shape(cell.init, jax.random.key(0), carry, x)["params"]
    return {k: sum(math.prod(a.shape) for a in jax.tree.leaves(v)) for k, v in shapes.items()}


hyper_cell = hyperlstm.make_cell("hyperlstm", H, hyper_lm.hyper_features, hyper_lm.embed_features)
parts = cell_parts(hyper_cell)
bars = {
    f"LSTM, H={H}": {"LSTM": sum(cell_parts(hyperlstm.make_cell("lstm", H)).values())},
    f"HyperLSTM, H={H}": {
        "main LN-LSTM": parts["main"],
        "hyper LN-LSTM": parts["hyper"],
        "z and d projections": parts["embed_x"] + parts["embed_h"] + parts["embed_b"],
    },
    f"LSTM, H={H_LSTM}": {"LSTM": sum(cell_parts(hyperlstm.make_cell("lstm", H_LSTM)).values())},
}
for label, counts in bars.items():
    print(f"{label + ' cell:':24} {sum(counts.values()):>9,} params  {counts}")
for lm in (hyper_lm, hyper_lm.clone(cell="lstm", features=H_LSTM)):
    print(f"language model {lm.cell}-{lm.features}: {hyperlstm.charlm_param_count(lm):,} params")

plt = figures.pyplot()
fig, ax = plt.subplots(figsize=(8, 2.4))
colours = dict(zip(["LSTM", *bars[f"HyperLSTM, H={H}"]], ["C0", "C1", "C2", "C3"], strict=True))
seen = set()
for row, counts in enumerate(bars.values()):
    left = 0
    for part, n in counts.items():
        ax.barh(row, n, left=left, color=colours[part], label=None if part in seen else part)
        seen.add(part)
        left += n
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
ax.set_yticks(range(len(bars)), list(bars))
ax.invert_yaxis()
ax.set_xlabel("parameters of the recurrent cell")
figures.show(figures.save(fig, WORKDIR / "plots" / "cell_params.png"))

# %% [markdown]
# ## Train: LSTM against HyperLSTM
#
# `uhn_jax.run` is the loop of `uhn-jax train`. Both runs use `configs/mr_charlm.py`
# (`mode=direct`: the HyperLSTM's hypernetwork is inside the cell, so all its parameters train
# directly), for 400 steps of 32 windows of 100 characters instead of 3,000.


# %%
def load(cell, width):
    """``configs/mr_charlm.py:<cell>`` with ``width`` units, shortened for a notebook."""
    cfg = mr_charlm.get_config(cell)
    cfg.data.data_dir = str(MR_DIR)
    cfg.model.widths, cfg.model.embed_dim = (width,), EMBED
    cfg.train.steps, cfg.train.log_every, cfg.train.eval_every = 400, 20, 100
    if TINY:
        cfg.data.max_len, cfg.train.batch_size = 16, 8
        cfg.train.steps, cfg.train.warmup_steps, cfg.train.log_every = 12, 0, 2
    return uhn_jax.from_config_dict(cfg)


runs = {"lstm": (H_LSTM, WORKDIR / "lstm"), "hyperlstm": (H, WORKDIR / "hyperlstm")}
for name, (width, run_dir) in runs.items():
    res = uhn_jax.run(load(name, width), run_dir, progress=False)
    print(
        f"{res['model']}: test bpc {res['test_metric']:.3f} (train {res['train_metric']:.3f}), "
        f"{res['num_target_params']:,} params, {res['wall_s']:.0f} s"
    )

# %% [markdown]
# ## Curves
#
# `plots.curves` reads the runs' `metrics.jsonl`: the training bpc of each logged step.

# %%
groups = {f"LSTM, H={H_LSTM}": [runs["lstm"][1]], f"HyperLSTM, H={H}": [runs["hyperlstm"][1]]}
title = "MR characters, equal parameter counts"
figures.show(plots.curves(groups, "bpc", WORKDIR / "plots" / "train_bpc.png", title=title))

# %% [markdown]
# ## What the hypernetwork writes
#
# The trained HyperLSTM reads one held-out sentence, one character at a time (the cell applied in
# a `lax.scan`, with `mutable=["intermediates"]` to collect the `d_x` and `d_h` each step sows).
# Top: the bits the model spends on each next character. Below: the row scales of the main LSTM's
# input and recurrent weights, for the first 16 units of each gate (i, g, f, o), as their change
# from the unit's mean over the sentence: the weights the hypernetwork rewrites at every
# character. The scales start at `d ≈ 1` with a spread of about 1 %, so after the tiny test run
# the units of a gate still move together, a common factor that the layer norm cancels. With
# training each unit gets its own pattern, and the scales spread far from 1.

# %%
_, params = experiments.load_model_params(runs["hyperlstm"][1])
newline = corpus.vocab.index("\n")
first = corpus.test[: min(60, int(np.argmax(corpus.test == newline)))]  # a held-out sentence
ids = jnp.asarray([*first, newline])


def step(carry, token):
    x = params["embed"]["embedding"][token][None]
    (carry, h), sown = hyper_cell.apply(
        {"params": params["HyperLSTMCell_0"]}, carry, x, mutable=["intermediates"]
    )
    logits = h[0] @ params["out"]["kernel"] + params["out"]["bias"]
    return carry, (sown["intermediates"]["d_x"][0][0], sown["intermediates"]["d_h"][0][0], logits)


carry = hyper_cell.initialize_carry(jax.random.key(0), (1, EMBED))
_, (d_x, d_h, logits) = jax.jit(lambda c, t: jax.lax.scan(step, c, t))(carry, ids[:-1])
bits = -jax.nn.log_softmax(logits)[jnp.arange(len(ids) - 1), ids[1:]] / math.log(2)

units = min(H, 16)
fig, axes = plt.subplots(3, 1, figsize=(11, 7), height_ratios=(1, 3, 3), sharex=True)
axes[0].bar(range(len(bits)), np.asarray(bits), color="grey")
axes[0].set_ylabel("bits for\nnext char")
for ax, (name, d) in zip(axes[1:], (("d_x", d_x), ("d_h", d_h)), strict=True):
    rows = np.asarray(d[:, :, :units]).reshape(len(d), -1).T  # (gate, unit) rows, time columns
    change = rows - rows.mean(axis=1, keepdims=True)
    lim = np.percentile(np.abs(change), 99)  # a few extreme entries would wash out the rest
    im = ax.imshow(change, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks([units * (g + 0.5) for g in range(4)], ["i", "g", "f", "o"])
    for g in range(1, 4):
        ax.axhline(units * g - 0.5, color="k", lw=0.5)
    ax.set_ylabel(f"{name} - its mean")
    fig.colorbar(im, ax=ax, pad=0.01)
labels = [{" ": "␣", chars.UNK: "?"}.get(c, c) for c in (corpus.vocab[i] for i in first)]
axes[-1].set_xticks(range(len(first)), labels)
axes[-1].tick_params(axis="x", labelsize=7)
fig.suptitle("The HyperLSTM's weight scales, character by character")
figures.show(figures.save(fig, WORKDIR / "plots" / "weight_scales.png"))
for name, d in (("d_x", d_x), ("d_h", d_h)):
    change = np.abs(np.diff(np.asarray(d), axis=0)).mean()
    print(
        f"{name} over {len(d)} characters: from {float(d.min()):.3f} to {float(d.max()):.3f}, "
        f"mean change per character {change:.4f}"
    )
