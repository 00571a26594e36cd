"""uhn_jax.analysis on a population of tiny linear classifiers of Gaussian blobs (no training)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax import analysis
from uhn_jax.analysis import figures, populations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
D, C = 4, 3  # input size, classes


def apply_fn(w, x):
    """A linear classifier: ``x @ K + b`` with ``w = [K.ravel(), b]``."""
    return x @ w[: D * C].reshape(D, C) + w[D * C :]


def blobs(sep: float, n_per_class: int = 100, seed: int = 0):
    """``C`` balanced Gaussian blobs (unit variance) at ``sep * e_c``, and the nearest-mean
    classifier's weight vector for them."""
    rng = np.random.default_rng(seed)
    means = sep * np.eye(C, D)
    y = np.repeat(np.arange(C), n_per_class)
    x = (means[y] + rng.normal(size=(len(y), D))).astype(np.float32)
    w = np.concatenate([means.T.ravel(), -0.5 * (means**2).sum(1)]).astype(np.float32)
    return x, y, w


def test_accuracies_of_a_perfect_a_constant_and_an_inverted_classifier():
    x, y, w = blobs(sep=10.0)
    weights = np.stack([w, np.zeros_like(w), -w])
    # Padded batches (300 = 42 * 7 + 6) and a padded network chunk (3 = 2 + 1).
    acc = analysis.accuracies(apply_fn, weights, x, y, batch_size=7, network_batch=2)
    np.testing.assert_allclose(acc, [1.0, 1 / 3, 0.0])  # zeros: every argmax is class 0


def test_predictions_match_the_direct_computation():
    x, _, _ = blobs(sep=2.0, n_per_class=10)
    weights = np.random.default_rng(1).normal(size=(5, D * C + C)).astype(np.float32)
    logits = analysis.predictions(
        apply_fn, weights, x, output="logits", batch_size=8, network_batch=3
    )
    expected = np.stack([np.asarray(apply_fn(w, x)) for w in weights])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    classes = analysis.predictions(apply_fn, weights, x, batch_size=8, network_batch=3)
    np.testing.assert_array_equal(classes, expected.argmax(-1))
    probs = analysis.predictions(apply_fn, weights, x, output="probs")
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="output"):
        analysis.predictions(apply_fn, weights, x, output="scores")
    with pytest.raises(ValueError, match="weights"):
        analysis.predictions(apply_fn, weights[0], x)


@pytest.mark.parametrize("vectorize", [True, False])  # vmap (GPU/TPU) and lax.map (CPU)
def test_both_ways_of_running_a_chunk_of_networks_agree(vectorize):
    x, _, _ = blobs(sep=2.0, n_per_class=4)
    weights = np.random.default_rng(9).normal(size=(3, D * C + C)).astype(np.float32)
    out = populations._network_fn(apply_fn, "logits", vectorize)(weights, x)
    expected = np.stack([np.asarray(apply_fn(w, x)) for w in weights])
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_majority_vote_of_three_networks_two_of_which_are_right():
    y = np.arange(12) % 3
    preds = np.stack([y, y, y]).copy()
    for i in range(len(y)):  # a different network is wrong on each example
        preds[i % 3, i] = (y[i] + 1) % 3
    assert (preds == y).mean(axis=0).min() == pytest.approx(2 / 3)
    result = analysis.majority_vote_accuracy(preds, y, sizes=(1, 3), repeats=5, seed=0)
    assert result[3] == (1.0, 0.0)
    assert result[1][0] == pytest.approx(2 / 3)
    for bad in ((4,), (0,), (1, 2, 3, 10)):
        with pytest.raises(ValueError, match="sizes"):
            analysis.majority_vote_accuracy(preds, y, sizes=bad)


def test_majority_vote_breaks_ties_by_the_lowest_class():
    np.testing.assert_array_equal(analysis.majority_vote([[2, 0, 1], [1, 2, 1]]), [1, 0, 1])


def test_distances_match_brute_force():
    rng = np.random.default_rng(2)
    w = 1000.0 + rng.normal(size=(30, 50))  # a large common offset: the Gram form centres
    brute = np.linalg.norm(w[:, None] - w[None], axis=-1)
    iu = np.triu_indices(30, k=1)
    assert analysis.mean_pairwise_distance(w) == pytest.approx(brute[iu].mean(), rel=1e-9)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(analysis.nearest_neighbour_distances(w), brute.min(1), rtol=1e-9)
    with pytest.raises(ValueError, match="weights"):
        analysis.mean_pairwise_distance(w[:1])


def test_distance_ceiling_bounds_the_mean_distance_and_is_reached_by_opposite_points():
    rng = np.random.default_rng(3)
    for offset in (0.0, 5.0):  # centred rows come close to it; an offset leaves a gap
        w = offset + rng.normal(size=(40, 20))
        assert analysis.mean_pairwise_distance(w) <= analysis.distance_ceiling(w)
    # Two opposite points: distance 2r, ceiling sqrt(2 * 2 / 1 * r^2) = 2r.
    pair = np.array([[3.0, 4.0], [-3.0, -4.0]])
    assert analysis.distance_ceiling(pair) == pytest.approx(10.0)
    assert analysis.mean_pairwise_distance(pair) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="two rows"):
        analysis.distance_ceiling(pair[:1])


def test_kl_entropy_scales_with_dim_log_2_and_needs_two_networks():
    w = np.random.default_rng(3).normal(size=(40, 20))
    h = analysis.kl_entropy(w, dim=5)
    assert analysis.kl_entropy(2 * w, dim=5) - h == pytest.approx(5 * np.log(2), rel=1e-9)
    nn = analysis.nearest_neighbour_distances(w)
    assert h == pytest.approx(5 * np.log(nn).mean() + float(jax.scipy.special.digamma(40.0)))
    assert analysis.kl_entropy(np.concatenate([w, w[:1]]), dim=5) == -np.inf
    with pytest.raises(ValueError, match="at least two networks"):
        analysis.kl_entropy(w[:1], dim=5)
    with pytest.raises(ValueError, match="dim"):
        analysis.kl_entropy(w, dim=0)


def test_isotropic_baseline_matches_the_target_accuracy():
    x, y, w0 = blobs(sep=4.0)
    clean = analysis.accuracies(apply_fn, w0[None], x, y)[0]
    target = (1 / 3 + clean) / 2
    sigma, samples = analysis.isotropic_baseline(
        apply_fn, w0, x, y, target, n=20, key=jax.random.key(0), tol=0.005
    )
    assert samples.shape == (20, w0.size) and sigma > 0
    mean_acc = analysis.accuracies(apply_fn, samples, x, y).mean()
    assert abs(mean_acc - target) <= 0.005
    np.testing.assert_allclose((samples - w0).std(), sigma, rtol=0.2)
    for unreachable in (clean + 0.1, 0.0):  # above w0's accuracy; below chance
        with pytest.raises(ValueError, match="target_accuracy"):
            analysis.isotropic_baseline(apply_fn, w0, x, y, unreachable, key=jax.random.key(0))


@pytest.mark.parametrize("n, width", [(20, 50), (40, 5)])  # the Gram path and the SVD path
def test_pca_of_points_along_a_line_has_one_dominant_component(n, width):
    rng = np.random.default_rng(4)
    direction = rng.normal(size=width)
    w = rng.normal(size=(n, 1)) * direction + 1e-3 * rng.normal(size=(n, width)) + 7.0
    proj, explained = analysis.principal_components(w)
    assert explained[0] > 0.999 and explained[1] < 1e-3
    along = (w - w.mean(0)) @ direction / np.linalg.norm(direction)
    np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(along), rtol=1e-3, atol=1e-3)
    out = analysis.pca_2d(w, slices={"head": slice(0, 3), "tail": slice(3, width)})
    assert set(out) == {"all", "head", "tail"}
    assert all(p.shape == (n, 2) for p in out.values())
    with pytest.raises(ValueError, match="slices"):
        analysis.pca_2d(w, slices={"bad": slice(0, width + 1)})


def test_interpolation_paths_endpoints_and_a_linear_generator():
    x, y, w = blobs(sep=3.0)
    d = 3
    a = jnp.asarray(np.random.default_rng(5).normal(size=(d, w.size)), jnp.float32)

    def generate_fn(z):
        return z @ a + w

    z1, z2 = np.array([0.1, -0.2, 0.3]), np.array([-1.0, 0.8, 0.5])
    paths = analysis.interpolation_paths(generate_fn, apply_fn, z1, z2, x, y, steps=9)
    assert paths["t"][0] == 0.0 and paths["t"][-1] == 1.0 and len(paths["t"]) == 9
    ends = analysis.accuracies(apply_fn, generate_fn(jnp.asarray(np.stack([z1, z2]))), x, y)
    np.testing.assert_allclose(paths["interpolated"][[0, -1]], ends)
    np.testing.assert_allclose(paths["direct"][[0, -1]], ends)
    # A linear generator maps the segment between z1 and z2 onto the segment between w1 and w2
    # (equal up to float rounding, which may move an example on a decision boundary).
    np.testing.assert_allclose(paths["interpolated"], paths["direct"], atol=1.01 / len(y))
    assert paths["distance"] > 0


def test_fgsm_success_starts_at_zero_and_grows():
    x, y, w = blobs(sep=3.0)
    ensemble = w + 0.3 * np.random.default_rng(6).normal(size=(5, w.size)).astype(np.float32)
    eps = np.linspace(0.0, 3.0, 7)
    result = analysis.fgsm_success(apply_fn, w, ensemble, x, y, eps, key=jax.random.key(1))
    assert result["kept"] == int((analysis.predictions(apply_fn, w[None], x)[0] == y).sum())
    assert result["single"][0] == 0.0
    assert np.all(np.diff(result["single"]) >= 0)  # per example monotone for a linear model
    assert result["single"][-1] > 0.5
    for name in ("ensemble", "single_target", "ensemble_target"):
        assert result[name].shape == eps.shape
        assert np.all((0 <= result[name]) & (result[name] <= 1))
    half = analysis.fgsm_success(
        apply_fn, w, ensemble, x, y, eps / 2, key=jax.random.key(1), pixel_range=2.0
    )
    np.testing.assert_allclose(half["single"], result["single"])
    # 100x the weights: the same classifier, but the target probabilities underflow float32;
    # the log-probability's gradient still points the attack.
    confident = analysis.fgsm_success(
        apply_fn, 100 * w, 100 * ensemble, x, y, eps, key=jax.random.key(1)
    )
    assert confident["kept"] == result["kept"] and confident["single"][-1] > 0.5
    with pytest.raises(ValueError, match="eps_values"):
        analysis.fgsm_success(apply_fn, w, ensemble, x, y, [-0.1], key=jax.random.key(1))


def test_calibration_of_confident_uniform_and_hand_computed_predictors():
    y = np.array([0, 1, 2, 1])
    confident = analysis.calibration(np.eye(3)[y], y)
    assert confident["ece"] == 0.0 and confident["nll"] == pytest.approx(0.0, abs=1e-12)
    assert confident["accuracy"] == 1.0
    uniform = analysis.calibration(np.full((4, 4), 0.25), y)
    assert uniform["nll"] == pytest.approx(np.log(4))
    assert uniform["ece"] == pytest.approx(abs(0.25 - 0.25))  # argmax 0: one of four right
    # Bins (0.7, 0.8] and (0.5, 0.6]: 0.5 * |1 - 0.8| + 0.5 * |0 - 0.6|.
    hand = analysis.calibration(np.array([[0.8, 0.2], [0.6, 0.4]]), np.array([0, 1]), bins=10)
    assert hand["ece"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="probs"):
        analysis.calibration(np.array([[3.0, -1.0]]), np.array([0]))


def test_ensemble_probs_is_the_mean_softmax():
    x, _, _ = blobs(sep=2.0, n_per_class=5)
    weights = np.random.default_rng(7).normal(size=(5, D * C + C)).astype(np.float32)
    probs = analysis.ensemble_probs(apply_fn, weights, x, network_batch=2)
    expected = np.mean([np.asarray(jax.nn.softmax(apply_fn(w, x))) for w in weights], axis=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_every_figure_writes_a_png(tmp_path):
    x, y, w = blobs(sep=3.0, n_per_class=10)
    rng = np.random.default_rng(8)
    ens = {1: (0.9, 0.01), 5: (0.95, 0.005), 10: (0.96, 0.0)}
    probs = np.asarray(jax.nn.softmax(apply_fn(w, x)))
    paths = [
        figures.accuracy_histogram(rng.uniform(0.9, 1.0, 50), tmp_path / "h.png", reference=0.95),
        figures.ensemble_curve({"generated": ens, "deep ensemble": ens}, tmp_path / "e.png"),
        figures.pca_scatter(
            {"all": rng.normal(size=(20, 2)), "conv": rng.normal(size=(20, 2))},
            tmp_path / "p.png",
            color=rng.uniform(size=20),
        ),
        figures.path_plot(
            {"t": np.linspace(0, 1, 5), "interpolated": np.ones(5), "direct": np.ones(5) / 2},
            tmp_path / "sub" / "path.png",
        ),
        figures.fgsm_plot(
            {
                "eps": np.linspace(0, 0.3, 4),
                "single": np.linspace(0, 1, 4),
                "ensemble": np.linspace(0, 0.5, 4),
                "kept": 30,
            },
            tmp_path / "f.png",
        ),
        figures.reliability_diagram({"one": probs, "copy": probs}, y, tmp_path / "r.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="results"):
        figures.ensemble_curve({}, tmp_path / "x.png")


def test_populations_module_validates_data():
    x, y, w = blobs(sep=3.0, n_per_class=2)
    with pytest.raises(ValueError, match="y"):
        populations.accuracies(apply_fn, w[None], x, y.astype(np.float32))
    with pytest.raises(ValueError, match="x"):
        populations.accuracies(apply_fn, w[None], x[:-1], y)
