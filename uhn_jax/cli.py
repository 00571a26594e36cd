"""The ``uhn-jax`` command line: ``train``, ``compare``, ``export``, ``summarize``, ``multitask``,
``plot``, ``analyze``, ``reproduce``, ``zoo``, ``sne``, ``igpg`` (``uhn-jax --help`` lists them with
one line each).

Examples::

  uhn-jax train   --config configs/digits_mlp.py --workdir runs/digits --config.mode=direct
  uhn-jax compare --config configs/digits_mlp.py --workdir runs/demo --seeds 3
  uhn-jax export  --workdir runs/digits
  uhn-jax summarize --workdir runs/kan      # one row per compare run under runs/kan/*/
  uhn-jax multitask --config configs/multitask.py --workdir runs/multitask --baselines [--seeds 3]
  uhn-jax plot --workdir runs/demo        # curves, weights etc. as PNGs in runs/demo/plots
  uhn-jax analyze --workdir runs/diverse --baseline runs/deep_ensemble   # a population report
  uhn-jax reproduce --workdir runs/reproduce --data_dir DATA_DIR [--only digits,cora_gcn]
  uhn-jax zoo --config configs/zoo.py:digits --workdir runs/zoo_digits   # resumable
  uhn-jax sne --config configs/sne.py:digits --workdir runs/sne_digits   # accuracy from weights
  uhn-jax igpg --config configs/igpg.py:tiny --workdir runs/igpg_tiny    # weights from a zoo

Any config field can be overridden with ``--config.<group>.<field>=value``. Rerunning a command
with the same ``--workdir`` resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

#: Each command and what it does, in one line (``uhn-jax --help``).
COMMANDS = {
    "train": "train one run of a config (resumes from WORKDIR's latest checkpoint)",
    "compare": "train direct and the config's hypernetwork over --seeds seeds; print a table",
    "export": "write a run's base-model params (generated, for a hypernetwork) as a checkpoint",
    "summarize": "one table row per compare workdir (or train run) under WORKDIR",
    "multitask": "train one generator on several tasks (--baselines: each task alone too)",
    "continual": "train tasks one after another (configs/continual.py); print the accuracy matrix",
    "plot": "draw a workdir's curves, weights, init fit and sizes as PNGs in WORKDIR/plots",
    "analyze": "measure a run's population of networks (accuracy, ensembles, diversity)",
    "reproduce": "re-run the cheap published comparisons; check each against its bound",
    "zoo": "train a model zoo (configs/zoo.py) in groups; store weights + metadata per snapshot",
    "sne": "predict test accuracy from weights on a zoo (configs/sne.py): SNE vs baselines",
    "igpg": "generate weights for a dataset and architecture from a zoo (configs/igpg.py): IGPG",
}

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
_KERNELS = flags.DEFINE_boolean("kernels", False, "plot: also draw each group's conv kernels.")
_WEIGHTS = flags.DEFINE_boolean(
    "weights",
    True,
    "plot: histograms of a compare workdir's generated against trained weights (both models "
    "rebuilt from the workdir); --noweights skips them.",
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
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "reproduce: the data directory (holding planetoid/, mnist/, ...)."
)
_ONLY = flags.DEFINE_list("only", None, "reproduce: run only these checks (comma-separated).")
_MATMUL_DTYPE = flags.DEFINE_enum(
    "matmul_dtype",
    None,
    ["float32", "bfloat16"],
    "reproduce: the generators' matmul dtype instead of auto (check another host's numerics).",
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
    validated = _validated(command)
    if command == "summarize":
        print(experiments.summarize(_WORKDIR.value))
        return
    if command == "export":  # --config, if given, has registered the families it names
        path = experiments.export(_WORKDIR.value, _OUT.value)
        print(f"exported the base model's params to {path}")
        return
    if command == "plot":
        from uhn_jax import plots

        for path in plots.plot_workdir(
            _WORKDIR.value, _OUT.value, kernels=_KERNELS.value, weights=_WEIGHTS.value
        ):
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
    if command == "reproduce":
        return _reproduce()
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
    if command == "continual":
        from uhn_jax.training import continual

        results = continual.run(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
        print(continual.format_results(results))
        return
    if command in ("zoo", "sne", "igpg"):
        return _weightspace(command)
    if command == "train":
        results = train.run(validated, _WORKDIR.value, progress=_PROGRESS.value)
        print(experiments.format_results(results))
    else:
        table = experiments.compare(
            validated,
            _WORKDIR.value,
            _SEEDS.value,
            progress=_PROGRESS.value,
            match_params=_MATCH_PARAMS.value,
        )
        print(table)


def _weightspace(command: str) -> None:
    """``uhn-jax zoo`` (build a model zoo), ``uhn-jax sne`` (predict networks' accuracy from
    their weights on a zoo) and ``uhn-jax igpg`` (generate weights from a zoo): the library
    call, then its summary or table."""
    if command == "zoo":
        from uhn_jax.training import zoo

        summary = zoo.build(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
        print(zoo.format_summary(summary))
        return
    if command == "igpg":
        from uhn_jax.training import igpg

        igpg.run(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)  # prints its summary
        return
    from uhn_jax.training import sne, sne_report

    results = sne.run(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
    print(sne_report.format_table(results))


def _reproduce() -> None:
    """``uhn-jax reproduce``: the table, and exit status 1 when a check misses its bound."""
    from uhn_jax.training import reproduce

    try:
        table, rows = reproduce.reproduce(
            _WORKDIR.value,
            _DATA_DIR.value,
            only=_ONLY.value,
            matmul_dtype=_MATMUL_DTYPE.value,
            progress=_PROGRESS.value,
        )
    except reproduce.CheckError as e:
        raise app.UsageError(str(e)) from e
    print(table)
    if not all(r["holds"] for r in rows):
        sys.exit(1)


def _validated(command: str, *, complete: bool = True) -> Any:
    """What :func:`_run` checks before it runs ``command`` (its flags parsed): the flags it
    requires (unless not ``complete``), and its config validated, as in
    :attr:`Command.validated`. Raises ``app.UsageError``, or the library's ``ValueError`` for a
    multi-task config (reported as the library's errors are, :func:`_one_line`)."""
    from uhn_jax import config as config_lib

    if complete and _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if command in ("summarize", "export", "plot", "analyze"):
        return None  # export: --config, if given, has registered the families it names
    if command == "reproduce":
        from uhn_jax.training import reproduce

        data_dir = _DATA_DIR.value
        if data_dir is None and not complete:  # an excerpt: the data is wherever it is
            data_dir = "DATA_DIR"
        try:
            return reproduce.load_experiments(
                data_dir, only=_ONLY.value, matmul_dtype=_MATMUL_DTYPE.value
            )
        except reproduce.CheckError as e:
            raise app.UsageError(str(e)) from e
    if _CONFIG.value is None:
        if complete:
            raise app.UsageError("--config is required, e.g. --config configs/digits_mlp.py")
        return None
    if command == "multitask":
        from uhn_jax.training import multitask

        return multitask.validate(_CONFIG.value)
    if command == "continual":
        from uhn_jax.training import continual

        return continual.validate(_CONFIG.value)
    if command == "zoo":
        from uhn_jax.training import zoo_config

        return zoo_config.validate(_CONFIG.value)
    if command == "sne":
        from uhn_jax.training import sne_config

        return sne_config.validate(_CONFIG.value)
    if command == "igpg":
        from uhn_jax.training import igpg

        return igpg.validate(_CONFIG.value)
    try:
        return config_lib.from_config_dict(_CONFIG.value)
    except ValueError as e:
        raise app.UsageError(f"bad config: {e}") from e


def _parse_flags(argv: list[str]) -> list[str]:
    """:func:`main`'s flag parser: :func:`_parse` with absl's report of a flag it refuses (exit
    1), and a config file that fails to load or a ``--config.*`` override of a field the config
    does not have as one line (exit 2), not a traceback."""
    try:
        return _parse(argv, app.parse_flags_with_usage)
    except CommandError as e:
        _fail(str(e))


def _parse(argv: list[str], parse: Callable[[list[str]], list[str]]) -> list[str]:
    """Parses ``argv`` (the program name first) with ``parse`` (absl's ``FLAGS`` or
    ``app.parse_flags_with_usage``) from the flags' defaults, and loads the ``--config`` file.

    Raises:
      CommandError: for a config file that fails to load, or an override of a field it lacks.
    """
    _reset_flags()
    saved, sys.argv = sys.argv, list(argv)  # ml_collections reads the overrides from sys.argv
    try:
        args = parse(list(argv))
        if _CONFIG.value is not None:
            hasattr(_CONFIG.value, "keys")  # ml_collections raises a load error on first use
        return args
    except _ConfigFileError as e:  # the file fails to import, or its get_config() fails
        raise CommandError(f"--config: cannot load the config file: {e}") from e
    except OSError as e:  # the file is missing or unreadable
        lines = [line.strip() for line in str(e.__cause__ or e).splitlines() if line.strip()]
        last = lines[-1]  # the last line names the file
        raise CommandError(f"--config: cannot load the config file: {last}") from e
    except (AttributeError, KeyError) as e:  # an override of an unknown field
        raise CommandError(_unknown_field(e, argv)) from e
    finally:
        sys.argv = saved


def _reset_flags() -> None:
    """Every flag unparsed, at its default, and the flags of a previous parse's ``--config.*``
    overrides removed (ml_collections defines them at each parse)."""
    for name in [n for n in flags.FLAGS if n.startswith(f"{_CONFIG.name}.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


class _ConfigFileError(Exception):
    """A config file that fails to import or whose ``get_config()`` fails, as one line naming
    the file. Not a ValueError or TypeError, which absl would wrap with the traceback."""


class _ConfigFileParser(flags.ArgumentParser):
    """ml_collections' parser of ``--config FILE[:ARG]`` (``parser``), raising
    :class:`_ConfigFileError` for an error in loading FILE or calling its ``get_config``
    (ml_collections raises the error itself, names the module ``config_config``, and absl
    adds the traceback)."""

    def __init__(self, parser: flags.ArgumentParser):
        self.parser = parser

    def flag_type(self) -> str:
        return self.parser.flag_type()

    def parse(self, path):
        try:
            return self.parser.parse(path)
        except Exception as e:
            file = path.split(":", 1)[0]
            if isinstance(e, SyntaxError):  # incl. IndentationError: a line and no frames
                raise _ConfigFileError(f"{e.filename}, line {e.lineno}: {e.msg}") from e
            if isinstance(e, AttributeError) and e.name == "get_config":
                raise _ConfigFileError(f"{file} defines no get_config() function") from e
            if str(e).startswith("Error whilst parsing config file") and e.__context__:
                e = e.__context__  # ml_collections' copy of get_config's TypeError/ValueError
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if _same(f, file)]
            where = f"{file}, line {lines[-1]}" if lines else path
            raise _ConfigFileError(f"{where}: {type(e).__name__}: {e}") from e


def _same(frame: traceback.FrameSummary, file: str) -> bool:
    try:
        return Path(frame.filename).samefile(file)
    except OSError:
        return False


flags.FLAGS[_CONFIG.name].parser = _ConfigFileParser(flags.FLAGS[_CONFIG.name].parser)


def _unknown_field(error: Exception, argv: list[str]) -> str:
    """One line for ml_collections' error on an unknown config field, suggestion kept."""
    while error.args and isinstance(error.args[0], Exception):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    key, _, hint = text.partition("\n")
    if not (key[:1] == key[-1:] == "'" and key[1:-1].isidentifier()):  # another lookup error
        return "a --config.* override: " + " ".join(text.split())
    key = key[1:-1]
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    flag = next((f for f in overrides if key in f.split(".")), "--config")
    return f"{flag}: the config has no field {key!r}. {hint}".strip()


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _usage() -> str:
    """The top-level help: the commands with one line each, then the examples."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, summary in COMMANDS.items()]
    examples = __doc__.split("Examples::", 1)[1].strip("\n")
    return "\n".join(
        [
            "usage: uhn-jax COMMAND --workdir DIR [--config FILE] [flags]",
            "",
            "commands:",
            *lines,
            "",
            "examples:",
            examples,
            "",
            "Flags of a command: uhn-jax COMMAND --helpfull",
        ]
    )


def _run_reporting(command: str) -> None:
    """:func:`_run`, with Ctrl-C and user errors (:func:`_one_line`: a NaN/Inf stop, a path
    that cannot be used, a value the library's validation refuses) shown as one line instead
    of a traceback. Every checkpoint manager is closed before exit: an orbax thread still
    running at interpreter shutdown prints a traceback after the command's output."""
    try:
        _run(command)
    except KeyboardInterrupt as e:  # the training loop has saved the last completed step
        print(str(e) or "[uhn_jax] interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = _one_line(e)
        if message is None:
            raise
        message = message.removeprefix(f"{command}: ")  # e.g. multitask's own prefix
        print(f"uhn-jax {command}: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        from uhn_jax.training import checkpoint

        checkpoint.close_all()
        gc.collect()  # finalisers run now, not at interpreter shutdown when imports fail


def _one_line(error: Exception) -> str | None:
    """The one line that reports ``error`` to the user, or ``None`` for a bug to show with its
    traceback. One line: a NaN/Inf stop; a file or directory that cannot be used (an
    ``OSError``, e.g. a workdir that is a file; the message names the path); and a
    ``ValueError``/``TypeError`` raised by a ``raise`` statement of uhn_jax, i.e. its
    validation of user input (a workdir, checkpoint or model that does not fit, a batch
    larger than the data, ``--seeds=0``, a kind's constraint on the model). The same types
    raised inside JAX, NumPy or a call with wrong arguments are bugs."""
    from uhn_jax.training import checkpoint, loop, workdir

    # WorkdirError: also rebuild.RebuildError, what a workdir lacks.
    known = (loop.NonFiniteLossError, workdir.WorkdirError, checkpoint.DamagedCheckpointError)
    if isinstance(error, known):
        return str(error)
    if isinstance(error, OSError):
        if error.strerror and error.filename:  # "[Errno 20] ...: 'path'" as "path: ..."
            return f"{error.filename}: {error.strerror}"
        return str(error)
    if not isinstance(error, (ValueError, TypeError)):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    library = Path(__file__).resolve().parent
    raised_here = bool(frames) and (frames[-1].line or "").startswith("raise")
    if raised_here and Path(frames[-1].filename).resolve().is_relative_to(library):
        return str(error)
    return None


@dataclasses.dataclass(frozen=True)
class Command:
    """A ``uhn-jax`` command line, parsed and validated by :func:`check_command`.

    Attributes:
      name: The command, a key of :data:`COMMANDS`.
      flags: The value of every flag given on the command line, by name (``"config"``: the
        ConfigDict, its ``--config.*`` overrides applied).
      validated: What the command's config validates to: train and compare, the
        :class:`uhn_jax.config.Experiment`; multitask, its tasks; reproduce, the chosen checks'
        experiments by name; other commands (or no ``--config`` in an excerpt), ``None``.
    """

    name: str
    flags: dict[str, Any]
    validated: Any = None


class CommandError(ValueError):
    """A command line that ``uhn-jax`` refuses before running anything; the message is the
    error it reports (:func:`check_command`)."""


def check_command(argv: Sequence[str], *, complete: bool = True) -> Command:
    """Parses and validates the command line ``uhn-jax ARGV`` without running it: what
    :func:`main` does before it trains or reads anything, with the same code. The command
    exists, absl accepts every flag, the ``--config FILE[:ARG]`` file loads and its
    ``--config.*`` overrides name fields it has and parse, and the result validates (train,
    compare: the experiment; multitask: every task's; reproduce: the chosen checks'). Data
    files and workdirs are not read. Each call starts from the flags' defaults and leaves them
    unparsed, so one process can check many commands (``tests/test_docs_commands.py`` checks
    the documentation's) and still run :func:`main`.

    Args:
      argv: The arguments after ``uhn-jax``, e.g. ``["train", "--config",
        "configs/test.py", "--workdir", "runs/t"]``.
      complete: ``False`` for an excerpt of a command (prose such as ``uhn-jax plot
        --kernels``): the flags a command requires (``--workdir``, ``--config``,
        ``--data_dir``) may then be missing.

    Returns:
      The parsed :class:`Command`.

    Raises:
      CommandError: for a command line ``uhn-jax`` would refuse, with the error it reports.
    """
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "none"
        raise CommandError(f"unknown command {given}; the commands are {', '.join(COMMANDS)}")
    try:
        _parse(["uhn-jax", *argv[1:]], flags.FLAGS)
        validated = _validated(argv[0], complete=complete)
        given = {n: flags.FLAGS[n].value for n in flags.FLAGS if flags.FLAGS[n].present}
        return Command(argv[0], given, validated)
    except CommandError:
        raise
    except (flags.Error, app.UsageError) as e:
        raise CommandError(str(e)) from e
    except Exception as e:
        message = _one_line(e)  # main's split between user errors and bugs
        if message is None:
            raise
        raise CommandError(message) from e
    finally:
        _reset_flags()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``uhn-jax`` script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        asked = len(argv) == 2 and argv[1] in ("-h", "--help", "help")
        if asked:
            print(_usage())
            sys.exit(0)
        bad = f"unknown command {argv[1]!r}\n" if len(argv) > 1 else ""
        print(bad + _usage(), file=sys.stderr)
        sys.exit(2)
    command = argv.pop(1)
    app.run(lambda _: _run_reporting(command), argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
