"""Tasks: what a run optimises for each kind of dataset, its loss, metric and batches.

``classification``: cross-entropy on sampled batches (images, text), metric accuracy.
``node_classification``: cross-entropy on the masked nodes of one full graph per step.
``regression``: mean squared error on sampled batches (formulas), metric RMSE.
``language_modeling``: next-token cross-entropy over each window's positions (characters),
metric bits per character (``bpc``, the cross-entropy in base 2).
"""

from __future__ import annotations

import math
import weakref

import jax
import jax.numpy as jnp
import optax

from uhn_jax import config as config_lib
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.data import augment, registry

TASKS = registry.TASKS
#: The datasets :func:`load_dataset` loaded, by id: a run of one records that its config
#: reloads its data (:func:`from_registry`), which an in-memory dataset's does not.
_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def metric_name(task: str) -> str:
    """``rmse`` for regression, ``bpc`` for language modelling, ``accuracy`` otherwise."""
    return {"regression": "rmse", "language_modeling": "bpc"}.get(task, "accuracy")


def task_of(exp: config_lib.Experiment) -> str:
    """The :data:`TASKS` entry of ``exp``'s dataset (from the dataset registry)."""
    return registry.get(exp.data.name).task


def results_task(exp: config_lib.Experiment) -> str:
    """The ``results.json`` task name of ``exp``'s dataset, e.g. ``image_cls``."""
    return registry.get(exp.data.name).results_task


def dataset_type(exp: config_lib.Experiment, dataset=None) -> int:
    """The global descriptor's ``dataset_type`` of ``exp``'s dataset."""
    return registry.dataset_type(exp.data)


def load_dataset(exp: config_lib.Experiment):
    """Loads ``exp``'s dataset through the dataset registry."""
    dataset = registry.load(exp.data)
    try:
        _LOADED[id(dataset)] = dataset
    except TypeError:  # not weakly referable: counted as in-memory, which only costs a refusal
        pass
    return dataset


def from_registry(dataset) -> bool:
    """Whether ``dataset`` is one :func:`load_dataset` loaded (so ``exp.data`` reloads it),
    not a dataset built in memory and handed to a run."""
    return _LOADED.get(id(dataset)) is dataset


def example_terms(task: str, outputs: jax.Array, y: jax.Array, head_size: int = 0):
    """Per-example ``(loss, score)``: cross-entropy and 0/1 correctness for classification,
    the squared error averaged over outputs (as both) for regression, the mean cross-entropy
    over a window's positions and its value in bits for language modelling.

    ``head_size`` > 0 (classification): the outputs are heads of ``head_size`` classes and a
    label ``y`` names class ``y % head_size`` of head ``y // head_size``; the softmax and the
    prediction are over that head only (multi-head continual learning, the task id given)."""
    if head_size:
        heads = outputs.reshape(*outputs.shape[:-1], -1, head_size)
        outputs = jnp.take_along_axis(heads, (y // head_size)[..., None, None], axis=-2)[..., 0, :]
        y = y % head_size
    if task == "regression":
        se = jnp.mean((outputs - y) ** 2, axis=-1)
        return se, se
    if task == "language_modeling":  # outputs [B, L, V], y [B, L]: mean over positions
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs, y).mean(axis=-1)
        return ce, ce / math.log(2.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    return loss, (outputs.argmax(-1) == y).astype(jnp.float32)


def metric(task: str, mean_score: jax.Array) -> jax.Array:
    """Accuracy (mean correctness) or RMSE (root of the mean squared error)."""
    return jnp.sqrt(mean_score) if task == "regression" else mean_score


def task_loss(setup, params, constants, cond, batch, rng):
    """The task loss of the base model on ``batch`` (plus the kind's extra loss) and metrics.

    ``batch`` is ``(x, y)``, or ``(graph, y, mask)`` for node classification, where only the
    masked nodes count.
    """
    x, y, *mask = batch
    kind = setup.kind
    outputs, aux = kind.forward(setup, params, constants, cond, x, train=True, rng=rng)
    loss, score = example_terms(setup.task, outputs, y, setup.head_size)
    weight = mask[0].astype(jnp.float32) if mask else jnp.ones_like(loss)
    total = jnp.maximum(weight.sum(), 1.0)
    loss = (loss * weight).sum() / total
    metrics = {"loss": loss, setup.metric_name: metric(setup.task, (score * weight).sum() / total)}
    extra, extra_metrics = kind.extra_loss(setup, params, constants, cond, aux)
    return loss + extra, {**metrics, **extra_metrics}


def sample_batch(x, y, step, key, batch_size: int):
    """The ``step``-th batch of a per-epoch random permutation (stateless, resumable)."""
    n = x.shape[0]
    steps_per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // steps_per_epoch), n)
    idx = jax.lax.dynamic_slice_in_dim(perm, (step % steps_per_epoch) * batch_size, batch_size)
    return x[idx], y[idx]


def prepare_inputs(setup, x, key=None):
    """Device-side input pipeline: augmentation (training, when on) and normalisation."""
    if setup.input_norm is None:
        return x
    mean, std = setup.input_norm
    if key is not None and setup.augment is not None:
        return setup.augment(key, x, mean, std)
    return augment.normalize_images(x, mean, std)


def split_batch(setup, x: jax.Array) -> jax.Array:
    """Splits a batch's examples over the mesh (identity without one)."""
    return sharding_lib.constrain(x, sharding_lib.split(setup.mesh, x.ndim))
