"""What every loader that reads user files shares: the missing-file error and the data_dir rules."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class MissingDataError(FileNotFoundError):
    """A dataset file is missing; the message names it, the directory and how to get it."""


def describe_dir(directory: Path) -> str:
    """How a searched directory is named in a :class:`MissingDataError`."""
    if directory.is_dir():
        return f"directory {directory}"
    return f"{directory} (directory does not exist)"


def require_data_dir(name: str, data_dir: str | os.PathLike[str], advice: str = "") -> Path:
    """``data_dir`` as a Path; raises ``ValueError`` naming ``name`` and ``advice`` if it is empty.

    An empty ``data.data_dir`` would otherwise search the working directory and report the
    missing files there, which hides the actual mistake.
    """
    if not os.fspath(data_dir):
        raise ValueError(
            f"Dataset {name!r} reads files from disk, so data.data_dir must be set to the "
            f"directory holding them. {advice}".rstrip()
        )
    return Path(data_dir)


def load_from_dir(
    name: str,
    data_dir: str | os.PathLike[str],
    loader: Callable[..., T],
    advice: str = "",
    **kwargs: Any,
) -> T:
    """Calls ``loader(data_dir, **kwargs)``, or ``loader(data_dir / name, **kwargs)`` when the
    files are missing from ``data_dir`` itself but a ``<name>/`` subdirectory exists.

    So ``/data`` finds ``/data/mnist``: one parent directory can serve every dataset.

    Args:
        name: Dataset name, also the subdirectory tried second.
        data_dir: Directory holding the files, or their parent; must not be empty.
        loader: Reads the dataset from a directory; raises :class:`MissingDataError` when
            files are missing.
        advice: How to obtain the files, shown when ``data_dir`` is empty.
        **kwargs: Passed on to ``loader``.

    Returns:
        What ``loader`` returns.

    Raises:
        ValueError: If ``data_dir`` is empty.
        MissingDataError: From ``data_dir`` when the subdirectory does not exist either.
    """
    directory = require_data_dir(name, data_dir, advice)
    try:
        return loader(directory, **kwargs)
    except MissingDataError:
        if not (directory / name).is_dir():
            raise
        return loader(directory / name, **kwargs)
