"""Robustness of networks and ensembles: FGSM transfer attacks and calibration.

:func:`fgsm_success` follows Deutsch et al. (2018), Fig. 8: fast-gradient-sign examples made
on one network, scored on that network and on a majority-vote ensemble of generated networks.
:func:`calibration` is the expected calibration error and negative log-likelihood of
predicted probabilities, e.g. those of :func:`ensemble_probs`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.analysis.populations import (
    as_weights,
    check_data,
    majority_vote,
    pad_rows,
    predictions,
)

#: Probabilities are clipped to this before the logarithm of the NLL (a confidently wrong
#: prediction costs -log(1e-12) ~ 27.6 instead of infinity).
MIN_PROB = 1e-12


@functools.lru_cache(maxsize=16)
def _target_grad_fn(apply_fn: Callable) -> Callable:
    """Jitted ``(x [b, ...], w [W], target [b]) -> d log p_target / d x`` for each example.

    The gradient of ``log p`` is that of ``p`` divided by ``p > 0``: the same sign, but it does
    not underflow to 0 where a confident network's target probability underflows float32.
    """

    def target_log_prob(x, w, target):
        log_probs = jax.nn.log_softmax(apply_fn(w, x).astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(log_probs, target[:, None], axis=1).sum()

    return jax.jit(jax.grad(target_log_prob))


def _target_grads(apply_fn, w, x, target, batch_size: int) -> np.ndarray:
    """Gradients of each example's target-class log-probability w.r.t. its input, in batches."""
    fn = _target_grad_fn(apply_fn)
    w = jnp.asarray(w)
    b = x.shape[0]
    bs = min(batch_size, b)
    out = []
    for lo in range(0, b, bs):
        hi = min(lo + bs, b)
        g = fn(jnp.asarray(pad_rows(x[lo:hi], bs)), w, jnp.asarray(pad_rows(target[lo:hi], bs)))
        out.append(np.asarray(g)[: hi - lo])
    return np.concatenate(out)


def _fgsm_inputs(w_single, w_ensemble, x, y, eps_values, pixel_range):
    """:func:`fgsm_success`'s arguments checked and as arrays (``x`` floating point)."""
    w_single = np.asarray(w_single, np.float32)
    if w_single.ndim != 1:
        raise ValueError(f"w_single must be one [W] weight vector, got shape {w_single.shape}")
    w_ens = as_weights(w_ensemble, "w_ensemble")
    x, y = check_data(x, y)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    eps = np.asarray(eps_values, np.float64)
    if eps.ndim != 1 or eps.size == 0 or (eps < 0).any():
        raise ValueError(f"eps_values must be a non-empty list of values >= 0, got {eps_values}")
    if pixel_range <= 0:
        raise ValueError(f"pixel_range must be > 0, got {pixel_range}")
    return w_single, w_ens, x, y, eps


def fgsm_success(
    apply_fn: Callable,
    w_single,
    w_ensemble,
    x,
    y,
    eps_values: Sequence[float],
    *,
    key: jax.Array,
    pixel_range: float = 1.0,
    clip: tuple[float, float] | None = None,
    batch_size: int = 1000,
    network_batch: int = 16,
) -> dict:
    """Success rate of targeted FGSM attacks on one network, transferred to an ensemble.

    The protocol of Deutsch et al. (2018), Fig. 8: only the images ``w_single`` classifies
    correctly are kept. Each gets a random target class other than its label, and the gradient
    ``g`` of ``w_single``'s softmax probability of that class w.r.t. the image (computed as the
    gradient of the log-probability: same sign, no underflow). For each ``eps``
    the adversarial image is ``x + eps * pixel_range * sign(g)``. An attack succeeds on a
    classifier when its prediction differs from the true label. The ensemble (majority vote of
    ``w_ensemble``, ties to the lowest class) is attacked with the single network's examples: a
    transfer attack, as in the paper.

    Images here are normalised, ``(raw - mean) / std``: pass ``pixel_range = 1 / std`` so that
    ``eps`` is a fraction of the raw ``[0, 1]`` pixel range, and (optionally) ``clip = ((0 -
    mean) / std, (1 - mean) / std)`` to keep adversarial images in the valid range.

    Args:
      apply_fn: ``(w [W], x [B, ...]) -> logits [B, C]``.
      w_single: ``[W]`` the attacked network.
      w_ensemble: ``[K, W]`` the ensemble's networks.
      x, y: images ``[B, ...]`` and integer labels ``[B]``.
      eps_values: attack strengths, ``>= 0``, e.g. ``np.linspace(0, 0.3, 16)``.
      key: JAX PRNG key for the target classes.
      pixel_range: the size of the raw pixel range in ``x``'s units.
      clip: optional ``(low, high)`` bounds for the adversarial images.
      batch_size, network_batch: as in :func:`~uhn_jax.analysis.populations.predictions`.

    Returns:
      ``{"eps": [E], "single": [E], "ensemble": [E], "single_target": [E],
      "ensemble_target": [E], "kept": int}``: success rates (``*_target``: the fraction
      classified as the attack's target class) over the ``kept`` images.

    Raises:
      ValueError: bad shapes, negative or empty ``eps_values``, ``pixel_range <= 0``, fewer
        than two classes, or no image classified correctly by ``w_single``.
    """
    w_single, w_ens, x, y, eps = _fgsm_inputs(w_single, w_ensemble, x, y, eps_values, pixel_range)
    run = functools.partial(predictions, apply_fn, batch_size=batch_size)
    num_classes = run(w_single[None], x[:1], output="logits").shape[-1]
    if num_classes < 2:
        raise ValueError(f"apply_fn must return logits of >= 2 classes, got {num_classes}")
    # Every image is attacked and scored (the kept ones are selected afterwards), so the eps = 0
    # pass runs exactly the computation that chose them: its success is exactly 0.
    keep = run(w_single[None], x)[0] == y
    if not keep.any():
        raise ValueError("w_single classifies none of x correctly: there is nothing to attack")
    shift = np.asarray(jax.random.randint(key, y.shape, 1, num_classes))
    target = ((y + shift) % num_classes).astype(np.int32)
    step = np.sign(_target_grads(apply_fn, w_single, x, target, batch_size))
    result = {k: [] for k in ("single", "ensemble", "single_target", "ensemble_target")}
    for e in eps:
        x_adv = x + (e * pixel_range) * step
        if clip is not None:
            x_adv = np.clip(x_adv, clip[0], clip[1])
        x_adv = x_adv.astype(x.dtype)
        single = run(w_single[None], x_adv)[0][keep]
        votes = majority_vote(run(w_ens, x_adv, network_batch=network_batch), num_classes)[keep]
        for name, pred in (("single", single), ("ensemble", votes)):
            result[name].append(float((pred != y[keep]).mean()))
            result[f"{name}_target"].append(float((pred == target[keep]).mean()))
    return {"eps": eps, **{k: np.array(v) for k, v in result.items()}, "kept": int(keep.sum())}


def ensemble_probs(
    apply_fn: Callable, weights, x, *, batch_size: int = 1000, network_batch: int = 16
) -> np.ndarray:
    """``[B, C]``: the mean of the ``N`` networks' softmax probabilities on ``x`` (accumulated
    one chunk of networks at a time, never ``[N, B, C]`` at once)."""
    w = as_weights(weights)
    nb = min(network_batch, w.shape[0])
    total = 0.0
    for start in range(0, w.shape[0], nb):
        chunk = w[start : start + nb]
        # The last chunk is padded: every call has the same shape, so one compilation.
        probs = predictions(
            apply_fn,
            pad_rows(chunk, nb),
            x,
            output="probs",
            batch_size=batch_size,
            network_batch=nb,
        )
        total = total + probs[: len(chunk)].astype(np.float64).sum(axis=0)
    return total / w.shape[0]


def calibration(probs, y, *, bins: int = 15) -> dict:
    """Expected calibration error, negative log-likelihood and accuracy of probabilities.

    The confidence of a prediction is its largest probability. Confidences fall into ``bins``
    equal-width bins ``(k / bins, (k + 1) / bins]`` (0 goes to the first); the ECE is the
    example-weighted mean over bins of ``|accuracy - mean confidence|``. The NLL is the mean of
    ``-log p[y]``, with ``p`` clipped to :data:`MIN_PROB`.

    Args:
      probs: ``[B, C]`` probabilities (rows sum to 1), e.g. :func:`ensemble_probs`.
      y: ``[B]`` integer labels in ``0..C-1``.
      bins: number of confidence bins.

    Returns:
      ``{"ece", "nll", "accuracy"}`` floats and, for a reliability diagram, ``"bin_edges"``
      ``[bins + 1]``, ``"bin_count"``, ``"bin_confidence"`` and ``"bin_accuracy"`` ``[bins]``
      (NaN in empty bins).

    Raises:
      ValueError: ``probs`` not ``[B, C]`` rows of probabilities, bad ``y``, or ``bins < 1``.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty [B, C] array, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs rows must be probabilities summing to 1 (softmax, not logits)")
    _, y = check_data(p, y)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y must hold labels in 0..{p.shape[1] - 1}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf, bin_acc = sum_conf / count, sum_acc / count
    nll = -np.log(np.maximum(p[np.arange(len(y)), y], MIN_PROB)).mean()
    return {
        "ece": float(np.abs(sum_acc - sum_conf).sum() / len(y)),
        "nll": float(nll),
        "accuracy": float(correct.mean()),
        "bin_edges": np.linspace(0.0, 1.0, bins + 1),
        "bin_count": count,
        "bin_confidence": bin_conf,
        "bin_accuracy": bin_acc,
    }
