"""The ``uhn-jax`` command line: ``train``, ``compare``, ``export``, ``summarize``, ``multitask``,
``plot``.

Examples::

  uhn-jax train   --config configs/digits_mlp.py --workdir runs/digits --config.mode=direct
  uhn-jax compare --config configs/digits_mlp.py --workdir runs/demo --seeds 3
  uhn-jax export  --workdir runs/digits
  uhn-jax summarize --workdir runs/kan      # one row per compare run under runs/kan/*/
  uhn-jax multitask --config configs/multitask.py --workdir runs/multitask --baselines [--seeds 3]
  uhn-jax plot --workdir runs/demo        # curves over seeds as PNGs in runs/demo/plots
  uhn-jax analyze --workdir runs/diverse --baseline runs/deep_ensemble   # a population report

Any config field can be overridden with ``--config.<group>.<field>=value``. Rerunning a command
with the same ``--workdir`` resumes where it stopped.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "compare", "export", "summarize", "multitask", "plot", "analyze")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; reused to resume).")
_SEEDS = flags.DEFINE_integer(
    "seeds", 3, "compare (and multitask, where it defaults to 1): seeds seed, seed+1, ..."
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "export: output directory (default WORKDIR/export); plot: output directory (default "
    "WORKDIR/plots).",
)
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")
_KERNELS = flags.DEFINE_boolean(
    "kernels", False, "plot: also draw each group's conv kernels (needs the run's data)."
)
_BASELINES = flags.DEFINE_boolean(
    "baselines",
    False,
    "multitask: also train each task's single-task UHN (same generator, steps scaled by the "
    "task's probability) and write WORKDIR/compare.md.",
)
_MATCH_PARAMS = flags.DEFINE_boolean(
    "match_params",
    False,
    "compare: also train the base model directly with its widths scaled to the hypernetwork's "
    "trained parameter count (the static model of equal size), as rows direct_matched.",
)
_BASELINE = flags.DEFINE_string(
    "baseline", None, "analyze: a second run (e.g. mode=ensemble) measured alongside."
)
_NETWORKS = flags.DEFINE_integer("networks", 1000, "analyze: networks a generative kind samples.")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed",
    False,
    "Join a multi-host job (jax.distributed.initialize) before training; the coordinator is "
    "detected on TPU pods and SLURM/Open MPI, or given by the three flags below.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _run(command: str) -> None:
    from uhn_jax import config as config_lib
    from uhn_jax.training import experiments, train

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _DISTRIBUTED.value:
        from uhn_jax.core import sharding

        given = {
            "coordinator_address": _COORDINATOR.value,
            "num_processes": _NUM_PROCESSES.value,
            "process_id": _PROCESS_ID.value,
        }
        sharding.initialize_distributed(**{k: v for k, v in given.items() if v is not None})
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if command == "summarize":
        print(experiments.summarize(_WORKDIR.value))
        return
    if command == "export":
        path = experiments.export(_WORKDIR.value, _OUT.value)
        print(f"exported generated params to {path}")
        return
    if command == "plot":
        from uhn_jax import plots

        for path in plots.plot_workdir(_WORKDIR.value, _OUT.value, kernels=_KERNELS.value):
            print(path)
        return
    if command == "analyze":
        from uhn_jax.analysis import report

        result = report.analyze(_WORKDIR.value, baseline=_BASELINE.value, networks=_NETWORKS.value)
        acc = result["accuracy"]
        print(
            f"{result['networks']} networks: test accuracy {100 * acc['mean']:.2f} ± "
            f"{100 * acc['std']:.2f} %; report and figures in {_WORKDIR.value}/analysis"
        )
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/digits_mlp.py")
    if command == "multitask":
        from uhn_jax.training import multitask

        seeds = _SEEDS.value if flags.FLAGS["seeds"].present else 1
        table = multitask.compare(
            _CONFIG.value,
            _WORKDIR.value,
            seeds,
            baselines=_BASELINES.value,
            progress=_PROGRESS.value,
        )
        if table is not None:
            print(table)
        return
    try:
        exp = config_lib.from_config_dict(_CONFIG.value)
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from e
    if command == "train":
        results = train.run(exp, _WORKDIR.value, progress=_PROGRESS.value)
        print(experiments.format_results(results))
    else:
        table = experiments.compare(
            exp,
            _WORKDIR.value,
            _SEEDS.value,
            progress=_PROGRESS.value,
            match_params=_MATCH_PARAMS.value,
        )
        print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``uhn-jax`` script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(
            f"usage: uhn-jax {{{','.join(COMMANDS)}}} --config FILE --workdir DIR [...]\n{__doc__}",
            file=sys.stderr,
        )
        sys.exit(2)
    command = argv.pop(1)
    app.run(lambda _: _run(command), argv=argv)


if __name__ == "__main__":
    main()
