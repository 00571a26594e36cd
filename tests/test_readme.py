"""The README's Quick tour runs as written, and the figures in its comments are right."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    start = text.index("```python\n", text.index(heading)) + len("```python\n")
    return text[start : text.index("\n```", start)]


def _count(comment_line: str) -> int:
    return int(re.search(r"# ([\d,]+) params", comment_line).group(1).replace(",", ""))


def test_quick_tour_runs_and_its_parameter_counts_hold():
    code = _block("## Quick tour")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    lines = code.splitlines()
    model_line = next(line for line in lines if line.startswith("model ="))
    gen_line = next(line for line in lines if line.startswith("gen ="))
    assert scope["layout"].size == _count(model_line)
    assert scope["uhn_jax"].generator.num_params(scope["variables"]) == _count(gen_line)
    assert scope["w"].shape == (scope["layout"].size,)
    assert scope["logits"].shape == (4, 10)
    assert np.isfinite(np.asarray(scope["logits"])).all()
    assert jax.tree.structure(scope["model"].init(jax.random.key(0))) == scope["layout"].treedef
