"""Multi-task UHN (spec §5.2): one generator trained on several heterogeneous tasks.

Each task is an ordinary single-model run config (``configs/<name>.py[:arg]``): its data, its
base model and its batch sizes. The multi-task config supplies what is shared: the generator
(with the structure encoder), the optimisation schedule and the seed. Every step samples one
task with the configured probabilities and takes one step of that task's loss. The generator's
declared ranges are the union over the tasks, so its parameters have one shape for all of them
and one train state serves every task; each task compiles its own step once.

The task sequence is drawn from ``fold_in(seed, step)``, so a resumed run replays it exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.core import descriptors
from uhn_jax.training import experiments, results, train
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks as tasks_lib
from uhn_jax.training import workdir as workdir_lib

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: The fields of a multi-task config (:func:`tasks_from_config`).
REQUIRED_FIELDS = ("tasks", "probs", "data_dir", "seed", "generator", "train")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a multi-task run: its config reference, experiment and probability."""

    name: str
    exp: config_lib.Experiment
    prob: float


def load_task_config(ref: str):
    """The ConfigDict of a task reference ``"<config>[:<arg>]"``, e.g. ``"planetoid:cora,gcn"``
    (a file in the repository's ``configs/`` directory, or a path to one)."""
    name, _, arg = ref.partition(":")
    path = Path(name) if name.endswith(".py") else CONFIG_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"task config {ref!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_task_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def tasks_from_config(cfg: Mapping[str, Any]) -> list[Task]:
    """Resolves a multi-task config into its tasks.

    ``cfg`` has ``tasks`` (references, see :func:`load_task_config`), ``probs`` (one per task;
    normalised), ``data_dir`` (given to every task that reads files), and ``seed``, ``generator``
    and ``train`` groups shared by every task (each task keeps its own ``batch_size`` and
    ``eval_batch_size``). An optional ``range_tasks`` is read by :func:`declared_ranges`.
    """
    missing = [k for k in REQUIRED_FIELDS if k not in cfg]
    if missing:
        raise ValueError(
            f"multitask: the config has no field(s) {', '.join(missing)}; a multi-task config "
            f"(like configs/multitask.py) has {', '.join(REQUIRED_FIELDS)}"
        )
    refs, probs = list(cfg["tasks"]), [float(p) for p in cfg["probs"]]
    if not refs or len(refs) != len(probs):
        raise ValueError(f"multitask: {len(refs)} tasks and {len(probs)} probs; give one per task")
    if any(p <= 0 for p in probs):
        raise ValueError(f"multitask: probs must be positive, got {probs}")
    total = sum(probs)
    tasks = []
    for ref, p in zip(refs, probs, strict=True):
        task_cfg = load_task_config(ref)
        task_cfg.mode = "uhn"
        task_cfg.seed = cfg["seed"]
        task_cfg.data.data_dir = task_cfg.data.data_dir or cfg["data_dir"]
        keep = {k: task_cfg.train[k] for k in ("batch_size", "eval_batch_size")}
        task_cfg.generator = dict(cfg["generator"])
        task_cfg.train = dict(cfg["train"], **keep)
        tasks.append(Task(ref, config_lib.from_config_dict(task_cfg), p / total))
    return tasks


def _with_new_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved multi-task config with fields added since it was written set to their
    defaults, so older workdirs stay resumable."""
    defaults = json.loads(json.dumps(config_lib.Experiment().to_dict()))
    return {
        "range_tasks": [],
        **saved,
        **{g: {**defaults[g], **saved[g]} for g in ("generator", "train") if g in saved},
    }


def validate(cfg: Mapping[str, Any]) -> list[Task]:
    """The tasks of a multi-task config (:func:`tasks_from_config`), checked as :func:`run`
    needs them, without loading data: every task's experiment validates, the generator has the
    structure encoder, and every ``range_tasks`` reference resolves to a valid experiment.

    Raises:
      ValueError: naming the field or task reference at fault.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    tasks = tasks_from_config(cfg)
    if not all(t.exp.generator.structure for t in tasks):
        raise ValueError("multitask: set generator.structure=True (the tasks share a generator)")
    refs = _range_tasks(cfg)
    if refs:
        tasks_from_config({**cfg, "tasks": refs, "probs": [1.0] * len(refs)})
    return tasks


def _range_tasks(cfg: Mapping[str, Any]) -> list[str]:
    """``cfg["range_tasks"]`` (optional) as a list, checked to hold task references."""
    refs = cfg.get("range_tasks") or ()
    if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"multitask: range_tasks must be a tuple of task references, got {refs!r}")
    return list(refs)


def declared_ranges(cfg: Mapping[str, Any], tasks: Sequence[Task], datasets: Sequence[Any]):
    """The generator's declared ``(index, structure)`` ranges: the union over the descriptors
    of ``tasks`` (with their loaded ``datasets``) and of ``cfg["range_tasks"]``, optional task
    references that widen the ranges without being trained (e.g. to train one task alone with
    the ranges of a mix, or to leave room for tasks added later)."""
    descs = [setup_lib.describe(t.exp, d) for t, d in zip(tasks, datasets, strict=True)]
    refs = _range_tasks(cfg)
    if refs:
        extra = tasks_from_config({**cfg, "tasks": refs, "probs": [1.0] * len(refs)})
        descs += [setup_lib.describe(t.exp, tasks_lib.load_dataset(t.exp)) for t in extra]
    return (
        descriptors.union_all([d.index_ranges() for d in descs]),
        descriptors.union_all([d.structure_ranges() for d in descs]),
    )


def task_schedule(probs: Sequence[float], seed: int, step: int) -> int:
    """The task of ``step``: a draw from ``probs`` keyed by ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    return int(rng.choice(len(probs), p=np.asarray(probs) / np.sum(probs)))


def _check_workdir(cfg: dict, workdir: Path) -> None:
    """Refuses a workdir holding another multi-task run (writes nothing: :func:`_write_config`
    does, once the tasks are prepared, so a run failing validation leaves no config.json)."""
    saved = workdir / "config.json"
    if not saved.exists():
        return
    fix = "Restore it from a copy, or use a new --workdir."
    if _with_new_defaults(workdir_lib.read_json(saved, fix)) != _with_new_defaults(
        json.loads(json.dumps(cfg))
    ):
        raise workdir_lib.WorkdirError(
            f"workdir {workdir} holds a different multi-task run; use a new --workdir"
        )


def _write_config(cfg: dict, workdir: Path) -> None:
    """Writes the multi-task config to ``workdir/config.json`` (process 0)."""
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        # Atomic: every launch rewrites it, and a kill mid-write must not leave it damaged.
        workdir_lib.write_atomic(workdir / "config.json", json.dumps(cfg, indent=2) + "\n")


def _prepare(cfg: dict, tasks: list[Task]):
    """Every task's setup, descriptor arrays and device data, over the union of ranges."""
    datasets = [tasks_lib.load_dataset(t.exp) for t in tasks]
    ranges = declared_ranges(cfg, tasks, datasets)
    setups, conds, data = [], [], []
    for t, d in zip(tasks, datasets, strict=True):
        setup, desc = setup_lib.make_setup(t.exp, d, ranges)
        setups.append(setup)
        conds.append(setup_lib.desc_arrays(setup, desc))
        data.append(setup_lib.device_data(setup, d))
    return setups, conds, data


def _after_step(tasks, setups, conds, workdir: Path):
    def after(done: int, state: dict) -> None:
        if done == setups[0].init_steps and done > 0:
            fits = {
                t.name: results.init_fit(s, state["params"], state["constants"], c)
                for t, s, c in zip(tasks, setups, conds, strict=True)
            }
            results.report_init_fit(workdir, fits)

    return after


def run(
    cfg: Mapping[str, Any], workdir: str | Path, *, progress: bool = True, stop_after=None
) -> dict[str, Any]:
    """Trains one UHN on the tasks of ``cfg`` in ``workdir`` (resumable) and evaluates each.

    Every step samples a task (:func:`task_schedule`) and takes that task's compiled step in
    the one training loop (:class:`uhn_jax.training.loop.Loop`).

    Returns the results (also in ``workdir/results.json``): per task, the test metric and its
    name, the number of steps the task was sampled, and its base model's parameter count.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    workdir = Path(workdir)
    if (workdir / "results.json").exists():
        return workdir_lib.read_json(workdir / "results.json", train.RESULTS_FIX)
    tasks = validate(cfg)
    _check_workdir(cfg, workdir)
    start_time = time.time()
    setups, conds, data = _prepare(cfg, tasks)
    _write_config(cfg, workdir)
    first, seed = setups[0], tasks[0].exp.seed
    key = jax.random.key_data(jax.random.key(seed))
    loop = loop_lib.Loop(
        workdir,
        step_lib.init_state(first, jax.random.fold_in(key, 2)),
        total=first.total_steps,
        log_every=first.train.log_every,
        checkpoint_every=first.train.checkpoint_every,
        progress=progress,
        desc="multitask",
    )
    conds = [
        setup_lib.with_tables(s, c, loop.state["constants"])
        for s, c in zip(setups, conds, strict=True)
    ]
    probs = [t.prob for t in tasks]

    def step_fn(step: int, state: dict):
        i = task_schedule(probs, seed, step)
        state, metrics, labels = train.advance(setups[i], step, state, conds[i], data[i][0], key)
        return state, metrics, {**labels, "task": tasks[i].name}

    state, finished = loop.run(
        step_fn, stop_after=stop_after, after_step=_after_step(tasks, setups, conds, workdir)
    )
    if not finished:
        return {"step": int(state["step"]), "tasks": None}
    out = _results(tasks, setups, conds, data, state, probs, seed)
    out["wall_s"] = round(time.time() - start_time, 2)
    return results.write(workdir, out)


def _results(tasks, setups, conds, data, state, probs, seed) -> dict[str, Any]:
    first = setups[0]
    counts = np.bincount(
        [task_schedule(probs, seed, s) for s in range(first.total_steps)], minlength=len(tasks)
    )
    per_task = []
    for t, s, c, (_, test), n in zip(tasks, setups, conds, data, counts, strict=True):
        ev = step_lib.evaluate(
            s, state["params"], state["constants"], c, test, t.exp.train.eval_batch_size
        )
        per_task.append(
            {
                "task": t.name,
                "dataset": t.exp.data.name if t.exp.data.name != "formula" else t.exp.data.formula,
                "prob": t.prob,
                "steps_sampled": int(n),
                "num_target_params": s.layout.size,
                "metric_name": s.metric_name,
                "test_metric": float(ev[s.metric_name]),
            }
        )
    return {
        "schema_version": results.RESULTS_SCHEMA_VERSION,
        "mode": "uhn",
        "task": "multitask",
        "tasks": per_task,
        **first.kind.num_trained(state["params"]),
        "seed": seed,
        "steps": first.train.steps,
        "init_steps": first.init_steps,
    }


def _scaled(n: int, p: float) -> int:
    return int(round(n * p))


def baseline_config(cfg: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The single-task UHN that task ``index`` of ``cfg`` is compared against.

    It is the same run restricted to that one task: the same generator (structure encoder
    included), learning rates and seed, with the step counts (initialisation, warm-up, training)
    scaled by the task's probability, so the task gets as many steps alone as it gets on
    average in the mix.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    cfg = json.loads(json.dumps(cfg))  # a deep, plain copy
    probs = [float(p) for p in cfg["probs"]]
    p = probs[index] / sum(probs)
    t = cfg["train"]
    steps = max(1, _scaled(t["steps"], p))
    t["warmup_steps"] = min(_scaled(t["warmup_steps"], p), steps - 1)
    t["init_steps"] = _scaled(t["init_steps"], p)
    t["steps"] = steps
    t["eval_every"] = 0
    cfg["tasks"], cfg["probs"] = [cfg["tasks"][index]], [1.0]
    return cfg


def run_baselines(
    cfg: Mapping[str, Any], workdir: str | Path, *, progress: bool = True
) -> list[dict[str, Any]]:
    """Trains the single-task UHN of every task (:func:`baseline_config`) under
    ``workdir/single/<k>-<task>`` (each resumable) and returns their per-task results."""
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    out = []
    for k, ref in enumerate(cfg["tasks"]):
        slug = "".join(c if c.isalnum() else "_" for c in ref)
        sub = Path(workdir) / "single" / f"{k}-{slug}"
        out.append(run(baseline_config(cfg, k), sub, progress=progress)["tasks"][0])
    return out


def compare(
    cfg: Mapping[str, Any],
    workdir: str | Path,
    seeds: int = 1,
    *,
    baselines: bool = True,
    progress: bool = True,
) -> str | None:
    """The multi-task run of ``cfg`` for ``seeds`` seeds (``cfg["seed"]``, +1, ...), each with
    its single-task baselines when ``baselines`` is set, and their comparison table.

    One seed runs in ``workdir`` itself; several go to ``workdir/seed<s>``. Every run resumes.
    The table (:func:`comparison_table`) is also written to ``workdir/compare.md``; without
    baselines there is none and this returns ``None``.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    workdir = Path(workdir)
    pairs = []
    for seed in range(cfg["seed"], cfg["seed"] + seeds):
        run_cfg = {**cfg, "seed": seed}
        sub = workdir if seeds == 1 else workdir / f"seed{seed}"
        results = run(run_cfg, sub, progress=progress)
        for t in results["tasks"]:
            print(
                f"seed {seed}, {t['task']}: test {t['metric_name']} {t['test_metric']:.4f} "
                f"({t['steps_sampled']} steps)",
                flush=True,
            )
        if baselines:
            pairs.append((results, run_baselines(run_cfg, sub, progress=progress)))
    if not baselines:
        return None
    table = comparison_table(pairs)
    (workdir / "compare.md").write_text(table + "\n")
    return table


def comparison_table(
    runs: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
) -> str:
    """Markdown: each task's test metric in the multi-task run next to its single-task UHN.

    ``runs`` holds one ``(multi-task results, single-task results)`` pair per seed. The gap is
    in percentage points for an accuracy and the multi / single ratio for an RMSE, between the
    means over seeds; with several seeds the metrics are shown as mean ± std and the last
    column lists the gap of each seed.
    """
    if not runs:
        raise ValueError("comparison_table: no runs")
    n = len(runs)
    lines = [
        "| task | metric | seeds | multi-task | steps | single-task UHN | steps "
        "| multi vs single | per seed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k, first in enumerate(runs[0][0]["tasks"]):
        multi = [r[0]["tasks"][k] for r in runs]
        single = [r[1][k] for r in runs]
        if any(t["task"] != first["task"] for t in multi + single):
            raise ValueError(f"comparison_table: runs disagree on task {k} ({first['task']})")
        m = np.array([t["test_metric"] for t in multi])
        s = np.array([t["test_metric"] for t in single])
        rmse = first["metric_name"] == "rmse"
        shown = [experiments.format_metric(v, rmse, spread=n > 1) for v in (m, s)]
        if rmse:
            gaps = [f"{a / b:.2f}×" for a, b in zip(m, s, strict=True)]
            gap = f"{m.mean() / s.mean():.2f}×"
        else:
            gaps = [f"{100 * (a - b):+.2f}" for a, b in zip(m, s, strict=True)]
            gap = f"{100 * (m.mean() - s.mean()):+.2f} pp"
        steps = [round(np.mean([t["steps_sampled"] for t in ts])) for ts in (multi, single)]
        lines.append(
            f"| {first['task']} | {first['metric_name']} | {n} | {shown[0]} | {steps[0]} "
            f"| {shown[1]} | {steps[1]} | {gap} | {' / '.join(gaps) if n > 1 else ''} |"
        )
    return "\n".join(lines)
