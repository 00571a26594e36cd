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
    """``$UHN_DATA_DIR/<subdir>`` for tests on real data files; skips the test when
    ``UHN_DATA_DIR`` is unset. Once it is set, missing or broken files fail the test (the
    loaders raise), so a CI run with the data can't pass by skipping."""
    root = os.environ.get("UHN_DATA_DIR", "")
    if not root:
        pytest.skip(f"set UHN_DATA_DIR to the data directory (holding {subdir}/) to run this")
    return Path(root) / subdir


@pytest.fixture
def config_loader():
    return load_config
