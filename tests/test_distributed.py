"""Tests for multi-process training on JAX's own distributed runtime (``uhn-jax --distributed``).

Two local processes on CPU join one job with ``jax.distributed.initialize`` (coordinator on
127.0.0.1 at a free port, CPU collectives through gloo), each with 2 fake devices, so the mesh
spans 4 devices on 2 processes. They run the CLI command ``docs/performance.md`` shows, wrapped
in a Python audit hook that records every file each process writes in the workdir. Meanwhile
this process (1 process, 1 device) runs the same config uninterrupted as the reference.
"""

import functools
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from conftest import CONFIG_DIR, load_config, subprocess_env

from uhn_jax import config as config_lib
from uhn_jax.training import checkpoint, tasks, train
from uhn_jax.training import setup as setup_lib
from uhn_jax.training import step as step_lib

#: configs/test.py (digits, UHN, 2 init + 4 task steps, a checkpoint every 2) with every step
#: logged, so that metrics.jsonl holds each step's loss.
OVERRIDES = {"train.log_every": 1}
DEVICES_PER_PROCESS = 2

# `uhn-jax train ARGS` behind an audit hook (PEP 578) that records the writes (opens for writing,
# mkdir, rename, remove, ...) of this process's Python code under WORKDIR; at exit they go to LOG
# (JSON) with what the process saw of the job. orbax's array data goes through TensorStore (C++),
# which the hook does not see; the test checks the files outside checkpoints/ on disk too.
_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    workdir, log, args = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
    EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink",
              "os.link", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    writes = []

    def audit(event, a):
        if event == "open":
            mode, flags = a[1], a[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            paths = a[:1] if writing else ()
        else:
            paths = a[:2] if event in EVENTS else ()
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                p = os.path.realpath(os.fsdecode(p))
                if p == workdir or p.startswith(workdir + os.sep):
                    writes.append([event, os.path.relpath(p, workdir)])

    sys.addaudithook(audit)
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from uhn_jax import cli
    try:
        cli.main(["uhn-jax", "train", *args])
    finally:
        seen = {"process_index": jax.process_index(), "process_count": jax.process_count(),
                "device_count": jax.device_count(), "writes": writes,
                "collectives": jax.config.jax_cpu_collectives_implementation}
        with open(log, "w") as f:
            json.dump(seen, f)
    """
)

#: What a failure of the 2-process job most likely means, for the assertion message.
HINT = (
    "the 2-process job failed. It needs JAX's CPU collectives (gloo, "
    "jax_cpu_collectives_implementation='gloo', built into jaxlib) and a free TCP port on "
    "127.0.0.1 for the coordinator; the stderr of each process follows."
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_job(tmp_path, workdir) -> list[tuple[subprocess.Popen, object]]:
    """Starts the 2 processes of ``uhn-jax train --distributed`` on ``workdir``."""
    address = f"127.0.0.1:{_free_port()}"
    env = subprocess_env(
        f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}", JAX_PLATFORMS="cpu"
    )
    overrides = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    procs = []
    for i in range(2):
        args = [
            "--distributed",
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={i}",
            f"--config={CONFIG_DIR / 'test.py'}",
            f"--workdir={workdir}",
            "--noprogress",
            *overrides,
        ]
        log = tmp_path / f"process{i}.json"
        out = (tmp_path / f"process{i}.out").open("w")
        cmd = [sys.executable, "-c", _DRIVER, str(workdir), str(log), *args]
        procs.append((subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    return procs


def _wait(tmp_path, procs, timeout: float = 600) -> list[dict]:
    """Waits for the job; what each process saw and wrote (:data:`_DRIVER`). A process that
    fails stops the job (its peer would otherwise wait for it in a collective)."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p, _ in procs):
                break
            time.sleep(0.2)
    finally:
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
    codes = [p.returncode for p, _ in procs]
    outputs = "\n".join(
        f"--- process {i} (exit {p.returncode}):\n"
        + (tmp_path / f"process{i}.out").read_text()[-3000:]
        for i, (p, _) in enumerate(procs)
    )
    assert codes == [0, 0], f"{HINT}\n{outputs}"
    return [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]


def _experiment() -> config_lib.Experiment:
    cfg = load_config("test")
    for dotted, value in OVERRIDES.items():
        group, field = dotted.split(".")
        cfg[group][field] = value
    return config_lib.from_config_dict(cfg)


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r.get("loss", r.get("init_loss")) for r in rows if "stage" in r}


def _restorer(exp):
    """``restore(workdir) -> (state, step)``: a workdir's latest checkpoint, restored into this
    process's shardings (one device) whatever the mesh that saved it."""
    setup, _ = setup_lib.make_setup(exp, tasks.load_dataset(exp))
    key = jax.random.key_data(jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        jax.eval_shape(functools.partial(step_lib.init_state, setup), key),
    )
    return lambda workdir: checkpoint.restore_latest(
        checkpoint.manager(workdir / "checkpoints"), target
    )


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


#: The results that must not depend on how the run was split.
RESULT_KEYS = ("test_metric", "train_metric", "test_loss")


@pytest.mark.slow
def test_two_process_job_matches_one_process_writes_once_and_resumes_on_one(tmp_path, capsys):
    exp = _experiment()
    procs = _start_job(tmp_path, tmp_path / "two")
    try:  # the 1-process reference runs while the job does
        reference = train.run(exp, tmp_path / "one", progress=False)
    finally:
        seen = _wait(tmp_path, procs)
    assert [s["process_index"] for s in seen] == [0, 1]
    assert {(s["process_count"], s["device_count"], s["collectives"]) for s in seen} == {
        (2, 2 * DEVICES_PER_PROCESS, "gloo")
    }
    assert jax.device_count() < 2 * DEVICES_PER_PROCESS, "run pytest with fewer fake devices"
    restore = _restorer(exp)
    _check_same_training(tmp_path / "two", tmp_path / "one", reference, restore)
    _check_only_process_0_writes(tmp_path / "two", *seen)
    _check_resume_on_one_process(exp, tmp_path, reference, restore, capsys)


def _check_same_training(two, one, reference, restore):
    # (a) The 4-device step splits the batch and the descriptor rows over 2 processes and sums
    # the gradients with a cross-process all-reduce: float32 reduction order only. Measured
    # after the 6 steps: losses to 4e-7 and the test loss to 1.3e-6 (relative), parameters to
    # 2.6e-7 (absolute); a dropped shard or a missed all-reduce moves the loss by percents.
    losses_two, losses_one = _losses(two), _losses(one)
    assert sorted(losses_two) == sorted(losses_one) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses_two[s] for s in range(1, 7)], [losses_one[s] for s in range(1, 7)], rtol=1e-5
    )
    results = json.loads((two / "results.json").read_text())
    for key in RESULT_KEYS:
        assert results[key] == pytest.approx(reference[key], rel=1e-5), key
    (a, step_a), (b, step_b) = restore(two), restore(one)
    assert step_a == step_b == 6
    _assert_same_params(a, b)


def _check_only_process_0_writes(two, seen0, seen1):
    # (b) Process 1 wrote none of the run's files, only orbax's metadata of its own shards
    # (array_metadatas/process_1 in each checkpoint); every file outside checkpoints/ was
    # written by process 0, once. Process 0's writes show that the (same) hook sees them.
    written0 = {path for _, path in seen0["writes"]}
    written1 = sorted({path for _, path in seen1["writes"]})
    assert all(p.startswith("checkpoints/") and "process_1" in p for p in written1), written1
    assert {"config.json", "metrics.jsonl", "init_fit.json", "results.json"} <= written0
    assert {"checkpoints/4/sha256.json", "checkpoints/6/sha256.json"} <= written0
    on_disk = {
        str(p.relative_to(two))
        for p in two.rglob("*")
        if p.is_file() and p.relative_to(two).parts[0] != "checkpoints"
    }
    assert on_disk <= written0, on_disk - written0
    assert len(list((two / "tensorboard").iterdir())) == 1
    # One writer of metrics.jsonl: each step's training metrics once.
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "stage" in r] == list(range(1, 7))


def _check_resume_on_one_process(exp, tmp_path, reference, restore, capsys):
    # (c) The workdir a 2-process run killed after its step-4 checkpoint leaves (no step 6, no
    # results), resumed here by 1 process on 1 device: orbax reads the checkpoint saved from
    # 4 devices on 2 processes into this process's shardings, and the run ends where the
    # uninterrupted ones did (measured: parameters to 2.6e-7, the test loss to 2e-7).
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    (resumed / "results.json").unlink()
    capsys.readouterr()
    out = train.run(exp, resumed, progress=False)
    assert f"resuming {resumed} from step 4" in capsys.readouterr().out
    for key in RESULT_KEYS:
        assert out[key] == pytest.approx(reference[key], rel=1e-5), key
    losses, losses_one = _losses(resumed), _losses(tmp_path / "one")
    np.testing.assert_allclose([losses[5], losses[6]], [losses_one[5], losses_one[6]], rtol=1e-5)
    (state, step), (uninterrupted, _) = restore(resumed), restore(tmp_path / "one")
    assert step == 6
    _assert_same_params(state, uninterrupted)
