"""Tests for uhn_jax.data.cifar: the CIFAR-10 pickle and JPEG readers and the decoded cache."""

import gzip
import importlib.util
import io
import os
import pickle
import random
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data_dir

from uhn_jax.data import cifar, files

_HAS_PIL = importlib.util.find_spec("PIL") is not None
needs_pil = pytest.mark.skipif(not _HAS_PIL, reason="Pillow not installed")


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
        for label, name in enumerate(cifar.CIFAR10_CLASSES)
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
    assert list(cifar.CIFAR10_CLASSES) == sorted(cifar.CIFAR10_CLASSES)
    assert len(cifar.CIFAR10_CLASSES) == 10


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_load_cifar10_pickle_converts_chw_planes_to_hwc(tmp_path, subdir):
    x_train, y_train, x_test, y_test = _write_cifar_pickles(tmp_path / subdir)

    ds = cifar.load_cifar10(tmp_path, source="pickle")

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
    with pytest.raises(files.MissingDataError, match="data_batch_4") as info:
        cifar.load_cifar10(tmp_path)
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
        cifar.load_cifar10(tmp_path, source="pickle")
    assert str(tmp_path / "data_batch_3") in str(info.value)


@needs_pil
@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_load_cifar10_jpeg_labels_order_and_colours(tmp_path, prefix):
    _write_cifar_tarball(tmp_path / "cifar10-jpeg.tar.gz", prefix)
    ds = cifar.load_cifar10(tmp_path, source="jpeg")
    _assert_fake_jpeg_dataset(ds)
    assert ds.mean is not None and ds.std is not None


@needs_pil
def test_load_cifar10_jpeg_cache_written_to_cache_dir_and_reused(tmp_path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache" / "nested"
    tarball = data_dir / "cifar10-jpeg.tar.gz"
    _write_cifar_tarball(tarball)

    first = cifar.load_cifar10(data_dir, source="jpeg", cache_dir=cache_dir)

    assert sorted(os.listdir(data_dir)) == ["cifar10-jpeg.tar.gz"]  # data_dir is never written
    assert sorted(os.listdir(cache_dir)) == ["cifar10-jpeg-decoded.npz"]
    # Without the tarball, only the cache can supply the images; "auto" must find it too.
    tarball.unlink()
    for source in ("jpeg", "auto"):
        again = cifar.load_cifar10(data_dir, source=source, cache_dir=cache_dir)
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    with pytest.raises(files.MissingDataError, match="cifar10-jpeg.tar.gz"):
        cifar.load_cifar10(data_dir, source="jpeg")


@needs_pil
def test_load_cifar10_jpeg_cache_is_redone_for_a_replaced_tarball(tmp_path):
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    _write_cifar_tarball(tarball)
    cache_dir = tmp_path / "cache"
    assert len(cifar.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir).x_train) == 20
    # A different tarball in the same place: 3 instead of 2 training images per class.
    _write_cifar_tarball(tarball, counts={"train": 3, "test": 1})
    ds = cifar.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir)
    _assert_fake_jpeg_dataset(ds, counts={"train": 3, "test": 1})
    # ... and the refreshed cache is what the next call reads.
    tarball.unlink()
    assert len(cifar.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir).x_train) == 30


def test_load_cifar10_corrupt_cache_names_file(tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "cifar10-jpeg-decoded.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="delete it") as info:
        cifar.load_cifar10(tmp_path, source="jpeg", cache_dir=cache_dir)
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
        cifar.load_cifar10(tmp_path, source="jpeg")
    assert str(tarball) in str(info.value)

    with tarfile.open(tarball, "w:gz") as tar:
        for name, payload in (("train/cat/0000.jpg", b"junk"), ("test/cat/0000.jpg", b"junk")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="train/cat/0000.jpg is not a decodable image"):
        cifar.load_cifar10(tmp_path, source="jpeg")

    tarball.write_bytes(gzip.compress(b"not a tar file")[:-8])
    with pytest.raises(ValueError, match="not a valid") as info:
        cifar.load_cifar10(tmp_path, source="jpeg")
    assert str(tarball) in str(info.value)


@needs_pil
def test_load_cifar10_auto_prefers_pickle_then_jpeg(tmp_path):
    _write_cifar_tarball(tmp_path / "cifar10-jpeg.tar.gz")
    _assert_fake_jpeg_dataset(cifar.load_cifar10(tmp_path))  # only the tarball: jpeg
    x_train, *_ = _write_cifar_pickles(tmp_path / "cifar-10-batches-py", n=3)
    ds = cifar.load_cifar10(tmp_path)  # both present: pickle wins
    assert ds.x_train.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train, x_train)


def test_load_cifar10_missing_everything_names_both_layouts(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(files.MissingDataError) as info:
        cifar.load_cifar10(tmp_path)
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
        cifar.load_cifar10(tmp_path, source="png")


@pytest.mark.slow
@needs_pil
def test_real_cifar10_jpeg_tarball():
    directory = real_data_dir("cifar10", "cifar10-jpeg.tar.gz")
    start = time.perf_counter()
    ds = cifar.load_cifar10(directory, source="jpeg")
    print(f"decoded the real CIFAR-10 JPEG tarball in {time.perf_counter() - start:.1f} s")
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10_000, 32, 32, 3) and ds.x_test.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), np.full(10, 1000))
    # The re-encoded pixels keep CIFAR-10's channel statistics; a channel swap (BGR) would not.
    channel_mean = ds.x_train.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(channel_mean, [125.3, 123.0, 113.9], atol=1.0)
