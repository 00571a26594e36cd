"""Speed of Deutsch et al.'s noise-input hypernetwork (mode=diverse) on this machine.

Prints networks generated per second (one jitted, vmapped call for a batch of noise vectors,
gauge fixing included) and the seconds per training step of configs/mnist_diverse.py (32
networks x 16 images), on random MNIST-shaped data so no files are needed.

Command: XLA_FLAGS= python benchmarks/diverse_benchmark.py [--batches 100 1000]
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import mnist_diverse  # noqa: E402
from uhn_jax import config as config_lib  # noqa: E402
from uhn_jax.data.images import ArrayDataset  # noqa: E402
from uhn_jax.hypernets import diverse_kind  # noqa: E402
from uhn_jax.training import setup as setup_lib  # noqa: E402
from uhn_jax.training import step as step_lib  # noqa: E402


def _timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    exp = config_lib.from_config_dict(mnist_diverse.get_config())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 5000).astype(np.int32)
    dataset = ArrayDataset("mnist", x, y, x[:1000], y[:1000], 10)
    setup, desc = setup_lib.make_setup(exp, dataset)
    state = step_lib.init_state(setup, jax.random.key_data(jax.random.key(0)))
    for n in args.batches:
        z = diverse_kind.noise(jax.random.key(1), n, exp.hypernet.noise_size)
        s = _timed(
            lambda z=z: diverse_kind.sample(setup, state["params"], state["constants"], z), 3
        )
        print(f"generate {n} networks: {s:.3f} s ({n / s:,.0f} networks/s)", flush=True)
    cond = setup_lib.desc_arrays(setup, desc)
    data = setup_lib.device_data(setup, dataset)[0]
    key = jax.random.key_data(jax.random.key(0))
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step_lib.run_step(
            setup, "task", holder["state"], cond, data, key
        )
        return metrics["loss"]

    s = _timed(one_step, args.steps)
    print(f"training step (32 networks x 16 images): {s:.3f} s", flush=True)


if __name__ == "__main__":
    main()
