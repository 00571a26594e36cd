"""The ``static`` kind: Ha et al.'s static hypernetwork trained by the library's one loop."""

import jax
import numpy as np
from conftest import load_config

import uhn_jax
from uhn_jax.hypernets import static_kind
from uhn_jax.training import checkpoint, tasks
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib


def _exp(**train):
    cfg = load_config("test")
    cfg.mode, cfg.model.family = "static", "ha_cnn"
    cfg.model.widths, cfg.model.kernel_size = (16,), 3  # digits are 8 x 8
    cfg.train.steps, cfg.train.lr = 60, 3e-3
    for k, v in train.items():
        cfg.train[k] = v
    return uhn_jax.from_config_dict(cfg)


def test_a_static_run_generates_the_kernel_and_trains_the_rest_directly(tmp_path):
    exp = _exp()
    results = uhn_jax.run(exp, tmp_path, progress=False)
    setup, desc = setup_lib.make_setup(exp, tasks.load_dataset(exp))
    net = static_kind.hypernet(setup.model, setup.hypernet)
    # 16 x 3 x 3 x 16 = 2,304 generated weights from 4 x 16 x 5 + 9 x 16 x 5 + 4 = 1,044.
    assert net.num_generated() == 2304
    assert results["num_generator_params"] == net.formula_num_params()["total"] == 1044
    assert results["mode"] == "static" and results["test_metric"] > 0.6  # chance is 0.1
    state = checkpoint.manager(tmp_path / "checkpoints").restore(setup.total_steps)
    params = state["params"]
    assert "kernel" not in params["direct"]["layer_001"]  # generated, not trained directly
    assert set(params["direct"]["layer_001"]) == {"bias"}
    cond = setup_lib.desc_arrays(setup, desc)
    model_params = step_lib.materialize_params(setup, params, state["constants"], cond)
    np.testing.assert_allclose(
        model_params["layer_001"]["kernel"], net.kernels(params["hyper"])["layer_001"], rtol=1e-6
    )
    np.testing.assert_array_equal(
        model_params["layer_000"]["kernel"], params["direct"]["layer_000"]["kernel"]
    )


def test_static_init_matches_the_replaced_kernels_fan_in_std():
    exp = _exp()
    setup, _ = setup_lib.make_setup(exp, tasks.load_dataset(exp))
    params, _ = setup.kind.init(setup, jax.random.key(0))
    kernel = setup.kind.target_params(setup, params, {}, None)["layer_001"]["kernel"]
    target = 1 / np.sqrt(3 * 3 * 3 * 16)  # PyTorch's U(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in)
    assert abs(float(kernel.std()) / target - 1) < 0.05
