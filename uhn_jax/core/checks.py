"""Checks of user input: each raises ``ValueError`` (``TypeError`` for a wrong dtype) naming
the field or argument, the value and what is allowed. Shared by the config
(``uhn_jax.config``), the generator, the base models and the datasets."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def choice(name: str, value: Any, allowed: tuple) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ``ValueError`` naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> None:
    """``value`` must be an int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def non_negative_int(name: str, value: Any, hint: str = "") -> None:
    """``value`` must be an int >= 0 (not a bool); ``hint`` is appended to the message."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0{hint}, got {value!r}")


def in_range(name, value, lo, hi, lo_open=False, hi_open=False) -> None:
    """``value`` must lie in ``[lo, hi]`` (``(`` / ``)`` where open)."""
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(
            f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
            f"got {value!r}"
        )


# ----------------------------------------------------------------------------- arrays
# Shape and dtype checks are static and run under tracing too (at trace time only); value
# checks (finiteness, ranges) need values on the host and are skipped inside jit, grad or vmap
# (see concrete), so a compiled training step pays nothing for them.


def concrete(x: Any) -> bool:
    """Whether the values of ``x`` can be read on the host now: not a tracer (inside
    ``jit``/``grad``/``vmap``) and, for a ``jax.Array``, held whole by this process."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def shape(name: str, x: Any, expected: tuple[int | None, ...], dims: str) -> None:
    """``x`` must have ``expected`` shape (``None``: any size), written ``dims`` (``"(N, 10)"``)."""
    given = tuple(np.shape(x))
    if len(given) != len(expected) or any(
        e is not None and g != e for g, e in zip(given, expected, strict=True)
    ):
        raise ValueError(f"{name} must have shape {dims}, got shape {given}")


def real_dtype(name: str, x: Any) -> None:
    """``x`` must hold floats or signed ints: bools and complex numbers are no descriptor
    values, and unsigned ints cannot hold the -1 of unused fields (it wraps to 255)."""
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.signedinteger)):
        hint = " (unsigned ints wrap the -1 of unused fields)" if dtype.kind == "u" else ""
        raise TypeError(f"{name} must be a float or signed int array, got dtype {dtype}{hint}")


def finite(name: str, x: Any) -> None:
    """``x`` must hold no NaN or Inf (checked only when :func:`concrete`)."""
    if not concrete(x):
        return
    values = np.asarray(x)
    if not np.issubdtype(values.dtype, np.floating):
        return
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be finite, but {int(bad.sum())} of its values are NaN or Inf (the "
            f"first, {values[first]}, at index {first})"
        )


def positive_shape(name: str, value: Any) -> None:
    """``value`` must be a non-empty tuple of positive ints (the shape of one example)."""
    ok = isinstance(value, tuple | list) and len(value) > 0
    if not ok or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in value
    ):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")


def batch_shape(name: str, x: Any, input_shape: tuple[int, ...], *also: tuple[int, ...]) -> None:
    """Model inputs ``x`` must be a batch ``(B, *input_shape)``, or ``(B, *a)`` for an ``a`` in
    ``also`` (other accepted forms of one example, e.g. flattened). Static: runs when traced."""
    given = tuple(np.shape(x))
    if len(given) < 1 or given[1:] not in (tuple(input_shape), *map(tuple, also)):
        other = "".join(f" or (B, {', '.join(map(str, a))})" for a in also)
        raise ValueError(
            f"{name} inputs must have shape (B, *input_shape) with input_shape="
            f"{tuple(input_shape)}{other}, got shape {given}"
        )


def same_shapes(name: str, given: Any, expected: Any) -> None:
    """Pytree ``given`` must have ``expected``'s leaf paths and shapes (e.g. the shapes of
    ``jax.eval_shape(module.init, ...)``); raises ValueError naming the first leaf that differs."""
    want = {jax.tree_util.keystr(p): np.shape(v) for p, v in _leaves(expected)}
    have = {jax.tree_util.keystr(p): np.shape(v) for p, v in _leaves(given)}
    for path in sorted(want.keys() | have.keys()):
        if path not in have:
            raise ValueError(f"{name}{path} is missing (expected shape {want[path]})")
        if path not in want:
            raise ValueError(f"{name}{path} (shape {have[path]}) is not a variable of the module")
        if have[path] != want[path]:
            raise ValueError(
                f"{name}{path} has shape {have[path]} but the module expects {want[path]}: "
                "these variables belong to a module of another size"
            )


def _leaves(tree: Any) -> list:
    return jax.tree_util.tree_flatten_with_path(tree)[0]
