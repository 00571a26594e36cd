"""Weight-space learning: populations of trained networks as data.

* :mod:`uhn_jax.weightspace.zoo`: a model zoo on disk (weights + metadata per network and
  snapshot), its writer and its checked reader (``zoo.load(path)``); the zoo is built by
  :mod:`uhn_jax.training.zoo` (``uhn-jax zoo``).
"""

from uhn_jax.weightspace import zoo

__all__ = ["zoo"]
