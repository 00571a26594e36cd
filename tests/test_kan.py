"""Tests for the reference formula KAN (uhn_jax.models.kan) and its descriptors."""

import dataclasses
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.interpolate

from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts
from uhn_jax.models import kan

M = -1.0  # the "unused field" value


def _layout(model):
    return layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))


def _desc(model):
    return descriptors.build(_layout(model), model.layers(), model.global_fields())


def _random_params(model, key, noise):
    """Init params with every scalar perturbed, so no tensor sits at a special value."""
    flat, unravel = jax.flatten_util.ravel_pytree(jax.jit(model.init)(key))
    return unravel(flat + noise * jax.random.normal(jax.random.fold_in(key, 1), flat.shape))


# Jitted once per shape: the eager Cox-de Boor recursion dispatches many small ops.
_bases = jax.jit(kan.bspline_bases, static_argnums=2)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "model, count",
    [
        (base_models.KAN(2, 1), 254),  # most formulas
        (base_models.KAN(2, 1, grid_size=10), 364),  # jv, yv
        (base_models.KAN(2, 4), 407),  # ellipj: sn, cn, dn, ph
    ],
)
def test_reference_param_counts(model, count):
    layout = _layout(model)
    assert layout.size == count
    g, k = model.grid_size, model.spline_order
    for i, (n_in, n_out) in enumerate(model.sizes):
        shapes = {
            leaf.keys[1]: leaf.shape for leaf in layout.leaves if leaf.keys[0] == f"layer_{i:03d}"
        }
        assert shapes == {
            "base_kernel": (n_in, n_out),
            "base_bias": (n_out,),
            "spline_kernel": (n_in, g + k, n_out),
            "spline_scale": (n_in, n_out),
            "grid_lower": (n_in,),
            "grid_log_length": (n_in,),
            "knot_logits": (n_in, g + 2 * k + 1),
        }


# ----------------------------------------------------------------------------- descriptors


def test_index_descriptors_hand_checked_on_a_tiny_kan():
    # One layer 2 -> 1, G=1, k=1: K = 4 knots and 2 bases per input. Leaves are in jax
    # (alphabetical) order; rows in C order of our (Flax) layouts.
    model = base_models.KAN(2, 1, hidden=(), grid_size=1, spline_order=1)
    desc = _desc(model)
    expected = (
        [[0, 6, 1, 0, M, M, M, M, M, M]]  # base_bias (1,)
        + [[0, 6, 0, 0, i, M, M, M, M, M] for i in range(2)]  # base_kernel (in, out)
        + [[0, 6, 5, M, i, M, M, M, M, M] for i in range(2)]  # grid_log_length (in,)
        + [[0, 6, 4, M, i, M, M, M, M, M] for i in range(2)]  # grid_lower (in,)
        + [[0, 6, 6, M, i, M, M, M, M, g] for i in range(2) for g in range(4)]  # knot_logits
        + [[0, 6, 2, 0, i, M, M, M, M, g] for i in range(2) for g in range(2)]  # spline_kernel
        + [[0, 6, 3, 0, i, M, M, M, M, M] for i in range(2)]  # spline_scale (in, out)
    )
    assert desc.num_params == 21
    np.testing.assert_array_equal(desc.index, np.asarray(expected, np.float32))


def test_index_descriptors_of_the_reference_kan():
    model = base_models.KAN(2, 1)
    layout, desc = _layout(model), _desc(model)
    idx = desc.index
    assert idx.shape == (254, 10)

    def row(layer, tensor, *position):
        leaf = layout.leaf((f"layer_{layer:03d}", tensor))
        return idx[leaf.offset + int(np.ravel_multi_index(position, leaf.shape))]

    # spline W of layer 0 at (input 1, basis 6, output 3).
    np.testing.assert_array_equal(row(0, "spline_kernel", 1, 6, 3), [0, 6, 2, 3, 1, M, M, M, M, 6])
    # knots of layer 1 at (input 4, knot 11): the output index stays -1.
    np.testing.assert_array_equal(row(1, "knot_logits", 4, 11), [1, 6, 6, M, 4, M, M, M, M, 11])
    np.testing.assert_array_equal(row(1, "grid_lower", 2), [1, 6, 4, M, 2, M, M, M, M, M])
    np.testing.assert_array_equal(row(1, "grid_log_length", 3), [1, 6, 5, M, 3, M, M, M, M, M])
    np.testing.assert_array_equal(row(1, "base_kernel", 4, 0), [1, 6, 0, 0, 4, M, M, M, M, M])
    np.testing.assert_array_equal(row(0, "spline_scale", 1, 2), [0, 6, 3, 2, 1, M, M, M, M, M])
    np.testing.assert_array_equal(row(0, "base_bias", 4), [0, 6, 1, 4, M, M, M, M, M, M])

    param_type, out_idx, grid_idx = idx[:, 2], idx[:, 3], idx[:, 9]
    grid_tensor = np.isin(param_type, [4, 5, 6])
    assert (out_idx[grid_tensor] == -1).all() and (out_idx[~grid_tensor] >= 0).all()
    assert (grid_idx[np.isin(param_type, [2, 6])] >= 0).all()
    assert (grid_idx[~np.isin(param_type, [2, 6])] == -1).all()
    assert (idx[:, 5:9] == -1).all()  # no kernel/embedding/sequence indices in a KAN
    counts = np.bincount(param_type.astype(int), minlength=7)
    np.testing.assert_array_equal(counts, [15, 6, 120, 15, 7, 7, 84])

    r = desc.index_ranges()
    assert r.lo == (0, 6, 0, -1, -1, -1, -1, -1, -1, -1)  # output index starts at -1 for KAN
    assert r.hi == (1, 6, 6, 4, 4, -1, -1, -1, -1, 11)


def test_structure_global_and_targets():
    model = base_models.KAN(2, 1, dataset_type=10)
    desc = _desc(model)
    #      idx type bias norm skip out in act prm drop pool ... grid order init
    row0 = [0, 6, 1, 0, 0, 5, 2, 0, 0, 0] + [0] * 8 + [5, 3, 0]
    row1 = [1, 6, 1, 0, 0, 1, 5, 3, 0, 0] + [0] * 8 + [5, 3, 0]
    np.testing.assert_array_equal(desc.structure, np.asarray([row0, row1], np.float32))
    np.testing.assert_array_equal(desc.global_, [5, 3, 10, 2, 0, 0, 0, 0])

    targets = {g.keys: tuple(t) for g, t in zip(desc.grids, desc.targets, strict=True)}
    for layer, n_in in (("layer_000", 2), ("layer_001", 5)):
        std = 1 / math.sqrt(3 * n_in)
        np.testing.assert_allclose(targets[(layer, "base_kernel")], (0, std), rtol=1e-6)
        np.testing.assert_allclose(targets[(layer, "spline_scale")], (0, std), rtol=1e-6)
        np.testing.assert_allclose(targets[(layer, "spline_kernel")], (0, 0.1), rtol=1e-6)
        assert targets[(layer, "base_bias")] == (0, 0)
        assert targets[(layer, "grid_lower")] == (-1, 0)
        np.testing.assert_allclose(targets[(layer, "grid_log_length")], (math.log(2), 0), rtol=1e-6)
        assert targets[(layer, "knot_logits")] == (0, 0)


def test_zero_initialization_type_zeroes_every_target():
    model = base_models.KAN(2, 1)
    layers = [
        dataclasses.replace(
            layer,
            fields=tuple((k, 1 if k == "initialization_type" else v) for k, v in layer.fields),
        )
        for layer in model.layers()
    ]
    desc = descriptors.build(_layout(model), layers, model.global_fields())
    np.testing.assert_array_equal(desc.targets, 0)


def test_init_matches_descriptor_targets():
    model = base_models.KAN(32, 32, hidden=(32,))
    params = model.init(jax.random.key(0))
    layout = layouts.from_params(params)
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    w = np.asarray(layouts.flatten(params, layout))
    for seg, g in enumerate(desc.grids):
        vals = w[desc.segment_ids == seg]
        mean, std = desc.targets[seg]
        if std == 0:
            np.testing.assert_allclose(vals, mean, rtol=1e-6, err_msg=str(g.keys))
        else:
            assert abs(vals.mean() - mean) < 4 * std / np.sqrt(vals.size), g.keys
            assert abs(vals.std() - std) < 0.15 * std, g.keys


# ----------------------------------------------------------------------------- grid and bases


def test_init_knots_start_one_step_inside_the_grid():
    model = base_models.KAN(2, 1)
    params = jax.jit(model.init)(jax.random.key(0))
    k_count = model.num_knots
    assert k_count == 12
    expected = -1 + 2 * (np.arange(k_count) + 1) / k_count
    for i in range(2):
        knots = np.asarray(jax.jit(model.layer_knots, static_argnums=1)(params, i))
        np.testing.assert_allclose(knots, np.broadcast_to(expected, knots.shape), atol=1e-6)
    assert np.isclose(expected[0], -0.8333333) and expected[-1] == 1.0


def test_knots_strictly_increasing_for_any_logits():
    key = jax.random.key(3)
    logits = 2.0 * jax.random.normal(key, (6, 12))
    lower = jnp.linspace(-3, 2, 6)
    log_length = jnp.linspace(-2, 2, 6)
    knots = np.asarray(kan.knots_from_params(lower, log_length, logits))
    assert (np.diff(knots, axis=-1) > 0).all()
    np.testing.assert_allclose(knots[:, -1], lower + np.exp(log_length), rtol=1e-5)
    assert (knots[:, 0] > lower).all()


def test_coincident_knots_give_finite_bases_and_gradients():
    # Extreme logits underflow softmax entries in float32, so neighbouring knots coincide.
    logits = jnp.asarray([[0.0, -200.0, 0.0, 0.0, -200.0, -200.0, 0.0, 0.0]])
    x = jnp.linspace(-1.2, 1.2, 50)[:, None]

    def knots(logits):
        return kan.knots_from_params(jnp.asarray([-1.0]), jnp.asarray([math.log(2.0)]), logits)

    assert (np.diff(np.asarray(knots(logits))) == 0).any()
    value, grad = jax.jit(jax.value_and_grad(lambda z: _bases(x, knots(z), 3).sum()))(logits)
    assert np.isfinite(value) and value > 0
    assert np.isfinite(np.asarray(grad)).all()


def _random_knots(key, n_in, n_knots):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (n_in, n_knots))
    lower = -1.2 + 0.2 * jax.random.normal(k2, (n_in,))
    return kan.knots_from_params(lower, jnp.full((n_in,), math.log(2.5)), logits)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_bases_match_scipy_basis_elements(order):
    knots = _random_knots(jax.random.key(order), 3, 5 + 2 * order + 1)
    x = jax.random.uniform(jax.random.key(7), (200, 3), minval=-1.6, maxval=1.6)
    bases = np.asarray(_bases(x, knots, order))
    assert bases.shape == (200, 3, 5 + order)
    t = np.asarray(knots, np.float64)
    for i in range(3):
        for j in range(5 + order):
            elem = scipy.interpolate.BSpline.basis_element(
                t[i, j : j + order + 2], extrapolate=False
            )
            ref = np.nan_to_num(elem(np.asarray(x[:, i], np.float64)))
            np.testing.assert_allclose(bases[:, i, j], ref, atol=2e-5)


def test_bases_are_a_nonnegative_partition_of_unity_inside_the_grid():
    order, n_knots = 3, 12
    knots = np.asarray(_random_knots(jax.random.key(11), 4, n_knots))
    x = np.random.default_rng(0).uniform(-2, 2, (4000, 4)).astype(np.float32)
    bases = np.asarray(_bases(jnp.asarray(x), jnp.asarray(knots), order))
    assert (bases >= -1e-7).all()
    total = bases.sum(-1)
    inside = (x >= knots[:, order]) & (x < knots[:, n_knots - order - 1])
    outside = (x < knots[:, 0]) | (x >= knots[:, -1])
    assert inside.sum() > 500 and outside.sum() > 500
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-5)
    assert (total[~inside] < 1 + 1e-5).all()
    np.testing.assert_array_equal(total[outside], 0.0)


# ----------------------------------------------------------------------------- forward / grads


def test_forward_matches_a_numpy_reference():
    model = base_models.KAN(2, 3, hidden=(4,))
    params = _random_params(model, jax.random.key(5), 0.1)
    x = np.random.default_rng(1).uniform(-1, 1, (32, 2)).astype(np.float32)

    def layer(p, h, act):
        knots = np.asarray(
            kan.knots_from_params(p["grid_lower"], p["grid_log_length"], p["knot_logits"])
        )
        out = act(h) @ np.asarray(p["base_kernel"]) + np.asarray(p["base_bias"])
        spline = np.asarray(p["spline_kernel"]) * np.asarray(p["spline_scale"])[:, None, :]
        for i in range(h.shape[1]):
            for g in range(model.num_bases):
                elem = scipy.interpolate.BSpline.basis_element(knots[i, g : g + 5], False)
                out = out + np.nan_to_num(elem(h[:, i]))[:, None] * spline[i, g]
        return out

    h = layer(params["layer_000"], x.astype(np.float64), lambda v: v)  # no base act on layer 0
    y = layer(params["layer_001"], h, lambda v: v / (1 + np.exp(-v)))  # SiLU after
    out = jax.jit(model.apply)(params, jnp.asarray(x))
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-5)


def test_every_leaf_gets_a_finite_nonzero_gradient():
    model = base_models.KAN(2, 1)
    params = _random_params(model, jax.random.key(2), 0.1)
    x = jax.random.uniform(jax.random.key(4), (64, 2), minval=-1, maxval=1)

    def loss(p):
        return jnp.mean(model.apply(p, x) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.isfinite(g).all(), path
        assert np.abs(g).max() > 0, path  # includes knot logits, grid lower and length


def test_apply_rejects_wrong_input_width_and_bad_config():
    model = base_models.KAN(2, 1)
    with pytest.raises(ValueError, match="inputs"):
        model.apply(model.init(jax.random.key(0)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="grid_size"):
        base_models.KAN(2, 1, grid_size=0)
    with pytest.raises(ValueError, match="hidden"):
        base_models.KAN(2, 1, hidden=(0,))


def test_fits_a_smooth_1d_function():
    # One KAN layer (base + spline on a learnable grid) keeps the compile short.
    model = base_models.KAN(1, 1, hidden=())
    x = jnp.linspace(-1, 1, 128)[:, None]
    y = jnp.sin(3 * x)
    opt = optax.adam(1e-2)

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=300)
        return loss(p)

    params = model.init(jax.random.key(0))
    before, after = float(jax.jit(loss)(params)), float(fit(params))
    assert after < before / 100, (before, after)


def test_a_generator_produces_every_kan_weight():
    from uhn_jax import generator

    model = base_models.KAN()
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    gen = generator.Generator(index_ranges=desc.index_ranges(), hidden=16, n_freqs=32)
    generator.check(gen, desc)
    v = generator.init(gen, jax.random.key(1))
    plan, arrays = generator.plan(gen, desc)
    w = generator.generate_planned(gen, v, plan, arrays)
    assert w.shape == (254,) and bool(jnp.isfinite(w).all())
    out = model.apply(layouts.unflatten(w, layout), jnp.zeros((3, 2)))
    assert out.shape == (3, 1) and bool(jnp.isfinite(out).all())
