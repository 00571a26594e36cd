"""A model zoo on disk: trained networks' weights with their metadata, in a format that plain
orbax + json open without this project, and the reader (:func:`load`) that checks it.

A zoo directory::

    zoo.json                     manifest: format, version, the config, the plan (every group)
                                 and the complete groups, each with its files' sizes and the
                                 sha256 of its own manifest
    groups/<group>/weights/      orbax checkpoint (StandardCheckpointer) of
                                 {"params": the base model's params pytree, every leaf of shape
                                 (members, snapshots, *leaf shape), "train_accuracy",
                                 "train_loss", "test_accuracy", "test_loss": (members, snapshots)}
    groups/<group>/records.json  {"group", "model", "data", "records": one per (member, snapshot)}
    groups/<group>/sha256.json   sha256 of each of the group's files
    runs/<group>/                a group's training run while it trains (removed once stored)

A group is written in ``staging/`` and renamed into ``groups/``; only then does ``zoo.json``
list it as complete, so a zoo killed at any point never lists a group it does not hold whole.
:func:`load` refuses a zoo whose planned groups are not all complete (naming them) unless
``allow_partial=True``, a group file that is missing, truncated or changed, and a file or group
directory that is not the zoo's, each named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uhn_jax import config as config_lib
from uhn_jax import models
from uhn_jax.core import layouts
from uhn_jax.training import checkpoint

FORMAT = "uhn_jax.zoo"
VERSION = 1
ZOO_FILE = "zoo.json"
GROUPS_DIR = "groups"
STAGING_DIR = "staging"
RUNS_DIR = "runs"
WEIGHTS = "weights"
RECORDS = "records.json"
#: The per-snapshot metrics stored beside the params, each ``(members, snapshots)``.
METRICS = ("train_accuracy", "train_loss", "test_accuracy", "test_loss")


class ZooError(ValueError):
    """A zoo directory that is not a zoo, is damaged, or is incomplete; the message names the
    file or the groups at fault."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)  # a kill leaves the old file or the new one


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The ``zoo.json`` of the zoo at ``path``.

    Raises:
      ZooError: naming ``zoo.json`` when it is missing, not JSON, or not a zoo manifest.
    """
    file = Path(path) / ZOO_FILE
    if not file.is_file():
        raise ZooError(f"{path} is not a model zoo: it has no {ZOO_FILE}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{file} is damaged or foreign (not valid JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZooError(f"{file} is a foreign file, not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ZooError(f"{file} has format version {manifest.get('version')}, not {VERSION}")
    return manifest


def _differing(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(old.keys() | new.keys()):
            out += _differing(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _grows(manifest: dict, config: dict, groups: list[dict], differ: list[str]) -> bool:
    """Whether ``config`` only adds groups to the zoo's populations: the fields that differ are
    population group counts, none smaller, and every planned group is planned unchanged."""
    old = manifest.get("config") or {}
    for field in differ:
        parts = field.split(".")
        if len(parts) != 3 or parts[0] != "populations" or parts[2] != "groups":
            return False
        before, after = (c["populations"][parts[1]]["groups"] for c in (old, config))
        if after < before:
            return False
    planned = {g["name"]: g for g in groups}
    return all(planned.get(g["name"]) == g for g in manifest.get("groups", []))


def open_or_create(path: str | Path, config: dict[str, Any], groups: list[dict]) -> dict:
    """The manifest of the zoo at ``path``, created (empty of complete groups) if absent. A
    config that only adds groups to populations (the groups of a population are drawn
    independently of their count) grows the zoo: its complete groups stay, the new ones are
    planned.

    Raises:
      ZooError: when ``path`` holds a zoo of another config (naming the fields that differ),
        or a damaged or foreign ``zoo.json``.
    """
    path = Path(path)
    if (path / ZOO_FILE).exists():
        manifest = read_manifest(path)
        differ = _differing(manifest.get("config"), config)
        if differ and _grows(manifest, config, groups, differ):
            manifest = {**manifest, "config": config, "groups": groups}
            _write_json(path / ZOO_FILE, manifest)
            return manifest
        if differ:
            raise ZooError(
                f"{path} holds a zoo of another config (fields differ: {', '.join(differ)}). "
                "Use a new --workdir, or delete the old one to start over."
            )
        if manifest.get("groups") != groups:
            raise ZooError(
                f"{path}/{ZOO_FILE} plans other groups than this config does (a library that "
                "draws groups differently?); use a new --workdir to build this zoo"
            )
        return manifest
    path.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "config": config, "groups": groups}
    manifest["complete"] = {}
    _write_json(path / ZOO_FILE, manifest)
    return manifest


def _files(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def write_group(
    path: str | Path, name: str, weights: dict, meta: dict, extra: dict | None = None
) -> dict[str, Any]:
    """Stores group ``name`` (its ``weights`` as numpy arrays, its ``meta`` with the records)
    and lists it as complete in ``zoo.json`` (its entry with ``extra``, e.g. the seconds it
    took); returns its manifest entry."""
    path = Path(path)
    stage = path / STAGING_DIR / name
    shutil.rmtree(stage, ignore_errors=True)  # a write a kill cut short
    stage.mkdir(parents=True)
    checkpoint.save_params(stage / WEIGHTS, weights)
    _write_json(stage / RECORDS, meta)
    checkpoint.write_manifest(stage)
    final = path / GROUPS_DIR / name
    final.parent.mkdir(exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)  # stored before a kill, but not listed
    stage.rename(final)
    files = _files(final)
    entry = {
        "files": files,
        "bytes": sum(files.values()),
        "manifest_sha256": _sha256(final / checkpoint.MANIFEST),
        **(extra or {}),
    }
    manifest = read_manifest(path)
    manifest["complete"][name] = entry
    _write_json(path / ZOO_FILE, manifest)
    return entry


def check_group(path: str | Path, name: str, entry: dict, *, full: bool = False) -> None:
    """Checks group ``name``'s files against its ``zoo.json`` entry: every file present with
    its size, no other file, its manifest unchanged; ``full`` also checks every file's sha256.

    Raises:
      ZooError: naming the file that is missing, truncated or changed, or foreign.
    """
    group = Path(path) / GROUPS_DIR / name
    if not group.is_dir():
        raise ZooError(f"group {name} is listed as complete but {group} is missing")
    found = _files(group)
    for rel, size in sorted(entry["files"].items()):
        if rel not in found:
            raise ZooError(f"{group / rel} is missing (group {name} is damaged)")
        if found[rel] != size:
            raise ZooError(
                f"{group / rel} is truncated or changed: {found[rel]} bytes, the zoo stored "
                f"{size} (group {name})"
            )
    foreign = sorted(set(found) - set(entry["files"]))
    if foreign:
        raise ZooError(f"{group / foreign[0]} is a foreign file: group {name} never held it")
    if _sha256(group / checkpoint.MANIFEST) != entry["manifest_sha256"]:
        raise ZooError(f"{group / checkpoint.MANIFEST} was changed after group {name} was stored")
    problem = checkpoint.verify(group) if full else None
    if problem:
        raise ZooError(f"group {name} in {group} is damaged: {problem}")


def model_of(meta: dict):
    """The base model of a group's (or record's) metadata: ``model`` (the model config) and
    ``data`` (``input_shape``, ``num_classes``, ``dataset_type``)."""
    fields = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in meta["model"].items()
        if k in {f.name for f in dataclasses.fields(config_lib.ModelConfig)}
    }
    data = meta["data"]
    shape = types.SimpleNamespace(
        input_shape=tuple(data["input_shape"]), num_classes=int(data["num_classes"])
    )
    return models.registry.build(config_lib.ModelConfig(**fields), shape, data["dataset_type"])


def layout_of(meta: dict) -> layouts.Layout:
    """The layout (flat order) of the params of a group's (or record's) model."""
    model = model_of(meta)
    return layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """One stored group: ``meta`` (``records.json``) and ``weights`` (numpy; params leaves
    ``(members, snapshots, *shape)``)."""

    name: str
    meta: dict
    weights: dict

    def params(self, member: int, snapshot: int) -> Any:
        """The params pytree of one network at one snapshot."""
        return jax.tree.map(lambda a: a[member, snapshot], self.weights["params"])

    def flat(self) -> tuple[np.ndarray, layouts.Layout]:
        """``(w[members, snapshots, N], layout)``: every network's params in the layout's
        flat order (:func:`uhn_jax.core.layouts.flatten`)."""
        layout = layout_of(self.meta)
        leaves = jax.tree_util.tree_leaves(self.weights["params"])
        m, s = leaves[0].shape[:2]
        flat = np.concatenate([np.asarray(x, np.float32).reshape(m, s, -1) for x in leaves], -1)
        return flat, layout


def open_group(path: str | Path, name: str, *, verify: bool = True) -> Group:
    """Reads group ``name`` of the zoo at ``path`` (checking every file's sha256 unless not
    ``verify``)."""
    manifest = read_manifest(path)
    entry = manifest["complete"].get(name)
    if entry is None:
        raise ZooError(f"group {name!r} is not a complete group of the zoo at {path}")
    check_group(path, name, entry, full=verify)
    group = Path(path) / GROUPS_DIR / name
    weights = jax.tree.map(np.asarray, checkpoint.load_params(group / WEIGHTS))
    return Group(name, json.loads((group / RECORDS).read_text()), weights)


class Zoo:
    """A checked zoo (:func:`load`): every complete group's ``records`` (one dict per network
    and snapshot, in plan order), the ``missing`` groups of a partial zoo, and the weights on
    demand (:meth:`group`, :meth:`params`, :meth:`flat`)."""

    def __init__(self, path: Path, manifest: dict, records: list[dict], missing: list[str]):
        self.path, self.manifest, self.records, self.missing = path, manifest, records, missing
        self.groups = [g["name"] for g in manifest["groups"] if g["name"] in manifest["complete"]]
        self._open: Group | None = None

    @property
    def complete(self) -> bool:
        return not self.missing

    def group(self, name: str, *, verify: bool = True) -> Group:
        """The stored group ``name`` (the last one opened is kept)."""
        if self._open is None or self._open.name != name:
            self._open = open_group(self.path, name, verify=verify)
        return self._open

    def params(self, record: dict) -> Any:
        """The params pytree of a record's network at its snapshot."""
        return self.group(record["group"]).params(record["member"], record["snapshot"])

    def model(self, record: dict):
        """The base model of a record (rebuilt from its metadata)."""
        return model_of(record)

    def flat(self, records: list[dict]) -> tuple[np.ndarray, layouts.Layout]:
        """``(w[len(records), N], layout)`` of records of one architecture.

        Raises:
          ValueError: when the records' models differ in layout.
        """
        layout, rows = None, []
        for r in records:
            w, lay = self.group(r["group"]).flat()
            if layout is not None and lay != layout:
                raise ValueError(
                    f"record {r['id']} has another architecture than the first record's; "
                    "select records of one architecture (same 'family' and 'model')"
                )
            layout = lay
            rows.append(w[r["member"], r["snapshot"]])
        return np.stack(rows), layout


def load(path: str | Path, *, allow_partial: bool = False) -> Zoo:
    """Opens the zoo at ``path``: reads ``zoo.json`` and every complete group's records,
    checking the groups' files (sizes, the manifests' sha256; each file's sha256 is checked
    when its group's weights are read).

    Raises:
      ZooError: when a planned group is not complete (naming them; unless ``allow_partial``),
        when a group's file is missing, truncated, changed or foreign, or when ``groups/``
        holds a directory the zoo never planned.
    """
    path = Path(path)
    manifest = read_manifest(path)
    planned = [g["name"] for g in manifest["groups"]]
    groups_dir = path / GROUPS_DIR
    stray = (
        sorted(set(p.name for p in groups_dir.iterdir()) - set(planned))
        if groups_dir.is_dir()
        else []
    )
    if stray:
        raise ZooError(f"{groups_dir / stray[0]} is foreign: the zoo plans no group of that name")
    missing = [n for n in planned if n not in manifest["complete"]]
    if missing and not allow_partial:
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise ZooError(
            f"the zoo at {path} is incomplete: {len(missing)} of {len(planned)} groups are "
            f"missing ({shown}). Rerun the same `uhn-jax zoo` command to finish it, or pass "
            "allow_partial=True to use the complete groups only."
        )
    records = []
    for name in planned:
        if name in manifest["complete"]:
            check_group(path, name, manifest["complete"][name])
            records += _records(groups_dir / name)
    return Zoo(path, manifest, records, missing)


def load_for_config(path: str | Path, allow_partial: bool) -> Zoo:
    """:func:`load` for an experiment config with an ``allow_partial`` field (SNE, IGPG): the
    refusal of a partial zoo names that field and the flag that sets it.

    Raises:
      ValueError: naming ``allow_partial`` for a partial zoo it does not allow; ``ZooError``
        for a damaged one.
    """
    manifest = read_manifest(path)
    missing = [g["name"] for g in manifest["groups"] if g["name"] not in manifest["complete"]]
    if missing and not allow_partial:
        raise ValueError(
            f"allow_partial is False but the zoo at {path} is partial: {len(missing)} of "
            f"{len(manifest['groups'])} groups are not complete (e.g. {missing[0]}). Finish it "
            "with `uhn-jax zoo`, or set --config.allow_partial=True to use its complete groups"
        )
    return load(path, allow_partial=allow_partial)


def _records(group: Path) -> list[dict]:
    """The records of a stored group, whose ``records.json`` must match its sha256."""
    file = group / RECORDS
    expected = json.loads((group / checkpoint.MANIFEST).read_text())["files"].get(RECORDS)
    if _sha256(file) != expected:
        raise ZooError(f"{file} does not match its sha256: it changed after the group was stored")
    return json.loads(file.read_text())["records"]


def disk_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
