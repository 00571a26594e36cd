"""Speed and memory of IGPG's two trainings and its generation by chunk size (docs/igpg.md).

Usage (from the repo root, after `make test` or `make demo` created .venv):

  XLA_FLAGS= .venv/bin/python benchmarks/igpg_benchmark.py
  XLA_FLAGS= .venv/bin/python benchmarks/igpg_benchmark.py --preset cpu --arch mnist/ha_cnn-8x8-k3

The chunk size is the knob: an architecture of ``N`` params is ``T`` = about ``N / c`` tokens,
and the prior's cost follows ``T`` (a training step attends over ``P + T`` positions, ``P`` the
condition prefix; sampling is ``T`` sequential steps), while a VQ-VAE step reads a fixed
batch of chunks whatever their size. The networks are random (no zoo needed), ``--networks``
of one architecture the presets train on (``--arch``: the default,
``digits/ha_cnn-8x8-k3-h32``, 2,050 params, is the longest pair of the ``digits`` preset),
drawn at the scale of the base model's init (per value ``1 / sqrt(fan_in)``: the VQ-VAE's
default frame). The settings are ``configs/igpg.py:<--preset>``'s, checked by
``igpg_config.validate``, with ``vqvae.chunk_size`` set to the case's and
``select.max_tokens`` raised to the sequence length where it is shorter (a prior's positions
table must cover it). The prior's conditions are built as ``igpg.py`` builds them
(``igpg_fit.sequences``, ``Conditioner.condition``), with one stand-in: the dataset encoding
is ``image_set_features`` of ``prior.images_per_dataset`` random normal images of the
dataset's shape instead of its training images (same shapes and cost; the values do not
change a step's time). The family embedding has every family of ``select.families``.

Each chunk size runs in its own subprocess, so that its peak RSS is its own. Per chunk size:

* tokens per network;
* VQ-VAE: compile time and seconds per step of ``vqvae.train_step`` (``vqvae_train.batch_size``
  chunks drawn from the training chunks on the device), jitted with the state donated as
  ``igpg_fit.run_loop`` does;
* prior: the same of ``prior.train_step`` (``prior_train.batch_size`` networks), on the
  networks' codes under the VQ-VAE after its timed steps (the codes' values do not change a
  step's time); the validation NLL that ``fit_prior`` scores every ``prior.eval_every`` steps
  is not timed;
* generation: ``prior.sample`` as ``Experiment.generate`` calls it (the preset's temperature,
  top-k and ``sample.decode``): the first call (compilation and one draw), then seconds per
  draw of one network's tokens and of ``sample.networks`` networks' (one batched call), and
  seconds to decode one network's draw to weights (``Codec.decode``, or ``Codec.decode_mean``
  for ``sample.decode = "mean"``);
* peak RSS (``ru_maxrss``: imports, compilation and execution) after the VQ-VAE part and at
  the end of the case.

Times are medians of ``--steps`` calls after two warm-up calls.
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

#: The architectures ``--arch`` takes: pairs the ``configs/igpg.py`` presets train on
#: (``<dataset>/<architecture>``), as base-model config fields.
ARCHS = {
    "digits/mlp-16": ("mlp", {"widths": (16,)}),  # digits, fixed
    "digits/mlp-16x16x16": ("mlp", {"widths": (16, 16, 16)}),  # fixed
    "digits/ha_cnn-8x8-k3-h32": ("ha_cnn", {"widths": (8, 8), "head_hidden": (32,)}),  # digits, cpu
    "mnist/ha_cnn-8x8-k3": ("ha_cnn", {"widths": (8, 8)}),  # cpu
}
#: One image's shape per dataset, as the zoo's loaders give it.
INPUT_SHAPES = {"digits": (8, 8), "mnist": (28, 28)}
NUM_CLASSES = 10
SLOPE = 0.1  # the activation slope the architecture is conditioned on


def architecture(name: str):
    """The :class:`~uhn_jax.weightspace.conditioning.Architecture` of pair ``name``."""
    from uhn_jax import config as config_lib
    from uhn_jax.data import registry as data_registry
    from uhn_jax.weightspace import conditioning
    from uhn_jax.weightspace import zoo as store

    dataset, _ = name.split("/")
    family, fields = ARCHS[name]
    meta = {
        "model": {"family": family, "kernel_size": 3, "slope": SLOPE, **fields},
        "data": {
            "input_shape": INPUT_SHAPES[dataset],
            "num_classes": NUM_CLASSES,
            "dataset_type": data_registry.dataset_type(config_lib.DataConfig(name=dataset)),
        },
    }
    return conditioning.Architecture(family, INPUT_SHAPES[dataset], SLOPE, store.layout_of(meta))


def networks(cp, n: int, seed: int = 0) -> np.ndarray:
    """``w[n, N]``: ``n`` random networks of ``cp``'s layout at its default frame's scale."""
    from uhn_jax.weightspace import vqvae

    scale = vqvae.init_frame(cp).scale
    return (np.random.default_rng(seed).normal(size=(n, scale.size)) * scale).astype(np.float32)


def spec_for(preset: str, chunk_size: int, layout):
    """The preset's validated spec at ``chunk_size``, its ``select.max_tokens`` raised to
    ``layout``'s length in tokens where it is shorter."""
    from configs import igpg as presets
    from uhn_jax.training import igpg_config
    from uhn_jax.weightspace import vqvae

    c = presets.get_config(preset)
    c.vqvae.chunk_size = chunk_size
    tokens = vqvae.plan(layout, chunk_size, c.vqvae.max_chunks_per_layer).num_tokens
    c.select.max_tokens = max(c.select.max_tokens, tokens)
    return igpg_config.validate(c)


def _compiled(step_fn, state, data, key) -> tuple:
    """``(executable, compile seconds)`` of a ``step(state, data, key)`` jitted as
    ``igpg_fit.run_loop`` jits it (the state donated)."""
    import jax

    t = time.perf_counter()
    executable = jax.jit(step_fn, donate_argnums=0).lower(state, data, key).compile()
    return executable, time.perf_counter() - t


def _time_steps(executable, state, data, key, steps: int) -> tuple[float, dict]:
    """``(median seconds per step, the state after them)``."""
    from conditional_benchmark import _median_seconds  # warm-up calls, then the median

    holder = {"state": state}

    def step():
        holder["state"], metrics = executable(holder["state"], data, key)
        return metrics["loss"]

    return _median_seconds(step, steps), holder["state"]


def time_vqvae(spec, layout, w_MN: np.ndarray, steps: int) -> tuple:
    """``(codec, figures)``: the VQ-VAE's step timed as ``igpg_fit.fit_vqvae`` runs it, and
    the codec of its state after the timed steps."""
    import functools

    import jax
    import jax.numpy as jnp

    from uhn_jax.training import igpg_fit as fit
    from uhn_jax.weightspace import vqvae

    model, t = vqvae.VQVAE(spec.vqvae), spec.vqvae_train
    tx = fit.optimizer(t)
    frames = {layout: vqvae.standard_frame(w_MN)} if spec.vqvae.standardize else {}
    host = vqvae.training_data({layout: w_MN}, spec.vqvae, frames)
    data, key = jax.tree.map(jnp.asarray, host), jax.random.key(spec.seed)
    state = vqvae.init_state(model, tx, host, spec.seed)
    step_fn = functools.partial(vqvae.train_step, model, tx, t.batch_size)
    executable, compile_s = _compiled(step_fn, state, data, key)
    step_s, state = _time_steps(executable, state, data, key, steps)
    codec = vqvae.Codec(model, state["params"], state["codebook"]["embed"], frames)
    figures = {
        "chunks": int(host["x"].shape[0]),
        "vq_compile_s": compile_s,
        "vq_step_s": step_s,
        "vq_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return codec, figures


def conditioner(spec, dataset: str):
    """The prior's conditioner, its dataset encoding from random images (the stand-in)."""
    from uhn_jax.weightspace import conditioning

    shape = (spec.prior.images_per_dataset, *INPUT_SHAPES[dataset])
    images = np.random.default_rng(spec.seed).normal(size=shape).astype(np.float32)
    encoding = conditioning.image_set_features(images, spec.seed)
    families = tuple(sorted(spec.select.families))
    return conditioning.Conditioner(families, {dataset: encoding}, spec.vqvae.max_layers)


def time_prior(spec, codec, name: str, arch, cond, w_MN: np.ndarray, steps: int) -> tuple:
    """``(model, params, figures)``: the prior's step timed as ``igpg_fit.fit_prior`` runs
    it, on the codes of ``w_MN``, and its params after the timed steps."""
    import functools

    import jax
    import jax.numpy as jnp

    from uhn_jax.training import igpg_fit as fit
    from uhn_jax.training import igpg_pairs as pairs_lib
    from uhn_jax.weightspace import prior

    dataset = name.split("/")[0]
    data_meta = {"input_shape": list(arch.input_shape), "num_classes": NUM_CLASSES}
    records = [
        {"id": f"random-{i}", "test_accuracy": 0.0, "slope": arch.slope, "data": data_meta}
        for i in range(len(w_MN))
    ]
    tokens = codec.plan(arch.layout).num_tokens
    pair = pairs_lib.Pair(name, dataset, arch.family, records, records, False, arch.layout, tokens)
    host = fit.sequences(codec, [pair], cond, {name: (records, w_MN)}, tokens)
    model, t = prior.Prior(fit.prior_settings(spec, cond.families)), spec.prior_train
    tx = fit.optimizer(t)
    params = prior.init_params(model, host, spec.seed)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    data, key = jax.tree.map(jnp.asarray, host), jax.random.key(spec.seed)
    step_fn = functools.partial(prior.train_step, model, tx, t.batch_size)
    executable, compile_s = _compiled(step_fn, state, data, key)
    step_s, state = _time_steps(executable, state, data, key, steps)
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    figures = {"prior_params": n_params, "prior_compile_s": compile_s, "prior_step_s": step_s}
    return model, state["params"], figures


def time_generation(spec, codec, model, params, arch, cond, dataset: str, steps: int) -> dict:
    """The sampler's first call, seconds per draw of 1 and of ``sample.networks`` networks,
    and seconds to decode one network's draw, as ``igpg.Experiment.generate`` does them."""
    import jax
    from conditional_benchmark import _median_seconds

    from uhn_jax.weightspace import prior

    s = spec.sample
    mean = s.decode == "mean"
    roles = codec.plan(arch.layout).roles(spec.vqvae.position_buckets)
    c = cond.condition(dataset, NUM_CLASSES, arch)
    key = jax.random.key(spec.seed)

    def draw(num: int):
        return prior.sample(
            model, params, roles, c, key, num,
            temperature=s.temperature, top_k=s.top_k, probabilities=mean,
        )  # fmt: skip

    t = time.perf_counter()
    drawn = jax.block_until_ready(draw(1))
    first_s = time.perf_counter() - t
    one_s = _median_seconds(lambda: draw(1), steps)
    batch_s = _median_seconds(lambda: draw(s.networks), steps)
    if mean:
        decode_s = _median_seconds(
            lambda: codec.decode_mean(np.asarray(drawn[1]), arch.layout), steps
        )
    else:
        decode_s = _median_seconds(lambda: codec.decode(np.asarray(drawn), arch.layout), steps)
    return {
        "sample_first_s": first_s,
        "sample_one_s": one_s,
        "sample_batch_s": batch_s,
        "sample_networks": s.networks,
        "decode": s.decode,
        "decode_s": decode_s,
    }


def run_case(chunk_size: int, name: str, preset: str, n: int, steps: int) -> dict:
    """One chunk size in this process: its figures."""
    from uhn_jax.weightspace import vqvae

    arch = architecture(name)
    spec = spec_for(preset, chunk_size, arch.layout)
    cp = vqvae.plan(arch.layout, chunk_size, spec.vqvae.max_chunks_per_layer)
    vqvae.check_roles(cp, spec.vqvae)
    w_MN = networks(cp, n, spec.seed)
    codec, vq = time_vqvae(spec, arch.layout, w_MN, steps)
    cond = conditioner(spec, name.split("/")[0])
    model, params, pr = time_prior(spec, codec, name, arch, cond, w_MN, steps)
    gen = time_generation(spec, codec, model, params, arch, cond, name.split("/")[0], steps)
    return {
        "chunk_size": chunk_size,
        "tokens_per_network": cp.num_tokens,
        "params_per_network": arch.layout.size,
        "networks": n,
        "max_tokens": spec.select.max_tokens,
        "vq_batch": spec.vqvae_train.batch_size,
        "prior_batch": spec.prior_train.batch_size,
        **vq,
        **pr,
        **gen,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _table(rows: list[dict], args: argparse.Namespace) -> None:
    """Prints the figures as a markdown table, after two lines saying what was run."""
    r0 = rows[0]
    print(
        f"IGPG (configs/igpg.py:{args.preset} settings), {args.networks} random networks "
        f"{args.arch} ({r0['params_per_network']:,} params each); VQ-VAE batch "
        f"{r0['vq_batch']} chunks, prior batch {r0['prior_batch']} networks; sampling "
        f"{r0['sample_networks']} networks a call, decode={r0['decode']!r}; median of "
        f"{args.steps} calls"
    )
    print(
        "| chunk | tokens/net | VQ-VAE compile s | VQ-VAE s/step | prior compile s "
        "| prior s/step | sample 1st call s | sample s (1 net) "
        f"| sample s ({r0['sample_networks']} nets) | decode s | peak MiB (VQ-VAE / all) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['chunk_size']} | {r['tokens_per_network']:,} | {r['vq_compile_s']:.1f} "
            f"| {r['vq_step_s']:.4f} | {r['prior_compile_s']:.1f} | {r['prior_step_s']:.3f} "
            f"| {r['sample_first_s']:.2f} | {r['sample_one_s']:.3f} "
            f"| {r['sample_batch_s']:.3f} | {r['decode_s']:.4f} "
            f"| {r['vq_peak_rss_mib']:,.0f} / {r['peak_rss_mib']:,.0f} |"
        )


def main() -> None:
    """Checks the flags, runs each chunk size in a subprocess and prints the table."""
    from sne_benchmark import _ints  # comma-separated positive ints, or a usage error

    from configs import igpg as presets  # no jax: the parent process stays light

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", default="2,4,8,16", help="values per token")
    parser.add_argument("--preset", default="digits", help=f"one of {', '.join(presets.PRESETS)}")
    parser.add_argument("--arch", default="digits/ha_cnn-8x8-k3-h32", help=", ".join(ARCHS))
    parser.add_argument("--networks", type=int, default=64, help="random training networks")
    parser.add_argument("--steps", type=int, default=5, help="timed calls per figure")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--case", type=int, default=0, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    chunks = _ints(parser, "--chunk-sizes", args.chunk_sizes)
    if args.preset not in presets.PRESETS:
        parser.error(f"--preset takes one of {', '.join(presets.PRESETS)}, got {args.preset!r}")
    if args.arch not in ARCHS:
        parser.error(f"--arch takes one of {', '.join(ARCHS)}, got {args.arch!r}")
    if args.networks < 2:
        parser.error(f"--networks must be an int >= 2, got {args.networks}")
    if args.steps < 1:
        parser.error(f"--steps must be a positive int, got {args.steps}")
    if args.case:
        print(json.dumps(run_case(args.case, args.arch, args.preset, args.networks, args.steps)))
        return
    rows = []
    for c in chunks:
        print(f"running chunk size {c} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--case", str(c), "--preset", args.preset]
        cmd += ["--arch", args.arch, "--networks", str(args.networks), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"chunk size {c} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    _table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
