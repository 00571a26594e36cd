"""Shared test helpers: CPU only, small shapes, config loading."""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def subprocess_env(*xla_flags: str, **extra: str) -> dict[str, str]:
    """The environment for a test that runs a whole program in a subprocess (the notebook,
    the 8-device sharding check): ``os.environ`` plus ``extra``, with XLA's cheap CPU backend
    settings and ``xla_flags`` appended to any ``XLA_FLAGS``. Those tests spend most of their
    time compiling many small programs; the cheap settings cut that by about 40 % (the sharding
    check went from 187 to 110 s on a loaded machine). They change how XLA optimises, so float
    rounding, not what is computed; in-process tests keep the defaults, the numerics users get.
    """
    flags = " ".join(
        (
            os.environ.get("XLA_FLAGS", ""),
            *xla_flags,
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        )
    )
    return dict(os.environ, XLA_FLAGS=flags.strip(), **extra)


def load_config(name: str):
    """The ConfigDict of ``configs/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def real_data_dir(subdir: str) -> Path:
    """``$UHN_DATA_DIR/<subdir>`` for tests on real data files. The test fails when
    ``UHN_DATA_DIR`` is unset, and missing or broken files fail it too (the loaders raise), so
    no run passes by skipping them."""
    root = os.environ.get("UHN_DATA_DIR", "")
    if not root:
        pytest.fail(
            f"UHN_DATA_DIR is unset: set it to the data directory holding {subdir}/ (`make test` "
            "sets it), or deselect the real-data tests with -k 'not real'"
        )
    return Path(root) / subdir


@pytest.fixture
def config_loader():
    return load_config
