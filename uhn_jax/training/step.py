"""The pure training step, its compiled form with explicit shardings, and evaluation.

``train_step(setup, stage, state, cond, data, key) -> (state, metrics)`` is pure; per-step
randomness is ``fold_in(key, step)`` and batches come from a per-epoch permutation, so a resumed
run is bit-identical to an uninterrupted one. :func:`run_step` compiles it once per
``(setup, stage)`` with ``in_shardings``/``out_shardings`` (state, data and key replicated,
descriptor rows split over the mesh) and the state donated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from uhn_jax import hypernets
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.training import optim, tasks
from uhn_jax.training.setup import Setup, select_member


def _xla_options() -> dict | None:
    """XLA options of the training and evaluation programs (:data:`XLA_OPTIONS`)."""
    import jaxlib

    major, minor = (int(p) for p in jaxlib.__version__.split(".")[:2])
    if (major, minor) < (0, 10):  # the option's values as of jaxlib 0.10
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


#: XLA options of the training and evaluation programs. jaxlib 0.10's CPU backend hands
#: convolutions to YNNPACK by default; at the reference CNNs' 16-64 channels XLA's own
#: convolutions ran the MNIST CNN's training step 2.2x faster on a 2-core CPU (1.06 -> 0.48 s),
#: so only dots go to YNNPACK, as XLA's own default list has it. Other backends ignore it.
XLA_OPTIONS = _xla_options()


def init_state(setup: Setup, key: jax.Array) -> dict:
    """The step-0 train state ``{step, params, opt_state, constants}``, replicated."""
    params, constants = setup.kind.init(setup, key)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optim.make_optimizer(setup, setup.stage(0)).init(params),
        "constants": constants,
    }
    return sharding_lib.replicate(setup.mesh, state)


def _batch(setup: Setup, data, step, key, step_key):
    """The task batch of ``step``: the whole graph, or a sampled, split, prepared batch."""
    if setup.task == "node_classification":
        return data
    # Batches depend on the step only through the permutation key, not on step_key.
    x, y = tasks.sample_batch(*data, step, jax.random.fold_in(key, 1), setup.train.batch_size)
    x, y = tasks.split_batch(setup, x), tasks.split_batch(setup, y)
    return tasks.prepare_inputs(setup, x, jax.random.fold_in(step_key, 1)), y


def train_step(setup: Setup, stage: str, state: dict, cond, data, key):
    """One optimisation step of ``stage`` (``init``, ``init<d>`` or ``task``); pure.

    Args:
      setup: static run description.
      stage: the stage (:meth:`Setup.stage`).
      state: ``{step, params, opt_state, constants}``.
      cond: the descriptor arrays (stacked over the members of a model set).
      data: the training split on device.
      key: the run's base PRNG key data; the step's keys are ``fold_in(key, step)``.

    Returns:
      ``(new_state, metrics)``.
    """
    step_key = jax.random.fold_in(jax.random.fold_in(key, 0), state["step"])
    if setup.members:
        # Multi-model: this step's hold-in member, from a per-epoch permutation of them.
        n = setup.members
        perm = jax.random.permutation(jax.random.fold_in(key, 3 + state["step"] // n), n)
        cond = select_member(cond, perm[state["step"] % n])
    if stage.startswith("init"):
        sub_stage = int(stage[4:] or 0)
        loss_fn = functools.partial(setup.kind.init_loss, setup, sub_stage=sub_stage)
        args = (state["constants"], cond)
    else:
        batch = _batch(setup, data, state["step"], key, step_key)
        loss_fn = functools.partial(tasks.task_loss, setup)
        args = (state["constants"], cond, batch, step_key)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], *args)
    tx = optim.make_optimizer(setup, stage)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    return new_state, metrics


_COMPILED: dict = {}


def compiled(setup: Setup, stage: str, cond):
    """``train_step`` jitted for ``(setup, stage)``, with explicit shardings on a mesh.

    ``cond`` gives the descriptor arrays' shardings (rows split, tables replicated); the state,
    data, key and metrics are replicated. One compile per ``(setup, stage)``, reused across
    seeds (the setup is seed-free).
    """
    if (setup, stage) not in _COMPILED:
        fn = functools.partial(train_step, setup, stage)
        kwargs = {"donate_argnums": 0, "compiler_options": XLA_OPTIONS}
        if setup.mesh is not None:
            rep = sharding_lib.replicated(setup.mesh)
            cond_shardings = jax.tree.map(lambda a: a.sharding, cond)
            kwargs |= {"in_shardings": (rep, cond_shardings, rep, rep), "out_shardings": rep}
        _COMPILED[(setup, stage)] = jax.jit(fn, **kwargs)
    return _COMPILED[(setup, stage)]


def run_step(setup: Setup, stage: str, state: dict, cond, data, key):
    """One compiled training step (the state is donated): ``(new_state, metrics)``."""
    return compiled(setup, stage, cond)(state, cond, data, key)


def compile_count() -> int:
    """Compiled training programs in this process (each ``(setup, stage)`` compiles once)."""
    return sum(fn._cache_size() for fn in _COMPILED.values())


def target_params(setup: Setup, params, constants, cond):
    """The base model's params of a run (generated by the kind, or trained directly)."""
    return setup.kind.target_params(setup, params, constants, cond)


#: ``target_params`` compiled: materialises a run's base-model params once (export, analysis).
materialize_params = jax.jit(target_params, static_argnums=0)


def evaluate(setup: Setup, params, constants, cond, data, batch_size: int) -> dict:
    """The metric (accuracy or RMSE) and mean loss on ``data``.

    The weights are generated once (:data:`materialize_params`; per batch for a kind whose
    weights depend on each example), then batches of ``batch_size`` (the last one padded and
    masked) go through one jitted function, so the train and test sets, and every member of a
    model set, share the same two compiles. Node classification evaluates the whole graph on
    the masked nodes.
    """
    if setup.kind.per_example(setup):
        model_params = (params, constants)
    else:
        model_params = materialize_params(setup, params, constants, cond)
    if setup.task == "node_classification":
        graph, y, mask = data
        score, loss, total = _evaluate_batch(setup, model_params, cond, graph, y, mask)
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
            batch_score, batch_loss, _ = _evaluate_batch(setup, model_params, cond, xb, yb, valid)
            score, loss = score + batch_score, loss + batch_loss
        total = n
    return {setup.metric_name: tasks.metric(setup.task, score / total), "loss": loss / total}


@functools.partial(jax.jit, static_argnums=0, compiler_options=XLA_OPTIONS)
def _evaluate_batch(setup: Setup, model_params, cond, x, y, valid):
    """Sums of the per-example score and loss over the ``valid`` examples, and their count.

    ``model_params`` are the base model's, or ``(params, constants)`` of a per-example kind.
    """
    if setup.task != "node_classification":
        x, y, valid = (tasks.split_batch(setup, b) for b in (x, y, valid))
        x = tasks.prepare_inputs(setup, x)
    if setup.kind.per_example(setup):
        outputs = setup.kind.forward(setup, *model_params, cond, x)[0]
    else:
        outputs = hypernets.base.apply_base(setup, model_params, x, cond)
    loss, score = tasks.example_terms(setup.task, outputs, y, setup.head_size)
    w = valid.astype(jnp.float32)
    return (score * w).sum(), (loss * w).sum(), jnp.maximum(w.sum(), 1.0)
