"""Measurements of a population of networks: accuracy, ensembles, diversity, PCA, paths.

The functional interface is that of :mod:`uhn_jax.analysis`. Networks run under one jitted
function, ``network_batch`` networks on ``batch_size`` examples at a time, the last chunks
padded so each shape compiles once. Within a chunk the networks are vmapped on GPU and TPU and
looped over (``lax.map``) on CPU, where a vmapped conv becomes a grouped conv: about twice as
slow on a small MNIST CNN. The diversity measures (distances, entropy, PCA) are float64 NumPy.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import digamma

#: The outputs :func:`predictions` can return.
OUTPUTS = ("classes", "logits", "probs")


def as_weights(weights, name: str = "weights") -> np.ndarray:
    """``weights`` as a float32 ``[N, W]`` array (``N >= 1``), or a ``ValueError`` naming it."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty [N, W] array, got shape {w.shape}")
    return w


def check_data(x, y) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as arrays, checked: ``y`` integer ``[B]`` labels of the ``B`` examples ``x``."""
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
    if x.ndim < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"x must hold len(y) = {len(y)} > 0 examples, got shape {x.shape}")
    return x, y


@functools.lru_cache(maxsize=64)
def _network_fn(apply_fn: Callable, output: str, vectorize: bool) -> Callable:
    """The jitted ``(w [n, W], x [b, ...]) -> [n, b(, C)]`` for ``apply_fn`` (cached, so repeat
    calls with the same ``apply_fn`` reuse its compilations): a vmap or a ``lax.map``."""

    def one(w, x):
        logits = apply_fn(w, x)
        if output == "classes":
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.nn.softmax(logits.astype(jnp.float32), -1) if output == "probs" else logits

    if vectorize:
        return jax.jit(jax.vmap(one, in_axes=(0, None)))
    return jax.jit(lambda w, x: jax.lax.map(lambda wi: one(wi, x), w))


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` padded along its first axis to ``size`` rows with copies of its last row."""
    return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


def predictions(
    apply_fn: Callable,
    weights,
    x,
    *,
    output: str = "classes",
    batch_size: int = 1000,
    network_batch: int = 16,
) -> np.ndarray:
    """Every network's outputs on ``x``.

    Compute the classes once and pass them to :func:`majority_vote_accuracy` for all sizes.

    Args:
      apply_fn: ``(w [W], x [b, ...]) -> logits [b, C]``.
      weights: ``[N, W]``.
      x: ``[B, ...]`` inputs.
      output: ``"classes"`` (argmax, int32 ``[N, B]``), ``"logits"`` or ``"probs"`` (softmax),
        ``[N, B, C]``.
      batch_size, network_batch: examples and networks per call; the last batch and chunk are
        padded, so there is one compilation. With vmap, memory grows with their product.

    Raises:
      ValueError: ``output`` unknown, ``weights`` not ``[N, W]``, or a batch size < 1.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if batch_size < 1 or network_batch < 1:
        raise ValueError(f"batch_size, network_batch must be >= 1: {batch_size}, {network_batch}")
    fn = _network_fn(apply_fn, output, jax.default_backend() != "cpu")
    w, x, chunks = as_weights(weights), np.asarray(x), []
    n, b = w.shape[0], x.shape[0]
    nb, bs = min(network_batch, n), min(batch_size, b)
    for start in range(0, n, nb):
        rows = slice(start, min(start + nb, n))
        w_chunk = jnp.asarray(pad_rows(w[rows], nb))
        outs = []
        for lo in range(0, b, bs):
            hi = min(lo + bs, b)
            out = np.asarray(fn(w_chunk, jnp.asarray(pad_rows(x[lo:hi], bs))))
            outs.append(out[:, : hi - lo])
        chunks.append(np.concatenate(outs, axis=1)[: rows.stop - rows.start])
    return np.concatenate(chunks)


def accuracies(
    apply_fn: Callable, weights, x, y, *, batch_size: int = 1000, network_batch: int = 16
) -> np.ndarray:
    """Test accuracy of each network: ``[N]`` float64, the fraction of ``x`` whose argmax logit
    is ``y`` (arguments as in :func:`predictions`; ``y`` integer ``[B]``)."""
    x, y = check_data(x, y)
    preds = predictions(apply_fn, weights, x, batch_size=batch_size, network_batch=network_batch)
    return (preds == y[None]).mean(axis=1, dtype=np.float64)


def majority_vote(preds, num_classes: int | None = None) -> np.ndarray:
    """The ensemble's class per example: the most frequent of ``preds [K, B]`` (ints); a tie
    goes to the lowest class id among the tied classes.

    Raises:
      ValueError: ``preds`` is not a non-empty 2-D array of non-negative integers.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.size == 0 or not np.issubdtype(preds.dtype, np.integer):
        raise ValueError(f"preds must be a non-empty [K, B] int array: {preds.dtype}{preds.shape}")
    if preds.min() < 0:
        raise ValueError("preds must hold class ids >= 0")
    b, c = preds.shape[1], max(num_classes or 0, int(preds.max()) + 1)
    flat = (np.arange(b)[None, :] * c + preds).ravel()
    counts = np.bincount(flat, minlength=b * c).reshape(b, c)
    return counts.argmax(axis=1)  # argmax takes the first maximum: the lowest tied class


def majority_vote_accuracy(
    preds,
    y,
    sizes: Sequence[int] = (1, 5, 10, 50, 100),
    *,
    repeats: int = 20,
    seed: int | np.random.Generator = 0,
) -> dict[int, tuple[float, float]]:
    """Accuracy of majority-vote ensembles of each size: ``{size: (mean, std)}`` over
    ``repeats`` ensembles of ``size`` rows of ``preds [N, B]`` (classes) drawn without
    replacement (``seed``: an int or a ``numpy.random.Generator``). Ties go to the lowest class
    id (:func:`majority_vote`). It scores a deep-ensemble baseline (a stack of independently
    trained networks' predictions) the same way.

    Raises:
      ValueError: a size is < 1 or > N (naming ``sizes``), ``repeats`` < 1, or bad shapes.
    """
    preds, y = np.asarray(preds), np.asarray(y)
    if preds.ndim != 2 or y.ndim != 1 or preds.shape[1] != y.shape[0]:
        raise ValueError(f"preds must be [N, B] and y [B], got {preds.shape} and {y.shape}")
    n = preds.shape[0]
    bad = [s for s in sizes if int(s) != s or not 1 <= s <= n]
    if bad or not len(sizes):
        raise ValueError(f"sizes must be non-empty integers in 1..N = 1..{n}, got {list(sizes)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    c = int(max(preds.max(), y.max())) + 1
    out = {}
    for size in map(int, sizes):
        draws = (preds[rng.choice(n, size, replace=False)] for _ in range(repeats))
        accs = [(majority_vote(p, c) == y).mean() for p in draws]
        out[size] = (float(np.mean(accs)), float(np.std(accs)))
    return out


def _centred64(weights, name: str = "weights", min_rows: int = 2) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < min_rows or w.shape[1] < 1:
        raise ValueError(f"{name} must be an [N, W] array with N >= {min_rows}, got {w.shape}")
    return w - w.mean(axis=0)


def pairwise_distances(weights) -> np.ndarray:
    """``[N, N]`` Euclidean distances between the rows of ``weights`` (float64), from the Gram
    matrix of the centred rows (``N x N`` memory, never ``N x N x W``)."""
    w = _centred64(weights)
    sq = np.einsum("ij,ij->i", w, w)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (w @ w.T)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


def mean_pairwise_distance(weights) -> float:
    """Mean Euclidean distance over all pairs ``i < j`` of the ``N >= 2`` rows of ``weights``."""
    d = pairwise_distances(weights)
    return float(d[np.triu_indices(d.shape[0], k=1)].mean())


def distance_ceiling(weights) -> float:
    """The largest mean pairwise distance ``N >= 2`` rows with the norms of ``weights``' rows
    can have: ``sqrt(2N / (N - 1) * mean_i ||w_i||^2)``.

    The mean distance over pairs is at most its root mean square (Jensen), which is
    ``sqrt(2N / (N - 1) * (mean_i ||w_i||^2 - ||mean_i w_i||^2))``; the ceiling drops the
    (non-negative) last term. Gauge-fixed weights (:func:`uhn_jax.hypernets.diverse.gauge_fix`)
    have every filter but the last layer's at a fixed norm, so their ceiling is nearly fixed too.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or (n := w.shape[0]) < 2:
        raise ValueError(f"distance_ceiling needs at least two rows, got shape {w.shape}")
    return float(np.sqrt(2 * n / (n - 1) * (w**2).sum(axis=1).mean()))


def nearest_neighbour_distances(weights) -> np.ndarray:
    """``[N]``: each row's Euclidean distance to its nearest other row (``N >= 2``).

    The neighbour is found on the Gram-matrix distances, then the distance to it is recomputed
    from the two rows' difference (identical rows give exactly 0).
    """
    d = pairwise_distances(weights)
    np.fill_diagonal(d, np.inf)
    w = np.asarray(weights, dtype=np.float64)
    return np.linalg.norm(w - w[d.argmin(axis=1)], axis=1)


def kl_entropy(weights, dim: int) -> float:
    """Kozachenko–Leonenko entropy estimate of the rows of ``weights``, as Deutsch et al. use
    it: ``dim * mean_i log(eps_i) + digamma(N)``, ``eps_i`` the distance from row ``i`` to its
    nearest neighbour and ``dim`` the dimension of the generated manifold (the noise size).

    The constants (``-digamma(1)``, the unit ball's log-volume) are left out, as in the paper.
    Scaling the weights by ``s`` adds ``dim * log(s)``; two identical rows give ``-inf``.

    Raises:
      ValueError: ``N < 2`` or ``dim < 1``.
    """
    if np.ndim(weights) != 2 or (n := np.shape(weights)[0]) < 2:
        raise ValueError(
            f"kl_entropy needs at least two networks in weights (got shape "
            f"{np.shape(weights)}): a batch of one has no nearest neighbour"
        )
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer (the noise size), got {dim}")
    with np.errstate(divide="ignore"):
        log_eps = np.log(nearest_neighbour_distances(weights))
    return float(dim * log_eps.mean() + digamma(n))


def isotropic_baseline(
    apply_fn: Callable,
    w0,
    x,
    y,
    target_accuracy: float,
    *,
    n: int = 100,
    key: jax.Array,
    tol: float = 0.002,
    max_iter: int = 30,
    batch_size: int = 1000,
) -> tuple[float, np.ndarray]:
    """The "noise ball around one trained network" baseline: ``(sigma, weights [n, W])``, ``n``
    samples ``w0 + sigma * N(0, I)`` whose mean accuracy on ``x, y`` is ``target_accuracy`` (the
    generated networks' mean accuracy, at most ``w0``'s own) within ``tol``.

    One draw of noise (``key``) is fixed, so the mean accuracy is a deterministic function of
    ``sigma``; ``sigma`` is bracketed (factors of 4 from the RMS of ``w0``), then bisected on
    ``log sigma``. If ``max_iter`` bisections do not reach ``tol`` (accuracy is a step function
    of ``sigma``), the closest ``sigma`` is returned with a warning.

    Raises:
      ValueError: bad ``w0``, ``n``, ``tol``; ``target_accuracy`` above ``w0``'s accuracy or
        below what any noise scale reaches.
    """
    w0 = np.asarray(w0, dtype=np.float32)
    if w0.ndim != 1 or w0.size == 0:
        raise ValueError(f"w0 must be a non-empty [W] vector, got shape {w0.shape}")
    if n < 1 or tol <= 0 or max_iter < 1:
        raise ValueError(f"need n >= 1, tol > 0, max_iter >= 1, got {n}, {tol}, {max_iter}")
    x, y = check_data(x, y)
    clean = float(accuracies(apply_fn, w0[None], x, y, batch_size=batch_size)[0])
    if not 0.0 <= target_accuracy <= min(1.0, clean + tol):
        raise ValueError(f"target_accuracy must be in [0, {clean:.4f} (w0's)]: {target_accuracy}")
    noise = np.asarray(jax.random.normal(key, (n, w0.size), jnp.float32))

    def mean_acc(sigma: float) -> float:
        w = w0 + np.float32(sigma) * noise
        return float(accuracies(apply_fn, w, x, y, batch_size=batch_size).mean())

    rms = float(np.sqrt(np.mean(w0.astype(np.float64) ** 2))) or 1.0
    sigma, acc = _log_bisection(mean_acc, target_accuracy, rms, tol, max_iter)
    if abs(acc - target_accuracy) > tol:
        warnings.warn(
            f"isotropic_baseline: closest mean accuracy {acc:.4f} (sigma={sigma:.4g}) is not "
            f"within tol={tol} of target_accuracy={target_accuracy}",
            stacklevel=2,
        )
    return sigma, w0 + np.float32(sigma) * noise


def _log_bisection(
    f: Callable[[float], float], target: float, start: float, tol: float, max_iter: int
) -> tuple[float, float]:
    """``(sigma, f(sigma))`` closest to ``target`` among the ``sigma`` tried, for ``f`` falling
    in ``sigma``: factors of 4 from ``start`` bracket ``target``, then ``log sigma`` is bisected."""
    tried: dict[float, float] = {}

    def value(sigma: float) -> float:
        tried[sigma] = f(sigma)
        return tried[sigma]

    hi = start
    while value(hi) > target:
        if hi > start * 4.0**40:
            raise ValueError(f"target_accuracy {target} is below any noise's ({tried[hi]:.3f})")
        hi *= 4.0
    lo = hi / 4.0
    while lo > 1e-30 and value(lo) < target - tol:
        lo /= 4.0
    for _ in range(max_iter):
        if min(abs(v - target) for v in tried.values()) <= tol:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if value(mid) > target else (lo, mid)
    best = min(tried, key=lambda s: abs(tried[s] - target))
    return best, tried[best]


def principal_components(weights, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projections of the rows of ``weights`` on their first ``k`` principal components.

    The data are centred; with ``W > N`` the ``N x N`` Gram matrix is diagonalised instead of
    the ``N x W`` data (the same components, cheaper). Each component's sign is fixed so its
    largest-magnitude projection is positive; components beyond the data's rank are zeros.

    Returns:
      ``(projections [N, k], explained [k])``, ``explained`` the fraction of the total variance
      along each component (zeros when all rows are equal).
    """
    w = _centred64(weights)
    if w.shape[1] > w.shape[0]:
        evals, evecs = np.linalg.eigh(w @ w.T)
        order = np.argsort(evals)[::-1]
        s = np.sqrt(np.maximum(evals[order], 0.0))
        proj = evecs[:, order] * s
    else:
        u, s, _ = np.linalg.svd(w, full_matrices=False)
        proj = u * s
    proj, var = proj[:, :k], s[:k] ** 2
    if proj.shape[1] < k:
        proj = np.pad(proj, ((0, 0), (0, k - proj.shape[1])))
        var = np.pad(var, (0, k - var.size))
    signs = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(k)])
    proj = proj * np.where(signs == 0, 1.0, signs)
    total = float((w**2).sum())
    return proj, (var / total if total > 0 else np.zeros(k))


def pca_2d(weights, *, slices: Mapping[str, slice] | None = None) -> dict[str, np.ndarray]:
    """2-D PCA projections of the population: ``{"all": [N, 2]}`` plus, with ``slices`` (e.g.
    ``{"conv1": slice(0, 832), ...}``), one ``[N, 2]`` per named part of the weight vector.

    Raises:
      ValueError: ``N < 2``, a slice not contiguous, empty or outside ``[0, W)``, or named
        ``"all"``.
    """
    w = as_weights(weights)
    out = {"all": principal_components(w)[0]}
    for name, sl in (slices or {}).items():
        if name == "all":
            raise ValueError("slices may not name a part 'all' (that is the whole vector)")
        ok = isinstance(sl, slice) and sl.step in (None, 1)
        if not ok or len(range(w.shape[1])[sl]) == 0 or (sl.stop or 0) > w.shape[1]:
            raise ValueError(f"slices[{name!r}] must be a contiguous part of [0, {w.shape[1]})")
        out[name] = principal_components(w[:, sl])[0]
    return out


def interpolation_paths(
    generate_fn: Callable,
    apply_fn: Callable,
    z1,
    z2,
    x,
    y,
    *,
    steps: int = 21,
    batch_size: int = 1000,
) -> dict[str, np.ndarray | float]:
    """Accuracy along two paths between the networks generated from ``z1`` and ``z2``:
    ``{"t": [steps], "interpolated": [steps], "direct": [steps], "distance": ||w2 - w1||}``.

    ``interpolated``: the networks ``generate_fn((1 - t) z1 + t z2)``; ``direct``: the line
    ``(1 - t) w1 + t w2`` in weight space, ``w1, w2`` the first path's ends (``t = 0, 1`` give
    exactly ``z1, z2``). ``generate_fn`` must treat its rows independently.

    Raises:
      ValueError: ``z1``/``z2`` not equal-shape vectors, or ``steps < 2``.
    """
    z1, z2 = np.asarray(z1, np.float32), np.asarray(z2, np.float32)
    if z1.ndim != 1 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must be [d] vectors of one size, got {z1.shape}, {z2.shape}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    z = (1 - t)[:, None] * z1 + t[:, None] * z2
    w_path = as_weights(np.asarray(generate_fn(jnp.asarray(z))), "generate_fn(z)")
    w1, w2 = w_path[0], w_path[-1]
    w_line = (1 - t)[:, None] * w1 + t[:, None] * w2
    acc = accuracies(apply_fn, np.concatenate([w_path, w_line]), x, y, batch_size=batch_size)
    return {
        "t": t.astype(np.float64),
        "interpolated": acc[:steps],
        "direct": acc[steps:],
        "distance": float(np.linalg.norm(w2.astype(np.float64) - w1)),
    }
