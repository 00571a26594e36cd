"""Training a predictor of networks' test accuracy (SNE, or an MLP on weight statistics or on
flattened weights) through the one training loop, :class:`uhn_jax.training.loop.Loop`.

A predictor is a Flax module ``apply(params, batch) -> [B]`` in [0, 1]; its inputs are an
:class:`Inputs` (the targets and a function that builds the numpy batch of any records). The
step function draws step ``t``'s batch from ``(seed, t)`` alone and takes one AdamW step on the
mean squared error, plus, with ``rank_weight > 0``, a pairwise ranking loss (RankNet: for every
pair of the batch, the logistic loss of ordering the two predictions' logits as their targets
are ordered); every ``eval_every`` steps it scores the validation records and keeps the params
with the best validation score (``select``: the lowest MSE, or the highest Kendall tau) in the
train state (``best``), so the choice survives a kill: the run resumes from its latest
checkpoint, bit-identically, and a finished run restores its final checkpoint and takes no
step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uhn_jax.training import loop as loop_lib

#: The validation score of a state that has not been validated yet (finite: checkpoints hold
#: it). Scores are lower-is-better: the MSE, or minus Kendall's tau.
UNSCORED = float(np.finfo(np.float32).max)
#: How validation chooses the params: ``Settings.select``.
SELECT = ("mse", "tau")


@dataclasses.dataclass(frozen=True)
class Settings:
    """A predictor's optimisation (AdamW, linear warm-up then cosine decay to 1 % of ``lr``,
    global-norm clipping), its loss (the MSE, plus ``rank_weight`` times the pairwise ranking
    loss), how validation chooses the params (``select``, one of :data:`SELECT`) and the loop's
    cadence."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 64
    log_every: int = 50
    checkpoint_every: int = 250
    rank_weight: float = 0.0
    select: str = "mse"


@dataclasses.dataclass(frozen=True, eq=False)
class Inputs:
    """A method's inputs for ``n`` records: ``make(indices) -> {name: numpy array}`` builds a
    batch, ``y`` are the targets and ``sizes`` (optional) each record's cost, by which
    evaluation batches are grouped (SNE: its tokens)."""

    y: np.ndarray
    make: Callable[[np.ndarray], dict[str, np.ndarray]]
    sizes: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.y)

    def batch(self, idx) -> dict[str, np.ndarray]:
        return self.make(np.asarray(idx))


@dataclasses.dataclass(frozen=True)
class Fit:
    """What :func:`fit` returns: the chosen params (the best validated, else the last), the
    step they are from, their validation MSE and Kendall tau (``None`` without validation, tau
    also when undefined), whether the run reached its last step, and the steps this call
    took."""

    params: Any
    step: int
    val_mse: float | None
    val_tau: float | None
    finished: bool
    taken: int


def optimizer(s: Settings) -> optax.GradientTransformation:
    """AdamW with warm-up and cosine decay, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, s.lr, max(s.warmup_steps, 1), max(s.steps, s.warmup_steps + 1), s.lr * 0.01
    )
    return optax.chain(
        optax.clip_by_global_norm(s.grad_clip), optax.adamw(schedule, weight_decay=s.weight_decay)
    )


def rank_loss(pred: jax.Array, y: jax.Array) -> jax.Array:
    """RankNet over every pair of the batch: the mean, over pairs with ``y_i > y_j``, of
    ``softplus(-(logit(pred_i) - logit(pred_j)))``; 0 when all targets tie. Logits, not the
    predictions, so pairs near the top of [0, 1] still get a gradient."""
    logit = jnp.log(pred + 1e-6) - jnp.log1p(1e-6 - pred)
    above = (y[:, None] > y[None, :]).astype(pred.dtype)
    pair = jax.nn.softplus(-(logit[:, None] - logit[None, :]))
    return jnp.sum(above * pair) / jnp.maximum(jnp.sum(above), 1.0)


def _update(model, tx, rank_weight: float, state: dict, batch: dict, y) -> tuple[dict, dict]:
    def loss_fn(params):
        pred = model.apply(params, batch)
        loss = jnp.mean((pred - y) ** 2)
        return loss + rank_weight * rank_loss(pred, y) if rank_weight else loss

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


_COMPILED: dict = {}


def compiled(model, settings: Settings, name: str) -> Callable:
    """The jitted update step (``name="update"``, state donated), prediction (``"predict"``)
    or init (``"init"``), compiled once per (model, settings); benchmarks/sne_benchmark.py
    times the first two."""
    key = (model, settings if name == "update" else None, name)
    if key not in _COMPILED:
        if name == "update":
            fn = functools.partial(_update, model, optimizer(settings), settings.rank_weight)
            _COMPILED[key] = jax.jit(fn, donate_argnums=0)
        else:  # init: jitted, as eager init runs op by op
            _COMPILED[key] = jax.jit(model.apply if name == "predict" else model.init)
    return _COMPILED[key]


def predict(model, params, inputs: Inputs, batch_size: int) -> np.ndarray:
    """Predictions ``[n]`` for every record of ``inputs``, in batches of ``batch_size``
    (grouped by ``inputs.sizes``; the last batch filled with repeats, so shapes repeat)."""
    order = np.argsort(inputs.sizes, kind="stable") if inputs.sizes is not None else None
    order = np.arange(inputs.n) if order is None else order
    fn = compiled(model, None, "predict")
    out = np.zeros(inputs.n, np.float32)
    for start in range(0, inputs.n, batch_size):
        idx = order[start : start + batch_size]
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        pred = np.asarray(fn(params, inputs.batch(padded)))
        out[idx] = pred[: len(idx)]
    return out


def init_state(model, settings: Settings, inputs: Inputs, seed: int) -> dict:
    """The step-0 state: ``{step, params, opt_state, best: {params, val_mse, step}}``."""
    example = inputs.batch(np.arange(min(2, inputs.n)))
    params = compiled(model, None, "init")(jax.random.key(seed), example)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer(settings).init(params),
        "best": {
            "params": jax.tree.map(jnp.copy, params),
            "val_mse": jnp.asarray(UNSCORED, jnp.float32),
            "val_tau": jnp.asarray(np.nan, jnp.float32),
            "step": jnp.asarray(-1, jnp.int32),
        },
    }
    return _committed(state)


def _committed(tree):
    """``tree`` committed to the default device, as a restored checkpoint's arrays are: the
    compiled step is keyed on it, so a resumed run (or a new best) compiles nothing again."""
    return jax.device_put(tree, jax.devices()[0])


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Step ``step``'s training batch: ``batch_size`` of ``range(n)`` drawn from ``(seed,
    step)`` alone (without replacement when ``n`` allows)."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=batch_size, replace=n < batch_size)


def mse_and_tau(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The MSE and Kendall tau of predictions ``pred`` of ``y`` (tau NaN when undefined:
    constant predictions or targets, or one record)."""
    from scipy import stats as scipy_stats

    mse = float(np.mean((np.asarray(pred, np.float64) - y) ** 2))
    tau = float(scipy_stats.kendalltau(pred, y).statistic) if len(y) > 1 else float("nan")
    return mse, tau


def _score(s: Settings, mse: float, tau: float) -> float:
    """The ``select`` score, lower is better: the MSE, or minus tau (:data:`UNSCORED` when tau
    is undefined)."""
    if s.select == "mse":
        return mse
    return -tau if np.isfinite(tau) else UNSCORED


def _step_fn(model, s: Settings, train: Inputs, val: Inputs | None, seed: int, log: dict):
    """The loop's ``step_fn``: one update; every ``eval_every`` steps (and at the last) the
    validation MSE and tau, and ``best`` replaced when the ``select`` score is better."""
    update = compiled(model, s, "update")
    y = train.y.astype(np.float32)

    def fn(step: int, state: dict):
        idx = batch_indices(train.n, s.batch_size, seed, step)
        state, metrics = update(state, train.batch(idx), y[idx])
        done = step + 1
        if val is not None and (done % s.eval_every == 0 or done == s.steps):
            pred = predict(model, state["params"], val, s.eval_batch_size)
            mse, tau = mse_and_tau(pred, val.y)
            log[done] = {"val_mse": mse, "val_tau": tau}
            old = state["best"]
            if _score(s, mse, tau) < _score(s, float(old["val_mse"]), float(old["val_tau"])):
                best = {
                    "params": jax.tree.map(jnp.copy, state["params"]),
                    "val_mse": jnp.asarray(mse, jnp.float32),
                    "val_tau": jnp.asarray(tau, jnp.float32),
                    "step": jnp.asarray(done, jnp.int32),
                }
                state = {**state, "best": _committed(best)}
        return state, metrics, {"stage": "fit"}

    return fn


def fit(
    workdir: str | Path,
    model,
    settings: Settings,
    train: Inputs,
    val: Inputs | None,
    seed: int,
    *,
    progress: bool = True,
    desc: str = "",
    budget: int | None = None,
) -> Fit:
    """Trains ``model`` on ``train`` in ``workdir`` through the loop (resuming its latest
    checkpoint) for at most ``budget`` steps in this call, choosing the params by ``val``'s
    score (``settings.select``) when given.

    Raises:
      NonFiniteLossError: on a NaN/Inf loss (the loop names the checkpoint kept).
    """
    loop = loop_lib.Loop(
        workdir,
        init_state(model, settings, train, seed),
        total=settings.steps,
        log_every=settings.log_every,
        checkpoint_every=settings.checkpoint_every,
        progress=progress,
        desc=desc,
    )
    log: dict[int, dict] = {}
    start = loop.start
    try:
        state, finished = loop.run(
            _step_fn(model, settings, train, val, seed, log),
            stop_after=None if budget is None else start + budget,
            after_step=lambda done, _: log.pop(done, None),
        )
    finally:
        loop.mngr.close()
    best, taken = state["best"], int(state["step"]) - start
    if val is None or int(best["step"]) < 0:
        return Fit(state["params"], int(state["step"]), None, None, finished, taken)
    tau = float(best["val_tau"])
    return Fit(
        best["params"],
        int(best["step"]),
        float(best["val_mse"]),
        tau if np.isfinite(tau) else None,
        finished,
        taken,
    )
