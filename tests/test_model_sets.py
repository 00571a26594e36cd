"""Tests for uhn_jax.model_sets: sampling, deduplication, JSON round trip, hold-out split."""

import json

import pytest

from uhn_jax import config as config_lib
from uhn_jax.training import model_sets


def test_sample_is_deterministic_distinct_and_in_range():
    family = model_sets.MLPFamily(min_depth=1, max_depth=3, widths=(16, 32, 48))
    assert family.size == 3 + 9 + 27
    a = model_sets.sample(family, 30, num_held_out=6, seed=7)
    b = model_sets.sample(family, 30, num_held_out=6, seed=7)
    assert a == b and a != model_sets.sample(family, 30, num_held_out=6, seed=8)
    keys = [json.dumps(m, sort_keys=True) for m in a.models]
    assert len(set(keys)) == 30
    for m in a.models:
        assert m["family"] == "mlp" and 1 <= len(m["widths"]) <= 3
        assert set(m["widths"]) <= {16, 32, 48}
    # The held-out models are the last ones, as in the reference.
    assert a.held_out == a.models[-6:] and a.hold_in == a.models[:-6]


def test_whole_family_can_be_drawn_and_no_more():
    family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(8, 16))
    full = model_sets.sample(family, family.size, num_held_out=1, seed=0)
    assert len(full.models) == 6
    with pytest.raises(ValueError, match="only 6 distinct"):
        model_sets.sample(family, 7, num_held_out=1, seed=0)


def test_json_round_trip_and_bad_files(tmp_path):
    s = model_sets.sample(model_sets.MLPFamily(), 12, num_held_out=3, seed=1)
    path = model_sets.save(s, tmp_path / "sets" / "mlp.json")
    assert model_sets.load(path) == s
    assert json.loads(path.read_text())["schema_version"] == model_sets.SCHEMA_VERSION
    d = json.loads(path.read_text())
    d["schema_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="schema_version 99"):
        model_sets.load(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        model_sets.load(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="num_held_out"):
        model_sets.sample(model_sets.MLPFamily(), 4, num_held_out=4, seed=0)


def test_model_config_applies_an_architecture():
    arch = {"family": "mlp", "widths": [32, 64]}
    cfg = model_sets.model_config(config_lib.ModelConfig(), arch)
    assert cfg.widths == (32, 64) and cfg.family == "mlp"
    with pytest.raises(ValueError, match="unknown model field"):
        model_sets.model_config(config_lib.ModelConfig(), {"depth": 3})


# ----------------------------------------------------------------------------- padding

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from uhn_jax import models as base_models  # noqa: E402
from uhn_jax.core import descriptors, layouts  # noqa: E402
from uhn_jax.training import members as members_lib  # noqa: E402
from uhn_jax.training import setup as setup_lib  # noqa: E402
from uhn_jax.training import step as step_lib  # noqa: E402
from uhn_jax.training import tasks as tasks_lib  # noqa: E402


def _desc(model):
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    return descriptors.build(layout, model.layers(), model.global_fields())


def _into_corners(member_params, big, layer_map):
    big_params = jax.tree.map(jnp.zeros_like, big.init(jax.random.key(0)))
    for layer, tensors in member_params.items():
        for name, value in tensors.items():
            target = big_params[layer_map[layer]][name]
            corner = tuple(slice(0, n) for n in value.shape)
            big_params[layer_map[layer]][name] = target.at[corner].set(value)
    return big_params


@pytest.mark.parametrize("widths", [(32,), (48, 16), (64, 64, 64), (16, 64)])
def test_largest_mlp_runs_exactly_as_a_member(widths):
    big = base_models.MLP(input_shape=(8, 8), num_classes=10, widths=(64, 64, 64))
    member = base_models.MLP(input_shape=(8, 8), num_classes=10, widths=widths)
    params = member.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (5, 8, 8))
    masks = jax.tree.map(jnp.asarray, big.member_masks(member))
    big_params = _into_corners(params, big, big.layer_map(member))
    np.testing.assert_allclose(
        big.apply(big_params, x, masks=masks), member.apply(params, x), rtol=1e-5, atol=1e-5
    )


def test_embed_puts_the_member_descriptors_in_the_corners():
    big = base_models.MLP(input_shape=(8, 8), num_classes=10, widths=(64, 64, 64))
    member = base_models.MLP(input_shape=(8, 8), num_classes=10, widths=(48, 16))
    emb = model_sets.embed(_desc(member), _desc(big), big.layer_map(member))
    own = _desc(member)
    assert emb.weight_mask.shape == (_desc(big).num_params,)
    assert int(emb.weight_mask.sum()) == own.num_params
    # Tensor and row-major orders are kept, so the masked rows are the member's own rows.
    np.testing.assert_array_equal(emb.desc.index[emb.weight_mask == 1], own.index)
    assert emb.tensor_present.tolist() == [1, 1, 1, 1, 0, 0, 1, 1]
    np.testing.assert_array_equal(emb.desc.targets[emb.tensor_present == 1], own.targets)
    assert emb.layer_mask.tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(emb.structure_input[:3], own.structure_input)
    assert not emb.structure_input[3:].any()
    with pytest.raises(ValueError, match="not a member"):
        big.layer_map(base_models.MLP(input_shape=(8, 8), num_classes=10, widths=(80,)))


# ----------------------------------------------------------------------------- training


def _tiny_set(tmp_path, n=6, held_out=2):
    family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(8, 16))
    return str(model_sets.save(model_sets.sample(family, n, held_out, seed=3), tmp_path / "s.json"))


def _set_exp(path, **train):
    from conftest import load_config

    cfg = load_config("test")
    cfg.model.model_set = path
    cfg.generator.structure = True
    cfg.generator.chunk_size = 0
    for k, v in train.items():
        cfg.train[k] = v
    return config_lib.from_config_dict(cfg)


@pytest.mark.slow
def test_model_set_run_trains_all_members_with_one_compile_per_stage(tmp_path):
    from uhn_jax.training import train

    exp = _set_exp(_tiny_set(tmp_path), steps=6, init_steps=3)
    results = train.run(exp, tmp_path / "run", progress=False)
    assert results["num_members"] == 6 and results["num_hold_in"] == 4
    assert results["train_step_compiles"] <= 2  # init and task stage; not one per member
    splits = [r["split"] for r in results["members"]]
    assert splits == ["hold_in"] * 2 + ["held_out"] * 2
    for key in ("hold_in_test_metric", "held_out_test_metric"):
        assert 0.0 <= results[key] <= 1.0
    assert results["test_metric"] == results["held_out_test_metric"]
    assert (tmp_path / "run" / "members.png").stat().st_size > 1000
    # A member's generated weights are zero outside its corners.
    ds = tasks_lib.load_dataset(exp)
    setup, stacked, mset, members = members_lib.make_multi_setup(exp, ds)
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    arrays = setup_lib.select_member(jax.tree.map(jnp.asarray, stacked), 1)
    params = step_lib.materialize_params(setup, state["params"], state["constants"], arrays)
    w = layouts.flatten(params, setup.layout)
    assert not np.asarray(w)[stacked.weight_mask[1] == 0].any()
    assert np.asarray(w)[stacked.weight_mask[1] == 1].std() > 0


def test_model_set_errors(tmp_path):

    path = _tiny_set(tmp_path)
    exp = _set_exp(path)
    ds = tasks_lib.load_dataset(exp)
    with pytest.raises(ValueError, match="structure"):
        from conftest import load_config

        cfg = load_config("test")
        cfg.model.model_set = path
        members_lib.make_multi_setup(config_lib.from_config_dict(cfg), ds)
    import dataclasses

    with pytest.raises(ValueError, match="mode='uhn'"):
        members_lib.make_multi_setup(dataclasses.replace(exp, mode="direct"), ds)


def test_structure_mask_ignores_padded_layers():
    from uhn_jax import generator

    model = base_models.MLP(input_shape=(8, 8), num_classes=10, widths=(16, 16))
    d = _desc(model)
    gen = generator.Generator(
        index_ranges=d.index_ranges(),
        structure_ranges=d.structure_ranges(),
        structure=True,
        hidden=16,
        n_freqs=16,
    )
    v = generator.init(gen, jax.random.key(0))
    # Make the zero-initialised last layer non-zero so the vector depends on its input.
    v = jax.tree.map(lambda a: a + 0.1, v)
    s = jnp.asarray(d.structure_input)
    padded = jnp.concatenate([s, jnp.zeros((2, 29))])
    mask = jnp.asarray([1.0, 1.0, 1.0, 0.0, 0.0])
    own = gen.apply(v, s, method=generator.Generator.structure_vector)
    masked = gen.apply(v, padded, mask, method=generator.Generator.structure_vector)
    unmasked = gen.apply(v, padded, method=generator.Generator.structure_vector)
    np.testing.assert_allclose(masked, own, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(unmasked - own)).max() > 1e-4
