"""`uhn-jax reproduce`: published comparisons re-run and checked against their bounds."""

import json
import subprocess
import sys

import pytest
from conftest import subprocess_env

from uhn_jax.training import reproduce


def test_holds_for_each_kind():
    assert reproduce.holds("gap", (0.80, 0.79), 0.015) == (pytest.approx(-0.01), True)
    assert not reproduce.holds("gap", (0.80, 0.78), 0.015)[1]
    assert reproduce.holds("held_out", (0.98, 0.97), 0.015)[1]
    assert reproduce.holds("ratio", (0.002, 0.0022), 1.2) == (pytest.approx(1.1), True)
    assert not reproduce.holds("ratio", (0.002, 0.003), 1.2)[1]
    with pytest.raises(ValueError, match="unknown check kind 'bogus'"):
        reproduce.holds("bogus", (1.0, 1.0), 0.0)


def test_every_published_check_loads_its_config(tmp_path):
    """Each FAST check's config builds (data files are only read when a run starts)."""
    for check in reproduce.FAST:
        exp = reproduce.load_experiment(check, tmp_path)
        if check.data:
            assert exp.data.data_dir == str(tmp_path / check.data)
    assert len({c.name for c in reproduce.FAST}) == len(reproduce.FAST)


def test_a_check_can_force_the_other_hosts_numerics(tmp_path):
    """``matmul_dtype`` replaces ``auto`` (what a host without, or with, native bf16 resolves
    to), and the Planetoid `,cpu` checks keep the matmul first layer."""
    digits = next(c for c in reproduce.FAST if c.name == "digits")
    assert reproduce.load_experiment(digits, tmp_path).generator.matmul_dtype == "auto"
    assert reproduce.load_experiment(digits, tmp_path, "float32").generator.matmul_dtype == (
        "float32"
    )
    cora = next(c for c in reproduce.FAST if c.name == "cora_gcn")
    pinned = reproduce.load_experiment(cora, tmp_path).generator  # the same on every host
    assert (pinned.matmul_dtype, pinned.separable_method) == ("float32", "matmul")


def test_data_check_without_a_data_directory_is_named():
    cora = next(c for c in reproduce.FAST if c.name == "cora_gcn")
    with pytest.raises(ValueError, match="cora_gcn.*planetoid/"):
        reproduce.load_experiment(cora, None)


def test_reproduce_runs_checks_and_reports_a_miss(tmp_path):
    tiny = {"train.steps": 2, "train.init_steps": 1}
    checks = [
        reproduce.Check("easy", "test", None, 1, (0.5, 0.5), 1.0, overrides=tiny),
        reproduce.Check("strict", "test", None, 1, (0.5, 0.5), -1.0, overrides=tiny),
    ]
    with pytest.raises(ValueError, match=r"unknown check\(s\) \['nope'\]"):
        reproduce.reproduce(tmp_path, None, only=["nope"], checks=checks)
    table, rows = reproduce.reproduce(tmp_path, None, checks=checks, progress=False)
    assert [r["holds"] for r in rows] == [True, False]  # a gap >= +100 pp cannot hold
    assert "1 of 2 hold; MISSED: strict" in table
    assert json.loads((tmp_path / "reproduce.json").read_text())[0]["name"] == "easy"
    assert rows[0]["numerics"]["matmul_dtype"] in ("float32", "bfloat16")
    # rerunning resumes from the finished runs and gives the same figures
    _, again = reproduce.reproduce(tmp_path, None, only=["easy"], checks=checks, progress=False)
    assert again[0]["measured"] == rows[0]["measured"]
    _, f32 = reproduce.reproduce(
        tmp_path, None, only=["easy"], checks=checks, matmul_dtype="float32", progress=False
    )
    assert f32[0]["numerics"]["matmul_dtype"] == "float32"
    assert (tmp_path / "easy_float32" / "compare.json").exists()
    assert (tmp_path / "reproduce_float32.md").exists()


def test_cli_names_an_unknown_check_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "uhn_jax.cli", "reproduce", f"--workdir={tmp_path}", "--only=nope"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert proc.returncode != 0
    assert "unknown check(s) ['nope']" in proc.stderr and "Traceback" not in proc.stderr
