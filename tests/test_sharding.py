"""Tests for uhn_jax.sharding: a train step over 8 fake CPU devices equals the 1-device step.

The device count of the CPU backend is fixed when JAX starts, so the multi-device checks run in a
subprocess started with ``--xla_force_host_platform_device_count=8``; it prints its measurements
as JSON and the assertions are made here.
"""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from uhn_jax.core import sharding

# A small CNN on digits with the separable path and chunking both active, so that every code
# path that takes a mesh is exercised: direct chunks, separable groups, the batch and evaluation.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, "tests")
    from conftest import load_config
    from uhn_jax import config as config_lib
    from uhn_jax.training import setup as setup_lib
    from uhn_jax.training import step as step_lib
    from uhn_jax.training import tasks as tasks_lib

    def build(num_devices, mode):
        cfg = load_config("test")
        cfg.mode = mode
        cfg.model.family = "cnn"
        cfg.model.depths = (1, 1)
        cfg.model.widths = (16, 16)
        cfg.generator.chunk_size = 200  # rounded up to 200 (a multiple of 8): several chunks
        # float32 matmuls: bf16 rounding would turn the reduction-order noise checked below into
        # bf16 quanta (bf16 is tested against float32 in test_generator).
        cfg.generator.matmul_dtype = "float32"
        cfg.train.num_devices = num_devices
        exp = config_lib.from_config_dict(cfg)
        ds = tasks_lib.load_dataset(exp)
        setup, desc = setup_lib.make_setup(exp, ds)
        key = jax.random.key_data(jax.random.key(0))
        state = step_lib.init_state(setup, jax.random.fold_in(key, 2))
        data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
        return setup, setup_lib.desc_arrays(setup, desc), state, data, key

    def task_grads(setup, arrays, state, data):
        x, y = (tasks_lib.split_batch(setup, d[:32]) for d in data)
        fn = jax.jit(jax.grad(tasks_lib.task_loss, argnums=1, has_aux=True), static_argnums=0)
        g = fn(setup, state["params"], state["constants"], arrays, (x, y), jax.random.key(1))[0]
        return jax.tree.leaves(g)

    out = {"devices": jax.device_count()}
    for mode in ("uhn", "direct"):
        runs, grads = {}, {}
        for n in (1, 8):
            setup, arrays, state, data, key = build(n, mode)
            grads[n] = task_grads(setup, arrays, state, data)
            stages = ("init", "task") if mode == "uhn" else ("task", "task")
            losses = []
            for stage in stages:
                state, m = step_lib.run_step(setup, stage, state, arrays, data, key)
                losses.append(float(m.get("loss", m.get("init_loss"))))
            ev = step_lib.evaluate(setup, state["params"], state["constants"], arrays, data, 128)
            runs[n] = (setup, arrays, state, data, key, losses, float(ev["accuracy"]))
        (s1, _, st1, *_, l1, a1), (s8, ar8, st8, d8, k8, l8, a8) = runs[1], runs[8]
        p1, p8 = jax.tree.leaves(st1["params"]), jax.tree.leaves(st8["params"])
        res = {
            "losses_1": l1, "losses_8": l8, "acc_1": a1, "acc_8": a8,
            "max_param_diff": max(float(jnp.abs(a - b).max()) for a, b in zip(p1, p8)),
            "max_param_scale": max(float(jnp.abs(a).max()) for a in p1),
            "max_grad_rel_diff": max(
                float(jnp.abs(a - b).max() / jnp.abs(a).max()) for a, b in zip(*grads.values())
            ),
            "params_replicated": all(x.sharding.is_fully_replicated for x in p8),
            "params_devices": min(len(x.sharding.device_set) for x in p8),
        }
        batch = jax.jit(
            lambda d: tasks_lib.split_batch(s8, tasks_lib.sample_batch(*d, 0, k8, 32)[0])
        )(d8)
        res["batch_spec"] = list(batch.sharding.spec)
        if mode == "uhn":
            res["direct_spec"] = list(ar8.plan["direct"].sharding.spec)
            res["rows_specs"] = [list(r.sharding.spec) for r in ar8.plan["rows"]]
            res["num_groups"] = len(ar8.plan["rows"])
        out[mode] = res
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step_with_params_replicated_and_inputs_split():
    # One test for both modes and both checks, so that pytest-xdist runs the subprocess (about
    # a minute of compilation) once rather than on each worker.
    env = subprocess_env("--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    for mode in ("uhn", "direct"):
        _check_sharded_step_equals_single_device_step(out[mode])
        _check_params_replicated_and_inputs_split(out[mode], mode)


def _check_sharded_step_equals_single_device_step(r):
    # Sharded reductions and chunk boundaries (rows are aligned to 8 x devices) sum in another
    # order: float32 rounding, which the σ=100 Fourier phases (~1e3) lift to ~1e-4 of the output
    # scale (as between chunked and unchunked generation). The gradient at the same params,
    # relative to each leaf's largest entry, and the first loss match to that; a dropped shard
    # or a missed all-reduce is off by O(1). The first loss has matched to 1.1e-5 (CI, one run
    # in several), so it gets 1e-4.
    assert r["max_grad_rel_diff"] < 2e-3, r
    np.testing.assert_allclose(r["losses_8"][0], r["losses_1"][0], rtol=1e-4)
    # After a step, Adam's first update (~lr times the sign of each gradient entry) turns
    # rounding in near-zero entries into steps of up to 2 lr (lr = 1e-3); still far below a
    # real divergence, which moves the loss at the percent level.
    np.testing.assert_allclose(r["losses_8"], r["losses_1"], rtol=1e-3)
    assert r["max_param_diff"] < 2 * 2 * 1e-3, r
    assert r["acc_8"] == pytest.approx(r["acc_1"], abs=0.02)


def _check_params_replicated_and_inputs_split(r, mode):
    assert r["params_replicated"] and r["params_devices"] == 8
    assert r["batch_spec"] == ["d"]
    if mode == "uhn":
        assert r["direct_spec"] == ["d", None]
        assert r["num_groups"] >= 1
        assert all(spec == ["d", None] for spec in r["rows_specs"])


def test_one_device_means_no_mesh_and_too_many_devices_is_an_error():
    assert sharding.make_mesh(0) is None and sharding.make_mesh(1) is None
    with pytest.raises(ValueError, match="device"):
        sharding.make_mesh(len(jax.devices()) + 1)
    x = np.ones(3)
    assert sharding.constrain(x, None) is x and sharding.put(x, None) is x


# A model-set run and a multi-task run through the one loop, on 1 and on 8 devices.
_RUNS_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys
    import jax
    sys.path.insert(0, "tests")
    from conftest import load_config
    from uhn_jax import config as config_lib
    from uhn_jax.training import members, model_sets, multitask, tasks, train

    tmp = pathlib.Path(sys.argv[1])
    family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(8, 16))
    path = model_sets.save(model_sets.sample(family, 4, 1, seed=3), tmp / "set.json")
    (tmp / "karate.py").write_text(
        "from uhn_jax import config as config_lib\\n"
        "def get_config():\\n"
        "    c = config_lib.default_config_dict()\\n"
        "    c.data.name, c.model.family, c.model.widths = 'karate_club', 'gcn', (8,)\\n"
        "    return c\\n"
    )

    def losses(workdir):
        rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return [r.get("loss", r.get("init_loss")) for r in rows if "stage" in r]

    out = {"devices": jax.device_count()}
    for n in (1, 8):
        cfg = load_config("test")
        cfg.model.model_set, cfg.generator.structure = str(path), True
        cfg.generator.matmul_dtype = "float32"
        cfg.train.num_devices, cfg.train.steps, cfg.train.log_every = n, 4, 1
        exp = config_lib.from_config_dict(cfg)
        setup = members.make_multi_setup(exp, tasks.load_dataset(exp))[0]
        r = train.run(exp, tmp / f"set{n}", progress=False)
        out[f"set{n}"] = {"mesh": setup.mesh.size if setup.mesh else 1,
                          "metric": r["hold_in_test_metric"], "losses": losses(tmp / f"set{n}")}
        mcfg = load_config("multitask")
        mcfg.tasks, mcfg.probs = ("test", str(tmp / "karate.py")), (1.0, 1.0)
        mcfg.generator.hidden, mcfg.generator.n_freqs = 16, 32
        mcfg.generator.matmul_dtype = "float32"
        mcfg.train.steps, mcfg.train.warmup_steps, mcfg.train.init_steps = 4, 0, 2
        mcfg.train.num_devices, mcfg.train.log_every = n, 1
        r = multitask.run(mcfg, tmp / f"multi{n}", progress=False)
        out[f"multi{n}"] = {"metrics": [t["test_metric"] for t in r["tasks"]],
                            "losses": losses(tmp / f"multi{n}")}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_model_set_and_multitask_runs_on_8_devices_match_one_device(tmp_path):
    env = subprocess_env("--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _RUNS_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    # The model set keeps the mesh it was asked for (it used to drop it).
    assert out["set1"]["mesh"] == 1 and out["set8"]["mesh"] == 8
    # Same tolerances as the single-model check above: float32 reduction order only.
    np.testing.assert_allclose(out["set8"]["losses"], out["set1"]["losses"], rtol=1e-3)
    np.testing.assert_allclose(out["multi8"]["losses"], out["multi1"]["losses"], rtol=1e-3)
    assert out["set8"]["metric"] == pytest.approx(out["set1"]["metric"], abs=0.02)
    np.testing.assert_allclose(out["multi8"]["metrics"], out["multi1"]["metrics"], atol=0.02)
