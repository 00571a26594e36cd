"""IGPG's trainings, each through the one loop (:class:`uhn_jax.training.loop.Loop`) in its
own workdir, so a killed run resumes from its checkpoint and a finished one restores its last
checkpoint and takes no step: the VQ-VAE (:func:`fit_vqvae`), the prior (:func:`fit_prior`)
and the fine-tuning of generated, random and transferred networks on a held-out pair
(:func:`finetune`, with the zoo's own population step: every start is a member of one
population trained side by side, scored at each ``k`` by the zoo's snapshot function).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uhn_jax.core import layouts
from uhn_jax.training import igpg_config as config_lib
from uhn_jax.training import igpg_pairs as pairs_lib
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import zoo as zoo_training
from uhn_jax.training.predictor import UNSCORED  # a validation score not computed yet
from uhn_jax.weightspace import conditioning, prior, vqvae


def optimizer(t: config_lib.Train) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay to 1 % of ``t.lr``, after clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, t.lr, max(t.warmup_steps, 1), max(t.steps, t.warmup_steps + 1), t.lr * 0.01
    )
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip), optax.adamw(schedule, weight_decay=t.weight_decay)
    )


def run_loop(
    workdir: Path, state: dict, step, data, seed: int, t: config_lib.Train, *, progress, desc,
    evaluate=None,
) -> dict:  # fmt: skip
    """Runs ``step(state, data, key) -> (state, metrics)`` (jitted here, state donated) for
    ``t.steps`` steps through the loop in ``workdir``; returns the final state. With
    ``evaluate(done, state) -> (state, values to log)``, it runs after every step."""
    compiled = jax.jit(step, donate_argnums=0)
    key = jax.random.key(seed)
    logged: dict[int, dict] = {}

    def fn(i: int, s: dict):
        s, metrics = compiled(s, data, key)
        if evaluate is not None:
            s, values = evaluate(i + 1, s)
            if values:
                logged[i + 1] = values
        return s, metrics, {"stage": desc}

    loop = loop_lib.Loop(
        workdir,
        state,
        total=t.steps,
        log_every=t.log_every,
        checkpoint_every=t.checkpoint_every,
        progress=progress,
        desc=desc,
    )
    try:
        state, _ = loop.run(fn, after_step=lambda done, _: logged.pop(done, None))
    finally:
        loop.mngr.close()
    return state


def fit_vqvae(
    workdir: Path, spec: config_lib.Spec, w_by_layout: dict, *, progress: bool
) -> tuple[vqvae.Codec, dict[str, Any]]:
    """Trains (or restores) the VQ-VAE on the chunks of ``{layout: w[M, N]}``; returns the
    codec and its training-set figures (chunks, params, final loss parts, code usage)."""
    model = vqvae.VQVAE(spec.vqvae)
    t = spec.vqvae_train
    tx = optimizer(t)
    frames = {}
    if spec.vqvae.standardize:
        frames = {layout: vqvae.standard_frame(w) for layout, w in w_by_layout.items()}
    host = vqvae.training_data(w_by_layout, spec.vqvae, frames)
    data = jax.tree.map(jnp.asarray, host)
    state0 = vqvae.init_state(model, tx, host, spec.seed)
    step = functools.partial(vqvae.train_step, model, tx, t.batch_size)
    state = run_loop(workdir, state0, step, data, spec.seed, t, progress=progress, desc="vqvae")
    codec = vqvae.Codec(model, state["params"], state["codebook"]["embed"], frames)
    info = codebook_stats(codec, w_by_layout)
    info["params"] = int(sum(x.size for x in jax.tree.leaves(state["params"])))
    return codec, info


def codebook_stats(codec: vqvae.Codec, w_by_layout: dict) -> dict[str, Any]:
    """Over every training chunk: the reconstruction MSE of the framed real values (and
    their variance, the MSE of predicting 0), the codes' perplexity and the fraction of the
    codebook in use."""
    k = codec.settings.codebook_size
    counts, err, sq, total, n = np.zeros(k), 0.0, 0.0, 0.0, 0
    for layout, w in w_by_layout.items():
        cp = codec.plan(layout)
        codes = codec.encode(w, layout)
        counts += np.bincount(codes.ravel(), minlength=k)
        frame, valid = codec.frame(layout), cp.valid()
        x = frame.to_chunks(w, cp)
        x_hat = frame.to_chunks(codec.decode(codes, layout), cp)
        err += float((((x_hat - x) ** 2) * valid).sum())
        total += float((x * valid).sum())
        sq += float(((x**2) * valid).sum())
        n += int(valid.sum()) * len(w)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "chunks": int(counts.sum()),
        "recon_mse": err / n,
        "value_var": sq / n - (total / n) ** 2,
        "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
        "usage": float((p > 0).mean()),
    }


def sequences(
    codec: vqvae.Codec, pairs: list, cond: conditioning.Conditioner, w_by_pair: dict, length: int
) -> dict[str, Any]:
    """The prior's data (numpy): every network of ``pairs`` as codes padded to ``length``
    with its token mask, roles and conditions. ``w_by_pair[name]`` is ``(records, w[M, N])``.
    """
    rows = {"codes": [], "mask": [], "roles": [], "cond": []}
    s = codec.settings
    for p in pairs:
        records, w = w_by_pair[p.name]
        codes = codec.encode(w, p.layout)
        m, t = codes.shape
        pad = ((0, 0), (0, length - t))
        rows["codes"].append(np.pad(codes, pad))
        rows["mask"].append(np.pad(np.ones((m, t), bool), pad))
        roles = codec.plan(p.layout).roles(s.position_buckets)
        rows["roles"].append(
            {k: np.tile(np.pad(v, (0, length - t)), (m, 1)) for k, v in roles.items()}
        )
        classes = p.reference["data"]["num_classes"]
        rows["cond"] += [cond.condition(p.dataset, classes, p.architecture(r)) for r in records]
    return {
        "codes": np.concatenate(rows["codes"]).astype(np.int32),
        "mask": np.concatenate(rows["mask"]),
        "roles": {k: np.concatenate([r[k] for r in rows["roles"]]) for k in vqvae.ROLE_KEYS},
        "cond": conditioning.stack(rows["cond"]),
    }


def sequence_nll(model: prior.Prior, params, host: dict, batch: int = 8) -> np.ndarray:
    """The prior's mean per-token cross-entropy of each network of ``host``
    (:func:`sequences`), in batches of ``batch`` (the last padded: one program)."""
    fn = _nll_program(model)
    n = len(host["codes"])
    out = []
    for start in range(0, n, batch):
        idx = np.minimum(np.arange(start, start + batch), n - 1)
        out.append(np.asarray(fn(params, jax.tree.map(lambda a, idx=idx: a[idx], host))))
    return np.concatenate(out)[:n]


@functools.cache
def _nll_program(model: prior.Prior):
    return jax.jit(functools.partial(prior.sequence_nll, model))


def prior_settings(spec: config_lib.Spec, families: tuple[str, ...]) -> prior.Settings:
    """The prior's :class:`~uhn_jax.weightspace.prior.Settings` for this experiment."""
    v, p = spec.vqvae, spec.prior
    return prior.Settings(
        codebook_size=v.codebook_size,
        families=families,
        max_tokens=spec.select.max_tokens,
        max_layers=v.max_layers,
        position_buckets=v.position_buckets,
        dim=p.dim,
        heads=p.heads,
        layers=p.layers,
        mlp_ratio=p.mlp_ratio,
        dropout=p.dropout,
    )


def fit_prior(
    workdir: Path,
    spec: config_lib.Spec,
    settings: prior.Settings,
    host: dict,
    val: dict | None,
    *,
    progress: bool,
) -> tuple[prior.Prior, Any, dict[str, Any]]:
    """Trains (or restores) the prior on ``host`` (:func:`sequences`); returns the model, the
    params with the lowest validation NLL on ``val`` (scored every ``prior.eval_every``
    steps and at the last; the last params without ``val``) and that choice (``step``,
    ``val_nll``). The choice is part of the checkpointed state, so it survives a kill."""
    model = prior.Prior(settings)
    t = spec.prior_train
    tx = optimizer(t)
    params = prior.init_params(model, host, spec.seed)
    state0 = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    state0["best"] = {
        "params": jax.tree.map(jnp.copy, params),
        "nll": jnp.asarray(UNSCORED, jnp.float32),
        "step": jnp.asarray(-1, jnp.int32),
    }
    every = spec.prior.eval_every

    def evaluate(done: int, s: dict):
        if val is None or (done % every and done != t.steps):
            return s, None
        nll = float(sequence_nll(model, s["params"], val).mean())
        if nll < float(s["best"]["nll"]):
            copy = jax.tree.map(jnp.copy, s["params"])
            s = {**s, "best": {"params": copy, "nll": jnp.float32(nll), "step": jnp.asarray(done)}}
        return s, {"val_nll": nll}

    step = functools.partial(_prior_step, model, tx, t.batch_size)
    data = jax.tree.map(jnp.asarray, host)
    state = run_loop(
        workdir, state0, step, data, spec.seed, t, progress=progress, desc="prior",
        evaluate=evaluate,
    )  # fmt: skip
    if val is None:
        return model, state["params"], {"step": t.steps, "val_nll": None}
    chosen = {"step": int(state["best"]["step"]), "val_nll": float(state["best"]["nll"])}
    return model, state["best"]["params"], chosen


def _prior_step(model, tx, batch_size, state, data, key):
    """:func:`uhn_jax.weightspace.prior.train_step` carrying the state's ``best`` along."""
    best = state["best"]
    new, metrics = prior.train_step(model, tx, batch_size, state, data, key)
    return {**new, "best": best}, metrics


def finetune(
    workdir: Path,
    zdata: pairs_lib.ZooData,
    pair: pairs_lib.Pair,
    starts: np.ndarray,
    spec: config_lib.Spec,
    *,
    progress: bool,
) -> np.ndarray:
    """Test accuracies ``[M, len(finetune.steps)]`` of ``M`` networks of ``pair`` fine-tuned
    from flat ``starts [M, N]`` on the pair's training split, after each ``k`` of
    ``finetune.steps`` (``k = 0``: the starts themselves)."""
    f, ref = spec.finetune, pair.reference
    m = len(starts)
    trained = tuple(k for k in f.steps if k > 0)
    group = zdata.plans[ref["group"]]
    fields = {"lr": f.lr, "weight_decay": f.weight_decay, "seeds": range(spec.seed, spec.seed + m)}
    fields["batch_size"] = f.batch_size or group.batch_size
    if trained:
        fields["snapshot_steps"] = trained
    gs, plan, data = zdata.setup(ref, m, **fields)
    params = jax.vmap(lambda w: layouts.unflatten(w, pair.layout))(jnp.asarray(starts))
    out = np.zeros((m, len(f.steps)), np.float32)
    if 0 in f.steps:
        out[:, 0] = zdata.evaluate(ref, starts, pair.layout)
    if not trained:
        return out
    state = zoo_training.init_state(gs, plan)
    state = dict(
        state, params=jax.tree.map(lambda a, b: a.astype(b.dtype), params, state["params"])
    )
    loop = loop_lib.Loop(
        workdir,
        state,
        total=trained[-1],
        log_every=max(1, min(trained)),
        checkpoint_every=f.checkpoint_every,
        progress=progress,
        desc=f"finetune {pair.name}",
    )
    try:
        state, _ = loop.run(zoo_training.step_fn(gs, plan, data))
    finally:
        loop.mngr.close()
    out[:, len(f.steps) - len(trained) :] = np.asarray(state["snapshots"]["test_accuracy"])
    return out
