"""The one resumable training loop every run uses (single runs, model sets, multi-task).

It owns what is not the step itself: restoring the latest checkpoint, dispatching step t
before reading step t-1's metrics (host reads only every ``log_every`` steps), the progress
bar, ``metrics.jsonl`` and TensorBoard scalars, checkpoints every ``checkpoint_every`` steps,
a checkpoint on Ctrl-C, and a stop with :class:`NonFiniteLossError` on a NaN/Inf loss or
parameter (the last good checkpoint is kept).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from uhn_jax.training import checkpoint

#: ``step_fn(step, state) -> (state, device metrics, host labels such as {"stage": "task"})``.
StepFn = Callable[[int, dict], tuple[dict, dict, dict]]
#: ``after_step(done, state) -> values to log at step done, or None`` (evaluation, reports).
AfterStep = Callable[[int, dict], dict | None]


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or Inf; the last good checkpoint is kept."""


class MetricsLog:
    """Appends JSON lines (and TensorBoard scalars) to a workdir.

    In a multi-host job only process 0 writes; the others' logs are no-ops.
    """

    def __init__(self, workdir: Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.file = self.tb = None
        if jax.process_index() != 0:
            return
        if self.path.exists():
            # Drop lines a killed run wrote after its last checkpoint; they are recomputed.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        for k, v in values.items():
            if isinstance(v, int | float):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.tb.close()


def progress_bar(total: int, start: int, enabled: bool, desc: str):
    """A tqdm bar over the run's steps (disabled when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        desc=desc,
        mininterval=2.0,
        dynamic_ncols=True,
    )


def checkpoint_save(mngr, step: int, state: dict) -> None:
    """Saves ``state`` unless its params went non-finite (then the last good one is kept)."""
    leaves = jax.tree_util.tree_leaves(state["params"])
    if not all(bool(jnp.isfinite(x).all()) for x in leaves):
        raise NonFiniteLossError(
            f"parameters became NaN/Inf before step {step}; the last good checkpoint "
            f"(step {mngr.latest_step()}) is kept. Lower train.lr or set train.grad_clip."
        )
    checkpoint.save(mngr, step, state)


class Loop:
    """A resumable loop over ``total`` steps in ``workdir``.

    Construction restores the latest checkpoint into ``init_state``'s structure
    (:attr:`state`, :attr:`start`); :meth:`run` then takes the steps.
    """

    def __init__(
        self,
        workdir,
        init_state: dict,
        *,
        total: int,
        log_every: int,
        checkpoint_every: int,
        progress: bool = True,
        desc: str = "",
    ):
        self.workdir = Path(workdir)
        self.total, self.log_every, self.checkpoint_every = total, log_every, checkpoint_every
        self.progress, self.desc = progress, desc
        self.mngr = checkpoint.manager(self.workdir / "checkpoints")
        self.state, restored = checkpoint.restore_latest(self.mngr, init_state)
        self.start = restored or 0
        if restored is not None:
            print(f"[uhn_jax] resuming {self.workdir} from step {self.start}")

    def run(
        self, step_fn: StepFn, *, stop_after: int | None = None, after_step: AfterStep | None = None
    ) -> tuple[dict, bool]:
        """Takes steps ``start .. min(total, stop_after)``; returns ``(state, finished)``."""
        end = self.total if stop_after is None else min(self.total, stop_after)
        log = MetricsLog(self.workdir, self.start)
        bar = progress_bar(self.total, self.start, self.progress, self.desc)
        self._pending, self._last = None, (time.time(), self.start)
        state = self.state
        try:
            for step in range(self.start, end):
                state, metrics, labels = step_fn(step, state)
                self._flush(log, bar)  # step t-1's metrics, read after step t is dispatched
                done = step + 1
                if done % self.log_every == 0 or done == end:
                    self._pending = (done, metrics, labels)
                extra = after_step(done, state) if after_step else None
                if extra:
                    log.write(done, extra)
                if done % self.checkpoint_every == 0 or done == end:
                    self._flush(log, bar)
                    checkpoint_save(self.mngr, done, state)
                bar.update(1)
            self._flush(log, bar)
        except KeyboardInterrupt:
            self._save_interrupted(state)
            raise
        finally:
            bar.close()
            log.close()
        self.mngr.wait_until_finished()
        self.state = state
        return state, end == self.total

    def _flush(self, log: MetricsLog, bar) -> None:
        if self._pending is None:
            return
        step, metrics, labels = self._pending
        self._pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        loss = values.get("loss", values.get("init_loss"))
        if not math.isfinite(loss):
            where = " ".join(f"{k} {v}" for k, v in labels.items())
            raise NonFiniteLossError(
                f"loss is {loss} at step {step} ({where}); the last good checkpoint is kept. "
                "Lower train.lr or set train.grad_clip."
            )
        now = time.time()
        values["steps_per_s"] = (step - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        log.write(step, {**values, **labels})
        shown = {**labels, "loss": f"{loss:.4f}", "it/s": f"{values['steps_per_s']:.1f}"}
        bar.set_postfix(shown)

    def _save_interrupted(self, state: dict) -> None:
        """Keeps everything done so far; rerunning with the same workdir resumes there."""
        try:
            checkpoint_save(self.mngr, int(state["step"]), state)
            self.mngr.wait_until_finished()
        except (RuntimeError, ValueError, NonFiniteLossError):
            # Interrupted inside a step whose input buffers were donated: the previous
            # checkpoint is the resume point.
            print(f"[uhn_jax] interrupted; resume from step {self.mngr.latest_step()}")
