"""Shared test helpers: CPU only, small shapes, config loading."""

import importlib.util
import os
import signal
import sys
import traceback
from pathlib import Path

import pytest

# A suite started in the background of a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and so would every run it starts; the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("JAX_PLATFORMS", "cpu")

#: Cheaper XLA CPU compilation for every test (in-process and subprocess): the suite spends
#: most of its time compiling programs it runs once or a few times. Whole suite, 2 workers:
#: 1,309 s with XLA's defaults, 1,008 s at optimisation level 1, 829 s at level 0 (each without
#: LLVM's expensive passes). The settings change how XLA optimises, so float rounding, not what
#: is computed; benchmarks and user runs keep XLA's defaults. (A persistent compilation cache
#: shared by the workers was tried and dropped: no test got faster with it.)
CHEAP_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = " ".join((os.environ.get("XLA_FLAGS", ""), *CHEAP_XLA_FLAGS)).strip()

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drops JAX's compiled programs after each test module. A pytest-xdist worker runs a few
    hundred tests in one process; keeping every executable alive grew the worker until XLA's
    CPU compiler segfaulted (always late in the run, on whichever test compiled next), while
    the same test passed in a fresh process."""
    yield
    import jax

    jax.clear_caches()


def pytest_collection_modifyitems(items):
    """Run the ``slow`` tests first: pytest-xdist then overlaps them with the many short ones
    instead of leaving one worker idle while the other finishes a two-minute test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def subprocess_env(*xla_flags: str, cheap: bool = True, **extra: str) -> dict[str, str]:
    """The environment for a test that runs a whole program in a subprocess (the notebook,
    the 8-device sharding check): ``os.environ`` (with :data:`CHEAP_XLA_FLAGS` unless
    ``cheap=False``) plus ``extra``, with ``xla_flags`` appended to ``XLA_FLAGS``.

    ``cheap=False`` is for a program that runs long enough for XLA's full optimisation to pay
    for its slower compilation (hundreds of steps): at optimisation level 0 XLA's CPU backend
    leaves reductions unvectorised, and the digits MLP's UHN step takes 0.27 s instead of 0.07.
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not cheap:
        flags = [f for f in flags if f not in CHEAP_XLA_FLAGS]
    return dict(os.environ, XLA_FLAGS=" ".join((*flags, *xla_flags)), **extra)


def preload_cli() -> None:
    """Imports the CLI and what its commands load, without starting JAX's backend (no threads
    yet), so that the processes :func:`fork_cli` forks from this one skip the imports."""
    import sklearn.datasets  # noqa: F401  (digits)
    import sklearn.model_selection  # noqa: F401

    import uhn_jax.cli  # noqa: F401
    from uhn_jax.training import experiments, multitask, train  # noqa: F401


def fork_cli(argv: list[str], stdout: Path, stderr: Path, *, append: bool = False) -> int:
    """Forks a process that runs ``uhn-jax ARGV`` (``uhn_jax.cli.main``) with its output in
    the files ``stdout`` and ``stderr`` (may be the same; appended to with ``append``) and
    exits with the command's exit code; returns its pid. A fork per command, because absl and
    ml_collections keep their flags in globals: ``cli.main`` runs once per process."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, mode), fd)
        from uhn_jax import cli

        sys.argv = ["uhn-jax", *argv]  # ml_collections reads its overrides from sys.argv
        # absl prints the main module's docstring as the usage; uhn-jax has none
        sys.modules["__main__"].__doc__ = None
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def load_config(name: str, *args):
    """The ConfigDict of ``configs/<name>.py`` (``get_config(*args)``)."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def real_data_dir(subdir: str, *needs: str) -> Path:
    """``$UHN_DATA_DIR/<subdir>`` for tests on real data files.

    Only a machine without a data directory (``UHN_DATA_DIR`` unset, or naming no directory)
    skips the test, with a message naming the data and how to get it; ``UHN_REQUIRE_DATA=1``
    (set by ``make test`` whenever the directory exists) makes that a failure too. A data
    directory that lacks ``subdir`` (or a file matching each glob in ``needs``) fails the test:
    the data is incomplete, not absent. Broken files fail either way (the loaders raise).
    """
    root = os.environ.get("UHN_DATA_DIR", "")
    path = Path(root) / subdir
    wanted = f"{subdir}/" + (f" with {', '.join(needs)}" if needs else "")
    advice = (
        "get the project's data directory (docs/data.md says where each dataset comes from) "
        "and point UHN_DATA_DIR at it; `make test` uses ../shared/data"
    )
    if not root or not Path(root).is_dir():
        message = f"no data directory (UHN_DATA_DIR={root or 'unset'}) for real data {wanted}"
        if os.environ.get("UHN_REQUIRE_DATA") == "1":
            pytest.fail(f"{message}: {advice} (UHN_REQUIRE_DATA=1: every real-data test runs)")
        pytest.skip(f"{message}: {advice}")
    if not path.is_dir() or any(not any(path.glob(n)) for n in needs):
        pytest.fail(f"real data {wanted} missing from the data directory {root}: {advice}")
    return path


def small_continual_config(
    method="hnet", beta=10.0, benchmark="split", steps=20, generator="chunked"
):
    """A small ``configs/continual.py:<benchmark>,digits,<method>`` for the continual tests: 3
    tasks of ``steps`` steps, a tiny UHN generator (4,513 params, for ``generator="uhn"``) and
    the output regulariser's ``beta`` (the default 10 barely lets earlier tasks' weights move)."""
    cfg = load_config("continual", f"{benchmark},digits,{method}")
    cfg.hnet.generator = generator
    cfg.generator.hidden, cfg.generator.n_freqs = 16, 32
    cfg.generator.structure_freqs, cfg.generator.structure_heads = 8, 2
    cfg.continual.num_tasks = 3
    cfg.continual.steps_per_task = steps
    cfg.hnet.beta = beta
    cfg.train.log_every = 10
    cfg.train.checkpoint_every = 10
    cfg.train.eval_batch_size = 128
    return cfg


@pytest.fixture
def config_loader():
    return load_config
