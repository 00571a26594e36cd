"""Continual learning (uhn_jax.training.continual, hypernets.continual, hypernets.ewc): the
output regulariser, frozen task embeddings, the UHN generator on a task descriptor, the online
EWC penalty and Fisher, task inference, the accuracy matrix, resuming mid-task, multi-head runs,
a task outside the trained ones, the CLI. The config's checks are in test_continual_config.py,
the task sequences in test_continual_data.py."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIG_DIR, small_continual_config, subprocess_env

from uhn_jax.core import layouts
from uhn_jax.hypernets import continual as hnet_lib
from uhn_jax.hypernets import ewc as ewc_lib
from uhn_jax.training import continual, continual_config, experiments
from uhn_jax.training import workdir as workdir_lib

STEPS = 20  # per task
#: A beta large enough that the earlier tasks' generated weights barely move.
BIG_BETA = 10.0


def _flat(prep, params):
    return np.asarray(layouts.flatten(params, prep.setup.layout))


def _weights(prep, state, task):
    return _flat(prep, continual.task_params(prep, state, task))


def _assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- the kind


@pytest.mark.parametrize("generator", hnet_lib.GENERATORS)
def test_regulariser_is_zero_after_a_snapshot_and_grows_as_the_hypernetwork_moves(generator):
    prep = continual.prepare(
        continual.validate(small_continual_config(beta=1.0, generator=generator))
    )
    setup, kind = prep.setup, prep.setup.kind
    state = continual.init_state(prep)
    params, constants = state["params"], state["constants"]
    task = jnp.asarray(2, jnp.int32)
    snap = hnet_lib.snapshot(setup, params, constants, prep.cond, task)
    constants = {**constants, "task": task, "snapshot": snap}

    def reg(p, c=constants):
        return float(kind.extra_loss(setup, p, c, prep.cond, None)[1]["output_reg"])

    # Zero up to rounding: the snapshot and the loss are different compiled programs (the
    # UHN's, with a bfloat16 first layer on CPUs that have it, round more: ~1e-9 measured).
    assert reg(params) < {"chunked": 1e-10, "uhn": 1e-7}[generator]
    moved = jax.tree.map(lambda x: x + 0.01, params)

    def moved_weights(j):
        return hnet_lib.task_weights(setup, moved, constants, prep.cond, j)

    # The paper's form: the mean over the tasks before t of the squared L2 distance.
    by_hand = sum(
        float(jnp.sum((moved_weights(j) - constants["snapshot"][j]) ** 2)) for j in (0, 1)
    )
    assert reg(moved) > 1e-3
    np.testing.assert_allclose(reg(moved), by_hand / 2, rtol=1e-5)
    # Task 0 has nothing to keep: no regulariser whatever the snapshot.
    first = {**constants, "task": jnp.asarray(0, jnp.int32)}
    assert reg(moved, first) == 0.0


def test_only_the_current_task_embedding_gets_a_gradient():
    prep = continual.prepare(continual.validate(small_continual_config(beta=1.0)))
    setup, kind = prep.setup, prep.setup.kind
    state = continual.init_state(prep)
    task = jnp.asarray(1, jnp.int32)
    snap = hnet_lib.snapshot(setup, state["params"], state["constants"], prep.cond, task)
    constants = {**state["constants"], "task": task, "snapshot": snap}
    ds = prep.tasks.task(1)
    x, y = jnp.asarray(ds.x_train[:16]), jnp.asarray(ds.y_train[:16])

    def loss(p):
        moved = {**p, "hnet": jax.tree.map(lambda a: a * 1.01, p["hnet"])}  # reg > 0
        logits, aux = kind.forward(setup, moved, constants, prep.cond, x)
        ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y])
        return ce + kind.extra_loss(setup, moved, constants, prep.cond, aux)[0]

    grads = jax.jit(jax.grad(loss))(state["params"])
    g = np.asarray(grads["task_embeddings"])
    assert np.all(g[[0, 2]] == 0.0) and np.abs(g[1]).sum() > 0
    assert np.abs(np.asarray(grads["chunk_embeddings"])).sum() > 0
    assert all(np.abs(np.asarray(v)).sum() > 0 for v in jax.tree.leaves(grads["hnet"]))


def test_chunks_cover_the_target_and_start_at_its_init_scale():
    prep = continual.prepare(continual.validate(small_continual_config()))
    setup, state = prep.setup, continual.init_state(prep)
    params, constants = state["params"], state["constants"]
    n, s = setup.layout.size, setup.continual
    assert params["chunk_embeddings"].shape == (-(-n // s.chunk_size), s.chunk_embedding_size)
    assert params["task_embeddings"].shape == (3, s.embedding_size)
    w = np.asarray(hnet_lib.task_weights(setup, params, constants, prep.cond, 0))
    assert w.shape == (n,)
    target = np.sqrt(np.mean(_flat(prep, setup.model.init(jax.random.key(0))) ** 2))
    assert 0.5 * target < w.std() < 2.0 * target
    # Different tasks, different networks.
    assert not np.allclose(w, hnet_lib.task_weights(setup, params, constants, prep.cond, 1))


# ----------------------------------------------------------------------------- the UHN generator


def _uhn_prep(**kwargs):
    return continual.prepare(continual.validate(small_continual_config(generator="uhn", **kwargs)))


def test_uhn_generator_makes_every_weight_of_every_task_from_a_task_descriptor():
    prep = _uhn_prep()
    setup, state = prep.setup, continual.init_state(prep)
    params, constants = state["params"], state["constants"]
    n = setup.layout.size
    assert set(params) == {"generator"}  # every parameter shared: no per-task embedding
    assert state["constants"]["generator"]["index_B"].shape == (10, 32)
    # Task t's descriptor is the model's structure input with dataset_type = t; the declared
    # range of that field covers every task from the first step.
    descs = hnet_lib.task_descriptors(setup.model, setup.layout, 3)
    s_TL = np.asarray(hnet_lib.task_structures(prep.cond.structure, 3))
    for t, desc in enumerate(descs):
        np.testing.assert_array_equal(s_TL[t], desc.structure_input)
    col, ranges = hnet_lib.TASK_COLUMN, setup.gen.structure_ranges
    assert hnet_lib.TASK_FIELD == "dataset_type" and (ranges.lo[col], ranges.hi[col]) == (0, 2)
    # Every weight of every task; a task's row is its own generation.
    w_TN = np.asarray(hnet_lib.all_weights(setup, params, constants, prep.cond, 0))
    assert w_TN.shape == (3, n) and np.all(np.isfinite(w_TN))
    w1 = hnet_lib.task_weights(setup, params, constants, prep.cond, 1)
    np.testing.assert_allclose(w_TN[1], w1, rtol=1e-5, atol=1e-6)
    # The head starts rescaled to the target's init scale, centred.
    target = np.sqrt(np.mean(_flat(prep, setup.model.init(jax.random.key(0))) ** 2))
    assert abs(w_TN[0].mean()) < 0.05 * target and 0.9 * target < w_TN[0].std() < 1.1 * target
    # The structure path starts as a no-op: at step 0 every task has the same network.
    np.testing.assert_array_equal(w_TN[0], w_TN[2])
    with pytest.raises(ValueError, match=r"task must be an int in \[0, 3\)"):
        hnet_lib.task_weights(setup, params, constants, prep.cond, 3)


def test_uhn_regulariser_is_zero_at_the_snapshot_and_positive_after_a_step():
    """Two steps per task through the driver's step function: the first step of task 1 sees
    its snapshot (no regulariser), the second the weights one update moved; by then the tasks
    have different networks."""
    prep = _uhn_prep(beta=1.0, steps=2)
    state, fn = continual.init_state(prep), continual.step_fn(prep)
    regs = []
    for step in range(4):
        state, metrics, labels = fn(step, state)
        regs.append(float(metrics["output_reg"]))
        assert labels["task"] == step // 2
    assert regs[:2] == [0.0, 0.0]  # task 0: nothing to keep
    assert regs[2] < 1e-7  # the snapshot itself, up to the rounding of another program
    assert regs[3] > 1e-5 and regs[3] > 100 * regs[2]
    # Only task 0 is kept while task 1 trains.
    np.testing.assert_array_equal(np.asarray(state["constants"]["snapshot"][1:]), 0.0)
    w = [_weights(prep, state, t) for t in (0, 1)]
    assert not np.allclose(w[0], w[1], atol=1e-4)


@pytest.mark.slow
def test_uhn_run_writes_the_accuracy_matrix_and_resumes_bit_identically(tmp_path):
    steps = 4
    cfg = small_continual_config(generator="uhn", steps=steps)
    cfg.continual.task_inference = True
    cfg.train.checkpoint_every = steps
    first = continual.run(cfg, tmp_path / "a", progress=False, stop_after=steps + steps // 2)
    assert first == {"step": steps + steps // 2, "accuracy_matrix": None}  # inside task 1
    resumed = continual.run(cfg, tmp_path / "a", progress=False)
    prep, end = continual.load_state(cfg, tmp_path / "a")
    full = continual.run(cfg, tmp_path / "b", progress=False)
    _, end_full = continual.load_state(cfg, tmp_path / "b")
    _assert_trees_equal(end, end_full)
    assert {**resumed, "wall_s": 0} == {**full, "wall_s": 0}

    out = json.loads((tmp_path / "a" / "results.json").read_text())
    assert out["mode"] == "hnet_uhn" and out["hnet_generator"] == "uhn" and out["beta"] == BIG_BETA
    a = out["accuracy_matrix"]
    assert [len(row) for row in a] == [3, 3, 3]
    assert all((a[i][j] is None) == (j > i) for i in range(3) for j in range(3))
    assert all(0.0 <= a[i][j] <= 1.0 for i in range(3) for j in range(i + 1))
    assert out["mean_final_accuracy"] == pytest.approx(np.mean(a[2]))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(end["params"]["generator"]))
    assert out["num_generator_params"] == out["num_trained_params"] == count == 4513
    assert out["numerics"]["matmul_dtype"] in ("float32", "bfloat16")
    assert out["task_inference"]["num_tasks"] == 3
    assert "hnet_uhn on split digits" in continual.format_results(out)


def test_a_workdir_saved_before_the_generator_option_still_resumes(tmp_path):
    cfg = small_continual_config().to_dict()
    old = json.loads(json.dumps(cfg))
    del old["generator"], old["hnet"]["generator"]
    (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))
    continual._check_workdir(cfg, tmp_path)  # an older chunked run: accepted
    with pytest.raises(workdir_lib.WorkdirError, match="fields differ: hnet.generator"):
        continual._check_workdir(small_continual_config(generator="uhn").to_dict(), tmp_path)


# ----------------------------------------------------------------------------- the driver


@pytest.mark.slow
def test_hnet_run_resumes_bit_identically_and_keeps_earlier_tasks(tmp_path):
    """One resumed hnet run (stopped at the end of task 0 and inside task 2), the same run
    uninterrupted, and a beta=0 run: every check of the driver in one test, so pytest-xdist
    does not compile it on both workers."""
    cfg = small_continual_config()
    cfg.continual.task_inference = True
    split = tmp_path / "split"
    continual.run(cfg, split, progress=False, stop_after=STEPS)
    prep, end0 = continual.load_state(cfg, split)
    first = continual.run(cfg, split, progress=False, stop_after=2 * STEPS + STEPS // 2)
    assert first == {"step": 2 * STEPS + STEPS // 2, "accuracy_matrix": None}
    _, mid2 = continual.load_state(cfg, split)
    resumed = continual.run(cfg, split, progress=False)
    _, end = continual.load_state(cfg, split)
    full = continual.run(cfg, tmp_path / "full", progress=False)
    _, end_full = continual.load_state(cfg, tmp_path / "full")

    # Resumed at a task boundary and inside a task: the same arrays as without a stop.
    _assert_trees_equal(end, end_full)
    assert {**resumed, "wall_s": 0} == {**full, "wall_s": 0}

    # Earlier embeddings are frozen; the current one trains; later ones wait untrained.
    e0, e_mid, e_end = (np.asarray(s["params"]["task_embeddings"]) for s in (end0, mid2, end))
    init = np.asarray(continual.init_state(prep)["params"]["task_embeddings"])
    np.testing.assert_array_equal(e0[1:], init[1:])
    np.testing.assert_array_equal(e_end[0], e0[0])
    np.testing.assert_array_equal(e_end[1], e_mid[1])
    assert not np.array_equal(e_mid[1], e0[1]) and not np.array_equal(e_end[2], e_mid[2])

    _check_results(full, split)
    _check_task_inference(prep, end, full)
    _check_beta_keeps_earlier_weights(tmp_path, prep, end0, end)


def _check_results(out, workdir):
    assert out["mode"] == "hnet" and out["benchmark"] == "split" and out["num_tasks"] == 3
    a = out["accuracy_matrix"]
    assert [len(row) for row in a] == [3, 3, 3]
    assert all(a[i][j] is None for i in range(3) for j in range(3) if j > i)
    assert all(0.0 <= a[i][j] <= 1.0 for i in range(3) for j in range(i + 1))
    assert out["final_accuracies"] == a[2]
    assert out["mean_final_accuracy"] == pytest.approx(np.mean(a[2]))
    assert out["bwt"] == pytest.approx(np.mean([a[2][0] - a[0][0], a[2][1] - a[1][1]]))
    assert out["mean_final_accuracy"] > 0.8  # 2-way digit pairs: well above chance
    assert out["num_generator_params"] == out["num_trained_params"] > 0
    assert out["test_metric"] == out["mean_final_accuracy"]
    assert "| hnet mlp-32x32 | digits |" in experiments.runs_table([out])  # uhn-jax summarize
    # Each task's end logs its accuracy row, the same values as the matrix.
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    ends = [r for r in log if "task_done" in r]
    assert [r["task_done"] for r in ends] == [0, 1, 2]
    assert ends[1]["test_accuracy_task0"] == pytest.approx(a[1][0])


def _check_task_inference(prep, state, out):
    """Task inference on a finished run: valid task ids, and results.json's scores are the
    entropy rule's on every task's test split."""
    x = prep.tasks.task(1).x_test
    ids = continual.infer_tasks(prep, state, x)
    assert ids.shape == (len(x),) and np.issubdtype(ids.dtype, np.integer)
    assert ids.min() >= 0 and ids.max() < 3
    logits = continual.task_logits(prep, state, x)
    assert logits.shape == (3, len(x), 2)
    # Each task's slice is its own network's output (the task id given).
    own = np.asarray(prep.setup.model.apply(continual.task_params(prep, state, 1), x))
    np.testing.assert_allclose(logits[1], own, rtol=1e-5, atol=1e-5)
    ti = out["task_inference"]
    assert ti == continual.task_inference_accuracy(prep, state)
    assert ti["num_tasks"] == 3 and len(ti["task_accuracies"]) == len(ti["accuracies"]) == 3
    assert 0.0 <= ti["accuracy"] <= ti["task_accuracy"] <= 1.0
    assert ti["task_accuracies"][1] == pytest.approx(np.mean(ids == 1))


def _drift(prep, before, after, task):
    w0, w1 = _weights(prep, before, task), _weights(prep, after, task)
    return np.linalg.norm(w1 - w0) / np.linalg.norm(w0)


def _check_beta_keeps_earlier_weights(tmp_path, prep, end0, end):
    """With a large beta task 0's generated weights barely move while tasks 1 and 2 train;
    without the regulariser (beta = 0) they drift."""
    cfg = small_continual_config(beta=0.0)
    free = tmp_path / "beta0"
    continual.run(cfg, free, progress=False, stop_after=STEPS)
    prep0, free_end0 = continual.load_state(cfg, free)
    continual.run(cfg, free, progress=False)
    _, free_end = continual.load_state(cfg, free)
    kept, drifted = _drift(prep, end0, end, 0), _drift(prep0, free_end0, free_end, 0)
    # Measured (relative L2 change of task 0's weights): 0.029 at beta 10, 0.39 at beta 0.
    assert drifted > 0.2, drifted
    assert kept < 0.15 * drifted, (kept, drifted)


@pytest.mark.slow
def test_baselines_finetune_shares_one_network_and_separate_banks_one_per_task(tmp_path):
    cfg = small_continual_config("finetune")
    out = continual.run(cfg, tmp_path / "ft", progress=False)
    prep, state = continual.load_state(cfg, tmp_path / "ft")
    assert out["mode"] == "finetune" and out["num_generator_params"] == 0
    assert out["num_trained_params"] == out["num_target_params"] == prep.setup.layout.size
    assert experiments.trained_params(out) == out["num_target_params"]
    # One network (with one 2-way head) answers every task.
    np.testing.assert_array_equal(_weights(prep, state, 0), _weights(prep, state, 2))
    assert len(out["accuracy_matrix"]) == 3 and out["bwt"] is not None

    cfg = small_continual_config("separate")
    cfg.continual.task_inference = True
    sep = tmp_path / "sep"
    continual.run(cfg, sep, progress=False, stop_after=STEPS)
    prep, end0 = continual.load_state(cfg, sep)
    out = continual.run(cfg, sep, progress=False)
    _, end = continual.load_state(cfg, sep)
    assert out["num_trained_params"] == 3 * out["num_target_params"]
    # Task 0 is answered by the network its own task trained, kept unchanged.
    np.testing.assert_array_equal(_weights(prep, end, 0), _weights(prep, end0, 0))
    assert not np.array_equal(_weights(prep, end, 0), _weights(prep, end, 1))
    assert out["accuracy_matrix"][2][0] == out["accuracy_matrix"][0][0]
    # Three networks to choose from: the right task well above chance (1/3).
    assert out["task_inference"]["task_accuracy"] > 0.5, out["task_inference"]


def test_accuracy_summary_backward_transfer():
    a = [[0.9, -1, -1], [0.7, 0.8, -1], [0.6, 0.75, 0.95]]
    out = continual.accuracy_summary(a)
    assert out["final_accuracies"] == [0.6, 0.75, 0.95]
    assert out["mean_final_accuracy"] == pytest.approx((0.6 + 0.75 + 0.95) / 3)
    assert out["bwt"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert continual.accuracy_summary([[0.5]])["bwt"] is None
    with pytest.raises(ValueError, match="square"):
        continual.accuracy_summary([[0.5, 0.2]])


# ----------------------------------------------------------------------------- online EWC


def _ewc_prep(lam=2.0, gamma=0.5):
    cfg = small_continual_config("ewc")
    cfg.ewc.lam, cfg.ewc.gamma = lam, gamma
    return continual.prepare(continual.validate(cfg))


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it_weighted_by_fisher():
    prep = _ewc_prep(lam=2.0, gamma=0.5)
    setup, kind = prep.setup, prep.setup.kind
    params = continual.init_state(prep)["params"]
    layout = setup.layout
    rng = np.random.default_rng(0)
    f_N = rng.uniform(0.0, 3.0, layout.size).astype(np.float32)
    f_N[: layout.size // 2] = 0.0  # weights the Fisher calls unimportant cost nothing
    constants = {
        "fisher": layouts.unflatten(jnp.asarray(f_N), layout),
        "anchor": jax.tree.map(jnp.copy, params),
    }

    def loss(d_N):
        moved = layouts.unflatten(_flat(prep, params) + d_N, layout)
        value, metrics = kind.extra_loss(setup, moved, constants, prep.cond, None)
        return float(value), float(metrics["ewc_penalty"])

    assert loss(np.zeros(layout.size, np.float32)) == (0.0, 0.0)
    d_N = rng.normal(size=layout.size).astype(np.float32) * 0.1
    value, pen = loss(d_N)
    # lam/2 * sum gamma * F * (theta - theta*)^2, the penalty metric without lam.
    by_hand = 0.5 * 0.5 * float(np.sum(f_N.astype(np.float64) * d_N.astype(np.float64) ** 2))
    np.testing.assert_allclose(pen, by_hand, rtol=1e-5)
    np.testing.assert_allclose(value, 2.0 * by_hand, rtol=1e-5)
    np.testing.assert_allclose(loss(3 * d_N)[1], 9 * pen, rtol=1e-5)  # quadratic
    unimportant = d_N.copy()
    unimportant[layout.size // 2 :] = 0.0
    assert loss(unimportant) == (0.0, 0.0)


def test_fisher_is_the_expected_squared_score_and_accumulates_with_gamma():
    prep = _ewc_prep()
    setup, params = prep.setup, continual.init_state(prep)["params"]
    x = jnp.asarray(prep.tasks.task(0).x_train[:37])  # not a multiple of the chunk size
    fisher = ewc_lib.fisher_diagonal(setup, params, prep.cond, x)

    def log_p(p, xi, c):
        return jax.nn.log_softmax(setup.model.apply(p, xi[None])[0])[c]

    by_hand = np.zeros(setup.layout.size)
    for xi in x:
        prob = np.exp([float(log_p(params, xi, c)) for c in (0, 1)])
        for c in (0, 1):
            by_hand += prob[c] * _flat(prep, jax.grad(log_p)(params, xi, c)) ** 2
    np.testing.assert_allclose(_flat(prep, fisher), by_hand / len(x), rtol=1e-4, atol=1e-9)
    assert _flat(prep, fisher).min() >= 0.0 and _flat(prep, fisher).max() > 0.0
    twice = ewc_lib.accumulate(fisher, fisher, 0.5)
    np.testing.assert_allclose(_flat(prep, twice), 1.5 * _flat(prep, fisher), rtol=1e-6)


@pytest.mark.slow
def test_ewc_run_resumes_bit_identically_accumulates_the_fisher_and_forgets_less(tmp_path):
    """An ewc run with a large lam, stopped at the ends of tasks 0 and 1 and inside task 2,
    equals its uninterrupted copy; its constants hold gamma * F_0 + F_1 and the params at the
    end of task 1; task 0's accuracy drops less than fine-tuning's."""
    steps, gamma = 40, 0.5
    cfg = small_continual_config("ewc", steps=steps)
    cfg.ewc.lam, cfg.ewc.gamma = 1e4, gamma
    work = tmp_path / "ewc"
    continual.run(cfg, work, progress=False, stop_after=steps)
    prep, end0 = continual.load_state(cfg, work)
    continual.run(cfg, work, progress=False, stop_after=2 * steps)
    _, end1 = continual.load_state(cfg, work)
    continual.run(cfg, work, progress=False, stop_after=2 * steps + steps // 2)
    _, mid2 = continual.load_state(cfg, work)
    out = continual.run(cfg, work, progress=False)
    _, end = continual.load_state(cfg, work)
    full = continual.run(cfg, tmp_path / "full", progress=False)
    _, end_full = continual.load_state(cfg, tmp_path / "full")
    _assert_trees_equal(end, end_full)
    assert {**out, "wall_s": 0} == {**full, "wall_s": 0}
    assert out["mode"] == "ewc" and out["num_trained_params"] == out["num_target_params"]
    assert out["ewc"]["lam"] == 1e4 and out["ewc"]["fisher_examples"] == 200

    def fisher_of(state, task):
        x = continual.fisher_inputs(prep, task)
        return _flat(prep, ewc_lib.fisher_diagonal(prep.setup, state["params"], prep.cond, x))

    f0, f1 = fisher_of(end0, 0), fisher_of(end1, 1)
    np.testing.assert_allclose(
        _flat(prep, mid2["constants"]["fisher"]), gamma * f0 + f1, rtol=1e-6, atol=1e-12
    )
    _assert_trees_equal(mid2["constants"]["anchor"], end1["params"])
    assert not np.array_equal(_flat(prep, mid2["params"]), _flat(prep, end1["params"]))

    ft = continual.run(
        small_continual_config("finetune", steps=steps), tmp_path / "ft", progress=False
    )

    def drop(a):  # task 0's mean loss of accuracy after the later tasks
        return a[0][0] - np.mean([a[1][0], a[2][0]])

    # Measured: 0 pp (ewc, lam 1e4) and 11.1 pp (finetune) at 40 steps per task.
    assert drop(ft["accuracy_matrix"]) > 0.05, ft["accuracy_matrix"]
    assert drop(out["accuracy_matrix"]) < 0.5 * drop(ft["accuracy_matrix"])


# ----------------------------------------------------------------------------- task inference


def test_entropy_rule_and_inference_scores_on_a_hand_made_case():
    # 2 tasks x 4 examples x 2 classes: task 0's network is sure of examples 0 and 1, task 1's
    # of examples 2 and 3 (example 3 is an exact tie between the tasks: the lower id wins).
    logits = np.array(
        [
            [[5.0, 0.0], [0.0, 4.0], [0.2, 0.0], [3.0, 0.0]],
            [[0.1, 0.0], [0.0, 0.3], [0.0, 6.0], [0.0, 3.0]],
        ]
    )
    task, cls = continual.entropy_rule(logits)
    np.testing.assert_array_equal(task, [0, 0, 1, 0])
    np.testing.assert_array_equal(cls, [0, 1, 1, 0])
    # True tasks 0, 0, 1, 1 with labels 0, 0, 1, 0: example 1 has the right task and the
    # wrong class, example 3 the wrong task.
    scores = continual.inference_scores([0, 0, 1, 1], [0, 0, 1, 0], task, cls)
    assert scores == {
        "task_accuracy": 0.75,
        "accuracy": 0.5,
        "task_accuracies": [1.0, 0.5],
        "accuracies": [0.5, 0.5],
    }
    with pytest.raises(ValueError, match=r"logits must have shape \(tasks, examples, classes\)"):
        continual.entropy_rule(logits[0])
    with pytest.raises(ValueError, match="y_N must be a non-empty 1-D array like task_N"):
        continual.inference_scores([0, 1], [0], [0, 1], [0, 1])


def test_task_inference_refuses_one_network_no_task_and_bad_inputs():
    prep = continual.prepare(continual.validate(small_continual_config("finetune")))
    with pytest.raises(ValueError, match="method 'finetune' has one network for every task"):
        continual.infer_tasks(prep, continual.init_state(prep), prep.tasks.task(0).x_test)
    prep = continual.prepare(continual.validate(small_continual_config("separate")))
    state = continual.init_state(prep)
    x = prep.tasks.task(0).x_test
    with pytest.raises(ValueError, match="state has trained no task yet"):
        continual.task_inference_accuracy(prep, state)
    state = {**state, "step": jnp.asarray(STEPS + 1)}  # inside task 1: tasks 0 and 1 trained
    assert continual.task_logits(prep, state, x).shape == (2, len(x), 2)
    with pytest.raises(ValueError, match=r"x inputs must have shape \(B, \*input_shape\)"):
        continual.infer_tasks(prep, state, x.reshape(len(x), -1)[:, :10])


@pytest.mark.parametrize("method", ["finetune", "ewc"])
def test_multi_head_run_gives_every_task_its_head(tmp_path, method):
    cfg = small_continual_config(method, steps=10)
    cfg.continual.multi_head = True
    out = continual.run(cfg, tmp_path / method, progress=False)
    assert out["mode"] == f"{method}_multihead" and out["multi_head"] is True
    prep, state = continual.load_state(cfg, tmp_path / method)
    assert prep.setup.head_size == 2 and prep.tasks.num_classes == 6  # 3 tasks x 2
    assert continual.task_params(prep, state, 0)[prep.setup.model.name(2)]["bias"].shape == (6,)
    acc = np.array(out["accuracy_matrix"], dtype=float)
    assert np.all(np.isfinite(np.diag(acc))) and np.diag(acc).min() > 0.5
    bad = continual_config.as_dict(cfg)
    bad["continual"]["multi_head"] = 1
    with pytest.raises(ValueError, match="continual.multi_head must be True or False, got 1"):
        continual.validate(bad)
    cfg.continual.task_inference = True
    cfg.method = "separate"
    with pytest.raises(ValueError, match="continual.multi_head gives every task its own"):
        continual.validate(cfg)


# ----------------------------------------------------------------------------- bad input


def test_evaluating_a_task_outside_the_trained_tasks_names_it(tmp_path):
    cfg = small_continual_config("finetune")
    cfg.continual.steps_per_task = 2
    prep = continual.prepare(continual.validate(cfg))
    with pytest.raises(ValueError, match=r"task 0 is outside the trained tasks .*no task yet"):
        continual.evaluate_task(prep, continual.init_state(prep), 0)
    continual.run(cfg, tmp_path, progress=False, stop_after=3)  # inside task 1
    prep, state = continual.load_state(cfg, tmp_path)
    assert 0.0 <= continual.evaluate_task(prep, state, 1) <= 1.0
    with pytest.raises(ValueError, match=r"task 2 is outside the trained tasks .*tasks 0..1"):
        continual.evaluate_task(prep, state, 2)
    with pytest.raises(ValueError, match="task -1 is outside"):
        continual.task_params(prep, state, -1)
    # The workdir refuses another config, naming the field.
    cfg.hnet.beta = 0.5
    with pytest.raises(workdir_lib.WorkdirError, match="fields differ: hnet.beta"):
        continual.run(cfg, tmp_path, progress=False)


def test_cli_trains_prints_the_matrix_and_refuses_a_bad_field_in_one_line(tmp_path):
    config = f"--config={CONFIG_DIR / 'continual.py'}:split,digits"
    small = [
        "--config.continual.num_tasks=2", "--config.continual.steps_per_task=10",
        "--config.train.warmup_steps=2", "--progress=false",
    ]  # fmt: skip

    def cli(*args):
        cmd = [sys.executable, "-m", "uhn_jax.cli", "continual", config, *small, *args]
        env = subprocess_env()
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    proc = cli(f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(out["accuracy_matrix"]) == 2 and out["mode"] == "hnet"
    assert "after task" in proc.stdout and "mean final accuracy" in proc.stdout
    assert f"{100 * out['mean_final_accuracy']:.2f} %" in proc.stdout
    bad = cli(f"--workdir={tmp_path / 'bad'}", "--config.hnet.beta=-1")
    assert bad.returncode != 0 and "hnet.beta" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written
