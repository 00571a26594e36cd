"""Thin orbax helpers: resumable train-state checkpoints and plain exported params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str | Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager over ``directory`` (created if missing); saves are explicit."""
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves ``state`` as step ``step`` (a no-op if that step is already saved)."""
    if mngr.latest_step() == step:
        return
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, int | None]:
    """Restores the latest checkpoint into ``target``'s structure; ``(target, None)`` if none."""
    step = mngr.latest_step()
    if step is None:
        return target, None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), step


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
