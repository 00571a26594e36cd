"""Function-preserving growth of an MLP's depth: a network of hidden widths ``source`` becomes
one of widths ``target`` that computes the same function, by inserting residual blocks whose
Linear is all zeros.

In :class:`uhn_jax.models.mlp.MLP` a hidden layer ``i > 0`` whose input and output widths
match is ``x + Linear(LN(act(x)))``; with a zero kernel and bias it is ``x``, whatever the
activation. So ``target`` must be ``source`` with extra entries inserted after the first, each
equal to the width before it (:func:`deepen_plan`). Fine-tuning then trains the new blocks
from zero (their kernels get gradients), the zero-init of residual branches.

IGPG uses this as its fallback for a held-out MLP depth (``sample.fallback = "deepen"``): the
prior writes the nearest seen depth, which is then deepened (docs/igpg.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from uhn_jax.models.mlp import MLP


def deepen_plan(source: Sequence[int], target: Sequence[int]) -> tuple[int | None, ...] | None:
    """For each hidden layer of ``target`` and its head, the layer of ``source`` it copies
    (``None``: an inserted zero block), or ``None`` when ``target`` is not ``source`` with
    same-width residual blocks inserted."""
    source, target = tuple(source), tuple(target)
    plan, i = [], 0
    for j, width in enumerate(target):
        if i < len(source) and source[i] == width:
            plan.append(i)
            i += 1
        elif j > 0 and target[j - 1] == width:
            plan.append(None)
        else:
            return None
    if i != len(source):
        return None
    return (*plan, len(source))  # the head reads the same last width


def deepen(params: dict, source: Sequence[int], target: Sequence[int]) -> dict:
    """The params of an MLP of hidden widths ``target`` computing what ``params`` (an MLP of
    hidden widths ``source``) computes.

    Raises:
      ValueError: when ``target`` cannot be grown from ``source`` (:func:`deepen_plan`).
    """
    plan = deepen_plan(source, target)
    if plan is None:
        raise ValueError(
            f"an MLP of widths {tuple(target)} cannot be grown from one of widths "
            f"{tuple(source)}: only same-width residual blocks after the first layer can be "
            "inserted"
        )
    out = {}
    for j, i in enumerate(plan):
        if i is None:
            w = target[j]
            kernel = np.zeros((w, w), np.asarray(params[MLP.name(0)]["kernel"]).dtype)
            out[MLP.name(j)] = {"bias": np.zeros(w, kernel.dtype), "kernel": kernel}
        else:
            out[MLP.name(j)] = {k: np.asarray(v) for k, v in params[MLP.name(i)].items()}
    return out
