"""The static part of a run: base model, layout, generator, plan and mesh (a :class:`Setup`),
and the device arrays of its descriptors (:class:`DescArrays`).

A :class:`Setup` is hashable and seed-free, so the jitted step compiles once per setup and
stage and is reused across seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from uhn_jax import config as config_lib
from uhn_jax import generator, hypernets, models
from uhn_jax.core import descriptors, layouts
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import registry as data_registry
from uhn_jax.hypernets import recursion, uhn
from uhn_jax.training import tasks

#: Tensors of at least this many scalars (and 2+ axes) take the separable generation path.
SEPARABLE_MIN_SIZE = generator.MIN_SEPARABLE


class DescArrays(NamedTuple):
    """Device copies of the descriptor arrays a step needs: a hypernetwork's condition."""

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
class Setup:
    """Static, hashable, seed-free description of a run (a jit static argument)."""

    mode: str  # the hypernetwork kind (uhn_jax.hypernets)
    task: str  # one of tasks.TASKS
    model: Any  # a base model (uhn_jax.models)
    # Per-channel (mean, std) for uint8 datasets, normalised on device; None for float inputs.
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    augment: Any  # the dataset's training augmentation fn(key, x, mean, std), or None
    layout: layouts.Layout  # of the generated leaves (every leaf but a FlaxModel's rest)
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
    chain: recursion.Chain | None = None
    # The classic kinds' settings (mode=conditional).
    hypernet: config_lib.HyperNetConfig | None = None
    # mode=continual: the task-conditioned hypernetwork's settings (set by the continual
    # driver, uhn_jax.training.continual).
    continual: hypernets.continual.Settings | None = None
    # mode=ewc: the online EWC penalty's settings (set by the continual driver).
    ewc: hypernets.ewc.Settings | None = None
    # mode=adapt: the source model and what trains (uhn_jax.hypernets.adapt_kind).
    adapt: config_lib.AdaptConfig | None = None
    # Multi-head classification (continual.multi_head, set by the continual driver): the
    # outputs are heads of head_size classes, a label picks its head (tasks.example_terms).
    head_size: int = 0

    @property
    def kind(self) -> hypernets.Kind:
        return hypernets.get(self.mode)

    @property
    def metric_name(self) -> str:
        return tasks.metric_name(self.task)

    @property
    def init_steps(self) -> int:
        return self.kind.init_steps(self.train)

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


def build_model(exp: config_lib.Experiment, dataset):
    """The base model of ``exp`` for ``dataset`` (through the model-family registry)."""
    return models.registry.build(exp.model, dataset, tasks.dataset_type(exp, dataset))


def model_descriptors(model) -> descriptors.ModelDescriptors:
    """The (cached) descriptors of a base model's generated leaves."""
    shapes, _ = uhn.split_params(model, jax.eval_shape(model.init, jax.random.key(0)))
    return descriptors.build(layouts.from_params(shapes), model.layers(), model.global_fields())


def describe(exp: config_lib.Experiment, dataset) -> descriptors.ModelDescriptors:
    """The descriptors of ``exp``'s base model for ``dataset``."""
    return model_descriptors(build_model(exp, dataset))


def input_pipeline(exp: config_lib.Experiment, dataset) -> tuple[tuple | None, Any]:
    """``(input_norm, augment)`` of a run: on-device normalisation of uint8 inputs, and the
    augmentation of training batches (when ``data.augment`` is on and the dataset's registry
    entry defines one: CIFAR-10)."""
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    norm = (tuple(mean), tuple(std)) if mean is not None else None
    fn = data_registry.get(exp.data.name).augment
    return norm, fn if exp.data.augment else None


def check_batches(exp: config_lib.Experiment, task: str, dataset, mesh) -> None:
    """Raises ``ValueError`` for batch sizes the data or the mesh cannot serve."""
    if task != "node_classification" and exp.train.batch_size > dataset.x_train.shape[0]:
        raise ValueError(
            f"train.batch_size ({exp.train.batch_size}) exceeds the {dataset.x_train.shape[0]} "
            f"training examples of {dataset.name}"
        )
    if mesh is not None and task != "node_classification":
        for name in ("batch_size", "eval_batch_size"):
            if getattr(exp.train, name) % mesh.size:
                raise ValueError(
                    f"train.{name} ({getattr(exp.train, name)}) must be divisible by the "
                    f"{mesh.size} devices of the mesh (train.num_devices={exp.train.num_devices})"
                )


def _chain(exp: config_lib.Experiment):
    """The recursive chain of ``exp`` and the descriptors of its generated UHN (H1)."""
    g = exp.generator
    h_model = models.RecursiveUHN(
        embed_dim=2 * g.structure_freqs,
        index_features=2 * g.n_freqs,
        num_heads=g.structure_heads,
        slope=exp.model.slope,
    )
    first = model_descriptors(h_model)
    return recursion.Chain(g.chain_depth, h_model, first.layout), first


def make_generator(exp, desc, ranges, mesh):
    """The generator of a UHN run: ``(gen, plan, chunk_size, remat, chain)``.

    ``ranges`` (index, structure) overrides the declared ranges, which otherwise come from
    ``desc`` (and, in a recursive run, from the union with H1's descriptors, spec §1.5).
    """
    first, chain = desc, None  # first: what H0 generates, f or (recursive) H1
    if exp.generator.chain_depth:
        chain, first = _chain(exp)
        if ranges is None:
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
    plan, host = generator.plan(gen, first, min_separable(exp))
    chunk, remat = exp.generator.chunk_size or None, True
    if chunk is None:
        devices = 1 if mesh is None else mesh.size
        chunk, remat = generator.auto_chunking(gen, host, exp.generator.memory_mib, devices)
    return gen, plan, chunk, remat, chain


def make_setup(
    exp: config_lib.Experiment,
    dataset,
    ranges: tuple[descriptors.Ranges, descriptors.Ranges | None] | None = None,
) -> tuple[Setup, descriptors.ModelDescriptors]:
    """Builds the static setup and the (cached) descriptors of a run.

    ``ranges`` (index, structure) overrides the generator's declared ranges, which otherwise
    come from this model's descriptors; a multi-task run passes the union over its tasks.
    """
    task = tasks.task_of(exp)
    mesh = sharding_lib.make_mesh(exp.train.num_devices)
    check_batches(exp, task, dataset, mesh)
    setup, desc = model_setup(exp, build_model(exp, dataset), task, mesh, ranges)
    norm, augment = input_pipeline(exp, dataset)
    return dataclasses.replace(setup, input_norm=norm, augment=augment), desc


def model_setup(
    exp: config_lib.Experiment,
    model,
    task: str,
    mesh: jax.sharding.Mesh | None = None,
    ranges: tuple[descriptors.Ranges, descriptors.Ranges | None] | None = None,
) -> tuple[Setup, descriptors.ModelDescriptors]:
    """The setup and descriptors of ``exp`` around an already built base ``model``, without
    its data (no input normalisation or augmentation): what rebuilding a run's weights from
    its workdir needs (:mod:`uhn_jax.training.rebuild`). ``ranges`` as in :func:`make_setup`."""
    desc = model_descriptors(model)
    gen, plan, chunk, remat, chain = None, None, None, True, None
    if exp.mode == "uhn":
        gen, plan, chunk, remat, chain = make_generator(exp, desc, ranges, mesh)
    setup = Setup(
        exp.mode,
        task,
        model,
        None,
        None,
        desc.layout,
        gen,
        plan,
        chunk,
        remat,
        exp.train,
        mesh,
        chain=chain,
        hypernet=exp.hypernet,
        adapt=exp.adapt,
    )
    return setup, desc


def min_separable(exp: config_lib.Experiment) -> int:
    """The separable path's size threshold of ``exp`` (0 = off)."""
    return SEPARABLE_MIN_SIZE if exp.generator.separable else 0


def device_data(setup: Setup, dataset) -> tuple[tuple, tuple]:
    """``(train, test)`` data on device, replicated over the mesh.

    Sampled-batch tasks get ``(x, y)`` per split; node classification gets
    ``(graph, y, mask)`` per split, the same ``jraph.GraphsTuple`` with the train or test mask.
    """
    if setup.task == "node_classification":
        g = dataset
        graph = models.gnn.graphs_tuple(g)
        y = jnp.asarray(g.y)
        splits = ((graph, y, jnp.asarray(g.train_mask)), (graph, y, jnp.asarray(g.test_mask)))
    else:
        splits = tuple(
            (jnp.asarray(getattr(dataset, f"x_{s}")), jnp.asarray(getattr(dataset, f"y_{s}")))
            for s in ("train", "test")
        )
    return sharding_lib.replicate(setup.mesh, splits)


def _chain_arrays(setup: Setup, desc):
    """``(H1's descriptors, the chain's host arrays)`` of a recursive run."""
    model = setup.chain.model
    first = descriptors.build(setup.chain.layout, model.layers(), model.global_fields())
    chain = {
        "segment_ids": jnp.asarray(first.segment_ids),
        "targets": jnp.asarray(first.targets),
        # Encoded by with_tables (they need the frozen Fourier matrices).
        "index_h": jnp.asarray(first.index),
        "structure_h": jnp.asarray(first.structure_input),
        "index_f": jnp.asarray(desc.index),
        "structure_f": jnp.asarray(desc.structure_input),
    }
    return first, chain


def desc_arrays(setup: Setup, desc: descriptors.ModelDescriptors) -> DescArrays:
    """Device copies of the descriptor arrays ``train_step`` and ``evaluate`` take."""
    mesh = setup.mesh
    plan_arrays, chain, first = {}, None, desc
    if setup.chain:
        first, chain = _chain_arrays(setup, desc)
    if setup.gen is not None:
        min_sep = SEPARABLE_MIN_SIZE if any(setup.plan.separable) else 0
        host = generator.plan(setup.gen, first, min_sep)[1]
        # Descriptor rows are split over the mesh; the small column tables are replicated.
        plan_arrays = {
            "direct": sharding_lib.split_rows(mesh, host["direct"]),
            "rows": [sharding_lib.split_rows(mesh, r) for r in host["rows"]],
            "cols": [sharding_lib.replicate(mesh, jnp.asarray(c)) for c in host["cols"]],
        }
    host_arrays = (first.structure_input, desc.segment_ids, desc.targets)
    return DescArrays(
        plan_arrays,
        *sharding_lib.replicate(mesh, [jnp.asarray(a) for a in host_arrays]),
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
        arrays = arrays._replace(chain=recursion.encode_inputs(setup, constants, arrays.chain))
    return arrays._replace(plan=_tables(setup, constants, arrays.plan))


@functools.partial(jax.jit, static_argnums=0)
def _member_tables(setup: Setup, constants, plan_arrays):
    fn = functools.partial(generator.with_tables, setup.gen, {"constants": constants})
    return jax.vmap(fn)(plan_arrays)


@functools.partial(jax.jit, static_argnums=0)
def _tables(setup: Setup, constants, plan_arrays):
    return generator.with_tables(setup.gen, {"constants": constants}, plan_arrays)


def select_member(arrays: DescArrays, index) -> DescArrays:
    """One member's arrays out of a multi-model run's stacked arrays (jit-safe)."""
    return jax.tree.map(lambda a: a[index], arrays)
