"""The model zoo (issue 26, part 1): groups of networks trained in one step through the loop,
stored per snapshot with their metadata, resumable, checked when read, openable without uhn_jax.

One tiny digits zoo (``configs/zoo.py:digits_tiny``: 2 groups x 4 MLPs x 2 snapshots, 6 steps)
is built once per module; the other tests reuse it and its compiled programs.
"""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_config, subprocess_env

from uhn_jax.core import layouts
from uhn_jax.data import images
from uhn_jax.hypernets import population as population_lib
from uhn_jax.training import zoo, zoo_config
from uhn_jax.weightspace import zoo as store

GROUPS = ("digits_mlp-0000", "digits_mlp-0001")


def tiny():
    return load_config("zoo", "digits_tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "tiny"
    lines = []
    out = zoo.build(tiny(), path, progress=False, log=lines.append)
    return path, out, lines


def _weights(path, group):
    return store.open_group(path, group).weights


def _assert_same_weights(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_tiny_zoo_builds_every_network_at_every_snapshot(built):
    path, out, lines = built
    assert out["complete"] and out["groups"] == 2 and out["networks"] == 8
    assert out["records"] == 16 and out["datasets"] == ["digits"] and out["families"] == ["mlp"]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert out["trained"] == [(GROUPS[0], 0), (GROUPS[1], 0)] and out["skipped"] == []
    loaded = store.load(path)
    r = loaded.records[5]  # member 2, snapshot 1 of the first group
    assert (r["group"], r["member"], r["snapshot"], r["step"]) == (GROUPS[0], 2, 1, 6)
    assert r["network"] == 2 and r["widths"] == [8] and r["epoch"] == 6 * 16 / 1437
    for key in ("lr", "weight_decay", "init_scale", "seed", "dropout", "slope", "test_accuracy"):
        assert key in r
    # Members differ in their hyperparameters; the group shares its architecture.
    first = [x for x in loaded.records if x["group"] == GROUPS[0] and x["snapshot"] == 0]
    assert len({x["lr"] for x in first}) == 4 and len({x["seed"] for x in first}) == 4
    w = loaded.group(GROUPS[0]).weights
    assert w["params"]["layer_000"]["kernel"].shape == (4, 2, 64, 8)
    assert not (path / store.RUNS_DIR / GROUPS[0]).exists()  # checkpoints removed once stored


def test_stored_weights_reproduce_the_recorded_test_accuracy(built):
    path, _, _ = built
    loaded = store.load(path)
    data = images.load_digits()
    for r in (loaded.records[3], loaded.records[-1]):
        model = loaded.model(r)
        logits = model.apply(loaded.params(r), data.x_test)
        acc = float((np.asarray(logits).argmax(-1) == data.y_test).mean())
        assert acc == pytest.approx(r["test_accuracy"], abs=1e-6)
        flat, layout = loaded.flat([r])
        np.testing.assert_array_equal(flat[0], layouts.flatten(loaded.params(r), layout))


def test_per_member_hyperparameters_take_effect(built):
    # Member 0 at lr 0 keeps its (scaled) init exactly; member 1, same seed and scale but lr > 0,
    # moves; member 2, same seed at twice the scale, starts at twice member 1's init.
    spec = zoo_config.validate(tiny())
    group = zoo_config.plan(spec)[0]
    seed = group.hparams["seed"][0]
    hp = {"lr": (0.0, 1e-2, 0.0, 1e-2), "weight_decay": (0.0, 0.0, 0.0, 0.5),
          "init_scale": (1.0, 1.0, 2.0, 1.0), "seed": (seed, seed, seed, seed)}  # fmt: skip
    group = dataclasses.replace(group, hparams=hp)
    data = zoo.load_data(spec, group, images.load_digits(), None)
    gs = zoo.make_setup(spec, group, data, None)
    state = zoo.init_state(gs, group)
    init = jax.tree.map(np.asarray, state["params"])
    fn = zoo.step_fn(gs, group, data)
    for step in range(3):
        state, metrics, _ = fn(step, state)
    params = jax.tree.map(np.asarray, state["params"])
    own = population_lib.init_member(gs.model, np.int32(seed), np.float32(1.0))
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (init, params, own)), strict=True):
        np.testing.assert_array_equal(b[0], a[0])  # lr 0: unchanged
        np.testing.assert_allclose(a[0], np.asarray(c), rtol=1e-6)  # the model's own init
        np.testing.assert_allclose(a[2], 2 * a[0], rtol=1e-6)  # init scale 2
        assert not np.allclose(b[1], a[1])  # lr > 0: trained
    # Weight decay 0.5 at the same lr shrinks the weights below member 1's.
    norm = [sum(float(np.square(x[m]).sum()) for x in jax.tree.leaves(params)) for m in (1, 3)]
    assert norm[1] < norm[0]
    assert float(metrics["loss"]) > 0 and int(metrics["diverged"]) == 0


def test_a_diverging_member_is_frozen_and_recorded_without_stopping_the_others(built):
    spec = zoo_config.validate(tiny())
    group = zoo_config.plan(spec)[0]
    lr = (1e38, *group.hparams["lr"][1:])  # member 0's first update overflows its logits
    group = dataclasses.replace(group, hparams={**group.hparams, "lr": lr})
    data = zoo.load_data(spec, group, images.load_digits(), None)
    gs = zoo.make_setup(spec, group, data, None)
    state = zoo.init_state(gs, group)
    fn = zoo.step_fn(gs, group, data)
    for step in range(3):  # step 2 ends in the first snapshot (at step 3)
        state, metrics, _ = fn(step, state)
    diverged = np.asarray(state["diverged_at"])
    assert diverged[0] in (0, 1) and (diverged[1:] == -1).all()
    assert int(metrics["diverged"]) == 1 and np.isfinite(float(metrics["loss"]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    # The snapshot is finite (the loop refuses a checkpoint holding NaN/Inf): member 0's
    # overflowing loss is stored as the float32 maximum, null in records.json.
    snapshots = jax.tree.map(np.asarray, state["snapshots"])
    assert all(np.isfinite(x[:, 0]).all() for x in jax.tree.leaves(snapshots))
    assert snapshots["test_loss"][0, 0] == zoo.LOSS_OVERFLOW > snapshots["test_loss"][1, 0]
    host = {k: snapshots[k] for k in store.METRICS} | {"diverged_at": diverged}
    record = zoo.group_meta(spec, group, data, snapshots, host)["records"][0]
    assert record["test_loss"] is None and record["diverged_at_step"] == diverged[0]


def test_interrupted_zoo_resumes_bit_identically_and_skips_finished_groups(built, tmp_path):
    path, _, _ = built
    part = tmp_path / "zoo"
    out = zoo.build(tiny(), part, progress=False, stop_after=8, log=lambda s: None)
    # Group 0 (6 steps) is stored; group 1 stopped after 2 of its 6 steps, checkpointed.
    assert not out["complete"] and out["missing"] == [GROUPS[1]] and out["networks"] == 4
    with pytest.raises(store.ZooError, match=f"incomplete.*{GROUPS[1]}"):
        store.load(part)
    assert len(store.load(part, allow_partial=True).records) == 8
    done = part / store.GROUPS_DIR / GROUPS[0]
    mtimes = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    out = zoo.build(tiny(), part, progress=False, log=lambda s: None)
    assert out["complete"] and out["skipped"] == [GROUPS[0]]
    assert out["trained"] == [(GROUPS[1], 2)]  # resumed at step 2: nothing trained twice
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*")} == mtimes
    for g in GROUPS:
        _assert_same_weights(_weights(part, g), _weights(path, g))
    assert store.load(part).records == store.load(path).records


def _copy(built, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(built[0], dest)
    return dest


def test_a_truncated_group_file_is_named(built, tmp_path):
    path = _copy(built, tmp_path)
    weights = path / store.GROUPS_DIR / GROUPS[1] / store.WEIGHTS
    victim = max((p for p in weights.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(store.ZooError, match=re.escape(str(victim)) + ".*truncated"):
        store.load(path)


def test_a_changed_file_of_the_same_size_is_named_when_read(built, tmp_path):
    path = _copy(built, tmp_path)
    records = path / store.GROUPS_DIR / GROUPS[0] / store.RECORDS
    text = records.read_text()
    records.write_text(text.replace('"digits"', '"dIgits"', 1))
    with pytest.raises(store.ZooError, match=re.escape(str(records)) + ".*sha256"):
        store.load(path)


def test_foreign_files_and_directories_are_named(built, tmp_path):
    path = _copy(built, tmp_path)
    stray = path / store.GROUPS_DIR / GROUPS[0] / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(store.ZooError, match=re.escape(f"{stray} is a foreign file")):
        store.load(path)
    stray.unlink()
    (path / store.GROUPS_DIR / "someone_else").mkdir()
    with pytest.raises(store.ZooError, match="someone_else is foreign"):
        store.load(path)
    (path / store.GROUPS_DIR / "someone_else").rmdir()
    (path / store.ZOO_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(store.ZooError, match=re.escape(f"{path / store.ZOO_FILE} is a foreign")):
        store.load(path)
    with pytest.raises(store.ZooError, match="has no zoo.json"):
        store.load(tmp_path)


def test_a_missing_group_directory_is_named(built, tmp_path):
    path = _copy(built, tmp_path)
    shutil.rmtree(path / store.GROUPS_DIR / GROUPS[1])
    with pytest.raises(store.ZooError, match=f"group {GROUPS[1]} is listed as complete"):
        store.load(path)


def test_a_zoo_grows_by_more_groups_without_retraining_the_old_ones(built, tmp_path):
    path = _copy(built, tmp_path)
    done = {p: p.stat().st_mtime_ns for p in (path / store.GROUPS_DIR).rglob("*")}
    cfg = tiny()
    cfg.populations.digits_mlp.groups = 3
    out = zoo.build(cfg, path, progress=False, log=lambda s: None)
    assert out["complete"] and out["skipped"] == list(GROUPS)
    assert out["trained"] == [("digits_mlp-0002", 0)] and out["networks"] == 12
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the old groups are untouched
    grown = store.load(path)
    assert grown.records[:16] == store.load(built[0]).records and len(grown.records) == 24
    with pytest.raises(store.ZooError, match="fields differ: populations.digits_mlp.groups"):
        zoo.build(tiny(), path, progress=False)  # fewer groups: not a growth


def test_a_zoo_directory_refuses_another_config(built):
    cfg = tiny()
    cfg.hparams.lr = (1e-3, 1e-2)
    with pytest.raises(store.ZooError, match="fields differ: hparams.lr"):
        zoo.build(cfg, built[0], progress=False)


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "populations.digits_mlp.data.name",
            "nope",
            "populations.digits_mlp: unknown dataset 'nope'",
        ),
        ("group_size", 0, "group_size"),
        ("train.snapshot_steps", (6, 3), "train.snapshot_steps must be"),
        ("populations.digits_mlp.widths", (), "populations.digits_mlp.widths must be a non-empty"),
        ("populations.digits_mlp.groups", 0, "the zoo has no networks"),
        ("populations.digits_mlp.family", "gcn", "populations.digits_mlp.family"),
        ("hparams.lr", (0.0, 1.0), "hparams.lr must be"),
        ("hparams.dropout", (0.2, 1.0), "hparams.dropout must be"),
        ("train.member_map", "pmap", "train.member_map"),
        ("populations.digits_mlp.fixed_seed", -2, "populations.digits_mlp.fixed_seed must be"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(field, value, message, tmp_path):
    cfg = tiny()
    *parents, last = field.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        zoo.build(cfg, tmp_path / "z", progress=False)
    assert not (tmp_path / "z").exists()  # refused before anything is written


def test_every_named_zoo_validates_and_the_cpu_zoo_has_1024_networks():
    from configs import zoo as presets

    for name in [*(n for n in presets.ZOOS if n != "cpu"), "cpu,DATA"]:
        spec = zoo_config.validate(load_config("zoo", name))
        assert len(zoo_config.plan(spec)) * spec.group_size == spec.networks
    cpu = zoo_config.validate(load_config("zoo", "cpu,DATA"))
    assert cpu.networks == 1024
    assert {p.data.name for p in cpu.populations} == {"digits", "mnist", "fashion_mnist", "cifar10"}
    assert {p.family for p in cpu.populations} == {"mlp", "cnn", "ha_cnn"}
    # Deterministic: the same plan from the same config.
    again = zoo_config.validate(load_config("zoo", "cpu,DATA"))
    assert zoo_config.plan(cpu) == zoo_config.plan(again)
    # The one-population zoos grow a population of a smaller zoo: its groups come first,
    # unchanged (a group's draws depend on the seed, the population and its index only).
    for name, smaller, population, networks in (
        ("digits_mlp", "digits", "digits_mlp", 1024),
        ("fashion_mlp", "cpu,DATA", "fashion_mnist_mlp", 1024),
        ("digits_fixed_large", "digits_fixed", "digits_mlp", 1536),
    ):
        big = zoo_config.validate(load_config("zoo", name))
        assert big.networks == networks and [p.name for p in big.populations] == [population]
        small = zoo_config.plan(zoo_config.validate(load_config("zoo", smaller)))
        small = [_unplaced(g) for g in small if g.population == population]
        assert [_unplaced(g) for g in zoo_config.plan(big)[: len(small)]] == small


def test_a_fixed_seed_population_varies_only_the_hyperparameters():
    cfg = tiny()
    drawn = zoo_config.plan(zoo_config.validate(cfg))
    assert len({s for g in drawn for s in g.hparams["seed"]}) == 8  # one seed per network
    cfg.populations.digits_mlp.fixed_seed = 7
    fixed = zoo_config.plan(zoo_config.validate(cfg))
    for a, b in zip(drawn, fixed, strict=True):
        assert b.hparams["seed"] == (7,) * 4  # one init and one batch order for all
        assert {k: v for k, v in a.hparams.items() if k != "seed"} == {
            k: v for k, v in b.hparams.items() if k != "seed"
        }  # the other draws unchanged
        assert (a.model, a.data) == (b.model, b.data)
    named = zoo_config.plan(zoo_config.validate(load_config("zoo", "digits_fixed")))
    assert {s for g in named for s in g.hparams["seed"]} == {0} and len(named) == 48


def _unplaced(group):
    """A group's plan without its place in the zoo (its index and first network id)."""
    return dataclasses.replace(group, index=0, first_network=0)


def test_a_group_opens_with_plain_orbax_and_json(built):
    path, _, _ = built
    group = path / "groups" / GROUPS[0]
    with ocp.StandardCheckpointer() as ckptr:
        w = ckptr.restore((group / "weights").absolute())
    meta = json.loads((group / "records.json").read_text())
    records = meta["records"]
    assert len(records) == 4 * 2 and meta["model"]["widths"] == [8]
    r = records[3]
    acc = np.asarray(w["test_accuracy"])[r["member"], r["snapshot"]]
    assert acc == pytest.approx(r["test_accuracy"])
    ours = store.open_group(path, GROUPS[0]).weights
    _assert_same_weights(jax.tree.map(np.asarray, w), ours)


def test_the_command_line_validates_a_zoo_config():
    from uhn_jax import cli

    ok = cli.check_command(["zoo", "--config", "configs/zoo.py:digits_tiny", "--workdir", "w"])
    assert ok.validated.networks == 8
    with pytest.raises(cli.CommandError, match="group_size"):
        cli.check_command(
            [
                "zoo",
                "--config",
                "configs/zoo.py:digits_tiny",
                "--workdir",
                "w",
                "--config.group_size=0",
            ]  # fmt: skip
        )


_SHARDED = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import jax
    from configs import zoo as zoo_config_file
    from uhn_jax.training import zoo
    cfg = zoo_config_file.get_config("digits_tiny")
    cfg.populations.digits_mlp.groups = 1
    cfg.train.num_devices = 2
    spec = zoo.validate(cfg)
    group = zoo.plan(spec)[0]
    mesh = zoo.sharding_lib.make_mesh(2)
    data = zoo.load_data(spec, group, zoo.data_registry.load(group.data), mesh)
    gs = zoo.make_setup(spec, group, data, mesh)
    state = zoo.step_fn(gs, group, data)(0, zoo.init_state(gs, group))[0]
    kernel = state["params"]["layer_000"]["kernel"]
    out = zoo.build(cfg, sys.argv[1], progress=False)
    print(json.dumps({"devices": len(jax.devices()), "spec": list(kernel.sharding.spec),
                      "shards": len(kernel.addressable_shards), "complete": out["complete"]}))
    """
)


@pytest.mark.slow
def test_the_member_axis_is_split_over_two_devices_with_the_same_weights(built, tmp_path):
    env = subprocess_env("--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = str(zoo_config.__file__).rsplit("/uhn_jax/", 1)[0]
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(tmp_path / "z2"), root],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"devices": 2, "spec": ["d", None, None], "shards": 2, "complete": True}
    two = _weights(tmp_path / "z2", GROUPS[0])
    one = _weights(built[0], GROUPS[0])
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
