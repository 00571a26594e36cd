"""Re-runs the cheap published comparisons and checks each against its figure and bound:
``uhn-jax reproduce --workdir W --data_dir DATA [--only NAME,...]``.

Each :class:`Check` names a config, the figures published for it in ``docs/`` (measured on the
project's machine, the seeds it runs) and the bound the comparison must meet. A check *holds*
when the bound holds on this host; the published figures are printed beside the measured ones so
that a drift shows even when the bound still holds. Runs go to ``W/<name>`` and resume like any
other run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.training import experiments, train

#: How a check compares its two figures ``(a, b)``: ``gap``: ``b - a >= -bound`` (accuracies,
#: ``a`` direct and ``b`` UHN); ``ratio``: ``b / a <= bound`` (RMSEs); ``held_out``: a model
#: set's held-out minus hold-in accuracy ``>= -bound``.
KINDS = ("gap", "ratio", "held_out")


class CheckError(ValueError):
    """An unknown check name, or a check that needs a data directory none was given for."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One published comparison.

    Attributes:
        name: Its name and the subdirectory of the workdir its runs go to.
        config: ``<module>[:<arg>]`` of a file under ``configs/``, e.g. ``planetoid:cora,gcn,cpu``.
        data: The subdirectory of the data directory it reads, or None for embedded data.
        seeds: Seeds it runs (``seed``, ``seed + 1``, ...); the published figures are means over
            the same seeds.
        published: The two published figures (see :data:`KINDS` for their order).
        bound: The bound of :attr:`kind`.
        kind: One of :data:`KINDS`.
        source: Where the figures are published.
        overrides: Config fields to set, ``{"train.steps": 10}`` (used by the tests).
    """

    name: str
    config: str
    data: str | None
    seeds: int
    published: tuple[float, float]
    bound: float
    kind: str = "gap"
    source: str = ""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


def _graph(dataset: str, model: str, direct: float, uhn: float) -> Check:
    return Check(
        f"{dataset}_{model}",
        f"planetoid:{dataset},{model},cpu",
        "planetoid",
        1,
        (direct, uhn),
        0.015,
        source="docs/results.md#results (Planetoid, per seed: seed 0)",
    )


#: The fast comparisons: digits, the four Planetoid ``,cpu`` pairs, the digits model set and
#: three KAN formulas. One seed each except digits; their published figures are seed 0's.
FAST = (
    Check(
        "digits",
        "digits_mlp",
        None,
        3,
        (0.9741, 0.9741),
        0.015,
        source="docs/results.md#results (digits, the embedded default)",
    ),
    # Seed 0 with the float32 numerics and the matmul first layer the ,cpu configs pin.
    _graph("cora", "gcn", 0.800, 0.786),
    _graph("cora", "gat", 0.800, 0.805),
    _graph("citeseer", "gcn", 0.668, 0.669),
    _graph("citeseer", "gat", 0.669, 0.692),
    Check(
        "digits_set",
        "digits_mlp_set",
        None,
        1,
        (0.9778, 0.9768),
        0.015,
        kind="held_out",
        source="docs/experiments.md (model sets; hold-in, held-out)",
    ),
    *(
        Check(
            f"kan_{f}",
            f"kan_formula:{f}",
            None,
            1,
            published,
            1.2,
            kind="ratio",
            source="docs/results.md (KAN formula regression; direct, UHN RMSE)",
        )
        for f, published in (
            ("jv", (0.00217, 0.00184)),
            ("kv", (0.00604, 0.00400)),
            ("yv", (0.0358, 0.0167)),
        )
    ),
)


def load_experiment(
    check: Check, data_dir: str | Path | None, matmul_dtype: str | None = None
) -> config_lib.Experiment:
    """The check's config with its data directory and overrides applied; ``matmul_dtype``
    (e.g. ``"float32"``) replaces the generator's ``auto``, to check the numerics another kind
    of host would resolve to."""
    module, _, arg = check.config.partition(":")
    get_config = importlib.import_module(f"configs.{module}").get_config
    cfg = get_config(arg) if arg else get_config()
    if check.data is not None:
        if data_dir is None:
            raise CheckError(f"check {check.name!r} reads {check.data}/: pass a data directory")
        cfg.data.data_dir = str(Path(data_dir) / check.data)
    overrides = dict(check.overrides)
    if matmul_dtype is not None:
        overrides["generator.matmul_dtype"] = matmul_dtype
    for dotted, value in overrides.items():
        node = cfg
        *groups, field = dotted.split(".")
        for g in groups:
            node = node[g]
        node[field] = value
    return config_lib.from_config_dict(cfg)


def measure(check: Check, exp: config_lib.Experiment, workdir: Path, progress: bool):
    """The check's two measured figures (in :data:`KINDS` order) and the numerics of its runs."""
    if check.kind == "held_out":
        res = train.run(exp, workdir, progress=progress)
        return (res["hold_in_test_metric"], res["held_out_test_metric"]), res.get("numerics")
    experiments.compare(exp, workdir, check.seeds, progress=progress)
    rows = json.loads((workdir / "compare.json").read_text())
    kind = "uhn" if exp.mode == "direct" else exp.mode
    means = [np.mean([r["test_metric"] for r in rows if r["mode"] == m]) for m in ("direct", kind)]
    numerics = next((r.get("numerics") for r in rows if r["mode"] == kind), None)
    return (float(means[0]), float(means[1])), numerics


def holds(kind: str, figures: tuple[float, float], bound: float) -> tuple[float, bool]:
    """The compared quantity of two figures and whether it meets ``bound``."""
    a, b = figures
    if kind == "ratio":
        return b / a, b / a <= bound
    if kind in ("gap", "held_out"):
        return b - a, b - a >= -bound - 1e-9
    raise ValueError(f"unknown check kind {kind!r}; expected one of {KINDS}")


def load_experiments(
    data_dir: str | Path | None,
    *,
    only: Sequence[str] | None = None,
    checks: Sequence[Check] = FAST,
    matmul_dtype: str | None = None,
) -> dict[str, config_lib.Experiment]:
    """The validated experiment of each check :func:`reproduce` runs (those named in ``only``,
    when given, in that order), by name, without training: every config error first.

    Raises:
      CheckError: for an unknown check name, or a check that reads data when ``data_dir`` is
        ``None``.
    """
    by_name = {c.name: c for c in checks}
    unknown = sorted(set(only or ()) - set(by_name))
    if unknown:
        raise CheckError(f"unknown check(s) {unknown}; the checks are {sorted(by_name)}")
    chosen = [by_name[n] for n in only] if only else list(checks)
    return {c.name: load_experiment(c, data_dir, matmul_dtype) for c in chosen}


def reproduce(
    workdir: str | Path,
    data_dir: str | Path | None,
    *,
    only: Sequence[str] | None = None,
    checks: Sequence[Check] = FAST,
    matmul_dtype: str | None = None,
    progress: bool = True,
) -> tuple[str, list[dict[str, Any]]]:
    """Runs ``checks`` (those named in ``only``, when given) and returns the table and rows;
    ``matmul_dtype`` as in :func:`load_experiment` (the runs then go to ``W/<check>_<dtype>``).

    Every row also goes to ``workdir/reproduce.json``; the table to ``workdir/reproduce.md``.
    """
    exps = load_experiments(data_dir, only=only, checks=checks, matmul_dtype=matmul_dtype)
    by_name = {c.name: c for c in checks}
    chosen = [by_name[name] for name in exps]
    workdir = Path(workdir)
    suffix = f"_{matmul_dtype}" if matmul_dtype else ""
    rows = []
    for check in chosen:
        run_dir = workdir / (check.name + suffix)
        figures, numerics = measure(check, exps[check.name], run_dir, progress)
        value, ok = holds(check.kind, figures, check.bound)
        published, _ = holds(check.kind, check.published, check.bound)
        rows.append(
            {
                **dataclasses.asdict(check),
                "measured": list(figures),
                "value": value,
                "published_value": published,
                "holds": ok,
                "numerics": numerics,
            }
        )
        print(_row(rows[-1]), flush=True)
    table = format_table(rows)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"reproduce{suffix}.md").write_text(table + "\n")
    (workdir / f"reproduce{suffix}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return table, rows


def _fmt(kind: str, x: float) -> str:
    return f"{x:.3g}" if kind == "ratio" else f"{100 * x:.2f}"


def _row(r: dict[str, Any]) -> str:
    kind = r["kind"]
    pub = " / ".join(_fmt(kind, x) for x in r["published"])
    got = " / ".join(_fmt(kind, x) for x in r["measured"])
    if kind == "ratio":
        value, published, bound = (
            f"{v:.3f}" for v in (r["value"], r["published_value"], r["bound"])
        )
        rule = f"≤ {bound}"
    else:
        value, published = (f"{100 * v:+.2f} pp" for v in (r["value"], r["published_value"]))
        rule = f"≥ {-100 * r['bound']:.1f} pp"
    dtype = (r.get("numerics") or {}).get("matmul_dtype") or "-"
    verdict = "holds" if r["holds"] else "**MISSES**"
    return (
        f"| {r['name']} | {r['seeds']} | {pub} | {got} | {published} | {value} | {rule} | "
        f"{dtype} | {verdict} |"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: published and measured figures, the compared quantity, bound, verdict."""
    head = [
        "| check | seeds | published | measured | published value | measured value | bound "
        "| matmul dtype | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    missed = [r["name"] for r in rows if not r["holds"]]
    tail = f"{len(rows) - len(missed)} of {len(rows)} hold" + (
        f"; MISSED: {', '.join(missed)}" if missed else ""
    )
    note = "(figures: direct / UHN, or hold-in / held-out; accuracies in %)"
    return "\n".join(head + [_row(r) for r in rows] + ["", tail, note])
