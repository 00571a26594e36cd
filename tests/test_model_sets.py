"""Tests for uhn_jax.model_sets: sampling, deduplication, JSON round trip, hold-out split."""

import json

import pytest

from uhn_jax import config as config_lib
from uhn_jax import model_sets


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
