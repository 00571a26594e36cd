"""The idx file format of MNIST and Fashion-MNIST: reading a file and finding one in a directory."""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from uhn_jax.data import files

# idx type codes (third magic byte) -> big-endian numpy dtype, per the MNIST file-format spec.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an idx file (the MNIST format), gzipped if its name ends in ``.gz``.

    The header is a 4-byte magic number ``0x00 0x00 <type code> <ndim>`` followed by ``ndim``
    big-endian uint32 dimension sizes, then the data in big-endian C order.

    Args:
        path: Path to the idx file.

    Returns:
        An array with the dims from the header, in native byte order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: On a bad magic number, unknown type code, corrupt gzip stream or a data size
            that does not match the header dims.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from e

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad idx magic number {raw[:4].hex() or '(empty file)'}; expected "
            f"00 00 <type code in {[f'{c:02x}' for c in _IDX_DTYPES]}> <ndim>"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: file ends inside the idx header ({ndim} dims declared)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise ValueError(
            f"{path}: header declares dims {dims} of {dtype.itemsize}-byte items "
            f"({expected} data bytes) but the file holds {actual} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    # astype copies, so the result is writable and no longer tied to the bytes buffer.
    return data.astype(dtype.newbyteorder("="))


def _idx_candidates(stem: str) -> list[str]:
    names = [stem, stem + ".gz"]
    # Some mirrors name the files `t10k-images.idx3-ubyte` instead of `t10k-images-idx3-ubyte`.
    dotted = stem.replace("-idx", ".idx", 1)
    if dotted != stem:
        names += [dotted, dotted + ".gz"]
    return names


def find_idx(
    data_dir: str | os.PathLike[str],
    stem: str,
    advice: str = "Download the idx files and pass their directory as data_dir.",
) -> Path:
    """Finds the idx file ``stem`` in ``data_dir``, raw or gzipped.

    Args:
        data_dir: Directory to look in.
        stem: File name without ``.gz``, e.g. ``"t10k-images-idx3-ubyte"``. The dotted variant
            ``"t10k-images.idx3-ubyte"`` used by some mirrors is accepted too.
        advice: How to obtain the file, appended to the error message.

    Returns:
        Path of the first existing candidate: ``stem``, ``stem.gz``, then the dotted variants.

    Raises:
        MissingDataError: If no candidate exists.
    """
    data_dir = Path(data_dir)
    candidates = _idx_candidates(stem)
    for name in candidates:
        if (data_dir / name).is_file():
            return data_dir / name
    raise files.MissingDataError(
        f"Missing data file `{stem}.gz`: looked for {', '.join(candidates)} in "
        f"{files.describe_dir(data_dir)}. {advice}"
    )
