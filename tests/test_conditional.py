"""Tests for the conditional hypernetwork (uhn_jax.hypernets.conditional)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uhn_jax.data import images
from uhn_jax.hypernets import conditional

# Layer 0 has in <= out, layers 1 and 2 in > out: both branches of the factored contraction.
SIZES = ((6, 12), (12, 4), (4, 3))
OPTIONS = {
    "per_layer": {},
    "shared": {"shared": True},
    "chunked": {"chunk_size": 20},
    "shared_chunked": {"shared": True, "chunk_size": 20},
}


def _net(**kw):
    return conditional.build(5, SIZES, hidden_sizes=(16, 16), **kw)


def _batch(b=7):
    c = jax.random.normal(jax.random.key(1), (b, 5))
    x = jax.random.normal(jax.random.key(2), (b, 6))
    return c, x


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_shapes_of_outputs_and_generated_layers(name):
    hn = _net(**OPTIONS[name])
    params = hn.init(jax.random.key(0))
    c, x = _batch()
    assert hn.apply(params, c, x).shape == (7, 3)
    assert hn.apply(params, c[0], x).shape == (7, 3)
    assert [g.shape for g in hn.generate(params, c)] == [(7, 84), (7, 52), (7, 15)]
    assert [g.shape for g in hn.generate(params, c[0])] == [(84,), (52,), (15,)]


def test_apply_generated_weights_matches_a_per_sample_loop():
    rng = np.random.default_rng(0)
    sizes = ((3, 4), (4, 2))
    gen = [rng.normal(size=(5, 3 * 4 + 4)), rng.normal(size=(5, 4 * 2 + 2))]
    x = rng.normal(size=(5, 3))
    y = conditional.apply_generated_weights(
        jnp.asarray(x), [jnp.asarray(g) for g in gen], sizes, "tanh"
    )
    for b in range(5):
        h = np.tanh(x[b] @ gen[0][b, :12].reshape(3, 4) + gen[0][b, 12:])
        out = h @ gen[1][b, :8].reshape(4, 2) + gen[1][b, 8:]  # no activation after the last
        np.testing.assert_allclose(y[b], out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["per_layer", "chunked"])
def test_shared_condition_equals_per_sample_weights_when_all_rows_are_equal(name):
    hn = _net(**OPTIONS[name])
    params = hn.init(jax.random.key(0))
    c, x = _batch()
    rows = jnp.broadcast_to(c[3], c.shape)
    per_sample = hn.apply(params, rows, x, method="vmap")
    np.testing.assert_allclose(hn.apply(params, c[3], x), per_sample, rtol=1e-5, atol=1e-6)
    shared = hn.apply(params, rows, x, method="shared")
    np.testing.assert_allclose(shared, per_sample, rtol=1e-5, atol=1e-6)
    # Distinct conditions give distinct networks: the shared path is not what vmap computes.
    assert not np.allclose(hn.apply(params, c, x), per_sample, atol=1e-3)


@pytest.mark.parametrize("name", ["per_layer", "shared"])
def test_factored_path_equals_vmap_path(name):
    hn = _net(**OPTIONS[name])
    params = hn.init(jax.random.key(0))
    # Train-like params: non-zero head biases and bias columns, so every term is checked.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
    c, x = _batch()
    vmap = hn.apply(params, c, x, method="vmap")
    factored = jax.jit(lambda p, c, x: hn.apply(p, c, x, method="factored"))(params, c, x)
    np.testing.assert_allclose(factored, vmap, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_gradients_reach_every_generator_parameter(name):
    hn = _net(**OPTIONS[name])
    params = hn.init(jax.random.key(0))
    c, x = _batch(16)
    grads = jax.grad(lambda p: jnp.sum(hn.apply(p, c, x) ** 2))(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) >= 6
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_hyperfan_in_init_gives_generated_weights_std_one_over_sqrt_fan_in(name):
    hn = conditional.build(
        6, ((16, 32), (32, 24), (24, 10)), hidden_sizes=(32, 32), **OPTIONS[name]
    )
    one_hot = jnp.eye(6)[:4]
    wide = 5.0 * jax.random.normal(jax.random.key(9), (4, 6))  # the init ignores the scale
    for seed in range(3):
        params = hn.init(jax.random.key(seed))
        for c in (one_hot, wide):
            for s in hn.weight_stats(params, c):
                ratio = s["weight_std"] / s["target_std"]
                assert 0.8 < ratio < 1.2, (seed, s)
                if name == "per_layer":
                    assert s["bias_std"] == 0.0  # zero-initialised bias columns


def test_shared_generator_distinguishes_layers_by_their_embedding():
    hn = conditional.build(4, ((8, 8), (8, 8), (8, 8)), hidden_sizes=(16,), shared=True)
    params = hn.init(jax.random.key(0))
    assert params["layer_embeddings"].shape == (3, 8)
    assert list(params["generators"]) == ["shared"]
    w = hn.generate(params, jnp.ones(4))
    assert not np.allclose(w[0], w[1], atol=1e-3) and not np.allclose(w[1], w[2], atol=1e-3)


def test_chunked_generator_concatenates_and_truncates_distinct_chunks():
    hn = conditional.build(4, ((8, 8), (8, 3)), hidden_sizes=(16,), chunk_size=16)
    params = hn.init(jax.random.key(0))
    # 72 values -> 5 chunks (80, truncated); 27 values -> 2 chunks (32, truncated).
    assert {k: v.shape for k, v in params["chunk_embeddings"].items()} == {
        "layer_000": (5, 8),
        "layer_001": (2, 8),
    }
    assert params["generators"]["layer_000"]["head"]["kernel"].shape == (16, 16)
    w = hn.generate(params, jnp.ones(4))
    assert [v.shape for v in w] == [(72,), (27,)]
    chunks = np.asarray(w[0][:64]).reshape(4, 16)
    assert not np.allclose(chunks[0], chunks[1], atol=1e-3)


def test_build_weight_generator_emits_one_layer_with_hyperfan_in_weights():
    gen = conditional.build_weight_generator(6, 20, 30, hidden_sizes=(64, 64))
    c = jax.random.normal(jax.random.key(1), (8, 6))
    variables = gen.init(jax.random.key(0), c)
    out = gen.apply(variables, c)
    assert out.shape == (8, 20 * 30 + 30)
    w, b = conditional.split_layer(out, 20, 30)
    assert 0.8 < float(jnp.std(w)) * np.sqrt(20) < 1.2
    assert float(jnp.abs(b).max()) == 0.0


BAD_BUILDS = [
    ({"target_layer_sizes": []}, "target_layer_sizes"),
    ({"target_layer_sizes": [(6, 0), (0, 3)]}, r"target_layer_sizes\[0\]"),
    ({"target_layer_sizes": [(6, -2)]}, r"target_layer_sizes\[0\]"),
    ({"target_layer_sizes": [(6, 12, 1)]}, r"target_layer_sizes\[0\]"),
    ({"target_layer_sizes": [(6, 12), (11, 3)]}, "do not chain: layer 0 outputs 12"),
    ({"input_size": 7}, "input_size=7"),
    ({"hidden_sizes": ()}, "hidden_sizes"),
    ({"hidden_sizes": (16, 0)}, "hidden_sizes"),
    ({"hidden_sizes": (16, 1)}, "last hidden width must be at least 2"),
    ({"activation": "swishy"}, "activation must be one of .* got 'swishy'"),
    ({"generator_activation": "nope"}, "generator_activation"),
    ({"conditioning_size": 0}, "conditioning_size"),
    ({"chunk_size": 0}, "chunk_size"),
]


@pytest.mark.parametrize("kwargs, match", BAD_BUILDS)
def test_bad_build_arguments_raise_value_errors_naming_them(kwargs, match):
    args = {"conditioning_size": 5, "target_layer_sizes": SIZES, **kwargs}
    with pytest.raises(ValueError, match=match):
        conditional.build(**args)


@pytest.mark.parametrize(
    "case, match",
    [
        ("batch", "conditioning has batch 6 but data has batch 7"),
        ("cond_width", r"conditioning must be \[5\]"),
        ("data_width", r"data must be \[batch, 6\]"),
        ("method", "method must be one of"),
        ("factored_chunked", "chunk_size=20"),
    ],
)
def test_bad_apply_inputs_raise_at_trace_time_under_jit(case, match):
    hn = _net(chunk_size=20) if case == "factored_chunked" else _net()
    params = hn.init(jax.random.key(0))
    c, x = _batch()
    method = {"method": "mean", "factored_chunked": "factored"}.get(case, "vmap")
    c = {"batch": c[:6], "cond_width": c[:, :4]}.get(case, c)
    x = x[:, :5] if case == "data_width" else x
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda p, c, x: hn.apply(p, c, x, method=method))(params, c, x)


def test_bad_generated_weights_raise():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="generated has 1 layers"):
        conditional.apply_generated_weights(x, [jnp.zeros(16)], ((3, 4), (4, 2)))
    with pytest.raises(ValueError, match=r"generated\[0\] has shape \(5, 16\)"):
        conditional.apply_generated_weights(x, [jnp.zeros((5, 16))], ((3, 4),))
    with pytest.raises(ValueError, match="activation must be one of"):
        conditional.apply_generated_weights(x, [jnp.zeros(16)], ((3, 4),), "soft")


def test_generated_digits_mlp_learns_above_90_percent():
    ds = images.load_digits()
    x_train = jnp.asarray(ds.x_train.reshape(len(ds.x_train), -1))
    x_test = jnp.asarray(ds.x_test.reshape(len(ds.x_test), -1))
    hn = conditional.build(4, ((64, 32), (32, 10)), hidden_sizes=(32, 32))
    task0 = jnp.eye(4)[0]  # one condition for the whole batch: the shared path
    params = hn.init(jax.random.key(0))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits = hn.apply(p, task0, x_train)
            return optax.softmax_cross_entropy_with_integer_labels(logits, ds.y_train).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
    # Evaluated per sample (factored path) with the constant one-hot batch: same network.
    rows = jnp.broadcast_to(task0, (len(x_test), 4))
    logits = hn.apply(params, rows, x_test, method="factored")
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == ds.y_test))
    assert accuracy > 0.9, f"test accuracy {accuracy:.3f} after 300 steps (loss {float(loss):.3f})"


def test_a_last_hidden_width_of_one_is_refused_by_both_builders():
    # One layer-normalised feature is always 0: the generated weights would not depend on
    # the condition (measured: such a run stays at chance).
    with pytest.raises(ValueError, match="hidden_sizes: the last hidden width must be at least 2"):
        conditional.build_weight_generator(6, 20, 30, hidden_sizes=(64, 1))
    conditional.build_weight_generator(6, 20, 30, hidden_sizes=(1, 2))  # only the last counts
