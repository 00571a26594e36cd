"""Checks of user-given settings: each raises ``ValueError`` naming the field, the value and
what is allowed. Shared by the config (``uhn_jax.config``) and the generator's settings."""

from __future__ import annotations

from typing import Any


def choice(name: str, value: Any, allowed: tuple) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    """``value`` must be an int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def non_negative_int(name: str, value: Any, hint: str = "") -> None:
    """``value`` must be an int >= 0 (not a bool); ``hint`` is appended to the message."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0{hint}, got {value!r}")


def in_range(name, value, lo, hi, lo_open=False, hi_open=False) -> None:
    """``value`` must lie in ``[lo, hi]`` (``(`` / ``)`` where open)."""
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(
            f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
            f"got {value!r}"
        )
