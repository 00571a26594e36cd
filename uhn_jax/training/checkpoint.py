"""Thin orbax helpers: resumable, checksummed train-state checkpoints and plain exported params.

Every train-state checkpoint gets a sha256 manifest of its files (:data:`MANIFEST` in the step
directory), written once orbax has finished the (asynchronous) save. On restore the newest
checkpoint whose files match their manifest and that orbax reads back as finite arrays is
used; a damaged one is named in a warning and the previous one is tried (orbax itself
checksums only the OCDBT index, not the array data, so a flipped bit would load silently).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

#: The sha256 manifest inside each step directory: ``{"files": {relative path: sha256}}``.
MANIFEST = "sha256.json"
#: Where damaged checkpoints are moved (next to ``checkpoints/``) when a run resumes past them.
DAMAGED_DIR = "damaged_checkpoints"


class DamagedCheckpointError(ValueError):
    """Checkpoints exist but none of them can be restored."""


#: The :class:`Manager` objects not yet closed (:func:`close_all`).
_OPEN: weakref.WeakSet = weakref.WeakSet()


class Manager(ocp.CheckpointManager):
    """A CheckpointManager that writes the sha256 manifest of each step it saved once the
    step's asynchronous save has finished: the training loop calls :meth:`sign_finished`
    after every step, and orbax calls :meth:`wait_until_finished` before every save."""

    def __init__(self, *args, **kwargs):
        self._unsigned: list[int] = []
        super().__init__(*args, **kwargs)
        _OPEN.add(self)

    def close(self) -> None:
        """Waits for the saves in flight (signing them) and stops orbax's threads."""
        if self in _OPEN:
            _OPEN.discard(self)
            super().close()

    def save(self, step: int, *args, **kwargs) -> bool:
        saved = super().save(step, *args, **kwargs)
        if saved:
            self._unsigned.append(step)
        return saved

    def wait_until_finished(self) -> None:
        super().wait_until_finished()
        self._sign()

    def sign_finished(self) -> None:
        """Writes the manifests of the saves that have finished; cheap enough for every step,
        so a run killed later finds its latest checkpoint signed."""
        if self._unsigned and not self.is_saving_in_progress():
            self._sign()

    def _sign(self) -> None:
        while self._unsigned:
            step_dir = step_path(self, self._unsigned.pop())
            # Process 0 writes, as for orbax's own metadata; a step garbage-collected
            # (max_to_keep) before its manifest was written has nothing left to sign.
            if jax.process_index() == 0 and step_dir.is_dir():
                write_manifest(step_dir)


def manager(directory: str | Path, max_to_keep: int = 2) -> Manager:
    """A checksumming :class:`Manager` over ``directory`` (created if missing); saves are
    explicit."""
    return Manager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def close_all() -> None:
    """Closes every :class:`Manager` still open. The command line calls it before exiting:
    an orbax thread still running at interpreter shutdown prints a traceback."""
    for mngr in list(_OPEN):
        mngr.close()


def step_path(mngr: ocp.CheckpointManager, step: int) -> Path:
    """The directory of checkpoint ``step``."""
    return Path(mngr.directory) / str(step)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: Path) -> None:
    """Writes the sha256 of every file of a finished checkpoint into ``step_dir/MANIFEST``."""
    files = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1) + "\n")
    tmp.replace(step_dir / MANIFEST)  # atomic: a manifest is whole or absent


def verify(step_dir: Path) -> str | None:
    """What is wrong with checkpoint ``step_dir`` according to its manifest, or ``None``.

    A checkpoint without a manifest (written before manifests existed, or a run killed
    between orbax's commit and the manifest) is not checked here; :func:`restore_latest`
    still rejects it if orbax cannot read it or it holds non-finite values.
    """
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        expected = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"its manifest {MANIFEST} is damaged"
    for name, digest in sorted(expected.items()):
        file = step_dir / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != digest:
            return f"{name} does not match its sha256 (the file changed after the save)"
    return None


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves ``state`` as step ``step`` (a no-op if that step is already saved)."""
    if mngr.latest_step() == step:
        return
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"orbax cannot read it ({first[:200]})"


def _try_restore(mngr, step: int, abstract) -> tuple[Any, str | None]:
    """``(state, None)``, or ``(None, what is wrong)`` for a damaged checkpoint ``step``."""
    problem = verify(step_path(mngr, step))
    if problem:
        return None, problem
    try:
        state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax and TensorStore raise bare Exceptions for damaged files
        return None, _root_cause(e)
    # The loop never saves non-finite values, so any here are damage.
    if not all_finite(state):
        return None, "it holds NaN/Inf values"
    return state, None


@jax.jit
def _all_finite(tree) -> jax.Array:
    flags = [
        jnp.isfinite(x).all()
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.stack(flags).all() if flags else jnp.array(True)


def all_finite(tree: Any) -> bool:
    """Whether every floating-point entry of every leaf of ``tree`` is finite: one program
    (compiled once per tree structure and shapes) and one read to the host, where a check
    leaf by leaf runs and compiles two small programs per leaf and reads each result."""
    return bool(_all_finite(tree))


def restore_latest(
    mngr: ocp.CheckpointManager, target: Any, *, set_aside_damaged: bool = False
) -> tuple[Any, int | None]:
    """Restores the newest undamaged checkpoint into ``target``'s structure.

    A damaged checkpoint (see :func:`verify`; unreadable; non-finite) gets a warning naming
    it and its step, and the one before it is tried.

    Args:
      mngr: the run's checkpoint manager.
      target: a state of the checkpoint's structure, shapes and shardings.
      set_aside_damaged: move the damaged checkpoints newer than the restored one to
        ``DAMAGED_DIR`` next to the checkpoint directory (for a run about to continue: it
        saves those steps again).

    Returns:
      ``(state, step)``, or ``(target, None)`` if there is no checkpoint.

    Raises:
      DamagedCheckpointError: if there are checkpoints but every one is damaged.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    damaged = []
    for step in sorted(mngr.all_steps(), reverse=True):
        state, problem = _try_restore(mngr, step, abstract)
        if problem is None:
            if damaged and set_aside_damaged:
                _set_aside(mngr, [s for s, _ in damaged])
            return state, step
        damaged.append((step, problem))
        print(
            f"[uhn_jax] warning: checkpoint {step_path(mngr, step)} (step {step}) is damaged: "
            f"{problem}; trying the previous checkpoint"
        )
    if damaged:
        listed = "; ".join(f"step {s}: {p}" for s, p in damaged)
        raise DamagedCheckpointError(
            f"no checkpoint in {mngr.directory} can be restored ({listed}). Restore them from "
            "a copy, or delete the workdir to start over."
        )
    return target, None


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the manager's directory (kept for inspection)."""
    if jax.process_index() == 0:
        out = Path(mngr.directory).parent / DAMAGED_DIR
        out.mkdir(exist_ok=True)
        for step in steps:
            dest = out / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(str(step_path(mngr, step)), str(dest))
            print(f"[uhn_jax] moved the damaged checkpoint of step {step} to {dest}")
    if jax.process_count() > 1:  # every process sees the move before re-listing the steps
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("uhn_jax: damaged checkpoints set aside")
    mngr.reload()


def save_params(path: str | Path, params: Any) -> Path:
    """Writes a plain params pytree (e.g. generated base-model weights) with orbax."""
    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)
    return path


def load_params(path: str | Path) -> Any:
    """Loads a params pytree written by :func:`save_params`; needs no generator or config."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no exported params at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)
