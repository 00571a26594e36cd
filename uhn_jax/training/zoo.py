"""Building a model zoo (``uhn-jax zoo``): many small networks trained in groups through the one
training loop, each group's snapshots stored in the zoo (:mod:`uhn_jax.weightspace.zoo`).

A group is ``group_size`` networks of one architecture on one dataset
(:mod:`uhn_jax.training.zoo_config`), trained side by side by
:class:`uhn_jax.training.loop.Loop` with :func:`group_step`: every member draws its own batches
(a per-member permutation key), its own dropout noise, and has its own AdamW learning rate,
weight decay, init scale and seed (:mod:`uhn_jax.hypernets.population`); the member axis is
split over the device mesh (``train.num_devices``). At each snapshot step the step function
evaluates every member (on a fixed subset of the training split and on the test split) and
copies its params into the state's snapshot buffers, so snapshots are checkpointed with the
rest of the state and a resumed group is bit-identical to an uninterrupted one. A finished
group is written to the zoo and listed complete in ``zoo.json``; a rerun skips complete groups
(their files untouched) and resumes the unfinished one from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uhn_jax import models
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import registry as data_registry
from uhn_jax.hypernets import population as population_lib
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks
from uhn_jax.training import zoo_config as config_lib
from uhn_jax.weightspace import zoo as store

validate = config_lib.validate
plan = config_lib.plan


@dataclasses.dataclass(frozen=True)
class GroupSetup:
    """The static part of a group's run (a jit static argument): the population, the input
    normalisation of uint8 data, the batch size, the number of snapshots and the mesh."""

    pop: population_lib.Population
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    batch_size: int
    num_snapshots: int
    mesh: jax.sharding.Mesh | None = None
    augment: Any = None  # read by tasks.prepare_inputs; a zoo does not augment

    @property
    def model(self):
        return self.pop.model


@dataclasses.dataclass(frozen=True, eq=False)
class GroupData:
    """A group's data on device: the training split, the two evaluation sets as padded
    batches ``(x[nb, B, ...], y[nb, B], valid[nb, B])``, and what the records say of them."""

    train: tuple[jax.Array, jax.Array]
    evals: dict[str, tuple[jax.Array, jax.Array, jax.Array]]
    info: dict[str, Any]


def _subset(n: int, k: int, salt: int) -> np.ndarray:
    """The first ``k`` of a fixed permutation of ``range(n)`` (all of it for ``k`` 0 or >= n),
    sorted: the same examples for every group and seed."""
    if not k or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng((0, salt)).permutation(n)[:k])


def _batched(x: np.ndarray, y: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    n = len(x)
    pad = -n % batch
    valid = np.arange(n + pad) < n
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    nb = (n + pad) // batch
    return x.reshape(nb, batch, *x.shape[1:]), y.reshape(nb, batch), valid.reshape(nb, batch)


def load_data(spec: config_lib.Spec, group: config_lib.GroupPlan, dataset, mesh) -> GroupData:
    """``group``'s splits of the loaded ``dataset`` on device (replicated over ``mesh``)."""
    tr = _subset(len(dataset.x_train), group.train_examples, 1)
    te = _subset(len(dataset.x_test), group.test_examples, 2)
    x_train, y_train = dataset.x_train[tr], dataset.y_train[tr]
    ev = _subset(len(x_train), spec.train.train_eval_examples, 3)
    batch = spec.train.eval_batch_size
    evals = {
        "train": _batched(x_train[ev], y_train[ev], batch),
        "test": _batched(dataset.x_test[te], dataset.y_test[te], batch),
    }
    mean = getattr(dataset, "mean", None)
    info = {
        "name": group.data.name,
        "input_shape": list(dataset.input_shape),
        "num_classes": int(dataset.num_classes),
        "dataset_type": data_registry.dataset_type(group.data),
        "input_norm": None if mean is None else [list(mean), list(dataset.std)],
        "train_examples": len(tr),
        "test_examples": len(te),
        "train_eval_examples": len(ev),
    }
    on_device = sharding_lib.replicate(mesh, ((x_train, y_train), evals))
    return GroupData(on_device[0], on_device[1], info)


def make_setup(spec: config_lib.Spec, group: config_lib.GroupPlan, data: GroupData, mesh):
    """The :class:`GroupSetup` of ``group`` (its base model built through the family registry)."""
    shape = types.SimpleNamespace(
        input_shape=tuple(data.info["input_shape"]), num_classes=data.info["num_classes"]
    )
    model = models.registry.build(group.model, shape, data.info["dataset_type"])
    lanes = 1 if mesh is None else mesh.size
    member_map = population_lib.resolve_member_map(spec.train.member_map, group.model.family)
    pop = population_lib.Population(
        model, group.members, spec.train.warmup_steps, member_map, lanes
    )
    norm = data.info["input_norm"]
    norm = None if norm is None else (tuple(norm[0]), tuple(norm[1]))
    return GroupSetup(pop, norm, group.batch_size, len(group.snapshot_steps), mesh)


def _state_shardings(gs: GroupSetup, state: dict):
    """Every leaf split over the mesh along its member axis, but the step (replicated)."""
    rep = sharding_lib.replicated(gs.mesh)
    return {
        k: rep if k == "step" else jax.tree.map(lambda a: sharding_lib.split(gs.mesh, a.ndim), v)
        for k, v in state.items()
    }


def init_state(gs: GroupSetup, group: config_lib.GroupPlan) -> dict:
    """The step-0 state: ``{step, params, opt_state, constants: {hparams}, diverged_at,
    snapshots}``; every leaf but ``step`` has the member axis first."""
    hparams = {
        k: np.asarray(group.hparams[k], np.int32 if k == "seed" else np.float32)
        for k in population_lib.HPARAMS
    }
    state = _compiled(gs, "init", None)(hparams)
    if gs.mesh is None:
        return state
    return jax.tree.map(sharding_lib.put, state, _state_shardings(gs, state))


def _init(gs: GroupSetup, hparams: dict) -> dict:
    params, opt_state = population_lib.init(gs.pop, hparams)
    s = gs.num_snapshots

    def buffer(p):
        return jnp.zeros((p.shape[0], s, *p.shape[1:]), p.dtype)

    snapshots = {"params": jax.tree.map(buffer, params)}
    snapshots |= {k: jnp.zeros((gs.pop.size, s), jnp.float32) for k in store.METRICS}
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": opt_state,
        "constants": {"hparams": hparams},
        "diverged_at": jnp.full((gs.pop.size,), -1, jnp.int32),
        "snapshots": snapshots,
    }


def _forward(gs: GroupSetup, params, x, *, rngs=None, shared: bool = False):
    """Every member's outputs ``[M, B, C]``: on its own inputs ``x[M, B, ...]``, or on the
    same inputs ``x[B, ...]`` (``shared``); through the model's batched ``apply_many`` when it
    has one and no dropout, else member by member (:func:`population_lib.over_members`)."""
    model, pop, train = gs.model, gs.pop, rngs is not None
    many = getattr(model, "apply_many", None)
    if many is not None and not getattr(model, "dropout_rate", 0.0):
        return many(params, jnp.broadcast_to(x, (pop.size, *x.shape)) if shared else x)
    if shared:
        return population_lib.over_members(pop, lambda p: model.apply(p, x), params)

    def one(p, xm, rng):
        return model.apply(p, xm, train=train, rng=rng)

    if rngs is None:
        return population_lib.over_members(pop, lambda p, xm: one(p, xm, None), params, x)
    return population_lib.over_members(pop, one, params, x, rngs)


def group_step(gs: GroupSetup, state: dict, train) -> tuple[dict, dict]:
    """One training step of every member (pure): each on its own batch of ``train`` (step
    ``state["step"]`` of its own per-epoch permutation), with its own dropout noise and its own
    guarded AdamW update. Metrics average the members that have not diverged."""
    step, h = state["step"], state["constants"]["hparams"]
    keys = jax.vmap(population_lib.member_key)(h["seed"])

    def batch(key):
        return tasks.sample_batch(*train, step, jax.random.fold_in(key, 1), gs.batch_size)

    x, y = jax.vmap(batch)(keys)
    x = sharding_lib.constrain(x, sharding_lib.split(gs.mesh, x.ndim))
    x = tasks.prepare_inputs(gs, x)
    rngs = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 0), step))(keys)

    def loss_fn(params):
        logits = _forward(gs, params, x, rngs=rngs)
        loss_M = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(-1)
        acc_M = (logits.argmax(-1) == y).mean(-1)
        return loss_M.sum(), (loss_M, acc_M)

    grads, (loss_M, acc_M) = jax.grad(loss_fn, has_aux=True)(state["params"])
    update = functools.partial(population_lib.guarded_update, gs.pop, step=step)
    params, opt_state, diverged_at = jax.vmap(update)(
        state["params"], state["opt_state"], grads, loss_M, h, state["diverged_at"]
    )
    healthy = diverged_at < 0
    count = jnp.maximum(healthy.sum(), 1)
    metrics = {
        "loss": jnp.where(healthy, loss_M, 0.0).sum() / count,
        "accuracy": jnp.where(healthy, acc_M, 0.0).sum() / count,
        "diverged": (~healthy).sum(),
    }
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
    return dict(new_state, diverged_at=diverged_at), metrics


def evaluate(gs: GroupSetup, params, xs, ys, valid) -> tuple[jax.Array, jax.Array]:
    """Every member's ``(accuracy[M], mean loss[M])`` on padded batches ``xs[nb, B, ...]``."""
    m = gs.pop.size

    def one_batch(carry, batch):
        x, y, v = batch
        logits = _forward(gs, params, tasks.prepare_inputs(gs, x), shared=True)
        labels = jnp.broadcast_to(y, (m, *y.shape))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (logits.argmax(-1) == labels).astype(jnp.float32)
        w = v.astype(jnp.float32)
        return (carry[0] + (correct * w).sum(-1), carry[1] + (loss * w).sum(-1)), None

    zero = jnp.zeros((m,), jnp.float32)
    (correct, loss), _ = jax.lax.scan(one_batch, (zero, zero), (xs, ys, valid))
    n = valid.sum()
    return correct / n, loss / n


def record(gs: GroupSetup, state: dict, slot, evals) -> dict:
    """``state`` with snapshot ``slot`` taken: every member's params and its accuracy and
    loss on the training subset and the test split."""
    params, snaps = state["params"], dict(state["snapshots"])
    snaps["params"] = jax.tree.map(lambda buf, p: buf.at[:, slot].set(p), snaps["params"], params)
    for split in ("train", "test"):
        acc, loss = evaluate(gs, params, *evals[split])
        # A diverged member's loss may overflow; the state stays finite (the loop refuses to
        # restore a checkpoint holding NaN/Inf), and the records say null.
        loss = jnp.where(jnp.isfinite(loss), loss, LOSS_OVERFLOW)
        snaps[f"{split}_accuracy"] = snaps[f"{split}_accuracy"].at[:, slot].set(acc)
        snaps[f"{split}_loss"] = snaps[f"{split}_loss"].at[:, slot].set(loss)
    return dict(state, snapshots=snaps)


_COMPILED: dict = {}
#: What a snapshot stores for a loss that is not finite (``null`` in ``records.json``).
LOSS_OVERFLOW = float(np.finfo(np.float32).max)


def _compiled(gs: GroupSetup, name: str, state: dict) -> Callable:
    """:func:`group_step` or :func:`record` jitted for ``gs`` (state donated; on a mesh with
    the state's member axis split and the data replicated), or the initial state (:func:`_init`),
    once per setup."""
    if (gs, name) not in _COMPILED:
        fn = functools.partial({"init": _init, "step": group_step, "record": record}[name], gs)
        kwargs: dict[str, Any] = {"donate_argnums": 0, "compiler_options": step_lib.XLA_OPTIONS}
        if name == "init":  # placed on the mesh afterwards
            kwargs = {"compiler_options": step_lib.XLA_OPTIONS}
        elif gs.mesh is not None:
            shardings, rep = _state_shardings(gs, state), sharding_lib.replicated(gs.mesh)
            ins = (shardings, rep) if name == "step" else (shardings, rep, rep)
            out = (shardings, rep) if name == "step" else shardings
            kwargs |= {"in_shardings": ins, "out_shardings": out}
        _COMPILED[(gs, name)] = jax.jit(fn, **kwargs)
    return _COMPILED[(gs, name)]


def step_fn(gs: GroupSetup, group: config_lib.GroupPlan, data: GroupData) -> loop_lib.StepFn:
    """The loop's ``step_fn``: the compiled group step, then a snapshot at a snapshot step."""
    slots = {s: i for i, s in enumerate(group.snapshot_steps)}

    def fn(step: int, state: dict):
        state, metrics = _compiled(gs, "step", state)(state, data.train)
        if step + 1 in slots:
            slot = jnp.asarray(slots[step + 1], jnp.int32)
            state = _compiled(gs, "record", state)(state, slot, data.evals)
        return state, metrics, {"stage": "zoo"}

    return fn


def _log_snapshots(group: config_lib.GroupPlan) -> loop_lib.AfterStep:
    """The loop's ``after_step``: each snapshot's test accuracies (mean, min, max)."""
    slots = {s: i for i, s in enumerate(group.snapshot_steps)}

    def after(done: int, state: dict) -> dict | None:
        if done not in slots:
            return None
        acc = np.asarray(jax.device_get(state["snapshots"]["test_accuracy"][:, slots[done]]))
        return {
            "snapshot": slots[done],
            "test_accuracy_mean": float(acc.mean()),
            "test_accuracy_min": float(acc.min()),
            "test_accuracy_max": float(acc.max()),
        }

    return after


def _model_fields(group: config_lib.GroupPlan) -> dict[str, Any]:
    m = group.model
    fields = {"family": m.family, "widths": list(m.widths)}
    if m.family == "cnn":
        fields |= {"depths": list(m.depths), "kernel_size": m.kernel_size, "groups": m.groups}
    if m.family == "ha_cnn":
        fields |= {"kernel_size": m.kernel_size, "head_hidden": list(m.head_hidden)}
    if m.family in config_lib.SLOPED_FAMILIES:
        fields |= {"slope": m.slope, "dropout_rate": m.dropout_rate}
    return fields


def _finite(value) -> float | None:
    value = float(value)
    return value if value < LOSS_OVERFLOW else None


def group_meta(spec, group: config_lib.GroupPlan, data: GroupData, snaps: dict, host: dict):
    """``records.json`` of a finished group: what the members share, and one record per
    (member, snapshot) with its hyperparameters, snapshot step and epoch, and metrics."""
    model, info = _model_fields(group), data.info
    shapes = jax.tree.leaves(snaps["params"])
    num_params = sum(int(np.prod(a.shape[2:])) for a in shapes)
    sloped = group.model.family in config_lib.SLOPED_FAMILIES
    shared = {
        "group": group.name,
        "population": group.population,
        "dataset": group.data.name,
        "family": group.model.family,
        "widths": model["widths"],
        "depths": model.get("depths"),
        "activation": "leaky_relu" if sloped else "relu",
        "slope": model.get("slope", 0.0),
        "dropout": model.get("dropout_rate", 0.0),
        "num_params": num_params,
        "optimizer": "adamw",
        "batch_size": group.batch_size,
        "warmup_steps": spec.train.warmup_steps,
        "model": model,
        "data": info,
    }
    records = []
    for m in range(group.members):
        hp = {k: group.hparams[k][m] for k in population_lib.HPARAMS}
        diverged = int(host["diverged_at"][m])
        for s, step in enumerate(group.snapshot_steps):
            metrics = {k: _finite(host[k][m, s]) for k in store.METRICS}
            records.append(
                {
                    "id": f"{group.name}/m{m:03d}/s{s}",
                    "network": group.first_network + m,
                    "member": m,
                    "snapshot": s,
                    **shared,
                    **hp,
                    "step": step,
                    "epoch": step * group.batch_size / info["train_examples"],
                    **metrics,
                    "diverged_at_step": diverged if diverged >= 0 else None,
                }
            )
    keep = ("group", "population", "dataset", "family", "model", "data")
    return {**{k: shared[k] for k in keep}, "records": records}


def _store_group(path: Path, spec, group, data: GroupData, state: dict, seconds: float):
    """Writes a finished group into the zoo; returns its records."""
    snaps = jax.device_get(state["snapshots"])
    host = {k: np.asarray(snaps[k]) for k in store.METRICS}
    host["diverged_at"] = np.asarray(jax.device_get(state["diverged_at"]))
    meta = group_meta(spec, group, data, snaps, host)
    weights = jax.tree.map(np.asarray, snaps)
    store.write_group(path, group.name, weights, meta, extra={"seconds": round(seconds, 2)})
    return meta["records"]


def run_group(spec, group, path: Path, dataset, *, progress: bool, budget: int | None):
    """Trains ``group`` in ``path/runs/<group>`` (resuming its checkpoint) for at most
    ``budget`` steps; stores it when it finishes. Returns ``(first step, steps taken,
    records)``; records ``None`` when the budget stopped it first."""
    start_time = time.time()
    mesh = sharding_lib.make_mesh(spec.train.num_devices)
    data = load_data(spec, group, dataset, mesh)
    gs = make_setup(spec, group, data, mesh)
    workdir = path / store.RUNS_DIR / group.name
    loop = loop_lib.Loop(
        workdir,
        init_state(gs, group),
        total=group.total_steps,
        log_every=spec.train.log_every,
        checkpoint_every=spec.train.checkpoint_every,
        progress=progress,
        desc=group.name,
    )
    start = loop.start
    stop = None if budget is None else start + budget
    try:
        state, finished = loop.run(
            step_fn(gs, group, data), stop_after=stop, after_step=_log_snapshots(group)
        )
    finally:
        loop.mngr.close()
    taken = int(state["step"]) - start
    if not finished:
        return start, taken, None
    records = _store_group(path, spec, group, data, state, time.time() - start_time)
    if not spec.keep_checkpoints:
        shutil.rmtree(workdir, ignore_errors=True)
    return start, taken, records


def _progress_line(i: int, n: int, group, records: list[dict], seconds: float) -> str:
    last = [r["test_accuracy"] for r in records if r["snapshot"] == len(group.snapshot_steps) - 1]
    arch = "x".join(map(str, group.model.widths))
    return (
        f"[zoo] {i + 1}/{n} {group.name}: {group.model.family} {arch} on {group.data.name}, "
        f"{group.members} networks x {len(group.snapshot_steps)} snapshots, "
        f"{group.total_steps} steps in {seconds:.1f} s; final test accuracy "
        f"{100 * min(last):.1f}-{100 * max(last):.1f} %"
    )


def check_devices(spec: config_lib.Spec) -> None:
    """Raises ``ValueError`` naming ``group_size`` when the mesh's devices cannot split it."""
    mesh = sharding_lib.make_mesh(spec.train.num_devices)  # names train.num_devices if too many
    if mesh is not None and spec.group_size % mesh.size:
        raise ValueError(
            f"group_size ({spec.group_size}) must be a multiple of the {mesh.size} devices the "
            f"member axis is split over (train.num_devices={spec.train.num_devices}, 0 = all)"
        )


def build(
    cfg,
    workdir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Builds (or continues) the zoo of ``cfg`` (``configs/zoo.py``) in ``workdir``.

    Complete groups are skipped; the unfinished one resumes from its checkpoint.

    Args:
      cfg: a zoo config (ConfigDict or mapping), checked by :func:`validate`.
      workdir: the zoo directory (:mod:`uhn_jax.weightspace.zoo`).
      progress: show each group's progress bar.
      stop_after: stop (checkpointed) after this many training steps in this call, summed
        over groups (for tests, and to build a zoo in slices).
      log: where the per-group progress lines go.

    Returns:
      :func:`summarize` of the zoo, plus ``trained`` (``(group, first step)`` of each group
      this call trained) and ``skipped`` (the groups already complete).

    Raises:
      ValueError: for a bad config (naming the field), before any data is loaded.
      ZooError: for a workdir holding another zoo or a damaged one.
    """
    cfg = config_lib.as_dict(cfg)
    spec = validate(cfg)
    check_devices(spec)
    groups = plan(spec)
    path = Path(workdir)
    manifest = store.open_or_create(path, cfg, [g.describe() for g in groups])
    datasets: dict = {}
    trained, skipped, budget = [], [], stop_after
    for i, group in enumerate(groups):
        if group.name in manifest["complete"]:
            skipped.append(group.name)
            if not spec.keep_checkpoints:  # a kill between storing and cleaning up
                shutil.rmtree(path / store.RUNS_DIR / group.name, ignore_errors=True)
            continue
        if budget is not None and budget <= 0:
            break
        if group.data not in datasets:
            datasets = {group.data: data_registry.load(group.data)}  # one dataset in memory
        t0 = time.time()
        start, taken, records = run_group(
            spec, group, path, datasets[group.data], progress=progress, budget=budget
        )
        trained.append((group.name, start))
        budget = None if budget is None else budget - taken
        if records is None:
            break
        log(_progress_line(i, len(groups), group, records, time.time() - t0))
    out = summarize(path)
    return {**out, "trained": trained, "skipped": skipped}


def summarize(path: str | Path) -> dict[str, Any]:
    """The zoo at ``path`` in figures: networks, records, datasets, families, the final
    snapshots' test accuracies (min, median, max), build time (the sum of the groups' own
    times) and bytes on disk; ``complete`` and ``missing`` for a partial zoo."""
    zoo = store.load(path, allow_partial=True)
    last: dict[str, int] = {}
    for r in zoo.records:
        last[r["group"]] = max(last.get(r["group"], 0), r["snapshot"])
    acc = np.asarray([r["test_accuracy"] for r in zoo.records if r["snapshot"] == last[r["group"]]])
    acc = acc if acc.size else np.zeros(1)
    complete = zoo.manifest["complete"]
    return {
        "path": str(path),
        "complete": zoo.complete,
        "missing": zoo.missing,
        "groups": len(zoo.groups),
        "networks": len({r["network"] for r in zoo.records}),
        "records": len(zoo.records),
        "datasets": sorted({r["dataset"] for r in zoo.records}),
        "families": sorted({r["family"] for r in zoo.records}),
        "test_accuracy": {
            "min": float(acc.min()),
            "median": float(np.median(acc)),
            "max": float(acc.max()),
        },
        "build_seconds": round(sum(complete[n].get("seconds", 0.0) for n in zoo.groups), 1),
        "bytes": store.disk_bytes(path),
    }


def format_summary(out: dict[str, Any]) -> str:
    """The summary ``uhn-jax zoo`` prints (:func:`summarize`'s figures)."""
    acc = out["test_accuracy"]
    state = "complete" if out["complete"] else f"PARTIAL ({len(out['missing'])} groups missing)"
    return (
        f"zoo {out['path']}: {state}; {out['networks']} networks in {out['groups']} groups, "
        f"{out['records']} snapshots; datasets {', '.join(out['datasets']) or '-'}; families "
        f"{', '.join(out['families']) or '-'}; final test accuracy min "
        f"{100 * acc['min']:.1f} / median {100 * acc['median']:.1f} / max "
        f"{100 * acc['max']:.1f} %; build time {out['build_seconds']:.0f} s (groups' own); "
        f"{out['bytes'] / 2**20:.1f} MiB on disk"
    )
