"""The one resumable training loop every run uses (single runs, model sets, multi-task).

It owns what is not the step itself: restoring the latest checkpoint, dispatching step t
before reading step t-1's metrics (host reads only every ``log_every`` steps), the progress
bar, ``metrics.jsonl`` and TensorBoard scalars, checksummed checkpoints every
``checkpoint_every`` steps, a checkpoint of the last completed step on Ctrl-C
(:class:`Interrupted`), and a stop with :class:`NonFiniteLossError` on a NaN/Inf loss or
parameter that names the last checkpoint whose loss was finite.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from uhn_jax.training import checkpoint
from uhn_jax.training import workdir as workdir_lib

#: ``step_fn(step, state) -> (state, device metrics, host labels such as {"stage": "task"})``.
StepFn = Callable[[int, dict], tuple[dict, dict, dict]]
#: ``after_step(done, state) -> values to log at step done, or None`` (evaluation, reports).
AfterStep = Callable[[int, dict], dict | None]


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or Inf at :attr:`step`; the checkpoints saved
    before (each with a finite loss) are kept."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the loop; the message says which step was saved."""


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
            kept = [line for line, v in self._lines() if v.get("step", 0) <= resume_step]
            # Atomic: a kill while rewriting must not lose the lines before the checkpoint.
            workdir_lib.write_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def _lines(self) -> list[tuple[str, dict[str, Any]]]:
        """The logged lines and their values; a damaged line (e.g. one cut short) is dropped
        with a warning naming it."""
        lines = []
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                lines.append((line, value))
            elif line.strip():
                print(f"[uhn_jax] warning: {self.path} line {i} is damaged; dropped: {line[:80]!r}")
        return lines

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


def _loss(metrics: dict):
    """The loss of a step's metrics (``init_loss`` in the initialisation stage)."""
    return metrics.get("loss", metrics.get("init_loss"))


def checkpoint_save(mngr, step: int, state: dict, metrics: dict | None = None) -> None:
    """Saves ``state`` as step ``step``, unless its params or the loss of ``metrics`` (the
    step's) are non-finite: then :class:`NonFiniteLossError`, and every saved checkpoint is
    one whose loss was finite."""
    loss = None if metrics is None or _loss(metrics) is None else float(_loss(metrics))
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss} at step {step}", step)
    if not checkpoint.all_finite(state["params"]):
        raise NonFiniteLossError(f"parameters became NaN/Inf by step {step}", step)
    checkpoint.save(mngr, step, state)


class _DeferredInterrupt:
    """While the loop runs, Ctrl-C (SIGINT) only sets :attr:`requested`; the loop stops at the
    next step boundary, so the state it saves is a completed step's, never one whose buffers
    a running step was given (donated). A second Ctrl-C interrupts at once.

    Only in the main thread, and only over Python's default handler (a handler of the
    caller's stays in charge).
    """

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self) -> _DeferredInterrupt:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _refuse_lost_checkpoints(workdir: Path) -> None:
    """Raises when ``checkpoints/`` is gone but ``metrics.jsonl`` logs steps: the manager
    creates ``checkpoints/`` before anything is logged, so the checkpoints were deleted or
    moved, and starting over at step 0 would silently drop the logged history."""
    metrics = workdir / "metrics.jsonl"
    if (workdir / "checkpoints").exists() or not metrics.exists():
        return
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    if not lines:
        return
    steps = []
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a kill
            pass
    raise workdir_lib.WorkdirError(
        f"{workdir / 'checkpoints'} is missing, but {metrics} logs steps up to "
        f"{max(steps, default='?')}: the run's checkpoints were deleted or moved. Put them "
        "back to resume, or delete the workdir (or metrics.jsonl) to start over at step 0."
    )


class Loop:
    """A resumable loop over ``total`` steps in ``workdir``.

    Construction restores the newest undamaged checkpoint into ``init_state``'s structure
    (:attr:`state`, :attr:`start`; damaged newer ones are named and set aside, see
    :func:`uhn_jax.training.checkpoint.restore_latest`); :meth:`run` then takes the steps.
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
        _refuse_lost_checkpoints(self.workdir)
        self.mngr = checkpoint.manager(self.workdir / "checkpoints")
        self.state, restored = checkpoint.restore_latest(
            self.mngr, init_state, set_aside_damaged=True
        )
        self.start = restored or 0
        if restored is not None:
            print(f"[uhn_jax] resuming {self.workdir} from step {self.start}")

    def run(
        self, step_fn: StepFn, *, stop_after: int | None = None, after_step: AfterStep | None = None
    ) -> tuple[dict, bool]:
        """Takes steps ``start .. min(total, stop_after)``; returns ``(state, finished)``.

        Raises:
          Interrupted: on Ctrl-C, after saving the last completed step.
          NonFiniteLossError: on a NaN/Inf loss or parameter, naming the checkpoint kept.
        """
        end = self.total if stop_after is None else min(self.total, stop_after)
        log = MetricsLog(self.workdir, self.start)
        bar = progress_bar(self.total, self.start, self.progress, self.desc)
        self._pending, self._last = None, (time.time(), self.start)
        state = self.state
        try:
            with _DeferredInterrupt() as interrupt:
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
                        checkpoint_save(self.mngr, done, state, metrics)
                    bar.update(1)
                    self.mngr.sign_finished()
                    if interrupt.requested:
                        break
                self._flush(log, bar)
                if interrupt.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise self._save_interrupted(state) from None
        except NonFiniteLossError as e:
            raise self._non_finite(e) from None
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
        loss = _loss(values)
        if not math.isfinite(loss):
            where = " ".join(f"{k} {v}" for k, v in labels.items())
            raise NonFiniteLossError(f"loss is {loss} at step {step} ({where})", step)
        now = time.time()
        values["steps_per_s"] = (step - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, step)
        log.write(step, {**values, **labels})
        shown = {**labels, "loss": f"{loss:.4f}", "it/s": f"{values['steps_per_s']:.1f}"}
        bar.set_postfix(shown)

    def _non_finite(self, e: NonFiniteLossError) -> NonFiniteLossError:
        """The error to stop with: names the checkpoint a rerun resumes from (the last one
        whose loss was finite) and records the stop, so the rerun may lower the rate."""
        self.mngr.wait_until_finished()
        kept = self.mngr.latest_step()
        where = f"step {kept}" if kept is not None else "step 0 (no checkpoint was saved before)"
        message = (
            f"{e.args[0]}. The last checkpoint whose loss was finite is {where}; a rerun "
            "resumes from it. Lower train.lr or set train.grad_clip for the rerun: after this "
            f"stop the workdir accepts new {', '.join(workdir_lib.RECOVERY_FIELDS)} and "
            f"records them in {workdir_lib.CHANGES_FILE}."
        )
        workdir_lib.record_non_finite(self.workdir, e.step, kept, message)
        return NonFiniteLossError(message, e.step)

    def _save_interrupted(self, state: dict) -> Interrupted:
        """Saves the last completed step (the loop stops between steps on Ctrl-C); the
        exception to stop with says where a rerun resumes."""
        try:
            step = int(state["step"])
            checkpoint_save(self.mngr, step, state)
            self.mngr.wait_until_finished()
            return Interrupted(
                f"[uhn_jax] interrupted: step {step} saved in {self.mngr.directory}; rerun "
                "the same command to resume"
            )
        except (RuntimeError, ValueError, NonFiniteLossError):
            # A second Ctrl-C inside a step whose input buffers were donated: the previous
            # checkpoint is the resume point.
            self.mngr.wait_until_finished()
            return Interrupted(
                f"[uhn_jax] interrupted inside a step; a rerun resumes from step "
                f"{self.mngr.latest_step() or 0}"
            )
