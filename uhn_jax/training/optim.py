"""The optimiser of each stage: AdamW with optional clipping and gradient normalisation."""

from __future__ import annotations

import jax
import optax

from uhn_jax.core import sharding as sharding_lib

#: Warm-up of each recursive initialisation sub-stage in the reference (spec §3.1); at most half
#: the sub-stage here.
RECURSIVE_INIT_WARMUP = 1000


def _recursive_init_schedule(setup, stage: str):
    """Recursive runs (spec §3.1): init_lr / 5 for sub-stages 0-1, / 10 for 2, / 40 after, each
    with a linear warm-up."""
    t = setup.train
    d = int(stage[4:])
    peak = t.init_lr / (5 if d <= 1 else 10 if d == 2 else 40)
    length = max(setup.init_steps // setup.init_stages, 2)
    warm = min(RECURSIVE_INIT_WARMUP, length // 2)
    return optax.join_schedules(
        [
            optax.linear_schedule(peak / (warm + 1), peak, warm),
            optax.cosine_decay_schedule(peak, length - warm),
        ],
        [warm],
    )


def schedule(setup, stage: str, peak: float | None = None) -> optax.Schedule:
    """The learning-rate schedule of ``stage``.

    ``init`` stage: cosine decay from ``init_lr`` over ``init_steps``, no warm-up.
    ``task`` stage: linear warm-up over ``warmup_steps`` starting at ``lr / (warmup + 1)``
    (as the reference's LambdaLR), then cosine decay to 0 at ``steps``; the peak rate is the
    kind's (:meth:`uhn_jax.hypernets.Kind.task_lr`) unless ``peak`` is given.
    """
    t = setup.train
    if stage.startswith("init") and setup.chain and setup.chain.depth >= 2:
        return _recursive_init_schedule(setup, stage)
    if stage.startswith("init"):
        return optax.cosine_decay_schedule(t.init_lr, max(setup.init_steps // setup.init_stages, 1))
    lr = setup.kind.task_lr(setup) if peak is None else peak
    cosine = optax.cosine_decay_schedule(lr, t.steps - t.warmup_steps)
    if not t.warmup_steps:
        return cosine
    warm = optax.linear_schedule(lr / (t.warmup_steps + 1), lr, t.warmup_steps)
    return optax.join_schedules([warm, cosine], [t.warmup_steps])


def _adamw(sched) -> optax.GradientTransformation:
    return optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=0.0)


def _top_level_labels(params):
    """Each leaf labelled with its top-level key (the kind's parameter group)."""
    return {group: jax.tree.map(lambda _, g=group: g, tree) for group, tree in params.items()}


def make_optimizer(setup, stage: str) -> optax.GradientTransformation:
    """AdamW (wd 0) with optional global-norm clipping and gradient normalisation.

    A kind with parameter groups (:meth:`uhn_jax.hypernets.Kind.lr_groups`, e.g. a UHN's
    generator and the leaves it does not generate) trains each group through
    ``optax.multi_transform`` with its own peak rate in the task stage.
    """
    t = setup.train
    clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
    norm = optax.normalize_by_update_norm() if t.normalize_grads else optax.identity()
    groups = setup.kind.lr_groups(setup)
    if groups is None:
        return optax.chain(clip, norm, _adamw(schedule(setup, stage)))
    peak = (lambda lr: lr) if stage == "task" else (lambda lr: None)
    transforms = {g: _adamw(schedule(setup, stage, peak(lr))) for g, lr in groups.items()}
    return optax.chain(clip, norm, optax.multi_transform(transforms, _top_level_labels))


def fresh_state(setup, stage: str, params):
    """A new optimiser state for ``stage``, replicated over the run's mesh like the params."""
    return sharding_lib.replicate(setup.mesh, make_optimizer(setup, stage).init(params))
