"""PNG figures of the population measurements in :mod:`uhn_jax.analysis`.

Each function draws one figure from the output of a measurement function, saves it to ``out``
(parent directories are created) at :data:`DPI` and returns the path. matplotlib is imported
inside the functions on the Agg backend, so importing this module costs nothing and needs no
display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from uhn_jax.analysis.robustness import calibration

#: Resolution of the saved figures.
DPI = 120


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show(png: str | Path) -> None:
    """Displays a saved PNG in Jupyter; outside it (no IPython), prints where the file is. The
    notebooks show every figure they or the library write through this."""
    try:
        from IPython.display import Image, display
    except ImportError:
        print("figure written to", png)
        return
    display(Image(filename=str(png)))


def save(fig, out: str | Path) -> Path:
    """Lays out (``tight_layout``, unless the figure has a layout engine of its own), writes
    (creating the parent directories) and closes ``fig``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    pyplot().close(fig)
    return out


def _non_empty(mapping: Mapping, name: str) -> None:
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"{name} must be a non-empty dict, got {type(mapping).__name__}")


def accuracy_histogram(
    acc,
    out: str | Path,
    *,
    reference: float | None = None,
    reference_label: str = "direct CNN",
    bins: int = 30,
    title: str = "Test accuracy of the generated networks",
) -> Path:
    """Histogram of the networks' accuracies ``acc [N]`` (in percent), with an optional vertical
    line at ``reference`` (e.g. a directly trained network's accuracy, a fraction)."""
    acc = np.asarray(acc, np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"acc must be a non-empty [N] array, got shape {acc.shape}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(100 * acc, bins=bins, color="tab:blue", alpha=0.8, label=f"{acc.size} networks")
    if reference is not None:
        ax.axvline(100 * reference, color="tab:red", ls="--", label=reference_label)
    ax.set(xlabel="test accuracy (%)", ylabel="networks", title=title)
    ax.legend()
    return save(fig, out)


def ensemble_curve(
    results: Mapping[str, Mapping[int, tuple[float, float]]],
    out: str | Path,
    *,
    title: str = "Majority-vote ensembles",
) -> Path:
    """Accuracy (%) against ensemble size (log scale), mean and std error bars, one line per
    entry of ``results`` (``{label: majority_vote_accuracy(...)}``, e.g. ``"generated"`` and
    ``"deep ensemble"``)."""
    _non_empty(results, "results")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, by_size in results.items():
        _non_empty(by_size, f"results[{label!r}]")
        sizes = sorted(by_size)
        mean = np.array([by_size[s][0] for s in sizes]) * 100
        std = np.array([by_size[s][1] for s in sizes]) * 100
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ticks = sorted({int(s) for by_size in results.values() for s in by_size})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="ensemble size", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out)


def pca_scatter(
    proj: Mapping[str, np.ndarray],
    out: str | Path,
    *,
    color=None,
    color_label: str = "test accuracy",
    title: str = "Weights on their first two principal components",
) -> Path:
    """One scatter subplot per entry of ``proj`` (``pca_2d`` output, ``{name: [N, 2]}``),
    points coloured by ``color [N]`` (e.g. the accuracies) when given."""
    _non_empty(proj, "proj")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(proj), figsize=(4 * len(proj), 4), squeeze=False)
    for ax, (name, p) in zip(axes[0], proj.items(), strict=True):
        p = np.asarray(p)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"proj[{name!r}] must be [N, 2], got shape {p.shape}")
        points = ax.scatter(
            p[:, 0], p[:, 1], s=8, c=color, cmap="viridis" if color is not None else None
        )
        if color is not None:
            fig.colorbar(points, ax=ax, label=color_label)
        ax.set(title=name, xlabel="PC 1", ylabel="PC 2")
    fig.suptitle(title)
    return save(fig, out)


def path_plot(
    paths: Mapping[str, np.ndarray], out: str | Path, *, title: str | None = None
) -> Path:
    """Accuracy (%) along the two paths of ``interpolation_paths``: through the generator
    (``interpolated``) and straight in weight space (``direct``)."""
    missing = {"t", "interpolated", "direct"} - set(paths)
    if missing:
        raise ValueError(f"paths lacks the keys {sorted(missing)} (from interpolation_paths)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        paths["t"],
        100 * np.asarray(paths["interpolated"]),
        marker="o",
        label="generated from (1-t) z1 + t z2",
    )
    ax.plot(paths["t"], 100 * np.asarray(paths["direct"]), marker="s", label="(1-t) w1 + t w2")
    ax.set(
        xlabel="t",
        ylabel="test accuracy (%)",
        title=title or "Accuracy between two generated networks",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out)


def fgsm_plot(result: Mapping, out: str | Path, *, title: str | None = None) -> Path:
    """Attack success rate (%) against eps for the single network and the ensemble (the output
    of ``fgsm_success``)."""
    missing = {"eps", "single", "ensemble"} - set(result)
    if missing:
        raise ValueError(f"result lacks the keys {sorted(missing)} (from fgsm_success)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        result["eps"],
        100 * np.asarray(result["single"]),
        marker="o",
        label="single network (white box)",
    )
    ax.plot(
        result["eps"], 100 * np.asarray(result["ensemble"]), marker="s", label="ensemble (transfer)"
    )
    kept = f" ({result['kept']} images)" if "kept" in result else ""
    ax.set(
        xlabel="eps (fraction of the pixel range)",
        ylabel="attack success (%)",
        title=title or f"FGSM{kept}",
    )
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, out)


def reliability_diagram(
    probs, y, out: str | Path, *, bins: int = 15, title: str = "Reliability"
) -> Path:
    """Accuracy against confidence per bin (``calibration``), with the diagonal of perfect
    calibration and the ECE in each title. ``probs`` is ``[B, C]`` or ``{label: [B, C]}`` for
    one panel per entry (e.g. one network and the ensemble)."""
    panels = dict(probs) if isinstance(probs, Mapping) else {"": probs}
    _non_empty(panels, "probs")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (label, p) in zip(axes[0], panels.items(), strict=True):
        cal = calibration(p, y, bins=bins)
        edges = cal["bin_edges"]
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        filled = cal["bin_count"] > 0
        ax.bar(
            centres[filled],
            cal["bin_accuracy"][filled],
            width=width,
            edgecolor="k",
            alpha=0.8,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        name = f"{label}: " if label else ""
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            ylabel="accuracy",
            title=f"{name}ECE {100 * cal['ece']:.2f}%, NLL {cal['nll']:.3f}",
        )
        ax.legend(loc="upper left")
    fig.suptitle(title)
    return save(fig, out)
