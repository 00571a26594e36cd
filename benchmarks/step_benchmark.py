"""Speed and memory of UHN training next to direct training, with an in-run matmul roofline.

Usage (from the repo root, after `make test` or `make demo` created .venv):

  .venv/bin/python benchmarks/step_benchmark.py                       # reference MNIST MLP
  .venv/bin/python benchmarks/step_benchmark.py --model mnist_cnn
  .venv/bin/python benchmarks/step_benchmark.py --model resnet20 --chunk-sizes 1024,4096,16384
  .venv/bin/python benchmarks/step_benchmark.py --paths separable,direct-path --json out.json
  .venv/bin/python benchmarks/step_benchmark.py --model suite --json bench.json   # all four

Models: mnist_mlp (118,282 params), mnist_cnn (74,762) and mlp10m (10,020,874) with the h=64 /
1024-frequency generator; resnet20 (269,034) and resnet56 (850,986) with the h=128 /
2048-frequency generator; batch 256 throughout. ``--model suite`` runs mnist_mlp, mnist_cnn,
resnet20 and mlp10m; ``--hidden``/``--n-freqs`` override the preset's generator. UHN cases use
the library defaults unless told otherwise: the chunk size chosen from a 1 GiB budget
(``--chunk-sizes 0``) and ``generator.matmul_dtype=auto``.

Each case runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own. Per case:
compile time, seconds per step (median of ``--steps`` timed steps after two warm-up steps),
weights per second (training step, and generation forward alone), achieved GFLOP/s under the
FLOP model below, the in-run 2048x2048 matmul GFLOP/s with float32 operands (the roofline the
"% of matmul" column divides by) and with bfloat16 operands (what ``--matmul-dtype`` bf16
GEMMs can reach on this machine), and peak RSS twice: of the whole
process (imports, data, compilation, execution: the highest ``VmHWM`` seen across resets) and of
steady-state execution alone (Linux ``VmHWM``, reset once the step is compiled and warmed up).
``--kind generation`` instead measures one generation forward + backward alone (no base model,
no optimiser), the figure that bounds memory at large N.

FLOP model per generated weight (F frequencies, hidden H, B residual blocks):
forward = 2*10*F + 2*2F*H + B*2*2*H^2 + 2H; a training step adds the backward pass without the
input-gradient of the first Linear (its input is the frozen Fourier features):
2*2F*H + B*2*2*2*H^2 + 2*2H. For F=1024, H=64, B=2 that is 643,456 FLOP per weight. The base
model's own FLOPs are counted separately (6 per weight per example for the MLP; for CNNs,
3x the forward conv FLOPs) and added to the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    "mnist_mlp": dict(
        family="mlp", input=(28, 28), widths=(128, 128), depths=(6, 6, 6), hidden=64, n_freqs=1024
    ),
    "mnist_cnn": dict(
        family="cnn", input=(28, 28), widths=(16, 32, 64), depths=(2, 2, 2), hidden=64, n_freqs=1024
    ),
    "resnet20": dict(
        family="cnn",
        input=(32, 32, 3),
        widths=(16, 32, 64),
        depths=(6, 6, 6),
        hidden=128,
        n_freqs=2048,
    ),
    "resnet56": dict(
        family="cnn",
        input=(32, 32, 3),
        widths=(16, 32, 64),
        depths=(18, 18, 18),
        hidden=128,
        n_freqs=2048,
    ),
    # A ~10M-parameter target (10,020,874): 784 -> 2048, two residual 2048 -> 2048, head -> 10.
    "mlp10m": dict(
        family="mlp",
        input=(28, 28),
        widths=(2048, 2048, 2048),
        depths=(6, 6, 6),
        hidden=64,
        n_freqs=1024,
        steps=1,  # one UHN step is minutes on 2 CPU cores
    ),
}
#: ``--model suite``: the models issue 4's benchmark table covers.
SUITE = ("mnist_mlp", "mnist_cnn", "resnet20", "mlp10m")


def flops_per_weight(f: int, h: int, b: int) -> tuple[int, int]:
    """(forward, training step) FLOP per generated weight under the module's FLOP model."""
    forward = 2 * 10 * f + 2 * 2 * f * h + b * 2 * 2 * h * h + 2 * h
    backward = 2 * 2 * f * h + b * 2 * 2 * 2 * h * h + 2 * 2 * h
    return forward, forward + backward


def base_model_flops(model, batch: int) -> float:
    """Forward + backward FLOPs of the base model's matmuls/convs for one batch."""
    from uhn_jax import models as base_models

    if isinstance(model, base_models.MLP):
        return 6.0 * sum(i * o for i, o in model.sizes) * batch
    h, w = model.input_shape[:2]
    total, k = 0.0, model.kernel_size
    for c_in, c_out, stride, _ in model.convs():
        h, w = -(-h // stride), -(-w // stride)
        total += 2.0 * h * w * c_in * c_out * k * k
    total += 2.0 * model.widths[-1] * model.num_classes
    return 3.0 * total * batch


def _matmul_gflops(n: int = 2048, reps: int = 10, dtype: str = "float32") -> float:
    """GFLOP/s of an ``n x n`` matmul with ``dtype`` operands (float32 accumulation)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


#: The whole-process peak RSS seen so far, in MiB. Resetting VmHWM also lowers what
#: ``getrusage`` reports as ``ru_maxrss``, so the peak is carried across resets here.
_PROCESS_PEAK_MIB = 0.0


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    global _PROCESS_PEAK_MIB
    _PROCESS_PEAK_MIB = max(_PROCESS_PEAK_MIB, _peak_rss_mib() or 0.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM) in MiB, or ``None`` where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _timed(fn, steps: int) -> float:
    """Median seconds per call after warm-up calls (two, or one when ``steps == 1``); resets the
    peak-RSS counter after them, so that VmHWM afterwards is the peak of steady-state execution
    (compilation excluded)."""
    import jax

    for _ in range(1 if steps == 1 else 2):
        jax.block_until_ready(fn())
    _reset_peak_rss()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _case_config(args, preset: dict):
    """The config of one case: the preset's model and generator, overridden by the case's flags.

    Returns:
      ``(cfg, exp)``: the ``ConfigDict`` and the experiment built from it.
    """
    from uhn_jax import config as config_lib

    cfg = config_lib.default_config_dict()
    cfg.mode = args.mode
    cfg.data.name = "cifar10" if len(preset["input"]) == 3 else "mnist"
    cfg.model.family = preset["family"]
    cfg.model.widths = preset["widths"]
    cfg.model.depths = preset["depths"]
    cfg.generator.hidden = args.hidden or preset["hidden"]
    cfg.generator.n_freqs = args.n_freqs or preset["n_freqs"]
    cfg.generator.chunk_size = args.chunk_size
    cfg.generator.separable = bool(args.separable)
    cfg.generator.matmul_dtype = args.matmul_dtype
    cfg.generator.separable_method = args.separable_method
    cfg.train.batch_size = args.batch_size
    cfg.train.init_steps = 0
    return cfg, config_lib.from_config_dict(cfg)


def _synthetic_dataset(name: str, input_shape: tuple[int, ...], batch_size: int):
    """Two batches of random inputs of the real shapes and dtypes, with random labels.

    Step cost does not depend on pixel values, so no dataset is read.
    """
    import numpy as np

    from uhn_jax.data import cifar
    from uhn_jax.data import images as data

    rng = np.random.default_rng(0)
    n = 2 * batch_size
    y = rng.integers(0, 10, n).astype(np.int32)
    if name == "cifar10":
        x = rng.integers(0, 256, (n, *input_shape), dtype=np.uint8)
        return data.ArrayDataset(
            "cifar10", x, y, x[:8], y[:8], 10, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD
        )
    x = rng.standard_normal((n, *input_shape)).astype(np.float32)
    return data.ArrayDataset("mnist", x, y, x[:8], y[:8], 10)


def _init_case(exp, ds):
    """Builds the setup and initial state of one case, as ``train.run`` does.

    Returns:
      ``(setup, arrays, state, key)``: the setup, its descriptor arrays (with the generator's
      tables), the initial train state and the raw key the step is called with.
    """
    import jax

    from uhn_jax.training import setup as setup_lib
    from uhn_jax.training import step as step_lib

    setup, desc = setup_lib.make_setup(exp, ds)
    arrays = setup_lib.desc_arrays(setup, desc)
    key = jax.random.key_data(jax.random.key(0))
    state = step_lib.init_state(setup, jax.random.fold_in(key, 2))
    arrays = setup_lib.with_tables(setup, arrays, state["constants"])
    return setup, arrays, state, key


def _case_fields(args, setup) -> dict:
    """The fields that name one case: model, case label (path, dtype, chunking) and flags."""
    from uhn_jax import generator

    path = "separable" if args.separable else "direct-path"
    if args.separable and setup.gen is not None:
        nufft = generator.use_nufft(setup.gen, setup.plan, setup.chunk_size, setup.mesh)
        path += f" (nufft {sum(nufft)}/{len(nufft)} groups)" if any(nufft) else " (matmul)"
    dtype = generator.resolve_matmul_dtype(args.matmul_dtype).name
    chunk = setup.chunk_size or "none"
    if args.chunk_size == 0 and setup.gen is not None:
        chunk = f"auto={chunk}{'' if setup.remat else ' no-remat'}"
    return {
        "model": args.model,
        "case": "direct" if args.mode == "direct" else f"uhn {path} {dtype} chunk={chunk}",
        "matmul_dtype": dtype,
        "kind": args.kind,
        "mode": args.mode,
        "chunk_size": args.chunk_size,
        "num_target_params": setup.layout.size,
        "batch_size": args.batch_size,
    }


def _time_generation(setup, state, arrays, steps: int, gen_step_flop: int) -> dict:
    """Compiles and times one generation forward + backward (no base model, no optimiser).

    Returns:
      ``compile_s``, ``step_s``, ``step_gflop`` and ``exec_peak_rss_mib``.
    """
    import jax
    import jax.numpy as jnp

    from uhn_jax import generator

    def loss(p):
        w = generator.generate_planned(
            setup.gen,
            {"params": p, "constants": state["constants"]},
            setup.plan,
            arrays.plan,
            chunk_size=setup.chunk_size,
            remat=setup.remat,
        )
        return jnp.sum(w**2)

    t0 = time.perf_counter()
    grad = jax.jit(jax.grad(loss)).lower(state["params"]["generator"]).compile()
    compile_s = time.perf_counter() - t0
    return {
        "compile_s": compile_s,
        "step_s": _timed(lambda: grad(state["params"]["generator"]), steps),
        "step_gflop": gen_step_flop / 1e9,
        "exec_peak_rss_mib": _peak_rss_mib(),
    }


def _time_training(args, setup, state, arrays, ds, key, gen_step_flop: int) -> dict:
    """Compiles and times the training step; for UHN, also the generation forward alone.

    Returns:
      ``compile_s``, ``step_s``, ``step_gflop``, for UHN ``generate_forward_s`` and
      ``generated_weights_per_s``, then ``exec_peak_rss_mib`` (of the training step).
    """
    import jax.numpy as jnp

    from uhn_jax.training import step as step_lib

    batch = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
    out = {}
    t0 = time.perf_counter()
    compiled = step_lib.compiled(setup, "task", arrays).lower(state, arrays, batch, key).compile()
    out["compile_s"] = time.perf_counter() - t0
    holder = {"state": state}

    def step():
        holder["state"], m = compiled(holder["state"], arrays, batch, key)
        return m

    out["step_s"] = _timed(step, args.steps)
    exec_peak = _peak_rss_mib()
    base_flop = base_model_flops(setup.model, args.batch_size)
    out["step_gflop"] = ((gen_step_flop if args.mode == "uhn" else 0) + base_flop) / 1e9
    if args.mode == "uhn":
        out["generate_forward_s"] = _time_generate_forward(
            setup, holder["state"], arrays, args.steps
        )
        out["generated_weights_per_s"] = setup.layout.size / out["generate_forward_s"]
    out["exec_peak_rss_mib"] = exec_peak
    return out


def _time_generate_forward(setup, state, arrays, steps: int) -> float:
    """Median seconds of one jitted generation forward from ``state``'s generator."""
    import jax

    from uhn_jax import generator

    def gen(p, c, a):
        variables = {"params": p, "constants": c}
        return generator.generate_planned(
            setup.gen,
            variables,
            setup.plan,
            a,
            chunk_size=setup.chunk_size,
            remat=setup.remat,
        )

    gen = jax.jit(gen)
    return _timed(lambda: gen(state["params"]["generator"], state["constants"], arrays.plan), steps)


def _rates_and_rooflines(timing: dict, num_weights: int) -> dict:
    """Weights/s and GFLOP/s of the step, the in-run matmul rooflines, and whole-process peak RSS.

    Args:
      timing: the case's figures so far, with ``step_s`` and ``step_gflop``.
      num_weights: the target model's parameter count.
    """
    achieved = timing["step_gflop"] / timing["step_s"]
    matmul = _matmul_gflops()
    return {
        "weights_per_s": num_weights / timing["step_s"],
        "achieved_gflops": achieved,
        "matmul_2048_gflops": matmul,
        "fraction_of_matmul": achieved / matmul,
        "matmul_2048_bf16_gflops": _matmul_gflops(dtype="bfloat16"),
        "peak_rss_mib": max(
            _PROCESS_PEAK_MIB,
            _peak_rss_mib() or 0.0,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        ),
    }


def run_case(args) -> dict:
    """Runs one case in this process and returns its figures."""
    preset = PRESETS[args.model]
    cfg, exp = _case_config(args, preset)
    ds = _synthetic_dataset(cfg.data.name, preset["input"], args.batch_size)
    setup, arrays, state, key = _init_case(exp, ds)
    out = _case_fields(args, setup)
    _, train_w = flops_per_weight(
        cfg.generator.n_freqs, cfg.generator.hidden, cfg.generator.num_blocks
    )
    gen_step_flop = train_w * setup.layout.size
    if args.kind == "generation":
        out.update(_time_generation(setup, state, arrays, args.steps, gen_step_flop))
    else:
        out.update(_time_training(args, setup, state, arrays, ds, key, gen_step_flop))
    out.update(_rates_and_rooflines(out, setup.layout.size))
    return out


def main() -> None:
    """Parses the flags, runs every case of the chosen models in its own subprocess and prints
    each model's table (and the JSON, with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="mnist_mlp",
        help=f"one or more (comma-separated) of {', '.join(sorted(PRESETS))}, or 'suite' for "
        f"{', '.join(SUITE)}",
    )
    parser.add_argument("--kind", default="step", choices=("step", "generation"))
    parser.add_argument(
        "--chunk-sizes",
        default="0",
        help="UHN chunk sizes; 0 = automatic from generator.memory_mib (the library default)",
    )
    parser.add_argument(
        "--matmul-dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="generator.matmul_dtype (auto: bf16 on CPUs with native bf16 and accelerators)",
    )
    parser.add_argument("--paths", default="separable", help="separable and/or direct-path")
    parser.add_argument(
        "--separable-methods",
        default="auto",
        help="generator.separable_method values to run (comma-separated: auto, matmul, nufft)",
    )
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-training case")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=0, help="generator width (0: the preset's)")
    parser.add_argument("--n-freqs", type=int, default=0, help="Fourier frequencies (0: preset)")
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps per case (0: 5, or the preset's)"
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--separable", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--separable-method", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(run_case(args)))
        return

    models = list(SUITE) if args.model == "suite" else args.model.split(",")
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(PRESETS)} or 'suite'")
    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    all_rows = []
    for model in models:
        rows = _run_model(args, model, chunks)
        _print_table(args, model, rows)
        all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=2)


def _run_model(args, model: str, chunks: list[int]) -> list[dict]:
    """Runs every case of one model, each in its own subprocess."""
    steps = args.steps or PRESETS[model].get("steps", 5)
    cases = [] if args.no_direct or args.kind == "generation" else [("direct", 0, 0, "auto")]
    for p in args.paths.split(","):
        methods = args.separable_methods.split(",") if p == "separable" else ["matmul"]
        cases += [("uhn", c, int(p == "separable"), m) for m in methods for c in chunks]
    rows = []
    for mode, chunk, sep, method in cases:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            model,
            "--kind",
            args.kind,
            "--mode",
            mode,
            "--chunk-size",
            str(chunk),
            "--separable",
            str(sep),
            "--matmul-dtype",
            args.matmul_dtype,
            "--separable-method",
            method,
            "--batch-size",
            str(args.batch_size),
            "--hidden",
            str(args.hidden),
            "--n-freqs",
            str(args.n_freqs),
            "--steps",
            str(steps if mode == "uhn" else max(steps, 5)),
        ]
        print(
            f"running {model} {args.kind} {mode} chunk={chunk} separable={sep} ...",
            file=sys.stderr,
            flush=True,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(
                f"case {model} {mode}/{chunk} failed (exit status {proc.returncode}):\n"
                f"{proc.stderr[-3000:]}"
            )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def _print_table(args, model: str, rows: list[dict]) -> None:
    """Prints one model's cases as a markdown table, after a line naming the model, its
    generator's sizes and what a step is."""
    p = dict(PRESETS[model])
    p["hidden"] = args.hidden or p["hidden"]
    p["n_freqs"] = args.n_freqs or p["n_freqs"]
    what = (
        "generation forward+backward"
        if args.kind == "generation"
        else (f"training step, batch {args.batch_size}")
    )
    print(
        f"\n{model} ({rows[0]['num_target_params']:,} params), generator "
        f"h={p['hidden']} / {p['n_freqs']} freqs / 2 blocks, {what}, CPU"
    )
    print(
        "| case | compile s | s / step | weights/s | weights/s (generate fwd) | GFLOP / step "
        "| GFLOP/s | matmul 2048² GFLOP/s f32 / bf16 | % of f32 matmul "
        "| peak RSS MiB process / run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gen = f"{r['generated_weights_per_s']:,.0f}" if "generated_weights_per_s" in r else "–"
        print(
            f"| {r['case']} | {r['compile_s']:.1f} | {r['step_s']:.3f} "
            f"| {r['weights_per_s']:,.0f} | {gen} | {r['step_gflop']:.2f} "
            f"| {r['achieved_gflops']:.1f} | {r['matmul_2048_gflops']:.0f} / "
            f"{r['matmul_2048_bf16_gflops']:.0f} "
            f"| {100 * r['fraction_of_matmul']:.1f} | {r['peak_rss_mib']:.0f} / "
            f"{r['exec_peak_rss_mib'] or float('nan'):.0f} |"
        )


if __name__ == "__main__":
    main()
