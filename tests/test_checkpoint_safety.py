"""Checkpoints and workdirs a run can trust (issue 28, item 1): damaged checkpoints are caught
by their sha256 manifest (or by orbax) and the run falls back to the previous one; damaged
JSON files are named; a NaN/Inf stop names the checkpoint it resumes from and lets the rerun
lower the rate; lost checkpoints are refused; a run failing validation leaves no workdir;
Ctrl-C saves the last completed step and exits with one line."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import CONFIG_DIR, load_config, subprocess_env

from uhn_jax import config as config_lib
from uhn_jax.data import images as data
from uhn_jax.training import checkpoint, train, workdir
from uhn_jax.training import loop as loop_lib
from uhn_jax.training import step as step_lib


def _exp(**overrides):
    """configs/test.py as a direct run of 8 steps, a checkpoint every 2, with overrides
    ``group__field=value``."""
    cfg = load_config("test")
    cfg.mode = "direct"
    cfg.train.steps, cfg.train.checkpoint_every = 8, 2
    for dotted, value in overrides.items():
        group, field = dotted.split("__")
        cfg[group][field] = value
    return config_lib.from_config_dict(cfg)


def _run(path, exp=None, **kw):
    return train.run(exp or _exp(), path, progress=False, **kw)


def _leaves(path):
    """The arrays of a run's latest checkpoint, read as saved (no target structure)."""
    mngr = checkpoint.manager(path / "checkpoints")
    return jax.tree.leaves(mngr.restore(mngr.latest_step()))


def _data_file(step_dir):
    """The largest array data file of a checkpoint (OCDBT's ``d/`` files)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _damage(step_dir, how):
    if how == "metadata_emptied":
        (step_dir / "default" / "_METADATA").write_text("")
        return
    path = _data_file(step_dir)
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    if how == "bit_flipped":
        b[mid] ^= 0x10
    elif how == "garbled":
        b[mid : mid + 64] = bytes(range(64))
    else:  # truncated
        b = b[:mid]
    path.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of an uninterrupted run."""
    path = tmp_path_factory.mktemp("full")
    _run(path)
    return _leaves(path)


@pytest.mark.parametrize("how", ["bit_flipped", "garbled", "truncated", "metadata_emptied"])
def test_damaged_latest_checkpoint_warns_and_resumes_from_the_previous(
    how, tmp_path, capsys, uninterrupted
):
    _run(tmp_path, stop_after=4)
    _damage(tmp_path / "checkpoints" / "4", how)
    capsys.readouterr()
    _run(tmp_path)
    out = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'checkpoints' / '4'} (step 4) is damaged" in out
    assert "sha256" in out
    assert f"resuming {tmp_path} from step 2" in out
    assert len(list((tmp_path / checkpoint.DAMAGED_DIR).iterdir())) == 1  # kept aside
    # From step 2 the run retraces the uninterrupted one exactly.
    for a, b in zip(_leaves(tmp_path), uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_without_manifest_falls_back_when_orbax_cannot_read_it(tmp_path, capsys):
    _run(tmp_path, stop_after=4)
    for manifest in (tmp_path / "checkpoints").glob(f"*/{checkpoint.MANIFEST}"):
        manifest.unlink()  # as written before manifests existed
    # (Not a data file: in this process TensorStore may still hold the arrays it just wrote.)
    _damage(tmp_path / "checkpoints" / "4", "metadata_emptied")
    capsys.readouterr()
    assert _run(tmp_path, stop_after=6)["step"] == 6
    out = capsys.readouterr().out
    assert "(step 4) is damaged: orbax cannot read it" in out
    assert "from step 2" in out


def test_every_checkpoint_damaged_is_refused_not_restarted(tmp_path):
    _run(tmp_path, stop_after=4)
    for step in (2, 4):
        _damage(tmp_path / "checkpoints" / str(step), "bit_flipped")
    with pytest.raises(checkpoint.DamagedCheckpointError, match=r"step 4: .*; step 2: "):
        _run(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_truncated_json_file_is_named(name, tmp_path):
    _run(tmp_path, _exp(train__steps=2))
    path = tmp_path / name
    path.write_text(path.read_text()[:40])
    with pytest.raises(workdir.WorkdirError, match=re.escape(f"{path} is damaged (not valid JSON")):
        _run(tmp_path, _exp(train__steps=2))


def test_deleted_checkpoints_with_metrics_kept_are_refused(tmp_path):
    _run(tmp_path, stop_after=4)
    shutil.rmtree(tmp_path / "checkpoints")
    lines = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(workdir.WorkdirError, match=r"checkpoints is missing, .* up to 4"):
        _run(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == lines  # no metric line dropped


def test_run_failing_validation_leaves_no_workdir(tmp_path):
    with pytest.raises(ValueError, match="train.batch_size"):
        _run(tmp_path / "run", _exp(train__batch_size=5000))
    assert not (tmp_path / "run").exists()
    assert _run(tmp_path / "run", _exp(train__steps=2))["steps"] == 2  # the corrected rerun


def test_nan_stop_names_the_last_checkpoint_whose_loss_was_finite(tmp_path, monkeypatch):
    real_step = step_lib.run_step

    def nan_loss_from_step_5(*args):
        state, metrics = real_step(*args)
        if int(state["step"]) >= 5:
            metrics = dict(metrics, loss=np.nan)
        return state, metrics

    monkeypatch.setattr(step_lib, "run_step", nan_loss_from_step_5)
    # Logged every 4 steps: step 6's checkpoint comes before the loss is next logged.
    with pytest.raises(loop_lib.NonFiniteLossError) as err:
        _run(tmp_path, _exp(train__log_every=4))
    assert "loss is nan at step 6" in str(err.value)
    assert "The last checkpoint whose loss was finite is step 4" in str(err.value)
    assert checkpoint.manager(tmp_path / "checkpoints").latest_step() == 4
    record = json.loads((tmp_path / workdir.NON_FINITE_FILE).read_text())
    assert (record["step"], record["resume_step"]) == (6, 4)


def test_rerun_after_a_nan_stop_may_lower_lr_and_clip_and_records_it(tmp_path, capsys):
    good = data.load_digits()
    x = good.x_train.copy()
    poisoned = data.ArrayDataset("digits", x, good.y_train, good.x_test, good.y_test, 10)
    exp = _exp(train__log_every=2)
    _run(tmp_path, exp, dataset=poisoned, stop_after=4)
    x[:] = np.nan  # the data turns bad after step 4
    with pytest.raises(loop_lib.NonFiniteLossError, match="finite is step 4"):
        _run(tmp_path, exp, dataset=poisoned)
    with pytest.raises(workdir.WorkdirError, match=r"fields differ: train\.steps\)"):
        _run(tmp_path, _exp(train__log_every=2, train__steps=9), dataset=good)
    lower = _exp(train__log_every=2, train__lr=5e-4, train__grad_clip=1.0)
    capsys.readouterr()
    assert _run(tmp_path, lower, dataset=good)["steps"] == 8
    assert "resuming" in capsys.readouterr().out
    (line,) = (tmp_path / workdir.CHANGES_FILE).read_text().splitlines()
    changes = json.loads(line)
    assert changes["step"] == 4
    assert changes["changes"] == {"train.grad_clip": [0.0, 1.0], "train.lr": [1e-3, 5e-4]}
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 5e-4
    # Without a NaN stop, the rate of a run stays fixed.
    _run(tmp_path / "plain", exp, stop_after=2)
    with pytest.raises(workdir.WorkdirError, match=r"train\.lr\). .* only to recover"):
        _run(tmp_path / "plain", lower)


def test_ctrl_c_saves_the_last_completed_step_and_prints_one_line(tmp_path):
    wd = tmp_path / "run"
    flags = ["--config.mode=direct", "--config.train.steps=100000", "--noprogress"]
    flags += ["--config.train.log_every=1", "--config.train.checkpoint_every=100000"]
    cmd = [sys.executable, "-m", "uhn_jax.cli", "train", "--config", "configs/test.py"]
    proc = subprocess.Popen(
        [*cmd, "--workdir", str(wd), *flags],
        cwd=str(CONFIG_DIR.parent),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics, deadline = wd / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 10):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    step = checkpoint.manager(wd / "checkpoints").latest_step()
    assert line.startswith(f"[uhn_jax] interrupted: step {step} saved"), line
    logged = [json.loads(s)["step"] for s in metrics.read_text().splitlines()]
    assert step >= logged[-1] >= 10  # the step in flight when Ctrl-C came was finished
