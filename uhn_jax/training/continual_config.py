"""The config of a continual run (``configs/continual.py``), checked into a :class:`Spec`
before any data is loaded; :mod:`uhn_jax.training.continual` drives the run.

Groups: ``method`` and ``seed``; ``continual`` (the benchmark and schedule, and whether task
inference is reported); ``hnet`` (the ``hnet`` method's hypernetwork, ``hnet.generator``
choosing the chunked MLP or the UHN generator); ``generator`` (the UHN generator's sizes, the
project's :class:`~uhn_jax.generator.GeneratorConfig`, read when ``hnet.generator="uhn"``);
``ewc`` (the ``ewc`` method's penalty); ``data``, ``model``; ``train`` (the per-task
optimiser). Every group is checked whatever the method, so a workdir's saved config names every
field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uhn_jax import config as config_lib
from uhn_jax.core import checks
from uhn_jax.data import continual as benchmarks
from uhn_jax.hypernets import continual as hnet_lib
from uhn_jax.hypernets import ewc as ewc_lib

METHODS = ("hnet", "finetune", "ewc", "separate")
#: The methods with a network per task, which task inference chooses between.
PER_TASK_METHODS = ("hnet", "separate")
#: The groups and fields of a continual config (configs/continual.py).
TOP_FIELDS = (
    "method", "seed", "continual", "hnet", "generator", "ewc", "data", "model", "train",
)  # fmt: skip
CONTINUAL_FIELDS = (
    "benchmark", "num_tasks", "steps_per_task", "permutation_seeds", "task_inference",
    "multi_head",
)  # fmt: skip
HNET_FIELDS = tuple(f.name for f in dataclasses.fields(hnet_lib.Settings) if f.name != "num_tasks")
EWC_FIELDS = tuple(f.name for f in dataclasses.fields(ewc_lib.Settings))
GENERATOR_FIELDS = tuple(f.name for f in dataclasses.fields(config_lib.GeneratorConfig))
#: ``train`` fields a continual run reads; the step count is ``continual.steps_per_task`` and
#: there is no initialisation stage.
TRAIN_FIELDS = (
    "batch_size", "lr", "warmup_steps", "grad_clip", "normalize_grads", "eval_batch_size",
    "log_every", "checkpoint_every", "num_devices",
)  # fmt: skip
#: The kind each method trains (``separate`` trains a fresh direct network per task).
MODES = {
    "hnet": hnet_lib.Continual.name,
    "finetune": "direct",
    "ewc": ewc_lib.Ewc.name,
    "separate": "direct",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated continual config (:func:`validate`).

    ``exp`` is the per-task run: data, base model, optimiser with ``train.steps`` =
    ``steps_per_task``, and ``mode`` the method's kind (:data:`MODES`).
    """

    method: str
    benchmark: str
    num_tasks: int
    steps_per_task: int
    permutation_seeds: tuple[int, ...]
    exp: config_lib.Experiment
    hnet: hnet_lib.Settings
    ewc: ewc_lib.Settings = ewc_lib.Settings()
    task_inference: bool = False
    multi_head: bool = False

    @property
    def total_steps(self) -> int:
        return self.num_tasks * self.steps_per_task

    @property
    def label(self) -> str:
        """The method as results.json and the printout name it: ``hnet_uhn`` for ``hnet`` with
        the UHN generator (the name of its ``configs/continual.py`` preset), else ``method``."""
        name = self.method
        if self.method == "hnet" and self.hnet.generator == "uhn":
            name = "hnet_uhn"
        return f"{name}_multihead" if self.multi_head else name


def _group(cfg: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    return config_lib.config_group(cfg.get(name), name, allowed, "continual config")


def as_dict(cfg) -> dict[str, Any]:
    """A deep, plain (JSON) copy of a continual config (ConfigDict or mapping); tuples become
    lists."""
    return config_lib.plain_dict(cfg, "a continual config (configs/continual.py)")


def _check_task_inference(method: str, value) -> bool:
    checks.flag("continual.task_inference", value)
    if value and method not in PER_TASK_METHODS:
        raise ValueError(
            f"continual.task_inference chooses between the networks of the tasks, which method "
            f"{method!r} does not have (one network answers every task); use it with method "
            f"{' or '.join(PER_TASK_METHODS)}, or set it to False"
        )
    return value


def _check_multi_head(value, task_inference: bool) -> bool:
    checks.flag("continual.multi_head", value)
    if value and task_inference:
        raise ValueError(
            "continual.multi_head gives every task its own output head, which the task id "
            "selects; continual.task_inference (the task without its id) needs one shared "
            "head: set one of them to False"
        )
    return value


def _check_seeds(benchmark: str, num_tasks: int, seeds) -> tuple[int, ...]:
    seeds = tuple(seeds or ())
    if benchmark == "permuted":
        return benchmarks.check_seeds(num_tasks, seeds)
    if seeds:
        raise ValueError(
            "continual.permutation_seeds is read by benchmark 'permuted' only; leave it empty "
            f"for 'split', got {seeds}"
        )
    return seeds


def _hnet(cfg: Mapping[str, Any], num_tasks) -> hnet_lib.Settings:
    hnet = hnet_lib.Settings(num_tasks=num_tasks, **_group(cfg, "hnet", HNET_FIELDS))
    hidden = hnet.hidden_sizes
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return dataclasses.replace(hnet, hidden_sizes=hidden).validate()


def _check_uhn(hnet: hnet_lib.Settings, gen) -> None:
    """With ``hnet.generator="uhn"``, the generator settings the task descriptor needs."""
    if hnet.generator != "uhn":
        return
    if not gen.structure:
        raise ValueError(
            "hnet.generator='uhn' conditions the UHN generator on the task through its "
            "structure path; set generator.structure=True"
        )
    if gen.chain_depth:
        raise ValueError(
            f"generator.chain_depth must be 0 with hnet.generator='uhn' (a recursive chain is "
            f"not built for continual runs), got {gen.chain_depth}"
        )


def _check_method(method) -> None:
    if method == "hnet_uhn":
        raise ValueError(
            "method 'hnet_uhn' is a preset of configs/continual.py (<benchmark>,<dataset>,"
            "hnet_uhn): method 'hnet' with hnet.generator='uhn'; set those two fields instead"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def validate(cfg) -> Spec:
    """Checks a continual config (a ConfigDict or mapping) without loading data.

    Raises:
      ValueError: naming the field at fault, e.g. ``hnet.embedding_size``, ``hnet.beta``,
        ``hnet.generator``, ``generator.structure``, ``ewc.lam``, ``ewc.gamma``,
        ``continual.permutation_seeds``, ``continual.task_inference``, ``train.lr``.
    """
    cfg = as_dict(cfg)
    unknown = sorted(set(cfg) - set(TOP_FIELDS))
    missing = [k for k in TOP_FIELDS if k not in cfg]
    if unknown or missing:
        raise ValueError(
            f"continual config: unknown field(s) {unknown}, missing {missing}; a continual "
            f"config (configs/continual.py) has {', '.join(TOP_FIELDS)}"
        )
    method = cfg["method"]
    _check_method(method)
    c = _group(cfg, "continual", CONTINUAL_FIELDS)
    if c.get("benchmark") not in benchmarks.BENCHMARKS:
        raise ValueError(
            f"continual.benchmark must be one of {benchmarks.BENCHMARKS}, got "
            f"{c.get('benchmark')!r}"
        )
    hnet = _hnet(cfg, c.get("num_tasks"))
    ewc = ewc_lib.Settings(**_group(cfg, "ewc", EWC_FIELDS)).validate()
    steps = c.get("steps_per_task")
    checks.positive_int("continual.steps_per_task", steps)
    seeds = _check_seeds(c["benchmark"], hnet.num_tasks, c.get("permutation_seeds"))
    inference = _check_task_inference(method, c.get("task_inference", False))
    multi_head = _check_multi_head(c.get("multi_head", False), inference)
    t = _group(cfg, "train", TRAIN_FIELDS)
    if t.get("warmup_steps", 0) >= steps:
        raise ValueError(
            f"train.warmup_steps ({t['warmup_steps']}) must be smaller than "
            f"continual.steps_per_task ({steps})"
        )
    exp = config_lib.from_config_dict(
        {
            "mode": "direct",  # validated as a direct run; the kinds read the same groups
            "seed": cfg["seed"],
            "data": cfg["data"],
            "model": cfg["model"],
            "generator": _group(cfg, "generator", GENERATOR_FIELDS),
            "train": {**t, "steps": steps, "init_steps": 0},
        }
    )
    _check_uhn(hnet, exp.generator)
    exp = dataclasses.replace(exp, mode=MODES[method])
    return Spec(
        method, c["benchmark"], hnet.num_tasks, steps, seeds, exp, hnet, ewc, inference, multi_head
    )
