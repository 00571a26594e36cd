"""``run``: train one experiment in a workdir (resumable) and evaluate it.

One path for every hypernetwork kind (``exp.mode``: ``uhn``, ``direct``, or a registered
kind) and for model sets: a setup (:mod:`uhn_jax.training.setup`), the compiled step
(:mod:`uhn_jax.training.step`), the one loop (:mod:`uhn_jax.training.loop`) and the results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax

from uhn_jax import config as config_lib
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import members as members_lib
from uhn_jax.training import optim, rebuild, results, tasks
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import workdir as workdir_lib

#: What to do about a damaged ``results.json``.
RESULTS_FIX = "Delete it and rerun: the results are recomputed from the final checkpoint."


def advance(setup: setup_lib.Setup, step: int, state: dict, cond, data, key):
    """Step ``step`` of a run: a fresh optimiser at a stage boundary (each (sub-)stage gets
    its own, as in the reference), then one compiled step. ``(state, metrics, labels)``."""
    stage = setup.stage(step)
    if setup.fresh_optimizer_at(step):
        # A new dict: the loop's copy of the completed step stays intact.
        state = {**state, "opt_state": optim.fresh_state(setup, stage, state["params"])}
    state, metrics = step_lib.run_step(setup, stage, state, cond, data, key)
    return state, metrics, {"stage": stage}


def _after_step(exp, setup, workdir: Path, cond, test_data):
    """The loop's per-step hook: ``init_fit.json`` when the initialisation stage ends, test
    metrics every ``train.eval_every`` steps of task training."""
    t = exp.train

    def after(done: int, state: dict) -> dict | None:
        if done == setup.init_steps and done > 0:
            fits = results.init_fit(setup, state["params"], state["constants"], cond)
            results.report_init_fit(workdir, fits)
        if t.eval_every and done % t.eval_every == 0 and done > setup.init_steps:
            ev_cond = setup_lib.select_member(cond, 0) if setup.members else cond
            ev = step_lib.evaluate(
                setup, state["params"], state["constants"], ev_cond, test_data, t.eval_batch_size
            )
            return {f"test_{k}": float(v) for k, v in ev.items()}
        return None

    return after


def run(
    exp: config_lib.Experiment,
    workdir: str | Path,
    *,
    dataset: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains ``exp`` in ``workdir`` (resuming from its latest checkpoint) and evaluates it.

    Args:
      exp: the experiment (validated here).
      workdir: run directory: ``config.json``, ``model.json`` (what rebuilds the model,
        :mod:`uhn_jax.training.rebuild`), ``checkpoints/``, ``metrics.jsonl``,
        ``tensorboard/`` and, at the end, ``results.json``.
      dataset: the loaded dataset (loaded from ``exp.data`` when omitted).
      progress: show a progress bar.
      stop_after: stop (after checkpointing) once this many steps are done; for tests and for
        splitting long runs.

    Returns:
      The results dict (also written to ``results.json``); ``None`` for the metric when
      stopped early.
    """
    exp = exp.validate()
    workdir = Path(workdir)
    changes = workdir_lib.check_config(workdir, exp)
    if (workdir / "results.json").exists():
        return workdir_lib.read_json(workdir / "results.json", RESULTS_FIX)
    start_time, compiles_before = time.time(), step_lib.compile_count()
    dataset = tasks.load_dataset(exp) if dataset is None else dataset
    mset = members = None
    if exp.model.model_set:
        setup, cond, mset, members = members_lib.make_multi_setup(exp, dataset)
    else:
        setup, desc = setup_lib.make_setup(exp, dataset)
        cond = setup_lib.desc_arrays(setup, desc)
    # The dataset is replicated; each step's batch is gathered from it and split over the mesh.
    train_data, test_data = setup_lib.device_data(setup, dataset)
    key = jax.random.key_data(jax.random.key(exp.seed))
    loop = loop_lib.Loop(
        workdir,
        step_lib.init_state(setup, jax.random.fold_in(key, 2)),
        total=setup.total_steps,
        log_every=exp.train.log_every,
        checkpoint_every=exp.train.checkpoint_every,
        progress=progress,
        desc=f"{exp.mode} seed {exp.seed}",
    )
    # Written only now that the config, data and setup have passed validation, so a run that
    # fails them leaves no config.json to refuse the corrected rerun.
    workdir_lib.write_config(workdir, exp, changes, loop.start)
    rebuild.write_record(workdir, exp, dataset, setup.model)  # what rebuilds the model
    cond = setup_lib.with_tables(setup, cond, loop.state["constants"])
    try:
        state, finished = loop.run(
            lambda step, state: advance(setup, step, state, cond, train_data, key),
            stop_after=stop_after,
            after_step=_after_step(exp, setup, workdir, cond, test_data),
        )
    finally:
        loop.mngr.close()  # waits for the last save; no orbax thread outlives the run
    if not finished:
        return {"step": int(state["step"]), "test_metric": None}
    if setup.members:
        out = members_lib.member_results(exp, setup, state, cond, mset, members, test_data, workdir)
        # Compiles of the training step made by this run (one per stage): the members share
        # one compiled step. Counted as a difference, so other runs in the process don't count.
        out["train_step_compiles"] = step_lib.compile_count() - compiles_before
    else:
        out = _single_results(exp, setup, state, cond, (train_data, test_data), dataset)
        out |= setup.kind.finish(setup, state["params"], state["constants"], workdir)
        _log_final(workdir, setup, out)
    out["wall_s"] = round(time.time() - start_time, 2)
    return results.write(workdir, out)


def _single_results(exp, setup, state, cond, data, dataset) -> dict[str, Any]:
    args = (setup, state["params"], state["constants"], cond)
    batch = exp.train.eval_batch_size
    ev, ev_train = (step_lib.evaluate(*args, split, batch) for split in (data[1], data[0]))
    return {
        **results.header(exp, setup, state["params"]),
        "dataset": dataset.name,
        "model": results.describe_model(exp),
        "test_metric": float(ev[setup.metric_name]),
        "train_metric": float(ev_train[setup.metric_name]),
        "test_loss": float(ev["loss"]),
        "seed": exp.seed,
        "steps": exp.train.steps,
        "init_steps": setup.init_steps,
    }


def _log_final(workdir: Path, setup, out: dict) -> None:
    """Appends the final test metric to ``metrics.jsonl`` at the last step, once: a run
    killed after this but before ``results.json`` is written finds the line there when
    relaunched (the final checkpoint keeps the loop's lines up to the last step)."""
    if jax.process_index() != 0:
        return
    path = workdir / "metrics.jsonl"
    line = {"step": setup.total_steps, f"test_{setup.metric_name}": out["test_metric"]}
    last = _last_line(path)
    if last.keys() == line.keys() and last["step"] == line["step"]:
        return
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _last_line(path: Path) -> dict:
    """The last line of a JSON-lines file, ``{}`` when there is none or it is damaged."""
    try:
        lines = path.read_text().splitlines()
        value = json.loads(lines[-1]) if lines else {}
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
