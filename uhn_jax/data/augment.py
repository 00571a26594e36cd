"""On-device image augmentation and normalisation of uint8 pixels; pure jax, jit-compatible."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


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
