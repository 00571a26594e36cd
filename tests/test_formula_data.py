"""Tests for uhn_jax.data.formulas."""

import math
import warnings

import jax
import numpy as np
import pytest

from uhn_jax.data import formulas

# (name, d_in, d_out, raw input ranges) as §4.4 of the spec lists them.
EXPECTED = [
    ("ellipj", 2, 4, ((0, 1), (0, 1))),
    ("ellipkinc", 2, 1, ((0, 1), (0, 1))),
    ("ellipeinc", 2, 1, ((0, 1), (0, 1))),
    ("jv", 2, 1, ((0, 1), (0, 1))),
    ("yv", 2, 1, ((0, 1), (0.1, 1))),
    ("kv", 2, 1, ((0, 1), (0.1, 1))),
    ("iv", 2, 1, ((0, 1), (0, 1))),
    ("lpmv0", 2, 1, ((0, 1), (0, 1))),
    ("lpmv1", 2, 1, ((0, 1), (0, 1))),
    ("lpmv2", 2, 1, ((0, 1), (0, 1))),
    ("sph_harm01", 2, 1, ((0, 1), (0, 1))),
    ("sph_harm11", 2, 1, ((0, 1), (0, 1))),
    ("sph_harm02", 2, 1, ((0, 1), (0, 1))),
    ("sph_harm12", 2, 1, ((0, 1), (0, 1))),
    ("sph_harm22", 2, 1, ((0, 1), (0, 1))),
]


@pytest.fixture(scope="module")
def datasets() -> dict[str, formulas.FormulaData]:
    return {name: formulas.make_formula_dataset(name) for name in formulas.FORMULAS}


def test_registry_lists_the_15_formulas_of_the_reference():
    assert formulas.FORMULAS == tuple(row[0] for row in EXPECTED)
    for name, d_in, d_out, ranges in EXPECTED:
        formula = formulas.get_formula(name)
        assert (formula.d_in, formula.d_out) == (d_in, d_out), name
        assert formula.input_ranges == ranges, name


@pytest.mark.parametrize("name,d_in,d_out,ranges", EXPECTED)
def test_dataset_shapes_ranges_and_finiteness(datasets, name, d_in, d_out, ranges):
    ds = datasets[name]
    assert ds.name == name and ds.input_ranges == ranges
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.shape == (1000, d_in)
        assert y.dtype == np.float32 and y.shape == (1000, d_out)
        assert np.isfinite(y).all()
        # Rescaled to [-1, 1] and spread over the whole interval in every input.
        assert x.min() >= -1 and x.max() <= 1
        assert (x.min(axis=0) < -0.99).all() and (x.max(axis=0) > 0.99).all()
        raw = formulas.to_raw(x, ranges)
        lo, hi = np.asarray(ranges).T
        assert (raw >= lo - 1e-6).all() and (raw <= hi + 1e-6).all()
        # Targets are the formula at the raw inputs, unnormalised (x is rounded to float32,
        # hence the tolerance).
        np.testing.assert_allclose(y, formulas.evaluate(name, raw), rtol=1e-4, atol=1e-5)


def test_targets_are_not_normalised(datasets):
    # kv(v, z) reaches about 10 near z = 0.1; a normalised target would not.
    assert datasets["kv"].y_train.max() > 5
    assert datasets["yv"].y_train.min() < -3


def test_same_seed_is_bit_identical_and_seeds_and_formulas_differ():
    a = formulas.make_formula_dataset("jv", seed=7)
    b = formulas.make_formula_dataset("jv", seed=7)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    c = formulas.make_formula_dataset("jv", seed=8)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_test, c.x_test)
    # Train and test are independent draws.
    assert not np.array_equal(a.x_train, a.x_test)
    # Every formula gets its own stream for the same seed.
    xs = [
        formulas.make_formula_dataset(n, seed=7, n_train=4, n_test=1).x_train
        for n in formulas.FORMULAS
    ]
    assert len({x.tobytes() for x in xs}) == len(formulas.FORMULAS)


def test_n_train_does_not_move_the_test_set():
    a = formulas.make_formula_dataset("iv", seed=3, n_train=50, n_test=20)
    b = formulas.make_formula_dataset("iv", seed=3, n_train=80, n_test=20)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)
    assert np.array_equal(a.x_train, b.x_train[:50])


def test_default_sizes_and_seed_follow_the_reference():
    ds = formulas.make_formula_dataset("lpmv1")
    assert ds.x_train.shape[0] == 1000 and ds.x_test.shape[0] == 1000
    same = formulas.make_formula_dataset("lpmv1", seed=21962)
    assert np.array_equal(ds.x_train, same.x_train)


def _at(name, x1, x2):
    return formulas.evaluate(name, np.array([[x1, x2]]))[0]


def test_ellipj_at_m_zero_is_sin_cos_one_and_u():
    for u in (0.0, 0.3, 0.9):
        sn, cn, dn, ph = _at("ellipj", u, 0.0)
        np.testing.assert_allclose([sn, cn, dn, ph], [math.sin(u), math.cos(u), 1.0, u], atol=1e-12)


def test_incomplete_elliptic_integrals_at_known_points():
    # F(phi | 0) = E(phi | 0) = phi; F(phi | 1) = atanh(sin phi); E(phi | 1) = sin phi.
    np.testing.assert_allclose(_at("ellipkinc", 0.7, 0.0), [0.7], rtol=1e-12)
    np.testing.assert_allclose(_at("ellipeinc", 0.7, 0.0), [0.7], rtol=1e-12)
    np.testing.assert_allclose(_at("ellipkinc", 0.7, 1.0), [math.atanh(math.sin(0.7))], rtol=1e-10)
    np.testing.assert_allclose(_at("ellipeinc", 0.7, 1.0), [math.sin(0.7)], rtol=1e-10)


def test_bessel_functions_at_known_points():
    z = 0.6
    assert _at("jv", 0.0, 0.0)[0] == 1.0
    assert _at("iv", 0.0, 0.0)[0] == 1.0
    # Half-integer order: elementary closed forms.
    np.testing.assert_allclose(_at("jv", 0.5, z), [math.sqrt(2 / (math.pi * z)) * math.sin(z)])
    np.testing.assert_allclose(_at("yv", 0.5, z), [-math.sqrt(2 / (math.pi * z)) * math.cos(z)])
    np.testing.assert_allclose(_at("iv", 0.5, z), [math.sqrt(2 / (math.pi * z)) * math.sinh(z)])
    np.testing.assert_allclose(_at("kv", 0.5, z), [math.sqrt(math.pi / (2 * z)) * math.exp(-z)])


def test_lpmv_is_the_associated_legendre_function_of_degree_x1_at_x2():
    x = 0.4
    np.testing.assert_allclose(_at("lpmv0", 0.0, x), [1.0])
    np.testing.assert_allclose(_at("lpmv0", 1.0, x), [x])
    # Condon-Shortley phase, as in scipy.
    np.testing.assert_allclose(_at("lpmv1", 1.0, x), [-math.sqrt(1 - x * x)])
    np.testing.assert_allclose(_at("lpmv2", 1.0, 0.0), [0.0], atol=1e-12)


# Real parts of Y_n^m with azimuth a = x1 and polar angle p = x2, as the reference's
# sph_harm(m, n, theta=x1, phi=x2) defines them (Condon-Shortley phase included).
SPH_EXPLICIT = {
    "sph_harm01": lambda a, p: 0.5 * math.sqrt(3 / math.pi) * math.cos(p),
    "sph_harm11": lambda a, p: -0.5 * math.sqrt(3 / (2 * math.pi)) * math.sin(p) * math.cos(a),
    "sph_harm02": lambda a, p: 0.25 * math.sqrt(5 / math.pi) * (3 * math.cos(p) ** 2 - 1),
    "sph_harm12": lambda a, p: (
        -0.5 * math.sqrt(15 / (2 * math.pi)) * math.sin(p) * math.cos(p) * math.cos(a)
    ),
    "sph_harm22": lambda a, p: (
        0.25 * math.sqrt(15 / (2 * math.pi)) * math.sin(p) ** 2 * math.cos(2 * a)
    ),
}


@pytest.mark.parametrize("name", sorted(SPH_EXPLICIT))
def test_spherical_harmonics_match_explicit_formulas(name):
    # Distinct x1 and x2 so that swapping the angles would be caught.
    for a, p in ((0.2, 0.9), (0.9, 0.2), (0.55, 0.05)):
        np.testing.assert_allclose(_at(name, a, p), [SPH_EXPLICIT[name](a, p)], atol=1e-12)


def test_y10_depends_only_on_the_second_input():
    # Y_1^0 is proportional to cos(polar angle), and the polar angle is x2.
    vals = [_at("sph_harm01", a, 0.3)[0] for a in (0.0, 0.5, 0.99)]
    np.testing.assert_allclose(vals, vals[0], rtol=1e-14)
    assert _at("sph_harm01", 0.3, 0.0)[0] != pytest.approx(_at("sph_harm01", 0.3, 0.9)[0])


def test_no_warnings_while_building_every_dataset():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in formulas.FORMULAS:
            formulas.make_formula_dataset(name, seed=1, n_train=64, n_test=64)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown formula 'sph_harm'.*ellipj.*sph_harm22"):
        formulas.make_formula_dataset("sph_harm")


@pytest.mark.parametrize("field", ["n_train", "n_test"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_sizes_raise(field, value):
    with pytest.raises(ValueError, match=field):
        formulas.make_formula_dataset("jv", **{field: value})


@pytest.mark.parametrize("seed", [-1, 1.0])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        formulas.make_formula_dataset("jv", seed=seed)


def test_formula_data_rejects_bad_arrays():
    ds = formulas.make_formula_dataset("jv", n_train=4, n_test=3)
    good = dict(
        name="jv",
        x_train=ds.x_train,
        y_train=ds.y_train,
        x_test=ds.x_test,
        y_test=ds.y_test,
        input_ranges=ds.input_ranges,
    )
    formulas.FormulaData(**good)
    bad_y = ds.y_train.copy()
    bad_y[1, 0] = np.nan
    cases = {
        "NaN or Inf": dict(y_train=bad_y),
        "float32": dict(x_test=ds.x_test.astype(np.float64)),
        r"shape \(4, 2\)": dict(x_train=ds.x_train[:3]),
        r"\[-1, 1\]": dict(x_train=ds.x_train * 3),
        "lo < hi": dict(input_ranges=((0.0, 1.0), (1.0, 1.0))),
    }
    for pattern, override in cases.items():
        with pytest.raises(ValueError, match=pattern):
            formulas.FormulaData(**{**good, **override})


def test_evaluate_checks_the_input_width():
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        formulas.evaluate("jv", np.zeros((3, 3)))


def test_to_raw_inverts_to_unit():
    ranges = ((0.0, 1.0), (0.1, 1.0))
    raw = np.array([[0.0, 0.1], [0.5, 0.55], [1.0, 1.0]])
    unit = formulas.to_unit(raw, ranges)
    np.testing.assert_allclose(unit, [[-1, -1], [0, 0], [1, 1]], atol=1e-15)
    np.testing.assert_allclose(formulas.to_raw(unit, ranges), raw, atol=1e-15)


def test_rmse_pools_every_point_and_output():
    pred = np.zeros((2, 2), np.float32)
    target = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    expected = math.sqrt((9 + 16) / 4)
    np.testing.assert_allclose(formulas.rmse(pred, target), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(formulas.rmse)(pred, target), expected, rtol=1e-6)
    assert formulas.rmse(target, target) == 0
    with pytest.raises(ValueError, match="same shape"):
        formulas.rmse(pred, target[:, :1])
