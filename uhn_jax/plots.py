"""Figures from run directories: curves over seeds, weights, initialisation fit, sizes, kernels.

Every training run writes ``metrics.jsonl`` (one JSON object per logged step), ``results.json``
and ``config.json`` to its workdir. :func:`plot_workdir` turns a workdir into PNG figures:

* a ``uhn-jax compare`` workdir (``compare.json``): one curve per mode (``direct``, ``uhn``,
  ``direct_matched``, ...), averaged over its seeds ``{mode}_seed{seed}/``, and histograms of
  the generated weights against the directly trained ones;
* a directory of ``uhn-jax train`` run dirs: one curve per base model (``results["model"]``),
  and test metric against the generator/target parameter ratio;
* a single run dir: its own curves;
* a directory of compare workdirs: each one's figures, and the ratio figure across them;

and, from any run that wrote them, ``init_fit.json`` as generated against target std per
tensor and a model set's per-member metric against parameter count.

Curves over several seeds are drawn as the mean with a shaded min-max band, on the steps every
seed logged. matplotlib is imported inside the functions (Agg backend, no display needed), so
importing this module costs nothing. The command ``uhn-jax plot --workdir W [--out DIR]``
calls :func:`plot_workdir`. The figures drawn from plain data live in
:mod:`uhn_jax.analysis.run_figures` and are re-exported here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.analysis import continual_figures, figures, run_figures

#: Per-tensor histograms of params pytrees (:func:`uhn_jax.analysis.run_figures.weight_histograms`).
weight_histograms = run_figures.weight_histograms
#: ``init_fit.json``'s std per tensor (:func:`uhn_jax.analysis.run_figures.init_fit_plot`).
init_fit_plot = run_figures.init_fit_plot
#: Metric against parameter ratio (:func:`uhn_jax.analysis.run_figures.ratio_scatter`).
ratio_scatter = run_figures.ratio_scatter

#: Keys of a training log line that are not the training metric.
_LOG_KEYS = frozenset({"step", "stage", "loss", "grad_norm", "steps_per_s", "lr"})


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged lines of a run, in file order.

    Args:
      run_dir: a run directory holding ``metrics.jsonl``.

    Returns:
      One dict per non-blank line of ``run_dir/metrics.jsonl``.

    Raises:
      FileNotFoundError: ``metrics.jsonl`` does not exist.
      ValueError: a line is not a JSON object (the message names the file and line number).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir} (looked for {path})")
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e.msg}): {line[:80]!r}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {line[:80]!r}")
        lines.append(row)
    return lines


def _series(run_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` in a run's log, sorted by step: initialisation-stage lines
    (``stage`` ``init``, ``init<d>``) and non-finite or non-numeric values are left out, and a
    step logged twice keeps its last value."""
    by_step = {}
    for row in read_metrics(run_dir):
        if str(row.get("stage", "")).startswith("init") or "step" not in row:
            continue
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            by_step[int(row["step"])] = float(value)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _mean_band(
    runs: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and min-max band of several seeds' curves on the steps all of them logged.

    Args:
      runs: ``(steps, values)`` per seed, each ``steps`` sorted and without repeats.

    Returns:
      ``(steps, mean, lo, hi)``: the steps every run has, and the mean, minimum and maximum
      over runs at those steps (all three equal for a single run).

    Raises:
      ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("_mean_band needs at least one run")
    shared = runs[0][0]
    for steps, _ in runs[1:]:
        shared = np.intersect1d(shared, steps)
    stacked = np.stack([values[np.isin(steps, shared)] for steps, values in runs])
    return shared, stacked.mean(axis=0), stacked.min(axis=0), stacked.max(axis=0)


def _draw_group(ax, label: str, found: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Draws one legend entry of :func:`curves`: the seeds' mean and min-max band (an error bar
    when they share a single step; each seed as a thin line when they share none).

    Returns:
      Whether every drawn value is positive (a log scale can show them).
    """
    n = len(found)
    name = f"{label} ({n} seeds)" if n > 1 else label
    steps, mean, lo, hi = _mean_band(found)
    if not len(steps):
        color = None
        for i, (s, v) in enumerate(found):
            text = f"{name}, no shared step" if i == 0 else "_nolegend_"
            (line,) = ax.plot(s, v, lw=0.8, color=color, label=text)
            color = line.get_color()
        return all(bool((v > 0).all()) for _, v in found)
    marker = "o" if len(steps) <= 20 else None
    (line,) = ax.plot(steps, mean, marker=marker, markersize=3, label=name)
    if n > 1 and len(steps) == 1:  # one shared step (e.g. only a final evaluation)
        err = [mean - lo, hi - mean]
        ax.errorbar(steps, mean, yerr=err, color=line.get_color(), capsize=4, fmt="none")
    elif n > 1:
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return bool((lo > 0).all())


def curves(
    groups: dict[str, list[Path]],
    key: str,
    out: str | Path,
    *,
    title: str | None = None,
    ylabel: str | None = None,
    logy: bool = False,
) -> Path:
    """Plots metric ``key`` against step, one line per group, and saves a PNG.

    A group with several runs (seeds) is drawn as their mean with a shaded min-max band, on
    the steps every run logged; runs without ``key`` are left out of their group, and groups
    with none are left out of the figure. Initialisation-stage lines are skipped.

    Args:
      groups: legend label -> run directories (each holding ``metrics.jsonl``).
      key: the logged value to plot, e.g. ``"loss"``, ``"accuracy"``, ``"test_accuracy"``.
      out: the PNG to write (parent directories are created).
      title: figure title (none by default).
      ylabel: y-axis label (default ``key``).
      logy: log-scale y axis, when every plotted value is positive.

    Returns:
      ``out`` as a :class:`~pathlib.Path`.

    Raises:
      ValueError: no run of any group logged ``key``.
    """
    series = {}
    for label, runs in groups.items():
        found = [s for s in (_series(Path(r), key) for r in runs) if len(s[0])]
        if found:
            series[label] = found
    if not series:
        names = ", ".join(groups) or "none"
        raise ValueError(f"no run logged {key!r} (groups: {names})")
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    positive = True
    for label, found in series.items():
        positive = _draw_group(ax, label, found) and positive
    if logy and positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return figures.save(fig, out)


def kernel_image(kernel_HWIO, out: str | Path, *, title: str | None = None) -> Path:
    """Draws a conv kernel's filters as one grey image (:func:`~uhn_jax.hypernets.static.
    kernel_grid`: row block = input channel, column block = output channel, mid-grey = 0) and
    saves a PNG.

    Args:
      kernel_HWIO: a conv kernel ``(f, f, N_in, N_out)`` (NumPy or JAX array).
      out: the PNG to write (parent directories are created).
      title: figure title (none by default).

    Returns:
      ``out`` as a :class:`~pathlib.Path`.
    """
    from uhn_jax.hypernets.static import kernel_grid

    grid = kernel_grid(kernel_HWIO)
    rows, cols = grid.shape
    scale = 6.0 / max(rows, cols)  # inches per pixel: the longer side is 6 inches
    size = (max(cols * scale, 1.5), max(rows * scale, 1.5) + (0.4 if title else 0.0))
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=120)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return figures.save(fig, out)


def kernel_figures(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draws every conv kernel of a run's latest checkpoint (generated, for a hypernetwork
    kind) with :func:`kernel_image`, as ``kernel_<path>.png``.

    Args:
      run_dir: a run directory with ``config.json`` and checkpoints; its dataset must be
        loadable (the model is rebuilt from the config).
      out_dir: where to write.

    Returns:
      The paths written (none when the model has no 4-D kernel).
    """
    import jax

    from uhn_jax.training import experiments

    exp, params = experiments.load_model_params(run_dir)
    written = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if getattr(leaf, "ndim", 0) != 4:
            continue
        name = "_".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        title = f"{exp.mode} {name} {tuple(leaf.shape)}"
        written.append(kernel_image(leaf, Path(out_dir) / f"kernel_{name}.png", title=title))
    return written


def _read_json(path: Path) -> Any:
    """The parsed JSON file, or None if it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def _metric_name(run_dir: Path) -> str | None:
    """A run's metric name: ``results.json``'s ``metric_name``, or for a run still training the
    one non-bookkeeping key of its first training log line (None if there is none)."""
    results = _read_json(run_dir / "results.json")
    if results and "metric_name" in results:
        return results["metric_name"]
    for row in read_metrics(run_dir):
        if "stage" in row and not str(row["stage"]).startswith("init"):
            names = [k for k in row if k not in _LOG_KEYS and not k.startswith("test_")]
            return names[0] if len(names) == 1 else None
    return None


def _compare_groups(workdir: Path) -> dict[str, list[Path]]:
    """Mode -> run dirs of a ``uhn-jax compare`` workdir, in ``compare.json``'s order."""
    groups: dict[str, list[Path]] = {}
    for row in json.loads((workdir / "compare.json").read_text()):
        groups.setdefault(row["mode"], []).append(workdir / f"{row['mode']}_seed{row['seed']}")
    return groups


def _model_groups(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Base model -> run dirs, for a directory of ``uhn-jax train`` runs. The label is
    ``results["model"]`` (for a run still training, from its ``config.json``, else the directory
    name without ``_seed<n>``),
    with the mode added when the runs do not all share one mode."""
    info = []
    for run in run_dirs:
        results = _read_json(run / "results.json") or _describe_config(run)
        model = results.get("model") or re.sub(r"_seed\d+$", "", run.name)
        info.append((run, model, results.get("mode")))
    mixed = len({mode for _, _, mode in info}) > 1
    groups: dict[str, list[Path]] = {}
    for run, model, mode in info:
        groups.setdefault(f"{model} [{mode}]" if mixed and mode else model, []).append(run)
    return groups


def _describe_config(run: Path) -> dict[str, Any]:
    """``{model, mode}`` of a run still training, from its ``config.json`` (empty if none)."""
    cfg = _read_json(run / "config.json")
    if not cfg:
        return {}
    from uhn_jax import config as config_lib
    from uhn_jax.training import results

    try:
        exp = config_lib.from_config_dict(cfg)
    except ValueError:
        return {}
    return {"model": results.describe_model(exp), "mode": exp.mode}


def _find_groups(workdir: Path) -> dict[str, list[Path]]:
    """The curves' groups of a compare workdir, a single run dir or a directory of run dirs."""
    if (workdir / "compare.json").is_file():
        return _compare_groups(workdir)
    if (workdir / "metrics.jsonl").is_file():
        results = _read_json(workdir / "results.json") or {}
        return {results.get("mode") or workdir.name: [workdir]}
    run_dirs = sorted(p.parent for p in workdir.glob("*/metrics.jsonl"))
    if run_dirs:
        return _model_groups(run_dirs)
    raise FileNotFoundError(
        f"nothing to plot in {workdir}: no compare.json, metrics.jsonl, */metrics.jsonl or "
        "*/compare.json (run `uhn-jax train` or `uhn-jax compare` with this --workdir first)"
    )


def _title(runs: list[Path]) -> str:
    """``"dataset, model"`` from the runs' ``results.json`` (each part only when shared)."""
    results = [r for r in (_read_json(run / "results.json") for run in runs) if r]
    parts = []
    for field in ("dataset", "model"):
        values = {r.get(field) for r in results}
        if len(values) == 1 and None not in values:
            parts.append(str(values.pop()))
    return ", ".join(parts)


def weight_comparison(compare_dir: str | Path, out: str | Path) -> Path | None:
    """Per-tensor histograms (:func:`weight_histograms`) of a ``uhn-jax compare`` workdir's
    generated weights (its hypernetwork kind, e.g. ``uhn``) against the directly trained
    model's, for the first seed both modes have a checkpoint of.

    Args:
      compare_dir: a workdir holding ``compare.json``; its data must be loadable (both models
        are rebuilt from their ``config.json``, with :func:`~uhn_jax.training.experiments.
        load_model_params`).
      out: the PNG to write.

    Returns:
      ``out``, or None when no seed has checkpoints of both ``direct`` and a kind.
    """
    from uhn_jax.training import experiments

    compare_dir = Path(compare_dir)
    groups = _compare_groups(compare_dir)
    kinds = [m for m in groups if m not in ("direct", "direct_matched")]
    if "direct" not in groups or not kinds:
        return None
    for direct_run in groups["direct"]:
        seed = direct_run.name.rsplit("_seed", 1)[1]
        kind_run = compare_dir / f"{kinds[0]}_seed{seed}"
        if not all((r / "checkpoints").is_dir() for r in (direct_run, kind_run)):
            continue
        weights = {
            "direct (trained)": experiments.load_model_params(direct_run)[1],
            f"{kinds[0]} (generated)": experiments.load_model_params(kind_run)[1],
        }
        context = _title([direct_run, kind_run])
        title = f"{context + ', ' if context else ''}seed {seed}: trained and generated weights"
        return weight_histograms(weights, out, title=title)
    return None


def plot_workdir(
    workdir: str | Path,
    out_dir: str | Path | None = None,
    *,
    kernels: bool = False,
    weights: bool = True,
) -> list[Path]:
    """Writes the figures of a workdir's runs as PNGs.

    The runs are grouped by mode in a ``uhn-jax compare`` workdir (``compare.json``), by base
    model in a directory of run dirs, and form one group in a single run dir. For each metric
    name ``m`` of the runs it writes ``train_<m>.png`` (the training-batch metric),
    ``test_<m>.png`` (the evaluations ``test_<m>``, when any run logged one) and, once,
    ``loss.png`` (training loss, log scale); then those of :func:`result_figures`
    (initialisation fit, model-set members, parameter ratio) and, for a compare workdir,
    ``weights.png`` (:func:`weight_comparison`). A directory of compare workdirs
    (``*/compare.json``) gets each one's figures in ``out_dir/<name>/`` and ``ratio.png``
    across all of their runs.

    Args:
      workdir: the compare workdir, run dir, directory of run dirs or of compare workdirs.
      out_dir: where to write (default ``workdir/plots``).
      kernels: also draw the conv kernels of each group's first run (:func:`kernel_figures`)
        into ``out_dir/<group>/``; this rebuilds the model, so it needs the run's data.
      weights: draw ``weights.png`` of a compare workdir (:func:`weight_comparison`); this
        rebuilds two models, so it needs the runs' data.

    Returns:
      The paths written.

    Raises:
      FileNotFoundError: ``workdir`` holds no run to plot.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"no such workdir: {workdir}")
    out_dir = Path(out_dir) if out_dir is not None else workdir / "plots"
    try:
        groups = _find_groups(workdir)
    except FileNotFoundError:
        subdirs = sorted(p.parent for p in workdir.glob("*/compare.json"))
        if not subdirs:
            raise
        written = []
        for sub in subdirs:
            written += plot_workdir(sub, out_dir / sub.name, kernels=kernels, weights=weights)
        rows = [_read_json(p) for p in sorted(workdir.glob("*/*/results.json"))]
        return written + _ratio_figure(rows, out_dir / "ratio.png")
    written = _curve_figures(workdir, groups, out_dir)
    written += result_figures(groups, out_dir)
    if weights and (workdir / "compare.json").is_file():
        written += [p for p in [weight_comparison(workdir, out_dir / "weights.png")] if p]
    if kernels:
        for label, group in groups.items():
            if (group[0] / "checkpoints").is_dir():
                written += kernel_figures(group[0], out_dir / _safe(label))
    return written


def _curve_figures(workdir: Path, groups: dict[str, list[Path]], out_dir: Path) -> list[Path]:
    """The training and test curves of :func:`plot_workdir`.

    Raises:
      FileNotFoundError: the runs logged no metric yet.
    """
    runs = [run for group in groups.values() for run in group]
    context = _title(runs)
    prefix = f"{context}: " if context else ""
    plots = []  # (file name, key, title, log scale)
    for name in dict.fromkeys(m for m in map(_metric_name, runs) if m):
        plots.append((f"train_{name}", name, f"training {name}", False))
        plots.append((f"test_{name}", f"test_{name}", f"test {name}", False))
    plots.append(("loss", "loss", "training loss", True))
    written = []
    for file, key, what, logy in plots:
        if any(len(_series(run, key)[0]) for run in runs):
            out = out_dir / f"{file}.png"
            written.append(curves(groups, key, out, title=prefix + what, logy=logy))
    if not written:
        raise FileNotFoundError(f"nothing to plot in {workdir}: its runs logged no metric yet")
    return written


def result_figures(groups: dict[str, list[Path]], out_dir: str | Path) -> list[Path]:
    """The figures of the files runs write besides their logs, for each group's first run
    that wrote one: ``init_fit.png`` (:func:`init_fit_plot`) and ``members.png`` (a model
    set's test metric against parameter count,
    :func:`uhn_jax.training.members.plot_members`), each named ``<figure>_<group>.png`` when
    several groups have one; ``accuracy_matrix_<benchmark>_<dataset>.png`` of continual runs
    (:func:`uhn_jax.analysis.continual_figures.write_figures`); and ``ratio.png``
    (:func:`ratio_scatter`) over every run when the runs have two or more generator/target
    ratios.

    Args:
      groups: legend label -> run directories, as :func:`plot_workdir` groups them.
      out_dir: where to write.

    Returns:
      The paths written.
    """
    from uhn_jax.training import members

    out_dir = Path(out_dir)
    runs = [run for group in groups.values() for run in group]
    written = []
    fits = _first_with(groups, lambda run: _read_json(run / "init_fit.json"))
    for label, (run, fit) in fits.items():
        out = out_dir / _figure_name("init_fit", label, fits)
        title = f"{_title([run]) or run.name} ({run.name}): initialisation fit"
        written.append(init_fit_plot(fit, out, title=title))
    sets = _first_with(groups, lambda run: (_read_json(run / "results.json") or {}).get("members"))
    for label, (run, rows) in sets.items():
        out = out_dir / _figure_name("members", label, sets)
        results = _read_json(run / "results.json")
        title = f"{_title([run])} ({run.name})"
        written.append(members.plot_members(rows, results["metric_name"], out, title=title))
    rows = [_read_json(run / "results.json") for run in runs]
    written += continual_figures.write_figures(rows, out_dir)
    return written + _ratio_figure(rows, out_dir / "ratio.png")


def _first_with(groups: dict[str, list[Path]], read) -> dict[str, tuple[Path, Any]]:
    """Label -> ``(run, read(run))`` of each group's first run where ``read`` is truthy."""
    found = {}
    for label, runs in groups.items():
        for run in runs:
            value = read(run)
            if value:
                found[label] = (run, value)
                break
    return found


def _figure_name(stem: str, label: str, found: dict) -> str:
    """``<stem>.png``, or ``<stem>_<label>.png`` when several groups have the figure."""
    return f"{stem}.png" if len(found) == 1 else f"{stem}_{_safe(label)}.png"


def _ratio_figure(rows: list[Any], out: Path) -> list[Path]:
    """``[ratio_scatter(...)]`` when the ``results.json`` dicts ``rows`` hold two or more
    distinct generator/target ratios, else ``[]``."""
    rows = [r for r in rows if isinstance(r, dict)]
    if len({run_figures.param_ratio(r) for r in rows} - {None}) < 2:
        return []
    return [ratio_scatter(rows, out)]


def _safe(label: str) -> str:
    """A group label as a directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"
