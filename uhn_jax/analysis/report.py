"""The population report of a run: ``uhn-jax analyze --workdir W [--baseline B]``.

A run's *population* is what :meth:`uhn_jax.hypernets.Kind.population` gives: ``n`` generated
networks of a ``mode=diverse`` run, the members of a ``mode=ensemble`` run, the one network of
any other. :func:`analyze` measures it on the run's test split with the functions of
:mod:`uhn_jax.analysis` and writes ``W/analysis/report.json`` and its figures:

* ``accuracy_histogram.png``: test accuracy of every network;
* ``ensembles.png``: majority-vote accuracy against ensemble size, with the baseline's (a deep
  ensemble run, ``--baseline``) when given;
* diversity: the entropy estimate and mean pairwise distance of the (gauge-fixed) weights, and
  the same for an isotropic noise ball around the baseline's first network, tuned to the
  population's mean accuracy;
* ``pca.png``: the weights on their first two principal components, per layer and all layers;
* ``paths.png`` (generative kinds): accuracy along the interpolated-noise path and the direct
  weight-space path between two generated networks;
* ``fgsm.png``: FGSM success against one network and against an ensemble;
* calibration (ECE, NLL) of one network and of the ensemble.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.analysis import figures, populations, robustness
from uhn_jax.hypernets import diverse as D
from uhn_jax.training import experiments, tasks


def population(workdir: str | Path, n: int = 1000, seed: int = 0):
    """A run's population from its workdir: ``(exp, setup, dataset, state, weights [N, W],
    apply_fn, like)``, with ``n`` networks for a generative kind (noise drawn from ``seed``),
    the members of an ensemble, the one network of any other run. ``apply_fn(w, x)`` runs one
    flat weight vector; ``like`` is the params pytree of one network (for unflattening)."""
    exp, setup, _, dataset, state = experiments.load_run(workdir)
    key = jax.random.key(seed)
    nets = setup.kind.population(setup, state["params"], state["constants"], key, n)
    like = jax.tree.map(lambda a: a[0], nets)
    weights = np.asarray(jax.vmap(D.flatten)(nets))

    def apply_fn(w, x):
        return setup.model.apply(D.unflatten(w, like), x)

    return exp, setup, dataset, state, weights, apply_fn, like


def _test_data(setup, dataset, limit: int | None):
    x = np.asarray(tasks.prepare_inputs(setup, jnp.asarray(dataset.x_test)))
    y = np.asarray(dataset.y_test)
    return (x[:limit], y[:limit]) if limit else (x, y)


def _layer_slices(like: dict) -> dict[str, slice]:
    slices, start = {}, 0
    for name in sorted(like):
        size = sum(math.prod(like[name][k].shape) for k in ("kernel", "bias"))
        slices[name] = slice(start, start + size)
        start += size
    return slices


def diversity(weights, dim: int) -> dict[str, float]:
    """The Kozachenko-Leonenko entropy estimate (``dim``: the noise size, the manifold's
    dimension), the mean pairwise distance of flat (gauge-fixed) weights ``[N, W]`` and the
    ceiling of that distance for rows of their norms (:func:`populations.distance_ceiling`)."""
    return {
        "entropy": populations.kl_entropy(weights, dim),
        "mean_pairwise_distance": populations.mean_pairwise_distance(weights),
        "distance_ceiling": populations.distance_ceiling(weights),
    }


def analyze(
    workdir: str | Path,
    *,
    baseline: str | Path | None = None,
    networks: int = 1000,
    sizes: tuple[int, ...] = (1, 5, 10, 50, 100),
    test_images: int | None = None,
    fgsm_images: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Measures a run's population (see the module docstring) and writes the report.

    Args:
        workdir: The run to measure.
        baseline: A second run (e.g. ``mode=ensemble``) measured alongside it.
        networks: How many networks a generative kind samples.
        sizes: Ensemble sizes; those above the population's size are left out.
        test_images: Use the first ``test_images`` test images (all when None).
        fgsm_images: Test images attacked with FGSM.
        seed: Seed of the sampled noise, ensembles and attack targets.

    Returns:
        The report (also ``workdir/analysis/report.json``).
    """
    out = Path(workdir) / "analysis"
    exp, setup, dataset, state, weights, apply_fn, like = population(workdir, networks, seed)
    x, y = _test_data(setup, dataset, test_images)
    preds = populations.predictions(apply_fn, weights, x)
    acc = (preds == y[None]).mean(axis=1)
    report: dict[str, Any] = {"mode": exp.mode, "networks": len(weights)}
    report["accuracy"] = {"mean": float(acc.mean()), "std": float(acc.std()), "all": acc.tolist()}
    dim = exp.hypernet.noise_size
    curves = {}
    usable = tuple(s for s in sizes if s <= len(weights))
    if usable:
        curves[exp.mode] = populations.majority_vote_accuracy(preds, y, usable, seed=seed)
        report["ensembles"] = {str(k): list(v) for k, v in curves[exp.mode].items()}
    if len(weights) > 1:
        report["diversity"] = diversity(weights, dim)
        report["pca"] = {
            k: v.tolist()
            for k, v in populations.pca_2d(weights, slices=_layer_slices(like)).items()
        }
        figures.pca_scatter({k: np.asarray(v) for k, v in report["pca"].items()}, out / "pca.png")
    reference = None
    if baseline is not None:
        _, _, _, _, b_weights, b_apply, _ = population(baseline, networks, seed)
        b_preds = populations.predictions(b_apply, b_weights, x)
        b_acc = (b_preds == y[None]).mean(axis=1)
        reference = float(b_acc.mean())
        report["baseline"] = {"workdir": str(baseline), "accuracy_mean": reference}
        b_sizes = tuple(s for s in sizes if s <= len(b_weights))
        curves["baseline"] = populations.majority_vote_accuracy(b_preds, y, b_sizes, seed=seed)
        report["baseline"]["ensembles"] = {str(k): list(v) for k, v in curves["baseline"].items()}
        if len(weights) > 1:
            target = min(float(acc.mean()), float(b_acc[0]) - 1e-3)
            _, ball = populations.isotropic_baseline(
                b_apply,
                b_weights[0],
                x,
                y,
                target,
                n=min(len(weights), 100),
                key=jax.random.key(seed),
            )
            report["isotropic_baseline"] = diversity(ball, dim)
    figures.accuracy_histogram(acc, out / "accuracy_histogram.png", reference=reference)
    if curves:
        figures.ensemble_curve(curves, out / "ensembles.png")
    report |= _generative_parts(setup, state, weights, apply_fn, x, y, dim, seed, out)
    report |= _robustness(setup, weights, apply_fn, x, y, fgsm_images, seed, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _generative_parts(setup, state, weights, apply_fn, x, y, dim, seed, out) -> dict:
    """Interpolation paths between two noise vectors (generative kinds only)."""
    if setup.kind.name != "diverse":
        return {}
    from uhn_jax.hypernets import diverse_kind

    def generate_fn(z):
        return diverse_kind.sample(setup, state["params"], state["constants"], z)

    z1, z2 = diverse_kind.noise(jax.random.key(seed + 1), 2, dim)
    paths = populations.interpolation_paths(generate_fn, apply_fn, z1, z2, x, y)
    figures.path_plot(paths, out / "paths.png")
    return {"paths": {k: np.asarray(v).tolist() for k, v in paths.items()}}


def _robustness(setup, weights, apply_fn, x, y, fgsm_images, seed, out) -> dict:
    """FGSM against one network and a 10-network ensemble; calibration of both."""
    if len(weights) < 2:
        return {}
    k = min(10, len(weights))
    _, std = setup.input_norm if setup.input_norm is not None else (0.0, 1.0)
    pixel_range = float(1.0 / np.mean(std))
    eps = np.round(np.linspace(0.0, 0.3, 16), 3)
    attack = robustness.fgsm_success(
        apply_fn,
        weights[0],
        weights[1 : k + 1],
        x[:fgsm_images],
        y[:fgsm_images],
        eps,
        key=jax.random.key(seed + 2),
        pixel_range=pixel_range,
    )
    figures.fgsm_plot(attack, out / "fgsm.png")
    single = robustness.ensemble_probs(apply_fn, weights[:1], x)
    ensemble = robustness.ensemble_probs(apply_fn, weights[:k], x)
    calib = {
        "single": _scalars(robustness.calibration(single, y)),
        f"ensemble_{k}": _scalars(robustness.calibration(ensemble, y)),
    }
    fgsm = {key: np.asarray(v).tolist() for key, v in attack.items()}
    return {"fgsm": fgsm, "calibration": calib}


def _scalars(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if np.ndim(v) == 0}
