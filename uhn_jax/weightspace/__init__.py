"""Weight-space learning: populations of trained networks as data.

* :mod:`uhn_jax.weightspace.zoo`: a model zoo on disk (weights + metadata per network and
  snapshot), its writer and its checked reader (``zoo.load(path)``); the zoo is built by
  :mod:`uhn_jax.training.zoo` (``uhn-jax zoo``).
* :mod:`uhn_jax.weightspace.chunking`: a network's params as pad-chunked tokens, exactly
  invariant to permutations of its hidden units (canonical column and unit order).
* :mod:`uhn_jax.weightspace.sne`: SNE, the set-based encoder (ISAB per layer, PMA, attention
  over layers) that predicts a network's test accuracy from its tokens.
* :mod:`uhn_jax.weightspace.statistics`: the baselines' inputs: weight statistics in fixed
  slots (Unterthiner et al. 2020) and flattened weights; the MLP and boosted trees on them.
* :mod:`uhn_jax.weightspace.splits`: train / validation / test splits of a zoo's records by
  network (same zoo, cross dataset, cross architecture). The experiment that trains all of
  them is :mod:`uhn_jax.training.sne` (``uhn-jax sne``, docs/sne.md).
* :mod:`uhn_jax.weightspace.vqvae`, :mod:`uhn_jax.weightspace.conditioning`,
  :mod:`uhn_jax.weightspace.prior`: IGPG's VQ-VAE over weight chunks, what its prior is
  conditioned on (dataset images, task, architecture) and the autoregressive prior; the
  experiment is :mod:`uhn_jax.training.igpg` (``uhn-jax igpg``, docs/igpg.md).
* :mod:`uhn_jax.weightspace.morph`: function-preserving growth of an MLP's depth (zero
  residual blocks), IGPG's fallback for a held-out depth.
"""

from uhn_jax.weightspace import zoo

__all__ = ["zoo"]
