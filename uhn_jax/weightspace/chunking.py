"""Pad-chunk tokenisation of a network's params, exactly invariant to permutations of its hidden
units: the input of SNE (:mod:`uhn_jax.weightspace.sne`).

A network is read as a chain of layers (:func:`read_layers`): one per top-level module of its
params tree (``layer_000``, ``layer_001``, ... in name order), each a ``kernel`` (dense
``[inputs, units]`` or conv ``[kh, kw, inputs, units]``) with per-unit extras (``bias`` first,
then any other leaf of shape ``[units]``, e.g. a norm's scale and shift). Each output unit ``j``
of a layer gives one vector: its incoming weights arranged ``[kernel positions, inputs]``, then
its extras. Kernel positions are a conv's ``kh * kw`` offsets, or the spatial positions a dense
layer reads after a flattened feature map (the HaCNN head: ``fan_in = positions * channels``,
channels last); one position for any other dense layer.

Why the tokens are invariant. Permuting the hidden units of layer ``l`` (the function kept)
permutes layer ``l``'s units and, identically, the input columns of layer ``l + 1``; nothing
else. So:

* input columns of a layer that reads hidden units are put in a canonical order: sorted by a
  key of the column itself (its sum over kernel positions, ties broken by its values,
  lexicographically), so a unit's vector does not depend on how the previous layer's units
  are ordered; a column's values are the same whichever position it had, so the order is
  exact, not approximate;
* the units of a hidden layer are put in a canonical order too (lexicographic order of their
  vectors), so the token array itself, not only the set of tokens, is the same for every
  permutation: SNE's prediction is then bit-identical;
* the first layer's inputs (pixels) and the last layer's units (classes) are not permutable
  and keep their order; the last layer's tokens carry their class index.

Each vector is zero-padded to a multiple of the chunk size ``c`` and cut into chunks; a token is
``(chunk values [c], chunk index k, its layer's role features, class index + 1 or 0)``; each
layer also gets a summary of its weights (:func:`layer_summary`: scale, moments, quantiles). The
chunk size is the memory knob: a layer of ``O`` units and fan-in ``F`` gives
``O * ceil((F + extras) / c)`` tokens. :func:`collate` pads a batch of networks to
power-of-two token counts, which bounds the recompilations of a jitted model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The per-layer role features, in order (:func:`role_features`).
ROLE_FEATURES = (
    "conv", "first", "last", "log_positions", "log_inputs", "log_units", "log_chunks", "extras",
)  # fmt: skip
#: The divisors that bring the log2 sizes among :data:`ROLE_FEATURES` to about [0, 1].
LOG_SIZE_DIVISORS = {"log_positions": 8, "log_inputs": 12, "log_units": 12, "log_chunks": 8}
#: The statistics of one part of a layer (:func:`part_summary`): the log RMS of its values,
#: then their mean, standard deviation and 0, 25, 50, 75, 100 % quantiles over the RMS.
PART_SUMMARY = ("log_rms", "mean", "std", "q0", "q25", "q50", "q75", "q100")
#: The per-layer summary features, in order (:func:`layer_summary`).
SUMMARY_FEATURES = tuple(f"{p}_{f}" for p in ("kernel", "bias") for f in PART_SUMMARY)
#: The smallest token bucket of :func:`collate`.
MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One layer of a network as :func:`read_layers` reads it.

    Attributes:
      name: the module's name in the params tree.
      kind: ``"dense"`` or ``"conv"``.
      kernel: ``[positions, inputs, units]``.
      bias: ``[units]``, or ``None`` for a layer without one.
      extras: ``[extras, units]``: the bias first, then every other per-unit leaf (by name).
      hidden_input: whether the input axis is a hidden (permutable) one: every layer but the
        first.
    """

    name: str
    kind: str
    kernel: np.ndarray
    bias: np.ndarray | None
    extras: np.ndarray
    hidden_input: bool

    @property
    def positions(self) -> int:
        return self.kernel.shape[0]

    @property
    def inputs(self) -> int:
        return self.kernel.shape[1]

    @property
    def units(self) -> int:
        return self.kernel.shape[2]

    def describe(self) -> str:
        """``layer_001 (conv, 9 positions x 8 inputs + 1 extras -> 16 units)``."""
        return (
            f"{self.name} ({self.kind}, {self.positions} positions x {self.inputs} inputs + "
            f"{self.extras.shape[0]} extras -> {self.units} units)"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Tokens:
    """A network's tokens (:func:`tokenize`).

    Attributes:
      values: ``[T, c]`` float32, the chunks.
      layer: ``[T]`` int32, each token's layer.
      chunk: ``[T]`` int32, each token's chunk index within its unit's vector.
      label: ``[T]`` int32, the class index + 1 of a last-layer token, 0 for the others.
      roles: ``[L, R]`` float32, each layer's :data:`ROLE_FEATURES`.
      summary: ``[L, S]`` float32, each layer's :data:`SUMMARY_FEATURES`.
      layer_names: the layers' names.
      num_params: the network's parameter count (kernels and per-unit leaves).
    """

    values: np.ndarray
    layer: np.ndarray
    chunk: np.ndarray
    label: np.ndarray
    roles: np.ndarray
    summary: np.ndarray
    layer_names: tuple[str, ...]
    num_params: int

    @property
    def num_tokens(self) -> int:
        return self.values.shape[0]

    @property
    def num_layers(self) -> int:
        return self.roles.shape[0]

    @property
    def chunk_size(self) -> int:
        return self.values.shape[1]


def _modules(params: Any) -> list[tuple[str, Mapping]]:
    """The layer modules of a params tree, in name order (a lone ``params`` key unwrapped)."""
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            "cannot read the params tree: expected a mapping {layer name: {kernel, bias, ...}}, "
            f"got {type(params).__name__}{' (empty)' if isinstance(params, Mapping) else ''}"
        )
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = params["params"]
    modules = []
    for name in sorted(params):
        module = params[name]
        if not isinstance(module, Mapping) or "kernel" not in module:
            raise ValueError(
                f"cannot read the params tree: {name!r} is not a layer module with a 'kernel' "
                f"(got {type(module).__name__}"
                + (f" with leaves {sorted(module)})" if isinstance(module, Mapping) else ")")
            )
        modules.append((name, module))
    return modules


def _kernel(name: str, kernel: np.ndarray, previous: int | None) -> tuple[str, np.ndarray]:
    """``(kind, kernel [positions, inputs, units])`` of one layer; ``previous`` is the previous
    layer's units (``None`` for the first layer)."""
    if kernel.ndim == 4:
        kh, kw, n_in, n_out = kernel.shape
        if previous is not None and n_in != previous:
            raise ValueError(
                f"cannot read layer {name}: its conv kernel {kernel.shape} reads {n_in} "
                f"channels, but the previous layer has {previous} units"
            )
        return "conv", kernel.reshape(kh * kw, n_in, n_out)
    if kernel.ndim != 2:
        raise ValueError(
            f"cannot read layer {name}: kernel of shape {kernel.shape}; a dense [inputs, units] "
            "or a conv [kh, kw, inputs, units] kernel is expected"
        )
    fan_in, n_out = kernel.shape
    if previous is None or fan_in == previous:
        return "dense", kernel.reshape(1, fan_in, n_out)
    if fan_in % previous:
        raise ValueError(
            f"cannot read layer {name}: fan-in {fan_in} is not a multiple of the previous "
            f"layer's {previous} units (a dense layer reads them directly or as a flattened "
            "map with channels last)"
        )
    # A flattened (H, W, C) map: input index (h * W + w) * C + c, so [positions, channels].
    return "dense", kernel.reshape(fan_in // previous, previous, n_out)


def read_layers(params: Any) -> list[Layer]:
    """The layers of a params tree (see the module docstring), in name order.

    Raises:
      ValueError: naming the layer and the shapes, for a tree this reader cannot read: not a
        mapping of layer modules with a kernel, a kernel that is neither dense nor conv, a
        fan-in that does not fit the previous layer's units, an extra leaf that is not
        per-unit.
    """
    layers, previous = [], None
    for name, module in _modules(params):
        kind, kernel = _kernel(name, np.asarray(module["kernel"], np.float32), previous)
        n_out = kernel.shape[2]
        others = sorted(k for k in module if k not in ("kernel", "bias"))
        extras = []
        for leaf in (["bias"] if "bias" in module else []) + others:
            value = np.asarray(module[leaf], np.float32)
            if value.shape != (n_out,):
                raise ValueError(
                    f"cannot read layer {name}: leaf {leaf!r} has shape {value.shape}; "
                    f"per-unit leaves of this layer must have shape ({n_out},)"
                )
            extras.append(value)
        bias = extras[0] if "bias" in module else None
        extras_EO = np.stack(extras) if extras else np.zeros((0, n_out), np.float32)
        layers.append(Layer(name, kind, kernel, bias, extras_EO, previous is not None))
        previous = n_out
    return layers


def sort_columns(kernel_OPI: np.ndarray) -> np.ndarray:
    """Every unit's input columns (``[:, :, i]``, one value per kernel position) in canonical
    order: by the column's sum, ties by its values lexicographically. The order depends on the
    columns' values only, so it is the same for any order of the inputs."""
    cols_OIP = np.swapaxes(kernel_OPI, 1, 2)
    positions = cols_OIP.shape[2]
    keys = [cols_OIP[..., p] for p in reversed(range(positions))] + [cols_OIP.sum(-1)]
    order_OI = np.lexsort(keys, axis=-1)  # the last key is the primary one
    return np.swapaxes(np.take_along_axis(cols_OIP, order_OI[..., None], axis=1), 1, 2)


def unit_vectors(layer: Layer, *, classes: bool) -> np.ndarray:
    """``[units, positions * inputs + extras]``: each unit's incoming weights (input columns
    sorted when the input is hidden) and extras; units in canonical order unless ``classes``."""
    kernel_OPI = np.transpose(layer.kernel, (2, 0, 1))
    if layer.hidden_input:
        kernel_OPI = sort_columns(kernel_OPI)
    vectors = np.concatenate([kernel_OPI.reshape(layer.units, -1), layer.extras.T], axis=1)
    if not classes:
        vectors = vectors[np.lexsort(vectors.T[::-1])]  # lexicographic, first value first
    return vectors


def role_features(layer: Layer, index: int, num_layers: int, chunks: int) -> np.ndarray:
    """A layer's :data:`ROLE_FEATURES`: conv or dense, first, last, then log sizes scaled to
    about [0, 1]."""
    sizes = {
        "log_positions": layer.positions, "log_inputs": layer.inputs,
        "log_units": layer.units, "log_chunks": chunks,
    }  # fmt: skip
    logs = [math.log2(n) / LOG_SIZE_DIVISORS[name] for name, n in sizes.items()]
    flags = [layer.kind == "conv", index == 0, index == num_layers - 1]
    return np.asarray([*flags, *logs, layer.extras.shape[0] / 4], np.float32)


def log_fan_in(roles):
    """``[...]``: the natural log of each layer's fan-in (kernel positions x inputs), read
    back from its role features ``[..., R]`` (numpy or jax; 0 for a padding layer)."""
    total = 0.0
    for name in ("log_positions", "log_inputs"):
        total = total + roles[..., ROLE_FEATURES.index(name)] * LOG_SIZE_DIVISORS[name]
    return math.log(2.0) * total


def part_summary(values: np.ndarray) -> np.ndarray:
    """``[8]``: :data:`PART_SUMMARY` of ``values`` (any shape), in float64; zeros when empty.

    Everything but the log RMS is divided by the RMS, so the scale is one feature and the
    shape of the distribution the others, whatever the layer's size.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if not v.size:
        return np.zeros(len(PART_SUMMARY))
    rms = max(float(np.sqrt(np.mean(v**2))), 1e-12)
    quantiles = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return np.concatenate([[math.log(rms)], np.r_[v.mean(), v.std(), quantiles] / rms])


def layer_summary(layer: Layer) -> np.ndarray:
    """A layer's :data:`SUMMARY_FEATURES`: :func:`part_summary` of its kernel, then of its bias
    (zeros for a layer without one). Invariant to permutations of its units and inputs."""
    bias = layer.bias if layer.bias is not None else np.zeros(0)
    return np.concatenate([part_summary(layer.kernel), part_summary(bias)]).astype(np.float32)


def check_chunk_size(chunk_size: Any, name: str = "chunk_size") -> None:
    """Raises ``ValueError`` naming ``name`` unless ``chunk_size`` is a positive int."""
    if not isinstance(chunk_size, int | np.integer) or isinstance(chunk_size, bool):
        raise ValueError(f"{name} must be a positive int, got {chunk_size!r}")
    if chunk_size <= 0:
        raise ValueError(f"{name} must be a positive int (values per token), got {chunk_size}")


def tokenize(params: Any, chunk_size: int, *, max_tokens_per_layer: int | None = None) -> Tokens:
    """The tokens of a network (see the module docstring).

    Args:
      params: the network's params tree (``{layer: {kernel, bias, ...}}``).
      chunk_size: values per token, ``c``.
      max_tokens_per_layer: refuse a layer with more tokens (``None``: no limit).

    Raises:
      ValueError: for a chunk size <= 0, a tree :func:`read_layers` cannot read, or a layer
        whose tokens exceed ``max_tokens_per_layer`` (naming the layer and its sizes).
    """
    check_chunk_size(chunk_size)
    layers = read_layers(params)
    n = len(layers)
    parts: dict[str, list[np.ndarray]] = {"values": [], "layer": [], "chunk": [], "label": []}
    roles, summary = [], []
    for i, layer in enumerate(layers):
        last = i == n - 1
        vectors = unit_vectors(layer, classes=last)
        chunks = -(-vectors.shape[1] // chunk_size)
        tokens = layer.units * chunks
        if max_tokens_per_layer is not None and tokens > max_tokens_per_layer:
            raise ValueError(
                f"layer {layer.describe()} gives {layer.units} x {chunks} = {tokens} tokens at "
                f"chunk size {chunk_size}, more than max_tokens_per_layer="
                f"{max_tokens_per_layer}: raise the chunk size or the limit "
                "(chunking.chunk_size, chunking.max_tokens_per_layer in an SNE config)"
            )
        padded = np.zeros((layer.units, chunks * chunk_size), np.float32)
        padded[:, : vectors.shape[1]] = vectors
        parts["values"].append(padded.reshape(tokens, chunk_size))
        parts["layer"].append(np.full(tokens, i, np.int32))
        parts["chunk"].append(np.tile(np.arange(chunks, dtype=np.int32), layer.units))
        label = np.repeat(np.arange(1, layer.units + 1, dtype=np.int32), chunks)
        parts["label"].append(label if last else np.zeros(tokens, np.int32))
        roles.append(role_features(layer, i, n, chunks))
        summary.append(layer_summary(layer))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    names = tuple(x.name for x in layers)
    size = sum(x.kernel.size + x.extras.size for x in layers)
    return Tokens(
        **arrays, roles=np.stack(roles), summary=np.stack(summary), layer_names=names,
        num_params=int(size),
    )  # fmt: skip


def network_size(tokens: Tokens) -> np.ndarray:
    """``[2]``: log10 of a network's params and its number of layers."""
    return np.asarray([math.log10(max(tokens.num_params, 1)), tokens.num_layers], np.float32)


def _scaled_summary(summary_LS: np.ndarray, scale: float) -> np.ndarray:
    """``summary_LS`` of values multiplied by ``scale``: each present part's log RMS shifted by
    ``log(scale)`` (a missing part, all zeros, stays zeros); the other features are ratios."""
    parts = summary_LS.reshape(summary_LS.shape[0], -1, len(PART_SUMMARY)).copy()
    present = np.abs(parts).sum(-1) > 0
    parts[..., 0] += np.where(present, math.log(scale), 0.0)
    return parts.reshape(summary_LS.shape)


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= ``max(n, minimum)``."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


def collate(
    batch: Sequence[Tokens],
    *,
    max_layers: int,
    max_classes: int,
    scale: float = 1.0,
    min_tokens: int = MIN_BUCKET,
) -> dict[str, np.ndarray]:
    """A batch of networks as padded arrays (numpy), tokens padded to a power of two (at
    least ``min_tokens``).

    Returns:
      ``values [B, T, c]`` (times ``scale``), ``layer``, ``chunk``, ``label`` ``[B, T]``
      int32, ``mask [B, T]`` (real tokens), ``roles [B, L, R]``, ``summary [B, L, S]`` (its
      log RMS features shifted by ``log(scale)``, as the values are scaled), ``layer_mask
      [B, L]``, ``depth [B, L, 2]`` (each layer's index from the first and from the last
      layer), with ``L = max_layers``, and ``size [B, 2]``: log10 of each network's params
      and its number of layers.

    Raises:
      ValueError: for an empty batch, networks of different chunk sizes, a network with more
        than ``max_layers`` layers or more than ``max_classes`` classes.
    """
    if not batch:
        raise ValueError("collate: the batch holds no network")
    c = batch[0].chunk_size
    t = bucket(max(x.num_tokens for x in batch), min_tokens)
    b, r, f = len(batch), batch[0].roles.shape[1], batch[0].summary.shape[1]
    out = {
        "values": np.zeros((b, t, c), np.float32),
        "layer": np.zeros((b, t), np.int32),
        "chunk": np.zeros((b, t), np.int32),
        "label": np.zeros((b, t), np.int32),
        "mask": np.zeros((b, t), bool),
        "roles": np.zeros((b, max_layers, r), np.float32),
        "summary": np.zeros((b, max_layers, f), np.float32),
        "layer_mask": np.zeros((b, max_layers), bool),
        "depth": np.zeros((b, max_layers, 2), np.int32),
        "size": np.zeros((b, 2), np.float32),
    }
    for i, x in enumerate(batch):
        if x.chunk_size != c:
            raise ValueError(f"collate: chunk sizes differ in the batch ({c}, {x.chunk_size})")
        if x.num_layers > max_layers:
            raise ValueError(
                f"a network with {x.num_layers} layers ({', '.join(x.layer_names)}) exceeds "
                f"max_layers={max_layers}"
            )
        if x.label.max(initial=0) > max_classes:
            raise ValueError(
                f"a network with {x.label.max()} classes exceeds max_classes={max_classes}"
            )
        n, depth = x.num_tokens, x.num_layers
        out["values"][i, :n] = x.values * scale
        for key in ("layer", "chunk", "label"):
            out[key][i, :n] = getattr(x, key)
        out["mask"][i, :n] = True
        out["roles"][i, :depth] = x.roles
        out["summary"][i, :depth] = _scaled_summary(x.summary, scale)
        out["layer_mask"][i, :depth] = True
        out["depth"][i, :depth, 0] = np.arange(depth)
        out["depth"][i, :depth, 1] = np.arange(depth)[::-1]
        out["size"][i] = network_size(x)
    return out
