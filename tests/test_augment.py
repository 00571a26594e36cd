"""Tests for uhn_jax.data.augment: on-device CIFAR augmentation and normalisation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax.data import augment, cifar

MEAN, STD = cifar.CIFAR10_MEAN, cifar.CIFAR10_STD
BATCH = 512

# Jitted once per shape: op-by-op eager dispatch would compile every primitive separately and
# take seconds. augment_cifar's own jit compatibility is tested below with a fresh jit.
_augment = jax.jit(augment.augment_cifar, static_argnames="pad")
_augment_params = jax.jit(augment._augment_params, static_argnums=(1, 2))
_augment_with_params = jax.jit(augment._augment_with_params, static_argnames="pad")
_normalize = jax.jit(augment.normalize_images)


def _images(batch: int = BATCH, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _numpy_normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)


def _numpy_augment(images, offsets, flips, pad=4):
    """Straightforward per-image reference: reflect-pad, crop, flip, normalise."""
    _, height, width, _ = images.shape
    out = []
    for image, (row, col), flip in zip(images, np.asarray(offsets), np.asarray(flips), strict=True):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        crop = padded[row : row + height, col : col + width]
        out.append(crop[:, ::-1] if flip else crop)
    return _numpy_normalize(np.stack(out))


def _with_params(images, offsets, flips, pad=4):
    offsets = jnp.asarray(offsets, jnp.int32)
    flips = jnp.asarray(flips, bool)
    return np.asarray(
        augment._augment_with_params(jnp.asarray(images), offsets, flips, MEAN, STD, pad)
    )


def test_shape_dtype_and_determinism():
    images = _images()
    key = jax.random.key(0)
    out = _augment(key, images, MEAN, STD)
    assert out.shape == (BATCH, 32, 32, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, _augment(key, images, MEAN, STD))
    other = _augment(jax.random.key(1), images, MEAN, STD)
    assert not np.array_equal(out, other)


def test_matches_numpy_reference_with_replayed_params():
    images = _images(seed=1)
    key = jax.random.key(3)
    offsets, flips = _augment_params(key, len(images))
    out = _augment(key, images, MEAN, STD)
    np.testing.assert_allclose(out, _numpy_augment(images, offsets, flips), rtol=1e-5, atol=1e-5)


def test_centred_crop_without_flip_is_the_normalised_input():
    images = _images(seed=2)
    key = jax.random.key(4)
    offsets, flips = map(np.asarray, _augment_params(key, len(images)))
    identity = np.flatnonzero((offsets == 4).all(axis=1) & ~flips)
    assert identity.size > 0  # about 1 in 162 images
    out = np.asarray(_augment(key, images, MEAN, STD))
    expected = np.asarray(_normalize(images, MEAN, STD))[identity]
    np.testing.assert_allclose(out[identity], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(expected, _numpy_normalize(images[identity]), rtol=1e-5, atol=1e-5)


def test_flip_only_mirrors_columns():
    images = _images(2, seed=5)
    out = _with_params(images, [[4, 4], [4, 4]], [True, False])
    np.testing.assert_allclose(out[0], _numpy_normalize(images[0, :, ::-1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], _numpy_normalize(images[1]), rtol=1e-5, atol=1e-5)


def test_borders_are_reflect_padded_not_zero():
    # Every pixel is >= 100, so zero padding would show up as values far below the minimum.
    images = np.random.default_rng(6).integers(100, 256, (1, 32, 32, 3), dtype=np.uint8)
    image = images[0]
    top_left = _with_params(images, [[0, 0]], [False])[0]
    bottom_right = _with_params(images, [[8, 8]], [False])[0]
    floor = _numpy_normalize(np.full((1, 1, 1, 3), 100, np.uint8))[0, 0, 0]
    assert (top_left >= floor - 1e-5).all() and (bottom_right >= floor - 1e-5).all()
    # numpy "reflect": padded row 0 is image row 4 (the edge row is not repeated).
    np.testing.assert_allclose(
        top_left[:4, :4], _numpy_normalize(image[None, 4:0:-1, 4:0:-1])[0], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        bottom_right[-4:, -4:],
        _numpy_normalize(image[None, -2:-6:-1, -2:-6:-1])[0],
        rtol=1e-5,
        atol=1e-5,
    )
    # The interior is the shifted image.
    np.testing.assert_allclose(
        top_left[4:, 4:], _numpy_normalize(image[None, :28, :28])[0], rtol=1e-5, atol=1e-5
    )


def test_offsets_and_flips_are_independent_per_image_and_cover_the_range():
    offsets, flips = map(np.asarray, _augment_params(jax.random.key(7), 4096))
    assert offsets.shape == (4096, 2) and flips.shape == (4096,) and flips.dtype == bool
    for axis in range(2):
        np.testing.assert_array_equal(np.unique(offsets[:, axis]), np.arange(9))
    assert 0.45 < flips.mean() < 0.55
    # Row and column offsets are drawn independently of each other.
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.05


def test_normalize_images_matches_numpy():
    images = _images(seed=8)
    out = _normalize(images, MEAN, STD)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, _numpy_normalize(images), rtol=1e-5, atol=1e-5)


def test_jit_traces_once_without_host_callbacks():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, images):
        return augment.augment_cifar(key, images, MEAN, STD)

    outs = [step(jax.random.key(i), _images(seed=i)) for i in range(4)]
    expected = _augment(jax.random.key(2), _images(seed=2), MEAN, STD)
    # Different fusion can change the last float bit, hence allclose.
    np.testing.assert_allclose(outs[2], expected, rtol=1e-6, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(step)(jax.random.key(0), _images()))
    assert "callback" not in jaxpr


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32, 3), np.uint8), r"\(B, H, W, C\)"),
        (np.zeros((2, 32, 32, 1), np.uint8), "1 values"),
    ],
)
def test_rejects_bad_inputs(images, match):
    with pytest.raises(ValueError, match=match):
        augment.augment_cifar(jax.random.key(0), images, MEAN, STD)
