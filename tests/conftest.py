"""Shared test helpers: CPU only, small shapes, config loading."""

import importlib.util
import os
from pathlib import Path

import pytest

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


def load_config(name: str, *args):
    """The ConfigDict of ``configs/<name>.py`` (``get_config(*args)``)."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def real_data_dir(subdir: str, *needs: str) -> Path:
    """``$UHN_DATA_DIR/<subdir>`` for tests on real data files.

    When the directory (or a file matching each glob in ``needs``) is missing, the test skips
    with a message naming the data and how to get it; with ``UHN_REQUIRE_DATA=1`` (set by
    ``.ci/run``) it fails instead, so CI runs every real-data test. Broken files fail the test
    either way (the loaders raise).
    """
    root = os.environ.get("UHN_DATA_DIR", "")
    path = Path(root) / subdir if root else None
    missing = path is None or not path.is_dir() or any(not any(path.glob(n)) for n in needs)
    if missing:
        wanted = f"{subdir}/" + (f" with {', '.join(needs)}" if needs else "")
        message = (
            f"real data {wanted} not found (UHN_DATA_DIR={root or 'unset'}): get the project's "
            "data directory (docs/data.md says where each dataset comes from) and point "
            "UHN_DATA_DIR at it; `make test` uses ../shared/data"
        )
        if os.environ.get("UHN_REQUIRE_DATA") == "1":
            pytest.fail(message + " (UHN_REQUIRE_DATA=1: every real-data test must run)")
        pytest.skip(message)
    return path


@pytest.fixture
def config_loader():
    return load_config
