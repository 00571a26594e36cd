"""``export`` (and every command reading a workdir) rebuilds the run's own model or refuses.

``config.json`` alone does not rebuild a run given its dataset in memory (its model is shaped
by that data) or a user's model family (unknown to a fresh process). ``model.json`` records
what does (``uhn_jax/training/rebuild.py``); a model that does not match it is refused with
one line naming the workdir, what is missing and the Python call that works.
"""

import json
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, subprocess_env

import uhn_jax
from uhn_jax import config as config_lib
from uhn_jax.data import images
from uhn_jax.training import checkpoint, experiments, rebuild, train

USER_FAMILY = "export_test_net"


class _Net(nn.Module):
    """A user's module: the library has never seen it."""

    features: int = 8

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.features)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(nn.relu(h))


def _register(features: int) -> None:
    model = uhn_jax.FlaxModel.from_linen(_Net(features), jnp.zeros((1, 8, 8)))
    uhn_jax.register_family(USER_FAMILY, lambda cfg, ds, dataset_type: model, overwrite=True)


def _exp(mode: str, family: str = "mlp"):
    cfg = load_config("test")
    cfg.mode, cfg.model.family, cfg.model.widths = mode, family, (8,)
    cfg.train.batch_size, cfg.train.steps, cfg.train.init_steps = 16, 6, 0
    cfg.train.log_every = cfg.train.checkpoint_every = 6
    return config_lib.from_config_dict(cfg)


def _in_memory_dataset():
    """5x5 inputs and 3 classes, named digits: config.json rebuilds an 8x8, 10-class model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5, 5)).astype(np.float32)
    y = ((x[:, 0, 0] > 0).astype(np.int32) + (x[:, 1, 1] > 0)).astype(np.int32)
    return images.ArrayDataset("digits", x[:64], y[:64], x[64:], y[64:], 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A UHN and a direct run on the in-memory dataset, and a UHN run of a user module."""
    root = tmp_path_factory.mktemp("runs")
    ds = _in_memory_dataset()
    for mode in ("uhn", "direct"):
        train.run(_exp(mode), root / mode, dataset=ds, progress=False)
    _register(8)
    train.run(_exp("uhn", USER_FAMILY), root / "user", progress=False)
    return root, ds


def _accuracy(logits, y) -> float:
    return float((np.asarray(logits).argmax(-1) == y).mean())


def _results(run) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.mark.parametrize("mode", ["uhn", "direct"])
def test_export_of_an_in_memory_dataset_run_is_the_trained_model(runs, mode):
    root, ds = runs
    assert json.loads((root / mode / "model.json").read_text())["dataset"]["source"] == "memory"
    params = checkpoint.load_params(experiments.export(root / mode, root / f"{mode}_export"))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "layer_000": {"kernel": (25, 8), "bias": (8,)},
        "layer_001": {"kernel": (8, 3), "bias": (3,)},
    }
    # The trained weights: the export scores the run's own test accuracy.
    _, setup, *_ = experiments.load_run(root / mode, dataset=ds)
    logits = setup.model.apply(params, jnp.asarray(ds.x_test))
    assert _accuracy(logits, ds.y_test) == pytest.approx(_results(root / mode)["test_metric"])


def test_what_an_in_memory_run_cannot_rebuild_is_refused_in_one_line(runs, tmp_path):
    root, _ = runs
    run = root / "uhn"
    with pytest.raises(rebuild.RebuildError, match=r"in-memory dataset.*dataset=ds\)$") as e:
        experiments.load_run(run)  # evaluation needs the data, which the workdir lacks
    assert str(run) in str(e.value) and "\n" not in str(e.value)
    # A run from before model.json: config.json gives digits' 8x8 model, refused, not exported.
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("model.json", "export"))
    with pytest.raises(rebuild.RebuildError, match="610 target params, results.json 235"):
        experiments.export(old)
    assert not (old / "export").exists()


def test_a_user_module_run_exports_with_its_family_and_refuses_another_module(runs):
    root, _ = runs
    run = root / "user"
    assert json.loads((run / "model.json").read_text())["user_family"] is True
    _register(8)  # as the user's code does before exporting
    params = checkpoint.load_params(experiments.export(run))
    assert jax.tree.map(jnp.shape, params) == {
        "Dense_0": {"kernel": (64, 8), "bias": (8,)},
        "Dense_1": {"kernel": (8, 10), "bias": (10,)},
    }
    ds = uhn_jax.training.tasks.load_dataset(_exp("uhn", USER_FAMILY))
    logits = _Net(8).apply({"params": params}, jnp.asarray(ds.x_test))
    assert _accuracy(logits, ds.y_test) == pytest.approx(_results(run)["test_metric"])
    _register(4)  # the family's name bound to another module
    with pytest.raises(rebuild.RebuildError, match=r"\['Dense_0'\]\['bias'\]: trained \(8,\)"):
        experiments.export(run, run / "other")
    _register(8)


def test_the_command_line_exports_cleanly_or_refuses_in_one_line(runs, tmp_path):
    root, _ = runs
    cli = [sys.executable, "-m", "uhn_jax.cli", "export"]
    procs = [
        subprocess.Popen(
            [*cli, f"--workdir={root / run}", f"--out={tmp_path / run}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for run in ("uhn", "user")
    ]
    (out, err), (_, refused) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0 and "Traceback" not in err, err[-3000:]
    assert out.strip() == f"exported the base model's params to {tmp_path / 'uhn'}"
    params = checkpoint.load_params(tmp_path / "uhn")
    assert params["layer_000"]["kernel"].shape == (25, 8)
    # The user's family is not registered in the new process: one line, no export.
    assert procs[1].returncode == 1 and "Traceback" not in refused, refused[-3000:]
    assert refused.startswith(
        f"uhn-jax export: cannot rebuild the model of {root / 'user'}: model.family "
        f"'{USER_FAMILY}' is a model family registered by user code"
    )
    assert refused.count("\n") == 1 and "experiments.export(" in refused
    assert not (tmp_path / "user").exists()
