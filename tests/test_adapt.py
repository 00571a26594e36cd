"""The ``adapt`` kind and ``data.vocab_from``: a frozen text Transformer adapted to a new dataset
by a new head, attention hypernetworks + head, or fine-tuning (issue 25, part 2).

One tiny source run (AG News format, direct, 2 steps, exported) serves every test; the target
is a tiny MR-format corpus encoded with the source's vocabulary.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, subprocess_env

from uhn_jax import config as config_lib
from uhn_jax.data import registry
from uhn_jax.hypernets import adapt_kind, attention
from uhn_jax.training import checkpoint, rebuild, tasks, train
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib

ROOT = Path(__file__).resolve().parents[1]
#: Tiny sizes shared by the source and the adapted runs (their architectures must agree).
TINY = {
    "data.vocab_size": 40,
    "data.max_len": 16,
    "model.max_positions": 0,  # = data.max_len
    "model.embed_dim": 8,
    "model.num_heads": 2,
    "model.num_encoders": 1,
    "model.linears_per_encoder": 1,
    "model.dropout_rate": 0.0,
    "train.batch_size": 16,
    "train.eval_batch_size": 16,
    "train.steps": 2,
    "train.warmup_steps": 0,
    "train.log_every": 1,
    "train.checkpoint_every": 100,
}
KEY = jax.random.key_data(jax.random.key(0))


def _write_data(root: Path) -> str:
    """AG News (test.csv only) and MR files, a few dozen rows each, sharing some words."""
    rng = np.random.default_rng(0)
    words = ["the", "film", "team", "market", "a", "great", "awful", "story", "wins", "falls"]
    (root / "ag_news").mkdir(parents=True)
    rows = [
        f'"{1 + i % 4}","title {i % 4}","{" ".join(rng.choice(words, 6))} item {i % 7}"'
        for i in range(80)
    ]
    (root / "ag_news" / "test.csv").write_text("\n".join(rows) + "\n")
    (root / "rt_polarity").mkdir()
    for name, word in (("pos", "great"), ("neg", "awful")):
        lines = [" ".join([word, *rng.choice(words, 5)]) for _ in range(40)]
        (root / "rt_polarity" / f"rt-polarity.{name}").write_text("\n".join(lines) + "\n")
    return str(root)


def _config(name: str, arg: str, data_dir: str, **overrides):
    cfg = load_config(name, arg)
    for key, value in {**TINY, "data.data_dir": data_dir, **overrides}.items():
        *group, field = key.split(".")
        (cfg[group[0]] if group else cfg)[field] = value
    return cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """``(data_dir, source run directory)``: a direct AG News run of 2 steps, exported."""
    root = tmp_path_factory.mktemp("adapt")
    data_dir = _write_data(root / "data")
    exp = config_lib.from_config_dict(
        _config("text", "ag_news,cpu", data_dir, mode="direct", **{"train.direct_lr": 1e-2})
    )
    train.run(exp, root / "source", progress=False)
    rebuild.export(root / "source")
    return data_dir, root / "source"


def _exp(source, method: str, **overrides) -> config_lib.Experiment:
    data_dir, run = source
    more = {"adapt.source": str(run), **overrides}
    return config_lib.from_config_dict(
        _config("adapt_text", f"ag_news,mr,{method},cpu", data_dir, **more)
    )


def _frozen_source(run: Path, head: str) -> dict:
    params = checkpoint.load_params(run / "export")
    return {k: v for k, v in params.items() if k != head}


def _leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_vocab_from_encodes_the_target_with_the_source_vocabulary(source):
    data_dir, _ = source
    d = config_lib.DataConfig(name="mr", data_dir=data_dir, vocab_size=40, vocab_from="ag_news")
    mr = registry.load(d)
    ag = registry.load(config_lib.DataConfig(name="ag_news", data_dir=data_dir, vocab_size=40))
    own = registry.load(config_lib.DataConfig(name="mr", data_dir=data_dir, vocab_size=40))
    assert mr.vocab == ag.vocab and mr.vocab != own.vocab
    assert np.array_equal(registry.load(d).x_train, mr.x_train)  # rebuilt deterministically
    # Every MR line starts with its polarity word, read through AG News' vocabulary.
    assert {ag.vocab[i] for i in mr.x_train[:, 1]} == {"great", "awful"}
    for bad, match in (
        ({"name": "digits", "vocab_from": "ag_news"}, "data.vocab_from.*text dataset"),
        ({"name": "mr", "vocab_from": "mr"}, "data.vocab_from must be another text dataset"),
        ({"name": "mr", "vocab_from": "wiki"}, "data.vocab_from must be another"),
    ):
        with pytest.raises(ValueError, match=match):
            config_lib.DataConfig(**bad).validate()


def test_config_errors_name_the_field(source):
    with pytest.raises(ValueError, match="adapt.method must be one of"):
        _exp(source, "attention", **{"adapt.method": "lora"})
    with pytest.raises(ValueError, match="adapt.source must name the source model"):
        _exp(source, "head", **{"adapt.source": ""})
    with pytest.raises(ValueError, match="adapt.layer_structure must start and end with 1"):
        _exp(source, "attention", **{"adapt.layer_structure": (2.0, 1.0)})
    with pytest.raises(ValueError, match="adapt.activation must be one of"):
        _exp(source, "attention", **{"adapt.activation": "swishy"})
    # Against the source run's config.json: its dataset's vocabulary, its architecture.
    with pytest.raises(ValueError, match="data.vocab_from must be 'ag_news'"):
        _exp(source, "head", **{"data.vocab_from": ""})
    with pytest.raises(ValueError, match="model.num_heads is 1 but the source run"):
        _exp(source, "head", **{"model.num_heads": 1})
    with pytest.raises(ValueError, match="data.vocab_size is 41 but the source run"):
        _exp(source, "head", **{"data.vocab_size": 41})
    with pytest.raises(ValueError, match="unknown adapt_text config"):
        load_config("adapt_text", "ag_news,ag_news,head")
    with pytest.raises(ValueError, match="adapt.source .* does not exist"):
        adapt_kind.load_source(str(source[1] / "nowhere"))


def test_shorter_target_texts_read_the_source_positional_table(source):
    # A target of 8 tokens through the source's 16 positions: the frozen table loads as is.
    setup, _, dataset = _setup(
        _exp(source, "head", **{"model.max_positions": 16, "data.max_len": 8})
    )
    assert dataset.x_train.shape[1] == 8 and setup.model.max_len == 16
    state = step_lib.init_state(setup, KEY)
    head = adapt_kind.head_name(setup)
    frozen = _frozen_source(source[1], head)
    assert _leaves_equal(state["constants"]["frozen"], frozen)
    logits = setup.model.apply({**frozen, head: state["params"]["head"]}, dataset.x_test)
    assert logits.shape == (len(dataset.x_test), 2)
    with pytest.raises(ValueError, match="set model.max_positions=16"):
        _exp(source, "head", **{"data.max_len": 8})
    with pytest.raises(
        ValueError, match=r"model.max_positions \(4\) must be at least data.max_len"
    ):
        _exp(source, "head", **{"model.max_positions": 4})


def _setup(exp):
    dataset = tasks.load_dataset(exp)
    setup, desc = setup_lib.make_setup(exp, dataset)
    return setup, setup_lib.desc_arrays(setup, desc), dataset


def _init_with_source(setup, path: Path):
    """The kind's init for ``setup`` with ``adapt.source`` set to ``path``."""
    adapt = dataclasses.replace(setup.adapt, source=str(path))
    return setup.kind.init(dataclasses.replace(setup, adapt=adapt), KEY)


def test_a_source_that_does_not_fit_is_refused_naming_the_leaf(source, tmp_path):
    setup, _, _ = _setup(_exp(source, "head"))
    params = checkpoint.load_params(source[1] / "export")
    bad = {**params, "layer_000": {**params["layer_000"], "tokens": np.zeros((3, 8), np.float32)}}
    checkpoint.save_params(tmp_path / "bad", bad)
    with pytest.raises(ValueError, match=r"params\['layer_000'\]\['tokens'\] has shape \(3, 8\)"):
        _init_with_source(setup, tmp_path / "bad")
    checkpoint.save_params(tmp_path / "extra", {**params, "extra": {"w": np.zeros(2)}})
    with pytest.raises(ValueError, match=r"params\['extra'\]\['w'\] is not in this run's model"):
        _init_with_source(setup, tmp_path / "extra")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a params export written by `uhn-jax export`"):
        _init_with_source(setup, tmp_path / "empty")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="run directory without an export: run `uhn-jax export"):
        _init_with_source(setup, tmp_path / "run")
    with pytest.raises(ValueError, match="adapt.head 'layer_009' is not a top-level params entry"):
        setup.kind.init(
            dataclasses.replace(setup, adapt=dataclasses.replace(setup.adapt, head="layer_009")),
            KEY,
        )


def test_attention_leaves_the_frozen_model_unchanged_at_step_0(source):
    setup, _, dataset = _setup(_exp(source, "attention"))
    head = adapt_kind.head_name(setup)
    state = step_lib.init_state(setup, KEY)
    params, constants = state["params"], state["constants"]
    frozen = _frozen_source(source[1], head)
    assert head == "layer_003" and _leaves_equal(constants["frozen"], frozen)
    x = jnp.asarray(dataset.x_test)
    want = setup.model.apply({**frozen, head: params["head"]}, x)
    got, _ = setup.kind.forward(setup, params, constants, None, x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _loss_and_accuracy(logits, y):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return float(loss), float((logits.argmax(-1) == y).mean())


def test_evaluation_runs_the_model_with_the_pairs(source):
    setup, cond, dataset = _setup(_exp(source, "attention"))
    head = adapt_kind.head_name(setup)
    state = step_lib.init_state(setup, KEY)
    # Pairs far from the identity, so that dropping them would show.
    leaves, treedef = jax.tree.flatten(state["params"]["attention"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    params = {**state["params"], "attention": jax.tree.unflatten(treedef, noisy)}
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    ev = step_lib.evaluate(setup, params, state["constants"], cond, (x, y), 16)
    model_params = {**state["constants"]["frozen"], head: params["head"]}
    hyper = adapt_kind.hypernet(setup.model, setup.adapt.settings())
    with_pairs = _loss_and_accuracy(hyper.apply(params["attention"], model_params, x), y)
    without = _loss_and_accuracy(setup.model.apply(model_params, x), y)
    assert ev["loss"] == pytest.approx(with_pairs[0], rel=1e-5)
    assert float(ev["accuracy"]) == pytest.approx(with_pairs[1])
    assert abs(without[0] - with_pairs[0]) > 1e-3, (without, with_pairs)


@pytest.mark.parametrize("method", ["head", "attention", "full"])
def test_training_moves_only_what_the_method_trains(source, method):
    setup, cond, dataset = _setup(_exp(source, method))
    head = adapt_kind.head_name(setup)
    frozen = _frozen_source(source[1], head)
    train_data, _ = setup_lib.device_data(setup, dataset)
    state = step_lib.init_state(setup, KEY)
    before = jax.tree.map(np.array, state["params"])  # copies: the step donates the state
    for _ in range(2):
        state, metrics = step_lib.run_step(setup, "task", state, cond, train_data, KEY)
    assert np.isfinite(float(metrics["loss"]))
    after = jax.tree.map(np.asarray, state["params"])
    if method == "full":
        assert state["constants"] == {} and set(after) == {"model"}
        backbone = {k: v for k, v in after["model"].items() if k != head}
        moved = [
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(backbone), jax.tree.leaves(frozen), strict=True)
        ]
        assert any(moved)
        return
    assert set(after) == ({"head", "attention"} if method == "attention" else {"head"})
    assert _leaves_equal(state["constants"]["frozen"], frozen)  # bit-identical
    assert not np.array_equal(after["head"]["kernel"], before["head"]["kernel"])
    if method == "attention":  # the pairs' last layers (zero at step 0) have moved
        moved = [
            np.abs(p["key"]["dense_1"]["kernel"]).max() > 0 for p in after["attention"].values()
        ]
        assert all(moved)


def test_trainable_counts_of_the_cpu_config():
    import types

    from configs import adapt_text

    counts = {}
    for method in ("head", "attention", "full"):
        cfg = adapt_text.get_config(f"ag_news,mr,{method},cpu")
        cfg.adapt.source = "runs/adapt/source"
        exp = config_lib.from_config_dict(cfg)
        stub = types.SimpleNamespace(
            vocab=("",) * exp.data.vocab_size,
            num_classes=2,
            x_train=np.zeros((1, exp.data.max_len), np.int32),
        )
        model = setup_lib.build_model(exp, stub)
        shapes = jax.eval_shape(model.init, jax.random.key(0))
        head = list(shapes)[-1]
        params = {"model": shapes} if method == "full" else {"head": shapes[head]}
        if method == "attention":
            hyper = adapt_kind.hypernet(model, exp.adapt.settings())
            params["attention"] = jax.eval_shape(hyper.init, jax.random.key(0))
        counts[method] = adapt_kind.Adapt().num_trained(params)["num_trained_params"]
    assert counts == {"head": 130, "attention": 130 + 8_512, "full": 122_242}
    assert counts["attention"] < 0.1 * counts["full"]


def test_uhn_jax_train_runs_the_kind_end_to_end(source, tmp_path):
    data_dir, run = source
    overrides = [f"--config.{k}={v}" for k, v in TINY.items()]
    argv = [
        sys.executable, "-m", "uhn_jax.cli", "train",
        "--config", f"{ROOT}/configs/adapt_text.py:ag_news,mr,attention,cpu",
        f"--workdir={tmp_path / 'run'}", f"--config.adapt.source={run}",
        f"--config.data.data_dir={data_dir}", "--progress=false", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    pairs, _ = attention.load(tmp_path / "run" / adapt_kind.ATTENTION_DIR)
    n_pairs = attention.num_params(pairs)
    assert results["mode"] == "adapt" and results["adapt_method"] == "attention"
    assert results["num_attention_params"] == results["num_generator_params"] == n_pairs > 0
    assert results["num_trained_params"] == n_pairs + results["num_head_params"]
    assert results["num_frozen_params"] + results["num_head_params"] == results["num_target_params"]
    size = attention.size_bytes(tmp_path / "run" / adapt_kind.ATTENTION_DIR)
    assert results["attention_file_bytes"] == size > 0 and results["head_file_bytes"] > 0
    assert 0.0 <= results["test_metric"] <= 1.0


def test_the_adapt_group_names_every_attention_setting_with_the_same_defaults_but_the_width():
    # AdaptConfig spells the pairs' Settings out as flat config fields; a Settings field it
    # lacks would fail only when a run builds the pairs.
    adapt = {f.name: f.default for f in dataclasses.fields(config_lib.AdaptConfig)}
    settings = {f.name: f.default for f in dataclasses.fields(attention.Settings)}
    assert set(settings) <= set(adapt)
    differing = {n for n in settings if adapt[n] != settings[n]}
    assert differing == {"layer_structure"}  # (1, 0.25, 1): under 10 % of the text model
    assert config_lib.AdaptConfig().settings() == attention.Settings(layer_structure=(1, 0.25, 1))
