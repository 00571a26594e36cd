"""SNE and its baselines (issue 26, part 2): tokens and predictions exactly invariant to
permuting hidden units, chunk padding, weight statistics on a hand-made network, task splits,
config errors, and an end-to-end run on a small zoo that resumes.

The zoo of the end-to-end tests is written with the zoo's own writer from freshly initialised
digits MLPs and HaCNNs whose weights are scaled per network and snapshot, with a test accuracy
that is a function of the scale (training a real zoo would take most of this file's time).
"""

import json

import jax
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from scipy import stats as scipy_stats

from uhn_jax import models
from uhn_jax.analysis import figures
from uhn_jax.models.ha_cnn import HaCNN
from uhn_jax.training import predictor, sne_config, sne_report
from uhn_jax.training import sne as experiment
from uhn_jax.weightspace import chunking, sne, splits, statistics
from uhn_jax.weightspace import zoo as store

SETTINGS = sne.Settings(dim=16, heads=2, inducing=4, hidden=16, chunk_features=8)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _permute(params, layer, units=None, inputs=None, positions=1):
    """``params`` with ``layer``'s output units (kernel's last axis, every per-unit leaf)
    and/or input units (the kernel's input axis, ``positions`` per input when flattened with
    channels last) permuted."""
    p = {k: dict(v) for k, v in params.items()}
    m = p[layer]
    if units is not None:
        m["kernel"] = m["kernel"][..., units]
        m["bias"] = m["bias"][units]
    if inputs is not None:
        k = m["kernel"]
        if k.ndim == 4:
            m["kernel"] = k[:, :, inputs, :]
        else:  # a dense kernel reading positions x channels (channels last)
            n = len(inputs)
            m["kernel"] = k.reshape(positions, n, -1)[:, inputs].reshape(k.shape)
    return p


def _mlp_and_permuted():
    model = models.MLP(input_shape=(8, 8), num_classes=10, widths=(8, 8, 6))
    p = _np(model.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    a, b = rng.permutation(8), rng.permutation(6)  # layers 0 and 1 share a (a residual skip)
    q = _permute(p, "layer_000", units=a)
    q = _permute(q, "layer_001", units=a, inputs=a)
    q = _permute(q, "layer_002", units=b, inputs=a)
    q = _permute(q, "layer_003", inputs=b)
    return model, p, q


def _ha_cnn_and_permuted():
    model = HaCNN((8, 8), 10, channels=4, channels_2=6, kernel_size=3, hidden=(5,))
    p = _np(model.init(jax.random.key(1)))
    rng = np.random.default_rng(1)
    a, b, c = rng.permutation(4), rng.permutation(6), rng.permutation(5)
    q = _permute(p, "layer_000", units=a)
    q = _permute(q, "layer_001", units=b, inputs=a)
    q = _permute(q, "layer_002", units=c, inputs=b, positions=4)  # a 2 x 2 x 6 map
    q = _permute(q, "layer_003", inputs=c)
    return model, p, q


def _assert_same_tokens(t, u):
    for key in ("values", "layer", "chunk", "label", "roles", "summary"):
        np.testing.assert_array_equal(getattr(t, key), getattr(u, key), err_msg=key)


@pytest.fixture(scope="module")
def encode():
    """SNE's predictions for networks' tokens, padded to ``min_tokens`` tokens; at 128 the
    programs are those the end-to-end run (``configs/sne.py:digits_tiny``) compiles."""
    net, params = sne.SNE(SETTINGS), []

    def fn(tokens, min_tokens=128):
        def make(idx):
            batch = [tokens[i] for i in idx]
            return chunking.collate(batch, max_layers=8, max_classes=10, min_tokens=min_tokens)

        inputs = predictor.Inputs(np.zeros(len(tokens), np.float32), make)
        if not params:
            params.append(predictor.init_state(net, predictor.Settings(), inputs, 0)["params"])
        return predictor.predict(net, params[0], inputs, batch_size=8)

    return fn


@pytest.mark.parametrize("build", [_mlp_and_permuted, _ha_cnn_and_permuted])
def test_tokens_and_prediction_are_exactly_invariant_to_permuted_hidden_units(build, encode):
    model, p, q = build()
    x = np.random.default_rng(2).normal(size=(5, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.apply(p, x), model.apply(q, x), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(p["layer_001"]["kernel"], q["layer_001"]["kernel"])
    t, u = chunking.tokenize(p, 8), chunking.tokenize(q, 8)
    _assert_same_tokens(t, u)
    # What is not a symmetry changes the tokens: the classes' order, the pixels' order.
    swapped = _permute(p, "layer_003", units=np.r_[1, 0, 2:10])
    others = [swapped]
    if isinstance(model, models.MLP):
        others.append(_permute(p, "layer_000", inputs=np.arange(64)[::-1]))
    for other in others:
        assert not np.array_equal(chunking.tokenize(other, 8).values, t.values)
    pred = encode([t, u, chunking.tokenize(swapped, 8)])
    assert pred[0] == pred[1] and pred[0] != pred[2], pred
    assert 0 < pred[0] < 1


def test_sne_ignores_padding_and_the_order_of_tokens_and_of_a_batch(encode):
    _, p, _ = _mlp_and_permuted()
    _, h, _ = _ha_cnn_and_permuted()
    t, u = chunking.tokenize(p, 8), chunking.tokenize(h, 8)
    assert max(t.num_tokens, u.num_tokens) <= 128
    pred = encode([t, u])
    np.testing.assert_allclose(encode([u, t]), pred[::-1], rtol=1e-6)
    np.testing.assert_allclose(encode([u], min_tokens=256), pred[1:], rtol=1e-5)  # more padding
    # SNE itself is a set function: tokens in another order give the same prediction (up to
    # float rounding; the canonical order of the tokens makes it exact).
    order = np.random.default_rng(3).permutation(t.num_tokens)
    shuffled = chunking.Tokens(
        **{k: getattr(t, k)[order] for k in ("values", "layer", "chunk", "label")},
        roles=t.roles,
        summary=t.summary,
        layer_names=t.layer_names,
        num_params=t.num_params,
    )
    np.testing.assert_allclose(encode([shuffled, u]), pred, rtol=1e-5)


def test_chunks_are_padded_per_unit_and_batches_to_a_power_of_two():
    k0 = np.arange(15, dtype=np.float32).reshape(3, 5)  # 3 inputs -> 5 units
    b0 = 100 + np.arange(5, dtype=np.float32)
    k1 = np.ones((5, 2), np.float32)
    params = {
        "layer_000": {"kernel": k0, "bias": b0},
        "layer_001": {"kernel": k1, "bias": np.zeros(2)},
    }
    t = chunking.tokenize(params, 3)
    # Layer 0: each unit's [3 weights, bias] -> 2 chunks; units in lexicographic order.
    assert t.values.shape == (5 * 2 + 2 * 2, 3)
    np.testing.assert_array_equal(t.values[0], k0[:, 0])
    np.testing.assert_array_equal(t.values[1], [b0[0], 0, 0])
    np.testing.assert_array_equal(t.chunk[:4], [0, 1, 0, 1])
    np.testing.assert_array_equal(t.layer, [0] * 10 + [1] * 4)
    np.testing.assert_array_equal(t.label, [0] * 10 + [1, 1, 2, 2])  # the classes' tokens
    assert t.roles.shape == (2, len(chunking.ROLE_FEATURES))
    np.testing.assert_array_equal(t.roles[:, :3], [[0, 1, 0], [0, 0, 1]])  # dense, first, last
    assert chunking.tokenize(params, 4).values.shape == (5 + 2 * 2, 4)  # 4 values fit 1 chunk
    batch = chunking.collate([t, chunking.tokenize(params, 3)], max_layers=3, max_classes=2)
    assert batch["values"].shape == (2, 16, 3) and batch["mask"].sum() == 28
    np.testing.assert_array_equal(batch["layer_mask"][0], [True, True, False])
    np.testing.assert_array_equal(batch["depth"][0, :2], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"layer_000 \(dense, 1 positions x 3 inputs .* 10 tokens"):
        chunking.tokenize(params, 3, max_tokens_per_layer=8)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunking.tokenize(params, 0)
    with pytest.raises(ValueError, match="layer_001: fan-in 7 is not a multiple"):
        chunking.tokenize({**params, "layer_001": {"kernel": np.ones((7, 2))}}, 3)
    with pytest.raises(ValueError, match="'layer_001' is not a layer module"):
        chunking.tokenize({**params, "layer_001": np.ones(3)}, 3)
    with pytest.raises(ValueError, match="exceeds max_classes=1"):
        chunking.collate([t], max_layers=3, max_classes=1)


def test_statistics_of_a_hand_made_network():
    def layer(n_in, n_out, start):
        kernel = np.arange(start, start + n_in * n_out, dtype=np.float32).reshape(n_in, n_out)
        return {"kernel": kernel, "bias": -np.arange(n_out, dtype=np.float32)}

    params = {
        "layer_000": layer(2, 2, 1),  # kernel 1..4, bias 0, -1
        "layer_001": layer(2, 2, 5),  # hidden: kernels 5..8 and 9..14 pooled
        "layer_002": layer(2, 3, 9),
        "layer_003": layer(3, 1, 0),  # kernel 0, 1, 2; bias 0
    }
    f = dict(zip(statistics.FEATURE_NAMES, statistics.features(params), strict=True))
    first = [f[f"first_kernel_{s}"] for s in statistics.STATS]
    np.testing.assert_allclose(first, [2.5, 1.25, 1, 1.75, 2.5, 3.25, 4])
    np.testing.assert_allclose([f["first_bias_mean"], f["first_bias_q0"]], [-0.5, -1])
    hidden = [f[f"hidden_kernel_{s}"] for s in ("mean", "q0", "q50", "q100")]
    np.testing.assert_allclose(hidden, [9.5, 5, 9.5, 14])  # 5..14 pooled
    np.testing.assert_allclose(f["hidden_bias_mean"], (0 - 1 + 0 - 1 - 2) / 5, rtol=1e-6)
    np.testing.assert_allclose([f["last_kernel_var"], f["last_bias_q100"]], [2 / 3, 0], rtol=1e-6)
    assert f["num_layers"] == 4 and f["has_hidden"] == 1
    np.testing.assert_allclose(f["log10_params"], np.log10(6 + 6 + 9 + 4), rtol=1e-6)
    short = {"layer_000": params["layer_002"], "layer_001": params["layer_003"]}
    two = dict(zip(statistics.FEATURE_NAMES, statistics.features(short), strict=True))
    assert two["has_hidden"] == 0 and two["hidden_kernel_q100"] == 0 and two["num_layers"] == 2
    with pytest.raises(ValueError, match="one layout"):
        statistics.flat_weights([params, {"layer_000": params["layer_000"]}])


def _records():
    out = []
    for net, (dataset, family, widths) in enumerate(
        [("mnist", "mlp", [8])] * 4
        + [("fashion", "mlp", [16])] * 3
        + [("mnist", "ha_cnn", [4])] * 3
        + [("cifar", "ha_cnn", [4])] * 2
    ):
        for snap in range(3):
            out.append(
                {
                    "id": f"n{net}/s{snap}",
                    "network": net,
                    "snapshot": snap,
                    "dataset": dataset,
                    "family": family,
                    "widths": widths,
                }
            )
    return out


def _task(name, kind, **fields):
    return sne_config.TaskSpec(name=name, kind=kind, **fields)


def test_splits_keep_a_network_on_one_side_and_cross_tasks_their_names():
    records = _records()
    nets = lambda idx: {records[i]["network"] for i in idx}  # noqa: E731
    same = _task("same", "same_zoo", test_fraction=0.3)
    s = splits.make_split(records, same, 0, 0.2)
    assert not (nets(s.train) & nets(s.test)) and not (nets(s.val) & (nets(s.train) | nets(s.test)))
    assert sorted(s.train + s.val + s.test) == list(range(len(records)))  # every snapshot placed
    assert (
        len(nets(s.test)) == 4 and len(nets(s.val)) == 2 and s.sizes(records)["test_records"] == 12
    )
    assert (
        splits.make_split(records, same, 0, 0.2) == s
        and splits.make_split(records, same, 1, 0.2) != s
    )
    cross = splits.make_split(
        records,
        _task("cd", "cross_dataset", train="mnist", test="fashion", families=("mlp",)),
        0,
        0.0,
    )
    assert {records[i]["dataset"] for i in cross.train} == {"mnist"} and not cross.val
    assert {records[i]["dataset"] for i in cross.test} == {"fashion"}
    assert {records[i]["family"] for i in cross.train + cross.test} == {"mlp"}
    arch = splits.make_split(
        records, _task("ca", "cross_architecture", train="mlp", test="ha_cnn"), 0, 0.25
    )
    assert {records[i]["family"] for i in arch.train + arch.val} == {"mlp"}
    assert {records[i]["family"] for i in arch.test} == {"ha_cnn"}
    assert {records[i]["dataset"] for i in arch.train + arch.val + arch.test} == {"mnist"}  # shared
    one = splits.make_split(records, _task("w", "same_zoo", widths=(8,)), 0, 0.0)
    assert nets(one.train + one.test) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"tasks\.cd\.test: dataset 'svhn' has no network"):
        splits.make_split(records, _task("cd", "cross_dataset", train="mnist", test="svhn"), 0, 0.1)
    with pytest.raises(ValueError, match=r"tasks\.e: the test side is empty"):
        splits.make_split(
            records,
            _task("e", "cross_dataset", train="mnist", test="cifar", families=("mlp",)),
            0,
            0.1,
        )


# ----------------------------------------------------------------------------- end to end


def _scaled_group(model, scale_MS, seed):
    """Params leaves ``(members, snapshots, *shape)``: member ``m``'s init times its scale."""
    nets = [
        jax.tree.map(lambda a, s=s: np.asarray(a) * s, model.init(jax.random.key(seed + m)))
        for m, row in enumerate(scale_MS)
        for s in row
    ]
    stacked = jax.tree.map(lambda *a: np.stack(a), *nets)
    return jax.tree.map(lambda a: a.reshape(*scale_MS.shape, *a.shape[1:]), stacked)


def _write_zoo(path, groups, missing=()):
    """A zoo of freshly initialised networks (``groups``: name -> (family, model fields, model,
    members)), every network's weights scaled per snapshot; test accuracy a function of the
    scale. ``missing`` groups are planned but never written (a partial zoo)."""
    data = {"name": "digits", "input_shape": [8, 8], "num_classes": 10, "dataset_type": 100}
    plan, first = [], 0
    for name, (family, _, _, members) in groups.items():
        plan.append(
            {
                "name": name,
                "population": name.split("-")[0],
                "dataset": "digits",
                "family": family,
                "members": members,
                "snapshots": 2,
                "first_network": first,
            }
        )
        first += members
    plan += [{**plan[0], "name": m} for m in missing]
    store.open_or_create(path, {"test": True}, plan)
    for g, (name, (family, fields, model, members)) in enumerate(groups.items()):
        u = np.random.default_rng(g).uniform(-1.0, 1.0, (members, 2))
        params = _scaled_group(model, np.exp(u), seed=10 * g)
        acc = (0.5 + 0.4 * np.tanh(u)).astype(np.float32)
        weights = {
            "params": params,
            "test_accuracy": acc,
            "train_accuracy": acc,
            "test_loss": acc,
            "train_loss": acc,
        }
        meta = {"group": name, "family": family, "dataset": "digits", "model": fields, "data": data}
        meta["records"] = [
            {
                "id": f"{name}/m{m:03d}/s{s}",
                "network": plan[g]["first_network"] + m,
                "member": m,
                "snapshot": s,
                "group": name,
                "dataset": "digits",
                "family": family,
                "widths": fields["widths"],
                "model": fields,
                "data": data,
                "test_accuracy": float(acc[m, s]),
            }
            for m in range(members)
            for s in range(2)
        ]
        store.write_group(path, name, weights, meta)


def _groups():
    mlp = {"family": "mlp", "widths": [8], "slope": 0.1, "dropout_rate": 0.0}
    ha = {"family": "ha_cnn", "widths": [4, 4], "kernel_size": 3, "head_hidden": []}
    return {
        "digits_mlp-0000": ("mlp", mlp, models.MLP((8, 8), 10, widths=(8,)), 6),
        "digits_mlp-0001": ("mlp", mlp, models.MLP((8, 8), 10, widths=(8,)), 6),
        "digits_ha_cnn-0000": ("ha_cnn", ha, HaCNN((8, 8), 10, channels=4, kernel_size=3), 6),
    }


def _config(path, **tasks):
    c = load_config("sne", f"digits_tiny,{path}")
    assert sne.Settings(**c.sne) == SETTINGS  # the compiled programs are shared
    c.train.checkpoint_every = 20
    c.tasks = ml_collections.ConfigDict(tasks) if tasks else c.tasks
    return c


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sne")
    _write_zoo(root / "zoo", _groups())
    from configs import sne as presets

    cfg = _config(
        root / "zoo",
        mlp=presets.task("same_zoo", families=("mlp",), test_fraction=0.3),
        mlp_to_ha_cnn=presets.task("cross_architecture", train="mlp", test="ha_cnn"),
    )
    lines = []
    out = experiment.run(cfg, root / "run", progress=False, log=lines.append)
    return root, cfg, out, lines


def test_end_to_end_writes_every_method_with_a_finite_tau(tiny):
    root, _, out, lines = tiny
    saved = json.loads((root / "run" / sne_report.RESULTS).read_text())
    assert saved["complete"] and saved["table"] == out["table"]
    rows = {(r["task"], r["method"]): r for r in saved["table"]}
    assert len(rows) == 2 * 4 and len(lines) == 8
    for (task, method), r in rows.items():
        if method == "flat_mlp" and task != "mlp":  # MLPs and HaCNNs: two layouts
            assert r["status"] == "not_applicable" and "one layout" in r["reason"]
            continue
        assert r["status"] == "done" and np.isfinite(r["tau_mean"]) and np.isfinite(r["mse_mean"])
    assert rows[("mlp", "flat_mlp")]["status"] == "done"
    assert rows[("mlp", "sne")]["test_networks"] == 4  # 30 % of 12 networks
    assert rows[("mlp_to_ha_cnn", "sne")]["test_networks"] == 6
    part = root / "run" / "runs" / "mlp" / "sne" / "seed_0"
    result = json.loads((part / experiment.PART_RESULT).read_text())
    assert len(result["predictions"]) == result["test_records"] == 8
    assert (part / "metrics.jsonl").exists() and not (part / "checkpoints").exists()
    assert 0 < result["chosen_step"] <= 20 and result["val_mse"] is not None
    assert (root / "run" / sne_report.FIGURE).stat().st_size > 0
    parts = experiment.part_results(root / "run", out)  # 7: flat_mlp does not apply to one
    assert len(parts) == 7 and result in parts and all(p["predictions"] for p in parts)
    both = sne_report.figure(parts, root / "both.png", methods=("sne", "stats_gbt"))
    w = [figures.pyplot().imread(p).shape[1] for p in (both, root / "run" / sne_report.FIGURE)]
    assert w[0] == 2 * w[1]  # two methods x two tasks: 4 panels a row, SNE's alone 2
    table = sne_report.format_table(out)
    assert "| mlp | sne |" in table and "| mlp_to_ha_cnn | flat_mlp | n/a |" in table
    run = next(r for r in saved["runs"] if r["task"] == "mlp" and r["method"] == "sne")
    assert set(run["tau_by_snapshot"]) == {"0", "1"}  # the tiny zoo's two snapshots


def test_snapshot_scores_rank_within_each_snapshot_and_by_training_stage():
    ids = ["a/s0", "b/s0", "c/s0", "a/s1", "b/s1", "c/s1"]
    snapshot_of = {i: int(i[-1]) for i in ids}
    run = {"test_ids": ids, "targets": [0.1, 0.2, 0.3, 0.5, 0.6, 0.7]}
    run["predictions"] = [0.1, 0.2, 0.3, 0.3, 0.2, 0.1]  # right at s0, reversed at s1
    got = sne_report.snapshot_scores(run, snapshot_of)
    assert got["tau_by_snapshot"] == pytest.approx({"0": 1.0, "1": -1.0})
    assert got["tau_within_snapshots"] == pytest.approx(0.0)
    expect = scipy_stats.kendalltau(run["predictions"], [0, 0, 0, 1, 1, 1]).statistic
    assert got["tau_snapshot_order"] == pytest.approx(expect)
    flat = {**run, "predictions": [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]}  # s1 constant: undefined
    got = sne_report.snapshot_scores(flat, snapshot_of)
    assert got["tau_by_snapshot"]["1"] is None and got["tau_within_snapshots"] is None
    assert got["tau_snapshot_order"] > 0.8
    assert sne_report.snapshot_scores({"status": "not_applicable"}, snapshot_of) == {}


def test_rank_loss_scores_the_order_of_pairs_only():
    y = jax.numpy.asarray([0.9, 0.5, 0.7])
    right = jax.numpy.asarray([0.8, 0.2, 0.6])  # the targets' order, other values
    wrong = right[::-1]
    assert float(predictor.rank_loss(right, y)) < float(predictor.rank_loss(wrong, y))
    # Only the order enters: a monotone change of the targets gives the same loss.
    assert float(predictor.rank_loss(right, y)) == float(predictor.rank_loss(right, y**3))
    tied = jax.numpy.full(3, 0.5)
    assert float(predictor.rank_loss(right, tied)) == 0.0  # no ordered pair
    # By hand: pairs (0,1), (0,2), (2,1), each softplus(-(logit_i - logit_j)).
    logit = np.log(np.asarray(right) / (1 - np.asarray(right)))
    pairs = [(0, 1), (0, 2), (2, 1)]
    expected = np.mean([np.log1p(np.exp(-(logit[i] - logit[j]))) for i, j in pairs])
    np.testing.assert_allclose(float(predictor.rank_loss(right, y)), expected, rtol=1e-4)


def test_selection_by_tau_keeps_the_best_ranking_params(tiny, tmp_path):
    """With ``select='tau'`` the chosen step is the validated one of highest tau, and the
    ranking loss trains (a finite, different result from the MSE alone)."""
    root, _, _, _ = tiny
    c = _config(root / "zoo")
    c.methods = ("stats_mlp",)
    c.train.update({"rank_weight": 1.0, "select": "tau", "steps": 30, "eval_every": 5})
    out = experiment.run(c, tmp_path / "tau", progress=False, log=lambda _: None)
    part = tmp_path / "tau" / "runs" / "same_zoo" / "stats_mlp" / "seed_0"
    result = json.loads((part / experiment.PART_RESULT).read_text())
    logged = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    taus = {r["step"]: r["val_tau"] for r in logged if r.get("val_tau") is not None}
    assert taus, "the validation tau is logged"
    best = max(taus.values())
    assert result["val_tau"] == pytest.approx(best, abs=1e-6)
    assert taus[result["chosen_step"]] == pytest.approx(best, abs=1e-6)
    assert all(np.isfinite(r["tau_mean"]) for r in out["table"])


def test_rerun_skips_finished_parts_and_an_interrupted_part_resumes(tiny):
    root, cfg, out, _ = tiny
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    again = experiment.run(cfg, root / "run", progress=False, log=lambda _: None)
    assert again["trained"] == [] and len(again["skipped"]) == 8
    assert again["table"] == out["table"]
    # Stopped inside the first part (SNE on mlp), then resumed: the same predictions.
    cfg.tasks = {"mlp": cfg.tasks.mlp}
    cfg.methods = ("sne",)
    part = root / "resumed" / "runs" / "mlp" / "sne" / "seed_0"
    stopped = experiment.run(cfg, root / "resumed", progress=False, stop_after=13, log=print)
    assert stopped["trained"] == ["mlp/sne/seed_0"] and not stopped["complete"]
    assert (part / "checkpoints").exists() and not (part / experiment.PART_RESULT).exists()
    done = experiment.run(cfg, root / "resumed", progress=False, log=print)
    assert done["complete"] and done["trained"] == ["mlp/sne/seed_0"]
    first = json.loads(
        (root / "run" / "runs" / "mlp" / "sne" / "seed_0" / "result.json").read_text()
    )
    second = json.loads((part / experiment.PART_RESULT).read_text())
    assert second["predictions"] == first["predictions"]
    # A part saved before a settings field existed was trained without it: it is kept ...
    saved = json.loads((part / "config.json").read_text())
    del saved["sne"]["network_size"], saved["train"]["grad_clip"]  # both at their defaults
    (part / "config.json").write_text(json.dumps(saved))
    kept = experiment.run(cfg, root / "resumed", progress=False, log=print)
    assert kept["skipped"] == ["mlp/sne/seed_0"] and kept["table"] == done["table"]
    # ... and a part trained with other settings is refused, naming the field.
    cfg.sne.network_size = True
    with pytest.raises(ValueError, match=r"fields differ: sne\.network_size"):
        experiment.run(cfg, root / "resumed", progress=False)
    # With the size it trains (the sizes standardised over its training networks).
    cfg.train.steps = 6
    out = experiment.run(cfg, root / "sized", progress=False, log=print)
    assert out["complete"] and out["trained"] == ["mlp/sne/seed_0"]
    result = root / "sized" / "runs" / "mlp" / "sne" / "seed_0" / experiment.PART_RESULT
    assert np.isfinite(json.loads(result.read_text())["predictions"]).all()


def test_bad_configs_are_refused_naming_the_field(tiny, tmp_path):
    root, cfg, _, _ = tiny
    from configs import sne as presets

    bad = [
        ({"chunking.chunk_size": 0}, r"chunking\.chunk_size must be a positive int"),
        (
            {"tasks.x": presets.task("same_zoo", families=("resnet",))},
            r"tasks\.x\.families: unknown name 'resnet'",
        ),
        (
            {"tasks.x": presets.task("cross_dataset", train="digits", test="digits")},
            r"tasks\.x: train and test are both",
        ),
        ({"tasks.x": presets.task("same_zoo", train="mlp")}, r"tasks\.x\.train is set"),
        ({"methods": ("sne", "svm")}, r"methods: unknown name 'svm'"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"sne.heads": 3}, r"sne\.dim \(16\) must be a multiple of sne\.heads"),
        ({"train.rank_weight": -1.0}, r"train\.rank_weight must be a number >= 0"),
        ({"train.select": "r2"}, r"train\.select must be one of \('mse', 'tau'\)"),
    ]
    for overrides, message in bad:
        c = _config(root / "zoo")
        for key, value in overrides.items():
            group, _, field = key.rpartition(".")
            (c[group] if group else c)[field] = value
        with pytest.raises(ValueError, match=message):
            sne_config.validate(c)
    c = _config(root / "zoo").to_dict()
    c["sne"]["layer_summary"] = 1
    with pytest.raises(ValueError, match=r"sne\.layer_summary must be True or False, got 1"):
        sne_config.validate(c)
    c["sne"].update(layer_summary=False, raw_summary=True)
    with pytest.raises(ValueError, match=r"sne\.raw_summary .* needs sne\.layer_summary=True"):
        sne_config.validate(c)
    c["sne"].update(layer_summary=True, raw_summary=True, layer_positions="no")
    with pytest.raises(ValueError, match=r"sne\.layer_positions must be True or False"):
        sne_config.validate(c)
    # Against the zoo, before anything trains: an unknown dataset, an empty side, a partial zoo.
    c = _config(root / "zoo", x=presets.task("cross_dataset", train="digits", test="mnist"))
    with pytest.raises(ValueError, match=r"tasks\.x\.test: dataset 'mnist' has no network"):
        experiment.run(c, tmp_path / "a", progress=False)
    c = _config(root / "zoo", x=presets.task("same_zoo", families=("mlp",), widths=(64,)))
    with pytest.raises(ValueError, match=r"tasks\.x: .*no network of the zoo fits"):
        experiment.run(c, tmp_path / "b", progress=False)
    groups = dict(list(_groups().items())[:1])
    _write_zoo(tmp_path / "partial", groups, missing=("digits_mlp-0009",))
    with pytest.raises(ValueError, match="allow_partial is False but the zoo .* is partial"):
        experiment.run(_config(tmp_path / "partial"), tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
