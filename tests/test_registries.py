"""The open registries: hypernetwork kinds and model families, as configs and runs see them.

A kind registered from user code trains through the library's one loop; a family registered
from user code is accepted by the config; unknown names fail at the config boundary, naming
what is registered.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config

import uhn_jax
from uhn_jax import config as config_lib
from uhn_jax import hypernets, models
from uhn_jax.hypernets import direct


@dataclasses.dataclass(frozen=True)
class L2Direct(direct.Direct):
    """Direct training plus an L2 penalty: a kind that only adds to the loss."""

    name: str = "l2direct"
    weight: float = 1.0

    def extra_loss(self, setup, params, constants, cond, aux):
        l2 = sum(jnp.sum(x**2) for x in jax.tree.leaves(params))
        return self.weight * l2, {"l2": l2}


def test_a_user_kind_trains_through_the_one_loop(tmp_path):
    hypernets.register(L2Direct(), overwrite=True)
    cfg = load_config("test")
    cfg.train.steps, cfg.train.log_every = 4, 1
    runs = {}
    for mode in ("direct", "l2direct"):
        cfg.mode = mode
        runs[mode] = uhn_jax.run(config_lib.from_config_dict(cfg), tmp_path / mode, progress=False)
    assert runs["l2direct"]["mode"] == "l2direct"
    logged = [json.loads(line) for line in (tmp_path / "l2direct" / "metrics.jsonl").open()]
    l2 = [row["l2"] for row in logged if "l2" in row]
    assert len(l2) == 4 and l2[-1] < l2[0]  # the penalty is in the gradient: weights shrink
    assert "l2" not in (tmp_path / "direct" / "metrics.jsonl").read_text()


def test_kind_registry_rejects_duplicates_and_non_kinds():
    with pytest.raises(ValueError, match="already registered"):
        hypernets.register(direct.Direct())
    with pytest.raises(TypeError, match="Kind instance"):
        hypernets.register(object())
    with pytest.raises(ValueError, match="mode must be one of"):
        config_lib.from_config_dict({"mode": "nope"})


def test_a_user_family_is_accepted_and_unknown_ones_are_named():
    models.register_family("tiny_mlp", models.families.mlp, overwrite=True)
    exp = config_lib.from_config_dict({"model": {"family": "tiny_mlp"}, "data": {"name": "cora"}})
    assert exp.model.family == "tiny_mlp"  # a user's family fits any dataset
    with pytest.raises(ValueError, match=r"model.family must be one of .*'tiny_mlp'"):
        config_lib.from_config_dict({"model": {"family": "nope"}})
    with pytest.raises(ValueError, match="already registered"):
        models.register_family("mlp", models.families.mlp)
    with pytest.raises(ValueError, match="does not fit data.name 'cora'"):
        config_lib.from_config_dict({"model": {"family": "mlp"}, "data": {"name": "cora"}})
