"""Tests for uhn_jax.data.tfds on tiny datasets that TFDS prepares here, offline, without TF.

Each builder writes PNG-encoded images (Pillow encodes them, so no TensorFlow is needed) in the
``array_record`` format; the loader then reads them back through ``tfds.data_source``'s
random access. Pixel ``[0, 0, 0]`` of image ``i`` is ``i``, so every example can be checked
against what its builder wrote even though TFDS shuffles the records.
"""

import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from uhn_jax.config import DataConfig
from uhn_jax.core.descriptors import DatasetType
from uhn_jax.data import files, registry
from uhn_jax.data import tfds as tfds_data

# TFDS's ArrayRecord reader: a TFDS dependency on Linux only (wheels for other systems vary).
pytest.importorskip("array_record", reason="array_record (TFDS's ArrayRecord reader) missing")
PIL = pytest.importorskip("PIL.Image", reason="Pillow (encodes and decodes the PNGs) missing")

NUM_CLASSES = 5


def _image(i: int, channels: int) -> np.ndarray:
    pixels = np.random.default_rng(i).integers(0, 256, (8, 8, channels), dtype=np.uint8)
    pixels[0, 0, 0] = i
    return pixels


def _pil(pixels: np.ndarray):
    return PIL.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


class UhnTinyRgb(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """50 random 8x8 RGB images in 5 classes: 40 train, 10 test."""

    VERSION = tfds.core.Version("1.0.0")
    CHANNELS = 3
    SPLITS = {"train": range(40), "test": range(40, 50)}

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(8, 8, self.CHANNELS)),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }
        )
        # DatasetInfo itself: dataset_info_from_configs looks for metadata files in a package.
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(ids) for split, ids in self.SPLITS.items()}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"image": _pil(_image(i, self.CHANNELS)), "label": i % NUM_CLASSES}


class UhnTinyGray(UhnTinyRgb, skip_registration=True):
    """Grayscale (8, 8, 1) images with a validation split instead of a test split."""

    CHANNELS = 1
    SPLITS = {"train": range(30), "validation": range(30, 42)}


class UhnTinyRegression(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with a float target: not classification."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(8, 8, 3)), "label": np.float32}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            yield i, {"image": _pil(_image(i, 3)), "label": float(i)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One TFDS data_dir holding the three prepared datasets."""
    root = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    for builder_cls in (UhnTinyRgb, UhnTinyGray, UhnTinyRegression):
        builder = builder_cls(data_dir=str(root), file_format="array_record")
        builder.download_and_prepare(download_dir=str(root / "downloads"))
    return root


def _check(x, y, ids, channels):
    assert x.dtype == np.uint8 and x.shape == (len(ids), 8, 8, channels)
    assert y.dtype == np.int32 and y.shape == (len(ids),)
    order = x[:, 0, 0, 0].astype(int)
    assert sorted(order) == sorted(ids)
    np.testing.assert_array_equal(y, order % NUM_CLASSES)
    for image, i in zip(x, order, strict=True):
        np.testing.assert_array_equal(image, _image(i, channels))


def test_load_rgb_through_the_registry(data_dir):
    cfg = DataConfig(name="tfds:uhn_tiny_rgb", data_dir=str(data_dir))
    ds = registry.load(cfg)
    assert ds.name == "tfds:uhn_tiny_rgb" and ds.num_classes == NUM_CLASSES
    assert ds.input_shape == (8, 8, 3)
    _check(ds.x_train, ds.y_train, range(40), 3)
    _check(ds.x_test, ds.y_test, range(40, 50), 3)
    # mean/std: per channel, of the training pixels scaled to [0, 1].
    pixels = ds.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-10)
    assert registry.dataset_type(cfg) == registry.TFDS_DATASET_TYPE
    assert registry.get(cfg.name).families == ("mlp", "cnn", "ha_cnn")
    # Preparing and reading imported no TensorFlow. (A None entry in sys.modules cannot force
    # this: TFDS takes any "tensorflow" key there to mean TensorFlow is loaded.)
    assert "tensorflow" not in sys.modules


def test_grayscale_keeps_its_channel_axis_and_falls_back_to_validation(data_dir):
    ds = tfds_data.load_tfds("uhn_tiny_gray", data_dir)
    _check(ds.x_train, ds.y_train, range(30), 1)
    _check(ds.x_test, ds.y_test, range(30, 42), 1)
    assert len(ds.mean) == len(ds.std) == 1


def test_split_slicing_and_explicit_splits(data_dir):
    ds = tfds_data.load_tfds(
        "uhn_tiny_rgb", data_dir, train_split="train[:25%]", test_split="train[90%:]"
    )
    assert len(ds.x_train) == 10 and len(ds.x_test) == 4
    assert not set(ds.x_train[:, 0, 0, 0]) & set(ds.x_test[:, 0, 0, 0])


def test_channel_stats_chunks_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (37, 4, 4, 2), dtype=np.uint8)
    x[..., 1] = 7  # a constant channel gets std 1, not 0
    mean, std = tfds_data.channel_stats(x, chunk=5)
    np.testing.assert_allclose(mean, (x / 255.0).reshape(-1, 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std[0], (x[..., 0] / 255.0).std(), rtol=1e-10)
    assert std[1] == 1.0


def test_unknown_dataset_is_missing_data(tmp_path):
    with pytest.raises(files.MissingDataError, match="'uhn_not_there' is neither") as info:
        registry.load(DataConfig(name="tfds:uhn_not_there", data_dir=str(tmp_path)))
    assert "tfds build" in str(info.value) and "array_record" in str(info.value)


def test_known_but_unprepared_dataset_is_missing_data_and_never_downloads(tmp_path):
    with pytest.raises(files.MissingDataError, match="'mnist' is not prepared") as info:
        registry.load(DataConfig(name="tfds:mnist", data_dir=str(tmp_path)))
    assert str(tmp_path) in str(info.value)
    assert not any(tmp_path.iterdir()), "the loader must not start a download"
    assert registry.dataset_type(DataConfig(name="tfds:mnist")) == DatasetType.MNIST


def test_tfrecord_dataset_is_rejected_with_the_fix(data_dir, tmp_path):
    # Writing tfrecord files needs TensorFlow, so relabel a copy of the array_record dataset in
    # its metadata: TFDS then finds no random-access format, as for a real tfrecord copy.
    shutil.copytree(data_dir / "uhn_tiny_rgb", tmp_path / "uhn_tiny_rgb")
    info = tmp_path / "uhn_tiny_rgb" / "1.0.0" / "dataset_info.json"
    text = info.read_text()
    assert '"array_record"' in text
    info.write_text(text.replace('"array_record"', '"tfrecord"'))
    with pytest.raises(ValueError, match="stored as tfrecord, which has no random access") as e:
        tfds_data.load_tfds("uhn_tiny_rgb", tmp_path)
    assert "--file_format=array_record" in str(e.value)


def test_non_classification_dataset_is_rejected(data_dir):
    with pytest.raises(ValueError, match="'label' is a Tensor, not a ClassLabel"):
        tfds_data.load_tfds("uhn_tiny_regression", data_dir)


def test_missing_feature_names_the_features(data_dir):
    with pytest.raises(
        ValueError, match=r"no feature 'pixels'; its features are \['image', 'label'\]"
    ):
        tfds_data.load_tfds("uhn_tiny_rgb", data_dir, image_key="pixels")
