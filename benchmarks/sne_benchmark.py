"""Speed and memory of SNE training against the chunk size (the memory knob, docs/sne.md).

Usage (from the repo root, after `make test` or `make demo` created .venv):

  XLA_FLAGS= .venv/bin/python benchmarks/sne_benchmark.py
  XLA_FLAGS= .venv/bin/python benchmarks/sne_benchmark.py --chunk-sizes 32,64 --widths 784,64,64,10

The networks are random (no zoo needed), of one architecture (``--widths``: the default
784-128-10 is the largest MLP of the ``cpu`` zoo, 101,770 params); the SNE is
``configs/sne.py:cpu``'s (its sizes and batch of 16, the layer summary on). Each chunk size
runs in its own subprocess so that its peak RSS is its own. Per chunk size: tokens per network
(padded to the batch's power of two), compile time of the update step, seconds per update
step and per prediction batch (median of ``--steps`` timed calls after two warm-up calls), the
batch build time (tokens -> padded arrays, numpy) and the process's peak RSS (``ru_maxrss``:
imports, compilation and execution).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def networks(widths: tuple[int, ...], n: int, seed: int = 0) -> list[dict]:
    """``n`` random dense networks of ``widths`` (He-scaled kernels, small biases)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        net = {}
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            kernel = rng.normal(0, np.sqrt(2 / a), (a, b)).astype(np.float32)
            net[f"layer_{i:03d}"] = {"kernel": kernel, "bias": rng.normal(0, 0.01, b)}
        out.append(net)
    return out


def run_case(chunk_size: int, widths: tuple[int, ...], steps: int) -> dict:
    """One chunk size in this process: its figures."""
    from conditional_benchmark import _median_seconds  # warm-up calls, then the median

    from configs import sne as presets
    from uhn_jax.training import predictor, sne_config
    from uhn_jax.weightspace import chunking
    from uhn_jax.weightspace import sne as sne_lib

    spec = sne_config.validate(presets.get_config("cpu"))
    s, train = spec.sne, spec.train
    batch_size = train.batch_size
    tokens = [chunking.tokenize(p, chunk_size) for p in networks(widths, batch_size)]
    t = time.perf_counter()
    batch = chunking.collate(tokens, max_layers=s.max_layers, max_classes=s.max_classes)
    build_s = time.perf_counter() - t
    y = np.linspace(0.1, 0.9, batch_size, dtype=np.float32)
    model = sne_lib.SNE(s)
    inputs = predictor.Inputs(y, lambda idx: batch)
    state = predictor.init_state(model, train, inputs, 0)
    update = predictor.compiled(model, train, "update")
    predict = predictor.compiled(model, None, "predict")
    t = time.perf_counter()
    executable = update.lower(state, batch, y).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def step():
        holder["state"], metrics = executable(holder["state"], batch, y)
        return metrics["loss"]

    step_s = _median_seconds(step, steps)
    predict_s = _median_seconds(lambda: predict(holder["state"]["params"], batch), steps)
    return {
        "chunk_size": chunk_size,
        "tokens_per_network": int(tokens[0].num_tokens),
        "padded_tokens": int(batch["values"].shape[1]),
        "batch": batch_size,
        "compile_s": round(compile_s, 2),
        "step_s": step_s,
        "predict_s": predict_s,
        "build_s": build_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _ints(parser: argparse.ArgumentParser, flag: str, value: str) -> tuple[int, ...]:
    """``value``'s comma-separated positive ints, or a usage error naming ``flag``."""
    try:
        out = tuple(int(x) for x in value.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        parser.error(f"{flag} takes comma-separated positive ints, got {value!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default="16,32,64,128,256")
    parser.add_argument("--widths", default="784,128,10", help="the networks' layer widths")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--case", type=int, default=0, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    widths, chunks = (
        _ints(parser, "--widths", args.widths),
        _ints(parser, "--chunk-sizes", args.chunk_sizes),
    )
    if len(widths) < 2:
        parser.error(f"--widths needs at least two widths, got {args.widths!r}")
    if args.steps < 1:
        parser.error(f"--steps must be a positive int, got {args.steps}")
    if args.case:
        print(json.dumps(run_case(args.case, widths, args.steps)))
        return
    rows = []
    for c in chunks:
        print(f"running chunk size {c} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--case", str(c), "--widths", args.widths]
        proc = subprocess.run([*cmd, "--steps", str(args.steps)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"chunk size {c} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    print(f"SNE (configs/sne.py:cpu sizes), batch {rows[0]['batch']} networks {args.widths}")
    print(f"({params:,} params each); median of {args.steps} calls")
    print("| chunk | tokens/net (padded) | compile s | s/step | predict s | build s | peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['chunk_size']} | {r['tokens_per_network']:,} ({r['padded_tokens']:,}) "
            f"| {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['predict_s']:.3f} "
            f"| {r['build_s']:.3f} | {r['peak_rss_mib']:,.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
