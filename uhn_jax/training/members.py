"""Model-set runs (spec §5.1): one UHN trained over the hold-in members of a model set.

Every member is written into the layout of the family's largest member
(:func:`uhn_jax.training.model_sets.embed`), so all members share one plan, one layout and one
compiled step; the descriptor arrays are stacked over the members (hold-in first, then held
out) and a step picks its member by index.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax import config as config_lib
from uhn_jax import generator
from uhn_jax.core import descriptors
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.training import model_sets, results, tasks
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib


def _check(exp: config_lib.Experiment) -> None:
    if exp.mode != "uhn":
        raise ValueError("a model set (model.model_set) trains a UHN; set mode='uhn'")
    if not exp.generator.structure:
        raise ValueError(
            "a model set needs the structure encoder to tell its members apart; set "
            "generator.structure=True"
        )


def _hold_in_ranges(hold_in) -> tuple[descriptors.Ranges, descriptors.Ranges]:
    """The generator's declared ranges: the union over the hold-in members."""
    index = descriptors.union_all([e.desc.index_ranges() for e in hold_in])
    structure = descriptors.union_all(
        [
            descriptors.Ranges(
                tuple(e.structure_input[e.layer_mask > 0].min(0).tolist()),
                tuple(e.structure_input[e.layer_mask > 0].max(0).tolist()),
            )
            for e in hold_in
        ]
    )
    return index, structure


def _plans(exp, gen, embedded, archs):
    """One generation plan per member (a held-out member outside the ranges is an error)."""
    plans = []
    for e, arch in zip(embedded, archs, strict=True):
        try:
            generator.check(gen, e.desc)
        except ValueError as err:
            raise ValueError(f"member {arch}: {err}") from err
        plans.append(generator.plan(gen, e.desc, setup_lib.min_separable(exp)))
    if any(p != plans[0][0] for p, _ in plans):
        raise ValueError("members of one model set must share a generation plan")
    return plans


def make_multi_setup(exp: config_lib.Experiment, dataset):
    """Setup of a multi-model run over the model set ``exp.model.model_set``.

    Returns:
      ``(setup, stacked device arrays, model set, member models)``.
    """
    _check(exp)
    mset = model_sets.load(exp.model.model_set)

    def build(arch):
        model_cfg = model_sets.model_config(exp.model, arch)
        return setup_lib.build_model(dataclasses.replace(exp, model=model_cfg), dataset)

    members = [build(a) for a in mset.models]
    largest = build(mset.family.largest())
    if not hasattr(largest, "member_masks"):
        raise ValueError(f"model family {exp.model.family!r} cannot run masked as its members")
    big = setup_lib.model_descriptors(largest)
    embedded = [
        model_sets.embed(setup_lib.model_descriptors(m), big, largest.layer_map(m)) for m in members
    ]
    gen = generator.from_config(exp.generator, *_hold_in_ranges(embedded[: len(mset.hold_in)]))
    plans = _plans(exp, gen, embedded, mset.models)
    mesh = sharding_lib.make_mesh(exp.train.num_devices)
    setup_lib.check_batches(exp, tasks.task_of(exp), dataset, mesh)
    chunk, remat = exp.generator.chunk_size or None, True
    if chunk is None:
        devices = 1 if mesh is None else mesh.size
        chunk, remat = generator.auto_chunking(gen, plans[0][1], exp.generator.memory_mib, devices)
    per_member = [
        setup_lib.DescArrays(
            host,
            e.structure_input,
            big.segment_ids,
            e.desc.targets,
            e.weight_mask,
            e.tensor_present,
            e.layer_mask,
            largest.member_masks(m),
        )
        for (_, host), e, m in zip(plans, embedded, members, strict=True)
    ]
    stacked = jax.tree.map(lambda *a: np.stack(a), *per_member)
    norm, augment = setup_lib.input_pipeline(exp, dataset)
    setup = setup_lib.Setup(
        exp.mode,
        tasks.task_of(exp),
        largest,
        norm,
        augment,
        big.layout,
        gen,
        plans[0][0],
        chunk,
        remat,
        exp.train,
        mesh,
        members=len(mset.hold_in),
    )
    # Members are picked by index inside the step, so their stacked rows stay whole on every
    # device; generation splits each member's rows over the mesh.
    return setup, sharding_lib.replicate(mesh, jax.tree.map(jnp.asarray, stacked)), mset, members


def member_results(
    exp, setup, state, cond, mset, members, test_data, workdir: Path
) -> dict[str, Any]:
    """Test metric of the hold-in evaluation members (the first ``num_held_out`` hold-in ones,
    as the reference) and of every held-out member, and a scatter plot of metric against
    parameter count (``members.png``)."""
    hold_in = list(range(min(mset.num_held_out or len(mset.hold_in), len(mset.hold_in))))
    held_out = list(range(len(mset.hold_in), len(mset.models)))
    name = setup.metric_name
    rows = []
    for i in hold_in + held_out:
        member_cond = setup_lib.select_member(cond, i)
        args = (setup, state["params"], state["constants"], member_cond, test_data)
        ev = step_lib.evaluate(*args, exp.train.eval_batch_size)
        shapes = jax.eval_shape(members[i].init, jax.random.key(0))
        rows.append(
            {
                "index": i,
                "split": "hold_in" if i < len(mset.hold_in) else "held_out",
                "arch": dict(mset.models[i]),
                "num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)),
                "test_metric": float(ev[name]),
            }
        )

    def mean(split):
        vals = [r["test_metric"] for r in rows if r["split"] == split]
        return float(np.mean(vals)) if vals else None

    out = {
        **results.header(exp, setup, state["params"]),
        "dataset": exp.data.name,
        "model": f"set:{Path(exp.model.model_set).name}",
        "test_metric": mean("held_out"),
        "hold_in_test_metric": mean("hold_in"),
        "held_out_test_metric": mean("held_out"),
        "num_members": len(mset.models),
        "num_hold_in": len(mset.hold_in),
        "members": rows,
        "seed": exp.seed,
        "steps": exp.train.steps,
        "init_steps": setup.init_steps,
    }
    if jax.process_index() == 0:
        plot_members(rows, name, workdir / "members.png")
    return out


def plot_members(
    rows: list[dict], metric_name: str, path: Path, *, title: str | None = None
) -> Path:
    """Scatter plot of test metric against parameter count, hold-in and held-out marked apart
    (``rows``: ``results.json``'s ``members``)."""
    from uhn_jax.analysis import figures

    fig, ax = figures.pyplot().subplots(figsize=(5, 3.5))
    for split, marker, label in (("hold_in", "o", "seen (hold-in)"), ("held_out", "^", "unseen")):
        pts = [(r["num_params"], r["test_metric"]) for r in rows if r["split"] == split]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, marker=marker, label=label, alpha=0.75)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"test {metric_name}")
    if title:
        ax.set_title(title)
    ax.legend()
    return figures.save(fig, path)
