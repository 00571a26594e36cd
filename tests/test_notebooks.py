"""Executes the notebooks' code cells with tiny settings (UHN_NOTEBOOK_TINY=1)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join(cells) + "\n")
    env = subprocess_env(UHN_NOTEBOOK_TINY="1", UHN_NOTEBOOK_WORKDIR=str(tmp_path / "runs"))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for expected in ("test accuracy", "held-out members", "H0 -> H1 -> MLP"):
        assert expected in proc.stdout, proc.stdout
