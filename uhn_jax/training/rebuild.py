"""A run's model rebuilt from its workdir: ``load_run``, ``load_model_params`` and ``export``.

``config.json`` alone does not rebuild every run's model: a run given its dataset in memory
(``train.run(exp, workdir, dataset=...)``) has a model shaped by that data, and a model family
registered by user code (``uhn_jax.register_family``) is unknown to a fresh process. So a run
also writes ``model.json`` (:func:`write_record`): where its dataset came from (``registry``,
which ``config.json`` reloads, or ``memory``), what the model family can read of it without
the data (array shapes and dtypes, class counts, vocabulary sizes, ...), its task and
``dataset_type``, whether the family is one of the library's, and the shapes of the params
it trained with a checksum of their descriptors. A rebuilt model must match those, so a
command reading the workdir gives the run's own model or one line saying what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from pathlib import Path
from typing import Any

import jax

from uhn_jax import config as config_lib
from uhn_jax import models
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import registry as data_registry
from uhn_jax.training import checkpoint, tasks
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import workdir as workdir_lib

#: What rebuilds a run's model, next to ``config.json``.
MODEL_FILE = "model.json"
RECORD_VERSION = 1
#: Sequences up to this many JSON characters are recorded whole; longer ones by length.
_MAX_VALUE_CHARS = 4096


class RebuildError(workdir_lib.WorkdirError):
    """A workdir does not hold what rebuilding its run's model needs."""


def _python_export(workdir: Path, args: str = "") -> str:
    return f"uhn_jax.training.experiments.export({str(workdir)!r}{args})"


def _spec_value(value: Any) -> dict[str, Any] | None:
    """One dataset attribute as JSON: an array's shape and dtype, a scalar or a short
    sequence as it is, a long sequence's length; None for anything else."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"shape": [int(d) for d in value.shape], "dtype": str(value.dtype)}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    if isinstance(value, tuple | list):
        try:
            text = json.dumps(value)
        except TypeError:
            return {"len": len(value)}
        return {"value": json.loads(text)} if len(text) <= _MAX_VALUE_CHARS else {"len": len(value)}
    return None


def dataset_spec(dataset) -> dict[str, Any]:
    """What a model family can read of ``dataset`` without its data: every public field and
    property, arrays as ``{"shape", "dtype"}``, values as ``{"value"}``, long sequences as
    ``{"len"}`` (:func:`dataset_stub` turns it back into an object)."""
    names = set(getattr(dataset, "__dict__", {}))
    if dataclasses.is_dataclass(dataset):
        names |= {f.name for f in dataclasses.fields(dataset)}
    cls = type(dataset)
    names |= {n for n in dir(cls) if isinstance(getattr(cls, n, None), property)}
    spec = {}
    for name in sorted(n for n in names if not n.startswith("_")):
        try:
            entry = _spec_value(getattr(dataset, name))
        except Exception:  # a property that needs more than the object holds
            continue
        if entry is not None:
            spec[name] = entry
    return spec


class _Length:
    """Stands for a recorded sequence of which only the length is kept."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def dataset_stub(spec: dict[str, Any]) -> types.SimpleNamespace:
    """An object with the attributes of :func:`dataset_spec`: arrays as
    ``jax.ShapeDtypeStruct``, sequences as tuples, long ones as objects with a length."""
    attrs = {}
    for name, entry in spec.items():
        if "shape" in entry:
            attrs[name] = jax.ShapeDtypeStruct(tuple(entry["shape"]), entry["dtype"])
        elif "len" in entry:
            attrs[name] = _Length(entry["len"])
        else:
            attrs[name] = _tuples(entry["value"])
    return types.SimpleNamespace(**attrs)


def params_signature(model) -> list[list]:
    """``[path, shape, dtype]`` of every leaf of ``model``'s params (what an export holds)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return [
        [jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype)]
        for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
    ]


def descriptors_sha256(desc) -> str:
    """Checksum of the per-layer descriptors (global and structure fields, all from numpy)."""
    return hashlib.sha256(desc.structure_input.tobytes()).hexdigest()


def write_record(workdir: Path, exp: config_lib.Experiment, dataset, model) -> None:
    """Writes ``workdir/model.json`` (process 0), unless the workdir has one."""
    path = Path(workdir) / MODEL_FILE
    if jax.process_index() != 0 or path.exists():
        return
    record = {
        "version": RECORD_VERSION,
        "family": exp.model.family,
        # A user's family lives in user code: a fresh process does not know it.
        "user_family": exp.model.family not in config_lib.MODEL_FAMILIES,
        "model_set": bool(exp.model.model_set),
        "dataset": {
            "name": getattr(dataset, "name", exp.data.name),
            "source": "registry" if tasks.from_registry(dataset) else "memory",
            "task": tasks.task_of(exp),
            "dataset_type": tasks.dataset_type(exp, dataset),
            "spec": dataset_spec(dataset),
        },
        "params": params_signature(model),
        "descriptors_sha256": descriptors_sha256(setup_lib.model_descriptors(model)),
    }
    workdir_lib.write_atomic(path, json.dumps(record, indent=1) + "\n")


def read_record(workdir: Path) -> dict[str, Any] | None:
    """``workdir/model.json``, or None for a run from before it existed."""
    path = Path(workdir) / MODEL_FILE
    if not path.exists():
        return None
    return workdir_lib.read_json(path, "Delete it: commands then rebuild from config.json alone.")


def _registered_dataset(name: str) -> bool:
    try:
        data_registry.get(name)
    except ValueError:
        return False
    return True


def _unregistered(workdir: Path, saved: dict[str, Any]) -> str | None:
    """Why ``config.json``'s family or dataset cannot be built in this process, or None."""
    family = (saved.get("model") or {}).get("family")
    name = (saved.get("data") or {}).get("name")
    if family is not None and family not in models.family_names():
        what = f"model.family {family!r} is a model family registered by user code"
        how = "uhn_jax.register_family"
    elif name is not None and not _registered_dataset(name):
        what = f"data.name {name!r} is a dataset registered by user code"
        how = "uhn_jax.register_dataset"
    else:
        return None
    return (
        f"cannot rebuild the model of {workdir}: {what} ({how}), unknown to this process. "
        f"Pass the config file that registers it (uhn-jax export --workdir {workdir} --config "
        f"FILE), or in Python register it as for training and call {_python_export(workdir)}"
    )


def read_experiment(workdir: Path) -> config_lib.Experiment:
    """The experiment of ``workdir/config.json``.

    Raises:
      FileNotFoundError: if ``workdir`` is not a run directory.
      RebuildError: for a model family or dataset this process does not know, a config
        that is not one run's, or a model-set run.
    """
    path = workdir / workdir_lib.CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a uhn-jax run directory?")
    saved = workdir_lib.read_json(path, "Restore it from a copy of the run's config.")
    problem = _unregistered(workdir, saved) if isinstance(saved, dict) else None
    if problem:
        raise RebuildError(problem)
    try:
        exp = config_lib.from_config_dict(saved)
    except (ValueError, TypeError) as e:
        raise RebuildError(f"{path} is not the config of one uhn-jax run: {e}") from None
    if exp.model.model_set:
        raise RebuildError(
            f"{workdir} is a model-set run (model.model_set): its generator stands for every "
            "member of the set and export rebuilds one model, which is not supported"
        )
    return exp


def _in_memory(workdir: Path, record: dict, why: str, call: str) -> RebuildError:
    name = record["dataset"]["name"]
    return RebuildError(
        f"cannot rebuild {workdir}'s run: it trained on an in-memory dataset ({name!r}, given "
        f"to train.run(..., dataset=...)) that the workdir does not hold, and {why}. From "
        f"Python, pass that dataset: {call}"
    )


def run_dataset(workdir: Path, exp: config_lib.Experiment, record, dataset=None):
    """The dataset a run trained on: ``dataset`` if given, else ``exp.data``'s.

    Raises:
      RebuildError: if the run trained on an in-memory dataset and ``dataset`` is None.
    """
    if dataset is not None:
        return dataset
    if record is not None and record["dataset"]["source"] != "registry":
        call = f"uhn_jax.training.experiments.load_run({str(workdir)!r}, dataset=ds)"
        why = (
            "evaluating it needs that data (an export does not: "
            f"uhn-jax export --workdir {workdir})"
        )
        raise _in_memory(workdir, record, why, call)
    return tasks.load_dataset(exp)


def _model(workdir: Path, exp: config_lib.Experiment, record, dataset):
    """The run's base model: built for ``dataset`` if given, else for the recorded dataset
    spec, else (a spec the family cannot build from, or no record) for ``exp.data``."""
    if dataset is not None or record is None:
        return setup_lib.build_model(exp, run_dataset(workdir, exp, record, dataset))
    info = record["dataset"]
    try:
        stub = dataset_stub(info["spec"])
        return models.registry.build(exp.model, stub, info["dataset_type"])
    except Exception as e:  # a family that reads the data itself, not only its shapes
        if info["source"] != "registry":
            why = f"model.family {exp.model.family!r} needs more of it than its shapes ({e!r:.120})"
            call = _python_export(workdir, ", dataset=ds")
            raise _in_memory(workdir, record, why, call) from None
        return setup_lib.build_model(exp, tasks.load_dataset(exp))


def _first_difference(saved: list, got: list) -> str:
    saved_d, got_d = {p: s for p, *s in saved}, {p: s for p, *s in got}
    for path in sorted(saved_d.keys() | got_d.keys()):
        if saved_d.get(path) != got_d.get(path):
            trained = "absent" if path not in saved_d else tuple(saved_d[path][0])
            rebuilt = "absent" if path not in got_d else tuple(got_d[path][0])
            return f"params{path}: trained {trained}, rebuilt {rebuilt}"
    return "same params, other descriptors"


def check_model(workdir: Path, record, model, desc) -> None:
    """Raises :class:`RebuildError` if ``model`` is not the one the run trained: against
    ``model.json``, or for an older run against ``results.json``'s parameter count."""
    if record is None:
        path = workdir / "results.json"
        results = workdir_lib.read_json(path, "Delete it.") if path.exists() else {}
        count = results.get("num_target_params")
        if count is None or count == desc.layout.size:
            return
        what = f"{desc.layout.size:,} target params, results.json {count:,}"
    else:
        saved, got = record["params"], json.loads(json.dumps(params_signature(model)))
        if saved == got and record["descriptors_sha256"] == descriptors_sha256(desc):
            return
        what = _first_difference(saved, got)
    raise RebuildError(
        f"the model rebuilt for {workdir} is not the one it trained ({what}): the run's "
        "dataset or model family differs from what this process builds. From Python, pass "
        f"the dataset it trained on: {_python_export(workdir, ', dataset=ds')}"
    )


def _restore(workdir: Path, setup: setup_lib.Setup) -> dict:
    """The latest checkpoint's train state; the manager is closed before returning."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint in {directory}; train first")
    mngr = checkpoint.manager(directory)
    try:
        target = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
        state, step = checkpoint.restore_latest(mngr, target)
    finally:
        mngr.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}; train first")
    return state


def load_run(workdir: str | Path, *, dataset=None):
    """A finished or interrupted run's ``(exp, setup, desc, dataset, state)`` from its
    ``config.json`` and latest checkpoint, with its data (for evaluation).

    Args:
      workdir: the run directory.
      dataset: the dataset the run trained on; needed when it was given in memory
        (``train.run(..., dataset=...)``), else loaded from the config.

    Raises:
      FileNotFoundError: If ``workdir`` is not a run directory or holds no checkpoint.
      RebuildError: If the workdir does not hold what rebuilding its model needs.
    """
    workdir = Path(workdir)
    exp = read_experiment(workdir)
    record = read_record(workdir)
    dataset = run_dataset(workdir, exp, record, dataset)
    setup, desc = setup_lib.make_setup(exp, dataset)
    check_model(workdir, record, setup.model, desc)
    return exp, setup, desc, dataset, _restore(workdir, setup)


def load_model_params(workdir: str | Path, *, dataset=None) -> tuple[config_lib.Experiment, Any]:
    """The config and the base model's params of a run's latest checkpoint (for a hypernetwork
    kind, generated once from it). Needs no data: the model is rebuilt from ``model.json``
    (``dataset``, when given, is used instead).

    Raises:
      FileNotFoundError: If ``workdir`` is not a run directory or holds no checkpoint.
      RebuildError: If the workdir does not hold what rebuilding its model needs.
    """
    workdir = Path(workdir)
    exp = read_experiment(workdir)
    record = read_record(workdir)
    model = _model(workdir, exp, record, dataset)
    task = record["dataset"]["task"] if record else tasks.task_of(exp)
    mesh = sharding_lib.make_mesh(exp.train.num_devices)
    setup, desc = setup_lib.model_setup(exp, model, task, mesh)
    check_model(workdir, record, model, desc)
    state = _restore(workdir, setup)
    params = step_lib.materialize_params(
        setup, state["params"], state["constants"], setup_lib.desc_arrays(setup, desc)
    )
    return exp, params


def export(workdir: str | Path, out: str | Path | None = None, *, dataset=None) -> Path:
    """Writes the base-model params of a run as a plain orbax checkpoint (default
    ``workdir/export``).

    For a hypernetwork kind the weights are generated once from the latest checkpoint; the
    export then loads with :func:`uhn_jax.training.checkpoint.load_params` alone, without the
    generator. The model is rebuilt as in :func:`load_model_params`; pass ``dataset`` for a
    run trained on an in-memory dataset whose model the workdir cannot rebuild, and register
    a user model family (as for training) before calling.

    Raises:
      FileNotFoundError: If ``workdir`` is not a run directory or holds no checkpoint.
      RebuildError: If the workdir does not hold what rebuilding its model needs.
    """
    workdir = Path(workdir)
    _, params = load_model_params(workdir, dataset=dataset)
    return checkpoint.save_params(Path(out) if out else workdir / "export", params)
