"""Image classification datasets prepared by TensorFlow Datasets, read without TensorFlow.

``tfds.data_source`` gives random access to a dataset that TFDS prepared in the ``array_record``
(or ``parquet``) file format; decoding uses numpy and Pillow, so nothing here imports
TensorFlow. The dataset must already be prepared in ``data_dir``: this loader never downloads.
Prepare it once where TensorFlow and the network are available, e.g.
``tfds build mnist --data_dir=DIR --file_format=array_record``, then copy ``DIR``.
"""

import math
import os
from typing import Any

import numpy as np

from uhn_jax.data import files, images

# Examples decoded per read: bounds the list of decoded dicts held at once.
_READ_CHUNK = 4096
# Splits tried, in order, when the dataset has no "test" split.
_TEST_SPLITS = ("test", "validation")

PREPARE_ADVICE = (
    "Prepare it where TensorFlow and the network are available with `tfds build <name> "
    "--data_dir=DIR --file_format=array_record` (or builder.download_and_prepare(file_format="
    "'array_record')), copy DIR here and pass it as data.data_dir."
)


def load_tfds(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    train_split: str = "train",
    test_split: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> images.ArrayDataset:
    """Loads a TFDS-prepared image classification dataset into memory.

    Images stay uint8, HWC (a grayscale dataset keeps its channel axis of 1); ``mean`` and
    ``std`` are the per-channel statistics of the training images scaled to [0, 1], applied on
    device like CIFAR-10's (``augment.normalize_images``).

    Args:
        name: TFDS name, optionally with config and version: ``"mnist"``,
            ``"mnist:3.0.1"``, ``"emnist/letters"``.
        data_dir: The TFDS data directory holding ``<name>/<version>/``; None or ``""`` uses
            TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        train_split: Split read as the training set; TFDS slicing works (``"train[:10%]"``).
        test_split: Split read as the test set; None picks ``"test"``, else ``"validation"``.
        image_key: Feature holding the image; None takes the dataset's supervised keys, else
            ``"image"``.
        label_key: Feature holding the ``ClassLabel``; None as for ``image_key``, else
            ``"label"``.

    Returns:
        The dataset: uint8 inputs of the feature's (H, W, C) shape, int32 labels,
        ``num_classes`` from the ``ClassLabel``, ``mean`` and ``std`` set.

    Raises:
        MissingDataError: If the dataset is not prepared in ``data_dir``.
        ValueError: If it is prepared in a format without random access (``tfrecord``), or is
            not image classification with fixed-size uint8 images.
    """
    builder = _prepared_builder(name, data_dir)
    features = builder.info.features
    image_key, label_key = _feature_keys(builder, image_key, label_key)
    shape, num_classes = _check_features(name, features, image_key, label_key)
    test_split = test_split or _default_test_split(name, builder)
    try:
        sources = builder.as_data_source(split=[train_split, test_split])
    except NotImplementedError as e:
        raise ValueError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
            f"{getattr(builder.info.file_format, 'value', None)}, which has no random access; "
            "prepare it again with --file_format=array_record (or convert it with "
            f"`tfds convert_format --root_data_dir=... --out_file_format=array_record`). ({e})"
        ) from e
    (x_train, y_train), (x_test, y_test) = (
        _read_split(source, image_key, label_key, shape) for source in sources
    )
    mean, std = channel_stats(x_train)
    return images.ArrayDataset(
        name=f"tfds:{name}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


def channel_stats(
    x: np.ndarray, chunk: int = _READ_CHUNK
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, ..., C)`` scaled to [0, 1].

    The sums of pixels and of their squares are exact integers (summed a chunk of images at a
    time, so no wide copy of the dataset is made), so the variance has no cancellation error
    and a constant channel has std exactly 0; it gets std 1, which leaves it centred.
    """
    channels = x.shape[-1]
    total = [0] * channels
    squares = [0] * channels
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].reshape(-1, channels).astype(np.int64)
        total = [t + int(s) for t, s in zip(total, part.sum(axis=0), strict=True)]
        squares = [t + int(s) for t, s in zip(squares, np.square(part).sum(axis=0), strict=True)]
    n = max(x.size // channels, 1)
    mean = tuple(t / n / 255.0 for t in total)
    # Python ints: n * sum(x^2) - sum(x)^2 is exact however large the dataset.
    var = [(n * q - t * t) / (n * n) / 255.0**2 for t, q in zip(total, squares, strict=True)]
    std = tuple(math.sqrt(v) if v > 0 else 1.0 for v in var)
    return mean, std


def _prepared_builder(name: str, data_dir: str | os.PathLike[str] | None) -> Any:
    # Imported here: TFDS takes a moment to import and only this loader needs it.
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir) if data_dir else None
    where = f"data_dir {data_dir}" if data_dir else "TFDS's default data_dir"
    try:
        # A name TFDS does not know is read from the prepared files' metadata alone.
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise files.MissingDataError(
            f"TFDS dataset {name!r} is neither a TFDS dataset name nor prepared in {where}. "
            f"{PREPARE_ADVICE}"
        ) from e
    if not builder.is_prepared():
        raise files.MissingDataError(
            f"TFDS dataset {name!r} is not prepared in {where} (looked for "
            f"{builder.data_path}/dataset_info.json). {PREPARE_ADVICE}"
        )
    return builder


def _feature_keys(builder, image_key: str | None, label_key: str | None) -> tuple[str, str]:
    supervised = builder.info.supervised_keys
    default = ("image", "label")
    if isinstance(supervised, tuple) and len(supervised) == 2:
        if all(isinstance(k, str) for k in supervised):
            default = supervised
    return image_key or default[0], label_key or default[1]


def _check_features(name: str, features, image_key: str, label_key: str) -> tuple[tuple, int]:
    """``(image shape, num_classes)``, or ``ValueError`` if the features do not fit."""
    import tensorflow_datasets as tfds

    keys = sorted(features.keys())
    for key in (image_key, label_key):
        if key not in keys:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {key!r}; its features are {keys}"
            )
    image, label = features[image_key], features[label_key]
    shape = tuple(image.shape)
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f"TFDS dataset {name!r}: feature {label_key!r} is a {type(label).__name__}, not a "
            "ClassLabel; only classification datasets load here"
        )
    if np.dtype(image.np_dtype) != np.uint8 or len(shape) != 3 or None in shape:
        raise ValueError(
            f"TFDS dataset {name!r}: feature {image_key!r} must hold fixed-size uint8 (H, W, C) "
            f"images, got {np.dtype(image.np_dtype)} of shape {shape}"
        )
    return shape, int(label.num_classes)


def _default_test_split(name: str, builder) -> str:
    splits = list(builder.info.splits.keys())
    for split in _TEST_SPLITS:
        if split in splits:
            return split
    raise ValueError(
        f"TFDS dataset {name!r} has none of the splits {_TEST_SPLITS}; its splits are {splits}. "
        "Pass test_split explicitly."
    )


def _read_split(source, image_key: str, label_key: str, shape: tuple):
    """Decodes every example of a data source into ``(uint8 images, int32 labels)``."""
    n = len(source)
    x = np.empty((n, *shape), np.uint8)
    y = np.empty((n,), np.int32)
    for start in range(0, n, _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, n)))
        # __getitems__ is the data sources' batched read: one pass over the ArrayRecord file
        # per chunk instead of one lookup per example.
        for i, example in zip(keys, source.__getitems__(keys), strict=True):
            image = np.asarray(example[image_key])
            if image.shape != shape:
                raise ValueError(
                    f"{source}: example {i} has an image of shape {image.shape}, expected {shape}"
                )
            x[i] = image
            y[i] = example[label_key]
    return x, y
