"""Speed of the conditional hypernetwork's three paths, next to an in-run matmul roofline.

Usage (from the repo root):

  .venv/bin/python benchmarks/conditional_benchmark.py
  .venv/bin/python benchmarks/conditional_benchmark.py --batch 64 --runs 20

Default case: a batch of 256 target MLPs 128 -> 128 -> 128 (two generated layers of 16,512
values each), conditioning 64, one generator per layer with hidden (256, 256): 8.6M generator
parameters. Per path: seconds per forward + backward step (``jax.value_and_grad`` of a squared
error with respect to every generator parameter; median of ``--runs`` timed runs after two
warm-up runs, each ended by ``jax.block_until_ready``), the FLOPs counted below, achieved
GFLOP/s, and its fraction of the in-run 2048x2048 float32 matmul's GFLOP/s (measured before
and after the paths; the better of the two is the yardstick, as the machine may be shared).

FLOP model, per layer ``(i, o)`` with ``n = i*o + o`` values, condition width C, hidden
widths H1, H2 and batch B (multiply-adds count 2; the step is 3x the forward, the backward of
every matmul costing two forward matmuls):

* trunk (one generator call): ``2*(C*H1 + H1*H2)``; the LayerNorm and activations are not
  counted;
* ``vmap``: ``B * (trunk + 2*H2*n + 2*i*o)``: every sample generates its weights, then a matvec;
* ``factored``: ``B * (trunk + H2*i + 2*H2*i*o + 2*i*o + 2*H2*o)`` when ``i <= o``: the
  outer product ``h x``, one GEMM over ``(H2, i)``, the head bias as a kernel, and the bias
  columns (``2*H2*o`` instead of ``H2*i`` when ``i > o``);
* ``shared``: ``trunk + 2*H2*n + B*2*i*o``: one generation, then one batched matmul.

XLA's own count of the compiled step (``cost_analysis``) is printed next to ours.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from uhn_jax.hypernets import conditional


def matmul_gflops(n: int = 2048, runs: int = 10) -> float:
    """GFLOP/s of an ``n x n`` float32 matmul on this machine, now."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(jnp.matmul)
    seconds = _median_seconds(lambda: f(a, b), runs)
    return 2.0 * n**3 / seconds / 1e9


def _median_seconds(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward_flops(hn: conditional.ConditionalHypernet, batch: int, method: str) -> float:
    """Forward FLOPs of one batch under the module's FLOP model."""
    hs, h2 = hn.hidden_sizes, hn.hidden_sizes[-1]
    trunk = 2.0 * (
        hn.conditioning_size * hs[0] + sum(a * b for a, b in zip(hs[:-1], hs[1:], strict=True))
    )
    total = 0.0
    for i, o in hn.target_layer_sizes:
        n = i * o + o
        if method == "vmap":
            total += batch * (trunk + 2 * h2 * n + 2 * i * o)
        elif method == "factored":
            # The outer product h x (i <= o), or the per-sample contraction of h with x K.
            mix = h2 * i if i <= o else 2 * h2 * o
            total += batch * (trunk + mix + 2 * h2 * i * o + 2 * i * o + 2 * h2 * o)
        else:
            total += trunk + 2 * h2 * n + batch * 2 * i * o
    return total


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def run(batch: int, runs: int, width: int, cond: int, hidden: int) -> list[dict]:
    hn = conditional.build(cond, ((width, width), (width, width)), hidden_sizes=(hidden, hidden))
    params = hn.init(jax.random.key(0))
    c_BC = jax.random.normal(jax.random.key(1), (batch, cond))
    x_BI = jax.random.normal(jax.random.key(2), (batch, width))
    y_BO = jax.random.normal(jax.random.key(3), (batch, width))
    rows = []
    for method in conditional.METHODS:

        def loss(p, c, x, method=method):
            return jnp.mean((hn.apply(p, c, x, method=method) - y_BO) ** 2)

        step = jax.jit(jax.value_and_grad(loss))
        compiled = step.lower(params, c_BC, x_BI).compile()
        seconds = _median_seconds(lambda compiled=compiled: compiled(params, c_BC, x_BI), runs)
        flops = 3.0 * forward_flops(hn, batch, method)
        rows.append(
            {
                "path": method,
                "seconds": seconds,
                "gflop": flops / 1e9,
                "xla_gflop": _xla_flops(compiled) / 1e9,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--width", type=int, default=128, help="target MLP width (in = hidden = out)"
    )
    parser.add_argument("--cond", type=int, default=64, help="conditioning size")
    parser.add_argument("--hidden", type=int, default=256, help="generator hidden width (x2)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    before = matmul_gflops()
    rows = run(args.batch, args.runs, args.width, args.cond, args.hidden)
    after = matmul_gflops()
    # The machine is shared: the better of the two yardstick runs is what it can do.
    roof = max(before, after)
    print(
        f"batch {args.batch} target MLPs {args.width}->{args.width}->{args.width}, conditioning "
        f"{args.cond}, generator hidden ({args.hidden}, {args.hidden}); "
        f"{jax.devices()[0].platform}, median of {args.runs}"
    )
    print(
        f"2048x2048 f32 matmul: {before:.1f} GFLOP/s before, {after:.1f} after the paths; "
        f"yardstick {roof:.1f}"
    )
    print(
        f"{'path':<9} {'s/step':>9} {'GFLOP':>8} {'XLA GFLOP':>10} {'GFLOP/s':>8} {'% matmul':>9}"
    )
    for r in rows:
        rate = r["gflop"] / r["seconds"]
        print(
            f"{r['path']:<9} {r['seconds']:>9.4f} {r['gflop']:>8.2f} {r['xla_gflop']:>10.2f} "
            f"{rate:>8.1f} {100 * rate / roof:>8.1f}%"
        )


if __name__ == "__main__":
    main()
