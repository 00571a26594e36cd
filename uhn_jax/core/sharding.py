"""Device meshes for UHN training: descriptors and batches sharded, generator params replicated.

Generation is embarrassingly parallel over target weights, and the base model is data parallel,
so one 1-D mesh axis, ``"d"``, serves both: the descriptor rows of every generation chunk and the
examples of every batch are split over it, while generator parameters, optimiser state and the
generated weight vector are replicated. Everything is expressed as ``NamedSharding`` placements
and ``with_sharding_constraint`` inside ``jax.jit``; XLA inserts the all-gather of the generated
weights and the all-reduce of the gradients.

With ``mesh=None`` every function here is the identity, so single-device code paths are
unchanged. On several hosts, call :func:`initialize_distributed` first (``uhn-jax
--distributed``); the mesh then spans every process's devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "d"


def make_mesh(num_devices: int = 0) -> Mesh | None:
    """A 1-D mesh over the first ``num_devices`` devices (0 = all); ``None`` for one device.

    Raises:
      ValueError: if more devices are asked for than exist.
    """
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(
            f"train.num_devices={num_devices} but {len(devices)} device(s) are available "
            f"({devices[0].platform}); use 0 for all of them"
        )
    n = num_devices or len(devices)
    if n == 1:
        return None
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Mesh | None):
    """The sharding of a value every device holds whole (``None`` without a mesh)."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def split(mesh: Mesh | None, ndim: int, axis: int = 0):
    """The sharding of an ``ndim`` array split over the mesh along ``axis``."""
    if mesh is None:
        return None
    spec = [None] * ndim
    spec[axis] = AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def constrain(x: jax.Array, sharding) -> jax.Array:
    """``with_sharding_constraint`` that is the identity when ``sharding`` is ``None``."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def put(tree, sharding):
    """Places every leaf of ``tree`` with ``sharding`` (identity when ``None``).

    Leaves go through the host and each process supplies its own devices' shards
    (``jax.make_array_from_callback``), which also works when the mesh spans several hosts, as
    long as every process holds the same values (true for this library's replicated state,
    descriptors and datasets, which every process builds identically).
    """
    if sharding is None:
        return tree

    def one(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree)


def replicate(mesh: Mesh | None, tree):
    """Every leaf of ``tree`` held whole by every device of ``mesh`` (identity without one)."""
    return put(tree, replicated(mesh))


def split_rows(mesh: Mesh | None, x: np.ndarray):
    """A 2-D host array split over ``mesh`` along its rows, on device.

    Rows are padded with copies of the last one up to a multiple of the device count; callers
    must ignore rows past the original length (generation does: it slices by the plan's sizes).
    """
    x = np.asarray(x)
    if mesh is not None and len(x):
        x = np.pad(x, ((0, -len(x) % mesh.size), (0, 0)), mode="edge")
    return put(jax.numpy.asarray(x), split(mesh, 2))


def initialize_distributed(**kwargs) -> None:
    """Joins a multi-host JAX job (``jax.distributed.initialize``); call before any JAX work.

    On TPU pods and SLURM/Open MPI clusters the coordinator is detected from the environment;
    elsewhere pass ``coordinator_address``, ``num_processes`` and ``process_id`` (the CLI's
    ``--coordinator_address``, ``--num_processes`` and ``--process_id``). On CPU the processes'
    collectives use gloo (``jax_cpu_collectives_implementation``, JAX's default);
    ``tests/test_distributed.py`` trains with two local processes this way.
    """
    jax.distributed.initialize(**kwargs)
