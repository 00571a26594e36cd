"""What a run reports: ``results.json`` (schema below), ``init_fit.json`` and their helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.generator import precision, separable
from uhn_jax.hypernets import uhn
from uhn_jax.training import tasks
from uhn_jax.training import workdir as workdir_lib
from uhn_jax.training.setup import Setup, select_member

RESULTS_SCHEMA_VERSION = 1


def describe_model(exp: config_lib.Experiment) -> str:
    """A short name of ``exp``'s base model, e.g. ``mlp-64x64`` or ``cnn-d6-6-6-w16x32x64``."""
    m = exp.model
    if m.family not in config_lib.MODEL_FAMILIES:  # a user's family: its own name says it
        return m.family
    widths = "x".join(str(w) for w in m.widths)
    if m.family == "cnn":
        return f"cnn-d{'-'.join(str(d) for d in m.depths)}-w{widths}"
    if m.family == "gat":
        return f"gat-{m.num_heads}x{widths}-out{m.output_heads}"
    if m.family == "transformer":
        return f"transformer-e{m.embed_dim}-enc{m.num_encoders}-h{m.num_heads}"
    if m.family == "kan":
        return f"kan-{widths}-g{m.grid_size}"
    return f"{m.family}-{widths}"


def numerics(setup: Setup) -> dict[str, Any]:
    """What decides a run's floating-point arithmetic, so a reader can tell comparable runs.

    ``matmul_dtype`` is the generator's resolved first-layer operand dtype (``auto`` picks
    bfloat16 where bf16 GEMMs are native, see :func:`uhn_jax.generator.resolve_matmul_dtype`),
    ``first_layer`` how the separable groups' first layer runs (``matmul``, ``nufft``, or
    ``mixed`` when some groups use each); both are ``None`` for kinds without a UHN generator.
    """
    matmul_dtype = first_layer = None
    if setup.gen is not None:
        matmul_dtype = str(precision.resolve_matmul_dtype(setup.gen.matmul_dtype))
        if setup.plan is not None:
            used = set(separable.use_nufft(setup.gen, setup.plan, setup.chunk_size, setup.mesh))
            first_layer = "mixed" if len(used) > 1 else ("nufft" if True in used else "matmul")
    device = jax.devices()[0]
    return {
        "matmul_dtype": matmul_dtype,
        "first_layer": first_layer,
        "cpu_native_bf16": precision.cpu_has_native_bf16(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
    }


def header(exp: config_lib.Experiment, setup: Setup, params) -> dict[str, Any]:
    """The fields every single-model ``results.json`` starts with."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mode": exp.mode,
        "task": tasks.results_task(exp),
        "num_target_params": setup.layout.size,
        "num_generator_params": 0,
        **setup.kind.num_trained(params),
        "metric_name": setup.metric_name,
        "numerics": numerics(setup),
    }


def generator_target_ratio(results: Mapping[str, Any]) -> float | None:
    """Generator over target parameters of a ``results.json`` dict: how many parameters the
    hypernetwork trains per weight it generates (below 1: it compresses the base model).

    Computed from ``num_generator_params`` and ``num_target_params``, so a ``results.json``
    written before the ``generator_target_ratio`` field existed gets it too.

    Returns:
      The ratio, or ``None`` for a run without a generator (``num_generator_params`` 0, e.g.
      direct training) or without both counts.
    """
    gen, target = results.get("num_generator_params"), results.get("num_target_params")
    if not gen or not target:
        return None
    return gen / target


def format_ratio(ratio: float | None) -> str:
    """A generator/target ratio as a table shows it: ``1.26×``, ``0.0697×``, ``2,329×`` (3
    significant digits, whole numbers from 100 on); ``–`` for none."""
    if ratio is None:
        return "–"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def with_ratio(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with ``generator_target_ratio`` (:func:`generator_target_ratio`) right
    after ``num_generator_params``, when it holds both parameter counts; else as it is."""
    if not {"num_generator_params", "num_target_params"} <= results.keys():
        return results
    out = {}
    for key, value in results.items():
        if key != "generator_target_ratio":
            out[key] = value
        if key == "num_generator_params":
            out["generator_target_ratio"] = generator_target_ratio(results)
    return out


def write(workdir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Writes ``results.json`` (process 0 of a multi-host job) and returns it: ``results``
    with the generator/target ratio added (:func:`with_ratio`), so every run kind reports it.
    """
    results = with_ratio(results)
    if jax.process_index() == 0:
        # Atomic: a run killed while writing it must not leave a damaged results.json that
        # every rerun refuses.
        workdir_lib.write_atomic(
            Path(workdir) / "results.json", json.dumps(results, indent=2) + "\n"
        )
    return results


def init_fit(setup: Setup, params, constants, cond) -> list[dict[str, Any]]:
    """How well the generated weights match the initialisation targets, one row per tensor.

    Rows (layout order) hold the tensor's name, its generated ``mean`` and ``std`` and the
    ``target_mean`` / ``target_std`` of the moment-matching stage. In a multi-model run the
    figures are for the first hold-in member; in a recursive run, for the base model f.
    """
    if setup.members:
        cond = select_member(cond, 0)
    last = setup.init_stages - 1  # the base model f's sub-stage
    stats = _generated_stats_jit(setup, params, constants, cond, last)
    mean, std, targets = (np.asarray(a) for a in stats)
    present = (
        np.ones(len(targets), bool)
        if cond.tensor_present is None
        else np.asarray(cond.tensor_present) > 0
    )
    return [
        {
            "tensor": "/".join(leaf.keys),
            "mean": float(mean[i]),
            "std": float(std[i]),
            "target_mean": float(targets[i, 0]),
            "target_std": float(targets[i, 1]),
        }
        for i, leaf in enumerate(setup.layout.leaves)
        if present[i]
    ]


_generated_stats_jit = jax.jit(uhn.generated_stats, static_argnums=(0, 4))


def poorly_fit(rows: list[dict[str, Any]], rel: float = 0.5) -> list[dict[str, Any]]:
    """The rows of :func:`init_fit` whose std is off its (non-zero) target by more than
    ``rel`` (relative), worst first."""

    def err(r):
        return abs(r["std"] - r["target_std"]) / r["target_std"]

    bad = [r for r in rows if r["target_std"] > 0 and err(r) > rel]
    return sorted(bad, key=err, reverse=True)


def report_init_fit(
    workdir: Path, fits: list[dict[str, Any]] | dict[str, list[dict[str, Any]]]
) -> None:
    """Writes ``init_fit.json`` at the end of the initialisation stage and warns about tensors
    whose generated std is far from its target (a sign the stage needs more steps or a
    higher ``train.init_lr``).

    ``fits`` is :func:`init_fit`'s rows for a single run, or a dict of them by task name for a
    multi-task run; the file holds it as given.
    """
    if jax.process_index() == 0:
        workdir_lib.write_atomic(workdir / "init_fit.json", json.dumps(fits, indent=1) + "\n")
    for label, rows in fits.items() if isinstance(fits, dict) else [("", fits)]:
        bad = poorly_fit(rows)
        if not bad:
            continue
        worst = ", ".join(
            f"{r['tensor']} std {r['std']:.3g} (target {r['target_std']:.3g})" for r in bad[:3]
        )
        where = f" of task {label}" if label else ""
        print(
            f"[uhn_jax] warning: after the initialisation stage {len(bad)} of {len(rows)} "
            f"tensors{where} have a std more than 50 % off target: {worst}. Consider more "
            "train.init_steps or a higher train.init_lr (details in init_fit.json)."
        )
