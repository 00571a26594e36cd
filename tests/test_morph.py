"""Function-preserving deepening of MLPs (uhn_jax.weightspace.morph), IGPG's fallback for a
held-out depth."""

import jax
import numpy as np
import pytest

from uhn_jax import models
from uhn_jax.weightspace import morph


@pytest.mark.parametrize(
    "source, target, plan",
    [
        ((16,), (16, 16), (0, None, 1)),
        ((16,), (16, 16, 16), (0, None, None, 1)),
        ((16, 32), (16, 16, 32, 32), (0, None, 1, None, 2)),
        ((16, 16), (16, 16), (0, 1, 2)),
        ((16, 16), (16,), None),  # shallower: blocks are never removed
        ((16,), (32, 16), None),  # the first layer has no skip
        ((16,), (16, 8), None),  # an inserted block keeps its width
    ],
)
def test_deepen_plan_inserts_same_width_blocks_only(source, target, plan):
    assert morph.deepen_plan(source, target) == plan


def test_deepened_mlp_computes_the_same_function_and_its_new_blocks_learn():
    small = models.MLP(input_shape=(8, 8), num_classes=10, widths=(6, 5), slope=0.1)
    big = models.MLP(input_shape=(8, 8), num_classes=10, widths=(6, 6, 5, 5, 5), slope=0.1)
    params = jax.tree.map(np.asarray, small.init(jax.random.key(0)))
    grown = morph.deepen(params, small.widths, big.widths)
    assert jax.tree.map(np.shape, grown) == jax.tree.map(
        np.shape, jax.eval_shape(big.init, jax.random.key(0))
    )
    x = np.random.default_rng(0).normal(size=(32, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(big.apply(grown, x)), np.asarray(small.apply(params, x)), atol=1e-5
    )

    def loss(p):
        return (big.apply(p, x) ** 2).mean()

    grads = jax.grad(loss)(grown)
    for name in (models.MLP.name(1), models.MLP.name(3), models.MLP.name(4)):  # inserted
        assert not grown[name]["kernel"].any() and np.abs(grads[name]["kernel"]).max() > 0
    with pytest.raises(ValueError, match=r"widths \(5,\) cannot be grown from one of widths"):
        morph.deepen(params, small.widths, (5,))
