"""What IGPG's prior is conditioned on: a dataset (a set encoding of some of its training
images), a task (its number of classes) and an architecture (family, input shape, activation
slope and every params leaf's shape), as fixed-size numpy arrays (:class:`Conditioner`).

The dataset encoding reads images, not names, so a dataset the prior never trained on still
gets one: each image is averaged over its channels, resized to ``12 x 12``, standardised, and
sent through a fixed random feature map (a seeded ``[144, 64]`` projection and a ReLU); the
encoding is the mean and the standard deviation of the features over the set
(:func:`image_set_features`, ``2 x 64`` values). The architecture is a family index (into the
families the prior knows) with a feature vector, and one descriptor per params leaf (its kind,
rank and log sizes), in layout order, padded to ``max_layers``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import layouts

#: Side of the resized images the dataset encoder reads.
IMAGE_SIDE = 12
#: Random features per image; the dataset encoding is their mean and standard deviation.
IMAGE_FEATURES = 64
DATA_FEATURES = 2 * IMAGE_FEATURES
TASK_FEATURES = 2
#: ``log2`` of height, width and channels, the activation slope and the number of leaves.
ARCH_FEATURES = 5
#: Kernel, bias, other, conv (rank 4), then ``log2`` of up to 4 dims and of the size.
LEAF_FEATURES = 9


def image_set_features(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The set encoding ``float32 [DATA_FEATURES]`` of images ``x [n, H, W(, C)]``.

    Raises:
      ValueError: for an empty set or images that are not ``[n, H, W]`` or ``[n, H, W, C]``.
    """
    x = np.asarray(x, np.float32)
    if x.ndim not in (3, 4) or not len(x):
        raise ValueError(
            f"image_set_features needs a non-empty set of images [n, H, W(, C)], got shape "
            f"{x.shape}"
        )
    gray = x.mean(-1) if x.ndim == 4 else x
    small = jax.image.resize(jnp.asarray(gray), (len(x), IMAGE_SIDE, IMAGE_SIDE), "linear")
    flat = np.asarray(small).reshape(len(x), -1)
    flat = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)
    proj = np.random.default_rng(seed).normal(size=(flat.shape[1], IMAGE_FEATURES))
    feats = np.maximum(flat @ (proj / math.sqrt(flat.shape[1])), 0.0)
    return np.concatenate([feats.mean(0), feats.std(0)]).astype(np.float32)


def task_features(num_classes: int) -> np.ndarray:
    """``float32 [TASK_FEATURES]`` of a classification task with ``num_classes`` classes."""
    return np.asarray([math.log2(num_classes) / 8, num_classes / 100], np.float32)


def leaf_features(leaf: layouts.Leaf) -> np.ndarray:
    """``float32 [LEAF_FEATURES]`` of one params leaf."""
    name = leaf.keys[-1]
    dims = [math.log2(d) / 12 for d in leaf.shape][:4]
    dims += [0.0] * (4 - len(dims))
    kind = [float(name == "kernel"), float(name == "bias"), float(name not in ("kernel", "bias"))]
    return np.asarray(
        [*kind, float(len(leaf.shape) == 4), *dims, math.log2(leaf.size) / 20], np.float32
    )


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the prior reads of an architecture: the family, one example's input shape, the
    activation slope and the params layout."""

    family: str
    input_shape: tuple[int, ...]
    slope: float
    layout: layouts.Layout


@dataclasses.dataclass(frozen=True, eq=False)
class Conditioner:
    """Builds the prior's condition arrays; knows its ``families`` (indices of the family
    embedding) and the datasets it has image encodings of (``data``)."""

    families: tuple[str, ...]
    data: Mapping[str, np.ndarray]
    max_layers: int

    def dataset(self, name: str) -> np.ndarray:
        """The image-set encoding of dataset ``name``.

        Raises:
          ValueError: naming the dataset when it has no encoding here.
        """
        if name not in self.data:
            raise ValueError(
                f"unknown dataset {name!r}: the prior has image encodings of "
                f"{', '.join(sorted(self.data)) or 'no dataset'}; encode some of its training "
                "images with conditioning.image_set_features and add them"
            )
        return self.data[name]

    def family(self, family: str) -> int:
        """The index of ``family`` in the family embedding.

        Raises:
          ValueError: naming the family when the prior was never trained on it (it has no
            fallback embedding for an unseen family).
        """
        if family not in self.families:
            raise ValueError(
                f"the prior cannot encode architecture family {family!r}: it was trained on "
                f"{', '.join(self.families)} only, and has no embedding for another family"
            )
        return self.families.index(family)

    def arch(self, a: Architecture) -> dict[str, np.ndarray]:
        """``{family, arch, leaves, leaf_mask}`` of an architecture.

        Raises:
          ValueError: for an unknown family or more leaves than ``max_layers``, naming them.
        """
        leaves = a.layout.leaves
        if len(leaves) > self.max_layers:
            raise ValueError(
                f"the prior cannot encode a {a.family} of {len(leaves)} params leaves: its "
                f"max_layers is {self.max_layers}"
            )
        shape = tuple(a.input_shape) + (1,) * (3 - len(a.input_shape))
        feats = [math.log2(d) / 6 for d in shape[:3]] + [a.slope, len(leaves) / self.max_layers]
        table = np.zeros((self.max_layers, LEAF_FEATURES), np.float32)
        table[: len(leaves)] = [leaf_features(x) for x in leaves]
        return {
            "family": np.asarray(self.family(a.family), np.int32),
            "arch": np.asarray(feats, np.float32),
            "leaves": table,
            "leaf_mask": np.arange(self.max_layers) < len(leaves),
        }

    def condition(self, dataset: str, num_classes: int, a: Architecture) -> dict[str, Any]:
        """Every condition array of one (dataset, task, architecture)."""
        return {
            "data": self.dataset(dataset),
            "task": task_features(num_classes),
            **self.arch(a),
        }


def stack(conds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Condition dicts stacked along a new leading (batch) axis."""
    return {k: np.stack([c[k] for c in conds]) for k in conds[0]}
