"""Tests for the reference MLP family (uhn_jax.models.mlp)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts


def _count(model):
    return layouts.from_params(jax.eval_shape(model.init, jax.random.key(0))).size


def test_reference_mnist_mlp_has_118282_params():
    model = base_models.MLP(input_shape=(28, 28), num_classes=10, widths=(128, 128))
    assert _count(model) == 118_282
    assert model.sizes == ((784, 128), (128, 128), (128, 10))
    types = [dict(layer.fields)["shortcut_type"] for layer in model.layers()]
    assert types == [0, 1, 0]  # only the hidden 128->128 layer has an identity skip


def test_forward_matches_a_hand_written_reference():
    model = base_models.MLP(input_shape=(2, 3), num_classes=4, widths=(5, 5, 7))
    params = model.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (3, 2, 3))

    def ln(h):
        return (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)

    def act(h):
        return np.where(h > 0, h, 0.1 * h)

    p = [params[f"layer_{i:03d}"] for i in range(4)]
    h = np.asarray(x).reshape(3, 6) @ p[0]["kernel"] + p[0]["bias"]  # no act/norm first
    h = h + ln(act(h)) @ p[1]["kernel"] + p[1]["bias"]  # act BEFORE norm, identity skip
    h = ln(act(h)) @ p[2]["kernel"] + p[2]["bias"]  # 5 -> 7: no skip
    logits = ln(act(h)) @ p[3]["kernel"] + p[3]["bias"]  # head
    np.testing.assert_allclose(model.apply(params, x), logits, rtol=1e-5, atol=1e-5)


def test_init_matches_descriptor_targets():
    model = base_models.MLP(input_shape=(64,), num_classes=10, widths=(256, 256))
    params = model.init(jax.random.key(0))
    layout = layouts.from_params(params)
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    w = layouts.flatten(params, layout)
    for seg, g in enumerate(desc.grids):
        vals = np.asarray(w)[desc.segment_ids == seg]
        mean, std = desc.targets[seg]
        assert abs(vals.mean() - mean) < 4 * std / np.sqrt(vals.size) + 1e-6, g.keys
        assert abs(vals.std() - std) < 0.15 * std, g.keys


def test_dropout_only_in_training():
    model = base_models.MLP(input_shape=(8,), num_classes=3, widths=(16, 16), dropout_rate=0.5)
    params = model.init(jax.random.key(0))
    x = jnp.ones((2, 8))
    a = model.apply(params, x)
    np.testing.assert_array_equal(a, model.apply(params, x, train=True, rng=None))
    b = model.apply(params, x, train=True, rng=jax.random.key(1))
    assert not np.allclose(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        base_models.MLP(input_shape=(4,), num_classes=2, widths=())
    with pytest.raises(ValueError, match="dropout_rate"):
        base_models.MLP(input_shape=(4,), num_classes=2, dropout_rate=1.0)
