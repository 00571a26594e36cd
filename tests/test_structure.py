"""House rules the code must keep: module and function sizes, and the floors' import direction.

The core (layouts, descriptors, encodings, sharding) and the generator import nothing from the
floors above them; every module imports on its own in a fresh interpreter (no cycles).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "uhn_jax"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80
# What each floor may not import: the pipeline reads top to bottom.
_ABOVE_GENERATOR = ("uhn_jax.training", "uhn_jax.data", "uhn_jax.cli", "uhn_jax.models",
                    "uhn_jax.hypernets", "uhn_jax.config")  # fmt: skip
_FACE = ("uhn_jax.training", "uhn_jax.cli")
FORBIDDEN = {
    "core": (*_ABOVE_GENERATOR, "uhn_jax.generator"),
    "generator": _ABOVE_GENERATOR,
    "models": (*_FACE, "uhn_jax.data", "uhn_jax.hypernets"),
    "hypernets": (*_FACE, "uhn_jax.data"),
    "data": (*_FACE, "uhn_jax.models", "uhn_jax.hypernets", "uhn_jax.generator"),
}


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"
    )


def test_no_module_and_no_function_is_too_long():
    too_long = []
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{_name(path)}.{node.name}: {n} lines")
    assert not too_long, too_long


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_lower_floors_import_nothing_from_the_floors_above(floor):
    bad = [
        f"{_name(p)} imports {m}"
        for p in (PACKAGE / floor).rglob("*.py")
        for m in _imports(p)
        if m.startswith(FORBIDDEN[floor])
    ]
    assert not bad, bad


def test_every_module_imports_in_a_fresh_interpreter():
    # Any entry point runs uhn_jax/__init__.py first, so one fresh process that imports the
    # package and then every module meets any import cycle.
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    names = [_name(p) for p in MODULES]
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
