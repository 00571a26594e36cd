"""The reference CNN / ResNet family (spec §4.1): single-conv residual stages and a Linear head."""

from __future__ import annotations

import dataclasses

import jax

from uhn_jax.core import checks
from uhn_jax.core import descriptors as D
from uhn_jax.models.common import check_images, dropout, group_norm, torch_default_init


@dataclasses.dataclass(frozen=True)
class CNN:
    """Stem conv -> stages of single residual convs -> global average pool -> Linear.

    * Layer 0, the stem: ``conv3x3(in -> widths[0])``, no activation or norm.
    * Stage ``s`` (``s = 0 .. len(depths)-1``) has ``depths[s]`` convs of width ``widths[s]``.
      In stage 0 every conv is ``x + conv(GN(leaky_relu(x)))``. Each later stage starts with a
      stride-2 "conv pooling" transition ``conv(GN(leaky_relu(x)))`` with no skip that changes the
      width; its other convs are residual as in stage 0.
    * Head: global average pooling, then ``Linear(widths[-1] -> num_classes)`` with no activation
      or norm.

    Activation comes *before* the norm; GroupNorm has no affine parameters; every conv and the
    Linear have a bias. ``depths=(6, 6, 6), widths=(16, 32, 64)`` is ResNet-20 (269,034 params on
    32x32x3); ``depths=(2, 2, 2)`` on 28x28x1 is the reference MNIST CNN (74,762).

    Attributes:
      input_shape: ``(H, W, C)`` of one example (a 2-D shape gets one channel).
      num_classes: output width.
      depths: convs per stage (the reference's ``cnn_layer_num_per_stage`` per stage).
      widths: channels per stage.
      kernel_size: conv kernel size (odd).
      groups: GroupNorm groups.
      slope: LeakyReLU negative slope.
      dropout_rate: dropout after each conv, in training only.
      dataset_type: :class:`~uhn_jax.descriptors.DatasetType` for the global descriptor.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    depths: tuple[int, ...] = (6, 6, 6)
    widths: tuple[int, ...] = (16, 32, 64)
    kernel_size: int = 3
    groups: int = 4
    slope: float = 0.1
    dropout_rate: float = 0.0
    dataset_type: int = int(D.DatasetType.CIFAR10)

    def __post_init__(self):
        checks.positive_shape("CNN input_shape", self.input_shape)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(f"CNN input_shape must be (H, W) or (H, W, C), got {self.input_shape}")
        if not self.depths or len(self.depths) != len(self.widths):
            raise ValueError(
                f"CNN depths {self.depths} and widths {self.widths} must be non-empty and of "
                "equal length (one entry per stage)"
            )
        if any(d < 1 for d in self.depths) or any(w < 1 for w in self.widths):
            raise ValueError(
                f"CNN depths and widths must be positive: {self.depths}, {self.widths}"
            )
        if any(w % self.groups for w in self.widths):
            raise ValueError(f"CNN widths {self.widths} must be divisible by groups={self.groups}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"CNN kernel_size must be odd and positive, got {self.kernel_size}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"CNN dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def in_channels(self) -> int:
        return self.input_shape[2] if len(self.input_shape) == 3 else 1

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def convs(self) -> tuple[tuple[int, int, int, bool], ...]:
        """``(in, out, stride, residual)`` of every conv, stem first."""
        out = [(self.in_channels, self.widths[0], 1, False)]
        for s, (depth, width) in enumerate(zip(self.depths, self.widths, strict=True)):
            for j in range(depth):
                prev = out[-1][1]
                if s > 0 and j == 0:
                    out.append((prev, width, 2, False))  # conv-pooling transition
                else:
                    out.append((prev, width, 1, True))
        return tuple(out)

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (c_in, c_out, stride, residual) in enumerate(self.convs()):
            stem = i == 0
            fields = {
                "bias_type": 1,
                "norm_type": 0 if stem else 1,
                "shortcut_type": int(residual),
                "output_size": c_out,
                "input_size": c_in,
                "activation_type": int(
                    D.ActivationType.NONE if stem else D.ActivationType.LEAKY_RELU
                ),
                "activation_param": 0.0 if stem else self.slope,
                "dropout_rate": self.dropout_rate,
                "group_num": 0 if stem else self.groups,
                "kernel_size": self.kernel_size,
                "stage_wise_pooling_type": int(
                    D.StageWisePoolingType.CONV_POOLING
                    if stride == 2
                    else D.StageWisePoolingType.NONE
                ),
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.CONV, tuple(fields.items())))
        head = {
            "bias_type": 1,
            "output_size": self.num_classes,
            "input_size": self.widths[-1],
            "dropout_rate": self.dropout_rate,
            "input_pooling_reshape_type": int(D.InputPoolingReshapeType.AVG_POOLING),
            "initialization_type": int(D.InitializationType.DEFAULT),
        }
        specs.append(D.LayerSpec(self.name(len(specs)), D.LayerType.LINEAR, tuple(head.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.CNN),
            "task_type": int(D.TaskType.IMAGE_CLS),
            "dataset_type": self.dataset_type,
            "cnn_stage_num": len(self.depths) + 1,  # the stem counts as stage 0
        }

    def init(self, key: jax.Array) -> dict:
        """PyTorch-default init: kernel and bias ``U(+-1/sqrt(fan_in))``."""
        k = self.kernel_size
        shapes = [((k, k, c_in, c_out), c_in * k * k) for c_in, c_out, _, _ in self.convs()]
        shapes.append(((self.widths[-1], self.num_classes), self.widths[-1]))
        return torch_default_init(key, {self.name(i): s for i, s in enumerate(shapes)})

    def apply(self, params: dict, x: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
        """Logits ``(B, num_classes)`` for inputs ``(B, H, W[, C])``."""
        check_images("CNN", x, self.input_shape)
        h = x if x.ndim == 4 else x[..., None]
        pad = self.kernel_size // 2
        convs = self.convs()
        for i, (_, _, stride, residual) in enumerate(convs):
            p = params[self.name(i)]
            y = h if i == 0 else group_norm(jax.nn.leaky_relu(h, self.slope), self.groups)
            y = (
                jax.lax.conv_general_dilated(
                    y,
                    p["kernel"],
                    (stride, stride),
                    [(pad, pad), (pad, pad)],
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
                + p["bias"]
            )
            use_rng = train and rng is not None
            y = dropout(y, self.dropout_rate, jax.random.fold_in(rng, i) if use_rng else None)
            h = h + y if residual else y
        head = params[self.name(len(convs))]
        return h.mean(axis=(1, 2)) @ head["kernel"] + head["bias"]
