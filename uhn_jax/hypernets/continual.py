"""The ``continual`` kind: a task-conditioned, chunked hypernetwork for continual learning
(von Oswald et al. 2020, "Continual learning with hypernetworks").

Every task ``t`` has a learned embedding ``e_t``. The target network's flat weight vector is
generated in chunks: the hypernetwork (:class:`~uhn_jax.hypernets.conditional_layers.
WeightGenerator`, an MLP with a hyperfan-in initialised head) maps ``[e_t, c_k]`` for every
learned chunk embedding ``c_k`` to ``chunk_size`` values; the chunks are concatenated, cut to the
target's ``N`` weights and unflattened with the target's layout. So one hypernetwork, smaller
than the target if the chunks are large, generates all of every task's weights.

**Output regulariser.** Before task ``t`` starts, the outputs for the embeddings of tasks
``0 .. t-1`` are snapshot (:func:`snapshot`, stored in the run's checkpointed ``constants``);
training task ``t`` adds (the paper's eq. 2, without its optional look-ahead)

    beta / t * sum_{j < t} || h(e_j) - snapshot_j ||^2

(a squared L2 norm over all N generated weights, averaged over the earlier tasks, as the
authors' ``calc_fix_target_reg``). Only the current task's embedding, the chunk embeddings and
the hypernetwork train: the other task embeddings get no gradient (``stop_gradient``), so with
the optimiser state reset at every task boundary, they stay exactly where their task left them,
as in the paper (whose optimiser holds only the current embedding).

The task being trained and the snapshot are ``constants["task"]`` and ``constants["snapshot"]``;
the continual driver (:mod:`uhn_jax.training.continual`) sets them at every task boundary. The
kind reads its settings from ``setup.continual`` (:class:`Settings`), so it runs only under that
driver: a single-run config with ``mode=continual`` is refused.

**The UHN generator as the hypernetwork** (``hnet.generator="uhn"``; the default ``"chunked"``
is the above). The project's UHN generator (:mod:`uhn_jax.generator`, sized by the run's
``generator`` group) maps every target weight's index descriptor to its value, conditioned on a
**task descriptor**: the structure input its structure path reads, with the global field
``dataset_type`` (:data:`TASK_FIELD`) set to the task id ``t`` and declared to range over
``0 .. num_tasks - 1`` (:func:`task_descriptors`, :func:`declared_ranges`). Every parameter is
shared by the tasks (there is no per-task embedding to freeze), so the output regulariser, the
snapshot and everything else are as above. All tasks' weights come from one ``vmap`` over the
task descriptors (:func:`all_weights`): only the structure vector and the generator's head
depend on the task, so the first layer and the residual blocks run once for all of them.
Params are ``{"generator": ...}``; the generator's frozen Fourier matrices are
``constants["generator"]``; the head is rescaled at init to the target's scale
(:func:`_uhn_init`), as the chunked head is, since a continual run has no moment matching.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax import generator as generator_lib
from uhn_jax.core import checks, descriptors, layouts
from uhn_jax.hypernets import base
from uhn_jax.hypernets import conditional_layers as layers

#: Values of ``hnet.generator``: the chunked MLP of von Oswald et al., or the UHN generator.
GENERATORS = ("chunked", "uhn")
#: The global descriptor field that carries the task id for the UHN generator.
TASK_FIELD = "dataset_type"
#: Its column in the ``(L, 29)`` structure input (the global fields come first).
TASK_COLUMN = descriptors.GLOBAL_FIELDS.index(TASK_FIELD)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The hypernetwork of a continual run (config groups ``hnet`` and ``continual``).

    Attributes:
      num_tasks: tasks in the sequence (one embedding or task descriptor each).
      generator: ``"chunked"`` (task embedding + chunk embeddings -> MLP) or ``"uhn"`` (the
        UHN generator on a task descriptor, sized by the run's ``generator`` group).
      embedding_size: width of a task embedding (chunked).
      chunk_embedding_size: width of a chunk embedding (chunked).
      chunk_size: generated values per chunk (chunked).
      hidden_sizes: the hypernetwork MLP's hidden widths (chunked).
      beta: weight of the output regulariser (0 = none).
      activation: the hypernetwork's hidden activation (chunked).
    """

    num_tasks: int
    generator: str = "chunked"
    embedding_size: int = 16
    chunk_embedding_size: int = 16
    chunk_size: int = 1024
    hidden_sizes: tuple[int, ...] = (64,)
    beta: float = 0.01
    activation: str = "relu"

    def validate(self) -> Settings:
        """Checks every field: a ``ValueError`` names it (``hnet.<field>``,
        ``continual.num_tasks``)."""
        checks.positive_int("continual.num_tasks", self.num_tasks)
        checks.choice("hnet.generator", self.generator, GENERATORS)
        for name in ("embedding_size", "chunk_embedding_size", "chunk_size"):
            checks.positive_int(f"hnet.{name}", getattr(self, name))
        if not self.hidden_sizes:
            raise ValueError("hnet.hidden_sizes must name at least one hidden width, got ()")
        for w in self.hidden_sizes:
            checks.positive_int("hnet.hidden_sizes", w)
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta >= 0:
            raise ValueError(f"hnet.beta must be a number >= 0, got {beta!r}")
        if not math.isfinite(beta):
            raise ValueError(f"hnet.beta must be finite, got {beta!r}")
        layers.activation_fn(self.activation, "hnet.activation")
        return self


# ----------------------------------------------------------------------------- chunked


def num_chunks(settings: Settings, n: int) -> int:
    """Chunks that cover ``n`` target weights."""
    return -(-n // settings.chunk_size)


@functools.lru_cache(maxsize=64)
def _target_rms(model, layout) -> float:
    """The root mean square of the target's per-tensor init std, over its weights: the scale
    both hypernetworks' generated weights start at."""
    targets = descriptors.build(layout, model.layers(), model.global_fields()).targets
    sizes = np.array([leaf.size for leaf in layout.leaves], np.float64)
    return float(np.sqrt((sizes * targets[:, 1].astype(np.float64) ** 2).sum() / sizes.sum()))


def _head_std(model, layout, width: int) -> float:
    """Init std of the hypernetwork head: generated weights start with the root mean square of
    the target's per-tensor init std (chunks span tensors, so one scale serves all)."""
    return _target_rms(model, layout) / math.sqrt(width)


def _generator(setup) -> layers.WeightGenerator:
    s = setup.continual
    return layers.WeightGenerator(
        input_size=s.embedding_size + s.chunk_embedding_size,
        hidden_sizes=tuple(s.hidden_sizes),
        out_size=s.chunk_size,
        head_std=_head_std(setup.model, setup.layout, s.hidden_sizes[-1]),
        activation=s.activation,
    )


def generate(setup, params, e_D: jax.Array) -> jax.Array:
    """The chunked hypernetwork's flat target weights for task embeddings ``e_D``
    (``[..., embedding_size]``): ``[..., N]``. Pure and differentiable."""
    c_KC = params["chunk_embeddings"]
    lead, k = e_D.shape[:-1], c_KC.shape[0]
    u = jnp.concatenate(
        [
            jnp.broadcast_to(e_D[..., None, :], (*lead, k, e_D.shape[-1])),
            jnp.broadcast_to(c_KC, (*lead, *c_KC.shape)),
        ],
        axis=-1,
    )
    out = _generator(setup).apply({"params": params["hnet"]}, u)  # [..., K, chunk_size]
    return out.reshape(*lead, -1)[..., : setup.layout.size]


def trained_embeddings(params, task) -> jax.Array:
    """``(T, E)`` task embeddings where only row ``task`` carries a gradient."""
    e_TE = params["task_embeddings"]
    current = (jnp.arange(e_TE.shape[0]) == task)[:, None]
    return jnp.where(current, e_TE, jax.lax.stop_gradient(e_TE))


# ----------------------------------------------------------------------------- UHN


def task_descriptors(model, layout, num_tasks: int) -> tuple[descriptors.ModelDescriptors, ...]:
    """The descriptors of the target for each task: the model's own, with the global field
    :data:`TASK_FIELD` set to the task id (host-side, cached)."""
    fields = dict(model.global_fields())
    return tuple(
        descriptors.build(layout, model.layers(), {**fields, TASK_FIELD: t})
        for t in range(num_tasks)
    )


def declared_ranges(descs) -> tuple[descriptors.Ranges, descriptors.Ranges]:
    """The UHN generator's declared ``(index, structure)`` ranges: the union over every task's
    descriptors, so the task field ranges over ``0 .. num_tasks - 1`` from the first step."""
    return (
        descriptors.union_all([d.index_ranges() for d in descs]),
        descriptors.union_all([d.structure_ranges() for d in descs]),
    )


def task_structures(structure_L29: jax.Array, num_tasks: int) -> jax.Array:
    """``(T, L, 29)``: the structure input of every task (jit-safe); task ``t``'s equals
    ``task_descriptors(...)[t].structure_input``."""
    s_TL29 = jnp.broadcast_to(structure_L29, (num_tasks, *structure_L29.shape))
    ids_T = jnp.arange(num_tasks, dtype=structure_L29.dtype)
    return s_TL29.at[:, :, TASK_COLUMN].set(ids_T[:, None])


def _uhn_init(setup, key) -> dict:
    """The UHN generator's variables, its head rescaled so that the generated weights start
    with mean 0 and the target's init scale (:func:`_target_rms`), the rule of the chunked
    head: a continual run has no moment-matching stage. (The structure path starts as a
    no-op, so every task starts with the same weights.)"""
    variables = generator_lib.init(setup.gen, key)
    desc = task_descriptors(setup.model, setup.layout, 1)[0]
    w_N = generator_lib.generate(
        setup.gen, variables, desc.index, desc.structure_input, chunk_size=setup.chunk_size
    )
    scale = _target_rms(setup.model, setup.layout) / jnp.maximum(jnp.std(w_N), 1e-12)
    head = variables["params"]["output_layer"]
    head = {"kernel": head["kernel"] * scale, "bias": (head["bias"] - jnp.mean(w_N)) * scale}
    params = {**variables["params"], "output_layer": head}
    return {"params": params, "constants": variables["constants"]}


def _uhn_generate(setup, params, constants, cond, structure_L29) -> jax.Array:
    """The UHN generator's flat weights ``w[N]`` for one task's structure input."""
    return generator_lib.generate_planned(
        setup.gen,
        {"params": params["generator"], "constants": constants["generator"]},
        setup.plan,
        cond.plan,
        structure_L29,
        chunk_size=setup.chunk_size,
        mesh=setup.mesh,
        remat=setup.remat,
    )


# ----------------------------------------------------------------------------- both


def _uses_uhn(setup) -> bool:
    return setup.continual.generator == "uhn"


def check_task(setup, task) -> None:
    """Raises ``ValueError`` naming ``task`` when a concrete task id is not one of the
    hypernetwork's ``num_tasks`` tasks (a traced id is not checked)."""
    if isinstance(task, jax.core.Tracer):
        return
    t = setup.continual.num_tasks
    value = np.asarray(task)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= value < t:
        raise ValueError(f"task must be an int in [0, {t}) (continual.num_tasks={t}), got {task!r}")


def all_weights(setup, params, constants, cond, task) -> jax.Array:
    """``(T, N)``: every task's flat target weights, as trained while task ``task`` trains
    (chunked: only row ``task``'s embedding carries a gradient; UHN: every parameter is
    shared). ``cond`` is the run's descriptor arrays (read by the UHN only)."""
    if not _uses_uhn(setup):
        return generate(setup, params, trained_embeddings(params, task))
    s_TL29 = task_structures(cond.structure, setup.continual.num_tasks)
    # The task enters after the residual blocks: under vmap they run once for every task.
    return jax.vmap(lambda s: _uhn_generate(setup, params, constants, cond, s))(s_TL29)


def task_weights(setup, params, constants, cond, task) -> jax.Array:
    """The flat target weights ``w[N]`` of task ``task`` (an int or a traced int scalar)."""
    check_task(setup, task)
    if not _uses_uhn(setup):
        e_TE = trained_embeddings(params, task)
        return generate(setup, params, jnp.take(e_TE, task, axis=0))
    s_TL29 = task_structures(cond.structure, setup.continual.num_tasks)
    return _uhn_generate(setup, params, constants, cond, jnp.take(s_TL29, task, axis=0))


def output_regularizer(w_TN: jax.Array, snapshot_TN: jax.Array, task) -> jax.Array:
    """``1/t * sum_{j < t} ||w_j - snapshot_j||^2`` (0 for ``t = 0``): how far the generated
    weights of the tasks before ``task`` moved from their snapshot."""
    sq_T = jnp.sum((w_TN - snapshot_TN) ** 2, axis=-1)
    earlier = jnp.arange(w_TN.shape[0]) < task
    return jnp.sum(jnp.where(earlier, sq_T, 0.0)) / jnp.maximum(task, 1).astype(sq_T.dtype)


@functools.partial(jax.jit, static_argnums=0)
def snapshot(setup, params, constants, cond, task) -> jax.Array:
    """``(T, N)``: the generated weights of tasks ``j < task`` (zeros for the others), taken
    before task ``task`` trains."""
    w_TN = all_weights(setup, params, constants, cond, task)
    earlier = (jnp.arange(w_TN.shape[0]) < task)[:, None]
    return jnp.where(earlier, w_TN, 0.0)


@dataclasses.dataclass(frozen=True)
class Continual(base.Kind):
    """Task embedding + chunk embeddings -> hypernetwork -> all target weights, or the UHN
    generator on a task descriptor; see the module docstring."""

    name: str = "continual"

    def validate(self, exp) -> None:
        raise ValueError(
            "mode 'continual' trains a sequence of tasks; run it with the continual driver "
            "(uhn_jax.training.continual.run and configs/continual.py), not as a single run"
        )

    def init(self, setup, key):
        s = setup.continual
        if s is None:
            raise ValueError(
                "mode 'continual' needs setup.continual (hypernets.continual.Settings)"
            )
        n = setup.layout.size
        constants = {
            "task": jnp.zeros((), jnp.int32),
            "snapshot": jnp.zeros((s.num_tasks, n), jnp.float32),
        }
        if _uses_uhn(setup):
            if setup.gen is None:
                raise ValueError(
                    "hnet.generator='uhn' needs setup.gen, the UHN generator (the continual "
                    "driver builds it from the config's generator group)"
                )
            variables = _uhn_init(setup, key)
            constants["generator"] = variables["constants"]
            return {"generator": variables["params"]}, constants
        k_gen, k_chunk, k_task = jax.random.split(key, 3)
        u = jnp.zeros((s.embedding_size + s.chunk_embedding_size,))
        params = {
            "hnet": _generator(setup).init(k_gen, u)["params"],
            "chunk_embeddings": jax.random.normal(
                k_chunk, (num_chunks(s, n), s.chunk_embedding_size)
            ),
            "task_embeddings": jax.random.normal(k_task, (s.num_tasks, s.embedding_size)),
        }
        return params, constants

    def target_params(self, setup, params, constants, cond):
        w_N = task_weights(setup, params, constants, cond, constants["task"])
        return layouts.unflatten(w_N, setup.layout)

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        """Runs task ``constants["task"]``'s network; with a regulariser, ``aux`` holds every
        task's generated weights (one generation serves the task and the regulariser)."""
        t = constants["task"]
        if setup.continual.beta == 0:
            w_N, aux = task_weights(setup, params, constants, cond, t), None
        else:
            w_TN = all_weights(setup, params, constants, cond, t)
            w_N, aux = jnp.take(w_TN, t, axis=0), w_TN
        model_params = layouts.unflatten(w_N, setup.layout)
        return base.apply_base(setup, model_params, x, cond, train=train, rng=rng), aux

    def extra_loss(self, setup, params, constants, cond, aux):
        if setup.continual.beta == 0:
            return jnp.zeros(()), {}
        t = constants["task"]
        if aux is None:
            aux = all_weights(setup, params, constants, cond, t)
        reg = output_regularizer(aux, constants["snapshot"], t)
        return setup.continual.beta * reg, {"output_reg": reg}

    def num_trained(self, params) -> dict[str, int]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        return {"num_generator_params": count}


base.register(Continual())
