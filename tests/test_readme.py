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


def test_your_own_flax_model_snippet_runs():
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    import uhn_jax

    class MyNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))

    x = jnp.ones((4, 8))
    scope = {"uhn_jax": uhn_jax, "jax": jax, "optax": optax, "MyNet": MyNet, "x_example": x, "x": x}
    exec(compile(_block("## Your own Flax model"), str(README), "exec"), scope)
    assert scope["logits"].shape == (4, 10)
    grads = jax.grad(lambda v: scope["hyper"].apply(v, x).sum())(scope["variables"])
    updates, _ = scope["tx"].update(grads, scope["tx"].init(scope["variables"]), scope["variables"])
    assert any(float(jnp.abs(u).sum()) > 0 for u in jax.tree.leaves(updates["generator"]))
