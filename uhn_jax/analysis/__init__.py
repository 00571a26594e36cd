"""Evaluation of a population of networks (Deutsch et al. 2018, *Generating neural networks
with neural networks*): accuracy, ensembles, diversity, paths, robustness, figures.

Everything works on a small functional interface, so any population can be measured (the
generated networks, a deep ensemble, an isotropic noise ball):

* ``weights``: ``[N, W]`` floats, one flat weight vector per network;
* ``apply_fn(w [W], x [B, ...]) -> logits [B, C]``: runs one network (pure JAX, jit/vmap-safe);
* ``generate_fn(z [n, d]) -> weights [n, W]``: the generator, for paths between noise vectors;
* data ``x [B, ...]`` and integer labels ``y [B]`` (NumPy or JAX arrays).

Modules: :mod:`~uhn_jax.analysis.populations` (accuracy, ensembles, distances, entropy, the
isotropic baseline, PCA, interpolation paths), :mod:`~uhn_jax.analysis.robustness` (FGSM,
calibration) and :mod:`~uhn_jax.analysis.figures` (PNG figures; matplotlib is imported only
when one is drawn). See ``docs/analysis.md``. :mod:`~uhn_jax.analysis.run_figures` draws the
figures of single runs that :mod:`uhn_jax.plots` re-exports (weights, initialisation fit,
parameter ratio).
"""

from uhn_jax.analysis import figures
from uhn_jax.analysis.populations import (
    accuracies,
    distance_ceiling,
    interpolation_paths,
    isotropic_baseline,
    kl_entropy,
    majority_vote,
    majority_vote_accuracy,
    mean_pairwise_distance,
    nearest_neighbour_distances,
    pairwise_distances,
    pca_2d,
    predictions,
    principal_components,
)
from uhn_jax.analysis.robustness import calibration, ensemble_probs, fgsm_success

__all__ = [
    "accuracies",
    "calibration",
    "distance_ceiling",
    "ensemble_probs",
    "fgsm_success",
    "figures",
    "interpolation_paths",
    "isotropic_baseline",
    "kl_entropy",
    "majority_vote",
    "majority_vote_accuracy",
    "mean_pairwise_distance",
    "nearest_neighbour_distances",
    "pairwise_distances",
    "pca_2d",
    "predictions",
    "principal_components",
]
