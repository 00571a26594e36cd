"""IGPG (issue 26, part 3): weight chunks, the VQ-VAE, the prior (causality, conditioning,
top-k sampling), the novelty check's alignment, config errors, and an end-to-end run on a tiny
zoo that a rerun skips.

The zoo is ``configs/zoo.py:digits_tiny`` (digits MLPs of widths 8 and 8x8) trained for 40
steps instead of 6, built once for the module by the zoo's own builder.
"""

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from uhn_jax import models
from uhn_jax.analysis import novelty
from uhn_jax.core import layouts
from uhn_jax.models.ha_cnn import HaCNN
from uhn_jax.training import igpg, igpg_pairs
from uhn_jax.training import workdir as workdir_lib
from uhn_jax.training import zoo as zoo_training
from uhn_jax.weightspace import conditioning, prior, vqvae
from uhn_jax.weightspace import zoo as store


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _mlp():
    return models.MLP(input_shape=(8, 8), num_classes=10, widths=(8, 8, 6))  # a residual pair


def _ha_cnn():
    return HaCNN((8, 8), 10, channels=4, channels_2=6, kernel_size=3, hidden=(5,))


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("igpg") / "zoo"
    cfg = load_config("zoo", "digits_tiny")
    cfg.train.snapshot_steps = (20, 40)
    cfg.train.checkpoint_every = 40
    cfg.train.log_every = 20
    cfg.hparams.lr = (3e-3, 3e-2)
    zoo_training.build(cfg, path, progress=False, log=lambda _: None)
    return path


def test_chunks_round_trip_exactly_and_pad_with_zeros():
    chunk = jax.jit(vqvae.chunk, static_argnums=1)
    for model in (_mlp(), _ha_cnn()):
        params = _np(jax.jit(model.init)(jax.random.key(0)))
        layout = layouts.from_params(params)
        w = np.asarray(layouts.flatten(params, layout))
        cp = vqvae.plan(layout, 7, 100)
        assert cp.chunks == tuple(-(-leaf.size // 7) for leaf in layout.leaves)
        chunks = vqvae.chunk(w, cp)
        assert chunks.shape == (cp.num_tokens, 7)
        np.testing.assert_array_equal(vqvae.unchunk(chunks, cp), w)
        np.testing.assert_array_equal(np.asarray(chunk(jnp.asarray(w), cp)), chunks)
        assert not chunks[~cp.valid()].any() and cp.valid().sum() == w.size
        first = np.cumsum((0,) + cp.chunks)[:-1]
        for leaf, t in zip(layout.leaves, first, strict=True):  # C order, from each leaf's start
            np.testing.assert_array_equal(
                chunks[t][: min(7, leaf.size)], w[leaf.offset : leaf.offset + min(7, leaf.size)]
            )
        roles = cp.roles(4)
        assert roles["position"].max() == 3 and roles["from_end"][-1] == 0
        kernel = [i for i, leaf in enumerate(layout.leaves) if leaf.keys == ("layer_000", "kernel")]
        assert cp.fan_in[kernel[0]] == int(np.prod(layout.leaves[kernel[0]].shape[:-1]))
    with pytest.raises(ValueError, match=r"layer layer_000/kernel .* max_chunks_per_layer=10"):
        vqvae.plan(layout, 1, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        vqvae.plan(layout, 0, 10)


def test_standardised_frames_round_trip_and_mean_decoding_is_the_expected_chunk():
    params = _np(jax.jit(_mlp().init)(jax.random.key(0)))
    layout = layouts.from_params(params)
    cp = vqvae.plan(layout, 4, 4096)
    rng = np.random.default_rng(0)
    w = 3.0 + 0.1 * rng.normal(size=(6, layout.size)).astype(np.float32)
    frame = vqvae.standard_frame(w)
    x = frame.to_chunks(w, cp)[:, cp.valid()]  # the real values: standardised per value
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-3)
    shift, scale = frame.chunks(cp)
    np.testing.assert_allclose(
        vqvae.unchunk(frame.to_chunks(w, cp)[0] * scale + shift, cp), w[0], rtol=1e-5
    )
    with pytest.raises(ValueError, match=">= 2 networks"):
        vqvae.standard_frame(w[:1])
    s = vqvae.Settings(chunk_size=4, codebook_size=16, latent_dim=4, hidden=8, role_dim=4)
    model = vqvae.VQVAE(dataclasses.replace(s, standardize=True))
    roles = {k: jnp.asarray(v) for k, v in cp.roles(s.position_buckets).items()}
    vq_params = model.init(jax.random.key(1), jnp.zeros((cp.num_tokens, 4)), roles)
    embed = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    codec = vqvae.Codec(model, vq_params, embed, {layout: frame})
    plain = vqvae.Codec(vqvae.VQVAE(s), vq_params, embed)  # the init-scale frame
    a, b = (rng.integers(0, 16, (3, cp.num_tokens)) for _ in range(2))
    one_hot = np.eye(16, dtype=np.float32)
    np.testing.assert_allclose(
        codec.decode_mean(one_hot[a], layout), codec.decode(a, layout), atol=1e-5
    )
    mixed = codec.decode_mean(0.25 * one_hot[a] + 0.75 * one_hot[b], layout)
    expected = 0.25 * codec.decode(a, layout) + 0.75 * codec.decode(b, layout)
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    # the same decoder output, read in two frames
    init = vqvae.init_frame(cp)
    np.testing.assert_allclose(
        (codec.decode(a, layout) - frame.shift) / frame.scale,
        plain.decode(a, layout) / init.scale, rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    other = layouts.from_params(
        jax.eval_shape(models.MLP((8, 8), 10, widths=(8,)).init, jax.random.key(0))
    )
    assert codec.can_code(layout) and not codec.can_code(other) and plain.can_code(other)
    with pytest.raises(
        ValueError, match=r"vqvae.standardize codes each architecture .* layer_000/kernel \(64, 8\)"
    ):
        codec.encode(np.zeros((1, other.size)), other)
    with pytest.raises(ValueError, match=r"do not fit this architecture and codebook"):
        codec.decode_mean(one_hot[a][:, 1:], layout)


def _prior(families=("mlp", "ha_cnn")):
    s = prior.Settings(codebook_size=11, families=families, max_tokens=32, max_layers=8, dim=16)
    return prior.Prior(s)


def _inputs(model, t=12, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    layout = layouts.from_params(jax.eval_shape(_mlp().init, jax.random.key(0)))
    cond = conditioning.Conditioner(
        ("mlp", "ha_cnn"), {"digits": rng.normal(size=conditioning.DATA_FEATURES)}, 8
    ).condition("digits", 10, conditioning.Architecture("mlp", (8, 8), 0.1, layout))
    roles = vqvae.plan(layout, 256, 64).roles()
    roles = {k: np.resize(v, t) for k, v in roles.items()}
    codes = rng.integers(0, model.s.codebook_size, (batch, t)).astype(np.int32)
    batched = conditioning.stack([cond] * batch)
    return codes, {k: np.tile(v, (batch, 1)) for k, v in roles.items()}, batched, roles, cond


@pytest.fixture(scope="module")
def prior_setup():
    model = _prior()
    codes, roles_b, cond_b, roles, cond = _inputs(model)
    params = jax.jit(model.init)(jax.random.key(1), codes, roles_b, cond_b)
    return model, params, jax.jit(model.apply), (codes, roles_b, cond_b, roles, cond)


def test_prior_is_causal_and_reads_its_conditions(prior_setup):
    model, params, apply, (codes, roles, cond, _, _) = prior_setup
    logits = np.asarray(apply(params, codes, roles, cond))
    j = 5
    changed = codes.copy()
    changed[:, j] = (changed[:, j] + 1) % model.s.codebook_size
    other = np.asarray(apply(params, changed, roles, cond))
    np.testing.assert_array_equal(other[:, : j + 1], logits[:, : j + 1])  # code j predicted at j
    assert np.abs(other[:, j + 1 :] - logits[:, j + 1 :]).max() > 1e-4
    for key, new in (
        ("data", cond["data"] + 1.0),
        ("task", cond["task"] * 2.0),
        ("family", 1 - cond["family"]),
        ("arch", cond["arch"] + 0.5),
        ("leaves", cond["leaves"][:, ::-1]),
    ):
        moved = np.asarray(apply(params, codes, roles, {**cond, key: new}))
        assert np.abs(moved[:, 0] - logits[:, 0]).max() > 1e-4, key  # even the first code


def test_cached_decoding_gives_the_full_forward_logits(prior_setup):
    model, params, apply, (codes, roles, cond, _, _) = prior_setup
    logits = np.asarray(apply(params, codes, roles, cond))
    b, t = codes.shape
    prefill = jax.jit(functools.partial(model.apply, method=prior.Prior.prefill), static_argnums=2)
    caches = prefill(params, cond, t)
    decode = jax.jit(functools.partial(model.apply, method=prior.Prior.step))
    previous = np.full(b, model.s.codebook_size, np.int32)
    for i in range(t):
        roles_t = {k: v[:, i] for k, v in roles.items()}
        step, caches = decode(params, caches, previous, roles_t, i)
        np.testing.assert_allclose(np.asarray(step), logits[:, i], atol=2e-5, err_msg=str(i))
        previous = codes[:, i]


def test_prior_dropout_acts_in_training_only(prior_setup):
    model, params, _, (codes, roles_b, cond_b, _, _) = prior_setup
    drop = prior.Prior(dataclasses.replace(model.s, dropout=0.5))  # the same params fit it
    batch = {"codes": codes, "mask": np.ones(codes.shape, bool), "roles": roles_b, "cond": cond_b}
    plain = float(prior.loss_fn(model, params, batch)[0])
    assert float(prior.loss_fn(drop, params, batch)[0]) == pytest.approx(plain, rel=1e-6)
    a, b, again = (
        float(prior.loss_fn(drop, params, batch, jax.random.key(k))[0]) for k in (0, 1, 0)
    )
    assert a != b and a != pytest.approx(plain, rel=1e-4) and a == again


def test_sampling_keeps_to_the_top_k_and_top_1_is_greedy(prior_setup):
    model, params, apply, (_, _, _, roles, cond) = prior_setup
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 11)))
    kept = np.isfinite(np.asarray(prior.filter_logits(logits, 2.0, 3)))
    assert (kept.sum(-1) == 3).all()
    np.testing.assert_array_equal(kept, np.argsort(-np.asarray(logits), -1).argsort(-1) < 3)

    def ranks(codes):  # each drawn code's rank under the logits given the drawn prefix
        b = len(codes)
        r = {k: np.tile(v, (b, 1)) for k, v in roles.items()}
        c = conditioning.stack([cond] * b)
        lg = np.asarray(apply(params, np.asarray(codes), r, c))
        order = np.argsort(-lg, -1).argsort(-1)
        return np.take_along_axis(order, np.asarray(codes)[..., None], -1)[..., 0]

    key = jax.random.key(3)
    hot = prior.sample(model, params, roles, cond, key, 16, temperature=5.0, top_k=2)
    assert ranks(hot).max() <= 1
    free = prior.sample(model, params, roles, cond, key, 16, temperature=5.0, top_k=0)
    assert ranks(free).max() > 1  # the check above would catch sampling outside the top k
    greedy = prior.sample(model, params, roles, cond, key, 16, top_k=1)
    assert (ranks(greedy) == 0).all()
    # with probabilities: the same path, and each code's own (filtered) distribution
    codes, probs = prior.sample(
        model, params, roles, cond, key, 16, temperature=5.0, top_k=2, probabilities=True
    )
    np.testing.assert_array_equal(codes, hot)
    probs = np.asarray(probs)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert ((probs > 0).sum(-1) <= 2).all() and (
        np.take_along_axis(probs, codes[..., None], -1) > 0
    ).all()
    r = {k: np.tile(v, (16, 1)) for k, v in roles.items()}
    logits = np.asarray(apply(params, np.asarray(codes), r, conditioning.stack([cond] * 16)))
    expected = jax.nn.softmax(prior.filter_logits(jnp.asarray(logits), 5.0, 2))
    np.testing.assert_allclose(probs, np.asarray(expected), atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        prior.sample(model, params, roles, cond, key, 2, temperature=0.0)


def test_conditioner_names_an_unknown_family_and_dataset():
    layout = layouts.from_params(jax.eval_shape(_mlp().init, jax.random.key(0)))
    c = conditioning.Conditioner(("ha_cnn",), {"digits": np.zeros(conditioning.DATA_FEATURES)}, 8)
    with pytest.raises(ValueError, match=r"family 'mlp'.* trained on ha_cnn only"):
        c.arch(conditioning.Architecture("mlp", (8, 8), 0.0, layout))
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        c.dataset("mnist")
    x = np.random.default_rng(0).normal(size=(16, 8, 8))
    a, b = conditioning.image_set_features(x), conditioning.image_set_features(x[..., None] + 3)
    np.testing.assert_allclose(a, b, atol=1e-5)  # per-image standardised, channels averaged
    assert not np.allclose(a, conditioning.image_set_features(x[:, ::-1]))


@pytest.mark.parametrize("make", [_mlp, _ha_cnn])
def test_novelty_aligns_a_permuted_copy_to_distance_zero(make):
    model = make()
    p = _np(model.init(jax.random.key(0)))
    spec = novelty.permutation_spec(model)
    rng = np.random.default_rng(1)
    perms = {g: rng.permutation(n) for g, n in spec.sizes.items()}
    q = novelty.permute(spec, p, perms)
    x = rng.normal(size=(6, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.apply(q, x), model.apply(p, x), atol=1e-5)
    assert novelty.distance(p, q) > 1.0
    moved, found = novelty.align(spec, p, q)
    assert novelty.distance(p, moved) < 1e-6
    other = _np(model.init(jax.random.key(2)))
    out = novelty.check(model, [q], [other, p, _np(model.init(jax.random.key(3)))], x)
    row = out["networks"][0]
    assert row["nearest"] == 1 and row["distance_aligned"] < 1e-5 and row["disagreement"] == 0
    assert row["distance_raw"] > 1.0 and out["zoo_nn_aligned"] <= out["zoo_nn_raw"] + 1e-9
    if make is _mlp:  # layers 0 and 1 share one permutation (the residual skip)
        assert sorted(spec.sizes) == ["P0", "P2"]


def test_novelty_refuses_a_model_it_cannot_align():
    cnn = models.CNN(input_shape=(8, 8), num_classes=10, widths=(8,), depths=(1,), groups=4)
    with pytest.raises(ValueError, match="handles MLP and HaCNN params; got a CNN"):
        novelty.permutation_spec(cnn)


def _config(zoo_path, **fields):
    c = load_config("igpg", f"tiny,{zoo_path}")
    for key, value in fields.items():
        group, _, field = key.rpartition("__")
        (c[group] if group else c)[field] = value
    return c


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"vqvae__chunk_size": 0}, "vqvae.chunk_size must be an int > 0"),
        ({"finetune__steps": (0, -1)}, "finetune.steps"),
        ({"finetune__steps": (10, 5)}, "finetune.steps"),
        ({"heldout": ("imagenet/mlp-8",)}, "heldout: unknown dataset 'imagenet'"),
        ({"heldout": ("digits/resnet-8",)}, "heldout: 'digits/resnet-8': unknown architecture"),
        ({"heldout": ("digits-mlp-8",)}, "heldout: 'digits-mlp-8' is not a pair name"),
        ({"sample__top_k": -1}, "sample.top_k"),
        ({"select__families": ("cnn",)}, "select.families: 'cnn' is not allowed"),
        ({"sample__fallback": "grow"}, "sample.fallback must be one of"),
        ({"sample__decode": "soft"}, "sample.decode must be one of"),
        ({"prior__dropout": 1.0}, r"prior.dropout must be in \[0, 1\)"),
        (
            {"sample__fallback": "deepen", "heldout": ("digits/ha_cnn-8x8-k3",)},
            "grows MLPs only; held-out pair 'digits/ha_cnn-8x8-k3' is a ha_cnn",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        igpg.validate(_config("runs/zoo_tiny", **fields))


def test_a_non_bool_standardize_is_refused():
    cfg = _config("runs/zoo_tiny").to_dict()
    cfg["vqvae"]["standardize"] = "yes"  # a ConfigDict would refuse the type itself
    with pytest.raises(ValueError, match="vqvae.standardize must be True or False, got 'yes'"):
        igpg.validate(cfg)


def test_every_preset_validates_and_the_fixed_one_holds_out_the_middle_depth():
    from configs import igpg as presets

    specs = {name: igpg.validate(load_config("igpg", name)) for name in presets.PRESETS}
    fixed = specs["fixed"]
    assert fixed.zoo == "runs/zoo_digits_fixed" and fixed.heldout == ("digits/mlp-16x16",)
    assert fixed.sample.temperature == 1.0 and fixed.select.max_tokens == 440
    assert fixed.sample.fallback == "deepen" and fixed.sample.decode == "mean"
    assert fixed.vqvae.standardize and fixed.select.above_median
    assert all(s.sample.fallback == "none" for name, s in specs.items() if name != "fixed")


def test_a_partial_zoo_or_a_missing_pair_is_refused_before_training(zoo_path, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(zoo_path, partial)
    manifest = json.loads((partial / "zoo.json").read_text())
    manifest["groups"].append({**manifest["groups"][0], "name": "digits_mlp-0009"})
    (partial / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="allow_partial is False but the zoo .* is partial"):
        igpg.run(_config(partial), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"heldout: pair 'digits/mlp-64' is not in the zoo"):
        igpg.run(_config(zoo_path, heldout=("digits/mlp-64",)), tmp_path / "b", progress=False)
    unseen = r"vqvae.standardize: held-out pair 'digits/mlp-8x8' has an architecture no seen"
    with pytest.raises(ValueError, match=unseen):
        igpg.run(_config(zoo_path, vqvae__standardize=True), tmp_path / "c", progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.fixture(scope="module")
def tiny_run(zoo_path, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("igpg_run")
    lines = []
    out = igpg.run(_config(zoo_path), workdir, progress=False, log=lines.append)
    return workdir, out, lines


def test_end_to_end_writes_every_table(tiny_run):
    workdir, out, lines = tiny_run
    res = json.loads((workdir / "results.json").read_text())
    assert res["pairs"] == {"seen": ["digits/mlp-8"], "heldout": ["digits/mlp-8x8"], "excluded": {}}
    assert out["done"] == ["vqvae", "prior", "digits/mlp-8", "digits/mlp-8x8"]
    recon = {r["pair"]: r for r in res["reconstruction"]}
    assert recon["digits/mlp-8x8"]["heldout"] and recon["digits/mlp-8"]["networks"] == 4
    assert 0 < recon["digits/mlp-8"]["relative_weight_error"] < 1
    (seen,) = res["seen"]
    assert seen["generated"] == 3 and 0 <= seen["generated_accuracy"]["min"] <= 1
    assert seen["zoo_median_network"] == sorted(seen["zoo_values"])[1]
    table = {(r["start"], r.get("k")): r for r in res["heldout"]}
    assert {k for s, k in table if s == "generated"} == {0, 2, 5}
    assert {k for s, k in table if s == "random"} == {0, 2, 5}
    assert "params layout" in table[("transfer", None)]["not_applicable"]
    assert len(res["novelty"]) == 2 and all(r["zoo_nn_aligned"] > 0 for r in res["novelty"])
    assert res["sizes"]["train_networks"] == 4 and res["sizes"]["prior_params"] > 0
    assert 0 < res["vqvae"]["usage"] <= 1
    nll = res["prior"]["nll"]  # one of the 4 networks validates the prior's step
    assert set(nll["digits/mlp-8"]) == {"train", "val"} and set(nll["digits/mlp-8x8"]) == {
        "heldout"
    }
    assert res["prior"]["step"] in (15, 30) and res["prior"]["validation_sequences"] == 1
    assert res["prior"]["val_nll"] == pytest.approx(nll["digits/mlp-8"]["val"], rel=1e-5)
    assert (workdir / "igpg_seen.png").exists() and (workdir / "igpg_finetune.png").exists()
    assert any("digits/mlp-8x8 (held out)" in line for line in lines)


def test_vqvae_codes_decode_to_params_of_the_exact_shapes_and_close_values(tiny_run, zoo_path):
    workdir, out, _ = tiny_run
    spec = igpg.validate(_config(zoo_path))
    zoo = igpg.open_zoo(spec)
    pairs, _ = igpg_pairs.select(zoo, spec)
    ex = igpg.Experiment(spec, zoo, pairs, workdir, False, lambda _: None)
    codec = ex.codec()  # restored from the run's last checkpoint
    assert ex.done == []
    for pair in pairs.values():  # seen (trained on) and held out
        w = ex.weights(pair)
        codes = codec.encode(w, pair.layout)
        assert codes.shape == (len(w), pair.tokens) and 0 <= codes.min() <= codes.max() < 64
        tree = codec.decode_params(codes[0], pair.layout)
        expected = zoo.params(ex.records(pair)[0])
        assert jax.tree.map(np.shape, tree) == jax.tree.map(np.shape, expected)
        w_hat = codec.decode(codes, pair.layout)
        np.testing.assert_allclose(np.asarray(layouts.flatten(tree, pair.layout)), w_hat[0])
        error = np.linalg.norm(w_hat - w) / np.linalg.norm(w)  # 1 for decoding to zeros
        assert error < 0.65, (pair.name, error)
    assert out["vqvae"]["recon_mse"] < 0.3 * out["vqvae"]["value_var"]


def test_a_rerun_skips_finished_parts_and_another_config_is_refused(tiny_run, zoo_path):
    workdir, first, _ = tiny_run
    again = igpg.run(_config(zoo_path), workdir, progress=False, log=lambda _: None)
    assert again["done"] == []
    assert sorted(again["skipped"]) == sorted(["digits/mlp-8", "digits/mlp-8x8", "vqvae", "prior"])
    for table in ("reconstruction", "seen", "heldout", "novelty"):
        assert again[table] == first[table]
    with pytest.raises(workdir_lib.WorkdirError, match="fields differ: config.sample.top_k"):
        igpg.run(_config(zoo_path, sample__top_k=4), workdir, progress=False)


def test_the_deepen_fallback_writes_a_held_out_depth_as_a_seen_one(tiny_run, zoo_path, tmp_path):
    workdir, first, _ = tiny_run
    for part in ("vqvae", "prior"):  # the same VQ-VAE and prior: only the pairs are rerun
        shutil.copytree(workdir / part, tmp_path / part)
    cfg = _config(zoo_path, sample__fallback="deepen")
    out = igpg.run(cfg, tmp_path, progress=False, log=lambda _: None)
    assert out["done"] == ["digits/mlp-8", "digits/mlp-8x8"]
    (held,) = out["heldout_zero_shot"]
    assert held["generated_as"] == "digits/mlp-8" and out["seen"][0]["generated_as"] is None
    table = {(r["start"], r["k"]): r for r in out["heldout"]}
    assert table[("transfer", 0)]["from"] == "digits/mlp-8"
    assert table[("transfer", 0)]["mean"] > table[("random", 0)]["mean"] + 0.3
    # grown, a zoo network computes what it computed (at its own activation slope)
    spec = igpg.validate(cfg)
    zoo = igpg.open_zoo(spec)
    pairs, _ = igpg_pairs.select(zoo, spec)
    ex = igpg.Experiment(spec, zoo, pairs, tmp_path, False, lambda _: None)
    small, big = pairs["digits/mlp-8"], pairs["digits/mlp-8x8"]
    best = max(small.records, key=lambda r: r["test_accuracy"])
    w = igpg_pairs.flat(zoo, [best])
    (grown,) = ex._grown(small, big, w)
    x = ex.data.images(best, "test", 64)
    deep = store.model_of({**best, "model": {**best["model"], "widths": [8, 8]}})
    np.testing.assert_allclose(
        np.asarray(deep.apply(layouts.unflatten(grown, big.layout), x)),
        np.asarray(store.model_of(best).apply(layouts.unflatten(w[0], small.layout), x)),
        atol=1e-5,
    )
    del pairs["digits/mlp-8"]  # with no seen depth to grow from, the fallback is refused
    pairs["digits/mlp-8x8"] = dataclasses.replace(pairs["digits/mlp-8x8"], heldout=True, train=[])
    assert igpg_pairs.grow_source(pairs["digits/mlp-8x8"], pairs) is None


def test_standardised_codes_and_mean_decoding_end_to_end(zoo_path, tmp_path):
    cfg = _config(
        zoo_path, vqvae__standardize=True, sample__decode="mean", sample__fallback="deepen"
    )
    lines = []
    out = igpg.run(cfg, tmp_path, progress=False, log=lines.append)
    recon = {r["pair"]: r for r in out["reconstruction"]}
    assert recon["digits/mlp-8x8"]["coded"] is False and recon["digits/mlp-8"]["networks"] == 4
    assert any("digits/mlp-8x8: not coded" in line for line in lines)
    assert out["prior"]["nll"]["digits/mlp-8x8"] == {}  # held out, no frame: not scored
    (held,) = out["heldout_zero_shot"]
    assert held["generated_as"] == "digits/mlp-8"
    (seen,) = out["seen"]
    assert seen["generated"] == 3 and 0 <= seen["generated_accuracy"]["min"] <= 1
    for row in out["novelty"]:
        assert 0 <= row["generated_spread"] <= 1 and 0 <= row["zoo_spread"] <= 1
    # the seen pair's frame is its training networks' per-value mean and spread
    spec = igpg.validate(cfg)
    zoo = igpg.open_zoo(spec)
    pairs, _ = igpg_pairs.select(zoo, spec)
    ex = igpg.Experiment(spec, zoo, pairs, tmp_path, False, lambda _: None)
    small = pairs["digits/mlp-8"]
    w, frame = ex.weights(small), ex.codec().frames[small.layout]
    np.testing.assert_allclose(frame.shift, w.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frame.scale, np.maximum(w.std(0), frame.scale.min()), rtol=1e-4)
    assert set(ex.codec().frames) == {small.layout}
