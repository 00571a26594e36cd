"""The reference MLP family (spec §4.1): Linear, residual Linear blocks, head."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import checks
from uhn_jax.core import descriptors as D
from uhn_jax.models.common import dropout, layer_norm, masked_layer_norm, torch_default_init


@dataclasses.dataclass(frozen=True)
class MLP:
    """Reshape -> Linear -> residual Linear blocks -> head, as in the reference.

    Layer 0 is ``Linear(in -> widths[0])`` with no activation or norm. Each further hidden layer
    ``i`` is ``x + Linear(LN(leaky_relu(x)))`` (activation *before* a non-affine LayerNorm; the
    identity skip is used when the widths match). The head is
    ``Linear(LN(leaky_relu(x)))`` with no skip. ``widths=(128, 128)`` on 28x28 inputs is the
    reference MNIST MLP (``hidden_num=2``): 118,282 parameters.

    Attributes:
      input_shape: shape of one example (flattened on entry).
      num_classes: output width.
      widths: hidden widths; ``len(widths)`` is the reference ``hidden_num``.
      slope: LeakyReLU negative slope.
      dropout_rate: dropout after each Linear, in training only.
      dataset_type: :class:`~uhn_jax.descriptors.DatasetType` for the global descriptor.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    widths: tuple[int, ...] = (128, 128)
    slope: float = 0.1
    dropout_rate: float = 0.0
    dataset_type: int = int(D.DatasetType.MNIST)

    def __post_init__(self):
        checks.positive_shape("MLP input_shape", self.input_shape)
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(
                f"MLP widths must be a non-empty tuple of positive ints, got {self.widths}"
            )
        if self.num_classes < 1:
            raise ValueError(f"MLP num_classes must be positive, got {self.num_classes}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"MLP dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` of every Linear layer."""
        dims = (math.prod(self.input_shape), *self.widths, self.num_classes)
        return tuple(zip(dims[:-1], dims[1:], strict=True))

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def _has_skip(self, i: int) -> bool:
        n_in, n_out = self.sizes[i]
        return 0 < i < len(self.sizes) - 1 and n_in == n_out

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (n_in, n_out) in enumerate(self.sizes):
            first = i == 0
            fields = {
                "bias_type": 1,
                "norm_type": 0 if first else 1,
                "shortcut_type": int(self._has_skip(i)),
                "output_size": n_out,
                "input_size": n_in,
                "activation_type": int(
                    D.ActivationType.NONE if first else D.ActivationType.LEAKY_RELU
                ),
                "activation_param": 0.0 if first else self.slope,
                "dropout_rate": self.dropout_rate,
                "input_pooling_reshape_type": int(
                    D.InputPoolingReshapeType.RESHAPE_TO_2D
                    if first
                    else D.InputPoolingReshapeType.NONE
                ),
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.LINEAR, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        # The reference's MNIST "MLP" is a CNN with zero conv stages, and says so.
        return {
            "model_type": int(D.ModelType.CNN),
            "task_type": int(D.TaskType.IMAGE_CLS),
            "dataset_type": self.dataset_type,
            "cnn_stage_num": 0,
        }

    def init(self, key: jax.Array) -> dict:
        """PyTorch-default init: kernel and bias ``U(+-1/sqrt(fan_in))``."""
        layers = {self.name(i): ((n_in, n_out), n_in) for i, (n_in, n_out) in enumerate(self.sizes)}
        return torch_default_init(key, layers)

    def apply(
        self, params: dict, x: jax.Array, *, train: bool = False, rng=None, masks=None
    ) -> jax.Array:
        """Logits ``(B, num_classes)`` for inputs ``(B, *input_shape)``.

        With ``masks`` (from :meth:`member_masks`) this model, the largest of a family, runs
        as a smaller member whose weights sit in the corners of its tensors (zeros elsewhere):
        LayerNorms use the member's units only, layers past the member's depth are skipped and
        the skips are the member's. The result equals the member's own ``apply``.
        """
        checks.batch_shape("MLP", x, self.input_shape, (math.prod(self.input_shape),))
        h = x.reshape(x.shape[0], -1)
        units = jnp.ones(h.shape[-1], bool)  # the member's units of h
        for i in range(len(self.sizes)):
            p = params[self.name(i)]
            if i == 0:
                y = h
            elif masks is None:
                y = layer_norm(jax.nn.leaky_relu(h, self.slope))
            else:
                y = masked_layer_norm(jax.nn.leaky_relu(h, self.slope), units)
            y = y @ p["kernel"] + p["bias"]
            y = dropout(
                y,
                self.dropout_rate,
                jax.random.fold_in(rng, i) if train and rng is not None else None,
            )
            if masks is None:
                h = h + y if self._has_skip(i) else y
            elif self.sizes[i][0] == self.sizes[i][1]:
                # A square layer: a member may skip over it or not have it at all.
                active = masks["active"][i]
                h = jnp.where(active, jnp.where(masks["skip"][i], h + y, y), h)
                units = jnp.where(active, masks["units"][i][: self.sizes[i][1]], units)
            else:  # the first layer, the head, width changes: every member has these
                h, units = y, masks["units"][i][: self.sizes[i][1]]
        return h

    def layer_map(self, member: MLP) -> dict[str, str]:
        """Where each layer of ``member`` (a shallower/narrower MLP) sits in this model:
        hidden layer ``i`` in layer ``i``, the head in the head."""
        self._check_member(member)
        n = len(member.sizes)
        return {
            member.name(i): self.name(i if i < n - 1 else len(self.sizes) - 1) for i in range(n)
        }

    def member_masks(self, member: MLP) -> dict[str, np.ndarray]:
        """Masks that make this model run as ``member`` (see :meth:`apply`).

        ``units (L, W)``: the member's output units of each layer (the head's are all of the
        classes); ``active (L,)``: layers the member has; ``skip (L,)``: the member's skips.
        """
        self._check_member(member)
        n_layers, width = len(self.sizes), max(n for _, n in self.sizes)
        units = np.zeros((n_layers, width), bool)
        active = np.zeros(n_layers, bool)
        skip = np.zeros(n_layers, bool)
        for i, j in enumerate(int(k.split("_")[1]) for k in self.layer_map(member).values()):
            units[j, : member.sizes[i][1]] = True
            active[j] = True
            skip[j] = member._has_skip(i)
        return {"units": units, "active": active, "skip": skip}

    def _check_member(self, member: MLP) -> None:
        same = (member.input_shape, member.num_classes) == (self.input_shape, self.num_classes)
        fits = len(member.widths) <= len(self.widths) and all(
            m <= w for m, w in zip(member.widths, self.widths, strict=False)
        )
        if not (same and fits):
            raise ValueError(
                f"MLP {member.widths} (input {member.input_shape}, {member.num_classes} classes) "
                f"is not a member of {self.widths} (input {self.input_shape}, "
                f"{self.num_classes} classes)"
            )
