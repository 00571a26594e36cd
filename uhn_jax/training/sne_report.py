"""What an SNE experiment reports (:mod:`uhn_jax.training.sne`): ``results.json`` (the table
of task x method, every part's scores), the printed table and the scatter figure.

``results.json`` (``format`` ``uhn_jax.sne_results``, version 1): ``complete`` (every part
done), ``zoo`` (path, whether complete, records, networks, datasets, families), ``tasks``
(each task's fields), ``runs`` (one per task x method x seed: ``status`` ``done`` or
``not_applicable`` with its ``reason``, ``kendall_tau``, ``mse``, the networks and records on
each side, ``chosen_step``, ``val_mse`` and ``val_tau`` of the params chosen on validation,
``num_params``, ``wall_s``, and from its test predictions :func:`snapshot_scores`:
``tau_by_snapshot``, ``tau_within_snapshots``, ``tau_snapshot_order``) and ``table`` (one row
per task x method: ``tau_mean``, ``tau_std``, ``mse_mean``, ``mse_std``, ``within_mean``,
``within_std`` (of ``tau_within_snapshots``), ``order_mean``, ``order_std`` (of
``tau_snapshot_order``) over the seeds (std with ddof 1; ``null`` for one seed), ``seeds``,
the first seed's sizes, ``wall_s`` summed over the seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.training import predictor
from uhn_jax.training import workdir as workdir_lib

FORMAT = "uhn_jax.sne_results"
VERSION = 1
RESULTS = "results.json"
FIGURE = "sne_scatter.png"
#: The keys of a part's result that ``runs`` keeps (not its predictions).
RUN_KEYS = (
    "task", "method", "seed", "status", "reason", "kendall_tau", "mse", "train_networks",
    "val_networks", "test_networks", "train_records", "val_records", "test_records", "steps",
    "chosen_step", "val_mse", "val_tau", "num_params", "wall_s",
)  # fmt: skip
SIZE_KEYS = ("train_networks", "val_networks", "test_networks", "train_records", "test_records")


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    if not values or any(v is None for v in values):
        return None, None
    a = np.asarray(values, np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _tau(pred: np.ndarray, y: np.ndarray) -> float | None:
    tau = predictor.mse_and_tau(pred, y)[1]
    return tau if np.isfinite(tau) else None


def snapshot_scores(run: dict, snapshot_of: dict[str, int]) -> dict[str, Any]:
    """A finished part's tau by training stage, from its test predictions (``{}`` without):
    ``tau_by_snapshot`` (Kendall's tau among the test records of each snapshot index: networks
    ranked at one stage of their training), ``tau_within_snapshots`` (its mean; ``None`` if one
    is undefined) and ``tau_snapshot_order`` (the tau between the predictions and the snapshot
    index: how far the predictor orders a record by how long it trained). ``snapshot_of`` maps
    a record id to its snapshot index."""
    if not run.get("predictions"):
        return {}
    snap = np.asarray([snapshot_of[i] for i in run["test_ids"]])
    pred, y = np.asarray(run["predictions"]), np.asarray(run["targets"])
    by = {str(int(k)): _tau(pred[snap == k], y[snap == k]) for k in np.unique(snap)}
    within = None if None in by.values() else float(np.mean(list(by.values())))
    order = _tau(pred, snap) if len(by) > 1 else None
    return {"tau_by_snapshot": by, "tau_within_snapshots": within, "tau_snapshot_order": order}


def table(runs: list[dict]) -> list[dict[str, Any]]:
    """One row per (task, method), in the order the runs came, over their seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    rows = []
    for (task, method), rs in groups.items():
        row = {"task": task, "method": method, "status": rs[0]["status"], "seeds": len(rs)}
        row |= {k: rs[0].get(k) for k in SIZE_KEYS}
        if rs[0]["status"] != "done":
            rows.append({**row, "reason": rs[0].get("reason")})
            continue
        row["tau_mean"], row["tau_std"] = _mean_std([r["kendall_tau"] for r in rs])
        row["mse_mean"], row["mse_std"] = _mean_std([r["mse"] for r in rs])
        row["within_mean"], row["within_std"] = _mean_std(
            [r.get("tau_within_snapshots") for r in rs]
        )
        row["order_mean"], row["order_std"] = _mean_std([r.get("tau_snapshot_order") for r in rs])
        row["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in rs), 1)
        rows.append(row)
    return rows


def results(spec, zoo, records: list[dict], parts, done: list[dict], *, complete: bool):
    """The ``results.json`` content of the finished parts ``done``."""
    snapshot_of = {r["id"]: r["snapshot"] for r in records}
    runs = [
        {**{k: r.get(k) for k in RUN_KEYS if k in r}, **snapshot_scores(r, snapshot_of)}
        for r in done
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "parts": len(parts),
        "zoo": {
            "path": str(spec.zoo),
            "complete": zoo.complete,
            "missing_groups": len(zoo.missing),
            "records": len(records),
            "networks": len({r["network"] for r in records}),
            "datasets": sorted({r["dataset"] for r in records}),
            "families": sorted({r["family"] for r in records}),
        },
        "tasks": {t.name: t.describe() for t in spec.tasks},
        "runs": runs,
        "table": table(runs),
    }


def write(workdir: Path, out: dict[str, Any], done: list[dict]) -> None:
    """Writes ``results.json`` and, when a part has predictions, the scatter figure."""
    workdir_lib.write_atomic(workdir / RESULTS, json.dumps(out, indent=1) + "\n")
    if any(r.get("predictions") for r in done):
        figure(done, workdir / FIGURE)


def _fmt(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def format_table(out: dict[str, Any]) -> str:
    """The table ``uhn-jax sne`` prints (markdown), with a line on the zoo."""
    z = out["zoo"]
    state = "" if out["complete"] else f" (PARTIAL: {len(out['runs'])} of {out['parts']} parts)"
    lines = [
        f"SNE on {z['path']}: {z['networks']} networks, {z['records']} records "
        f"({', '.join(z['datasets'])}; {', '.join(z['families'])})"
        + ("" if z["complete"] else f"; zoo partial, {z['missing_groups']} groups missing")
        + state,
        "",
        "| task | method | Kendall tau | within snapshots | snapshot order | MSE (x1e-3) | seeds "
        "| networks train/val/test | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["table"]:
        sizes = f"{r['train_networks']}/{r['val_networks']}/{r['test_networks']}"
        if r["status"] != "done":
            lines.append(
                f"| {r['task']} | {r['method']} | n/a | n/a | n/a | n/a | - | {sizes} | - |"
            )
            continue
        taus = " | ".join(_fmt(r[f"{k}_mean"], r[f"{k}_std"]) for k in ("tau", "within", "order"))
        mse = _fmt(r["mse_mean"], r["mse_std"], 1e3, 2)
        lines.append(
            f"| {r['task']} | {r['method']} | {taus} | {mse} | {r['seeds']} | {sizes} | "
            f"{r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def part_line(n: int, total: int, out: dict[str, Any]) -> str:
    """The progress line of a finished part."""
    where = f"[sne] {n + 1}/{total} {out['task']} {out['method']} seed {out['seed']}"
    if out["status"] != "done":
        return f"{where}: not applicable ({out['reason']})"
    tau = "n/a" if out["kendall_tau"] is None else f"{out['kendall_tau']:.3f}"
    return f"{where}: tau {tau}, MSE {out['mse']:.5f}, {out['wall_s']:.1f} s"


def figure(done: list[dict], out: Path, methods: tuple[str, ...] = ("sne",)) -> Path | None:
    """Predicted against true test accuracy of finished parts (with ``predictions``:
    :func:`uhn_jax.training.sne.part_results`), one panel per method and task (each method's
    tasks in turn, four panels a row), seeds in colours: the ``methods`` that have predictions
    (the first method with predictions when none of them has)."""
    from uhn_jax.analysis import figures

    with_pred = [r for r in done if r.get("predictions")]
    shown = [m for m in methods if any(r["method"] == m for r in with_pred)]
    shown = shown or [with_pred[0]["method"]]
    panels = [
        (m, t)
        for m in shown
        for t in dict.fromkeys(r["task"] for r in with_pred if r["method"] == m)
    ]
    cols = min(4, len(panels))
    plt = figures.pyplot()
    rows_n = -(-len(panels) // cols)  # one panel still leaves room for the title
    fig, axes = plt.subplots(rows_n, cols, figsize=(max(3.2 * cols, 4.8), 3.1 * rows_n))
    axes = np.atleast_1d(axes).reshape(-1)
    for ax, (method, task) in zip(axes, panels, strict=False):
        taus = []
        for r in (r for r in with_pred if r["task"] == task and r["method"] == method):
            ax.scatter(r["targets"], r["predictions"], s=6, alpha=0.6, label=f"seed {r['seed']}")
            taus.append(r["kendall_tau"])
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        shown_taus = ", ".join("n/a" if t is None else f"{t:.2f}" for t in taus)
        head = f"{task}\n{method}: " if len(shown) > 1 else f"{task}\n"
        ax.set(title=f"{head}tau {shown_taus}", xlabel="true test accuracy", ylabel="predicted")
        ax.title.set_fontsize(9)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    title = ", ".join(shown)
    fig.suptitle(f"{title}: predicted vs true test accuracy (test networks)", fontsize=10)
    return figures.save(fig, out)
