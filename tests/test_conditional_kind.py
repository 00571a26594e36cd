"""The ``conditional`` kind: the classic conditional hypernetwork in the library's one loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

import uhn_jax
from uhn_jax.core import layouts
from uhn_jax.hypernets import uhn
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks


def _setup(conditioning, **train):
    cfg = load_config("test")
    cfg.mode, cfg.hypernet.conditioning, cfg.hypernet.hidden_sizes = (
        "conditional",
        conditioning,
        (16,),
    )
    for k, v in train.items():
        cfg.train[k] = v
    exp = uhn_jax.from_config_dict(cfg)
    ds = tasks.load_dataset(exp)
    setup, desc = setup_lib.make_setup(exp, ds)
    return exp, ds, setup, desc


@pytest.mark.parametrize("conditioning", ["onehot", "random"])
def test_generated_tensors_start_at_their_init_targets(conditioning):
    _, _, setup, desc = _setup(conditioning)
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    params = step_lib.materialize_params(setup, state["params"], state["constants"], None)
    w = layouts.flatten(params, setup.layout)
    mean, std = uhn.tensor_stats(w, jnp.asarray(desc.segment_ids), len(desc.grids))
    sizes = np.asarray([g.size for g in desc.grids])
    # A sample mean of n draws of std s is off by s / sqrt(n) typically: allow 4 of those.
    np.testing.assert_array_less(
        np.abs(mean - desc.targets[:, 0]), 4 * desc.targets[:, 1] / np.sqrt(sizes) + 1e-6
    )
    # Hyperfan-in: each tensor's std is its target's, up to the sampling spread of a std
    # estimated from n values (about 1 / sqrt(2 n) relative): allow 3 of those.
    ratio = np.asarray(std) / desc.targets[:, 1]
    np.testing.assert_array_less(np.abs(ratio - 1), 3 / np.sqrt(2 * sizes))


def test_a_conditional_run_learns_and_reports_its_generator(tmp_path):
    exp, *_ = _setup("onehot", steps=60, lr=3e-3, log_every=20)
    results = uhn_jax.run(exp, tmp_path, progress=False)
    assert results["mode"] == "conditional" and results["init_steps"] == 0
    assert results["num_generator_params"] > results["num_target_params"] > 0
    assert results["test_metric"] > 0.6  # 10 classes: chance is 0.1


def test_input_conditioning_gives_each_example_its_own_network():
    _, ds, setup, desc = _setup("input")
    cond = setup_lib.desc_arrays(setup, desc)
    assert setup.kind.per_example(setup)
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    x = tasks.prepare_inputs(setup, jnp.asarray(ds.x_test[:4]))
    params, constants = state["params"], state["constants"]
    out, _ = setup.kind.forward(setup, params, constants, cond, x)
    assert out.shape == (4, 10)
    # Each row equals the network generated from that example's own condition.
    c0 = x[:1].reshape(1, -1) @ params["encoder"]["kernel"] + params["encoder"]["bias"]
    w0 = layouts.unflatten(setup.kind.generate(setup, params, constants, c0[0]), setup.layout)
    np.testing.assert_allclose(out[0], setup.model.apply(w0, x[:1])[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="its own weights"):
        setup.kind.target_params(setup, params, constants, cond)
    # Evaluation runs the per-example path.
    test = (jnp.asarray(ds.x_test[:64]), jnp.asarray(ds.y_test[:64]))
    ev = step_lib.evaluate(setup, params, constants, cond, test, 32)
    assert 0.0 <= float(ev["accuracy"]) <= 1.0 and np.isfinite(float(ev["loss"]))


def test_a_config_whose_last_hidden_width_is_one_is_refused_when_built():
    cfg = load_config("test")
    cfg.mode, cfg.hypernet.hidden_sizes = "conditional", (16, 1)
    with pytest.raises(ValueError, match="hypernet.hidden_sizes: the last hidden width"):
        uhn_jax.from_config_dict(cfg)
