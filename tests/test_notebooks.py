"""The notebooks: each .ipynb is in sync with its jupytext .py pair and holds no outputs, and each
runs top to bottom with tiny settings (UHN_NOTEBOOK_TINY=1), printing what it should."""

import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
from conftest import real_data_dir, subprocess_env

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: Lines each notebook prints in tiny mode, at least one from its last section, so a notebook
#: that fails silently or stops printing fails its test. A new notebook needs an entry.
MARKERS = {
    "01_single_multi_recursive": ("test accuracy", "held-out members", "H0 -> H1 -> MLP"),
    "02_quickstart": (
        "MLP: 8,970 weights",
        "index descriptors: (8970, 10)",
        "untrained generator: test accuracy",
        "UHN - direct",
        "std generated (UHN)",
    ),
    "03_bring_your_own_model": (
        "generated  Conv_0/kernel",
        "direct     LayerNorm_0/scale",
        "logits (4, 10)",
        "UHN - direct",
        "Net with generated weights: test accuracy",
    ),
    "04_conditional": (
        "conditional - direct",
        "data-adaptive: test accuracy",
        "conditional, one-hot: first-layer kernel std",
    ),
    "05_ha_static": (
        "static - direct",
        "generated kernel: 4,244 generator params",
        "static/kernel_layer_001_kernel.png",
    ),
    "06_diverse": (
        "one generated network: test accuracy",
        "untrained: 16 networks",
        "trained: 16 networks",
        "trained: nearest-neighbour distance",
    ),
    "07_hyperlstm": (
        "HyperLSTM, H=32 cell:",
        "hyperlstm-32: test bpc",
        "d_h over 60 characters: from",
    ),
    "08_continual": (
        "hnet on split digits: mean final accuracy",
        "separate on split digits: mean final accuracy",
        "trained params",
        "hnet, beta 0: task 0's weights moved by",
        "plots/regulariser.png",
    ),
    "09_weightspace": (
        "/zoo: complete; 8 networks in 2 groups, 16 snapshots",
        "step    6: 8 records, test accuracy",
        "| same_zoo | sne |",
        "| same_zoo | stats_gbt |",
        "plots/sne_scatter.png",
        "seen digits/mlp-8: generated",
        "held out digits/mlp-8x8 random k=5:",
        "novelty digits/mlp-8x8: nearest/zoo-typical distance",
        "igpg/igpg_finetune.png",
    ),
}

#: Notebooks that train on real data files: the ``UHN_DATA_DIR`` subdirectory and a file each
#: needs (the others use digits, bundled with scikit-learn). Their runs skip without the data,
#: as the real-data tests do (``conftest.real_data_dir``).
REAL_DATA = {"07_hyperlstm": ("rt_polarity", "rt-polarity.pos")}


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_every_notebook_is_a_pair_with_markers():
    names = {p.stem for p in NOTEBOOKS}
    assert names, f"no notebooks in {NOTEBOOK_DIR}"
    scripts = {p.stem for p in NOTEBOOK_DIR.glob("*.py")}
    assert scripts == names, (
        f"unpaired notebooks: .py without .ipynb {sorted(scripts - names)}, .ipynb without .py "
        f"{sorted(names - scripts)}; run `jupytext --sync notebooks/<name>.py` (or .ipynb)"
    )
    assert set(MARKERS) == names, f"give each notebook its MARKERS: {sorted(names ^ set(MARKERS))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync_without_outputs(path):
    script_path = path.with_suffix(".py")
    notebook, script = jupytext.read(path), jupytext.read(script_path)
    shown = script_path.relative_to(NOTEBOOK_DIR.parent)
    assert _cells(notebook) == _cells(script), (
        f"{path.name} and {script_path.name} differ; run `jupytext --sync {shown}` (the newer "
        "file wins)"
    )
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name}: code cell {i} holds outputs; regenerate it without them: "
            f"`jupytext --to ipynb {shown}`"
        )
    # A notebook runs on a fresh clone: its data is bundled (digits), from packages, or found
    # through UHN_DATA_DIR (REAL_DATA), never at a path of this machine.
    assert "../shared" not in script_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    # The .py pair is the notebook's code cells (test_pair_in_sync_without_outputs), and a
    # traceback then names its lines. Run from elsewhere: a notebook must not need its cwd.
    data = {}
    if path.stem in REAL_DATA:  # absolute: the notebook runs in another directory
        data["UHN_DATA_DIR"] = str(real_data_dir(*REAL_DATA[path.stem]).parent.resolve())
    env = subprocess_env(UHN_NOTEBOOK_TINY="1", UHN_NOTEBOOK_WORKDIR=str(tmp_path / "runs"), **data)
    proc = subprocess.run(
        [sys.executable, str(path.with_suffix(".py"))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    missing = [m for m in MARKERS[path.stem] if m not in proc.stdout]
    assert not missing, f"{path.name} did not print {missing}:\n{proc.stdout[-4000:]}"
