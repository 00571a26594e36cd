"""Shared test helpers: CPU only, small shapes, config loading."""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
