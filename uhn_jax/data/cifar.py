"""CIFAR-10 from disk: the python-version pickles, or the JPEG tarball through a decoded cache."""

import gzip
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from uhn_jax.data import files, images

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
CIFAR10_ADVICE = (
    "CIFAR-10 needs either the python version, `data_batch_1`..`data_batch_5` and `test_batch` "
    'directly in data_dir or in data_dir/cifar-10-batches-py (download "CIFAR-10 python '
    'version", cifar-10-python.tar.gz, from the CIFAR-10 page '
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it with `tar xzf`), or the JPEG "
    "tarball `cifar10-jpeg.tar.gz` with members train/<class>/*.jpg and test/<class>/*.jpg in "
    "data_dir; then pass --config.data.data_dir=DIR."
)

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
    hwc = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = labels.astype(np.int32)
    _check_cifar10_split(hwc, labels, str(path))
    return hwc, labels


def _read_cifar10_pickles(data_dir: Path) -> Cifar10Arrays:
    """Reads the 5 training batches and the test batch of the CIFAR-10 python version."""
    directory = _find_cifar10_pickle_dir(data_dir) or data_dir
    for name in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH):
        if not (directory / name).is_file():
            raise files.MissingDataError(
                f"Missing data file `{name}` in {files.describe_dir(directory)} (also looked in "
                f"{data_dir / _CIFAR10_PICKLE_SUBDIR}). {CIFAR10_ADVICE}"
            )
    train = [_read_cifar10_batch(directory / name) for name in _CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _read_cifar10_batch(directory / _CIFAR10_TEST_BATCH)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


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
        x = np.empty((len(keys), *_CIFAR10_IMAGE_SHAPE), dtype=np.uint8)
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
            x[i] = pixels
        arrays += [x, labels]
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
        raise files.MissingDataError(
            f"Missing data file `{_CIFAR10_TARBALL}` in {files.describe_dir(data_dir)}. "
            f"{CIFAR10_ADVICE}"
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
    raise files.MissingDataError(
        f"Missing CIFAR-10 data in {files.describe_dir(data_dir)}: found neither the python "
        "version's "
        f"`{_CIFAR10_TEST_BATCH}`/`data_batch_1`..`data_batch_5` (in {data_dir} or "
        f"{data_dir / _CIFAR10_PICKLE_SUBDIR}) nor `{_CIFAR10_TARBALL}`. {hint}{CIFAR10_ADVICE}"
    )


def load_cifar10(
    data_dir: str | os.PathLike[str],
    source: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> images.ArrayDataset:
    """Loads CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

    Unlike the other loaders, the inputs stay raw uint8 pixels, HWC; the returned ``mean`` and
    ``std`` (the reference values (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255) are
    applied on device by ``augment.augment_cifar`` or ``augment.normalize_images``.

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
    return images.ArrayDataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(CIFAR10_CLASSES),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
