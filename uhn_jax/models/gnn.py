"""The reference graph base models (spec §4.2): a 2-layer GCN and a 2-layer GAT on jraph graphs.

Both models take a :class:`jraph.GraphsTuple` whose ``nodes`` are the node features
``(N, F)`` and whose ``senders``/``receivers`` list the directed edges *without* self loops
(an undirected graph lists each edge once per direction, as
:class:`uhn_jax.graph_data.GraphData` does). The models add one self loop per node
themselves, so every node attends to, and is normalised with, itself. ``edges`` and
``globals`` are ignored. The output is node logits ``(N, num_classes)``. Every shape is
static given the graph's shapes, so ``apply`` can be jitted with the graph as an argument.

Message passing follows the PyG convention of the reference: an edge ``j -> i`` has sender
``j`` and receiver ``i``, and messages are summed into receivers.

Params tree ``{layer_NNN: {tensor: array}}``; the spec's PyTorch tensors map to ours as
(PARAM_TYPE: spec tensor, PyTorch shape -> our name, our shape):

- GCN 0: W, (out, in) -> ``kernel``, ``(in, out)``; 1: b, (out,) -> ``bias``, ``(out,)``.
- GAT 0: W, (heads*out, in) -> ``kernel``, ``(in, heads*out)``; 1: b -> ``bias``,
  ``(heads*out,)`` when heads are concatenated or ``(out,)`` when averaged; 2: att_src,
  (1, heads, out) -> ``att_src``, ``(heads*out,)``; 3: att_dst -> ``att_dst``,
  ``(heads*out,)``. The ``heads*out`` axes are head-major (head ``h`` owns entries
  ``h*out .. h*out+out-1``), matching the reference's ``output_idx`` numbering.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from uhn_jax.core import descriptors as D
from uhn_jax.models.common import dropout

# ----------------------------------------------------------------------------- graph helpers


def graphs_tuple(graph: Any) -> jraph.GraphsTuple:
    """Wraps a :class:`~uhn_jax.graph_data.GraphData` as a one-graph :class:`jraph.GraphsTuple`.

    Args:
      graph: anything with ``x`` (N, F), ``senders`` and ``receivers`` (E,) arrays.

    Returns:
      A GraphsTuple with ``nodes=x`` and the edge list unchanged (no self loops added);
      ``edges`` and ``globals`` are None.
    """
    x = jnp.asarray(graph.x)
    senders = jnp.asarray(graph.senders, jnp.int32)
    receivers = jnp.asarray(graph.receivers, jnp.int32)
    return jraph.GraphsTuple(
        nodes=x,
        edges=None,
        senders=senders,
        receivers=receivers,
        n_node=np.asarray([x.shape[0]], np.int32),
        n_edge=np.asarray([senders.shape[0]], np.int32),
        globals=None,
    )


def add_self_loops(
    senders_E: jax.Array, receivers_E: jax.Array, num_nodes: int
) -> tuple[jax.Array, jax.Array]:
    """Appends one self loop ``i -> i`` per node to an edge list without self loops.

    Args:
      senders_E: sender of each edge.
      receivers_E: receiver of each edge.
      num_nodes: N, a static int.

    Returns:
      ``(senders, receivers)`` of length ``E + N``; the loops come last, in node order.
    """
    loops = jnp.arange(num_nodes, dtype=senders_E.dtype)
    return jnp.concatenate([senders_E, loops]), jnp.concatenate([receivers_E, loops])


def gcn_edge_weights(senders_E: jax.Array, receivers_E: jax.Array, num_nodes: int) -> jax.Array:
    """Symmetric GCN normalisation ``1 / sqrt(deg(j) deg(i))`` of every edge ``j -> i``.

    The degree of a node is the number of edges it receives, so pass the edge list *with*
    self loops to get ``D^-1/2 (A + I) D^-1/2``. On a symmetric edge list this is the usual
    symmetric normalisation; on a directed one it uses in-degrees at both ends, as PyG's
    ``gcn_norm`` does.

    Args:
      senders_E: sender of each edge.
      receivers_E: receiver of each edge.
      num_nodes: N, a static int.

    Returns:
      Edge weights ``(E,)``; a node that receives no edge gets degree 0 and its outgoing
      edges weight 0 rather than inf.
    """
    deg_N = jax.ops.segment_sum(
        jnp.ones(receivers_E.shape, jnp.float32), receivers_E, num_segments=num_nodes
    )
    inv_sqrt_N = jnp.where(deg_N > 0, jax.lax.rsqrt(jnp.maximum(deg_N, 1.0)), 0.0)
    return inv_sqrt_N[senders_E] * inv_sqrt_N[receivers_E]


def gat_attention(
    z_NHD: jax.Array,
    att_src_HD: jax.Array,
    att_dst_HD: jax.Array,
    senders_E: jax.Array,
    receivers_E: jax.Array,
    negative_slope: float,
) -> jax.Array:
    """GAT attention coefficients of every edge and head, normalised over each receiver.

    For an edge ``j -> i`` and head ``h`` the logit is
    ``LeakyReLU(att_src[h] . z[j, h] + att_dst[h] . z[i, h])``; a softmax over the edges
    that ``i`` receives turns the logits into coefficients.

    Args:
      z_NHD: projected node features ``(N, heads, D)``.
      att_src_HD: sender attention vectors ``(heads, D)``.
      att_dst_HD: receiver attention vectors ``(heads, D)``.
      senders_E: sender of each edge (self loops included by the caller).
      receivers_E: receiver of each edge.
      negative_slope: LeakyReLU slope of the logits.

    Returns:
      Coefficients ``(E, heads)`` summing to one over the edges of each receiver.
    """
    src_NH = jnp.einsum("nhd,hd->nh", z_NHD, att_src_HD)
    dst_NH = jnp.einsum("nhd,hd->nh", z_NHD, att_dst_HD)
    logits_EH = jax.nn.leaky_relu(src_NH[senders_E] + dst_NH[receivers_E], negative_slope)
    return jraph.segment_softmax(logits_EH, receivers_E, num_segments=z_NHD.shape[0])


def _glorot_uniform(key: jax.Array, shape: tuple[int, ...], fan_sum: int) -> jax.Array:
    # U(+-sqrt(6 / fan_sum)) has std sqrt(2 / fan_sum), the descriptors' target.
    bound = math.sqrt(6.0 / fan_sum)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _check_graph(graph: jraph.GraphsTuple, num_features: int, model: str) -> None:
    nodes = graph.nodes
    if nodes is None or getattr(nodes, "ndim", 0) != 2 or nodes.shape[1] != num_features:
        shape = None if nodes is None else getattr(nodes, "shape", type(nodes).__name__)
        raise ValueError(
            f"{model} expects graph.nodes of shape (num_nodes, {num_features}), got {shape}"
        )
    if graph.senders is None or graph.receivers is None:
        raise ValueError(f"{model} needs graph.senders and graph.receivers (an edge list)")
    if graph.senders.shape != graph.receivers.shape or graph.senders.ndim != 1:
        raise ValueError(
            f"{model}: senders {graph.senders.shape} and receivers {graph.receivers.shape} "
            "must be 1-D arrays of the same length"
        )


def _layer_rngs(rng: jax.Array | None, train: bool, i: int, n: int) -> tuple:
    """``n`` dropout keys for layer ``i``, or ``n`` Nones outside training."""
    if not train or rng is None:
        return (None,) * n
    return tuple(jax.random.split(jax.random.fold_in(rng, i), n))


def _check_rate(model: str, name: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{model} {name} must be in [0, 1), got {rate}")


def _check_positive(model: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{model} {name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------- GCN


@dataclasses.dataclass(frozen=True)
class GCN:
    """Graph convolutional network ``F -> *hidden -> C`` with pre-activation layers.

    Each layer computes ``A_hat @ (dropout(act(h)) @ kernel) + bias`` with
    ``A_hat = D^-1/2 (A + I) D^-1/2`` (self loops included in the degree). Layer 0 has no
    activation (dropout still applies to the input features); later layers use
    LeakyReLU(``slope``). There are no norm layers. ``GCN(1433, 7)`` is the reference Cora
    GCN (92,231 params), ``GCN(3703, 6)`` CiteSeer (237,446) and ``GCN(500, 3)`` PubMed
    (32,259).

    Attributes:
      num_features: input feature width F.
      num_classes: output width C.
      hidden: hidden widths (the reference uses one hidden layer of 64); may be empty.
      dropout_rate: dropout before every layer's projection, in training only.
      slope: LeakyReLU negative slope of layers 1 and later.
      dataset_type: :class:`~uhn_jax.descriptors.DatasetType` for the global descriptor.
    """

    num_features: int
    num_classes: int
    hidden: tuple[int, ...] = (64,)
    dropout_rate: float = 0.5
    slope: float = 0.1
    dataset_type: int = int(D.DatasetType.CORA)

    def __post_init__(self):
        _check_positive("GCN", "num_features", self.num_features)
        _check_positive("GCN", "num_classes", self.num_classes)
        if not isinstance(self.hidden, tuple | list):
            raise ValueError(f"GCN hidden must be a tuple of positive ints, got {self.hidden!r}")
        for width in self.hidden:
            _check_positive("GCN", "hidden width", width)
        # A list would make the dataclass unhashable (it is a static jit argument).
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        _check_rate("GCN", "dropout_rate", self.dropout_rate)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` of every GCN layer."""
        dims = (self.num_features, *self.hidden, self.num_classes)
        return tuple(zip(dims[:-1], dims[1:], strict=True))

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (n_in, n_out) in enumerate(self.sizes):
            first = i == 0
            fields = {
                "bias_type": 1,
                "norm_type": 0,
                "output_size": n_out,
                "input_size": n_in,
                "activation_type": int(
                    D.ActivationType.NONE if first else D.ActivationType.LEAKY_RELU
                ),
                "activation_param": 0.0 if first else self.slope,
                "dropout_rate": self.dropout_rate,
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.GCN, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.GCN),
            "task_type": int(D.TaskType.GRAPH_NODE_CLS),
            "dataset_type": self.dataset_type,
        }

    def init(self, key: jax.Array) -> dict:
        """Glorot-uniform kernels (std ``sqrt(2 / (in + out))``) and zero biases."""
        params = {}
        for i, (n_in, n_out) in enumerate(self.sizes):
            params[self.name(i)] = {
                "kernel": _glorot_uniform(jax.random.fold_in(key, i), (n_in, n_out), n_in + n_out),
                "bias": jnp.zeros((n_out,), jnp.float32),
            }
        return params

    def apply(
        self,
        params: dict,
        graph: jraph.GraphsTuple,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Node logits ``(N, num_classes)``.

        Args:
          params: the params tree of :meth:`init`.
          graph: node features ``(N, num_features)`` and an edge list without self loops.
          train: enables dropout (only when ``rng`` is given too).
          rng: dropout key; layer ``i`` uses ``fold_in(rng, i)``.
        """
        _check_graph(graph, self.num_features, "GCN")
        n = graph.nodes.shape[0]
        senders, receivers = add_self_loops(graph.senders, graph.receivers, n)
        weight_E1 = gcn_edge_weights(senders, receivers, n)[:, None]
        h = graph.nodes
        for i in range(len(self.sizes)):
            p = params[self.name(i)]
            if i > 0:
                h = jax.nn.leaky_relu(h, self.slope)
            (key,) = _layer_rngs(rng, train, i, 1)
            h = dropout(h, self.dropout_rate, key) @ p["kernel"]
            h = jax.ops.segment_sum(h[senders] * weight_E1, receivers, num_segments=n) + p["bias"]
        return h


# ----------------------------------------------------------------------------- GAT


@dataclasses.dataclass(frozen=True)
class GAT:
    """Two-layer graph attention network, as the reference's Planetoid GAT.

    Layer 0: ``dropout(x) @ kernel`` split into ``heads`` heads of width ``hidden``,
    attention over each node's incoming edges and its self loop, dropout on the attention
    coefficients, weighted sum of the senders' projected features, heads concatenated,
    ``+ bias``. Layer 1 (output): ``ELU(elu_alpha)`` then the same with ``output_heads``
    heads of width ``num_classes``, *averaged* (the reference always averages the output
    heads; with one head that equals concatenation). ``GAT(1433, 7)`` is the reference Cora
    GAT (92,373 params), ``GAT(3703, 6)`` CiteSeer (237,586) and
    ``GAT(500, 3, output_heads=8)`` PubMed (33,779).

    Attributes:
      num_features: input feature width F.
      num_classes: output width C.
      hidden: per-head width of layer 0.
      heads: number of heads of layer 0.
      output_heads: number of (averaged) heads of the output layer.
      dropout_rate: dropout on each layer's input features, in training only.
      attention_dropout: dropout on the attention coefficients, in training only. The
        reference uses the layer's ``dropout_rate`` for both; the structure descriptor
        records ``dropout_rate`` only.
      negative_slope: LeakyReLU slope of the attention logits.
      elu_alpha: ELU alpha of the output layer's pre-activation.
      dataset_type: :class:`~uhn_jax.descriptors.DatasetType` for the global descriptor.
    """

    num_features: int
    num_classes: int
    hidden: int = 8
    heads: int = 8
    output_heads: int = 1
    dropout_rate: float = 0.6
    attention_dropout: float = 0.6
    negative_slope: float = 0.2
    elu_alpha: float = 1.0
    dataset_type: int = int(D.DatasetType.CORA)

    def __post_init__(self):
        for field in ("num_features", "num_classes", "hidden", "heads", "output_heads"):
            _check_positive("GAT", field, getattr(self, field))
        _check_rate("GAT", "dropout_rate", self.dropout_rate)
        _check_rate("GAT", "attention_dropout", self.attention_dropout)
        if not self.negative_slope >= 0.0:
            raise ValueError(f"GAT negative_slope must be >= 0, got {self.negative_slope}")
        if not self.elu_alpha > 0.0:
            raise ValueError(f"GAT elu_alpha must be > 0, got {self.elu_alpha}")

    @property
    def sizes(self) -> tuple[tuple[int, int, int, D.HeadConcatType], ...]:
        """``(in, per-head out, heads, head concat type)`` of both layers."""
        return (
            (self.num_features, self.hidden, self.heads, D.HeadConcatType.CONCAT),
            (
                self.hidden * self.heads,
                self.num_classes,
                self.output_heads,
                D.HeadConcatType.AVG,
            ),
        )

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def layers(self) -> tuple[D.LayerSpec, ...]:
        specs = []
        for i, (n_in, n_out, heads, concat) in enumerate(self.sizes):
            first = i == 0
            fields = {
                "bias_type": 1,
                "norm_type": 0,
                "output_size": n_out,
                "input_size": n_in,
                "activation_type": int(D.ActivationType.NONE if first else D.ActivationType.ELU),
                "activation_param": 0.0 if first else self.elu_alpha,
                "dropout_rate": self.dropout_rate,
                "num_heads": heads,
                "head_concat_type": int(concat),
                "initialization_type": int(D.InitializationType.DEFAULT),
            }
            specs.append(D.LayerSpec(self.name(i), D.LayerType.GAT, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.GAT),
            "task_type": int(D.TaskType.GRAPH_NODE_CLS),
            "dataset_type": self.dataset_type,
        }

    def init(self, key: jax.Array) -> dict:
        """Glorot-uniform kernels and attention vectors, zero biases (the §3.1 targets).

        Kernel std ``sqrt(2 / (in + heads*out))``; attention std ``sqrt(2 / (out + heads))``,
        the Glorot fans of the reference's ``(1, heads, out)`` attention tensors.
        """
        params = {}
        for i, (n_in, n_out, heads, concat) in enumerate(self.sizes):
            k_w, k_s, k_d = jax.random.split(jax.random.fold_in(key, i), 3)
            width = heads * n_out
            params[self.name(i)] = {
                "kernel": _glorot_uniform(k_w, (n_in, width), n_in + width),
                "bias": jnp.zeros(
                    (width if concat == D.HeadConcatType.CONCAT else n_out,), jnp.float32
                ),
                "att_src": _glorot_uniform(k_s, (width,), n_out + heads),
                "att_dst": _glorot_uniform(k_d, (width,), n_out + heads),
            }
        return params

    def apply(
        self,
        params: dict,
        graph: jraph.GraphsTuple,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Node logits ``(N, num_classes)``.

        Args:
          params: the params tree of :meth:`init`.
          graph: node features ``(N, num_features)`` and an edge list without self loops.
          train: enables both dropouts (only when ``rng`` is given too).
          rng: dropout key; layer ``i`` splits ``fold_in(rng, i)`` into a feature key and an
            attention key.
        """
        _check_graph(graph, self.num_features, "GAT")
        n = graph.nodes.shape[0]
        senders, receivers = add_self_loops(graph.senders, graph.receivers, n)
        h = graph.nodes
        for i, (_, n_out, heads, concat) in enumerate(self.sizes):
            p = params[self.name(i)]
            if i > 0:
                h = jax.nn.elu(h, self.elu_alpha)
            k_x, k_att = _layer_rngs(rng, train, i, 2)
            z_NHD = (dropout(h, self.dropout_rate, k_x) @ p["kernel"]).reshape(n, heads, n_out)
            alpha_EH = gat_attention(
                z_NHD,
                p["att_src"].reshape(heads, n_out),
                p["att_dst"].reshape(heads, n_out),
                senders,
                receivers,
                self.negative_slope,
            )
            alpha_EH = dropout(alpha_EH, self.attention_dropout, k_att)
            out_NHD = jax.ops.segment_sum(
                z_NHD[senders] * alpha_EH[:, :, None], receivers, num_segments=n
            )
            if concat == D.HeadConcatType.CONCAT:
                h = out_NHD.reshape(n, heads * n_out)
            else:
                h = out_NHD.mean(axis=1)
            h = h + p["bias"]
        return h
