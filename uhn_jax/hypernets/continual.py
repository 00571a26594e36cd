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
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import checks, descriptors, layouts
from uhn_jax.hypernets import base
from uhn_jax.hypernets import conditional_layers as layers


@dataclasses.dataclass(frozen=True)
class Settings:
    """The hypernetwork of a continual run (config groups ``hnet`` and ``continual``).

    Attributes:
      num_tasks: tasks in the sequence (one embedding each).
      embedding_size: width of a task embedding.
      chunk_embedding_size: width of a chunk embedding.
      chunk_size: generated values per chunk.
      hidden_sizes: the hypernetwork MLP's hidden widths.
      beta: weight of the output regulariser (0 = none).
      activation: the hypernetwork's hidden activation.
    """

    num_tasks: int
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


def num_chunks(settings: Settings, n: int) -> int:
    """Chunks that cover ``n`` target weights."""
    return -(-n // settings.chunk_size)


@functools.lru_cache(maxsize=64)
def _head_std(model, layout, width: int) -> float:
    """Init std of the hypernetwork head: generated weights start with the root mean square of
    the target's per-tensor init std (chunks span tensors, so one scale serves all)."""
    targets = descriptors.build(layout, model.layers(), model.global_fields()).targets
    sizes = np.array([leaf.size for leaf in layout.leaves], np.float64)
    rms = float(np.sqrt((sizes * targets[:, 1].astype(np.float64) ** 2).sum() / sizes.sum()))
    return rms / math.sqrt(width)


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
    """The flat target weights for task embeddings ``e_D`` (``[..., embedding_size]``):
    ``[..., N]``. Pure and differentiable."""
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


def check_task(setup, task) -> None:
    """Raises ``ValueError`` naming ``task`` when a concrete task id is not one of the
    hypernetwork's ``num_tasks`` embeddings (a traced id is not checked)."""
    if isinstance(task, jax.core.Tracer):
        return
    t = setup.continual.num_tasks
    value = np.asarray(task)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= value < t:
        raise ValueError(f"task must be an int in [0, {t}) (continual.num_tasks={t}), got {task!r}")


def task_weights(setup, params, task) -> jax.Array:
    """The flat target weights ``w[N]`` of task ``task`` (an int or a traced int scalar)."""
    check_task(setup, task)
    e_TE = trained_embeddings(params, task)
    return generate(setup, params, jnp.take(e_TE, task, axis=0))


def output_regularizer(w_TN: jax.Array, snapshot_TN: jax.Array, task) -> jax.Array:
    """``1/t * sum_{j < t} ||w_j - snapshot_j||^2`` (0 for ``t = 0``): how far the generated
    weights of the tasks before ``task`` moved from their snapshot."""
    sq_T = jnp.sum((w_TN - snapshot_TN) ** 2, axis=-1)
    earlier = jnp.arange(w_TN.shape[0]) < task
    return jnp.sum(jnp.where(earlier, sq_T, 0.0)) / jnp.maximum(task, 1).astype(sq_T.dtype)


@functools.partial(jax.jit, static_argnums=0)
def snapshot(setup, params, task) -> jax.Array:
    """``(T, N)``: the generated weights of tasks ``j < task`` (zeros for the others), taken
    before task ``task`` trains."""
    w_TN = generate(setup, params, params["task_embeddings"])
    earlier = (jnp.arange(w_TN.shape[0]) < task)[:, None]
    return jnp.where(earlier, w_TN, 0.0)


@dataclasses.dataclass(frozen=True)
class Continual(base.Kind):
    """Task embedding + chunk embeddings -> hypernetwork -> all target weights; see the module
    docstring."""

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
        k_gen, k_chunk, k_task = jax.random.split(key, 3)
        n = setup.layout.size
        u = jnp.zeros((s.embedding_size + s.chunk_embedding_size,))
        params = {
            "hnet": _generator(setup).init(k_gen, u)["params"],
            "chunk_embeddings": jax.random.normal(
                k_chunk, (num_chunks(s, n), s.chunk_embedding_size)
            ),
            "task_embeddings": jax.random.normal(k_task, (s.num_tasks, s.embedding_size)),
        }
        constants = {
            "task": jnp.zeros((), jnp.int32),
            "snapshot": jnp.zeros((s.num_tasks, n), jnp.float32),
        }
        return params, constants

    def target_params(self, setup, params, constants, cond):
        w_N = task_weights(setup, params, constants["task"])
        return layouts.unflatten(w_N, setup.layout)

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        """Runs task ``constants["task"]``'s network; with a regulariser, ``aux`` holds every
        task's generated weights (one generation serves the task and the regulariser)."""
        t = constants["task"]
        if setup.continual.beta == 0:
            w_N, aux = task_weights(setup, params, t), None
        else:
            w_TN = generate(setup, params, trained_embeddings(params, t))
            w_N, aux = jnp.take(w_TN, t, axis=0), w_TN
        model_params = layouts.unflatten(w_N, setup.layout)
        return base.apply_base(setup, model_params, x, cond, train=train, rng=rng), aux

    def extra_loss(self, setup, params, constants, cond, aux):
        if setup.continual.beta == 0:
            return jnp.zeros(()), {}
        if aux is None:
            aux = generate(setup, params, trained_embeddings(params, constants["task"]))
        reg = output_regularizer(aux, constants["snapshot"], constants["task"])
        return setup.continual.beta * reg, {"output_reg": reg}

    def num_trained(self, params) -> dict[str, int]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        return {"num_generator_params": count}


base.register(Continual())
