"""The config of an SNE experiment (``configs/sne.py``), checked into a :class:`Spec` before the
zoo is read or anything compiles; :mod:`uhn_jax.training.sne` runs it.

Groups: the zoo (``zoo``, ``allow_partial``, ``snapshots``), what is compared (``methods``,
``seeds``, ``tasks``, ``val_fraction``), and each method's settings: ``chunking`` and ``sne``
(SNE's tokens and sizes), ``mlp`` (the statistics and flat-weights MLPs), ``gbt`` (the
gradient-boosted trees), ``train`` (the optimisation of every neural predictor).

A task (``tasks.<name>``) has a ``kind`` and the fields that kind reads:

* ``same_zoo``: the networks of ``datasets`` and ``families`` (empty: all), split at random by
  network (every snapshot of a network on one side), ``test_fraction`` of them tested;
* ``cross_dataset``: trained on dataset ``train``'s networks, tested on dataset ``test``'s,
  both of ``families`` (empty: all);
* ``cross_architecture``: trained on family ``train``'s networks, tested on family ``test``'s,
  both on ``datasets`` (empty: every dataset both families have in the zoo).

Every kind also reads ``widths`` (empty: any architecture; else only networks of those widths,
e.g. ``(64,)``), which lets ``flat_mlp`` run: it needs networks of one layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uhn_jax import config as config_lib
from uhn_jax.core import checks
from uhn_jax.training import predictor, zoo_config
from uhn_jax.weightspace import chunking, sne, statistics

METHODS = ("sne", "stats_mlp", "stats_gbt", "flat_mlp")
KINDS = ("same_zoo", "cross_dataset", "cross_architecture")
FAMILIES = zoo_config.FAMILIES
TOP_FIELDS = (
    "zoo", "allow_partial", "snapshots", "methods", "seeds", "tasks", "val_fraction",
    "keep_checkpoints", "chunking", "sne", "mlp", "gbt", "train",
)  # fmt: skip
TASK_FIELDS = ("kind", "datasets", "families", "train", "test", "widths", "test_fraction")
#: The task fields each kind reads (besides ``kind`` and ``widths``).
KIND_FIELDS = {
    "same_zoo": ("datasets", "families", "test_fraction"),
    "cross_dataset": ("families", "train", "test"),
    "cross_architecture": ("datasets", "train", "test"),
}
TASK_DEFAULTS = {
    "datasets": (), "families": (), "train": "", "test": "", "widths": (), "test_fraction": 0.2,
}  # fmt: skip
CHUNKING_FIELDS = ("chunk_size", "max_tokens_per_layer")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One checked task (see the module docstring)."""

    name: str
    kind: str
    datasets: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    train: str = ""
    test: str = ""
    widths: tuple[int, ...] = ()
    test_fraction: float = 0.2

    def describe(self) -> dict[str, Any]:
        """The fields this kind reads, as JSON."""
        fields = ("kind", *KIND_FIELDS[self.kind], "widths")
        values = {k: getattr(self, k) for k in fields}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated SNE experiment config (:func:`validate`)."""

    zoo: str
    allow_partial: bool
    snapshots: tuple[int, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    tasks: tuple[TaskSpec, ...]
    val_fraction: float
    keep_checkpoints: bool
    chunk_size: int
    max_tokens_per_layer: int
    sne: sne.Settings
    mlp_hidden: tuple[int, ...]
    gbt: statistics.GbtSettings
    train: predictor.Settings


def as_dict(cfg) -> dict[str, Any]:
    """A deep, plain (JSON) copy of an SNE config; tuples become lists."""
    return config_lib.plain_dict(cfg, "an SNE config (configs/sne.py)")


def _group(cfg: Mapping[str, Any], name: str, allowed) -> dict[str, Any]:
    return config_lib.config_group(cfg.get(name), name, allowed, "SNE config")


def _strings(name: str, value, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    value = tuple(value) if isinstance(value, list | tuple) else (value,)
    if any(not isinstance(v, str) or not v for v in value):
        raise ValueError(f"{name} must be a tuple of non-empty names, got {value!r}")
    for v in value:
        if allowed is not None and v not in allowed:
            raise ValueError(f"{name}: unknown name {v!r}; allowed: {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} names something twice: {value!r}")
    return value


def _ints(name: str, value, minimum: int) -> tuple[int, ...]:
    value = tuple(value) if isinstance(value, list | tuple) else (value,)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in value):
        raise ValueError(f"{name} must be a tuple of ints >= {minimum}, got {value!r}")
    return value


def _task(name: str, value) -> TaskSpec:
    where = f"tasks.{name}"
    t = config_lib.config_group(value, where, TASK_FIELDS, "SNE config")
    checks.choice(f"{where}.kind", t.get("kind"), KINDS)
    kind = t["kind"]
    for field, default in TASK_DEFAULTS.items():
        given = t.get(field, default)
        given = tuple(given) if isinstance(given, list) else given
        if field not in KIND_FIELDS[kind] and field != "widths" and given != default:
            readers = [k for k, fields in KIND_FIELDS.items() if field in fields]
            raise ValueError(
                f"{where}.{field} is set ({given!r}) but a {kind} task does not read it (read "
                f"by {', '.join(readers)} tasks); leave it at {default!r}"
            )
    out = {"name": name, "kind": kind, "widths": _ints(f"{where}.widths", t.get("widths", ()), 1)}
    if kind == "same_zoo":
        fraction = t.get("test_fraction", 0.2)
        if not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise ValueError(f"{where}.test_fraction must be in (0, 1), got {fraction!r}")
        out["test_fraction"] = float(fraction)
    if "datasets" in KIND_FIELDS[kind]:
        out["datasets"] = _strings(f"{where}.datasets", t.get("datasets", ()))
    if "families" in KIND_FIELDS[kind]:
        out["families"] = _strings(f"{where}.families", t.get("families", ()), FAMILIES)
    if kind != "same_zoo":
        allowed = FAMILIES if kind == "cross_architecture" else None
        what = "family" if kind == "cross_architecture" else "dataset"
        for side in ("train", "test"):
            value = t.get(side, "")
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{where}.{side} must name the {side} side's {what}, got {value!r}"
                )
            _strings(f"{where}.{side}", value, allowed)
            out[side] = value
        if out["train"] == out["test"]:
            raise ValueError(f"{where}: train and test are both {out['train']!r}; they must differ")
    return TaskSpec(**out)


def _tasks(cfg: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    tasks = cfg.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must be a non-empty group of named tasks, got {tasks!r}")
    for name in tasks:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"tasks.{name}: a task name is letters, digits and underscores")
    return tuple(_task(name, tasks[name]) for name in tasks)


def _dataclass(cls, cfg: Mapping[str, Any], name: str):
    fields = tuple(f.name for f in dataclasses.fields(cls))
    return cls(**_group(cfg, name, fields))


def _train(cfg: Mapping[str, Any]) -> predictor.Settings:
    t = _dataclass(predictor.Settings, cfg, "train")
    for f in ("steps", "batch_size", "eval_every", "eval_batch_size", "log_every"):
        checks.positive_int(f"train.{f}", getattr(t, f))
    checks.positive_int("train.checkpoint_every", t.checkpoint_every)
    checks.non_negative_int("train.warmup_steps", t.warmup_steps)
    for f in ("lr", "grad_clip"):
        value = getattr(t, f)
        if not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"train.{f} must be a number > 0, got {value!r}")
    for f in ("weight_decay", "rank_weight"):
        value = getattr(t, f)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"train.{f} must be a number >= 0, got {value!r}")
    if t.select not in predictor.SELECT:
        raise ValueError(f"train.select must be one of {predictor.SELECT}, got {t.select!r}")
    return dataclasses.replace(
        t,
        lr=float(t.lr),
        grad_clip=float(t.grad_clip),
        weight_decay=float(t.weight_decay),
        rank_weight=float(t.rank_weight),
    )


def _gbt(cfg: Mapping[str, Any]) -> statistics.GbtSettings:
    g = _dataclass(statistics.GbtSettings, cfg, "gbt")
    for f in ("max_iter", "min_samples_leaf"):
        checks.positive_int(f"gbt.{f}", getattr(g, f))
    if not isinstance(g.max_leaf_nodes, int) or g.max_leaf_nodes < 2:
        raise ValueError(f"gbt.max_leaf_nodes must be an int >= 2, got {g.max_leaf_nodes!r}")
    if not isinstance(g.learning_rate, int | float) or not g.learning_rate > 0:
        raise ValueError(f"gbt.learning_rate must be a number > 0, got {g.learning_rate!r}")
    return dataclasses.replace(g, learning_rate=float(g.learning_rate))


def validate(cfg) -> Spec:
    """Checks an SNE config (ConfigDict or mapping) without reading the zoo.

    Raises:
      ValueError: naming the field, its value and what is allowed.
    """
    cfg = as_dict(cfg)
    unknown = sorted(set(cfg) - set(TOP_FIELDS))
    if unknown:
        raise ValueError(f"SNE config: unknown field(s) {', '.join(unknown)}; it has {TOP_FIELDS}")
    if not isinstance(cfg.get("zoo"), str) or not cfg["zoo"]:
        raise ValueError(
            f"zoo must be the path of a model zoo (uhn-jax zoo), got {cfg.get('zoo')!r}"
        )
    methods = _strings("methods", cfg.get("methods", METHODS), METHODS)
    if not methods:
        raise ValueError(f"methods must name at least one of {METHODS}")
    seeds = _ints("seeds", cfg.get("seeds", (0,)), 0)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty tuple of distinct ints >= 0, got {seeds!r}")
    val = cfg.get("val_fraction", 0.15)
    if not isinstance(val, int | float) or not 0 <= val < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val!r}")
    ch = _group(cfg, "chunking", CHUNKING_FIELDS)
    chunking.check_chunk_size(ch.get("chunk_size"), "chunking.chunk_size")
    checks.positive_int("chunking.max_tokens_per_layer", ch.get("max_tokens_per_layer"))
    sne_settings = _dataclass(sne.Settings, cfg, "sne")
    sne_settings.check("sne")
    mlp = _group(cfg, "mlp", ("hidden",))
    hidden = _ints("mlp.hidden", mlp.get("hidden", (64, 64)), 1)
    return Spec(
        zoo=cfg["zoo"],
        allow_partial=checks.flag("allow_partial", cfg.get("allow_partial", False)),
        snapshots=_ints("snapshots", cfg.get("snapshots", ()), 0),
        methods=methods,
        seeds=seeds,
        tasks=_tasks(cfg),
        val_fraction=float(val),
        keep_checkpoints=checks.flag("keep_checkpoints", cfg.get("keep_checkpoints", False)),
        chunk_size=ch["chunk_size"],
        max_tokens_per_layer=ch["max_tokens_per_layer"],
        sne=sne_settings,
        mlp_hidden=hidden,
        gbt=_gbt(cfg),
        train=_train(cfg),
    )
