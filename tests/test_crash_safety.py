"""Crash safety everywhere a run writes (issue 28, item 5): each command family is killed with
SIGKILL at 6 random moments (during start-up, while orbax writes a checkpoint, just after a
checkpoint is committed, during the final evaluation: :data:`KILLS`), each hypernetwork kind
(which runs through ``train``'s code) at 4, and relaunched until it finishes; its results,
metric log and final train state must be bit-identical to an uninterrupted run's.

Cost: every launch is the real ``uhn-jax`` entry point (``uhn_jax.cli.main``) in its own
process, but forked from one driver process that has imported the library (and jax,
scikit-learn, ...) without starting JAX's backend, so a launch costs its tracing and steps,
not 3 s of imports; compiled programs come from a persistent compilation cache shared by the
launches. The driver is this file run as a script (``_drive``).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import fork_cli, preload_cli

ROOT = Path(__file__).resolve().parents[1]
#: The kills of each family of a group (:data:`GROUPS`): the hypernetwork kinds share the
#: ``train`` command's start-up, checkpoint and final-evaluation code, killed 6 times there
#: (each command: one kill in start-up, two inside checkpoint writes, two after commits, one
#: after the final checkpoint; the moments within each are random).
KILLS = {"commands": 6, "kinds": 4}
#: Values that measure the process, not the computation: left out of the comparison
#: (``train_step_compiles`` counts the compiles of the launch that finished the run).
TIMING_KEYS = ("wall_s", "steps_per_s", "train_step_compiles")
TMP_SUFFIX = ".orbax-checkpoint-tmp"

# ----------------------------------------------------------------------------- the configs

_TINY = """
from configs import test


def get_config():
    c = test.get_config()
    c.train.init_steps, c.train.steps = 2, {steps}
    c.train.checkpoint_every, c.train.log_every = 2, 1
    {extra}
    return c
"""

#: Each command family: (command and flags, config file body). Every run has >= 11
#: checkpoints; the (at most) 9 kills before the last let their launches commit about 5 in
#: all (at most one each), so the run is still unfinished for the last kill.
FAMILIES = {
    "train_uhn": (["train"], _TINY.format(steps=20, extra="")),
    "compare": (["compare", "--seeds=1"], _TINY.format(steps=10, extra="")),
    "multitask": (
        ["multitask"],
        """
from configs import multitask


def get_config():
    c = multitask.get_config()
    c.tasks, c.probs = ("test", "{small}"), (1.0, 1.0)
    c.generator.hidden, c.generator.n_freqs = 16, 32
    c.train.init_steps, c.train.steps, c.train.warmup_steps = 2, 20, 0
    c.train.checkpoint_every, c.train.log_every = 2, 1
    return c
""",
    ),
    "model_set": (
        ["train"],
        _TINY.format(
            steps=20,
            extra='c.model.model_set = "{model_set}"\n'
            "    c.generator.structure, c.generator.chunk_size = True, 0",
        ),
    ),
    "conditional": (
        ["train"],
        _TINY.format(steps=22, extra='c.mode, c.hypernet.hidden_sizes = "conditional", (16,)'),
    ),
    "static": (
        ["train"],
        _TINY.format(
            steps=20,
            extra='c.mode, c.model.family, c.model.kernel_size = "static", "ha_cnn", 3\n'
            "    c.model.widths = (16,)",
        ),
    ),
    "diverse": (
        ["train"],
        """
from configs import mnist_diverse


def get_config():
    c = mnist_diverse.get_config("1e-3")
    c.data.name, c.model.widths, c.model.kernel_size = "digits", (4, 4), 3
    c.hypernet.noise_size, c.hypernet.noise_batch, c.hypernet.extractor_sizes = 8, 4, (16,)
    c.hypernet.code_size, c.hypernet.filter_hidden = 3, (8, 8, 8, 8)
    c.hypernet.filter_depth, c.hypernet.reference_batch = 1, 16
    c.train.batch_size, c.train.eval_batch_size = 16, 128
    c.train.steps, c.train.checkpoint_every, c.train.log_every = 22, 2, 1
    return c
""",
    ),
    "ensemble": (
        ["train"],
        _TINY.format(steps=22, extra='c.mode, c.hypernet.ensemble_size = "ensemble", 2'),
    ),
}


def _write_configs(tmp: Path) -> dict[str, list[str]]:
    """Each family's config file in ``tmp``; its argv (without ``--workdir``)."""
    from uhn_jax.training import model_sets

    small = tmp / "small_mlp.py"  # the second task of the multi-task run
    small.write_text(_TINY.format(steps=20, extra="c.model.widths = (8,)"))
    family = model_sets.MLPFamily(min_depth=1, max_depth=2, widths=(8, 16))
    model_set = model_sets.save(model_sets.sample(family, 6, 2, seed=3), tmp / "set.json")
    argvs = {}
    for name, (command, body) in FAMILIES.items():
        path = tmp / f"{name}.py"
        path.write_text(body.replace("{small}", str(small)).replace("{model_set}", str(model_set)))
        argvs[name] = [*command, "--config", str(path), "--noprogress"]
    return argvs


# ----------------------------------------------------------------------------- the driver


def _launch(argv: list[str], log: Path) -> int:
    """Forks a process running ``uhn-jax ARGV``, its output appended to ``log``; the pid."""
    return fork_cli(argv, log, log, append=True)


def _checkpoints(workdir: Path) -> tuple[set[str], set[str]]:
    """The committed and the in-progress (orbax tmp) checkpoint step dirs under ``workdir``
    (its own ``checkpoints/`` and its sub-runs')."""
    done, writing = set(), set()
    for ckpt in (workdir / "checkpoints", *workdir.glob("*/checkpoints")):
        try:
            entries = os.listdir(ckpt)
        except FileNotFoundError:
            continue
        for name in entries:
            full = f"{ckpt.relative_to(workdir)}/{name}"
            if name.isdigit():
                done.add(full)
            elif TMP_SUFFIX in name:
                writing.add(full)
    return done, writing


#: CPU seconds (user + system) of the launches reaped so far.
_CPU = [0.0]


def _wait(pid: int, block: bool = False) -> int | None:
    """The exit status of ``pid`` once it has exited (reaped), else ``None``."""
    got, status, usage = os.wait4(pid, 0 if block else os.WNOHANG)
    if not got:
        return None
    _CPU[0] += usage.ru_utime + usage.ru_stime
    return os.waitstatus_to_exitcode(status)


def _kill_at(pid: int, workdir: Path, how: str, rng: random.Random, final: str) -> dict:
    """Waits for the moment ``how`` of a launch, sends SIGKILL and says where it landed."""
    before, stale = _checkpoints(workdir)
    start = time.monotonic()
    if how == "startup":
        delay = rng.uniform(0.0, 1.0)
        while time.monotonic() - start < delay:
            if (code := _wait(pid)) is not None:
                return {"how": how, "missed": f"the launch exited first (status {code})"}
            time.sleep(0.005)
    else:
        settle, poll, k = rng.uniform(0.0, 0.003), 0.02, rng.choice([1, 2])
        if how == "write 2":
            how, k = "write", 2
        while True:
            done, writing = _checkpoints(workdir)
            new, writing = done - before, writing - stale
            if new or writing:  # the launch saves: from now on watch closely
                poll = 0.0005
            if how == "write" and len(new) == k - 1 and writing:  # the k-th save is written
                how = f"write (save {k})"
                break
            if how == "write" and len(new) >= k:  # its write was shorter than our poll
                how = f"write (save {k} missed; after its commit)"
                break
            if how == "commit" and new:
                time.sleep(settle)
                break
            if how == "final" and final in done:  # the final evaluation runs now
                break
            if (code := _wait(pid)) is not None:
                return {"how": how, "missed": f"the launch exited first (status {code})"}
            time.sleep(poll)
    os.kill(pid, signal.SIGKILL)
    _wait(pid, block=True)
    done, writing = _checkpoints(workdir)
    return {
        "how": how,
        "after_s": round(time.monotonic() - start, 3),
        "committed": sorted(done, key=_step_order),
        "writing": sorted(writing),
        "results": sorted(str(p.relative_to(workdir)) for p in workdir.rglob("results.json")),
    }


def _step_order(path: str) -> tuple[str, int]:
    head, _, step = path.rpartition("/")
    return head, int(step)


def _final_mark(workdir: Path) -> str:
    """The last checkpoint a finished run commits: the newest step of its last results."""
    last = max(workdir.rglob("results.json"), key=lambda p: p.stat().st_mtime_ns).parent
    steps = [int(p.name) for p in (last / "checkpoints").iterdir() if p.name.isdigit()]
    return str((last / "checkpoints" / str(max(steps))).relative_to(workdir))


def _plan(kills: int, rng: random.Random) -> list[str]:
    """The moments of ``kills`` kills: the last after the final checkpoint; of the others, 1
    in 5 during start-up, 2 in 5 (2 at least) in a checkpoint write, the rest just after a
    commit. One write kill waits for a launch's second save: the close watch that the first
    save starts always catches it (a first save may be written between two slow polls)."""
    startup, write = kills // 5, max(2, 2 * kills // 5)
    commit = kills - 1 - startup - write
    plan = ["startup"] * startup + ["write 2"] + ["write"] * (write - 1) + ["commit"] * commit
    rng.shuffle(plan)
    return [*plan, "final"]


def _drive(spec: dict) -> dict:
    """One family: the uninterrupted reference run, then a run killed ``spec["kills"]`` times
    and relaunched until it finishes. Returns what happened (the kill records, exit codes)."""
    argv, ref, run, logs = spec["argv"], Path(spec["ref"]), Path(spec["run"]), Path(spec["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.monotonic(), _CPU[0]
    ref_code = _wait(_launch([*argv, "--workdir", str(ref)], logs / "ref.log"), block=True)
    out = {"ref_code": ref_code, "ref_cpu_s": round(_CPU[0] - cpu0, 1), "kills": []}
    if ref_code != 0:
        return out
    final = _final_mark(ref)
    rng = random.Random(zlib.crc32(spec["name"].encode()))
    for i, how in enumerate(_plan(spec["kills"], rng)):
        pid = _launch([*argv, "--workdir", str(run)], logs / f"kill{i}.log")
        cpu = _CPU[0]
        out["kills"].append(_kill_at(pid, run, how, rng, final))
        out["kills"][-1]["cpu_s"] = round(_CPU[0] - cpu, 2)
    pid = _launch([*argv, "--workdir", str(run)], logs / "last.log")  # runs to the end
    out["final_code"] = _wait(pid, block=True)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["launches_cpu_s"] = round(_CPU[0] - cpu0, 1)
    driver = resource.getrusage(resource.RUSAGE_SELF)
    out["driver_cpu_s"] = round(driver.ru_utime + driver.ru_stime, 1)  # so far
    return out


# ----------------------------------------------------------------------------- the tests


def _scrub(value):
    """``value`` (parsed JSON) without its timing entries."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _outputs(workdir: Path) -> dict[str, object]:
    """Every file a finished run leaves besides checkpoints and TensorBoard events, parsed
    and without timing: ``{path relative to workdir: content}``."""
    out = {}
    for path in sorted(workdir.rglob("*")):
        rel = path.relative_to(workdir)
        if not path.is_file() or {"checkpoints", "tensorboard"} & set(rel.parts):
            continue
        text = path.read_bytes()
        if path.suffix == ".json":
            out[str(rel)] = _scrub(json.loads(text))
        elif path.suffix == ".jsonl":
            out[str(rel)] = [_scrub(json.loads(line)) for line in text.splitlines()]
        elif path.name == "compare.md":  # its last column is the wall time
            out[str(rel)] = [line.rsplit("|", 2)[0] for line in text.decode().splitlines()]
        else:
            out[str(rel)] = text
    return out


def _final_states(workdir: Path) -> dict[str, tuple[int, list]]:
    """Each checkpoint directory's latest step and its arrays, read as saved."""
    import orbax.checkpoint as ocp

    from uhn_jax.training import checkpoint

    out = {}
    for ckpt in sorted(workdir.rglob("checkpoints")):
        mngr = checkpoint.manager(ckpt)
        try:
            step = mngr.latest_step()
            state = mngr.restore(step, args=ocp.args.StandardRestore())
            out[str(ckpt.relative_to(workdir))] = (step, jax.tree.leaves(state))
        finally:
            mngr.close()
    return out


#: The families, in two tests (one driver process each).
GROUPS = {
    "commands": ("train_uhn", "compare", "multitask", "model_set"),
    "kinds": ("conditional", "static", "diverse", "ensemble"),
}


@pytest.mark.slow
@pytest.mark.parametrize("group", list(GROUPS))
def test_kill_9_at_random_moments_resumes_bit_identically(group, tmp_path):
    from conftest import subprocess_env

    argvs = _write_configs(tmp_path)
    specs = [
        {
            "name": f,
            "argv": argvs[f],
            "kills": KILLS[group],
            **{d: str(tmp_path / f / d) for d in ("ref", "run", "logs")},
        }
        for f in GROUPS[group]
    ]
    env = subprocess_env(  # a compilation cache shared by every launch of the group
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(specs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.splitlines()[-1])
    for spec, report in zip(specs, reports, strict=True):
        cost = {k: report.get(k) for k in ("ref_cpu_s", "launches_cpu_s", "wall_s")}
        print(spec["name"], cost, [k["how"] for k in report["kills"]])  # shown with -s
        _check_family(spec["name"], report, tmp_path / spec["name"], spec["kills"])


def _check_family(family: str, report: dict, base: Path, n_kills: int) -> None:
    logs = {p.name: p.read_text() for p in sorted((base / "logs").iterdir())}
    assert report["ref_code"] == 0, (family, logs["ref.log"][-3000:])
    kills, shown = report["kills"], f"{family}: " + json.dumps(report["kills"], indent=1)
    # The kills, each while the run was unfinished, some in the middle of a checkpoint write,
    # the last one after the final checkpoint, before the results were written.
    assert len(kills) == n_kills and not any("missed" in k for k in kills), shown
    assert any(k["how"] in ("write (save 1)", "write (save 2)") and k["writing"] for k in kills), (
        shown
    )
    final, finished = kills[-1], list(base.glob("ref/**/results.json"))
    assert final["how"] == "final" and len(final["results"]) < len(finished), shown
    assert report["final_code"] == 0, (family, logs["last.log"][-3000:])
    assert "resuming" in logs["last.log"], (family, logs["last.log"][-3000:])
    # No launch printed a traceback or found a damaged checkpoint: a kill never leaves one.
    for name, text in logs.items():
        assert "Traceback" not in text and "is damaged" not in text, (family, name, text[-3000:])
    assert not list((base / "run").rglob("damaged_checkpoints")), family
    # Bit-identical to the uninterrupted run: every file it wrote (timings aside) ...
    ref, run = _outputs(base / "ref"), _outputs(base / "run")
    assert sorted(run) == sorted(ref), family
    for name in ref:
        assert run[name] == ref[name], f"{family}: {name} differs from the uninterrupted run's"
    # ... and the final train state (params, optimiser state, step) of every run.
    ref_states, run_states = _final_states(base / "ref"), _final_states(base / "run")
    assert sorted(run_states) == sorted(ref_states) and ref_states, family
    for name, (step, leaves) in ref_states.items():
        run_step, run_leaves = run_states[name]
        assert run_step == step and len(run_leaves) == len(leaves) > 0, (family, name)
        for a, b in zip(leaves, run_leaves, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{family}: {name} step {step}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    preload_cli()  # before any fork

    specs = json.loads(sys.argv[1])
    print(json.dumps([_drive(s) for s in specs]))
