"""The config of an IGPG experiment (``configs/igpg.py``), checked into a :class:`Spec` before
the zoo is read or anything compiles: each bad value raises ``ValueError`` naming the field.

A *pair* is a dataset and an architecture, named ``<dataset>/<architecture>`` (e.g.
``digits/mlp-32x32``, ``mnist/ha_cnn-8x8-k3``; :func:`uhn_jax.training.igpg_pairs.arch_name`);
``heldout`` names the pairs left out of the VQ-VAE's and the prior's training. That a named
pair is in the zoo is checked when the zoo is opened, still before any training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from uhn_jax import config as config_lib
from uhn_jax.core import checks
from uhn_jax.data import registry as data_registry
from uhn_jax.weightspace import vqvae

TOP_FIELDS = (
    "zoo", "allow_partial", "seed", "select", "heldout", "vqvae", "vqvae_train", "prior",
    "prior_train", "sample", "finetune", "novelty",
)  # fmt: skip
#: The families IGPG handles (the novelty check aligns their hidden units).
FAMILIES = ("mlp", "ha_cnn")
#: How a held-out pair is written (:class:`Sample`).
FALLBACKS = ("none", "deepen")
#: How drawn codes become weights (:class:`Sample`).
DECODES = ("sample", "mean")
PRIOR_FIELDS = (
    "dim", "heads", "layers", "mlp_ratio", "dropout", "images_per_dataset", "val_fraction",
    "eval_every",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Select:
    """Which zoo networks train the VQ-VAE and the prior."""

    snapshot: int = -1  # the snapshot index of every network (-1 = its last)
    above_median: bool = False  # only networks at or above their pair's median test accuracy
    datasets: tuple[str, ...] = ()  # () = every dataset of the zoo
    families: tuple[str, ...] = FAMILIES
    max_tokens: int = 512  # pairs whose networks are longer are left out (and listed)
    max_networks_per_pair: int = 0  # 0 = all
    align_units: bool = True  # put each pair's hidden units in its reference network's order


@dataclasses.dataclass(frozen=True)
class Train:
    """An optimisation run through the loop (AdamW, warm-up then cosine decay)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_every: int = 250


@dataclasses.dataclass(frozen=True)
class PriorShape:
    """The prior Transformer's width, heads, blocks, MLP ratio and dropout (on each block's
    attention and MLP outputs, in training), how many training images
    encode a dataset, and the share of each seen pair's training networks that validates the
    prior (the params with the lowest validation NLL, scored every ``eval_every`` steps, are
    kept; 0: no validation, the last params)."""

    dim: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    images_per_dataset: int = 256
    val_fraction: float = 0.2
    eval_every: int = 100


@dataclasses.dataclass(frozen=True)
class Sample:
    """Generation: networks per pair, temperature and top-k (0 = no filtering); ``decode``:
    ``"sample"``, each token decoded from its drawn code, or ``"mean"``, each token decoded
    as the expected chunk under the distribution its code was drawn from (the drawn codes
    still choose the path; :meth:`uhn_jax.weightspace.vqvae.Codec.decode_mean`); and how a
    held-out pair is written: ``fallback`` ``"none"``, by the prior from its own conditions;
    ``"deepen"`` (MLPs), by the prior as the nearest seen depth on its dataset, then grown
    without changing its function (:mod:`uhn_jax.weightspace.morph`)."""

    networks: int = 8
    temperature: float = 1.0
    top_k: int = 0
    decode: str = "sample"
    fallback: str = "none"


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Fine-tuning on held-out pairs: evaluated after each of ``steps`` (0 = no step)."""

    steps: tuple[int, ...] = (0, 10, 100)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 0  # 0 = the zoo's batch size of the pair's group
    checkpoint_every: int = 50


@dataclasses.dataclass(frozen=True)
class Novelty:
    """The novelty check's weight-matching rounds, test images and zoo networks compared."""

    iterations: int = 30
    test_examples: int = 500
    max_zoo: int = 32


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated IGPG config (:func:`validate`)."""

    zoo: str
    allow_partial: bool
    seed: int
    select: Select
    heldout: tuple[str, ...]
    vqvae: vqvae.Settings
    vqvae_train: Train
    prior: PriorShape
    prior_train: Train
    sample: Sample
    finetune: Finetune
    novelty: Novelty


def as_dict(cfg) -> dict[str, Any]:
    """A deep, plain (JSON) copy of an IGPG config; tuples become lists."""
    return config_lib.plain_dict(cfg, "an IGPG config (configs/igpg.py)")


def _group(cfg: Mapping[str, Any], name: str, cls, fields=None) -> dict[str, Any]:
    fields = fields or tuple(f.name for f in dataclasses.fields(cls))
    return config_lib.config_group(cfg.get(name, {}), name, fields, "IGPG config")


def _number(name: str, value, *, minimum: float = 0.0, open_low: bool = True) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > minimum if open_low else value >= minimum)
    if not ok:
        rel = ">" if open_low else ">="
        raise ValueError(f"{name} must be a number {rel} {minimum}, got {value!r}")
    return float(value)


def _fraction(name: str, value) -> float:
    """``value`` as a float in ``[0, 1)``, else ``ValueError`` naming ``name``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    checks.in_range(name, value, 0, 1, hi_open=True)
    return float(value)


def _names(name: str, value, allowed=None) -> tuple[str, ...]:
    value = tuple(value) if isinstance(value, list | tuple) else (value,)
    for v in value:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be a tuple of non-empty names, got {value!r}")
        if allowed is not None and v not in allowed:
            raise ValueError(f"{name}: {v!r} is not allowed; choose from {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} names something twice: {value!r}")
    return value


def _select(cfg) -> Select:
    s = Select(**_group(cfg, "select", Select))
    if not isinstance(s.snapshot, int) or isinstance(s.snapshot, bool) or s.snapshot < -1:
        raise ValueError(f"select.snapshot must be an index >= 0 or -1 (last), got {s.snapshot!r}")
    datasets = _names("select.datasets", s.datasets)
    for d in datasets:
        _dataset("select.datasets", d)
    families = _names("select.families", s.families, FAMILIES)
    if not families:
        raise ValueError(f"select.families must name at least one of {FAMILIES}")
    checks.positive_int("select.max_tokens", s.max_tokens)
    checks.non_negative_int("select.max_networks_per_pair", s.max_networks_per_pair, " (0 = all)")
    return dataclasses.replace(
        s,
        above_median=checks.flag("select.above_median", s.above_median),
        align_units=checks.flag("select.align_units", s.align_units),
        datasets=datasets,
        families=families,
    )


def _dataset(field: str, name: str) -> None:
    try:
        data_registry.get(name)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


def parse_pair(field: str, name) -> tuple[str, str]:
    """``(dataset, family)`` of a pair name ``<dataset>/<family>-<sizes>``.

    Raises:
      ValueError: naming ``field`` for a malformed name, an unknown dataset or a family
        IGPG does not handle.
    """
    if not isinstance(name, str) or name.count("/") != 1:
        raise ValueError(
            f"{field}: {name!r} is not a pair name '<dataset>/<architecture>' (e.g. "
            "'digits/mlp-32x32', 'mnist/ha_cnn-8x8-k3')"
        )
    dataset, arch = name.split("/")
    _dataset(field, dataset)
    family = arch.split("-")[0]
    if family not in FAMILIES or "-" not in arch:
        raise ValueError(
            f"{field}: {name!r}: unknown architecture {arch!r}; an architecture is "
            f"'<family>-<widths>[-k<kernel>][-h<head widths>]' with a family in {FAMILIES}"
        )
    return dataset, family


def _train(cfg, name: str) -> Train:
    t = Train(**_group(cfg, name, Train))
    for f in ("steps", "batch_size", "log_every", "checkpoint_every"):
        checks.positive_int(f"{name}.{f}", getattr(t, f))
    checks.non_negative_int(f"{name}.warmup_steps", t.warmup_steps)
    return dataclasses.replace(
        t,
        lr=_number(f"{name}.lr", t.lr),
        grad_clip=_number(f"{name}.grad_clip", t.grad_clip),
        weight_decay=_number(f"{name}.weight_decay", t.weight_decay, open_low=False),
    )


def _vqvae(cfg) -> vqvae.Settings:
    v = vqvae.Settings(**_group(cfg, "vqvae", vqvae.Settings))
    vqvae.check_chunk_size(v.chunk_size, "vqvae.chunk_size")
    checks.flag("vqvae.standardize", v.standardize)
    for f in ("max_chunks_per_layer", "latent_dim", "hidden", "role_dim", "max_layers"):
        checks.positive_int(f"vqvae.{f}", getattr(v, f))
    for f in ("codebook_size", "position_buckets"):
        value = getattr(v, f)
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"vqvae.{f} must be an int >= 2, got {value!r}")
    decay = _number("vqvae.decay", v.decay)
    if decay >= 1:
        raise ValueError(f"vqvae.decay must be in (0, 1), got {v.decay!r}")
    return dataclasses.replace(
        v,
        beta=_number("vqvae.beta", v.beta, open_low=False),
        decay=decay,
        restart=_number("vqvae.restart", v.restart, open_low=False),
    )


def _prior(cfg) -> PriorShape:
    p = PriorShape(**_group(cfg, "prior", PriorShape, PRIOR_FIELDS))
    for f in ("dim", "heads", "layers", "mlp_ratio", "images_per_dataset", "eval_every"):
        checks.positive_int(f"prior.{f}", getattr(p, f))
    fractions = {f: _fraction(f"prior.{f}", getattr(p, f)) for f in ("val_fraction", "dropout")}
    if p.dim % p.heads:
        raise ValueError(f"prior.dim ({p.dim}) must be a multiple of prior.heads ({p.heads})")
    return dataclasses.replace(p, **fractions)


def _sample(cfg) -> Sample:
    s = Sample(**_group(cfg, "sample", Sample))
    checks.positive_int("sample.networks", s.networks)
    checks.non_negative_int("sample.top_k", s.top_k, " (0 = no filtering)")
    checks.choice("sample.decode", s.decode, DECODES)
    checks.choice("sample.fallback", s.fallback, FALLBACKS)
    return dataclasses.replace(s, temperature=_number("sample.temperature", s.temperature))


def _finetune(cfg) -> Finetune:
    f = Finetune(**_group(cfg, "finetune", Finetune))
    steps = tuple(f.steps) if isinstance(f.steps, list | tuple) else (f.steps,)
    bad = [k for k in steps if not isinstance(k, int) or isinstance(k, bool) or k < 0]
    if not steps or bad or list(steps) != sorted(set(steps)):
        raise ValueError(
            f"finetune.steps must be a non-empty, strictly increasing tuple of ints k >= 0 "
            f"(evaluate after k fine-tuning steps), got {f.steps!r}"
        )
    checks.non_negative_int("finetune.batch_size", f.batch_size, " (0 = the zoo's)")
    checks.positive_int("finetune.checkpoint_every", f.checkpoint_every)
    return dataclasses.replace(
        f,
        steps=steps,
        lr=_number("finetune.lr", f.lr),
        weight_decay=_number("finetune.weight_decay", f.weight_decay, open_low=False),
    )


def _novelty(cfg) -> Novelty:
    n = Novelty(**_group(cfg, "novelty", Novelty))
    checks.positive_int("novelty.iterations", n.iterations)
    checks.positive_int("novelty.test_examples", n.test_examples)
    if not isinstance(n.max_zoo, int) or isinstance(n.max_zoo, bool) or n.max_zoo < 2:
        raise ValueError(f"novelty.max_zoo must be an int >= 2, got {n.max_zoo!r}")
    return n


def validate(cfg) -> Spec:
    """Checks an IGPG config (ConfigDict or mapping) without reading the zoo.

    Raises:
      ValueError: naming the field, its value and what is allowed.
    """
    cfg = as_dict(cfg)
    unknown = sorted(set(cfg) - set(TOP_FIELDS))
    if unknown:
        raise ValueError(
            f"IGPG config: unknown field(s) {', '.join(unknown)}; it has {', '.join(TOP_FIELDS)}"
        )
    if not isinstance(cfg.get("zoo"), str) or not cfg["zoo"]:
        raise ValueError(
            f"zoo must be the path of a model zoo (uhn-jax zoo), got {cfg.get('zoo')!r}"
        )
    checks.non_negative_int("seed", cfg.get("seed", 0))
    heldout = _names("heldout", cfg.get("heldout", ()))
    select = _select(cfg)
    sample = _sample(cfg)
    for name in heldout:
        dataset, family = parse_pair("heldout", name)
        if sample.fallback == "deepen" and family != "mlp":
            raise ValueError(
                f"sample.fallback='deepen' grows MLPs only; held-out pair {name!r} is a {family}"
            )
        if family not in select.families:
            raise ValueError(
                f"heldout: {name!r} is a {family}, but select.families is {select.families}"
            )
        if select.datasets and dataset not in select.datasets:
            raise ValueError(
                f"heldout: {name!r} is on {dataset}, but select.datasets is {select.datasets}"
            )
    return Spec(
        zoo=cfg["zoo"],
        allow_partial=checks.flag("allow_partial", cfg.get("allow_partial", False)),
        seed=cfg.get("seed", 0),
        select=select,
        heldout=heldout,
        vqvae=_vqvae(cfg),
        vqvae_train=_train(cfg, "vqvae_train"),
        prior=_prior(cfg),
        prior_train=_train(cfg, "prior_train"),
        sample=sample,
        finetune=_finetune(cfg),
        novelty=_novelty(cfg),
    )
