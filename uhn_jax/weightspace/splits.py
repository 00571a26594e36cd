"""The train / validation / test splits of a zoo's records for predicting accuracy from weights.

A record is one network at one snapshot (:mod:`uhn_jax.weightspace.zoo`); every split here
is by network, so all snapshots of a network fall on one side and a test network was never
seen in training at any snapshot. A task (any object with the fields of
:class:`uhn_jax.training.sne_config.TaskSpec`) is one of

* ``same_zoo``: the networks of ``datasets`` x ``families`` (empty: all) split at random,
  ``test_fraction`` of them tested;
* ``cross_dataset``: train on dataset ``train``'s networks, test on dataset ``test``'s (of
  ``families``, empty: all);
* ``cross_architecture``: train on family ``train``'s networks, test on family ``test``'s, on
  ``datasets`` (empty: the datasets both families have in the zoo);

each restricted to networks of ``widths`` when given. ``val_fraction`` of the training side's
networks are held out for validation. Splits are drawn from the seed and the task's name.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """Indices into the records: ``train``, ``val`` (maybe empty) and ``test``, each sorted."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def sizes(self, records: Sequence[dict]) -> dict[str, int]:
        """Records and networks on each side."""
        out = {}
        for side in ("train", "val", "test"):
            idx = getattr(self, side)
            out[f"{side}_records"] = len(idx)
            out[f"{side}_networks"] = len({records[i]["network"] for i in idx})
        return out


def select(
    records: Sequence[dict],
    *,
    datasets: Sequence[str] = (),
    families: Sequence[str] = (),
    widths: Sequence[int] = (),
) -> list[int]:
    """The indices of the records on ``datasets``, of ``families`` and of ``widths`` (each
    empty: any)."""
    return [
        i
        for i, r in enumerate(records)
        if (not datasets or r["dataset"] in datasets)
        and (not families or r["family"] in families)
        and (not widths or list(r["widths"]) == list(widths))
    ]


def hold_out(
    records: Sequence[dict], idx: Sequence[int], fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """``(kept, held out)``: ``fraction`` of the networks of ``idx`` (at least one when
    ``fraction > 0``, at most all but one) with all their records held out."""
    networks = sorted({records[i]["network"] for i in idx})
    count = 0 if fraction <= 0 else min(max(1, round(fraction * len(networks))), len(networks) - 1)
    out = set(rng.permutation(np.asarray(networks))[:count].tolist())
    kept = [i for i in idx if records[i]["network"] not in out]
    return kept, [i for i in idx if records[i]["network"] in out]


def _check_names(task: Any, field: str, names: Sequence[str], present: set[str], what: str):
    for name in names:
        if name not in present:
            raise ValueError(
                f"tasks.{task.name}.{field}: {what} {name!r} has no network in the zoo (its "
                f"{what}s: {', '.join(sorted(present))})"
            )


def _sides(records: Sequence[dict], task: Any) -> tuple[list[int], list[int] | None]:
    """``(train side, test side)``, or ``(pool, None)`` for a same-zoo task."""
    datasets = {r["dataset"] for r in records}
    families = {r["family"] for r in records}
    widths = task.widths
    if task.kind == "same_zoo":
        _check_names(task, "datasets", task.datasets, datasets, "dataset")
        _check_names(task, "families", task.families, families, "family")
        kw = {"datasets": task.datasets, "families": task.families, "widths": widths}
        return select(records, **kw), None
    if task.kind == "cross_dataset":
        _check_names(task, "families", task.families, families, "family")
        for side in ("train", "test"):
            _check_names(task, side, [getattr(task, side)], datasets, "dataset")
        kw = {"families": task.families, "widths": widths}
        return (
            select(records, datasets=[task.train], **kw),
            select(records, datasets=[task.test], **kw),
        )
    if task.kind != "cross_architecture":
        raise ValueError(f"tasks.{task.name}.kind: unknown kind {task.kind!r}")
    for side in ("train", "test"):
        _check_names(task, side, [getattr(task, side)], families, "family")
    _check_names(task, "datasets", task.datasets, datasets, "dataset")
    shared = task.datasets or sorted(
        {r["dataset"] for r in records if r["family"] == task.train}
        & {r["dataset"] for r in records if r["family"] == task.test}
    )
    if not shared:
        raise ValueError(
            f"tasks.{task.name}: families {task.train!r} and {task.test!r} share no dataset in "
            "the zoo"
        )
    kw = {"datasets": shared, "widths": widths}
    return (
        select(records, families=[task.train], **kw),
        select(records, families=[task.test], **kw),
    )


def _where(task: Any) -> str:
    parts = [f"{task.kind}"]
    for field in ("datasets", "families", "train", "test", "widths"):
        value = getattr(task, field, None)
        if value:
            parts.append(f"{field}={value!r}")
    return ", ".join(parts)


def make_split(records: Sequence[dict], task: Any, seed: int, val_fraction: float) -> Split:
    """The split of ``records`` for ``task`` and ``seed`` (see the module docstring).

    Raises:
      ValueError: naming ``tasks.<name>`` and the field, for a dataset or family the zoo does
        not have, or a side (train, test) with no network.
    """
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    train, test = _sides(records, task)
    for side, idx in (("train", train), ("test", test)):
        if idx is not None and not idx:
            which = "" if test is None else f"the {side} side is empty: "
            raise ValueError(f"tasks.{task.name}: {which}no network of the zoo fits {_where(task)}")
    if test is None:
        networks = len({records[i]["network"] for i in train})
        if networks < 2:
            raise ValueError(
                f"tasks.{task.name}: a same-zoo split needs at least 2 networks, {networks} of "
                f"the zoo fits {_where(task)}"
            )
        train, test = hold_out(records, train, task.test_fraction, rng)
    train, val = hold_out(records, train, val_fraction, rng)
    return Split(tuple(train), tuple(val), tuple(test))
