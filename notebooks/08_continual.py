# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Continual learning with a hypernetwork (von Oswald et al. 2020): `uhn-jax continual`
#
# Tasks arrive one after another, and after the last one every task should still be solved.
# The `hnet` method keeps one hypernetwork that maps a learned embedding per task to all the
# weights of an MLP. An output regulariser (weight `hnet.beta`) keeps the weights it generates for
# the earlier tasks' embeddings close to a snapshot taken before the current task started
# ([docs/continual.md](../docs/continual.md)). The task id is given at test time.
# This notebook runs `configs/continual.py:split,digits` (scikit-learn's digits, bundled) with
# `hnet` and its two baselines, then compares their accuracy matrices and looks at what the
# regulariser does to the earliest task's weights.

# %%
import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from configs import continual as continual_config
from uhn_jax.analysis import figures
from uhn_jax.analysis.figures import show
from uhn_jax.core import layouts
from uhn_jax.training import continual

# The tests run this notebook with UHN_NOTEBOOK_TINY=1: a few steps per task, just to exercise it.
TINY = os.environ.get("UHN_NOTEBOOK_TINY") == "1"
WORKDIR = Path(os.environ.get("UHN_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="uhn_notebook_"))
print("runs go to", WORKDIR)


# %% [markdown]
# ## Train the three methods
#
# Split digits has 5 tasks: task `t` tells digit `2t` from digit `2t+1` (labels 0 and 1), 283
# training images each. Every method trains an MLP 64-32-32-2 for 300 steps per task, with a
# fresh AdamW at each task boundary:
#
# - `hnet`: the weights are generated from the task's embedding, with `beta = 0.1`;
# - `finetune`: one MLP trained directly, carried from task to task with nothing protecting
#   the earlier tasks;
# - `separate`: a fresh MLP per task, five times the parameters (an upper bound).
#
# After each task, `continual.run` measures the test accuracy of every task so far, which gives
# row `i` of the accuracy matrix `A[i][j]`. Here each run is trained one task at a time
# (`stop_after`, then a rerun resumes from the checkpoint), and after each task
# `continual.task_params` reads the weights that answer task 0, for the last section. A resumed
# run is bit-identical to an uninterrupted one, so with 300 steps per task these are the
# matrices of docs/continual.md ("Measured: Split digits").

# %%
STEPS = 20 if TINY else 300


def config(method, **hnet):
    """``configs/continual.py:split,digits,<method>``, with ``hnet`` fields overridden."""
    cfg = continual_config.get_config(f"split,digits,{method}")
    cfg.continual.steps_per_task = STEPS
    cfg.train.log_every, cfg.train.checkpoint_every = min(50, STEPS), STEPS
    cfg.hnet.update(hnet)
    return cfg


def train(name, cfg):
    """Trains ``cfg`` one task at a time in ``WORKDIR/name``; returns its results and the flat
    weights that answered task 0 after each task (saved, so a second pass reuses them)."""
    run_dir, spec = WORKDIR / name, continual.validate(cfg)
    task0 = []
    for t in range(spec.num_tasks):
        saved = run_dir / f"task0_weights_after_task{t}.npy"
        if not saved.exists():
            with contextlib.redirect_stdout(io.StringIO()):  # its "resuming ... from step" line
                continual.run(
                    cfg, run_dir, progress=False, stop_after=(t + 1) * spec.steps_per_task
                )
            prep, state = continual.load_state(cfg, run_dir)
            params = continual.task_params(prep, state, 0)
            np.save(saved, np.asarray(layouts.flatten(params, prep.setup.layout)))
        task0.append(np.load(saved))
    return continual.run(cfg, run_dir, progress=False), np.stack(task0)


runs = {method: train(method, config(method)) for method in ("hnet", "finetune", "separate")}
for out, _ in runs.values():
    print(continual.format_results(out), end="\n\n")

# %% [markdown]
# ## Accuracy matrices
#
# Row `i` is the test accuracy on each task after training task `i` (only the tasks seen so far).
# Forgetting shows as a column that fades downwards: `finetune` loses earlier tasks as its one
# network is trained on later ones. `hnet` keeps its columns, and `separate` cannot forget.

# %%
plt = figures.pyplot()
T = len(runs["hnet"][0]["accuracy_matrix"])
fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
for ax, (method, (out, _)) in zip(axes, runs.items(), strict=True):
    acc = 100 * np.array(out["accuracy_matrix"], dtype=float)  # None (not yet seen) -> nan
    image = ax.imshow(acc, cmap="viridis", vmin=50, vmax=100)
    for i, j in zip(*np.nonzero(np.isfinite(acc)), strict=True):
        colour = "black" if acc[i, j] > 80 else "white"
        ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.set(title=f"{method} ({out['num_trained_params']:,} params)", xlabel="test on task")
    ax.set_ylabel("after training task")
fig.colorbar(image, ax=axes[-1], label="test accuracy (%)", fraction=0.046)
fig.suptitle("Split digits: accuracy matrices")
show(figures.save(fig, WORKDIR / "plots" / "accuracy_matrices.png"))

# %% [markdown]
# ## Final accuracy per task
#
# The last row of each matrix, and its summary: the mean final accuracy and the backward
# transfer `BWT = mean_{j < T-1} (A[T-1][j] - A[j][j])`, how much each earlier task lost (in
# percentage points) between the end of its own training and the end of the sequence
# (`continual.accuracy_summary` computes both from a matrix).

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
width = 0.8 / len(runs)
for k, (method, (out, _)) in enumerate(runs.items()):
    x = np.arange(T) + (k - (len(runs) - 1) / 2) * width
    ax.bar(x, 100 * np.array(out["final_accuracies"]), width, label=method)
ax.set_xticks(range(T), [f"task {t}\n{2 * t} vs {2 * t + 1}" for t in range(T)])
ax.axhline(50, color="grey", lw=0.8, ls=":")  # chance: two classes per task
ax.set(ylabel="final test accuracy (%)", ylim=(0, 118))
ax.legend(loc="upper center", ncol=len(runs), fontsize=8)
ax.set_title("After the last task")
show(figures.save(fig, WORKDIR / "plots" / "final_accuracy.png"))


def summary_row(label, out):
    s = continual.accuracy_summary(np.array(out["accuracy_matrix"], dtype=float))
    return (
        f"{label:<14} {100 * s['mean_final_accuracy']:>11.1f} %   {100 * s['bwt']:+9.1f} pp  "
        f"{out['num_trained_params']:>14,}"
    )


print(f"{'method':<14} {'mean final':>13}   {'BWT':>11}  {'trained params':>14}")
for method, (out, _) in runs.items():
    print(summary_row(method, out))

# %% [markdown]
# ## What the regulariser does
#
# The same `hnet` run with `beta = 0` has no regulariser: only the frozen embedding of task 0
# remembers it, and the hypernetwork's weights move freely for the later tasks. Left, how far the
# weights generated for task 0 moved from those at the end of task 0 (L2 distance relative to
# their norm), after each later task; `finetune`'s one network for reference. Right, task 0's
# test accuracy at the same points (the first column of the accuracy matrices). With 300 steps
# per task (seed 0), `beta = 0.1` keeps task 0's weights within 13 % of their norm and its accuracy
# at 100 %; with `beta = 0` they move further than fine-tuning's network, and task 0 falls to
# 67 % (fine-tuning: 58 %).

# %%
runs["hnet, beta 0"] = train("hnet_beta0", config("hnet", beta=0.0))
print(summary_row("hnet, beta 0", runs["hnet, beta 0"][0]))

beta = config("hnet").hnet.beta
shown = {
    f"hnet, beta {beta:g}": runs["hnet"],
    "hnet, beta 0": runs["hnet, beta 0"],
    "finetune": runs["finetune"],
}
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
for (label, (out, task0)), style in zip(shown.items(), ("o-", "s-", "^--"), strict=True):
    moved = np.linalg.norm(task0 - task0[0], axis=1) / np.linalg.norm(task0[0])
    left.plot(range(T), moved, style, label=label)
    first = [100 * row[0] for row in out["accuracy_matrix"]]
    right.plot(range(T), first, style, label=label)
    print(f"{label}: task 0's weights moved by {', '.join(f'{m:.3f}' for m in moved[1:])}")
left.set(xlabel="after training task", ylabel="distance from end of task 0\n(relative to its norm)")
left.set_title("How far task 0's weights moved")
right.set(xlabel="after training task", ylabel="task 0 test accuracy (%)")
right.set_title("Task 0's accuracy")
for ax in (left, right):
    ax.set_xticks(range(T))
    ax.legend(fontsize=8)
show(figures.save(fig, WORKDIR / "plots" / "regulariser.png"))

# %% [markdown]
# ## Where next
#
# - The same runs from the command line: `uhn-jax continual --config
#   configs/continual.py:split,digits[,finetune|separate] --workdir runs/cl/<name>`, which prints
#   the matrix above (`continual.format_results`); `--config.hnet.beta=...` changes beta.
# - `permuted,digits` and the MNIST variants (`split,mnist`, `permuted,mnist`) are in the same
#   config; `continual.evaluate_task` scores one task of a loaded state
#   ([docs/continual.md](../docs/continual.md)).
