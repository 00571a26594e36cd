"""Deutsch et al.'s noise-input hypernetwork: target network, generator sizes, gauge fixing,
the entropy estimate, the batched target, bad input, and the kind in the one training loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from uhn_jax import analysis
from uhn_jax import config as config_lib
from uhn_jax.hypernets import diverse as D
from uhn_jax.hypernets import diverse_kind
from uhn_jax.models.ha_cnn import HaCNN
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks, train

DEUTSCH = HaCNN(channels=32, channels_2=16, kernel_size=5, hidden=(8,))


def _sizes(params):
    return [sum(int(x.size) for x in jax.tree.leaves(params[k])) for k in sorted(params)]


def test_target_network_has_the_papers_20018_weights():
    params = jax.eval_shape(DEUTSCH.init, jax.random.key(0))
    assert _sizes(params) == [832, 12816, 6280, 90]
    layout = D.filter_layout(params)
    assert [(f.count, f.size) for f in layout] == [(32, 26), (16, 801), (8, 785), (1, 90)]


def test_generator_part_counts_match_the_papers_table():
    exp = config_lib.from_config_dict(load_config("mnist_diverse"))
    gen = diverse_kind.generator(DEUTSCH, exp.hypernet)
    z = jnp.zeros((4, exp.hypernet.noise_size))
    params = jax.eval_shape(gen.init, jax.random.key(0), z)["params"]
    assert D.part_counts(params) == {
        "extractor": 436_500,
        "layer_000": 3_240,
        "layer_001": 91_600,
        "layer_002": 90_000,
        "layer_003": 9_900,
        "batch_norm": 2 * (300 + 300 + 2 * 40 + 4 * 100 + 2 * 60),
    }


def _random_net(key, scale=1.0):
    params = DEUTSCH.init(key)
    return jax.tree.map(lambda a: a * scale, params)


def test_gauge_fix_keeps_the_function_and_fixes_the_gauge():
    params = _random_net(jax.random.key(1), scale=3.0)
    x = jax.random.normal(jax.random.key(2), (8, 28, 28))
    fixed = D.gauge_fix(params)
    p_orig = jax.nn.softmax(DEUTSCH.apply(params, x))
    p_fixed = jax.nn.softmax(DEUTSCH.apply(fixed, x))
    np.testing.assert_allclose(p_fixed, p_orig, atol=1e-5)
    for name in sorted(fixed)[:-1]:
        k, b = fixed[name]["kernel"], fixed[name]["bias"]
        sq = (k.reshape(-1, k.shape[-1]) ** 2).sum(0) + b**2
        np.testing.assert_allclose(np.sqrt(sq / (k[..., 0].size + 1)), 1.0, rtol=1e-4)
    assert abs(float(fixed["layer_003"]["bias"].mean())) < 1e-6
    # Rescaling a filter (and unscaling the next layer) lands on the same representative.
    moved = jax.tree.map(lambda a: a, params)
    moved["layer_000"] = {k: v * 5.0 for k, v in params["layer_000"].items()}
    moved["layer_001"] = dict(params["layer_001"], kernel=params["layer_001"]["kernel"] / 5.0)
    for a, b in zip(jax.tree.leaves(D.gauge_fix(moved)), jax.tree.leaves(fixed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gauge_fixed_networks_lie_on_a_fixed_norm_shell_which_caps_their_distances():
    # Every filter but the last layer's has squared norm fan_in + 1 after the gauge fix, so
    # the first three layers of any network have squared norm 832 + 12,816 + 6,280 = 19,928:
    # mean pairwise distances of gauge-fixed populations cannot pass ~sqrt(2 * 19,928) ≈ 199.6
    # plus what the 90 last-layer numbers add (docs/diverse.md, "Diversity").
    nets = [D.gauge_fix(_random_net(jax.random.key(i), scale=s)) for i, s in enumerate((0.1, 1, 9))]
    flat = np.stack([np.asarray(D.flatten(n), np.float64) for n in nets])
    shell = 832 + 12_816 + 6_280
    np.testing.assert_allclose((flat[:, :shell] ** 2).sum(1), shell, rtol=1e-4)
    last = (flat[:, shell:] ** 2).sum(1).mean()
    ceiling = math.sqrt(2 * 3 / 2 * (shell + last))
    assert analysis.distance_ceiling(flat) == pytest.approx(ceiling, rel=1e-6)
    assert analysis.mean_pairwise_distance(flat) <= ceiling


def test_kl_entropy_scales_with_the_log_of_the_spread_and_needs_two_rows():
    w = jax.random.normal(jax.random.key(3), (16, 50))
    h1, h2 = D.kl_entropy(w, 300), D.kl_entropy(2.0 * w, 300)
    np.testing.assert_allclose(float(h2 - h1), 300 * math.log(2.0), rtol=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        D.kl_entropy(w[:1], 300)


def test_apply_many_matches_each_network_on_its_own_images():
    params = jax.vmap(DEUTSCH.init)(jax.random.split(jax.random.key(4), 3))
    x = jax.random.normal(jax.random.key(5), (3, 4, 28, 28))
    ref = jnp.stack(
        [DEUTSCH.apply(jax.tree.map(lambda a, i=i: a[i], params), x[i]) for i in range(3)]
    )
    np.testing.assert_allclose(DEUTSCH.apply_many(params, x), ref, atol=1e-5)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("diversity_weight", -1.0, "hypernet.diversity_weight"),
        ("noise_batch", 1, "hypernet.noise_batch"),
        ("noise_size", 0, "hypernet.noise_size"),
    ],
)
def test_bad_hypernet_fields_are_named(field, value, match):
    cfg = load_config("mnist_diverse")
    cfg.hypernet[field] = value
    with pytest.raises(ValueError, match=match):
        config_lib.from_config_dict(cfg)


def test_batch_must_split_evenly_over_the_generated_networks():
    cfg = load_config("mnist_diverse")
    cfg.train.batch_size = 100
    with pytest.raises(ValueError, match="multiple of hypernet.noise_batch"):
        config_lib.from_config_dict(cfg)


def _digits_exp(**train):
    cfg = load_config("mnist_diverse", "1e-3")
    cfg.data.name = "digits"
    cfg.model.widths = (4, 4)
    cfg.model.kernel_size = 3
    cfg.hypernet.noise_size = 8
    cfg.hypernet.noise_batch = 4
    cfg.hypernet.extractor_sizes = (16,)
    cfg.hypernet.code_size = 3
    cfg.hypernet.filter_hidden = (8, 8, 8, 8)
    cfg.hypernet.filter_depth = 1
    cfg.hypernet.reference_batch = 16
    cfg.train.batch_size = 16
    cfg.train.steps = 3
    cfg.train.log_every = 1
    cfg.train.eval_batch_size = 128
    for k, v in train.items():
        cfg.train[k] = v
    return config_lib.from_config_dict(cfg)


def test_a_model_without_the_scale_symmetry_is_refused():
    exp = _digits_exp()
    cfg = exp.to_dict()
    cfg["model"]["family"] = "mlp"
    cfg["model"]["widths"] = (8,)
    exp = config_lib.from_config_dict(cfg)
    setup, _ = setup_lib.make_setup(exp, tasks.load_dataset(exp))
    with pytest.raises(ValueError, match="gauge_chain"):
        setup.kind.init(setup, jax.random.key(0))


def test_the_kind_trains_in_the_one_loop_and_samples_distinct_networks(tmp_path):
    exp = _digits_exp()
    results = train.run(exp, tmp_path, progress=False)
    assert results["mode"] == "diverse" and results["generator_parts"]["extractor"] > 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"entropy"' in lines[0]
    setup, _ = setup_lib.make_setup(exp, tasks.load_dataset(exp))
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    z = diverse_kind.noise(jax.random.key(7), 5, exp.hypernet.noise_size)
    w = diverse_kind.sample(setup, state["params"], state["constants"], z)
    assert w.shape == (5, setup.layout.size)
    assert float(jnp.abs(w[0] - w[1]).max()) > 1e-3  # different noise, different networks
    # A network depends on its own noise only (reference-batch statistics).
    w0 = diverse_kind.sample(setup, state["params"], state["constants"], z[:1])
    np.testing.assert_allclose(w0[0], w[0], atol=1e-5)


def test_deep_ensemble_and_population_report(tmp_path):
    from uhn_jax.analysis import report

    diverse = _digits_exp()
    train.run(diverse, tmp_path / "diverse", progress=False)
    cfg = diverse.to_dict()
    cfg["mode"] = "ensemble"
    cfg["hypernet"]["ensemble_size"] = 4
    ensemble = config_lib.from_config_dict(cfg)
    results = train.run(ensemble, tmp_path / "ensemble", progress=False)
    assert results["num_direct_params"] == 4 * results["num_target_params"]
    out = report.analyze(
        tmp_path / "diverse",
        baseline=tmp_path / "ensemble",
        networks=12,
        sizes=(1, 5, 10),
        test_images=100,
        fgsm_images=40,
    )
    assert out["networks"] == 12 and len(out["accuracy"]["all"]) == 12
    assert set(out["ensembles"]) == {"1", "5", "10"}
    assert set(out["baseline"]["ensembles"]) == {"1"}  # 4 members: sizes 5 and 10 left out
    assert out["diversity"]["mean_pairwise_distance"] > 0
    assert "isotropic_baseline" in out and len(out["paths"]["t"]) > 2
    assert out["fgsm"]["single"][0] == 0.0
    names = {p.name for p in (tmp_path / "diverse" / "analysis").iterdir()}
    assert {"report.json", "accuracy_histogram.png", "ensembles.png", "pca.png"} <= names
    assert {"paths.png", "fgsm.png"} <= names
    # the public pieces: the same population (same seed), its diversity as reported
    *_, weights, apply_fn, like = report.population(tmp_path / "diverse", 12)
    assert weights.shape == (12, sum(a.size for a in jax.tree.leaves(like)))
    again = report.diversity(weights, diverse.hypernet.noise_size)
    assert again["mean_pairwise_distance"] == pytest.approx(
        out["diversity"]["mean_pairwise_distance"], rel=1e-6
    )
    _, _, _, _, members, _, _ = report.population(tmp_path / "ensemble")
    assert members.shape[0] == 4
