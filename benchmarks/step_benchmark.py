"""Speed and memory of one training step: UHN next to direct training, with a matmul roofline.

Usage (from the repo root, after `make test` or `make demo` created .venv):

  .venv/bin/python benchmarks/step_benchmark.py                 # reference MNIST MLP, batch 256
  .venv/bin/python benchmarks/step_benchmark.py --chunk-sizes 4096,16384,0 --json out.json
  .venv/bin/python benchmarks/step_benchmark.py --paths separable   # skip the slow direct path

Each case runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own. Printed per
case: compile time, seconds per step (median of ``--steps`` timed steps after warm-up), generated
weights per second (training step, and generation forward alone), achieved GFLOP/s under the
FLOP model below, the in-run 2048x2048 float32 matmul GFLOP/s, and peak RSS.

FLOP model per generated weight (F frequencies, hidden H, B residual blocks):
forward = 2*10*F + 2*2F*H + B*2*2*H^2 + 2H; a training step adds the backward pass without the
input-gradient of the first Linear (its input is the frozen Fourier features):
2*2F*H + B*2*2*2*H^2 + 2*2H. For F=1024, H=64, B=2 that is 643,456 FLOP per weight. The base
model adds 6 FLOP per weight per example (forward + backward of its matmuls).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def flops_per_weight(f: int, h: int, b: int) -> tuple[int, int]:
    """(forward, training step) FLOP per generated weight under the module's FLOP model."""
    forward = 2 * 10 * f + 2 * 2 * f * h + b * 2 * 2 * h * h + 2 * h
    backward = 2 * 2 * f * h + b * 2 * 2 * 2 * h * h + 2 * 2 * h
    return forward, forward + backward


def _matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_case(args) -> dict:
    """Runs one (mode, chunk size) case in this process and returns its figures."""
    import jax
    import jax.numpy as jnp

    from uhn_jax import config as config_lib
    from uhn_jax import data, generator, train

    cfg = config_lib.default_config_dict()  # reference MNIST MLP + h=64 / 1024 freqs / 2 blocks
    cfg.mode = args.mode
    cfg.model.widths = (128, 128)
    cfg.generator.chunk_size = args.chunk_size
    cfg.generator.separable = bool(args.separable)
    cfg.train.batch_size = args.batch_size
    cfg.train.init_steps = 0
    exp = config_lib.from_config_dict(cfg)
    # Synthetic MNIST-shaped inputs: the step cost does not depend on pixel values.
    rng = jax.random.key(0)
    n = 4 * args.batch_size
    x = jax.random.normal(rng, (n, 28, 28))
    y = jax.random.randint(rng, (n,), 0, 10)
    ds = data.ArrayDataset(
        "mnist",
        jax.device_get(x),
        jax.device_get(y).astype("int32"),
        jax.device_get(x[:8]),
        jax.device_get(y[:8]).astype("int32"),
        10,
    )
    setup, desc = train.make_setup(exp, ds)
    arrays = train.desc_arrays(setup, desc)
    key = jax.random.key_data(jax.random.key(0))
    state = train.init_state(setup, jax.random.fold_in(key, 2))
    batch = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))

    t0 = time.perf_counter()
    compiled = train.train_step.lower(setup, "task", state, arrays, batch, key).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
        state, m = compiled(state, arrays, batch, key)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = compiled(state, arrays, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    num_weights = setup.layout.size
    path = "separable" if args.separable else "direct-path"
    chunk = args.chunk_size or "none"
    out = {
        "case": "direct" if args.mode == "direct" else f"uhn {path} chunk={chunk}",
        "mode": args.mode,
        "chunk_size": args.chunk_size,
        "num_target_params": num_weights,
        "batch_size": args.batch_size,
        "compile_s": compile_s,
        "step_s": step_s,
        "train_weights_per_s": num_weights / step_s,
    }
    base_flop = 6 * num_weights * args.batch_size
    if args.mode == "uhn":
        g = exp.generator
        fwd_w, train_w = flops_per_weight(g.n_freqs, g.hidden, g.num_blocks)
        out["step_gflop"] = (train_w * num_weights + base_flop) / 1e9

        def gen_fn(p, c, a):
            variables = {"params": p, "constants": c}
            return generator.generate_planned(
                setup.gen, variables, setup.plan, a, chunk_size=setup.chunk_size
            )

        gen_fn = jax.jit(gen_fn)
        jax.block_until_ready(gen_fn(state["params"], state["constants"], arrays.plan))
        gtimes = []
        for _ in range(args.steps):
            t = time.perf_counter()
            jax.block_until_ready(gen_fn(state["params"], state["constants"], arrays.plan))
            gtimes.append(time.perf_counter() - t)
        out["generate_forward_s"] = statistics.median(gtimes)
        out["generated_weights_per_s"] = num_weights / out["generate_forward_s"]
    else:
        out["step_gflop"] = base_flop / 1e9
    out["achieved_gflops"] = out["step_gflop"] / step_s
    out["matmul_2048_gflops"] = _matmul_gflops()
    out["fraction_of_matmul"] = out["achieved_gflops"] / out["matmul_2048_gflops"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default="4096", help="UHN chunk sizes; 0 = unchunked")
    parser.add_argument(
        "--paths", default="separable,direct-path", help="UHN generation paths to compare"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--separable", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(run_case(args)))
        return

    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    cases = [("direct", 0, 0)] + [
        ("uhn", c, int(p == "separable")) for p in args.paths.split(",") for c in chunks
    ]
    rows = []
    for mode, chunk, sep in cases:
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--chunk-size",
            str(chunk),
            "--separable",
            str(sep),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
        ]
        print(f"running {mode} chunk={chunk} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"case {mode}/{chunk} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(
        "\nReference MNIST MLP (118,282 params), generator h=64 / 1024 freqs / 2 blocks, "
        f"batch {args.batch_size}, CPU"
    )
    print(
        "| case | compile s | s / step | weights/s (train step) | weights/s (generate fwd) "
        "| GFLOP / step | GFLOP/s | matmul 2048² GFLOP/s | % of matmul | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gen = f"{r['generated_weights_per_s']:,.0f}" if "generated_weights_per_s" in r else "–"
        print(
            f"| {r['case']} | {r['compile_s']:.1f} | {r['step_s']:.3f} "
            f"| {r['train_weights_per_s']:,.0f} | {gen} | {r['step_gflop']:.2f} "
            f"| {r['achieved_gflops']:.1f} | {r['matmul_2048_gflops']:.1f} "
            f"| {100 * r['fraction_of_matmul']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
