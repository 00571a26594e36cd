"""Multi-run orchestration: UHN-vs-direct comparisons over seeds and their tables; weight
export (from :mod:`uhn_jax.training.rebuild`)."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.training import rebuild, tasks, train
from uhn_jax.training import results as results_lib
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import workdir as workdir_lib


def format_results(results: dict[str, Any]) -> str:
    """One line summarising a ``results.json``."""
    return (
        f"{results['mode']:>6} {results['dataset']} {results['model']} seed {results['seed']}: "
        f"test {results['metric_name']} {results['test_metric']:.4f} "
        f"({results['num_target_params']:,} target params, {results['wall_s']:.1f} s)"
    )


def compare(
    exp: config_lib.Experiment,
    workdir: str | Path,
    seeds: int = 3,
    *,
    progress: bool = True,
    match_params: bool = False,
) -> str:
    """Runs direct training and ``exp.mode``'s kind (the UHN when ``exp.mode`` is ``direct``)
    for ``seeds`` seeds and returns a markdown table.

    With ``match_params``, a third row trains the base model directly with its widths scaled so
    that it has as many parameters as the kind trains (:func:`matched_widths`): the static model
    of equal parameter count.

    Runs go to ``workdir/{mode}_seed{seed}`` (each resumable; the matched model's to
    ``workdir/direct_matched_seed{seed}``); the table is also written to ``workdir/compare.md``
    and the per-run results to ``workdir/compare.json``.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    workdir = Path(workdir)
    dataset = tasks.load_dataset(exp)
    kind = "uhn" if exp.mode == "direct" else exp.mode
    runs = [(mode, dataclasses.replace(exp, mode=mode)) for mode in ("direct", kind)]
    rows = []
    for label, run_exp in runs + [("direct_matched", None)] * match_params:
        if run_exp is None:  # sized from the kind's runs, once they are done
            count = trained_params(rows[-1])
            model = dataclasses.replace(exp.model, widths=matched_widths(exp, dataset, count))
            run_exp = dataclasses.replace(exp, mode="direct", model=model)
        for seed in range(exp.seed, exp.seed + seeds):
            results = train.run(
                dataclasses.replace(run_exp, seed=seed),
                workdir / f"{label}_seed{seed}",
                dataset=dataset,
                progress=progress,
            )
            print(format_results(results), flush=True)
            rows.append({**results, "mode": label})
    table = comparison_table(rows)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "compare.md").write_text(table + "\n")
    (workdir / "compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    return table


def trained_params(results: dict[str, Any]) -> int:
    """Parameters a run trained, from its ``results.json``: the generator's (plus any trained
    directly beside it) for a hypernetwork kind, the base model's for direct training."""
    if results["mode"] == "direct":
        return results["num_target_params"]
    return results["num_generator_params"] + results.get("num_direct_params", 0)


def matched_widths(exp: config_lib.Experiment, dataset, count: int) -> tuple[int, ...]:
    """``exp.model.widths`` scaled by one factor so the base model has about ``count``
    parameters (the nearest of the counts found by bisection on the factor).

    Raises:
        ValueError: If ``exp.model`` has no widths to scale.
    """
    widths = exp.model.widths
    if not widths:
        raise ValueError(f"model.family={exp.model.family!r} has no model.widths to scale")

    def size(factor: float) -> tuple[int, tuple[int, ...]]:
        scaled = tuple(max(1, round(w * factor)) for w in widths)
        model = dataclasses.replace(exp.model, widths=scaled)
        desc = setup_lib.describe(dataclasses.replace(exp, mode="direct", model=model), dataset)
        return desc.layout.size, scaled

    lo, hi = 1.0 / max(widths), 1.0
    while size(hi)[0] < count:
        lo, hi = hi, 2 * hi
    best = min(size(lo), size(hi), key=lambda s: abs(s[0] - count))
    for _ in range(40):
        mid = (lo + hi) / 2
        n, scaled = size(mid)
        best = min(best, (n, scaled), key=lambda s: abs(s[0] - count))
        lo, hi = (mid, hi) if n < count else (lo, mid)
        if hi - lo < 0.5 / max(widths):
            break
    return best[1]


def format_metric(values: np.ndarray, rmse: bool, spread: bool = True) -> str:
    """Test metrics over seeds as ``mean ± std``: an RMSE as is, an accuracy in percent.
    ``spread=False`` shows the mean alone."""
    if rmse:
        return f"{values.mean():.4g}" + (f" ± {values.std():.2g}" if spread else "")
    v = 100 * values
    return f"{v.mean():.2f}" + (f" ± {v.std():.2f}" if spread else "") + " %"


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of mean ± std test metric per mode, with the gap of the hypernetwork
    kind (``uhn`` or another) to ``direct``.

    Accuracies are shown in percent with the gap in percentage points; an RMSE as is, with the
    kind / direct ratio. ``gen/target`` is generator over target parameters
    (:func:`uhn_jax.training.results.generator_target_ratio`; ``–`` without a generator).
    """
    metric = rows[0].get("metric_name", "accuracy")
    rmse = metric in ("rmse", "bpc")  # shown as they are, lower is better
    lines = [
        "| mode | dataset | model | target params | generator params | gen/target | seeds "
        f"| steps | test {metric} (mean ± std) | wall s / run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    means = {}
    first = ("direct", "direct_matched")
    for mode in (*first, *sorted({r["mode"] for r in rows} - set(first))):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        vals = np.array([r["test_metric"] for r in rs])
        means[mode] = vals.mean()
        r0 = rs[0]
        steps = f"{r0['init_steps']}+{r0['steps']}" if r0["init_steps"] else f"{r0['steps']}"
        shown = format_metric(vals, rmse)
        lines.append(
            f"| {mode} | {r0['dataset']} | {r0['model']} | {r0['num_target_params']:,} "
            f"| {r0['num_generator_params']:,} | {_ratio_cell([r0])} | {len(rs)} | {steps} "
            f"| {shown} | {np.mean([r['wall_s'] for r in rs]):.1f} |"
        )
    baselines = [b for b in ("direct", "direct_matched") if b in means]
    kinds = [m for m in means if m not in baselines]
    if baselines and kinds:
        lines.append("")
    for kind, base in ((k, b) for k in kinds for b in baselines):
        label = "UHN" if kind == "uhn" else kind
        if metric == "bpc":
            lines.append(f"{label} - {base}: {means[kind] - means[base]:+.3f} bpc")
        elif rmse:
            lines.append(f"{label} / {base} RMSE: {means[kind] / means[base]:.3f}")
        else:
            gap = round(100 * (means[kind] - means[base]), 2) + 0.0  # no "-0.00"
            lines.append(f"{label} - {base}: {gap:+.2f} pp")
    return "\n".join(lines)


def summarize(workdir: str | Path) -> str:
    """One row per ``compare`` run found under ``workdir`` (each subdirectory holding a
    ``compare.json``): direct and UHN test metric (mean ± std over seeds) and their gap.
    A ``workdir`` of plain ``train`` runs (subdirectories holding ``results.json``) gets
    :func:`runs_table` instead.

    Accuracies get the UHN - direct gap in percentage points and its mean over the rows; RMSEs
    get the UHN / direct ratio and the geometric mean of the ratios. The last column is the
    UHN's generator over target parameters (``–`` when the rows lack the counts).
    """
    workdir = Path(workdir)
    paths = sorted(workdir.glob("*/compare.json"))
    if not paths:
        runs = sorted(workdir.glob("*/results.json"))
        if runs:
            return runs_table([workdir_lib.read_json(p, train.RESULTS_FIX) for p in runs])
        raise FileNotFoundError(
            f"no */compare.json or */results.json under {workdir}; run `uhn-jax compare` or "
            "`uhn-jax train --workdir {workdir}/<run>` first"
        )
    lines, gaps, metric = [], [], None
    for path in paths:
        rows = workdir_lib.read_json(path, "Delete it and rerun the compare command.")
        metric = metric or rows[0]["metric_name"]
        if rows[0]["metric_name"] != metric:
            raise ValueError(f"{path} reports {rows[0]['metric_name']}, the others {metric}")
        stats = {}
        for mode in ("direct", "uhn"):
            vals = np.array([r["test_metric"] for r in rows if r["mode"] == mode])
            stats[mode] = (vals.mean(), vals.std(), len(vals)) if len(vals) else None
        if None in stats.values():
            continue
        r0 = rows[0]
        if metric == "rmse":
            gap = stats["uhn"][0] / stats["direct"][0]
            cells = [f"{m:.3g} ± {s:.1g}" for m, s, _ in stats.values()] + [f"{gap:.3f}"]
        else:
            gap = 100 * (stats["uhn"][0] - stats["direct"][0])
            cells = [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s, _ in stats.values()]
            cells.append(f"{gap:+.2f}")
        gaps.append(gap)
        uhn_rows = [r for r in rows if r["mode"] == "uhn"]
        lines.append(
            f"| {path.parent.name} | {r0['model']} | {r0['num_target_params']:,} "
            f"| {stats['uhn'][2]} | " + " | ".join(cells) + f" | {_ratio_cell(uhn_rows)} |"
        )
    unit = "UHN / direct" if metric == "rmse" else "UHN - direct (pp)"
    shown = "rmse" if metric == "rmse" else "accuracy %"
    head = [
        f"| run | model | params | seeds | direct {shown} | UHN {shown} | {unit} | gen/target |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    if metric == "rmse":
        summary = (
            f"geometric mean of UHN / direct over {len(gaps)}: {np.exp(np.mean(np.log(gaps))):.3f}"
        )
    else:
        summary = f"mean UHN - direct over {len(gaps)}: {np.mean(gaps):+.2f} pp"
    return "\n".join(head + lines + ["", summary])


def runs_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``train`` runs grouped by (mode, model, generator size): mean ± std of
    the test metric over seeds, with every pair's gap, e.g. the HyperLSTM against its same-size
    LSTM, and generator over target parameters (``–`` for runs without a generator). Groups of
    one mode and model with different generator sizes are labelled with their ratio.

    Raises:
        ValueError: If the runs report different metrics.
    """
    metrics = {r["metric_name"] for r in rows}
    if len(metrics) != 1:
        raise ValueError(f"the runs report different metrics: {sorted(metrics)}")
    metric = metrics.pop()
    lower = metric in ("rmse", "bpc")
    by_size: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["mode"], r["model"], _gen(r), r["seed"])):
        by_size.setdefault((r["mode"], r["model"], _gen(r)), []).append(r)
    sizes = collections.Counter((mode, model) for mode, model, _ in by_size)
    groups: dict[str, list[dict[str, Any]]] = {}
    for (mode, model, _), rs in by_size.items():
        label = model if mode == "direct" else f"{mode} {model}"
        groups[label + (f" ({_ratio_cell(rs)})" if sizes[mode, model] > 1 else "")] = rs
    lines = [
        f"| run | dataset | trained params | seeds | test {metric} (mean ± std) | per seed "
        "| gen/target |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    means = {}
    for label, rs in groups.items():
        vals = np.array([r["test_metric"] for r in rs])
        means[label] = vals.mean() if lower else 100 * vals.mean()
        per_seed = " / ".join(f"{v:.3f}" if lower else f"{100 * v:.2f}" for v in vals)
        lines.append(
            f"| {label} | {rs[0]['dataset']} | {trained_params(rs[0]):,} | {len(rs)} "
            f"| {format_metric(vals, lower)} | {per_seed} | {_ratio_cell(rs)} |"
        )
    unit = metric if lower else "pp"
    labels = list(means)
    gaps = [
        f"{a} - {b}: {means[a] - means[b]:+.3f} {unit}"
        for i, a in enumerate(labels)
        for b in labels[i + 1 :]
    ]
    return "\n".join(lines + ([""] + gaps if gaps else []))


def _gen(row: dict[str, Any]) -> int:
    return row.get("num_generator_params") or 0


def _ratio_cell(rows: list[dict[str, Any]]) -> str:
    """The generator/target ratio of ``rows`` (runs of one configuration) for a table cell:
    the first row's, or ``–``; recomputed from the counts, so older ``results.json`` show it."""
    ratio = results_lib.generator_target_ratio(rows[0]) if rows else None
    return results_lib.format_ratio(ratio)


# A run's model rebuilt from its workdir lives in :mod:`uhn_jax.training.rebuild`; these names
# stay here, where the commands and notebooks have always found them.
load_run = rebuild.load_run
load_model_params = rebuild.load_model_params
export = rebuild.export
