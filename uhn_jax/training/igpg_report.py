"""IGPG's results: the tables of ``results.json`` (reconstruction, seen pairs, held-out pairs x
k, novelty, sizes, wall time), the progress lines and summary it prints, and its figures
(``igpg_seen.png``: generated against zoo accuracy per seen pair; ``igpg_finetune.png``:
fine-tuning curves per held-out pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.analysis import figures as figures_lib

SCHEMA = "uhn_jax.igpg"
VERSION = 1
STARTS = ("generated", "random", "transfer")


def _stats(values) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def seen_row(part: dict) -> dict[str, Any]:
    """One row of the seen (or held-out, at k = 0) table: generated against zoo accuracy."""
    gen, zoo = np.asarray(part["generated_accuracy"]), np.asarray(part["zoo_accuracy"])
    return {
        "pair": part["pair"],
        "heldout": part["heldout"],
        "generated_as": part.get("generated_as"),  # the seen pair written, then deepened
        "generated": len(gen),
        "zoo_networks": len(zoo),
        "generated_accuracy": _stats(gen),
        "zoo_accuracy": _stats(zoo),
        "zoo_median_network": part["zoo_median"],
        "fraction_at_or_above_zoo_median": float((gen >= part["zoo_median"]).mean()),
        "fraction_at_or_above_zoo_min": float((gen >= zoo.min()).mean()),
        "generated_values": gen.tolist(),
        "zoo_values": zoo.tolist(),
    }


def heldout_rows(part: dict) -> list[dict[str, Any]]:
    """The held-out table's rows of one pair: per start and ``k``, the accuracy's mean, std,
    min and max over the start's networks."""
    ft = part["finetune"]
    rows = []
    for start in STARTS:
        if start not in ft:
            continue
        acc = np.asarray(ft[start])
        for j, k in enumerate(ft["steps"]):
            rows.append(
                {
                    "pair": part["pair"],
                    "start": start,
                    "k": k,
                    "networks": len(acc),
                    **_stats(acc[:, j]),
                    "zoo_median_network": part["zoo_median"],
                    **({"from": ft["transfer_from"]} if start == "transfer" else {}),
                }
            )
    if "transfer" not in ft:
        rows.append(
            {"pair": part["pair"], "start": "transfer", "not_applicable": ft["transfer_reason"]}
        )
    return rows


def novelty_row(part: dict) -> dict[str, Any]:
    """The novelty table's row of one pair (per-network values included)."""
    return dict(part["novelty"])


def results(spec, ex, excluded: dict, parts: list[dict], vq: dict, pr: dict, wall: float):
    """``results.json``: every table, the sizes and the wall times."""
    seen = [p for p in parts if not p["heldout"]]
    held = [p for p in parts if p["heldout"]]
    train = sum(len(p.train) for p in ex.pairs.values())
    sizes = {
        "pairs_seen": len(seen),
        "pairs_heldout": len(held),
        "train_networks": train,
        "chunk_size": spec.vqvae.chunk_size,
        "codebook_size": spec.vqvae.codebook_size,
        "max_tokens": max(p.tokens for p in ex.pairs.values()),
        "chunks": vq["vqvae"]["chunks"],
        "vqvae_params": vq["vqvae"]["params"],
        "prior_params": pr["params"],
    }
    part_times = [vq["wall_s"], pr["wall_s"], *(p["wall_s"] for p in parts)]
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "zoo": spec.zoo,
        "zoo_complete": ex.zoo.complete,
        "pairs": {
            "seen": [p["pair"] for p in seen],
            "heldout": [p["pair"] for p in held],
            "excluded": excluded,
        },
        "sizes": sizes,
        "vqvae": vq["vqvae"],
        "prior": {k: v for k, v in pr.items() if k != "wall_s"},
        "reconstruction": vq["reconstruction"],
        "seen": [seen_row(p) for p in seen],
        "heldout": [r for p in held for r in heldout_rows(p)],
        "heldout_zero_shot": [seen_row(p) for p in held],
        "novelty": [novelty_row(p) for p in parts],
        "wall_s": {"this_call": round(wall, 2), "parts": round(sum(part_times), 2)},
    }


def reconstruction_line(out: dict) -> str:
    """The progress line of a finished VQ-VAE part."""
    rows = out["reconstruction"]
    drop = np.mean([r["mean_drop"] for r in rows if not r["heldout"]])
    v = out["vqvae"]
    return (
        f"[igpg] vqvae: {v['chunks']} chunks, code usage {100 * v['usage']:.0f} %, perplexity "
        f"{v['perplexity']:.1f}; reconstructed networks lose {100 * drop:.1f} pp test accuracy "
        "on average (seen pairs)"
    )


def prior_line(out: dict) -> str:
    """The progress line of a finished prior part."""
    nll = "; ".join(
        f"{k} " + ", ".join(f"{side} {v:.2f}" for side, v in sides.items())
        for k, sides in out["nll"].items()
    )
    return f"[igpg] prior: {out['params']} params, step {out['step']} chosen; per-token NLL {nll}"


def pair_line(part: dict) -> str:
    """The progress line of a finished pair."""
    gen = np.asarray(part["generated_accuracy"])
    grown = f" as {part['generated_as']}, deepened" if part.get("generated_as") else ""
    line = (
        f"[igpg] {part['pair']}{' (held out)' if part['heldout'] else ''}: generated{grown} "
        f"{100 * gen.mean():.1f} % (max {100 * gen.max():.1f}) vs zoo median "
        f"{100 * part['zoo_median']:.1f} %; novelty ratio (aligned) "
        f"{part['novelty']['median_ratio_aligned']:.2f}"
    )
    if "finetune" in part:
        ft = part["finetune"]
        last = {s: 100 * np.mean(np.asarray(ft[s])[:, -1]) for s in STARTS if s in ft}
        line += f"; after {ft['steps'][-1]} steps " + ", ".join(
            f"{s} {v:.1f} %" for s, v in last.items()
        )
    return line


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary(res: dict, workdir: Path) -> str:
    """The summary the command prints."""
    lines = [f"IGPG on {res['zoo']} -> {workdir}/results.json"]
    for r in res["reconstruction"]:
        if not r.get("coded", True):
            lines.append(f"  reconstruction {r['pair']}: not coded (no frame: architecture unseen)")
            continue
        lines.append(
            f"  reconstruction {r['pair']}{' (held out)' if r['heldout'] else ''}: "
            f"{100 * r['mean_original']:.1f} -> {100 * r['mean_reconstructed']:.1f} %"
        )
    for r in res["seen"]:
        g = r["generated_accuracy"]
        lines.append(
            f"  seen {r['pair']}: generated {100 * g['mean']:.1f} +- {100 * g['std']:.1f} % "
            f"(max {100 * g['max']:.1f}), zoo median {100 * r['zoo_median_network']:.1f} %"
        )
    for r in res["heldout_zero_shot"]:
        if r.get("generated_as"):
            lines.append(f"  held out {r['pair']}: generated as {r['generated_as']}, deepened")
    for r in res["heldout"]:
        if "not_applicable" in r:
            lines.append(f"  held out {r['pair']} {r['start']}: n/a ({r['not_applicable']})")
        else:
            lines.append(
                f"  held out {r['pair']} {r['start']} k={r['k']}: {100 * r['mean']:.1f} +- "
                f"{100 * r['std']:.1f} %"
            )
    for r in res["novelty"]:
        lines.append(
            f"  novelty {r['pair']}: nearest/zoo-typical distance {r['median_ratio_aligned']:.2f}"
            f" aligned ({r['median_ratio_raw']:.2f} raw), disagreement "
            f"{100 * r['median_disagreement']:.1f} %; spread (pairwise disagreement) "
            f"{_percent(r.get('generated_spread'))} generated, {_percent(r.get('zoo_spread'))} zoo"
        )
    wall = res["wall_s"]
    lines.append(f"  wall time {wall['this_call']:.0f} s (parts' own {wall['parts']:.0f} s)")
    return "\n".join(lines)


def figures(res: dict, workdir: Path) -> list[Path]:
    """Draws ``igpg_seen.png`` and, with held-out pairs, ``igpg_finetune.png``."""
    out = [_seen_figure(res["seen"] + res["heldout_zero_shot"], workdir / "igpg_seen.png")]
    if res["pairs"]["heldout"]:
        out.append(_finetune_figure(res, workdir / "igpg_finetune.png"))
    return out


def _seen_figure(rows: list[dict], path: Path) -> Path:
    plt = figures_lib.pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1), 3.6))
    for i, r in enumerate(rows):
        zoo, gen = (100 * np.asarray(r[k]) for k in ("zoo_values", "generated_values"))
        ax.scatter(np.full(len(zoo), i - 0.15), zoo, s=8, color="0.6")
        ax.scatter([i - 0.15], [100 * r["zoo_median_network"]], marker="_", s=300, color="k")
        ax.scatter(np.full(len(gen), i + 0.15), gen, s=10, color="C1")
    ax.set_xticks(range(len(rows)))
    labels = [r["pair"] + (" (held out)" if r.get("heldout") else "") for r in rows]
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    # Two lines: one would be wider than the figure of two or three pairs.
    ax.set_title("zoo networks (grey; median: bar)\nvs generated (orange, k = 0)", fontsize=9)
    return figures_lib.save(fig, path)


def _finetune_figure(res: dict, path: Path) -> Path:
    plt = figures_lib.pyplot()
    pairs = res["pairs"]["heldout"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.0 * len(pairs), 3.2), squeeze=False)
    for ax, name in zip(axes[0], pairs, strict=True):
        rows = [r for r in res["heldout"] if r["pair"] == name and "mean" in r]
        for j, start in enumerate(STARTS):
            mine = [r for r in rows if r["start"] == start]
            if not mine:
                continue
            x = np.arange(len(mine))
            mean = np.asarray([100 * r["mean"] for r in mine])
            lo, hi = (np.asarray([100 * r[k] for r in mine]) for k in ("min", "max"))
            ax.plot(x, mean, marker="o", color=f"C{j}", label=start)
            ax.fill_between(x, lo, hi, color=f"C{j}", alpha=0.2)
            ax.set_xticks(x)
            ax.set_xticklabels([str(r["k"]) for r in mine])
        ax.axhline(
            100 * rows[0]["zoo_median_network"], color="k", ls="--", lw=0.8, label="zoo median"
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning steps k")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
    return figures_lib.save(fig, path)
