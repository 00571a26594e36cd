"""Tests for the generated-UHN base model of recursive generation (spec §5.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax import descriptors, layouts
from uhn_jax.base_models.recursive import RecursiveUHN


def _desc(model):
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    return descriptors.build(layout, model.layers(), model.global_fields())


def test_reference_size_and_descriptors():
    model = RecursiveUHN()
    desc = _desc(model)
    assert desc.num_params == 181_121  # the reference RecursiveModel
    assert len(model.layers()) == 11
    g = dict(zip(descriptors.GLOBAL_FIELDS, desc.global_.tolist(), strict=True))
    assert (g["model_type"], g["task_type"], g["dataset_type"]) == (6, 4, 22)
    assert (g["num_structure_freqs"], g["num_index_freqs"]) == (32, 1024)
    s = {f: desc.structure[:, i] for i, f in enumerate(descriptors.STRUCTURE_FIELDS)}
    assert s["layer_type"].tolist() == [5] + [0] * 10
    assert s["input_size"][5] == 2048 and s["output_size"][10] == 1
    assert s["initialization_type"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    # The zero-initialised layer's init targets are (0, 0).
    zero = [
        t for grid, t in zip(desc.grids, desc.targets, strict=True) if grid.keys[0] == "layer_004"
    ]
    assert np.all(np.asarray(zero) == 0.0)


def test_apply_shapes_masking_and_zero_structure_at_init():
    model = RecursiveUHN(embed_dim=16, index_features=32, num_heads=4, index_blocks=2)
    params = model.init(jax.random.key(0))
    feats = jax.random.normal(jax.random.key(1), (7, 32))
    tokens = jax.random.normal(jax.random.key(2), (3, 16))
    w = model.apply(params, (feats, tokens, None))
    assert w.shape == (7,)
    # Layer 4 starts at zero, so a fresh generated UHN ignores the structure tokens.
    w2 = model.apply(params, (feats, jnp.zeros((3, 16)), None))
    np.testing.assert_allclose(w, w2, rtol=1e-6)
    # With layer 4 non-zero the structure matters, and zero-padded tokens are ignored if masked.
    params["layer_004"] = jax.tree.map(
        lambda a: 0.3 * jax.random.normal(jax.random.key(3), a.shape), params["layer_004"]
    )
    own = model.apply(params, (feats, tokens, None))
    padded = jnp.concatenate([tokens, jnp.zeros((2, 16))])
    masked = model.apply(params, (feats, padded, jnp.asarray([1.0, 1, 1, 0, 0])))
    np.testing.assert_allclose(masked, own, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(model.apply(params, (feats, padded, None)) - own)).max() > 1e-4
    with pytest.raises(ValueError, match="index features"):
        model.apply(params, (feats[:, :8], tokens, None))
    with pytest.raises(ValueError, match="divisible"):
        RecursiveUHN(embed_dim=10, num_heads=4)
