"""Tests for the generated-UHN base model of recursive generation (spec §5.3)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax.core import descriptors, layouts
from uhn_jax.hypernets import recursion
from uhn_jax.models.recursive import RecursiveUHN
from uhn_jax.training import optim
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import tasks as tasks_lib


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


# ----------------------------------------------------------------------------- the chain


def _chain_exp(depth, **train_overrides):
    from conftest import load_config

    from uhn_jax import config as config_lib

    cfg = load_config("test")
    cfg.generator.structure = True
    cfg.generator.structure_freqs = 8
    cfg.generator.n_freqs = 16
    cfg.generator.chain_depth = depth
    cfg.train.grad_clip = 0.01
    for k, v in train_overrides.items():
        cfg.train[k] = v
    return config_lib.from_config_dict(cfg)


def test_staged_init_and_learning_rate_scaling():

    exp = _chain_exp(2, init_steps=7, init_lr=1e-3, lr=1e-3)
    setup, _ = setup_lib.make_setup(exp, tasks_lib.load_dataset(exp))
    stages = [setup.stage(s) for s in range(setup.total_steps)]
    # K + 1 sub-stages of 7 // 3 = 2 steps; the remainder goes to the last one.
    assert stages[:8] == ["init0"] * 2 + ["init1"] * 2 + ["init2"] * 3 + ["task"]
    assert [s for s in range(1, 9) if setup.fresh_optimizer_at(s)] == [2, 4, 7]
    assert recursion.lr_scale(1) == 1.0 and recursion.lr_scale(2) == 0.5
    assert recursion.lr_scale(3) == 0.125 and recursion.lr_scale(5) == 0.125 / 16

    def peak(stage):
        tx = optim.make_optimizer(setup, stage)
        params = {"w": jnp.zeros(())}
        state, lrs = tx.init(params), []
        for _ in range(3):
            updates, state = tx.update({"w": jnp.ones(())}, state, params)
            lrs.append(abs(float(updates["w"])))
        return max(lrs)

    # Depth >= 2: init_lr / 5 for sub-stages 0-1 and / 10 for sub-stage 2 (peaks after warm-up);
    # the task stage at lr / 2. The clip (0.01) bounds each Adam step's input, not its size.
    assert peak("init0") <= 1e-3 / 5 * 1.001 and peak("init2") <= 1e-3 / 10 * 1.001
    assert peak("task") == pytest.approx(0.5e-3, rel=0.05)


@pytest.mark.slow
def test_chain_generates_the_base_model_and_trains_end_to_end(tmp_path):
    from uhn_jax.training import train

    depth = 2  # H0 -> H1 -> H2 -> f: a generated UHN generates a generated UHN
    exp = _chain_exp(depth, init_steps=2 * (depth + 1), steps=3, init_lr=1e-3, lr=1e-3)
    ds = tasks_lib.load_dataset(exp)
    setup, desc = setup_lib.make_setup(exp, ds)
    assert setup.chain.depth == depth and setup.layout.size == desc.num_params
    # H0 generates H1: its plan covers the generated UHN's parameters.
    assert sum(int(np.prod(s)) for s in setup.plan.shapes) == setup.chain.layout.size
    results = train.run(exp, tmp_path, progress=False)
    assert np.isfinite(results["test_loss"]) and results["init_steps"] == 2 * (depth + 1)
    assert results["num_target_params"] == desc.num_params
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert {r["stage"] for r in log if "stage" in r} >= {"init1", "init2", "task"}


def test_chain_needs_the_structure_path():
    from conftest import load_config

    from uhn_jax import config as config_lib

    cfg = load_config("test")
    cfg.generator.chain_depth = 1
    with pytest.raises(ValueError, match="structure=True"):
        config_lib.from_config_dict(cfg)
