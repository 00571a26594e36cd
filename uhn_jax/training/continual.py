"""Continual learning: tasks trained one after another in the one training loop, evaluated on
every task seen so far after each one (von Oswald et al. 2020's task-incremental setting: the
task id is given at test time).

Schedule: ``num_tasks`` tasks of ``steps_per_task`` steps each; step ``s`` trains task
``s // steps_per_task``. Methods (``method``):

* ``hnet``: the ``continual`` kind (:mod:`uhn_jax.hypernets.continual`): a task embedding per
  task -> chunked hypernetwork -> all of the target's weights, with the output regulariser; or,
  with ``hnet.generator="uhn"``, the UHN generator on a task descriptor (:func:`uhn_setup`).
* ``finetune``: one network trained directly, its params carried from task to task, no
  regulariser (forgetting is what it shows); for Split one shared 2-way head, so the same
  network answers every task.
* ``ewc``: the ``ewc`` kind (:mod:`uhn_jax.hypernets.ewc`): ``finetune``'s network with the
  online EWC penalty; at every task boundary the finished task's diagonal Fisher is accumulated
  and the params are the new anchor.
* ``separate``: one network per task, each from a fresh init (an upper bound with ``num_tasks``
  times the parameters); each task is evaluated with its own network.

At every task boundary the step function starts a fresh optimiser (a new AdamW state and its
schedule, as the authors' code builds a new optimiser per task; the ``hnet`` method needs it,
since the previous task's embedding must not keep moving on its momentum), takes the
hypernetwork's output snapshot (``hnet``), accumulates the Fisher and sets the anchor
(``ewc``) or banks the finished network (``separate``). At the end of each task it evaluates
every task so far into row ``t`` of the accuracy matrix. All of it (snapshot, task embeddings,
Fisher and anchor, banked networks, matrix) lives in the checkpointed train state, so a killed
run resumes bit-identically between and inside tasks.

Task inference (``continual.task_inference``, for ``hnet`` and ``separate``): without the task
id, :func:`infer_tasks` runs every trained task's network on an input and picks the task whose
prediction has the lowest entropy (von Oswald et al.'s rule); :func:`task_inference_accuracy`
scores it on every task's test split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax import hypernets
from uhn_jax.core import checks, layouts
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import continual as benchmarks
from uhn_jax.hypernets import continual as hnet_lib
from uhn_jax.hypernets import ewc as ewc_lib
from uhn_jax.training import checkpoint, optim, results, train
from uhn_jax.training import continual_config as config_lib
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks as tasks_lib
from uhn_jax.training import workdir as workdir_lib

#: Re-exported from :mod:`uhn_jax.training.continual_config`: the methods, the checked config
#: and its check.
METHODS = config_lib.METHODS
Spec = config_lib.Spec
validate = config_lib.validate


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """What a continual run needs besides its state: the spec, the task sequence, the static
    setup (the same for every task), its descriptor arrays and the base PRNG key data."""

    spec: Spec
    tasks: benchmarks.TaskSequence
    setup: setup_lib.Setup
    cond: setup_lib.DescArrays
    key: jax.Array


def prepare(spec: Spec, dataset=None) -> Prepared:
    """Loads the data (``dataset`` overrides ``spec.exp.data``), builds the task sequence and
    the setup.

    Raises:
      ValueError: naming the field the data refuses (e.g. ``continual.num_tasks`` above the
        Split tasks a dataset has, ``train.batch_size`` above a task's examples).
    """
    base = tasks_lib.load_dataset(spec.exp) if dataset is None else dataset
    seq = benchmarks.make_sequence(
        base, spec.benchmark, spec.num_tasks, spec.permutation_seeds, multi_head=spec.multi_head
    )
    setup, desc = setup_lib.make_setup(spec.exp, seq.task(0))
    if spec.multi_head:
        setup = dataclasses.replace(setup, head_size=seq.head_size)
    if spec.method == "hnet":
        setup = dataclasses.replace(setup, continual=spec.hnet)
        if spec.hnet.generator == "uhn":
            setup, desc = uhn_setup(spec, setup)
    if spec.method == "ewc":
        setup = dataclasses.replace(setup, ewc=spec.ewc)
    key = jax.random.key_data(jax.random.key(spec.exp.seed))
    return Prepared(spec, seq, setup, setup_lib.desc_arrays(setup, desc), key)


def uhn_setup(spec: Spec, setup: setup_lib.Setup):
    """``(setup, descriptors)`` of an ``hnet`` run with the UHN generator: the generator of
    the config's ``generator`` group, its declared ranges the union over every task's
    descriptors (the task id in :data:`~uhn_jax.hypernets.continual.TASK_FIELD`), and task
    0's descriptors, whose arrays the run's condition holds."""
    descs = hnet_lib.task_descriptors(setup.model, setup.layout, spec.num_tasks)
    ranges = hnet_lib.declared_ranges(descs)
    gen, plan, chunk, remat, _ = setup_lib.make_generator(spec.exp, descs[0], ranges, setup.mesh)
    setup = dataclasses.replace(setup, gen=gen, plan=plan, chunk_size=chunk, remat=remat)
    return setup, descs[0]


def init_state(prep: Prepared) -> dict:
    """The step-0 state: the kind's ``{step, params, opt_state, constants}`` plus
    ``continual``: the task in ``params`` (``task``), the accuracy matrix (-1 = not yet
    evaluated) and, for ``separate``, the bank of finished networks (flat, one row per task)."""
    setup, t = prep.setup, prep.spec.num_tasks
    state = step_lib.init_state(setup, jax.random.fold_in(prep.key, 2))
    extra = {"task": jnp.zeros((), jnp.int32), "accuracy": -jnp.ones((t, t), jnp.float32)}
    if prep.spec.method == "separate":
        extra["bank"] = jnp.zeros((t, setup.layout.size), jnp.float32)
    state["continual"] = sharding_lib.replicate(setup.mesh, extra)
    return state


def _split(prep: Prepared, task: int, split: str):
    ds = prep.tasks.task(task)
    arrays = (jnp.asarray(getattr(ds, f"x_{split}")), jnp.asarray(getattr(ds, f"y_{split}")))
    return sharding_lib.replicate(prep.setup.mesh, arrays)


def fisher_inputs(prep: Prepared, task: int) -> jax.Array:
    """The prepared training inputs of ``task`` its EWC Fisher is averaged over: a fixed
    random subset of ``ewc.fisher_examples`` (all of them if the task has fewer), drawn from
    the run's seed and the task."""
    x = prep.tasks.task(task).x_train
    n = min(prep.spec.ewc.fisher_examples, len(x))
    idx = np.sort(np.random.default_rng((prep.spec.exp.seed, 4, task)).permutation(len(x))[:n])
    x = sharding_lib.replicate(prep.setup.mesh, jnp.asarray(x[idx]))
    return tasks_lib.prepare_inputs(prep.setup, x)


def consolidate(prep: Prepared, params, constants: dict, task: int) -> dict:
    """The ``ewc`` constants after ``task`` finished at ``params``: the running Fisher
    ``gamma * F + F_task`` and the anchor ``params`` (copied: the step donates the state)."""
    s, mesh = prep.spec.ewc, prep.setup.mesh
    x = fisher_inputs(prep, task)
    f_task = ewc_lib.fisher_diagonal(prep.setup, params, prep.cond, x, jnp.asarray(task))
    fisher = ewc_lib.accumulate(constants["fisher"], f_task, s.gamma)
    anchor = jax.tree.map(jnp.copy, params)
    return {**constants, **sharding_lib.replicate(mesh, {"fisher": fisher, "anchor": anchor})}


def begin_task(prep: Prepared, state: dict, task: int) -> dict:
    """The state at the first step of ``task`` (>= 1): a fresh optimiser; for ``hnet`` the task
    id and the snapshot of the earlier tasks' generated weights; for ``ewc`` the Fisher of task
    ``task - 1`` accumulated and the anchor; for ``separate`` the finished network banked and a
    fresh one."""
    setup, mesh = prep.setup, prep.setup.mesh
    params, constants, extra = state["params"], state["constants"], dict(state["continual"])

    def tid():  # a buffer of its own for each use: the step donates every leaf of the state
        return sharding_lib.replicate(mesh, jnp.asarray(task, jnp.int32))

    if prep.spec.method == "hnet":
        snap = hnet_lib.snapshot(setup, params, constants, prep.cond, tid())
        constants = {**constants, "task": tid(), "snapshot": sharding_lib.replicate(mesh, snap)}
    if prep.spec.method == "ewc":
        constants = consolidate(prep, params, constants, task - 1)
    if prep.spec.method == "separate":
        flat = layouts.flatten(params, setup.layout)
        extra["bank"] = extra["bank"].at[task - 1].set(flat)
        key = jax.random.fold_in(jax.random.fold_in(prep.key, 2), task)
        params = sharding_lib.replicate(mesh, setup.kind.init(setup, key)[0])
    extra["task"] = tid()
    return {
        **state,
        "params": params,
        "opt_state": optim.fresh_state(setup, "task", params),
        "constants": constants,
        "continual": extra,
    }


def _eval_args(prep: Prepared, state: dict, task: int, current: int):
    """``(params, constants)`` that :func:`step_lib.evaluate` runs as ``task``'s network, in a
    state whose ``params`` train task ``current``."""
    params, constants = state["params"], state["constants"]
    if prep.spec.method == "hnet":
        tid = sharding_lib.replicate(prep.setup.mesh, jnp.asarray(task, jnp.int32))
        return params, {**constants, "task": tid}
    if prep.spec.method == "separate" and task < current:
        return layouts.unflatten(state["continual"]["bank"][task], prep.setup.layout), constants
    return params, constants


def end_task(prep: Prepared, state: dict, task: int) -> dict:
    """The state after the last step of ``task``, with row ``task`` of the accuracy matrix:
    the test accuracy of every task ``j <= task`` (on device; nothing is read to the host)."""
    acc = state["continual"]["accuracy"]
    batch = prep.spec.exp.train.eval_batch_size
    for j in range(task + 1):
        params, constants = _eval_args(prep, state, j, task)
        test = _split(prep, j, "test")
        ev = step_lib.evaluate(prep.setup, params, constants, prep.cond, test, batch)
        acc = acc.at[task, j].set(ev["accuracy"])
    return {**state, "continual": {**state["continual"], "accuracy": acc}}


def step_fn(prep: Prepared):
    """The loop's ``step_fn(step, state)``: task boundaries around the compiled task step."""
    per, cache = prep.spec.steps_per_task, {}

    def fn(step: int, state: dict):
        task = step // per
        if step % per == 0 and step > 0:
            state = begin_task(prep, state, task)
        if task not in cache:  # the current task's training split on device, only
            cache.clear()
            cache[task] = _split(prep, task, "train")
        state, metrics = step_lib.run_step(
            prep.setup, "task", state, prep.cond, cache[task], prep.key
        )
        if (step + 1) % per == 0:
            state = end_task(prep, state, task)
        return state, metrics, {"stage": "task", "task": task}

    return fn


def trained_tasks(prep: Prepared, state: dict) -> int:
    """How many tasks ``state`` has trained (fully, or the current one in part)."""
    return min(math.ceil(int(state["step"]) / prep.spec.steps_per_task), prep.spec.num_tasks)


def _check_trained(prep: Prepared, state: dict, task) -> int:
    seen = trained_tasks(prep, state)
    if not isinstance(task, int | np.integer) or isinstance(task, bool) or not 0 <= task < seen:
        which = f"tasks 0..{seen - 1}" if seen else "no task yet"
        raise ValueError(
            f"task {task!r} is outside the trained tasks of this run ({which} at step "
            f"{int(state['step'])}; continual.num_tasks={prep.spec.num_tasks})"
        )
    return seen


def task_params(prep: Prepared, state: dict, task: int):
    """The base-model params that answer ``task`` in ``state`` (generated, banked or shared).

    Raises:
      ValueError: naming ``task`` when the state has not trained it.
    """
    seen = _check_trained(prep, state, task)
    params, constants = _eval_args(prep, state, int(task), seen - 1)
    return step_lib.materialize_params(prep.setup, params, constants, prep.cond)


def evaluate_task(prep: Prepared, state: dict, task: int) -> float:
    """Test accuracy of ``task`` in ``state`` (the task id given, as in task-incremental
    learning).

    Raises:
      ValueError: naming ``task`` when the state has not trained it.
    """
    seen = _check_trained(prep, state, task)
    params, constants = _eval_args(prep, state, int(task), seen - 1)
    test = _split(prep, int(task), "test")
    batch = prep.spec.exp.train.eval_batch_size
    return float(
        step_lib.evaluate(prep.setup, params, constants, prep.cond, test, batch)["accuracy"]
    )


@functools.partial(jax.jit, static_argnums=0, compiler_options=step_lib.XLA_OPTIONS)
def _logits(setup, model_params, cond, x):
    return hypernets.base.apply_base(setup, model_params, tasks_lib.prepare_inputs(setup, x), cond)


def task_logits(prep: Prepared, state: dict, x) -> np.ndarray:
    """``(T, B, C)``: the outputs of every trained task's network (``T`` = the tasks ``state``
    has trained) on the inputs ``x[B, ...]`` of a task of this run.

    Raises:
      ValueError: naming ``method`` when the run has one network for every task, ``state``
        when it has trained no task, ``x`` when its shape is not a batch of this run's inputs.
    """
    method = prep.spec.method
    if method not in config_lib.PER_TASK_METHODS:
        raise ValueError(
            f"task inference chooses between the networks of the tasks; method {method!r} has "
            f"one network for every task (methods with one per task: "
            f"{', '.join(config_lib.PER_TASK_METHODS)})"
        )
    seen = trained_tasks(prep, state)
    if seen == 0:
        raise ValueError("state has trained no task yet (step 0): there is no task to infer")
    checks.batch_shape("x", x, prep.tasks.base.input_shape)
    x = np.asarray(x, np.float32)
    batch, n = prep.spec.exp.train.eval_batch_size, len(x)
    padded = np.pad(x, [(0, -n % batch)] + [(0, 0)] * (x.ndim - 1))  # one compile
    out = []
    for j in range(seen):
        params = task_params(prep, state, j)
        rows = [
            _logits(prep.setup, params, prep.cond, jnp.asarray(padded[i : i + batch]))
            for i in range(0, len(padded), batch)
        ]
        out.append(np.concatenate([np.asarray(r) for r in rows])[:n])
    return np.stack(out)


def entropy_rule(logits_TBC) -> tuple[np.ndarray, np.ndarray]:
    """Von Oswald et al.'s task inference: for each example ``b``, the task ``t`` whose
    prediction ``softmax(logits[t, b])`` has the lowest entropy (the lowest id on a tie), and
    the class that task's network predicts.

    Returns:
      ``(task_B, class_B)`` int arrays.
    """
    z = np.asarray(logits_TBC, np.float64)
    if z.ndim != 3 or 0 in z.shape:
        raise ValueError(f"logits must have shape (tasks, examples, classes), got {z.shape}")
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    entropy_TB = -(np.exp(log_p) * log_p).sum(-1)
    task_B = entropy_TB.argmin(0)
    return task_B, z[task_B, np.arange(z.shape[1])].argmax(-1)


def infer_tasks(prep: Prepared, state: dict, x) -> np.ndarray:
    """The inferred task of every input in ``x[B, ...]`` (no task id given): ``(B,)`` ints in
    ``[0, trained tasks)``. Raises as :func:`task_logits`."""
    return entropy_rule(task_logits(prep, state, x))[0]


def inference_scores(task_N, y_N, inferred_N, predicted_N) -> dict[str, Any]:
    """Scores of task inference on ``N`` test examples of true task ``task_N`` and label
    ``y_N`` (within the task), inferred task ``inferred_N`` and that network's class
    ``predicted_N``: ``task_accuracy`` (the right task), ``accuracy`` (the right task and the
    right class: the classification without the task id) and both per true task (lists over
    tasks ``0..max(task_N)``; ``None`` for a task without examples)."""
    arrays = {"task_N": task_N, "y_N": y_N, "inferred_N": inferred_N, "predicted_N": predicted_N}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.ndim != 1 or a.shape != arrays["task_N"].shape or not a.size:
            raise ValueError(
                f"{name} must be a non-empty 1-D array like task_N (shape "
                f"{arrays['task_N'].shape}), got shape {a.shape}"
            )
    task, y, inferred, predicted = arrays.values()
    right_task = inferred == task
    right = right_task & (predicted == y)
    per = [task == j for j in range(int(task.max()) + 1)]
    return {
        "task_accuracy": float(right_task.mean()),
        "accuracy": float(right.mean()),
        "task_accuracies": [float(right_task[m].mean()) if m.any() else None for m in per],
        "accuracies": [float(right[m].mean()) if m.any() else None for m in per],
    }


def task_inference_accuracy(prep: Prepared, state: dict) -> dict[str, Any]:
    """Task inference on the test split of every task ``state`` has trained: the fraction of
    examples given the right task and the accuracy without the task id (both overall and per
    task, :func:`inference_scores`). Raises as :func:`task_logits`."""
    seen = trained_tasks(prep, state)
    parts = []
    for j in range(max(seen, 1)):
        ds = prep.tasks.task(j)
        task_B, class_B = entropy_rule(task_logits(prep, state, ds.x_test))
        parts.append((np.full(len(ds.y_test), j), ds.y_test, task_B, class_B))
    scores = inference_scores(*(np.concatenate(a) for a in zip(*parts, strict=True)))
    return {"rule": "lowest predictive entropy", "num_tasks": seen, **scores}


def accuracy_summary(acc_TT) -> dict[str, Any]:
    """The final accuracies (last row), their mean, and backward transfer
    ``BWT = mean_{j < T-1} (A[T-1, j] - A[j, j])`` (``None`` for one task) of an accuracy
    matrix ``A[i, j]`` = accuracy on task ``j`` after training task ``i``."""
    a = np.asarray(acc_TT, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"the accuracy matrix must be square (T, T), got shape {a.shape}")
    last, n = a[-1], a.shape[0]
    bwt = float(np.mean(last[:-1] - np.diag(a)[:-1])) if n > 1 else None
    return {
        "final_accuracies": [float(v) for v in last],
        "mean_final_accuracy": float(last.mean()),
        "bwt": bwt,
    }


def _results(prep: Prepared, state: dict) -> dict[str, Any]:
    spec, setup = prep.spec, prep.setup
    acc = np.asarray(jax.device_get(state["continual"]["accuracy"]), np.float64)
    t, n = spec.num_tasks, setup.layout.size
    generator = setup.kind.num_trained(state["params"]).get("num_generator_params", 0)
    trained = {"hnet": generator, "finetune": n, "ewc": n, "separate": t * n}[spec.method]
    return {
        "schema_version": results.RESULTS_SCHEMA_VERSION,
        "task": "continual",
        "mode": spec.label,
        "benchmark": spec.benchmark,
        "multi_head": spec.multi_head,
        "dataset": prep.tasks.base.name,
        "model": results.describe_model(spec.exp),
        "num_tasks": t,
        "steps_per_task": spec.steps_per_task,
        "train_examples_per_task": prep.tasks.train_size,
        "seed": spec.exp.seed,
        "beta": spec.hnet.beta if spec.method == "hnet" else None,
        "hnet_generator": spec.hnet.generator if spec.method == "hnet" else None,
        "ewc": _ewc_results(prep) if spec.method == "ewc" else None,
        "num_target_params": n,
        "num_generator_params": generator,
        # Trained beside a generator, as other runs report it (the baselines' networks).
        "num_direct_params": trained - generator,
        "num_trained_params": trained,
        "metric_name": "accuracy",
        "accuracy_matrix": [
            [float(acc[i, j]) if j <= i else None for j in range(t)] for i in range(t)
        ],
        **accuracy_summary(acc),
        # The mean final accuracy, under the name `uhn-jax summarize` reads.
        "test_metric": float(acc[-1].mean()),
        "task_inference": task_inference_accuracy(prep, state) if spec.task_inference else None,
        "numerics": results.numerics(setup),
    }


def _ewc_results(prep: Prepared) -> dict[str, Any]:
    s, size = prep.spec.ewc, prep.tasks.train_size
    return {
        "lam": s.lam,
        "gamma": s.gamma,
        "fisher_examples": min(s.fisher_examples, size),
        "fisher": "true (exact expectation over the model's classes)",
    }


def format_results(out: Mapping[str, Any]) -> str:
    """The accuracy matrix of a finished run's results (rows: after training task ``i``), its
    mean final accuracy and backward transfer, as printed by ``uhn-jax continual``; one line
    for a run stopped early."""
    matrix = out.get("accuracy_matrix")
    if matrix is None:
        return f"stopped at step {out.get('step')}; rerun the same command to resume"
    t = len(matrix)
    head = "after task | " + " ".join(f"{f'task {j}':>7}" for j in range(t))
    rows = [
        f"{i:>10} | " + " ".join(f"{100 * v:6.1f}%" if v is not None else " " * 7 for v in row)
        for i, row in enumerate(matrix)
    ]
    bwt = out.get("bwt")
    tail = (
        f"{out['mode']} on {out['benchmark']} {out['dataset']}: mean final accuracy "
        f"{100 * out['mean_final_accuracy']:.2f} %, backward transfer "
        + ("n/a" if bwt is None else f"{100 * bwt:+.2f} pp")
        + f", {out['num_trained_params']:,} trained params"
    )
    inferred = out.get("task_inference")
    if inferred:
        tail += (
            f"\nwithout the task id (lowest predictive entropy): right task "
            f"{100 * inferred['task_accuracy']:.2f} %, accuracy {100 * inferred['accuracy']:.2f} %"
        )
    return "\n".join([head, *rows, tail])


def _log_task_end(prep: Prepared):
    """The loop's ``after_step``: at the end of each task, its row of the accuracy matrix."""
    per = prep.spec.steps_per_task

    def after(done: int, state: dict) -> dict | None:
        if done % per:
            return None
        task = done // per - 1
        row = np.asarray(jax.device_get(state["continual"]["accuracy"][task]))
        return {
            "task_done": task,
            **{f"test_accuracy_task{j}": float(row[j]) for j in range(task + 1)},
        }

    return after


def _with_added_fields(old: dict, new: dict) -> dict:
    """A config saved before ``hnet.generator``, the ``generator`` group and
    ``continual.multi_head`` existed, as it reads now: a chunked ``hnet`` (which reads no
    ``generator`` group) with one shared head, so its run resumes."""
    if isinstance(old.get("continual"), dict) and "multi_head" not in old["continual"]:
        old = {**old, "continual": {**old["continual"], "multi_head": False}}
    if "generator" in old or not isinstance(old.get("hnet"), dict):
        return old
    return {**old, "hnet": {"generator": "chunked", **old["hnet"]}, "generator": new["generator"]}


def _check_workdir(cfg: dict, workdir: Path) -> None:
    """Refuses a workdir holding another continual run, naming the fields that differ."""
    saved = workdir / workdir_lib.CONFIG_FILE
    if not saved.exists():
        return
    old = workdir_lib.read_json(saved, "Restore it from a copy, or use a new --workdir.")
    old_flat = workdir_lib.flat(_with_added_fields(old, cfg)) if isinstance(old, dict) else {}
    new_flat = workdir_lib.flat(cfg)
    differ = sorted(
        k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k)
    )
    if differ:
        raise workdir_lib.WorkdirError(
            f"workdir {workdir} holds a continual run with a different config (fields differ: "
            f"{', '.join(differ)}). Use a new --workdir, or delete the old one to start over."
        )


def run(cfg, workdir: str | Path, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Trains the continual run of ``cfg`` (``configs/continual.py``) in ``workdir``,
    resuming from its latest checkpoint, and evaluates every task after each one.

    Args:
      cfg: a continual config (ConfigDict or mapping), checked by :func:`validate`.
      workdir: run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl`` (each
        task's end logs its accuracy row), ``tensorboard/`` and, at the end, ``results.json``.
      progress: show a progress bar.
      stop_after: stop (after checkpointing) once this many steps are done.

    Returns:
      The results (also in ``results.json``): the accuracy matrix ``A[i][j]`` (accuracy on
      task ``j`` after training task ``i``; ``None`` for ``j > i``), the final accuracies,
      their mean and the backward transfer; ``{"step", "accuracy_matrix": None}`` when stopped
      early.
    """
    cfg = config_lib.as_dict(cfg)
    workdir = Path(workdir)
    spec = validate(cfg)
    _check_workdir(cfg, workdir)
    if (workdir / "results.json").exists():
        return workdir_lib.read_json(workdir / "results.json", train.RESULTS_FIX)
    start_time = time.time()
    prep = prepare(spec)
    if jax.process_index() == 0:  # written once the config and data have passed validation
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_atomic(
            workdir / workdir_lib.CONFIG_FILE, json.dumps(cfg, indent=2) + "\n"
        )
    loop = loop_lib.Loop(
        workdir,
        init_state(prep),
        total=spec.total_steps,
        log_every=spec.exp.train.log_every,
        checkpoint_every=spec.exp.train.checkpoint_every,
        progress=progress,
        desc=f"continual {spec.label} seed {spec.exp.seed}",
    )
    try:
        state, finished = loop.run(
            step_fn(prep), stop_after=stop_after, after_step=_log_task_end(prep)
        )
    finally:
        loop.mngr.close()  # waits for the last save; no orbax thread outlives the run
    if not finished:
        return {"step": int(state["step"]), "accuracy_matrix": None}
    out = _results(prep, state)
    out["wall_s"] = round(time.time() - start_time, 2)
    return results.write(workdir, out)


def load_state(cfg, workdir: str | Path) -> tuple[Prepared, dict]:
    """The prepared run of ``cfg`` and the latest checkpointed state in ``workdir`` (e.g. to
    evaluate a task with :func:`evaluate_task` or read its weights with :func:`task_params`).

    Raises:
      WorkdirError: when ``workdir`` has no checkpoint.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise workdir_lib.WorkdirError(f"{workdir} has no checkpoints/ to load")
    prep = prepare(validate(cfg))
    mngr = checkpoint.manager(workdir / "checkpoints")
    try:
        state, step = checkpoint.restore_latest(mngr, init_state(prep))
    finally:
        mngr.close()
    if step is None:
        raise workdir_lib.WorkdirError(f"{workdir / 'checkpoints'} holds no checkpoint")
    return prep, state
