"""Tests for uhn_jax.layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from uhn_jax.core import layouts


def _tree(key=0):
    k = jax.random.split(jax.random.key(key), 4)
    return {
        "b_layer": {
            "kernel": jax.random.normal(k[0], (3, 4)),
            "bias": jax.random.normal(k[1], (4,)),
        },
        "a_layer": [jax.random.normal(k[2], (2, 2, 3)), jax.random.normal(k[3], ())],
    }


def test_round_trip_and_ravel_parity():
    tree = _tree()
    layout = layouts.from_params(jax.eval_shape(lambda: tree))
    w = layouts.flatten(tree, layout)
    assert w.shape == (12 + 4 + 12 + 1,) == (layout.size,)
    np.testing.assert_array_equal(w, ravel_pytree(tree)[0])
    back = layouts.unflatten(w, layout)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, tree)


def test_offsets_follow_tree_flatten_order():
    layout = layouts.from_params(_tree())
    assert [lf.keys for lf in layout.leaves] == [
        ("a_layer", "0"),
        ("a_layer", "1"),
        ("b_layer", "bias"),
        ("b_layer", "kernel"),
    ]
    assert [lf.offset for lf in layout.leaves] == [0, 12, 13, 17]
    assert layout.leaf(("b_layer", "kernel")).shape == (3, 4)


def test_layout_is_hashable_and_static_under_jit():
    tree = _tree()
    layout = layouts.from_params(tree)
    assert hash(layout) == hash(layouts.from_params(jax.eval_shape(lambda: tree)))
    assert layout == layouts.from_params(jax.eval_shape(lambda: tree))
    f = jax.jit(layouts.unflatten, static_argnums=1)
    w = jnp.arange(layout.size, dtype=jnp.float32)
    out = f(w, layout)
    np.testing.assert_array_equal(out["b_layer"]["kernel"], np.arange(17, 29).reshape(3, 4))


def test_unflatten_is_differentiable():
    layout = layouts.from_params(_tree())
    w = jnp.ones(layout.size)
    g = jax.grad(lambda w: layouts.unflatten(w, layout)["b_layer"]["kernel"].sum())(w)
    assert float(g.sum()) == 12.0
    assert float(g[17:29].sum()) == 12.0


def test_errors():
    layout = layouts.from_params(_tree())
    with pytest.raises(ValueError, match="length 29"):
        layouts.unflatten(jnp.zeros(5), layout)
    with pytest.raises(ValueError, match="structure"):
        layouts.flatten({"x": jnp.zeros(3)}, layout)
    with pytest.raises(ValueError, match="empty"):
        layouts.from_params({})
    with pytest.raises(TypeError, match="not an array"):
        layouts.from_params({"x": 3.0})
