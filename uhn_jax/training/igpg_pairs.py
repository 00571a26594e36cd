"""IGPG's view of a zoo: its (dataset, architecture) pairs, the networks that train the VQ-VAE
and the prior (:func:`select`), and each pair's data through the zoo's own data path
(:class:`ZooData`: the splits, subsets and normalisation the zoo trained and scored the
pair's networks with, so a generated network is scored exactly as the zoo's are).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import layouts
from uhn_jax.data import registry as data_registry
from uhn_jax.training import igpg_config as config_lib
from uhn_jax.training import tasks
from uhn_jax.training import zoo as zoo_training
from uhn_jax.weightspace import conditioning, morph, vqvae
from uhn_jax.weightspace import zoo as store

#: Networks per evaluation program (a call's networks are padded to a multiple of it).
EVAL_BUCKET = 8


def arch_name(record: dict) -> str:
    """A record's architecture: ``mlp-32x32``, ``ha_cnn-8x16-k3``, ``ha_cnn-8x8-k3-h32``."""
    model = record["model"]
    name = f"{record['family']}-{'x'.join(map(str, model['widths']))}"
    if record["family"] == "ha_cnn":
        name += f"-k{model['kernel_size']}"
        if model.get("head_hidden"):
            name += f"-h{'x'.join(map(str, model['head_hidden']))}"
    return name


def pair_name(record: dict) -> str:
    """``<dataset>/<architecture>`` of a record."""
    return f"{record['dataset']}/{arch_name(record)}"


@dataclasses.dataclass(eq=False)
class Pair:
    """One (dataset, architecture) of the zoo at the selected snapshot.

    Attributes:
      records: every usable network of the pair (finite test accuracy, never diverged), by id.
      train: those that train the VQ-VAE and the prior (none for a held-out pair).
      heldout: named in the config's ``heldout``.
      layout: the params layout; ``tokens`` its length in chunks.
    """

    name: str
    dataset: str
    family: str
    records: list[dict]
    train: list[dict]
    heldout: bool
    layout: layouts.Layout
    tokens: int

    @property
    def reference(self) -> dict:
        """The pair's median network by test accuracy (the lower median)."""
        ordered = sorted(self.records, key=lambda r: (r["test_accuracy"], r["id"]))
        return ordered[(len(ordered) - 1) // 2]

    @property
    def model(self):
        """The base model of the reference network (its activation slope, dropout)."""
        return store.model_of(self.reference)

    def architecture(self, record: dict | None = None) -> conditioning.Architecture:
        """What the prior reads of a network's architecture (``record``, default the
        reference: the pair's networks may differ in activation slope)."""
        r = self.reference if record is None else record
        shape = tuple(r["data"]["input_shape"])
        return conditioning.Architecture(
            self.family, shape, float(r.get("slope", 0.0)), self.layout
        )

    def accuracies(self) -> np.ndarray:
        """The zoo's test accuracies of every network of the pair."""
        return np.asarray([r["test_accuracy"] for r in self.records], np.float64)


def flat(zoo: store.Zoo, records: list[dict]) -> np.ndarray:
    """``w[len(records), N]`` of records of one architecture (each group opened once)."""
    rows: dict[str, Any] = {}
    for r in records:
        rows.setdefault(r["group"], []).append(r)
    out = {}
    for group, rs in rows.items():
        w = zoo.group(group).flat()[0]
        out |= {r["id"]: w[r["member"], r["snapshot"]] for r in rs}
    return np.stack([out[r["id"]] for r in records]).astype(np.float32)


def _at_snapshot(zoo: store.Zoo, spec: config_lib.Spec) -> list[dict]:
    s = spec.select
    last: dict[str, int] = {}
    for r in zoo.records:
        last[r["group"]] = max(last.get(r["group"], 0), r["snapshot"])
    return [
        r
        for r in zoo.records
        if r["snapshot"] == (last[r["group"]] if s.snapshot < 0 else s.snapshot)
        and r["family"] in s.families
        and (not s.datasets or r["dataset"] in s.datasets)
        and r.get("test_accuracy") is not None
        and r.get("diverged_at_step") is None
    ]


def _train_records(records: list[dict], s: config_lib.Select) -> list[dict]:
    if s.above_median:
        median = float(np.median([r["test_accuracy"] for r in records]))
        records = [r for r in records if r["test_accuracy"] >= median]
    return records[: s.max_networks_per_pair] if s.max_networks_per_pair else records


def _check_heldout(spec: config_lib.Spec, by_pair: dict, excluded: dict) -> None:
    for name in spec.heldout:
        if name in excluded:
            raise ValueError(f"heldout: pair {name!r} cannot be used: {excluded[name]}")
        if name not in by_pair:
            known = ", ".join(sorted(by_pair)) or "none"
            raise ValueError(
                f"heldout: pair {name!r} is not in the zoo at {spec.zoo} at the selected "
                f"snapshot and families (its pairs: {known})"
            )


def select(zoo: store.Zoo, spec: config_lib.Spec) -> tuple[dict[str, Pair], dict[str, str]]:
    """The pairs IGPG uses, by name, and those left out with the reason.

    Raises:
      ValueError: naming ``heldout`` for a held-out pair the zoo does not have, that is too
        long, or whose family no training pair has (the prior could not encode it), or
        ``vqvae.standardize`` for one whose architecture no seen pair has;
        ``select`` when no pair is left to train on.
    """
    by_pair: dict[str, list[dict]] = {}
    for r in _at_snapshot(zoo, spec):
        by_pair.setdefault(pair_name(r), []).append(r)
    pairs, excluded = {}, {}
    v = spec.vqvae
    for name, records in sorted(by_pair.items()):
        records = sorted(records, key=lambda r: r["id"])
        layout = store.layout_of(records[0])
        try:
            tokens = vqvae.plan(layout, v.chunk_size, v.max_chunks_per_layer).num_tokens
        except ValueError as e:
            excluded[name] = str(e)
            continue
        if tokens > spec.select.max_tokens:
            excluded[name] = f"{tokens} tokens > select.max_tokens={spec.select.max_tokens}"
            continue
        held = name in spec.heldout
        train = [] if held else _train_records(records, spec.select)
        family = records[0]["family"]
        pairs[name] = Pair(
            name, records[0]["dataset"], family, records, train, held, layout, tokens
        )
    _check_heldout(spec, by_pair, excluded)
    families = {p.family for p in pairs.values() if p.train}
    if not families:
        raise ValueError(
            f"select: no pair of the zoo at {spec.zoo} is left to train on (pairs: "
            f"{', '.join(sorted(by_pair)) or 'none'}; left out: {', '.join(excluded) or 'none'})"
        )
    for name in spec.heldout:
        if pairs[name].family not in families:
            raise ValueError(
                f"heldout: the prior cannot encode {name!r}: no training pair is a "
                f"{pairs[name].family} (training families: {', '.join(sorted(families))})"
            )
        if spec.sample.fallback == "deepen" and grow_source(pairs[name], pairs) is None:
            raise ValueError(
                f"sample.fallback='deepen': no seen MLP pair on {pairs[name].dataset} can be "
                f"grown into {name!r} (only same-width residual blocks after the first layer "
                "can be inserted); use sample.fallback='none' to let the prior write it"
            )
        _check_coded(spec, pairs, pairs[name])
    return pairs, excluded


def _check_coded(spec: config_lib.Spec, pairs: dict[str, Pair], pair: Pair) -> None:
    """With ``vqvae.standardize``, a held-out pair the prior writes itself must have the
    layout of a seen pair (only those have frames)."""
    if not spec.vqvae.standardize or spec.sample.fallback == "deepen":
        return
    if not any(p.train and p.layout == pair.layout for p in pairs.values()):
        raise ValueError(
            f"vqvae.standardize: held-out pair {pair.name!r} has an architecture no seen pair "
            "has, so the VQ-VAE has no frame to code it in; hold out a pair whose architecture "
            "is seen on another dataset, set sample.fallback='deepen' (MLPs) or "
            "vqvae.standardize=False"
        )


def widths(pair: Pair) -> tuple[int, ...]:
    """The hidden widths of a pair's architecture."""
    return tuple(pair.reference["model"]["widths"])


def grow_source(pair: Pair, pairs: dict[str, Pair]) -> Pair | None:
    """The seen MLP pair on ``pair``'s dataset that :func:`uhn_jax.weightspace.morph.deepen`
    grows into ``pair`` with the fewest inserted blocks (ties: by name), or ``None``."""
    if pair.family != "mlp":
        return None
    target = widths(pair)
    options = [
        (len(target) - len(widths(p)), p.name, p)
        for p in pairs.values()
        if p.train and p.family == "mlp" and p.dataset == pair.dataset
        and morph.deepen_plan(widths(p), target) is not None
    ]  # fmt: skip
    return min(options, key=lambda o: o[:2])[2] if options else None


def _members(group, m: int, *, lr=1e-3, weight_decay=0.0, seeds=None, **fields):
    hparams = {
        "lr": (float(lr),) * m,
        "weight_decay": (float(weight_decay),) * m,
        "init_scale": (1.0,) * m,
        "seed": tuple(int(s) for s in (range(m) if seeds is None else seeds)),
    }
    return dataclasses.replace(group, hparams=hparams, **fields)


class ZooData:
    """A zoo's datasets as its groups saw them, loaded once per dataset config."""

    def __init__(self, zoo: store.Zoo):
        self.spec = zoo_training.validate(zoo.manifest["config"])
        self.plans = {g.name: g for g in zoo_training.plan(self.spec)}
        self._datasets: dict = {}
        self._data: dict = {}

    def data(self, record: dict) -> tuple[Any, zoo_training.GroupData]:
        """``(group plan, group data)`` of the group of ``record``."""
        group = self.plans[record["group"]]
        if group.name not in self._data:
            if group.data not in self._datasets:
                self._datasets[group.data] = data_registry.load(group.data)
            dataset = self._datasets[group.data]
            self._data[group.name] = zoo_training.load_data(self.spec, group, dataset, None)
        return group, self._data[group.name]

    def setup(self, record: dict, members: int, **hparams):
        """``(setup, plan, data)`` of ``members`` networks of ``record``'s group with the
        given ``lr``, ``weight_decay``, ``seeds``, ``batch_size`` or ``snapshot_steps``."""
        group, data = self.data(record)
        plan = _members(group, members, **hparams)
        return zoo_training.make_setup(self.spec, plan, data, None), plan, data

    def evaluate(self, record: dict, w_MN: np.ndarray, layout: layouts.Layout) -> np.ndarray:
        """Test accuracies ``[M]`` of flat networks evaluated as networks of ``record``'s
        group (its model, its test split), in batches of :data:`EVAL_BUCKET` networks (the
        last one padded) so that one program serves every call."""
        m = len(w_MN)
        pad = -m % EVAL_BUCKET
        w = np.concatenate([w_MN, np.repeat(w_MN[-1:], pad, 0)]) if pad else w_MN
        gs, _, data = self.setup(record, EVAL_BUCKET)
        out = []
        for start in range(0, len(w), EVAL_BUCKET):
            params = _unflatten_many(w[start : start + EVAL_BUCKET], layout)
            out.append(np.asarray(evaluator(gs)(params, *data.evals["test"])[0]))
        return np.concatenate(out)[:m]

    def evaluate_records(self, records: list[dict], w_MN: np.ndarray, layout) -> np.ndarray:
        """Test accuracies ``[M]`` of networks ``w_MN`` each evaluated as a network of its
        own record's group (e.g. its activation slope)."""
        out = np.zeros(len(records), np.float32)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(r["group"], []).append(i)
        for idx in groups.values():
            out[idx] = self.evaluate(records[idx[0]], w_MN[idx], layout)
        return out

    def images(self, record: dict, split: str, n: int) -> np.ndarray:
        """``n`` images of a split (``train``: a fixed random subset of the training split;
        ``test``: the first of the test split), normalised as the model reads them."""
        group, data = self.data(record)
        if split == "train":
            x = np.asarray(data.train[0])
            x = x[np.random.default_rng(0).permutation(len(x))[:n]]
        else:
            xs, _, valid = (np.asarray(a) for a in data.evals["test"])
            x = xs[valid][:n]
        gs = self.setup(record, 1)[0]
        return np.asarray(tasks.prepare_inputs(gs, jnp.asarray(x)))


def _unflatten_many(w_MN: np.ndarray, layout: layouts.Layout):
    """The stacked params pytree (leading axis M) of flat networks ``w[M, N]`` (numpy)."""
    leaves = [
        w_MN[:, leaf.offset : leaf.offset + leaf.size].reshape(len(w_MN), *leaf.shape)
        for leaf in layout.leaves
    ]
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


@functools.cache
def evaluator(gs):
    """The jitted :func:`uhn_jax.training.zoo.evaluate` of a group setup (once per setup)."""
    return jax.jit(functools.partial(zoo_training.evaluate, gs))


def conditioner(pairs: dict[str, Pair], data: ZooData, spec: config_lib.Spec):
    """The prior's :class:`~uhn_jax.weightspace.conditioning.Conditioner`: the training
    pairs' families, and an image-set encoding of every pair's dataset."""
    families = tuple(sorted({p.family for p in pairs.values() if p.train}))
    encodings = {}
    for p in pairs.values():
        if p.dataset not in encodings:
            x = data.images(p.reference, "train", spec.prior.images_per_dataset)
            encodings[p.dataset] = conditioning.image_set_features(x, spec.seed)
    return conditioning.Conditioner(families, encodings, spec.vqvae.max_layers)
