"""The core: static layouts, descriptors and their encodings, device meshes.

Nothing here imports training, data or the command line. Importing the package registers the
built-in layer kinds' tensor roles (:mod:`uhn_jax.core.roles`, which builds on
:mod:`uhn_jax.core.descriptors`), so any use of the descriptors finds them.
"""

from uhn_jax.core import roles  # noqa: F401  (registers the built-in layer kinds)
