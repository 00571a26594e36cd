"""A run directory's files: ``config.json`` (written once a run passes validation, checked by
every resume), its recorded changes after a NaN/Inf stop, and readable JSON or a clear error."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax

from uhn_jax import config as config_lib
from uhn_jax import hypernets

#: Config groups that only some hypernetwork kinds read (:attr:`Kind.config_groups`).
KIND_GROUPS = ("generator", "hypernet", "adapt")
#: Fields a rerun may change after a NaN/Inf stop: they set the step size and clipping of
#: the steps still to come, not the shape of the train state or which batches come when.
RECOVERY_FIELDS = (
    "train.lr",
    "train.direct_lr",
    "train.init_lr",
    "train.warmup_steps",
    "train.grad_clip",
)
CONFIG_FILE = "config.json"
#: The last NaN/Inf stop of a run (:func:`record_non_finite`).
NON_FINITE_FILE = "non_finite.json"
#: One JSON line per rerun that changed recovery fields (:func:`write_config`).
CHANGES_FILE = "config_changes.jsonl"


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


class WorkdirError(ValueError):
    """A workdir's files do not fit the run asked for, or are damaged."""


def read_json(path: Path, fix: str) -> Any:
    """The JSON content of ``path``.

    Raises:
      WorkdirError: naming ``path`` when it is not valid JSON (e.g. cut short), with ``fix``.
    """
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is damaged (not valid JSON: {e}). {fix}") from None


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file: a kill leaves the old file or
    the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a kill leaves the old file or the new one, never half of one


def _saved_config(workdir: Path, mode: str) -> dict[str, Any]:
    """The fields of ``workdir/config.json`` a ``mode`` run reads, with fields added to the
    config since the run started at their defaults (so older workdirs stay resumable)."""
    path = workdir / CONFIG_FILE
    nested = json.loads(json.dumps(config_lib.Experiment().to_dict()))
    fix = "Restore it from a copy, or use a new --workdir."
    saved = read_json(path, fix)
    groups = [k for k, v in nested.items() if isinstance(v, dict)]
    if not isinstance(saved, dict) or any(not isinstance(saved.get(g, {}), dict) for g in groups):
        raise WorkdirError(
            f"{path} is damaged (not a config: a JSON object with the groups "
            f"{', '.join(groups)} expected, got {json.dumps(saved)[:60]}). {fix}"
        )
    defaults = flat(nested)
    return _fields_read(unflat({**defaults, **flat(saved)}), mode)


def check_config(workdir: Path, exp: config_lib.Experiment) -> dict[str, list[Any]]:
    """Checks ``exp`` against ``workdir/config.json``, if the workdir holds a run.

    Nothing is written (:func:`write_config` does that once the run has passed validation).
    After a NaN/Inf stop (:func:`record_non_finite`) of an unfinished run, the fields of
    :data:`RECOVERY_FIELDS` may differ.

    Returns:
      The recovery fields that differ, ``{field: [saved value, new value]}``.

    Raises:
      WorkdirError: naming the fields that differ from the saved run's, or a damaged file.
    """
    if not (workdir / CONFIG_FILE).exists():
        return {}
    saved = flat(_saved_config(workdir, exp.mode))
    # JSON turns tuples into lists; compare through one JSON round trip.
    current = flat(_fields_read(json.loads(json.dumps(exp.to_dict())), exp.mode))
    keys = sorted({k for k, _ in saved.items() ^ current.items()})
    recovering = (workdir / NON_FINITE_FILE).exists() and not (workdir / "results.json").exists()
    refused = [k for k in keys if not (recovering and k in RECOVERY_FIELDS)]
    if refused:
        hint = ""
        if any(k in RECOVERY_FIELDS for k in refused):
            hint = (
                f" ({', '.join(RECOVERY_FIELDS)} may change only to recover an unfinished run "
                "that stopped on a NaN/Inf loss.)"
            )
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config (fields differ: "
            f"{', '.join(refused)}). Use a new --workdir, or delete the old one to start over."
            + hint
        )
    return {k: [json.loads(saved.get(k, "null")), json.loads(current[k])] for k in keys}


def write_config(workdir: Path, exp: config_lib.Experiment, changes: dict, step: int) -> None:
    """Writes ``exp`` to ``workdir/config.json`` (process 0) if it is new or ``changes``
    (from :func:`check_config`) recovery fields; the changes are appended, with the ``step``
    the run resumes from, to ``workdir/config_changes.jsonl``."""
    path = workdir / CONFIG_FILE
    if jax.process_index() != 0 or (path.exists() and not changes):
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(exp.to_dict(), indent=2) + "\n")
    if changes:
        line = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}
        with (workdir / CHANGES_FILE).open("a") as f:
            f.write(json.dumps(line) + "\n")
        shown = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())
        print(f"[uhn_jax] {workdir}: from step {step} with {shown} (recorded in {CHANGES_FILE})")


def record_non_finite(workdir: Path, step: int, kept_step: int | None, message: str) -> None:
    """Records a NaN/Inf stop at ``step`` in ``workdir/non_finite.json`` (process 0), which
    lets a rerun change :data:`RECOVERY_FIELDS`; ``kept_step`` is the checkpoint it resumes
    from (``None``: step 0)."""
    if jax.process_index() == 0 and workdir.is_dir():
        record = {"step": step, "resume_step": kept_step, "message": message}
        write_atomic(workdir / NON_FINITE_FILE, json.dumps(record, indent=1) + "\n")


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
