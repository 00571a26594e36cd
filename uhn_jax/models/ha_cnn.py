"""Ha et al.'s small MNIST CNN (HyperNetworks, 2016, section 4.1) as a functional base model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uhn_jax.core import checks
from uhn_jax.core import descriptors as D
from uhn_jax.models.common import check_images, torch_default_init


def conv_many(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolutions of ``M`` networks, each with its own kernel and images.

    ``h [M, n, H, W, C]`` and ``kernel [M, k, k, C, O]`` (odd ``k``) give ``[M, n, H, W, O]``, as
    a sum over the ``k²`` kernel offsets of batched matmuls. XLA's CPU backend runs a vmapped
    ``conv_general_dilated`` with a kernel per network as a grouped convolution, which on 32
    networks of Deutsch et al.'s MNIST CNN was 60x slower than this form (and ``lax.map`` over
    the networks 3.6x slower).
    """
    _, _, height, width, _ = h.shape
    k = kernel.shape[1]
    pad = k // 2
    padded = jnp.pad(h, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = 0.0
    for dy in range(k):
        for dx in range(k):
            window = padded[:, :, dy : dy + height, dx : dx + width, :]
            out = out + jnp.einsum("mnhwc,mco->mnhwo", window, kernel[:, dy, dx])
    return out


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (VALID: an odd last row/column is dropped)."""
    return jax.lax.reduce_window(x_BHWC, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@dataclasses.dataclass(frozen=True)
class HaCNN:
    """conv(k x k, 1 -> C), ReLU, maxpool 2, conv(k x k, C -> C2), ReLU, maxpool 2, then
    optional hidden Linear + ReLU layers, then a Linear head.

    Both convs use SAME padding and have a bias; the head flattens the ``(H/4, W/4, C)`` map.
    With the defaults (``28 x 28`` inputs, ``C = 16``, ``k = 7``, 10 classes) the layers are

    ===========  ======================  ========
    layer        kernel                  params
    ===========  ======================  ========
    layer_000    (7, 7, 1, 16) + 16         800
    layer_001    (7, 7, 16, 16) + 16     12,560
    layer_002    (784, 10) + 10           7,850
    ===========  ======================  ========

    21,210 in all; ``layer_001``'s 12,544-weight kernel is the one Ha et al.'s static
    hypernetwork generates (:mod:`uhn_jax.hypernets.static`). With ``channels=32,
    channels_2=16, kernel_size=5, hidden=(8,)`` it is Deutsch et al.'s MNIST target network
    (832 + 12,816 + 6,280 + 90 = 20,018 weights).

    The model is a plain chain of ReLU layers (``gauge_chain``): scaling a filter and unscaling
    the next layer's matching input leaves its function unchanged, which
    :func:`uhn_jax.hypernets.diverse.gauge_fix` relies on.

    Init is PyTorch's default for ``nn.Conv2d``/``nn.Linear`` (what the paper's reference
    implementations use): kernel and bias ``U(+-1/sqrt(fan_in))``, ``fan_in = in * k * k`` for a
    conv, so each kernel's std is ``1/sqrt(3 * fan_in)``.

    Attributes:
      input_shape: ``(H, W)`` or ``(H, W, C)`` of one example; H and W divisible by 4.
      num_classes: output width.
      channels: channels of the first conv (and of the second when ``channels_2`` is 0; the
        paper's 16).
      channels_2: channels of the second conv (0 = ``channels``).
      hidden: widths of the ReLU Linear layers between the convs and the head.
      kernel_size: conv kernel size (the paper's 7; odd).
      dataset_type: :class:`~uhn_jax.core.descriptors.DatasetType` for the global descriptor.
    """

    input_shape: tuple[int, ...] = (28, 28)
    num_classes: int = 10
    channels: int = 16
    kernel_size: int = 7
    dataset_type: int = int(D.DatasetType.MNIST)
    channels_2: int = 0
    hidden: tuple[int, ...] = ()

    #: A chain of ReLU layers with max-pools: the filter-scale symmetry holds.
    gauge_chain = True

    def __post_init__(self):
        checks.positive_shape("HaCNN input_shape", self.input_shape)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(
                f"HaCNN input_shape must be (H, W) or (H, W, C), got {self.input_shape}"
            )
        if self.input_shape[0] % 4 or self.input_shape[1] % 4:
            raise ValueError(
                f"HaCNN input_shape {self.input_shape}: H and W must be divisible by 4 (two 2x2 "
                "max-pools)"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"HaCNN kernel_size must be odd and positive, got {self.kernel_size}")
        if min(self.channels, self.num_classes, *self.hidden, 1) < 1 or self.channels_2 < 0:
            raise ValueError(
                f"HaCNN channels, hidden widths and num_classes must be positive, got "
                f"{self.channels}, {self.channels_2}, {self.hidden}, {self.num_classes}"
            )

    @property
    def in_channels(self) -> int:
        return self.input_shape[2] if len(self.input_shape) == 3 else 1

    @property
    def flat_features(self) -> int:
        """Width of the flattened feature map the head reads."""
        return (self.input_shape[0] // 4) * (self.input_shape[1] // 4) * self.convs()[1][1]

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def convs(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` channels of the two convs."""
        second = self.channels_2 or self.channels
        return ((self.in_channels, self.channels), (self.channels, second))

    def dense(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` of the Linear layers after the convs, the head last."""
        sizes = (self.flat_features, *self.hidden, self.num_classes)
        return tuple(zip(sizes[:-1], sizes[1:], strict=True))

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (c_in, c_out) in enumerate(self.convs()):
            fields = {
                "bias_type": 1,
                "output_size": c_out,
                "input_size": c_in,
                # ReLU is the LeakyReLU of slope 0.
                "activation_type": int(D.ActivationType.LEAKY_RELU),
                "activation_param": 0.0,
                "kernel_size": self.kernel_size,
                "stage_wise_pooling_type": int(D.StageWisePoolingType.MAX),
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.CONV, tuple(fields.items())))
        for j, (d_in, d_out) in enumerate(self.dense()):
            fields = {
                "bias_type": 1,
                "output_size": d_out,
                "input_size": d_in,
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            if j == 0:
                fields["input_pooling_reshape_type"] = int(D.InputPoolingReshapeType.RESHAPE_TO_2D)
            if j < len(self.hidden):
                fields["activation_type"] = int(D.ActivationType.LEAKY_RELU)
                fields["activation_param"] = 0.0
            name = self.name(2 + j)
            specs.append(D.LayerSpec(name, D.LayerType.LINEAR, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.CNN),
            "task_type": int(D.TaskType.IMAGE_CLS),
            "dataset_type": self.dataset_type,
            "cnn_stage_num": 2,
        }

    def init(self, key: jax.Array) -> dict:
        """PyTorch-default init: kernel and bias ``U(+-1/sqrt(fan_in))``."""
        k = self.kernel_size
        shapes = [((k, k, c_in, c_out), c_in * k * k) for c_in, c_out in self.convs()]
        shapes += [((d_in, d_out), d_in) for d_in, d_out in self.dense()]
        return torch_default_init(key, {self.name(i): s for i, s in enumerate(shapes)})

    def apply(self, params: dict, x: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
        """Logits ``(B, num_classes)`` for inputs ``(B, H, W[, C])``; ``train`` and ``rng`` are
        accepted for the base-model interface and unused (no dropout)."""
        del train, rng
        check_images("HaCNN", x, self.input_shape)
        h = x if x.ndim == 4 else x[..., None]
        pad = self.kernel_size // 2
        for i in range(2):
            p = params[self.name(i)]
            h = jax.lax.conv_general_dilated(
                h,
                p["kernel"],
                (1, 1),
                [(pad, pad), (pad, pad)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            h = max_pool_2x2(jax.nn.relu(h + p["bias"]))
        h = h.reshape(h.shape[0], -1)
        for j in range(len(self.hidden) + 1):
            p = params[self.name(2 + j)]
            h = h @ p["kernel"] + p["bias"]
            if j < len(self.hidden):
                h = jax.nn.relu(h)
        return h

    def apply_many(self, params: dict, x: jax.Array) -> jax.Array:
        """Logits ``[M, n, num_classes]`` of ``M`` networks (params stacked on a leading axis),
        network ``m`` on its own inputs ``x[m]`` (``[M, n, H, W[, C]]``); see
        :func:`conv_many`."""
        h = x if x.ndim == 5 else x[..., None]
        m, n = h.shape[:2]
        for i in range(2):
            p = params[self.name(i)]
            out = jax.nn.relu(conv_many(h, p["kernel"]) + p["bias"][:, None, None, None, :])
            pooled = max_pool_2x2(out.reshape(m * n, *out.shape[2:]))
            h = pooled.reshape(m, n, *pooled.shape[1:])
        h = h.reshape(m, n, -1)
        for j in range(len(self.hidden) + 1):
            p = params[self.name(2 + j)]
            h = jnp.einsum("mbi,mio->mbo", h, p["kernel"]) + p["bias"][:, None]
            if j < len(self.hidden):
                h = jax.nn.relu(h)
        return h
