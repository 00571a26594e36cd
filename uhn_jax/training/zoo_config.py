"""The config of a model zoo (``configs/zoo.py``), checked into a :class:`Spec` before any data
is loaded or anything compiles, and the zoo's plan (:func:`plan`): every group's dataset,
architecture and members' hyperparameters, drawn deterministically from the zoo's seed.

A zoo is a set of *populations* (a dataset and a model family with a grid of architectures);
each population has ``groups`` groups of ``group_size`` networks. The networks of a group share
the dataset, the architecture, dropout and activation, and train together in one compiled step
(:mod:`uhn_jax.training.zoo`); each member has its own learning rate, weight decay, init scale
and seed (log-uniform draws from the ``hparams`` ranges). Group ``g`` of a population takes the
``g``-th architecture of its grid (cycling), so every architecture is covered evenly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.core import checks
from uhn_jax.hypernets import population as population_lib

TOP_FIELDS = ("seed", "group_size", "train", "hparams", "populations", "keep_checkpoints")
TRAIN_FIELDS = (
    "batch_size", "snapshot_steps", "warmup_steps", "eval_batch_size", "train_eval_examples",
    "checkpoint_every", "log_every", "num_devices", "member_map",
)  # fmt: skip
HPARAM_FIELDS = ("lr", "weight_decay", "init_scale", "dropout", "slopes")
POPULATION_FIELDS = (
    "data", "family", "groups", "widths", "depths", "kernel_sizes", "head_hidden",
    "norm_groups", "train_examples", "test_examples", "batch_size", "snapshot_steps",
    "fixed_seed",
)  # fmt: skip
#: The model families a zoo trains (:mod:`uhn_jax.models`), and those with dropout and a
#: LeakyReLU slope (``ha_cnn`` has ReLU and no dropout).
FAMILIES = ("mlp", "cnn", "ha_cnn")
SLOPED_FAMILIES = ("mlp", "cnn")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Training and evaluation settings shared by every group (a population may override the
    batch size and the snapshot steps)."""

    batch_size: int = 64
    snapshot_steps: tuple[int, ...] = (50, 100, 200, 400)
    warmup_steps: int = 0
    eval_batch_size: int = 500
    train_eval_examples: int = 2000
    checkpoint_every: int = 200
    log_every: int = 50
    num_devices: int = 0
    member_map: str = "auto"


@dataclasses.dataclass(frozen=True)
class Ranges:
    """Where hyperparameters are drawn from: ``(low, high)`` log-uniform per member (lr,
    weight decay, init scale; ``low == high`` is a constant, 0 allowed), ``(low, high)``
    uniform per group (dropout), a choice per group (LeakyReLU slopes; 0 is ReLU)."""

    lr: tuple[float, float] = (1e-4, 3e-2)
    weight_decay: tuple[float, float] = (1e-5, 0.5)
    init_scale: tuple[float, float] = (0.5, 2.0)
    dropout: tuple[float, float] = (0.0, 0.3)
    slopes: tuple[float, ...] = (0.0, 0.1, 0.3)


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """One dataset and model family, with its architecture grid (``archs``)."""

    name: str
    data: config_lib.DataConfig
    family: str
    groups: int
    archs: tuple[config_lib.ModelConfig, ...]
    train_examples: int
    test_examples: int
    batch_size: int
    snapshot_steps: tuple[int, ...]
    fixed_seed: int = -1  # >= 0: every network's seed (one init and batch order); -1: drawn


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated zoo config (:func:`validate`)."""

    seed: int
    group_size: int
    train: TrainSpec
    hparams: Ranges
    populations: tuple[PopulationSpec, ...]
    keep_checkpoints: bool = False

    @property
    def networks(self) -> int:
        return self.group_size * sum(p.groups for p in self.populations)


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One group of the plan: what its ``members`` networks share, and their hyperparameters
    (``hparams``: :data:`uhn_jax.hypernets.population.HPARAMS`, one value per member)."""

    index: int
    name: str
    population: str
    data: config_lib.DataConfig
    model: config_lib.ModelConfig
    batch_size: int
    snapshot_steps: tuple[int, ...]
    train_examples: int
    test_examples: int
    first_network: int
    hparams: Mapping[str, tuple]

    @property
    def members(self) -> int:
        return len(self.hparams["seed"])

    @property
    def total_steps(self) -> int:
        return self.snapshot_steps[-1]

    def describe(self) -> dict[str, Any]:
        """The plan entry as JSON (``zoo.json`` lists every group's)."""
        return {
            "name": self.name,
            "population": self.population,
            "dataset": self.data.name,
            "family": self.model.family,
            "members": self.members,
            "snapshots": len(self.snapshot_steps),
            "first_network": self.first_network,
        }


def as_dict(cfg) -> dict[str, Any]:
    """A deep, plain (JSON) copy of a zoo config (ConfigDict or mapping); tuples become
    lists."""
    return config_lib.plain_dict(cfg, "a zoo config (configs/zoo.py)")


def _group(cfg: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    return config_lib.config_group(cfg.get(name), name, allowed, "zoo config")


def _steps(name: str, value) -> tuple[int, ...]:
    steps = tuple(value) if isinstance(value, list | tuple) else (value,)
    ok = bool(steps) and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
    if not ok or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(
            f"{name} must be a non-empty tuple of strictly increasing steps >= 1 (the steps "
            f"at which every network is snapshotted; the last one ends training), got {value!r}"
        )
    return steps


def _train(cfg: Mapping[str, Any]) -> TrainSpec:
    t = TrainSpec(**_group(cfg, "train", TRAIN_FIELDS))
    for name in ("batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
        checks.positive_int(f"train.{name}", getattr(t, name))
    for name in ("warmup_steps", "train_eval_examples", "num_devices"):
        checks.non_negative_int(f"train.{name}", getattr(t, name))
    checks.choice("train.member_map", t.member_map, population_lib.MEMBER_MAPS)
    return dataclasses.replace(t, snapshot_steps=_steps("train.snapshot_steps", t.snapshot_steps))


def _range(name: str, value, log: bool) -> tuple[float, float]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    lo, hi = (float(v) for v in value) if ok else (math.nan, math.nan)
    if log:
        ok = ok and (0 <= lo == hi or 0 < lo < hi) and math.isfinite(hi)
        rule = "0 < low < high (log-uniform), or low == high >= 0 (a constant)"
    else:
        ok = ok and 0 <= lo <= hi < 1
        rule = "0 <= low <= high < 1"
    if not ok:
        raise ValueError(f"hparams.{name} must be (low, high) with {rule}, got {value!r}")
    return lo, hi


def _ranges(cfg: Mapping[str, Any]) -> Ranges:
    h = _group(cfg, "hparams", HPARAM_FIELDS)
    slopes = h.get("slopes", Ranges.slopes)
    slopes = tuple(slopes) if isinstance(slopes, list | tuple) else (slopes,)
    if not slopes or any(not isinstance(s, int | float) or s < 0 for s in slopes):
        raise ValueError(f"hparams.slopes must be a non-empty tuple of floats >= 0, got {slopes}")
    return Ranges(
        lr=_range("lr", h.get("lr", Ranges.lr), True),
        weight_decay=_range("weight_decay", h.get("weight_decay", Ranges.weight_decay), True),
        init_scale=_range("init_scale", h.get("init_scale", Ranges.init_scale), True),
        dropout=_range("dropout", h.get("dropout", Ranges.dropout), False),
        slopes=tuple(float(s) for s in slopes),
    )


def _choices(name: str, value, default) -> tuple:
    """A tuple of architecture choices, each a tuple of ints (an int is one choice of one)."""
    value = default if value is None else value
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of choices, got {value!r}")
    return tuple(tuple(v) if isinstance(v, list | tuple) else v for v in value)


def _archs(where: str, p: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The architecture grid of population ``p``: model config fields per choice."""
    family = p.get("family")
    checks.choice(f"{where}.family", family, FAMILIES)
    widths = _choices(f"{where}.widths", p.get("widths"), None)
    kernels = _choices(f"{where}.kernel_sizes", p.get("kernel_sizes"), (3,))
    if family == "mlp":
        return tuple({"family": family, "widths": w} for w in widths)
    if family == "ha_cnn":
        heads = _choices(f"{where}.head_hidden", p.get("head_hidden"), ((),))
        grid = itertools.product(widths, kernels, heads)
        return tuple(
            {"family": family, "widths": w, "kernel_size": k, "head_hidden": h} for w, k, h in grid
        )
    depths = _choices(f"{where}.depths", p.get("depths"), ((1,),))
    groups = p.get("norm_groups", 4)
    grid = [(w, d, k) for w, d, k in itertools.product(widths, depths, kernels) if len(w) == len(d)]
    if not grid:
        raise ValueError(
            f"{where}: no architecture: every choice of depths must have one entry per stage of "
            f"a choice of widths (widths {widths}, depths {depths})"
        )
    return tuple(
        {"family": family, "widths": w, "depths": d, "kernel_size": k, "groups": groups}
        for w, d, k in grid
    )


def _population(name: str, p: Any, defaults: TrainSpec) -> PopulationSpec:
    where = f"populations.{name}"
    p = config_lib.config_group(p, where, POPULATION_FIELDS, "zoo config")
    checks.non_negative_int(f"{where}.groups", p.get("groups"))
    for field in ("train_examples", "test_examples", "batch_size"):
        checks.non_negative_int(f"{where}.{field}", p.get(field, 0))
    fixed_seed = p.get("fixed_seed", -1)
    if fixed_seed != -1:
        checks.non_negative_int(f"{where}.fixed_seed", fixed_seed, " (or -1: one per network)")
    archs = []
    for fields in _archs(where, p):
        try:
            exp = config_lib.from_config_dict(
                {"mode": "direct", "data": p.get("data", {}), "model": fields}
            )
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        archs.append(exp.model)
    steps = p.get("snapshot_steps") or defaults.snapshot_steps
    return PopulationSpec(
        name=name,
        data=exp.data,
        family=p["family"],
        groups=p["groups"],
        archs=tuple(archs),
        train_examples=p.get("train_examples", 0),
        test_examples=p.get("test_examples", 0),
        batch_size=p.get("batch_size", 0) or defaults.batch_size,
        snapshot_steps=_steps(f"{where}.snapshot_steps", steps),
        fixed_seed=fixed_seed,
    )


def validate(cfg) -> Spec:
    """Checks a zoo config (a ConfigDict or mapping) without loading data.

    Raises:
      ValueError: naming the field at fault, e.g. ``group_size``, ``train.snapshot_steps``,
        ``hparams.lr``, ``populations.<name>.data.name`` (an unknown dataset),
        ``populations.<name>.widths`` (an empty grid), ``populations`` (no networks).
    """
    cfg = as_dict(cfg)
    unknown = sorted(set(cfg) - set(TOP_FIELDS))
    missing = [k for k in TOP_FIELDS if k not in cfg]
    if unknown or missing:
        raise ValueError(
            f"zoo config: unknown field(s) {unknown}, missing {missing}; a zoo config "
            f"(configs/zoo.py) has {', '.join(TOP_FIELDS)}"
        )
    checks.non_negative_int("seed", cfg["seed"])
    checks.positive_int("group_size", cfg["group_size"])
    checks.flag("keep_checkpoints", cfg["keep_checkpoints"])
    train, ranges = _train(cfg), _ranges(cfg)
    pops = cfg["populations"]
    if not isinstance(pops, Mapping):
        raise ValueError(f"populations must be a group of named populations, got {pops!r}")
    populations = tuple(_population(n, pops[n], train) for n in sorted(pops))
    spec = Spec(cfg["seed"], cfg["group_size"], train, ranges, populations, cfg["keep_checkpoints"])
    if spec.networks == 0:
        raise ValueError(
            "populations: the zoo has no networks (no population, or every one has groups=0)"
        )
    return spec


def _draw(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` log-uniform draws from ``[lo, hi]`` (``lo == hi``: that constant)."""
    if lo == hi:
        rng.uniform(size=n)  # the same draws either way: a constant does not shift the others
        return np.full(n, lo)
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _group_plan(spec: Spec, pop: PopulationSpec, g: int, index: int, first: int) -> GroupPlan:
    """Group ``g`` of population ``pop``; its draws depend on the seed, the population's name
    and ``g`` only, so adding a population or groups leaves the other groups unchanged."""
    h, m = spec.hparams, spec.group_size
    rng = np.random.default_rng([spec.seed, zlib.crc32(pop.name.encode()), g])
    dropout = float(rng.uniform(*h.dropout))
    slope = float(h.slopes[rng.integers(len(h.slopes))])
    hparams = {
        "lr": tuple(float(v) for v in _draw(rng, *h.lr, m)),
        "weight_decay": tuple(float(v) for v in _draw(rng, *h.weight_decay, m)),
        "init_scale": tuple(float(v) for v in _draw(rng, *h.init_scale, m)),
        "seed": tuple(int(v) for v in rng.integers(0, 2**31 - 1, m)),
    }
    if pop.fixed_seed >= 0:  # a fixed-seed population: only the hyperparameters vary
        hparams["seed"] = (pop.fixed_seed,) * m
    model = pop.archs[g % len(pop.archs)]
    if pop.family in SLOPED_FAMILIES:
        model = dataclasses.replace(model, slope=slope, dropout_rate=round(dropout, 4))
    return GroupPlan(
        index=index,
        name=f"{pop.name}-{g:04d}",
        population=pop.name,
        data=pop.data,
        model=model,
        batch_size=pop.batch_size,
        snapshot_steps=pop.snapshot_steps,
        train_examples=pop.train_examples,
        test_examples=pop.test_examples,
        first_network=first,
        hparams=hparams,
    )


def plan(spec: Spec) -> tuple[GroupPlan, ...]:
    """Every group of the zoo, in build order (populations by name, then group index); network
    ids count up from 0 over the groups' members."""
    out, first = [], 0
    for pop in spec.populations:
        for g in range(pop.groups):
            out.append(_group_plan(spec, pop, g, len(out), first))
            first += spec.group_size
    return tuple(out)
