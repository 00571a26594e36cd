"""Static layouts: a flat weight vector ``w[N]`` <-> a parameter pytree.

A :class:`Layout` records the paths, shapes, dtypes and offsets of every leaf of a params
pytree. It is built from shapes alone (``jax.eval_shape`` output works), is frozen and hashable
(so it can be a static argument of ``jax.jit``), and is never traced.

Ordering: leaves appear in ``jax.tree_util`` flatten order (dict keys sorted, sequences in
order), each leaf raveled in C (row-major) order. This is exactly the order of
``jax.flatten_util.ravel_pytree``, so ``flatten(tree, layout)`` equals ``ravel_pytree(tree)[0]``
whenever all leaves share a dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter tensor inside a layout."""

    path: str  # jax.tree_util.keystr of the leaf, e.g. "['layer_00']['kernel']"
    keys: tuple[str, ...]  # the same path as plain strings, e.g. ("layer_00", "kernel")
    shape: tuple[int, ...]
    dtype: str
    offset: int  # start of this leaf in the flat vector

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Frozen description of a params pytree; see the module docstring for the ordering."""

    leaves: tuple[Leaf, ...]
    treedef: Any  # jax PyTreeDef; hashable

    @property
    def size(self) -> int:
        """Total number of scalars N."""
        return self.leaves[-1].offset + self.leaves[-1].size if self.leaves else 0

    def leaf(self, keys: tuple[str, ...]) -> Leaf:
        """Returns the leaf at ``keys`` (e.g. ``("layer_00", "kernel")``)."""
        for leaf in self.leaves:
            if leaf.keys == tuple(keys):
                return leaf
        known = ", ".join("/".join(lf.keys) for lf in self.leaves)
        raise KeyError(f"no leaf {'/'.join(keys)!r} in layout; leaves are: {known}")


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def from_params(params: Any) -> Layout:
    """Builds the layout of a params pytree.

    Args:
      params: any pytree whose leaves have ``shape`` and ``dtype`` (arrays or
        ``jax.ShapeDtypeStruct``, e.g. the output of ``jax.eval_shape(init, ...)``).

    Returns:
      The frozen, hashable :class:`Layout`.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("cannot build a layout of an empty params pytree")
    leaves, offset = [], 0
    for path, x in flat:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(
                f"leaf {jax.tree_util.keystr(path)} is a {type(x).__name__}, not an array; "
                "layouts need array or ShapeDtypeStruct leaves"
            )
        leaf = Leaf(
            path=jax.tree_util.keystr(path),
            keys=tuple(_key_name(k) for k in path),
            shape=tuple(int(d) for d in x.shape),
            dtype=str(np.dtype(x.dtype)),
            offset=offset,
        )
        leaves.append(leaf)
        offset += leaf.size
    return Layout(leaves=tuple(leaves), treedef=treedef)


def flatten(params: Any, layout: Layout) -> jax.Array:
    """Concatenates the leaves of ``params`` into one float32 vector ``w[N]``.

    Raises:
      ValueError: if ``params`` does not have the layout's structure or shapes.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef != layout.treedef:
        raise ValueError(f"params structure {treedef} does not match layout {layout.treedef}")
    for x, leaf in zip(leaves, layout.leaves, strict=True):
        if tuple(x.shape) != leaf.shape:
            raise ValueError(
                f"leaf {leaf.path} has shape {tuple(x.shape)}, layout says {leaf.shape}"
            )
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


def unflatten(w_N: jax.Array, layout: Layout) -> Any:
    """Splits a flat vector ``w[N]`` back into the params pytree of ``layout``.

    Static slicing only, so it is cheap under ``jax.jit`` and differentiable.

    Raises:
      ValueError: if ``w_N`` is not a vector of length ``layout.size``.
    """
    if w_N.ndim != 1 or w_N.shape[0] != layout.size:
        raise ValueError(f"expected a flat vector of length {layout.size}, got shape {w_N.shape}")
    leaves = [
        w_N[leaf.offset : leaf.offset + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        for leaf in layout.leaves
    ]
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)
