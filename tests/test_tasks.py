"""The non-image tasks through the training loop: formula regression (KAN), node
classification (GCN/GAT on jraph graphs) and text classification (Transformer)."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from uhn_jax import config as config_lib
from uhn_jax.data import formulas as formula_data
from uhn_jax.training import experiments, optim, train
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib
from uhn_jax.training import tasks as tasks_lib


def _exp(name, arg=None, **overrides):
    import importlib.util

    from conftest import CONFIG_DIR

    if arg is None:
        cfg = load_config(name)
    else:
        spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIG_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cfg = module.get_config(arg)
    for dotted, value in overrides.items():
        node = cfg
        *groups, field = dotted.split("__")
        for g in groups:
            node = node[g]
        node[field] = value
    return config_lib.from_config_dict(cfg)


def _small_kan(mode, **overrides):
    kw = dict(
        mode=mode,
        generator__hidden=32,
        generator__n_freqs=64,
        train__steps=150,
        train__init_steps=20,
        train__lr=3e-3,
        train__init_lr=3e-3,
        train__log_every=50,
        train__checkpoint_every=100,
    )
    kw.update(overrides)
    return _exp("kan_formula", "sph_harm01", **kw)


# ----------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("mode", ["uhn", "direct"])
def test_formula_regression_learns_and_reports_rmse(mode, tmp_path):
    # Measured test RMSE over the baseline's (below): UHN 0.110, 0.089, 0.083 after 80 steps
    # (seeds 0, 1, 2), 0.077 after 150; direct 0.195 after 150 steps, 0.445 after 60.
    exp = _small_kan(mode, train__steps=80 if mode == "uhn" else 150)
    results = train.run(exp, tmp_path, progress=False)
    ds = formula_data.make_formula_dataset("sph_harm01", seed=exp.data.formula_seed)
    # The RMSE of the best constant predictor: a model that learned nothing scores this.
    baseline = float(np.sqrt(((ds.y_test - ds.y_train.mean(0)) ** 2).mean()))
    assert results["metric_name"] == "rmse" and results["task"] == "formula_regression"
    assert results["dataset"] == "sph_harm01" and results["num_target_params"] == 254
    assert results["test_metric"] < 0.5 * baseline, (results, baseline)
    # The reported metric is the RMSE of the trained model's predictions.
    setup, desc = setup_lib.make_setup(exp, ds)
    assert setup.task == "regression"
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert log[-1] == {"step": setup.total_steps, "test_rmse": results["test_metric"]}


def test_regression_loss_and_metric_are_mse_and_rmse():
    y = jnp.asarray([[1.0, 2.0], [0.0, 0.0]])
    out = jnp.asarray([[1.0, 4.0], [1.0, 1.0]])
    loss, score = tasks_lib.example_terms("regression", out, y)
    np.testing.assert_allclose(loss, [2.0, 1.0])
    np.testing.assert_allclose(tasks_lib.metric("regression", score.mean()), np.sqrt(1.5))
    np.testing.assert_allclose(
        tasks_lib.metric("regression", score.mean()), formula_data.rmse(out, y), rtol=1e-6
    )


def test_direct_lr_applies_to_direct_training_only():
    lrs = {}
    for mode in ("uhn", "direct"):
        exp = _small_kan(mode, train__lr=1e-3, train__direct_lr=5e-2, train__init_steps=0)
        setup, _ = setup_lib.make_setup(exp, tasks_lib.load_dataset(exp))
        tx = optim.make_optimizer(setup, "task")
        params = {"w": jnp.zeros(())}
        updates, _ = tx.update({"w": jnp.ones(())}, tx.init(params), params)
        lrs[mode] = -float(updates["w"])  # Adam's first step is lr * sign(g)
    assert lrs == pytest.approx({"uhn": 1e-3, "direct": 5e-2}, rel=1e-3)


def test_every_formula_config_builds_the_reference_kan():
    from configs import kan_formula

    for name in formula_data.FORMULAS:
        exp = config_lib.from_config_dict(kan_formula.get_config(name))
        model = setup_lib.build_model(
            exp, formula_data.make_formula_dataset(name, n_train=4, n_test=4)
        )
        size = sum(
            int(np.prod(x.shape))
            for x in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0)))
        )
        assert size == {"ellipj": 407, "jv": 364, "yv": 364}.get(name, 254), name
        assert model.dataset_type == 7 + formula_data.FORMULAS.index(name)
        assert exp.train.lr == kan_formula.REFERENCE_LRS[name][0]
    with pytest.raises(ValueError, match="unknown formula"):
        kan_formula.get_config("sinc")


def test_rmse_comparison_table_reports_the_ratio():
    rows = [
        {
            "mode": m,
            "dataset": "jv",
            "model": "kan-5-g10",
            "num_target_params": 364,
            "num_generator_params": 0,
            "init_steps": 0,
            "steps": 5,
            "metric_name": "rmse",
            "test_metric": v,
            "wall_s": 1.0,
        }
        for m, v in (("direct", 0.02), ("direct", 0.04), ("uhn", 0.033), ("uhn", 0.033))
    ]
    table = experiments.comparison_table(rows)
    assert "test rmse" in table and "0.03 ± 0.01" in table
    assert "UHN / direct RMSE: 1.100" in table


def test_family_must_fit_the_dataset():
    with pytest.raises(ValueError, match="model.family 'mlp' does not fit data.name 'formula'"):
        _small_kan("uhn", model__family="mlp")
    with pytest.raises(ValueError, match="data.formula must be one of"):
        _small_kan("uhn", data__formula="sinc")
    with pytest.raises(ValueError, match="model.family 'kan' does not fit data.name 'digits'"):
        _exp("test", model__family="kan")


# ----------------------------------------------------------------------------- graphs


def _karate(model, mode="uhn", **overrides):
    kw = dict(
        mode=mode,
        data__name="karate_club",
        generator__hidden=16,
        generator__n_freqs=32,
        train__steps=60,
        train__init_steps=10,
        train__lr=3e-3,
        train__init_lr=1e-2,
        train__log_every=20,
        train__checkpoint_every=100,
    )
    kw.update(overrides)
    return _exp("planetoid", f"cora,{model}", **kw)


@pytest.mark.parametrize("model", ["gcn", "gat"])
def test_node_classification_trains_on_the_train_mask(model, tmp_path):
    # The GAT's dropout (tested in test_gnn) slows 60-step training too much for a test.
    no_dropout = dict(model__dropout_rate=0.0, model__attention_dropout=0.0, train__lr=1e-2)
    exp = _karate(model, **(no_dropout if model == "gat" else {}))
    results = train.run(exp, tmp_path, progress=False)
    assert results["task"] == "graph_node_cls" and results["dataset"] == "karate_club"
    assert results["metric_name"] == "accuracy"
    # train_metric is over the train-mask nodes only; the test nodes are never trained on.
    assert results["train_metric"] == 1.0, results
    # The 26 test nodes are 13 per club (chance 0.5). From 4 labelled nodes the GCN reaches
    # 0.96 for seeds 0-2; the GAT 0.65, 0.88 and 0.69.
    assert results["test_metric"] > (0.9 if model == "gcn" else 0.6), results


def test_node_loss_counts_only_masked_nodes():
    exp = _karate("gcn", train__init_steps=0)
    ds = tasks_lib.load_dataset(exp)
    setup, desc = setup_lib.make_setup(exp, ds)
    assert setup.task == "node_classification"
    arrays = setup_lib.desc_arrays(setup, desc)
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    (graph, y, mask), _ = setup_lib.device_data(setup, ds)
    loss = jax.jit(tasks_lib.task_loss, static_argnums=0)
    args = (setup, state["params"], state["constants"], arrays)
    base, _ = loss(*args, (graph, y, mask), None)
    # Relabelling nodes outside the mask changes nothing; relabelling a masked node does.
    flipped = jnp.where(mask, y, 1 - y)
    same, _ = loss(*args, (graph, flipped, mask), None)
    other, _ = loss(*args, (graph, jnp.where(mask, 1 - y, y), mask), None)
    assert float(same) == float(base) and abs(float(other) - float(base)) > 1e-3


def test_planetoid_configs_are_the_reference_models():
    from configs import planetoid

    counts = {"cora": (1433, 7), "citeseer": (3703, 6), "pubmed": (500, 3)}
    expected = {
        ("cora", "gcn"): 92_231,
        ("cora", "gat"): 92_373,
        ("citeseer", "gcn"): 237_446,
        ("citeseer", "gat"): 237_586,
        ("pubmed", "gcn"): 32_259,
        ("pubmed", "gat"): 33_779,
    }
    for (name, model), size in expected.items():
        exp = config_lib.from_config_dict(planetoid.get_config(f"{name},{model}"))
        f, c = counts[name]
        g = types.SimpleNamespace(x=np.zeros((2, f), np.float32), num_classes=c)
        built = setup_lib.build_model(exp, g)
        shapes = jax.eval_shape(built.init, jax.random.key(0))
        assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == size
        assert exp.train.lr == planetoid.REFERENCE[name, model][2]
    with pytest.raises(ValueError, match="unknown planetoid config"):
        planetoid.get_config("cora,mlp")


# ----------------------------------------------------------------------------- text


def _write_mr(directory):
    """A tiny MR-format corpus whose polarity is carried by one word per sentence."""
    rng = np.random.default_rng(0)
    filler = ["the", "film", "a", "story", "of", "it", "is", "and", "plot", "cast"]
    for name, word in (("pos", "great"), ("neg", "awful")):
        lines = []
        for _ in range(120):
            words = list(rng.choice(filler, size=6))
            words.insert(int(rng.integers(0, 7)), word)
            lines.append(" ".join(words))
        (directory / f"rt-polarity.{name}").write_text("\n".join(lines) + "\n")
    return str(directory)


@pytest.mark.parametrize("mode", ["uhn", "direct"])
def test_text_classification_end_to_end(mode, tmp_path):
    exp = _exp(
        "text",
        "mr,cpu",
        mode=mode,
        data__data_dir=_write_mr(tmp_path),
        data__max_len=12,
        data__vocab_size=16,
        model__embed_dim=16,
        model__num_encoders=1,
        model__linears_per_encoder=1,
        model__dropout_rate=0.0,
        generator__hidden=16,
        generator__n_freqs=32,
        generator__sigma=100.0,
        train__batch_size=32,
        train__eval_batch_size=24,
        train__steps=80,
        train__warmup_steps=0,
        train__init_steps=20,
        train__init_lr=3e-3,
        train__lr=1e-3,
        train__direct_lr=3e-3,
        train__log_every=40,
    )
    results = train.run(exp, tmp_path / "run", progress=False)
    assert results["task"] == "text_cls" and results["dataset"] == "mr"
    assert results["metric_name"] == "accuracy" and results["test_metric"] >= 0.9, results


def test_text_configs_are_the_reference_models():
    from configs import text

    ds = types.SimpleNamespace(
        vocab=("",) * 5000, num_classes=4, x_train=np.zeros((1, 128), np.int32)
    )
    exp = config_lib.from_config_dict(text.get_config("ag_news"))
    shapes = jax.eval_shape(setup_lib.build_model(exp, ds).init, jax.random.key(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 378_372
    ds = types.SimpleNamespace(
        vocab=("",) * 5000, num_classes=2, x_train=np.zeros((1, 512), np.int32)
    )
    exp = config_lib.from_config_dict(text.get_config("imdb"))
    shapes = jax.eval_shape(setup_lib.build_model(exp, ds).init, jax.random.key(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 377_858
    assert exp.train.lr == 1e-4 and exp.train.init_steps == 100
    cpu = text.get_config("mr,cpu")
    assert (cpu.generator.hidden, cpu.generator.n_freqs, cpu.generator.sigma) == (64, 256, 3000)
    assert (cpu.train.init_steps, cpu.train.init_lr, cpu.train.lr) == (200, 1e-2, 2e-3)
    assert text.get_config("ag_news,cpu").train.lr == 1e-3 and cpu.train.direct_lr == 1e-3
    assert cpu.data.vocab_size == 1000 and cpu.train.steps == 20 * (9596 // 256)
    with pytest.raises(ValueError, match="unknown text config"):
        text.get_config("ag_news,gpu")


def test_summarize_one_row_per_compare_run(tmp_path):
    def rows(direct, uhn, metric):
        return [
            {
                "mode": m,
                "model": "kan-5-g5",
                "num_target_params": 254,
                "metric_name": metric,
                "test_metric": v,
            }
            for m, vals in (("direct", direct), ("uhn", uhn))
            for v in vals
        ]

    for name, direct, uhn in (("a", [0.01, 0.03], [0.02, 0.02]), ("b", [0.1], [0.4])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare.json").write_text(json.dumps(rows(direct, uhn, "rmse")))
    table = experiments.summarize(tmp_path)
    assert "| a | kan-5-g5 | 254 | 2 | 0.02 ± 0.01 | 0.02 ± 0 | 1.000 |" in table
    assert "| b |" in table and "4.000" in table
    assert "geometric mean of UHN / direct over 2: 2.000" in table
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "compare.json").write_text(json.dumps(rows([0.9], [0.8], "accuracy")))
    with pytest.raises(ValueError, match="reports accuracy"):
        experiments.summarize(tmp_path)
    with pytest.raises(FileNotFoundError, match="compare.json"):
        experiments.summarize(tmp_path / "a")


def test_summarize_groups_plain_train_runs_by_model(tmp_path):
    runs = {"lstm": [2.0, 2.2], "hyperlstm": [1.9, 1.9], "layernorm_lstm": [2.05, 1.95]}
    for model, vals in runs.items():
        for seed, v in enumerate(vals):
            run = tmp_path / f"{model}_seed{seed}"
            run.mkdir()
            result = {"mode": "direct", "model": model, "dataset": "mr_chars", "seed": seed}
            result |= {"metric_name": "bpc", "test_metric": v, "num_target_params": 1000}
            (run / "results.json").write_text(json.dumps(result))
    table = experiments.summarize(tmp_path)
    assert "| hyperlstm | mr_chars | 1,000 | 2 | 1.9 ± 0 | 1.900 / 1.900 |" in table
    assert "| lstm | mr_chars | 1,000 | 2 | 2.1 ± 0.1 | 2.000 / 2.200 |" in table
    assert "hyperlstm - lstm: -0.200 bpc" in table
    assert "hyperlstm - layernorm_lstm: -0.100 bpc" in table
    (tmp_path / "lstm_seed0" / "results.json").write_text(
        json.dumps({**result, "metric_name": "accuracy"})
    )
    with pytest.raises(ValueError, match="different metrics"):
        experiments.summarize(tmp_path)
