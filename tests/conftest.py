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


@pytest.fixture
def config_loader():
    return load_config
