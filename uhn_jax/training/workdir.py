"""A run directory's ``config.json``: written by the first run, checked by every resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from uhn_jax import config as config_lib
from uhn_jax import hypernets

#: Config groups that only some hypernetwork kinds read (:attr:`Kind.config_groups`).
KIND_GROUPS = ("generator", "hypernet")


def _fields_read(cfg: dict[str, Any], mode: str) -> dict[str, Any]:
    """The part of a config dict (``Experiment.to_dict`` layout) that a ``mode`` run reads.

    A kind reads only its own groups of :data:`KIND_GROUPS` (a UHN the generator, a classic
    kind the hypernet group, direct training neither). Direct training also never reads the
    initialisation stage or, when ``train.direct_lr`` is set, ``train.lr``; a direct run's
    workdir then accepts other values for them, so a ``compare`` with new UHN settings reuses
    its finished direct runs. ``mode`` is the new run's, so a mode mismatch is reported as
    ``mode`` alone.
    """
    reads = hypernets.get(mode).config_groups
    cfg = {k: v for k, v in cfg.items() if k not in KIND_GROUPS or k in reads}
    if mode != "direct":
        return cfg
    ignored = {"init_steps", "init_lr"} | ({"lr"} if cfg["train"]["direct_lr"] > 0 else set())
    return {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in ignored}}


def check_config(workdir: Path, exp: config_lib.Experiment) -> None:
    """Writes ``exp`` to ``workdir/config.json``, or checks it against the saved one.

    Raises:
      ValueError: naming the fields that differ from the saved run's.
    """
    path = workdir / "config.json"
    current = exp.to_dict()
    if path.exists():
        # A field added to the config after the run started takes its default, so older
        # workdirs stay resumable.
        defaults = flat(json.loads(json.dumps(config_lib.Experiment().to_dict())))
        saved = unflat({**defaults, **flat(json.loads(path.read_text()))})
        saved = _fields_read(saved, exp.mode)
        # JSON turns tuples into lists; compare through one JSON round trip.
        current_json = _fields_read(json.loads(json.dumps(current)), exp.mode)
        if saved != current_json:
            diffs = sorted(flat(saved).items() ^ flat(current_json).items())
            keys = sorted({k for k, _ in diffs})
            raise ValueError(
                f"workdir {workdir} holds a run with a different config (fields differ: "
                f"{', '.join(keys)}). Use a new --workdir, or delete the old one to start over."
            )
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2) + "\n")


def unflat(flat_: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`flat`."""
    out: dict[str, Any] = {}
    for key, value in flat_.items():
        *groups, name = key.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = json.loads(value)
    return out


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"group.field": json value}`` of a nested config dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out
