"""Figures and tables of continual-learning runs (``uhn-jax continual``): the accuracy matrix of
every method, averaged over seeds, and the summary table of mean final accuracy and backward
transfer.

The inputs are ``results.json`` dicts of :func:`uhn_jax.training.continual.run`; rows are
grouped by ``(benchmark, dataset)`` and, within a group, by method (``mode``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.analysis import figures

#: Methods in the order the figures and tables show them (others follow, sorted).
METHOD_ORDER = ("hnet", "hnet_uhn", "separate", "ewc", "finetune")


def is_continual(row: Any) -> bool:
    """Whether a ``results.json`` dict is a finished continual run."""
    return isinstance(row, Mapping) and row.get("accuracy_matrix") is not None


def group_runs(rows: Sequence[Any]) -> dict[tuple[str, str], dict[str, list[Mapping]]]:
    """``{(benchmark, dataset): {method: [results, ...]}}`` of the finished continual runs among
    ``rows``, methods in :data:`METHOD_ORDER`."""
    groups: dict[tuple[str, str], dict[str, list[Mapping]]] = {}
    for row in filter(is_continual, rows):
        key = (str(row.get("benchmark", "?")), str(row.get("dataset", "?")))
        groups.setdefault(key, {}).setdefault(str(row.get("mode", "?")), []).append(row)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return {
        key: dict(sorted(methods.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
        for key, methods in groups.items()
    }


def mean_matrix(runs: Sequence[Mapping]) -> np.ndarray:
    """The runs' accuracy matrices averaged over seeds, in %; NaN where a task was not yet
    seen (``None`` in ``results.json``).

    Raises:
      ValueError: the runs' matrices differ in shape (different numbers of tasks).
    """
    mats = [np.array(r["accuracy_matrix"], dtype=float) for r in runs]
    if len({m.shape for m in mats}) != 1:
        raise ValueError(
            f"accuracy matrices of different shapes {sorted({m.shape for m in mats})}: "
            "the runs do not share a task sequence"
        )
    return 100 * np.mean(mats, axis=0)


def accuracy_matrices(
    methods: Mapping[str, Sequence[Mapping]], out: str | Path, *, title: str = ""
) -> Path:
    """One heatmap per method (row ``i``: test accuracy on every task after training task
    ``i``), each the mean over the method's seeds, annotated in %.

    Args:
      methods: method -> its runs' ``results.json`` dicts (e.g. a value of
        :func:`group_runs`).
      out: the PNG to write.
      title: the figure title.

    Returns:
      ``out`` as a :class:`~pathlib.Path`.
    """
    if not methods:
        raise ValueError("accuracy_matrices: no method to draw")
    plt = figures.pyplot()
    n = len(methods)
    fig, axes = plt.subplots(
        1, n, figsize=(3.3 * n + 0.8, 3.6), squeeze=False, layout="constrained"
    )
    image = None
    for ax, (method, runs) in zip(axes[0], methods.items(), strict=True):
        acc = mean_matrix(runs)
        t = acc.shape[0]
        image = ax.imshow(acc, cmap="viridis", vmin=50, vmax=100)
        if t <= 12:
            for i, j in zip(*np.nonzero(np.isfinite(acc)), strict=True):
                colour = "black" if acc[i, j] > 80 else "white"
                ax.text(
                    j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour
                )
        ax.set_xticks(range(t))
        ax.set_yticks(range(t))
        seeds = f", {len(runs)} seeds" if len(runs) > 1 else ""
        ax.set_title(f"{method}{seeds}", fontsize=9)
        ax.set_xlabel("test on task")
    axes[0][0].set_ylabel("after training task")
    fig.colorbar(image, ax=list(axes[0]), label="test accuracy (%)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return figures.save(fig, out)


def summary_table(methods: Mapping[str, Sequence[Mapping]]) -> str:
    """Markdown table: method, seeds, mean final accuracy and BWT (mean ± std over seeds, in %
    and pp) and trained parameters."""
    lines = [
        "| method | seeds | mean final accuracy | BWT | trained params |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, runs in methods.items():
        acc = 100 * np.array([r["mean_final_accuracy"] for r in runs])
        bwt = 100 * np.array([r["bwt"] for r in runs])
        spread = len(runs) > 1
        lines.append(
            f"| {method} | {len(runs)} | {_pm(acc, spread)} % | {_pm(bwt, spread, '+')} pp "
            f"| {runs[0].get('num_trained_params', 0):,} |"
        )
    return "\n".join(lines)


def _pm(values: np.ndarray, spread: bool, sign: str = "") -> str:
    mean = f"{values.mean() + 0.0:{sign}.2f}"
    return f"{mean} ± {values.std(ddof=1):.2f}" if spread else mean


def write_figures(rows: Sequence[Any], out_dir: str | Path) -> list[Path]:
    """``accuracy_matrix_<benchmark>_<dataset>.png`` for every group of continual runs among
    ``rows`` (``results.json`` dicts); ``[]`` when there is none."""
    written = []
    for (benchmark, dataset), methods in group_runs(rows).items():
        out = Path(out_dir) / f"accuracy_matrix_{benchmark}_{dataset}.png"
        title = f"{benchmark.capitalize()}-{dataset}: accuracy matrices (mean over seeds)"
        written.append(accuracy_matrices(methods, out, title=title))
    return written
