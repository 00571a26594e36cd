"""The library's model families, registered under the names configs use (``model.family``)."""

from __future__ import annotations

import jax.numpy as jnp

from uhn_jax.models import hyperlstm
from uhn_jax.models.cnn import CNN
from uhn_jax.models.flax_adapter import FlaxModel
from uhn_jax.models.gnn import GAT, GCN
from uhn_jax.models.ha_cnn import HaCNN
from uhn_jax.models.kan import KAN
from uhn_jax.models.mlp import MLP
from uhn_jax.models.registry import register_family
from uhn_jax.models.transformer import Transformer


def _image_common(m, dataset, dataset_type: int) -> dict:
    return dict(
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        widths=m.widths,
        slope=m.slope,
        dropout_rate=m.dropout_rate,
        dataset_type=dataset_type,
    )


def mlp(m, dataset, dataset_type: int) -> MLP:
    """The reference MLP on an image dataset."""
    return MLP(**_image_common(m, dataset, dataset_type))


def cnn(m, dataset, dataset_type: int) -> CNN:
    """The reference CNN / ResNet on an image dataset."""
    return CNN(
        **_image_common(m, dataset, dataset_type),
        depths=m.depths,
        kernel_size=m.kernel_size,
        groups=m.groups,
    )


def ha_cnn(m, dataset, dataset_type: int) -> HaCNN:
    """Ha et al.'s small MNIST CNN: two k x k convs of ``widths`` channels (one width for
    both, or two), ``head_hidden`` ReLU Linear layers, then a Linear head."""
    if len(m.widths) not in (1, 2):
        raise ValueError(
            f"model.widths for ha_cnn is (channels,) or (conv1, conv2), got {m.widths}"
        )
    return HaCNN(
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        channels=m.widths[0],
        kernel_size=m.kernel_size,
        dataset_type=dataset_type,
        channels_2=m.widths[-1],
        hidden=tuple(m.head_hidden),
    )


def gcn(m, dataset, dataset_type: int) -> GCN:
    """GCN on a graph's node features."""
    return GCN(
        num_features=dataset.x.shape[1],
        num_classes=dataset.num_classes,
        hidden=m.widths,
        dropout_rate=m.dropout_rate,
        slope=m.slope,
        dataset_type=dataset_type,
    )


def gat(m, dataset, dataset_type: int) -> GAT:
    """GAT on a graph's node features."""
    return GAT(
        num_features=dataset.x.shape[1],
        num_classes=dataset.num_classes,
        hidden=m.widths[0],
        heads=m.num_heads,
        output_heads=m.output_heads,
        dropout_rate=m.dropout_rate,
        attention_dropout=m.attention_dropout,
        dataset_type=dataset_type,
    )


def transformer(m, dataset, dataset_type: int) -> Transformer:
    """The text Transformer over a tokenised dataset; ``m.max_positions`` rows of positions
    (0: the data's sequence length)."""
    length = dataset.x_train.shape[1]
    if m.max_positions and m.max_positions < length:
        raise ValueError(
            f"model.max_positions is {m.max_positions} but the data's sequences have {length} "
            "positions (data.max_len): the positional table needs a row for each"
        )
    return Transformer(
        vocab_size=len(dataset.vocab),
        max_len=m.max_positions or length,
        num_classes=dataset.num_classes,
        embed_dim=m.embed_dim,
        num_encoders=m.num_encoders,
        num_heads=m.num_heads,
        linears_per_encoder=m.linears_per_encoder,
        dropout_rate=m.dropout_rate,
        slope=m.slope,
        dataset_type=dataset_type,
    )


def kan(m, dataset, dataset_type: int) -> KAN:
    """The KAN of a formula-regression dataset."""
    return KAN(
        in_features=dataset.d_in,
        out_features=dataset.d_out,
        hidden=m.widths,
        grid_size=m.grid_size,
        spline_order=m.spline_order,
        dataset_type=dataset_type,
    )


def char_lm(cell: str):
    """The character language model with ``cell`` (``lstm``, ``layernorm_lstm``,
    ``hyperlstm``), ``widths[0]`` hidden units, as a :class:`FlaxModel`."""

    def build(m, dataset, dataset_type: int) -> FlaxModel:
        module = hyperlstm.CharLM(
            vocab_size=dataset.num_classes,
            features=m.widths[0],
            cell=cell,
            embed_dim=m.embed_dim,
        )
        example = jnp.zeros((1, dataset.x_train.shape[1]), jnp.int32)
        return FlaxModel.from_linen(module, example, global_fields={"dataset_type": dataset_type})

    return build


for _name, _build in (
    ("mlp", mlp),
    ("cnn", cnn),
    ("ha_cnn", ha_cnn),
    ("gcn", gcn),
    ("gat", gat),
    ("transformer", transformer),
    ("kan", kan),
    ("lstm", char_lm("lstm")),
    ("layernorm_lstm", char_lm("layernorm_lstm")),
    ("hyperlstm", char_lm("hyperlstm")),
):
    register_family(_name, _build)
