"""The built wheel: installed in a new venv, it works from outside the checkout.

The venv reuses this environment's third-party packages (jax, flax, ...) through a ``.pth`` line
instead of downloading them again, and gets the wheel with ``--no-deps``. The line adds the
site-packages directory without running its ``.pth`` files, so the checkout's editable install
stays out of the new venv.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import subprocess_env

from uhn_jax import cli

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from (a copy, so the build leaves no build/ or egg-info behind).
SOURCES = ("pyproject.toml", "README.md", "uhn_jax", "configs")


def run(cmd, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, **kwargs
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy(path, src / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], tmp_path)
    (wheel,) = dist.glob("uhn_jax-*.whl")
    return wheel


def make_venv(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A venv with the wheel installed and this environment's packages visible; returns
    ``(bin dir, site-packages)``."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([python, "-c", purelib], tmp_path).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    run([*pip, "--no-index", wheel], tmp_path)
    return venv / "bin", site


@pytest.mark.slow
def test_the_wheel_works_in_a_new_venv_outside_the_checkout(tmp_path):
    bin_dir, site = make_venv(tmp_path, build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # The installed copies are imported, not the checkout.
    where = "import json, uhn_jax, configs; print(json.dumps([uhn_jax.__file__, configs.__file__]))"
    files = json.loads(run([bin_dir / "python", "-c", where], elsewhere).stdout)
    assert [Path(f) for f in files] == [site / "uhn_jax/__init__.py", site / "configs/__init__.py"]

    # configs/ ships with the package, with the model-set file the set config points at.
    load = (
        "from configs import digits_mlp, digits_mlp_set\n"
        "from uhn_jax import config\n"
        "from uhn_jax.training import model_sets\n"
        "config.from_config_dict(digits_mlp.get_config())\n"
        "cfg = digits_mlp_set.get_config()\n"
        "config.from_config_dict(cfg)\n"
        "print(cfg.model.model_set, len(model_sets.load(cfg.model.model_set).models))\n"
    )
    set_path, members = run([bin_dir / "python", "-c", load], elsewhere).stdout.split()
    assert Path(set_path) == site / "configs/model_sets/digits_mlp_100.json"
    assert int(members) == 100

    # The script lists every command, one line each.
    lines = run([bin_dir / "uhn-jax", "--help"], elsewhere).stdout.splitlines()
    for command, summary in cli.COMMANDS.items():
        assert [line for line in lines if line.split()[:1] == [command]] == [
            f"  {command:<{max(map(len, cli.COMMANDS))}}  {summary}"
        ]

    # A run of an installed config, end to end.
    config = site / "configs" / "test.py"
    train = [bin_dir / "uhn-jax", "train", "--config", config, "--workdir", "run", "--noprogress"]
    run([*train, "--config.train.steps=2"], elsewhere)
    results = json.loads((elsewhere / "run" / "results.json").read_text())
    assert results["steps"] == 2 and results["dataset"] == "digits"


def test_help_lists_every_command_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["uhn-jax", "--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("commands:") + 1
    listed = lines[start : lines.index("", start)]  # up to the next blank line
    assert [line.split()[0] for line in listed] == list(cli.COMMANDS)
    assert all(len(line) <= 100 and line.split(maxsplit=1)[1] for line in listed)

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["uhn-jax", "trian"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("unknown command 'trian'\nusage: uhn-jax COMMAND")
