"""One training loop for both modes: ``uhn`` (train a generator) and ``direct`` (train the model).

The static part of a run (:class:`Setup`: base model, layout, generator module, optimiser
settings) is hashable and seed-free, so the jitted step compiles once and is reused across seeds.
The train state is a plain pytree ``{step, params, opt_state, constants}``; ``constants`` holds
the generator's frozen Fourier matrices (empty in direct mode).

A UHN run has two stages that share the step counter: ``init_steps`` of moment matching
(spec §3.1; each tensor's generated mean and std are pulled to the base model's init targets),
then ``steps`` of task training with a fresh optimiser. Per-step randomness is
``fold_in(key, step)`` and batches come from a per-epoch permutation, so a resumed run is
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uhn_jax import config as config_lib
from uhn_jax import generator
from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import formulas as formula_data
from uhn_jax.data import graphs as graph_data
from uhn_jax.data import images as data_lib
from uhn_jax.data import text as text_data
from uhn_jax.training import checkpoint, model_sets

RESULTS_SCHEMA_VERSION = 1
_DATASET_TYPES = {
    "digits": descriptors.DatasetType.DIGITS,
    "mnist": descriptors.DatasetType.MNIST,
    "fashion_mnist": descriptors.DatasetType.FASHION_MNIST,
    "cifar10": descriptors.DatasetType.CIFAR10,
    "cora": descriptors.DatasetType.CORA,
    "citeseer": descriptors.DatasetType.CITESEER,
    "pubmed": descriptors.DatasetType.PUBMED,
    "karate_club": descriptors.DatasetType.KARATE_CLUB,
    "ag_news": descriptors.DatasetType.AG_NEWS,
    "imdb": descriptors.DatasetType.IMDB,
    "mr": descriptors.DatasetType.MR,
    # The formulas, in the order of the reference's DatasetType enum (7..21).
    **{
        name: descriptors.DatasetType(descriptors.DatasetType.SPECIAL_ELLIPJ + i)
        for i, name in enumerate(formula_data.FORMULAS)
    },
}

#: What a run optimises, by kind of dataset: the loss, the metric and how batches are drawn.
#: ``classification``: cross-entropy on sampled batches (images, text), metric accuracy.
#: ``node_classification``: cross-entropy on the masked nodes of one full graph per step.
#: ``regression``: mean squared error on sampled batches (formulas), metric RMSE.
TASKS = ("classification", "node_classification", "regression")
#: ``results.json`` "task" of each kind of dataset (the reference's TaskType names).
_TASK_TYPES = {
    **{d: "image_cls" for d in config_lib.IMAGE_DATASETS},
    **{d: "graph_node_cls" for d in config_lib.GRAPH_DATASETS},
    **{d: "text_cls" for d in config_lib.TEXT_DATASETS},
    "formula": "formula_regression",
}

Dataset = (
    data_lib.ArrayDataset | text_data.TextData | graph_data.GraphData | formula_data.FormulaData
)


class DescArrays(NamedTuple):
    """Device copies of the descriptor arrays a step needs."""

    plan: dict  # generator.plan arrays: direct descriptors, separable row/column descriptors
    structure: jax.Array  # (L, 29) structure input
    segment_ids: jax.Array  # (N,) tensor id of every scalar
    targets: jax.Array  # (T, 2) init-stage (mean, std) per tensor
    # Multi-model runs only (model_sets.Embedded): which generated scalars, tensors and layers
    # belong to the member, and the masks that run the largest model as the member.
    weight_mask: jax.Array | None = None  # (N,)
    tensor_present: jax.Array | None = None  # (T,)
    layer_mask: jax.Array | None = None  # (L,)
    model_masks: dict | None = None
    # Recursive runs only: the generated UHNs' descriptors (segment_ids, targets) and, after
    # with_tables, the encoded inputs of an H_k whose child is another H or f
    # (feats_h/tokens_h, feats_f/tokens_f). plan/structure above describe H1, H0's child.
    chain: dict | None = None


@dataclasses.dataclass(frozen=True)
class Chain:
    """H0 -> H1 -> ... -> H_K -> f (spec §5.3): K generated UHNs between the trained generator
    H0 and the base model f. Every H_k is the same :class:`base_models.RecursiveUHN`."""

    depth: int
    model: Any  # RecursiveUHN
    layout: layouts.Layout


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static, hashable, seed-free description of a run (a jit static argument)."""

    mode: str
    task: str  # one of TASKS
    model: Any  # a base model dataclass
    # Per-channel (mean, std) for uint8 datasets, normalised on device; None for float inputs.
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    augment: bool
    layout: layouts.Layout
    gen: generator.Generator | None
    plan: generator.Plan | None
    chunk_size: int | None
    remat: bool  # recompute separable chunks' first layer in the backward pass (memory bound)
    train: config_lib.TrainConfig
    # 1-D device mesh: descriptor rows and batches split over it, the rest replicated. None on
    # one device.
    mesh: jax.sharding.Mesh | None = None
    # Multi-model runs: the number of hold-in members the steps cycle through (0 otherwise);
    # the descriptor arrays are then stacked over all members, hold-in first.
    members: int = 0
    # Recursive runs (generator.chain_depth = K > 0): the generated UHNs' model and layout.
    chain: Chain | None = None

    @property
    def metric_name(self) -> str:
        return "rmse" if self.task == "regression" else "accuracy"

    @property
    def init_steps(self) -> int:
        t = self.train
        return t.init_steps if self.mode == "uhn" and t.init_lr > 0 else 0

    @property
    def total_steps(self) -> int:
        return self.init_steps + self.train.steps

    @property
    def init_stages(self) -> int:
        """Sub-stages of the initialisation stage: one per chain element (spec §3.1)."""
        return self.chain.depth + 1 if self.chain else 1

    def stage(self, step: int) -> str:
        """``"task"``, ``"init"`` or, in a recursive run, ``"init<d>"``: the sub-stage matching
        chain element d's statistics (the last ``init_steps % (K+1)`` steps go to the last)."""
        if step >= self.init_steps:
            return "task"
        if not self.chain:
            return "init"
        # With fewer steps than sub-stages, the later sub-stages get none.
        per = max(self.init_steps // self.init_stages, 1)
        return f"init{min(step // per, self.init_stages - 1)}"

    def fresh_optimizer_at(self, step: int) -> bool:
        """Whether a new optimiser starts at ``step`` (each (sub-)stage gets its own)."""
        return step > 0 and self.stage(step) != self.stage(step - 1)


def task_of(exp: config_lib.Experiment) -> str:
    """The :data:`TASKS` entry of ``exp``'s dataset."""
    if exp.data.name in config_lib.GRAPH_DATASETS:
        return "node_classification"
    return "regression" if exp.data.name == "formula" else "classification"


def load_dataset(exp: config_lib.Experiment) -> Dataset:
    """Loads the dataset named by ``exp.data``: an image ``ArrayDataset``, a ``TextData``, a
    ``GraphData`` or a ``FormulaData``."""
    d = exp.data
    if d.name in config_lib.GRAPH_DATASETS:
        if d.name == "karate_club":
            return graph_data.karate_club()
        return graph_data.load_planetoid(d.name, d.data_dir)
    if d.name in config_lib.TEXT_DATASETS:
        kwargs = {"vocab_size": d.vocab_size}
        if d.max_len:
            kwargs["max_len"] = d.max_len
        if d.name == "ag_news":
            kwargs["split"] = d.ag_news_split
        return text_data.load(d.name, d.data_dir, **kwargs)
    if d.name == "formula":
        return formula_data.make_formula_dataset(d.formula, seed=d.formula_seed)
    kwargs = {}
    if d.name == "mnist":
        kwargs = {"train": d.mnist_train}
    elif d.name == "cifar10":
        kwargs = {"source": d.cifar_source, "cache_dir": d.cache_dir or None}
    return data_lib.load(d.name, d.data_dir, **kwargs)


def build_model(exp: config_lib.Experiment, dataset: Dataset):
    """The base model of ``exp`` for ``dataset``."""
    m = exp.model
    key = dataset.name if exp.data.name == "formula" else exp.data.name
    dataset_type = int(_DATASET_TYPES[key])
    if m.family in ("mlp", "cnn"):
        common = dict(
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            widths=m.widths,
            slope=m.slope,
            dropout_rate=m.dropout_rate,
            dataset_type=dataset_type,
        )
        if m.family == "mlp":
            return base_models.MLP(**common)
        return base_models.CNN(
            **common, depths=m.depths, kernel_size=m.kernel_size, groups=m.groups
        )
    if m.family == "gcn":
        return base_models.GCN(
            num_features=dataset.x.shape[1],
            num_classes=dataset.num_classes,
            hidden=m.widths,
            dropout_rate=m.dropout_rate,
            slope=m.slope,
            dataset_type=dataset_type,
        )
    if m.family == "gat":
        return base_models.GAT(
            num_features=dataset.x.shape[1],
            num_classes=dataset.num_classes,
            hidden=m.widths[0],
            heads=m.num_heads,
            output_heads=m.output_heads,
            dropout_rate=m.dropout_rate,
            attention_dropout=m.attention_dropout,
            dataset_type=dataset_type,
        )
    if m.family == "transformer":
        return base_models.Transformer(
            vocab_size=len(dataset.vocab),
            max_len=dataset.x_train.shape[1],
            num_classes=dataset.num_classes,
            embed_dim=m.embed_dim,
            num_encoders=m.num_encoders,
            num_heads=m.num_heads,
            linears_per_encoder=m.linears_per_encoder,
            dropout_rate=m.dropout_rate,
            slope=m.slope,
            dataset_type=dataset_type,
        )
    if m.family == "kan":
        return base_models.KAN(
            in_features=dataset.d_in,
            out_features=dataset.d_out,
            hidden=m.widths,
            grid_size=m.grid_size,
            spline_order=m.spline_order,
            dataset_type=dataset_type,
        )
    raise ValueError(f"unknown model.family {m.family!r}")


def device_data(setup: Setup, dataset: Dataset) -> tuple[tuple, tuple]:
    """``(train, test)`` data on device, replicated over the mesh.

    Sampled-batch tasks get ``(x, y)`` per split; node classification gets
    ``(graph, y, mask)`` per split, the same ``jraph.GraphsTuple`` with the train or test mask.
    """
    if setup.task == "node_classification":
        g = dataset
        graph = base_models.gnn.graphs_tuple(g)
        y = jnp.asarray(g.y)
        splits = ((graph, y, jnp.asarray(g.train_mask)), (graph, y, jnp.asarray(g.test_mask)))
    else:
        splits = tuple(
            (jnp.asarray(getattr(dataset, f"x_{s}")), jnp.asarray(getattr(dataset, f"y_{s}")))
            for s in ("train", "test")
        )
    return sharding_lib.replicate(setup.mesh, splits)


def make_setup(
    exp: config_lib.Experiment,
    dataset: Dataset,
    ranges: tuple[descriptors.Ranges, descriptors.Ranges | None] | None = None,
) -> tuple[Setup, descriptors.ModelDescriptors]:
    """Builds the static setup and the (cached) descriptors of a run.

    ``ranges`` (index, structure) overrides the generator's declared ranges, which otherwise
    come from this model's descriptors; a multi-task run passes the union over its tasks.
    """
    task = task_of(exp)
    if task != "node_classification" and exp.train.batch_size > dataset.x_train.shape[0]:
        raise ValueError(
            f"train.batch_size ({exp.train.batch_size}) exceeds the {dataset.x_train.shape[0]} "
            f"training examples of {dataset.name}"
        )
    model = build_model(exp, dataset)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    layout = layouts.from_params(shapes)
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    mesh = sharding_lib.make_mesh(exp.train.num_devices)
    gen, plan, chunk, remat, chain = None, None, None, True, None
    if exp.mode == "uhn":
        first = desc  # what H0 generates: the base model, or H1 in a recursive run
        if exp.generator.chain_depth:
            h_model = base_models.RecursiveUHN(
                embed_dim=2 * exp.generator.structure_freqs,
                index_features=2 * exp.generator.n_freqs,
                num_heads=exp.generator.structure_heads,
                slope=exp.model.slope,
            )
            h_shapes = jax.eval_shape(h_model.init, jax.random.key(0))
            h_layout = layouts.from_params(h_shapes)
            first = descriptors.build(h_layout, h_model.layers(), h_model.global_fields())
            chain = Chain(exp.generator.chain_depth, h_model, h_layout)
            if ranges is None:  # the union over the chain (spec §1.5)
                ranges = (
                    desc.index_ranges().union(first.index_ranges()),
                    desc.structure_ranges().union(first.structure_ranges()),
                )
        if ranges is None:
            structure = desc.structure_ranges() if exp.generator.structure else None
            ranges = (desc.index_ranges(), structure)
        gen = generator.from_config(exp.generator, *ranges)
        generator.check(gen, desc)
        generator.check(gen, first)
        plan, host = generator.plan(gen, first, _min_separable(exp))
        chunk = exp.generator.chunk_size or None
        if chunk is None:
            devices = 1 if mesh is None else mesh.size
            chunk, remat = generator.auto_chunking(gen, host, exp.generator.memory_mib, devices)
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    norm = (tuple(mean), tuple(std)) if mean is not None else None
    augment = exp.data.augment and exp.data.name == "cifar10"
    if mesh is not None and task != "node_classification":
        for name in ("batch_size", "eval_batch_size"):
            if getattr(exp.train, name) % mesh.size:
                raise ValueError(
                    f"train.{name} ({getattr(exp.train, name)}) must be divisible by the "
                    f"{mesh.size} devices of the mesh (train.num_devices={exp.train.num_devices})"
                )
    setup = Setup(
        exp.mode,
        task,
        model,
        norm,
        augment,
        layout,
        gen,
        plan,
        chunk,
        remat,
        exp.train,
        mesh,
        chain=chain,
    )
    return setup, desc


def model_descriptors(model) -> descriptors.ModelDescriptors:
    """The (cached) descriptors of a base model."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return descriptors.build(layouts.from_params(shapes), model.layers(), model.global_fields())


def describe(exp: config_lib.Experiment, dataset: Dataset) -> descriptors.ModelDescriptors:
    """The descriptors of ``exp``'s base model for ``dataset``."""
    return model_descriptors(build_model(exp, dataset))


def make_multi_setup(
    exp: config_lib.Experiment, dataset: Dataset
) -> tuple[Setup, DescArrays, model_sets.ModelSet, list]:
    """Setup of a multi-model run over the model set ``exp.model.model_set`` (spec §5.1).

    Every member is written into the layout of the family's largest member
    (:func:`model_sets.embed`), so all members share one plan, one layout and one compiled step;
    the returned host arrays are stacked over the members (hold-in first, then held out) and a
    step picks its member by index. The generator's declared ranges are the union over the
    hold-in members (a held-out member outside them is an error here, before training).

    Returns:
      ``(setup, stacked host arrays, model set, member models)``.
    """
    if exp.mode != "uhn":
        raise ValueError("a model set (model.model_set) trains a UHN; set mode='uhn'")
    if not exp.generator.structure:
        raise ValueError(
            "a model set needs the structure encoder to tell its members apart; set "
            "generator.structure=True"
        )
    mset = model_sets.load(exp.model.model_set)

    def build(arch):
        model_cfg = model_sets.model_config(exp.model, arch)
        return build_model(dataclasses.replace(exp, model=model_cfg), dataset)

    members = [build(a) for a in mset.models]
    largest = build(mset.family.largest())
    if not hasattr(largest, "member_masks"):
        raise ValueError(f"model family {exp.model.family!r} cannot run masked as its members")

    big = model_descriptors(largest)
    embedded = [model_sets.embed(model_descriptors(m), big, largest.layer_map(m)) for m in members]
    hold_in = embedded[: len(mset.hold_in)]
    index_ranges = descriptors.union_all([e.desc.index_ranges() for e in hold_in])
    structure_ranges = descriptors.union_all(
        [
            descriptors.Ranges(
                tuple(e.structure_input[e.layer_mask > 0].min(0).tolist()),
                tuple(e.structure_input[e.layer_mask > 0].max(0).tolist()),
            )
            for e in hold_in
        ]
    )
    gen = generator.from_config(exp.generator, index_ranges, structure_ranges)
    plans = []
    for e, arch in zip(embedded, mset.models, strict=True):
        try:
            generator.check(gen, e.desc)
        except ValueError as err:
            raise ValueError(f"member {arch}: {err}") from err
        plans.append(generator.plan(gen, e.desc, _min_separable(exp)))
    plan = plans[0][0]
    if any(p != plan for p, _ in plans):
        raise ValueError("members of one model set must share a generation plan")
    chunk, remat = exp.generator.chunk_size or None, True
    if chunk is None:
        chunk, remat = generator.auto_chunking(gen, plans[0][1], exp.generator.memory_mib)
    layout = big.layout
    per_member = [
        DescArrays(
            host,
            e.structure_input,
            big.segment_ids,
            e.desc.targets,
            e.weight_mask,
            e.tensor_present,
            e.layer_mask,
            largest.member_masks(m),
        )
        for (_, host), e, m in zip(plans, embedded, members, strict=True)
    ]
    stacked = jax.tree.map(lambda *a: np.stack(a), *per_member)
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    norm = (tuple(mean), tuple(std)) if mean is not None else None
    augment = exp.data.augment and exp.data.name == "cifar10"
    setup = Setup(
        exp.mode,
        task_of(exp),
        largest,
        norm,
        augment,
        layout,
        gen,
        plan,
        chunk,
        remat,
        exp.train,
        None,
        members=len(mset.hold_in),
    )
    return setup, stacked, mset, members


def select_member(arrays: DescArrays, index) -> DescArrays:
    """One member's arrays out of a multi-model run's stacked arrays (jit-safe)."""
    return jax.tree.map(lambda a: a[index], arrays)


def prepare_inputs(setup: Setup, x, key=None):
    """Device-side input pipeline: augmentation (training, when on) and normalisation."""
    if setup.input_norm is None:
        return x
    mean, std = setup.input_norm
    if key is not None and setup.augment:
        return data_lib.augment_cifar(key, x, mean, std)
    return data_lib.normalize_images(x, mean, std)


def _min_separable(exp: config_lib.Experiment) -> int:
    return SEPARABLE_MIN_SIZE if exp.generator.separable else 0


#: Tensors of at least this many scalars (and 2+ axes) take the separable generation path.
SEPARABLE_MIN_SIZE = 1024


def desc_arrays(setup: Setup, desc: descriptors.ModelDescriptors) -> DescArrays:
    """Device copies of the descriptor arrays ``train_step`` and ``evaluate`` take."""
    mesh = setup.mesh
    plan_arrays, chain, structure = {}, None, desc.structure_input
    first = desc
    if setup.chain:
        model = setup.chain.model
        first = descriptors.build(setup.chain.layout, model.layers(), model.global_fields())
        structure = first.structure_input
        chain = {
            "segment_ids": jnp.asarray(first.segment_ids),
            "targets": jnp.asarray(first.targets),
            # Encoded by with_tables (they need the frozen Fourier matrices).
            "index_h": jnp.asarray(first.index),
            "structure_h": jnp.asarray(first.structure_input),
            "index_f": jnp.asarray(desc.index),
            "structure_f": jnp.asarray(desc.structure_input),
        }
    if setup.gen is not None:
        min_sep = SEPARABLE_MIN_SIZE if any(setup.plan.separable) else 0
        host = generator.plan(setup.gen, first, min_sep)[1]
        # Descriptor rows are split over the mesh; the small column tables are replicated.
        plan_arrays = {
            "direct": sharding_lib.split_rows(mesh, host["direct"]),
            "rows": [sharding_lib.split_rows(mesh, r) for r in host["rows"]],
            "cols": [sharding_lib.replicate(mesh, jnp.asarray(c)) for c in host["cols"]],
        }
    return DescArrays(
        plan_arrays,
        *sharding_lib.replicate(
            mesh,
            [jnp.asarray(a) for a in (structure, desc.segment_ids, desc.targets)],
        ),
        chain=chain,
    )


def with_tables(setup: Setup, arrays: DescArrays, constants) -> DescArrays:
    """``arrays`` with the separable path's Fourier tables precomputed from the run's frozen
    constants (:func:`generator.with_tables`), so that steps skip those cos/sin evaluations."""
    if setup.gen is None:
        return arrays
    if setup.members:  # stacked over the members of a model set
        return arrays._replace(plan=_member_tables(setup, constants, arrays.plan))
    if setup.chain:
        arrays = arrays._replace(chain=_chain_inputs(setup, constants, arrays.chain))
    return arrays._replace(plan=_tables(setup, constants, arrays.plan))


@functools.partial(jax.jit, static_argnums=0)
def _chain_inputs(setup: Setup, constants, chain: dict) -> dict:
    """The encoded descriptors a generated UHN reads: H0's frozen normalisation and Fourier
    matrices applied to H's and to f's descriptors (spec §5.3)."""
    v = {"constants": constants}
    out = dict(chain)
    for who in ("h", "f"):
        out[f"feats_{who}"] = setup.gen.apply(
            v, chain[f"index_{who}"], method=generator.Generator.index_features
        )
        out[f"tokens_{who}"] = setup.gen.apply(
            v, chain[f"structure_{who}"], method=generator.Generator.structure_tokens
        )
    return out


@functools.partial(jax.jit, static_argnums=0)
def _member_tables(setup: Setup, constants, plan_arrays):
    fn = functools.partial(generator.with_tables, setup.gen, {"constants": constants})
    return jax.vmap(fn)(plan_arrays)


@functools.partial(jax.jit, static_argnums=0)
def _tables(setup: Setup, constants, plan_arrays):
    return generator.with_tables(setup.gen, {"constants": constants}, plan_arrays)


# ----------------------------------------------------------------------------- pure functions


def base_params(setup: Setup, params, constants, arrays: DescArrays):
    """The base model's params: generated (uhn) or the trained params themselves (direct)."""
    if setup.mode == "direct":
        return params
    arrays = _with_chain_inputs(setup, constants, arrays)
    w_N = generator.generate_planned(
        setup.gen,
        {"params": params, "constants": constants},
        setup.plan,
        arrays.plan,
        arrays.structure if setup.gen.structure else None,
        chunk_size=setup.chunk_size,
        mesh=setup.mesh,
        remat=setup.remat,
        layer_mask=arrays.layer_mask,
    )
    if arrays.weight_mask is not None:
        w_N = w_N * arrays.weight_mask  # a member's weights; zeros outside its corners
    if setup.chain:
        w_N = chain_weights(setup, w_N, arrays, setup.chain.depth)
    return layouts.unflatten(w_N, setup.layout)


def _with_chain_inputs(setup: Setup, constants, arrays: DescArrays) -> DescArrays:
    if setup.chain and "feats_f" not in arrays.chain:  # with_tables was not called
        return arrays._replace(chain=_chain_inputs(setup, constants, arrays.chain))
    return arrays


def chain_weights(setup: Setup, w1, arrays: DescArrays, element: int):
    """Runs the chain from H1's flat weights ``w1`` (generated by H0) for ``element`` links:
    H_k generates H_{k+1} from H's encoded descriptors, and H_K generates f from f's. Returns
    the flat weights of H_{element + 1}, or of f when ``element == K``. Needs the encoded
    inputs of :func:`with_tables` in ``arrays.chain``."""
    c = arrays.chain
    w = w1
    for k in range(1, element + 1):
        params_k = layouts.unflatten(w, setup.chain.layout)
        child_is_f = k == setup.chain.depth
        inputs = (
            (c["feats_f"], c["tokens_f"], None)
            if child_is_f
            else (c["feats_h"], c["tokens_h"], None)
        )
        w = setup.chain.model.apply(params_k, inputs)
    return w


def apply_model(setup: Setup, model_params, x, arrays: DescArrays, **kwargs):
    """``setup.model.apply``, run as the step's member in a multi-model run."""
    if arrays.model_masks is not None:
        kwargs["masks"] = arrays.model_masks
    return setup.model.apply(model_params, x, **kwargs)


#: ``base_params`` compiled: materialises a run's base-model params once (export, analysis).
materialize_params = jax.jit(base_params, static_argnums=0)


def tensor_stats(w_N: jax.Array, segment_ids: jax.Array, num_tensors: int, mask_N=None):
    """Per-tensor mean and population std of a flat vector, ``(T,)`` each; with ``mask_N``,
    over the masked scalars only."""
    m = jnp.ones_like(w_N) if mask_N is None else mask_N
    count = jnp.maximum(jax.ops.segment_sum(m, segment_ids, num_tensors), 1.0)
    mean = jax.ops.segment_sum(w_N * m, segment_ids, num_tensors) / count
    sq = m * (w_N - mean[segment_ids]) ** 2
    var = jax.ops.segment_sum(sq, segment_ids, num_tensors) / count
    # The epsilon keeps the gradient finite for tensors whose target std is 0.
    return mean, jnp.sqrt(var + 1e-12)


def generated_stats(setup: Setup, params, constants, arrays: DescArrays, sub_stage: int = 0):
    """Per-tensor ``(mean, std, targets)`` of the weights the initialisation stage matches.

    In a recursive run, sub-stage d looks at chain element d's generated weights: H_{d+1}'s
    for d < K, f's for d = K. ``targets`` is ``(T, 2)`` (mean, std) per tensor.
    """
    segment_ids, targets = arrays.segment_ids, arrays.targets
    arrays = _with_chain_inputs(setup, constants, arrays)
    if setup.chain and sub_stage < setup.chain.depth:
        chain_setup = dataclasses.replace(setup, chain=None, layout=setup.chain.layout)
        w1 = layouts.flatten(
            base_params(chain_setup, params, constants, arrays), chain_setup.layout
        )
        w_N = chain_weights(setup, w1, arrays, sub_stage)
        segment_ids, targets = arrays.chain["segment_ids"], arrays.chain["targets"]
    else:
        w_N = layouts.flatten(base_params(setup, params, constants, arrays), setup.layout)
    mean, std = tensor_stats(w_N, segment_ids, targets.shape[0], arrays.weight_mask)
    return mean, std, targets


_generated_stats_jit = jax.jit(generated_stats, static_argnums=(0, 4))


def init_loss(setup: Setup, params, constants, arrays: DescArrays, sub_stage: int = 0):
    """Moment-matching loss: mean over tensors and {mean, std} of (stat - target)^2 (see
    :func:`generated_stats` for what sub-stage d of a recursive run matches)."""
    mean, std, targets = generated_stats(setup, params, constants, arrays, sub_stage)
    err = (jnp.stack([mean, std], axis=1) - targets) ** 2
    if arrays.tensor_present is None:
        loss = jnp.mean(err)
    else:  # tensors a member does not have are skipped, as empty tensors in the reference
        loss = (err * arrays.tensor_present[:, None]).sum() / (2 * arrays.tensor_present.sum())
    return loss, {"init_loss": loss}


def init_fit(setup: Setup, params, constants, arrays: DescArrays) -> list[dict[str, Any]]:
    """How well the generated weights match the initialisation targets, one row per tensor.

    Rows (layout order) hold the tensor's name, its generated ``mean`` and ``std`` and the
    ``target_mean`` / ``target_std`` of the moment-matching stage. In a multi-model run the
    figures are for the first hold-in member; in a recursive run, for the base model f.
    """
    if setup.members:
        arrays = select_member(arrays, 0)
    last = setup.init_stages - 1  # the base model f's sub-stage
    stats = _generated_stats_jit(setup, params, constants, arrays, last)
    mean, std, targets = (np.asarray(a) for a in stats)
    present = (
        np.ones(len(targets), bool)
        if arrays.tensor_present is None
        else np.asarray(arrays.tensor_present) > 0
    )
    return [
        {
            "tensor": "/".join(leaf.keys),
            "mean": float(mean[i]),
            "std": float(std[i]),
            "target_mean": float(targets[i, 0]),
            "target_std": float(targets[i, 1]),
        }
        for i, leaf in enumerate(setup.layout.leaves)
        if present[i]
    ]


def poorly_fit(rows: list[dict[str, Any]], rel: float = 0.5) -> list[dict[str, Any]]:
    """The rows of :func:`init_fit` whose std is off its (non-zero) target by more than
    ``rel`` (relative), worst first."""

    def err(r):
        return abs(r["std"] - r["target_std"]) / r["target_std"]

    bad = [r for r in rows if r["target_std"] > 0 and err(r) > rel]
    return sorted(bad, key=err, reverse=True)


def example_terms(task: str, outputs: jax.Array, y: jax.Array):
    """Per-example ``(loss, score)``: cross-entropy and 0/1 correctness for classification,
    the squared error averaged over outputs (as both) for regression."""
    if task == "regression":
        se = jnp.mean((outputs - y) ** 2, axis=-1)
        return se, se
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    return loss, (outputs.argmax(-1) == y).astype(jnp.float32)


def _metric(task: str, mean_score: jax.Array) -> jax.Array:
    """Accuracy (mean correctness) or RMSE (root of the mean squared error)."""
    return jnp.sqrt(mean_score) if task == "regression" else mean_score


def task_loss(setup: Setup, params, constants, arrays: DescArrays, batch, rng):
    """The task loss of the base model on ``batch`` and its metric.

    ``batch`` is ``(x, y)``, or ``(graph, y, mask)`` for node classification, where only the
    masked nodes count.
    """
    x, y, *mask = batch
    model_params = base_params(setup, params, constants, arrays)
    outputs = apply_model(setup, model_params, x, arrays, train=True, rng=rng)
    loss, score = example_terms(setup.task, outputs, y)
    weight = mask[0].astype(jnp.float32) if mask else jnp.ones_like(loss)
    total = jnp.maximum(weight.sum(), 1.0)
    loss = (loss * weight).sum() / total
    metric = _metric(setup.task, (score * weight).sum() / total)
    return loss, {"loss": loss, setup.metric_name: metric}


def make_optimizer(setup: Setup, stage: str) -> optax.GradientTransformation:
    """AdamW (wd 0) with optional global-norm clipping and gradient normalisation.

    The task stage's peak rate is ``train.lr``, or ``train.direct_lr`` for direct training when
    that is set.

    ``init`` stage: cosine decay from ``init_lr`` over ``init_steps``, no warm-up.
    ``task`` stage: linear warm-up over ``warmup_steps`` starting at ``lr / (warmup + 1)``
    (as the reference's LambdaLR), then cosine decay to 0 at ``steps``.
    """
    t = setup.train
    if stage.startswith("init") and setup.chain and setup.chain.depth >= 2:
        # Recursive (spec §3.1): init_lr / 5 for sub-stages 0-1, / 10 for 2, / 40 after, each
        # with a linear warm-up (1000 steps in the reference, at most half the sub-stage here).
        d = int(stage[4:])
        peak = t.init_lr / (5 if d <= 1 else 10 if d == 2 else 40)
        length = max(setup.init_steps // setup.init_stages, 2)
        warm = min(1000, length // 2)
        schedule = optax.join_schedules(
            [
                optax.linear_schedule(peak / (warm + 1), peak, warm),
                optax.cosine_decay_schedule(peak, length - warm),
            ],
            [warm],
        )
    elif stage.startswith("init"):
        length = max(setup.init_steps // setup.init_stages, 1)
        schedule = optax.cosine_decay_schedule(t.init_lr, length)
    else:
        lr = t.direct_lr if setup.mode == "direct" and t.direct_lr > 0 else t.lr
        if setup.chain:
            lr *= chain_lr_scale(setup.chain.depth)
        cosine = optax.cosine_decay_schedule(lr, t.steps - t.warmup_steps)
        if t.warmup_steps:
            warm = optax.linear_schedule(lr / (t.warmup_steps + 1), lr, t.warmup_steps)
            schedule = optax.join_schedules([warm, cosine], [t.warmup_steps])
        else:
            schedule = cosine
    clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
    norm = optax.normalize_by_update_norm() if t.normalize_grads else optax.identity()
    return optax.chain(clip, norm, optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=0.0))


def chain_lr_scale(depth: int) -> float:
    """Task learning-rate factor of a recursive chain of ``depth`` generated UHNs: the
    reference's 1, 1/2, 1/8 for K = 1, 2, 3 (spec §5.3), then a further 1/4 per level (the
    reference stops at 3). Each generated level multiplies the chain's sensitivity to H0: on
    digits, K = 5 at 1/8 blew up in its first 100 task steps and stayed at chance."""
    if depth <= 1:
        return 1.0
    return 0.5 if depth == 2 else 0.125 * 0.25 ** (depth - 3)


def sample_batch(x, y, step, key, batch_size: int):
    """The ``step``-th batch of a per-epoch random permutation (stateless, resumable)."""
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // steps_per_epoch), n)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size)
    return x[idx], y[idx]


def _xla_options() -> dict | None:
    """XLA options of the training and evaluation programs (:data:`XLA_OPTIONS`)."""
    import jaxlib

    major, minor = (int(p) for p in jaxlib.__version__.split(".")[:2])
    if (major, minor) < (0, 10):  # the option's values as of jaxlib 0.10
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


#: XLA options of :func:`train_step` and the evaluation program. jaxlib 0.10's CPU backend hands
#: convolutions to YNNPACK by default; at the reference CNNs' 16-64 channels XLA's own
#: convolutions ran the MNIST CNN's training step 2.2x faster on a 2-core CPU (1.06 -> 0.48 s),
#: so only dots go to YNNPACK, as XLA's own default list has it. Other backends ignore it.
XLA_OPTIONS = _xla_options()


@functools.partial(
    jax.jit, static_argnums=(0, 1), donate_argnums=(2,), compiler_options=XLA_OPTIONS
)
def train_step(setup: Setup, stage: str, state: dict, arrays: DescArrays, data, key):
    """One optimisation step of ``stage`` ("init" or "task"); pure and jitted.

    Args:
      setup: static run description.
      stage: "init" (moment matching) or "task".
      state: ``{step, params, opt_state, constants}``; donated.
      arrays: descriptor arrays.
      data: ``(x_train, y_train)`` on device.
      key: the run's base PRNG key; the step's keys are ``fold_in(key, step)``.

    Returns:
      ``(new_state, metrics)``.
    """
    step_key = jax.random.fold_in(jax.random.fold_in(key, 0), state["step"])
    if setup.members:
        # Multi-model: this step's hold-in member, from a per-epoch permutation of them.
        n = setup.members
        perm = jax.random.permutation(jax.random.fold_in(key, 3 + state["step"] // n), n)
        arrays = select_member(arrays, perm[state["step"] % n])
    if stage.startswith("init"):
        sub_stage = int(stage[4:] or 0)
        loss_fn = functools.partial(init_loss, setup, sub_stage=sub_stage)
        args = (state["constants"], arrays)
    else:
        if setup.task == "node_classification":
            batch = data  # the whole graph, every step
        else:
            # Batches depend on the step only through the permutation key, not on step_key.
            x, y = sample_batch(
                *data, state["step"], jax.random.fold_in(key, 1), setup.train.batch_size
            )
            x, y = _split_batch(setup, x), _split_batch(setup, y)
            batch = (prepare_inputs(setup, x, jax.random.fold_in(step_key, 1)), y)
        loss_fn = functools.partial(task_loss, setup)
        args = (state["constants"], arrays, batch, step_key)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], *args)
    tx = make_optimizer(setup, stage)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def evaluate(setup: Setup, params, constants, arrays: DescArrays, data, batch_size: int):
    """The metric (accuracy or RMSE) and mean loss on ``data``.

    The weights are generated once (:data:`materialize_params`), then batches of
    ``batch_size`` (the last one padded and masked) go through one jitted function, so the
    train and test sets, and every member of a model set, share the same two compiles. Node
    classification evaluates the whole graph on the masked nodes.
    """
    model_params = materialize_params(setup, params, constants, arrays)
    if setup.task == "node_classification":
        graph, y, mask = data
        score, loss, total = _evaluate_batch(setup, model_params, arrays, graph, y, mask)
    else:
        x, y = data
        n = x.shape[0]
        score = loss = 0.0
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            pad = batch_size - xb.shape[0]
            valid = jnp.arange(batch_size) < xb.shape[0]
            if pad:
                xb = jnp.pad(xb, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                yb = jnp.pad(yb, [(0, pad)] + [(0, 0)] * (y.ndim - 1))
            batch_score, batch_loss, _ = _evaluate_batch(setup, model_params, arrays, xb, yb, valid)
            score, loss = score + batch_score, loss + batch_loss
        total = n
    return {setup.metric_name: _metric(setup.task, score / total), "loss": loss / total}


@functools.partial(jax.jit, static_argnums=0, compiler_options=XLA_OPTIONS)
def _evaluate_batch(setup: Setup, model_params, arrays: DescArrays, x, y, valid):
    """Sums of the per-example score and loss over the ``valid`` examples, and their count."""
    if setup.task != "node_classification":
        x, y, valid = (_split_batch(setup, b) for b in (x, y, valid))
        x = prepare_inputs(setup, x)
    loss, score = example_terms(setup.task, apply_model(setup, model_params, x, arrays), y)
    w = valid.astype(jnp.float32)
    return (score * w).sum(), (loss * w).sum(), jnp.maximum(w.sum(), 1.0)


def _split_batch(setup: Setup, x: jax.Array) -> jax.Array:
    """Splits a batch's examples over the mesh (identity without one)."""
    return sharding_lib.constrain(x, sharding_lib.split(setup.mesh, x.ndim))


def init_state(setup: Setup, key: jax.Array) -> dict:
    """The step-0 train state of a run, replicated over the mesh."""
    if setup.mode == "uhn":
        variables = generator.init(setup.gen, key)
        params, constants = variables["params"], variables["constants"]
    else:
        params, constants = setup.model.init(key), {}
    opt_state = make_optimizer(setup, setup.stage(0)).init(params)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": opt_state,
        "constants": constants,
    }
    return sharding_lib.replicate(setup.mesh, state)


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def _describe_model(exp: config_lib.Experiment) -> str:
    m = exp.model
    widths = "x".join(str(w) for w in m.widths)
    if m.family == "cnn":
        return f"cnn-d{'-'.join(str(d) for d in m.depths)}-w{widths}"
    if m.family == "gat":
        return f"gat-{m.num_heads}x{widths}-out{m.output_heads}"
    if m.family == "transformer":
        return f"transformer-e{m.embed_dim}-enc{m.num_encoders}-h{m.num_heads}"
    if m.family == "kan":
        return f"kan-{widths}-g{m.grid_size}"
    return f"{m.family}-{widths}"


class _MetricsLog:
    """Appends JSON lines (and TensorBoard scalars, when tensorboardX is present).

    In a multi-host job only process 0 writes; the others' logs are no-ops.
    """

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.file = self.tb = None
        if jax.process_index() != 0:
            return
        if self.path.exists():
            # Drop lines a killed run wrote after its last checkpoint; they are recomputed.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a declared dependency
            self.tb = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fields_read(cfg: dict[str, Any], mode: str) -> dict[str, Any]:
    """The part of a config dict (``Experiment.to_dict`` layout) that a ``mode`` run reads.

    Direct training never reads the generator, the initialisation stage or, when
    ``train.direct_lr`` is set, ``train.lr``; a direct run's workdir then accepts other values
    for them, so a ``compare`` with new UHN settings reuses its finished direct runs. ``mode``
    is the new run's, so a mode mismatch is reported as ``mode`` alone.
    """
    if mode != "direct":
        return cfg
    ignored = {"init_steps", "init_lr"} | ({"lr"} if cfg["train"]["direct_lr"] > 0 else set())
    train_cfg = {k: v for k, v in cfg["train"].items() if k not in ignored}
    return {**{k: v for k, v in cfg.items() if k != "generator"}, "train": train_cfg}


def _check_workdir_config(workdir: Path, exp: config_lib.Experiment) -> None:
    path = workdir / "config.json"
    current = exp.to_dict()
    if path.exists():
        # A field added to the config after the run started takes its default, so older
        # workdirs stay resumable.
        defaults = _flat(json.loads(json.dumps(config_lib.Experiment().to_dict())))
        saved = _unflat({**defaults, **_flat(json.loads(path.read_text()))})
        saved = _fields_read(saved, exp.mode)
        # JSON turns tuples into lists; compare through one JSON round trip.
        current_json = _fields_read(json.loads(json.dumps(current)), exp.mode)
        if saved != current_json:
            diffs = sorted(_flat(saved).items() ^ _flat(current_json).items())
            keys = sorted({k for k, _ in diffs})
            raise ValueError(
                f"workdir {workdir} holds a run with a different config (fields differ: "
                f"{', '.join(keys)}). Use a new --workdir, or delete the old one to start over."
            )
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2) + "\n")


def _unflat(flat: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`_flat`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *groups, name = key.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = json.loads(value)
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def run(
    exp: config_lib.Experiment,
    workdir: str | Path,
    *,
    dataset: Dataset | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains ``exp`` in ``workdir`` (resuming from its latest checkpoint) and evaluates it.

    Args:
      exp: the validated experiment.
      workdir: run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``,
        ``tensorboard/`` and, at the end, ``results.json``.
      dataset: the loaded dataset (loaded from ``exp.data`` when omitted).
      progress: show a progress bar.
      stop_after: stop (after checkpointing) once this many steps are done; for tests and for
        splitting long runs.

    Returns:
      The results dict (also written to ``results.json``); ``None`` values for the metric when
      stopped early.
    """
    exp = exp.validate()
    workdir = Path(workdir)
    _check_workdir_config(workdir, exp)
    results_path = workdir / "results.json"
    if results_path.exists():
        return json.loads(results_path.read_text())
    start_time = time.time()
    compiles_before = train_step._cache_size() if exp.model.model_set else 0
    if dataset is None:
        dataset = load_dataset(exp)
    mset = members = None
    if exp.model.model_set:
        setup, host_arrays, mset, members = make_multi_setup(exp, dataset)
        arrays = jax.tree.map(jnp.asarray, host_arrays)
    else:
        setup, desc = make_setup(exp, dataset)
        arrays = desc_arrays(setup, desc)
    # The dataset is replicated; each step's batch is gathered from it and split over the mesh.
    train_data, test_data = device_data(setup, dataset)
    key = jax.random.key_data(jax.random.key(exp.seed))
    state = init_state(setup, jax.random.fold_in(key, 2))

    mngr = checkpoint.manager(workdir / "checkpoints")
    state, restored = checkpoint.restore_latest(mngr, state)
    arrays = with_tables(setup, arrays, state["constants"])
    start = 0 if restored is None else restored
    log = _MetricsLog(workdir, start)
    if restored is not None:
        print(f"[uhn_jax] resuming {workdir} from step {start}")
    total, t = setup.total_steps, setup.train
    end = total if stop_after is None else min(total, stop_after)
    bar = _progress_bar(total, start, progress, desc=f"{exp.mode} seed {exp.seed}")
    pending = None  # (step, metrics) dispatched but not yet read: read after the next dispatch
    last_log_time, last_log_step = time.time(), start
    try:
        for step in range(start, end):
            stage = setup.stage(step)
            if setup.fresh_optimizer_at(step):
                # A fresh optimiser for every (sub-)stage, as in the reference.
                state["opt_state"] = sharding_lib.replicate(
                    setup.mesh, make_optimizer(setup, stage).init(state["params"])
                )
            state, metrics = train_step(setup, stage, state, arrays, train_data, key)
            if pending is not None:
                last_log_time, last_log_step = _emit(
                    log, bar, pending, last_log_time, last_log_step
                )
                pending = None
            done = step + 1
            if done % t.log_every == 0 or done == end:
                pending = (done, stage, metrics)
            if done == setup.init_steps:
                report_init_fit(
                    workdir, init_fit(setup, state["params"], state["constants"], arrays)
                )
            if t.eval_every and done % t.eval_every == 0 and done > setup.init_steps:
                ev_arrays = select_member(arrays, 0) if setup.members else arrays
                ev = evaluate(
                    setup,
                    state["params"],
                    state["constants"],
                    ev_arrays,
                    test_data,
                    t.eval_batch_size,
                )
                log.write(done, {f"test_{k}": float(v) for k, v in ev.items()})
            if done % t.checkpoint_every == 0 or done == end:
                if pending is not None:
                    last_log_time, last_log_step = _emit(
                        log, bar, pending, last_log_time, last_log_step
                    )
                    pending = None
                checkpoint_save(mngr, done, state)
            bar.update(1)
    except KeyboardInterrupt:
        # Keep everything done so far; rerunning with the same workdir resumes here.
        try:
            checkpoint_save(mngr, int(state["step"]), state)
            mngr.wait_until_finished()
        except (RuntimeError, ValueError, NonFiniteLossError):
            # Interrupted inside a step whose input buffers were donated: the previous
            # checkpoint is the resume point.
            print(f"[uhn_jax] interrupted; resume from step {mngr.latest_step()}")
        raise
    finally:
        bar.close()
        log.close()
    if pending is not None:
        _emit(log, bar, pending, last_log_time, last_log_step)
    mngr.wait_until_finished()
    if end < total:
        return {"step": end, "test_metric": None}

    if setup.members:
        results = _multi_results(exp, setup, state, arrays, mset, members, test_data, workdir)
        # Compiles of the jitted train step made by this run (one per stage): the members share
        # one compiled step. Counted as a difference, so other runs in the process don't count.
        results["train_step_compiles"] = train_step._cache_size() - compiles_before
        results["wall_s"] = round(time.time() - start_time, 2)
        if jax.process_index() == 0:
            results_path.write_text(json.dumps(results, indent=2) + "\n")
        return results
    ev = evaluate(setup, state["params"], state["constants"], arrays, test_data, t.eval_batch_size)
    ev_train = evaluate(
        setup, state["params"], state["constants"], arrays, train_data, t.eval_batch_size
    )
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": exp.mode,
        "task": _TASK_TYPES[exp.data.name],
        "dataset": dataset.name,
        "model": _describe_model(exp),
        "num_target_params": setup.layout.size,
        "num_generator_params": (
            sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
            if exp.mode == "uhn"
            else 0
        ),
        "metric_name": setup.metric_name,
        "test_metric": float(ev[setup.metric_name]),
        "train_metric": float(ev_train[setup.metric_name]),
        "test_loss": float(ev["loss"]),
        "seed": exp.seed,
        "steps": exp.train.steps,
        "init_steps": setup.init_steps,
        "wall_s": round(time.time() - start_time, 2),
    }
    if jax.process_index() == 0:
        with open(workdir / "metrics.jsonl", "a") as f:
            line = {"step": total, f"test_{setup.metric_name}": results["test_metric"]}
            f.write(json.dumps(line) + "\n")
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report_init_fit(
    workdir: Path, fits: list[dict[str, Any]] | dict[str, list[dict[str, Any]]]
) -> None:
    """Writes ``init_fit.json`` at the end of the initialisation stage and warns about tensors
    whose generated std is far from its target (a sign the stage needs more steps or a
    higher ``train.init_lr``).

    ``fits`` is :func:`init_fit`'s rows for a single run, or a dict of them by task name for a
    multi-task run; the file holds it as given.
    """
    if jax.process_index() == 0:
        (workdir / "init_fit.json").write_text(json.dumps(fits, indent=1) + "\n")
    for label, rows in fits.items() if isinstance(fits, dict) else [("", fits)]:
        bad = poorly_fit(rows)
        if not bad:
            continue
        worst = ", ".join(
            f"{r['tensor']} std {r['std']:.3g} (target {r['target_std']:.3g})" for r in bad[:3]
        )
        where = f" of task {label}" if label else ""
        print(
            f"[uhn_jax] warning: after the initialisation stage {len(bad)} of {len(rows)} "
            f"tensors{where} have a std more than 50 % off target: {worst}. Consider more "
            "train.init_steps or a higher train.init_lr (details in init_fit.json)."
        )


def _multi_results(exp, setup, state, arrays, mset, members, test_data, workdir) -> dict:
    """Test metric of the hold-in evaluation members (the first ``num_held_out`` hold-in ones,
    as the reference) and of every held-out member, a scatter plot of metric against
    parameter count (``members.png``), and the number of compiles of the train step."""
    hold_in = list(range(min(mset.num_held_out or len(mset.hold_in), len(mset.hold_in))))
    held_out = list(range(len(mset.hold_in), len(mset.models)))
    name = setup.metric_name
    rows = []
    for i in hold_in + held_out:
        ev = evaluate(
            setup,
            state["params"],
            state["constants"],
            select_member(arrays, i),
            test_data,
            exp.train.eval_batch_size,
        )
        shapes = jax.eval_shape(members[i].init, jax.random.key(0))
        rows.append(
            {
                "index": i,
                "split": "hold_in" if i < len(mset.hold_in) else "held_out",
                "arch": dict(mset.models[i]),
                "num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)),
                "test_metric": float(ev[name]),
            }
        )

    def mean(split):
        vals = [r["test_metric"] for r in rows if r["split"] == split]
        return float(np.mean(vals)) if vals else None

    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": exp.mode,
        "task": _TASK_TYPES[exp.data.name],
        "dataset": exp.data.name,
        "model": f"set:{Path(exp.model.model_set).name}",
        "num_target_params": setup.layout.size,
        "num_generator_params": sum(
            int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"])
        ),
        "metric_name": name,
        "test_metric": mean("held_out"),
        "hold_in_test_metric": mean("hold_in"),
        "held_out_test_metric": mean("held_out"),
        "num_members": len(mset.models),
        "num_hold_in": len(mset.hold_in),
        "members": rows,
        "seed": exp.seed,
        "steps": exp.train.steps,
        "init_steps": setup.init_steps,
    }
    if jax.process_index() == 0:
        plot_members(rows, name, workdir / "members.png")
    return results


def plot_members(rows: list[dict], metric_name: str, path: Path) -> Path:
    """Scatter plot of test metric against parameter count, hold-in and held-out marked apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for split, marker, label in (("hold_in", "o", "seen (hold-in)"), ("held_out", "^", "unseen")):
        pts = [(r["num_params"], r["test_metric"]) for r in rows if r["split"] == split]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, marker=marker, label=label, alpha=0.75)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"test {metric_name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def checkpoint_save(mngr, step: int, state: dict) -> None:
    """Saves ``state`` unless its loss went non-finite (then the last good one is kept)."""
    leaves = jax.tree_util.tree_leaves(state["params"])
    if not all(bool(jnp.isfinite(x).all()) for x in leaves):
        raise NonFiniteLossError(
            f"parameters became NaN/Inf before step {step}; the last good checkpoint "
            f"(step {mngr.latest_step()}) is kept. Lower train.lr or set train.grad_clip."
        )
    checkpoint.save(mngr, step, state)


def _emit(log, bar, pending, last_time, last_step):
    step, stage, metrics = pending
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    loss = values.get("loss", values.get("init_loss"))
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"{stage} loss is {loss} at step {step}; the last good checkpoint is kept. "
            "Lower train.lr or set train.grad_clip."
        )
    now = time.time()
    values["steps_per_s"] = (step - last_step) / max(now - last_time, 1e-9)
    values["stage"] = stage
    log.write(step, values)
    bar.set_postfix({"stage": stage, "loss": f"{loss:.4f}", "it/s": f"{values['steps_per_s']:.1f}"})
    return now, step


def _progress_bar(total: int, start: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        desc=desc,
        mininterval=2.0,
        dynamic_ncols=True,
    )
