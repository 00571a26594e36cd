"""PNG figures of runs' weights and sizes: per-tensor weight histograms, the initialisation
stage's fit (``init_fit.json``) and test metric against the generator/target parameter ratio.

Each function draws one figure from plain data (params pytrees, ``init_fit.json`` rows,
``results.json`` dicts), saves it with :func:`uhn_jax.analysis.figures.save` and returns the
path; :mod:`uhn_jax.plots` finds that data in run directories. matplotlib is imported only when
a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.analysis import figures


def tensors(params) -> dict[str, np.ndarray]:
    """The leaves of a params pytree as flat float64 arrays, by ``/``-joined path
    (``layer_000/kernel``, the names of ``init_fit.json``), in tree order."""
    import jax

    def key_name(k) -> str:
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    return {
        "/".join(key_name(k) for k in path): np.asarray(leaf, np.float64).ravel()
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


def _grid(plt, panels: int, cols: int, width: float = 3.2, height: float = 2.4):
    """A figure with ``panels`` axes on ``cols`` columns; the unused axes are hidden."""
    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:panels]


def weight_histograms(
    weights: Mapping[str, Any],
    out: str | Path,
    *,
    title: str | None = None,
    bins: int = 50,
    max_tensors: int = 24,
) -> Path:
    """One panel per tensor: a histogram of each entry of ``weights`` on shared bins, e.g. a
    UHN run's generated weights against the directly trained model's.

    Args:
      weights: legend label -> params pytree (all with the same tensors, e.g.
        ``{"direct (trained)": p_direct, "uhn (generated)": p_uhn}``).
      out: the PNG to write (parent directories are created).
      title: figure title (none by default).
      bins: histogram bins per panel.
      max_tensors: the panels drawn: the first ``max_tensors`` tensors of the first pytree in
        tree order (the title says how many were left out).

    Returns:
      ``out`` as a :class:`~pathlib.Path`.

    Raises:
      ValueError: ``weights`` is empty or its pytrees share no tensor.
    """
    if not weights:
        raise ValueError("weights must hold at least one params pytree")
    flat = {label: tensors(params) for label, params in weights.items()}
    names = [n for n in next(iter(flat.values())) if all(n in t for t in flat.values())]
    if not names:
        raise ValueError(f"the params of {', '.join(weights)} share no tensor path")
    shown = names[:max_tensors]
    plt = figures.pyplot()
    fig, axes = _grid(plt, len(shown), cols=3)
    for ax, name in zip(axes, shown, strict=True):
        values = [flat[label][name] for label in flat]
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for label, v in zip(flat, values, strict=True):
            ax.hist(v, bins=edges, histtype="step", linewidth=1.2, density=True, label=label)
        ax.set_title(f"{name} ({values[0].size:,})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    axes[0].legend(fontsize=7)
    left_out = len(names) - len(shown)
    suffix = f" (first {len(shown)} of {len(names)} tensors)" if left_out else ""
    if title or suffix:
        fig.suptitle((title or "weights") + suffix)
    return figures.save(fig, out)


def init_fit_plot(
    fit: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    out: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Generated std against the target std per tensor, from ``init_fit.json``: one row per
    tensor (layout order, top to bottom) with the target as a black tick and the generated std
    as a dot joined to it, on a log scale spanning at least a decade. Dots more than 50 % off
    target (the tensors the run warned about, :func:`uhn_jax.training.results.poorly_fit`)
    are red.

    Args:
      fit: the rows of ``init_fit.json`` (``tensor``, ``std``, ``target_std``, ...), or a
        dict of them by task name (a multi-task run: one panel per task).
      out: the PNG to write (parent directories are created).
      title: figure title (default ``"initialisation fit"``).

    Returns:
      ``out`` as a :class:`~pathlib.Path`.

    Raises:
      ValueError: ``fit`` holds no row.
    """
    from uhn_jax.training import results

    panels = dict(fit) if isinstance(fit, Mapping) else {"": list(fit)}
    if not any(panels.values()):
        raise ValueError("init_fit rows are empty: nothing to draw")
    tallest = max(len(rows) for rows in panels.values())
    plt = figures.pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 1.6 + 0.3 * tallest), squeeze=False
    )
    for ax, (task, rows) in zip(axes[0], panels.items(), strict=True):
        bad = {r["tensor"] for r in results.poorly_fit(list(rows))}
        std = np.array([r["std"] for r in rows])
        target = np.array([r["target_std"] for r in rows])
        y = np.arange(len(rows))
        off = np.array([r["tensor"] in bad for r in rows])
        ax.hlines(y, np.minimum(std, target), np.maximum(std, target), color="0.75", zorder=1)
        ax.scatter(target, y, marker="|", s=200, color="k", label="target std", zorder=2)
        if not off.all():
            ax.scatter(std[~off], y[~off], color="tab:blue", label="generated std", zorder=3)
        if off.any():
            ax.scatter(std[off], y[off], color="tab:red", label="generated, > 50 % off", zorder=3)
        _log_decade(ax, np.concatenate([std, target]))
        ax.set_yticks(y, [r["tensor"] for r in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("std")
        name = f"task {task}: " if task else ""
        ax.set_title(f"{name}{len(bad)} of {len(rows)} tensors off target by > 50 %", fontsize=10)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    fig.suptitle(title or "initialisation fit")
    return figures.save(fig, out)


def _log_decade(ax, values: np.ndarray) -> None:
    """A log x axis around ``values`` spanning at least a factor 10, so small relative errors
    look small (a linear axis when some value is not positive)."""
    if not (values > 0).all():
        return
    lo, hi = float(values.min()), float(values.max())
    if hi / lo < 10:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / math.sqrt(10), mid * math.sqrt(10)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.2, hi * 1.2)
    _plain_log_ticks(ax.xaxis)


def _plain_log_ticks(axis) -> None:
    """Ticks at 1, 2 and 5 times the powers of ten of a log axis, written as plain numbers."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def param_ratio(row: Mapping[str, Any]) -> float | None:
    """Generator over target parameters of a run's ``results.json`` dict
    (:func:`uhn_jax.training.results.generator_target_ratio`), or None for a run that trains
    no generator, e.g. direct training, or lacks the counts or a test metric."""
    from uhn_jax.training import results

    if row.get("test_metric") is None:
        return None
    return results.generator_target_ratio(row)


def ratio_scatter(
    rows: Sequence[Mapping[str, Any]],
    out: str | Path,
    *,
    title: str | None = None,
    baseline: float | None = None,
    baseline_label: str = "direct",
    label_key: str = "model",
) -> Path:
    """Test metric against the generator/target parameter ratio (log scale), one point per
    hypernetwork run labelled with its base model, one colour per ``(dataset, mode)``.

    Args:
      rows: ``results.json`` dicts; runs without a generator (``num_generator_params`` 0,
        e.g. direct training) are left out, and so are runs reporting another metric than
        the most common one.
      out: the PNG to write (parent directories are created).
      title: figure title (default: the metric and, when the runs share it, the dataset).
      baseline: a test metric drawn as a dashed horizontal line, e.g. the base model trained
        directly (none by default).
      baseline_label: the legend entry of ``baseline``.
      label_key: the key of each row whose value labels its point (the base model by default).

    Returns:
      ``out`` as a :class:`~pathlib.Path`.

    Raises:
      ValueError: no row is a hypernetwork run with a test metric.
    """
    rows = [r for r in rows if param_ratio(r) is not None]
    if not rows:
        raise ValueError("no run with a generator (num_generator_params > 0) and a test metric")
    names = [r.get("metric_name", "accuracy") for r in rows]
    metric = max(set(names), key=names.count)
    rows = [r for r, n in zip(rows, names, strict=True) if n == metric]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r.get('dataset', '?')}, {r.get('mode', '?')}", []).append(r)
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in groups.items():
        x = [param_ratio(r) for r in group]
        y = [r["test_metric"] for r in group]
        ax.scatter(x, y, label=label, alpha=0.8)
        for r, xi, yi in zip(group, x, y, strict=True):
            ax.annotate(
                str(r.get(label_key, "")),
                (xi, yi),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
                alpha=0.7,
            )
    if baseline is not None:
        ax.axhline(baseline, color="0.3", linestyle="--", linewidth=1, label=baseline_label)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.margins(x=0.15, y=0.1)
    ax.set(xlabel="generator params / target params", ylabel=f"test {metric}")
    datasets = {r.get("dataset") for r in rows}
    shared = f"{datasets.pop()}: " if len(datasets) == 1 and None not in datasets else ""
    ax.set_title(title or f"{shared}test {metric} against generator size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return figures.save(fig, out)
