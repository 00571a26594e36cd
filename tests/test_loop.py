"""The one training loop, checked for each kind of run that uses it: a single model, a model
set and a multi-task mix. Each must stop on Ctrl-C with a checkpoint, resume bit-identically,
and stop on a non-finite loss keeping the last good checkpoint."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_config

from uhn_jax import config as config_lib
from uhn_jax.training import checkpoint, model_sets, multitask, train
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import step as step_lib

_KARATE = """
from uhn_jax import config as config_lib

def get_config():
    c = config_lib.default_config_dict()
    c.data.name = "karate_club"
    c.model.family = "gcn"
    c.model.widths = (8,)
    return c
"""
STEPS = 2 + 6  # init + task steps of every run below


def _single(tmp_path):
    cfg = load_config("test")
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 6, 100, 2
    exp = config_lib.from_config_dict(cfg)
    return lambda workdir, **kw: train.run(exp, workdir, progress=False, **kw)


def _model_set(tmp_path):
    family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(8, 16))
    path = model_sets.save(model_sets.sample(family, 4, 1, seed=3), tmp_path / "set.json")
    cfg = load_config("test")
    cfg.model.model_set, cfg.generator.structure = str(path), True
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 6, 100, 2
    exp = config_lib.from_config_dict(cfg)
    return lambda workdir, **kw: train.run(exp, workdir, progress=False, **kw)


def _multitask(tmp_path):
    (tmp_path / "karate.py").write_text(_KARATE)
    cfg = load_config("multitask")
    cfg.tasks, cfg.probs = ("test", str(tmp_path / "karate.py")), (1.0, 1.0)
    cfg.generator.hidden, cfg.generator.n_freqs = 16, 32
    cfg.train.steps, cfg.train.warmup_steps, cfg.train.init_steps = 6, 0, 2
    cfg.train.checkpoint_every, cfg.train.log_every = 100, 2
    return lambda workdir, **kw: multitask.run(cfg, workdir, progress=False, **kw)


def _final_state(workdir):
    mngr = checkpoint.manager(workdir / "checkpoints")
    step = mngr.latest_step()
    return step, jax.tree.leaves(mngr.restore(step, args=ocp.args.StandardRestore()))


@pytest.mark.slow
@pytest.mark.parametrize("make_run", [_single, _model_set, _multitask], ids=lambda f: f.__name__)
def test_interrupt_resume_and_nan_stop(make_run, tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run(tmp_path / "full")
    real_step = step_lib.run_step
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(step_lib, "run_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split")
    assert checkpoint.manager(tmp_path / "split" / "checkpoints").latest_step() == 3
    monkeypatch.setattr(step_lib, "run_step", real_step)
    run(tmp_path / "split", stop_after=5)  # a second stop, then the rest
    run(tmp_path / "split")
    (step_a, full), (step_b, split) = (
        _final_state(tmp_path / "full"),
        _final_state(tmp_path / "split"),
    )
    assert step_a == step_b == STEPS
    for a, b in zip(full, split, strict=True):
        np.testing.assert_array_equal(a, b)

    def poisoned(setup, stage, state, *args):
        new_state, metrics = real_step(setup, stage, state, *args)
        if int(new_state["step"]) >= 5:
            metrics = dict(metrics, **{k: np.nan for k in ("loss", "init_loss") if k in metrics})
        return new_state, metrics

    monkeypatch.setattr(step_lib, "run_step", poisoned)
    with pytest.raises(loop_lib.NonFiniteLossError, match="at step 6"):
        run(tmp_path / "nan", stop_after=4)  # checkpoint at 4 (stop), then resume into NaN
        run(tmp_path / "nan")
    assert checkpoint.manager(tmp_path / "nan" / "checkpoints").latest_step() == 4
