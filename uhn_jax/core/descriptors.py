"""Deterministic descriptors of a base model: index (per scalar), structure (per layer), global.

Field orders follow the reference implementation (see ``docs`` and the spec):

* index descriptor, 10 fields per scalar parameter (:data:`INDEX_FIELDS`), default -1;
* local structure descriptor, 21 fields per layer (:data:`STRUCTURE_FIELDS`), default 0;
* global/task descriptor, 8 fields per model (:data:`GLOBAL_FIELDS`), default 0.

A layer is named by its path in the params pytree (``"Block_0/Dense_0"`` for
``params["Block_0"]["Dense_0"]["kernel"]``); its tensors are the leaves directly under it.
Layer kinds are open: :func:`register_kind` gives a new kind the next ``layer_type`` code (the
built-ins keep 0..6). A layer's tensor roles come from the function registered for its kind
(:func:`register_layer`; the built-ins are in :mod:`uhn_jax.core.roles`) or are given with
the layer (:attr:`LayerSpec.roles`, as :func:`uhn_jax.core.roles.describe` builds them for any
Flax model).

Index descriptors are kept in **grid form** (:class:`TensorGrid`): per parameter tensor, the
constant fields plus which index field varies along each tensor axis. The ``(N, 10)`` matrix
is materialised from it on demand.

Normalisation ("minmax") treats each field as uniform on a declared ``[lo, hi]`` range taken
from the configuration, never from data. Unlike the reference, a value outside its declared
range is an error (``out_of_range="error"``, the default) or, when asked for explicitly, is
clamped to the range (``out_of_range="clip"``). The reference silently multiplied such values
by about 316 when the range had zero width.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from uhn_jax.core import layouts

INDEX_FIELDS = (
    "layer_idx",
    "layer_type",
    "param_type",
    "output_idx",
    "input_idx",
    "kernel_h_idx",
    "kernel_w_idx",
    "embedding_idx",
    "sequence_idx",
    "grid_idx",
)
STRUCTURE_FIELDS = (
    "layer_idx",
    "layer_type",
    "bias_type",
    "norm_type",
    "shortcut_type",
    "output_size",
    "input_size",
    "activation_type",
    "activation_param",
    "dropout_rate",
    "input_pooling_reshape_type",
    "group_num",
    "kernel_size",
    "stage_wise_pooling_type",
    "num_heads",
    "head_concat_type",
    "embedding_num",
    "max_sequence_length",
    "grid_size",
    "spline_order",
    "initialization_type",
)
GLOBAL_FIELDS = (
    "model_type",
    "task_type",
    "dataset_type",
    "num_layers",
    "cnn_stage_num",
    "num_encoders",
    "num_structure_freqs",
    "num_index_freqs",
)
_IDX = {name: i for i, name in enumerate(INDEX_FIELDS)}


class LayerType(enum.IntEnum):
    LINEAR = 0
    CONV = 1
    GCN = 2
    GAT = 3
    EMBEDDING = 4
    MHA = 5
    KAN = 6


class ModelType(enum.IntEnum):
    MLP = 0
    CNN = 1
    GCN = 2
    GAT = 3
    TRANSFORMER = 4
    KAN = 5
    RECURSIVE = 6


class TaskType(enum.IntEnum):
    IMAGE_CLS = 0
    GRAPH_NODE_CLS = 1
    TEXT_CLS = 2
    FORMULA_REGRESSION = 3
    RECURSIVE = 4


class DatasetType(enum.IntEnum):
    MNIST = 0
    CIFAR10 = 1
    CITESEER = 2
    CORA = 3
    PUBMED = 4
    AG_NEWS = 5
    IMDB = 6
    SPECIAL_ELLIPJ = 7
    ELLIPKINC = 8
    ELLIPEINC = 9
    JV = 10
    YV = 11
    KV = 12
    IV = 13
    LPMV0 = 14
    LPMV1 = 15
    LPMV2 = 16
    SPH_HARM01 = 17
    SPH_HARM11 = 18
    SPH_HARM02 = 19
    SPH_HARM12 = 20
    SPH_HARM22 = 21
    RECURSIVE_IMAGE_CLS = 22
    # Values 23..26 are the reference's other recursive and ablation datasets; ours start at 100
    # so the reference numbering stays free.
    DIGITS = 100
    FASHION_MNIST = 101
    MR = 102
    KARATE_CLUB = 103


class ActivationType(enum.IntEnum):
    NONE = 0
    LEAKY_RELU = 1
    ELU = 2
    SILU = 3


class InputPoolingReshapeType(enum.IntEnum):
    NONE = 0
    AVG_POOLING = 1
    MAX_POOLING = 2
    RESHAPE_TO_2D = 3
    AVG_SEQUENCE = 4
    FIRST_TOKEN = 5


class HeadConcatType(enum.IntEnum):
    CONCAT = 0
    AVG = 1


class InitializationType(enum.IntEnum):
    DEFAULT = 0
    ZERO = 1


# ----------------------------------------------------------------------------- layer kinds

#: Index fields that can enumerate a tensor axis (the other three are constant per tensor).
AXIS_FIELDS = INDEX_FIELDS[3:]
# Layer kind name -> ``layer_type`` code. The built-ins keep their LayerType codes.
_KINDS: dict[str, int] = {t.name.lower(): int(t) for t in LayerType}


def register_kind(name: str, code: int | None = None) -> int:
    """Returns the ``layer_type`` code of the layer kind ``name``, registering it on first use.

    Built-in kinds keep their :class:`LayerType` codes (``"linear"`` 0 ... ``"kan"`` 6). A new
    kind gets ``code`` or, when omitted, the next free code (one above the largest). Pass
    ``code`` when descriptors must agree across programs that register kinds in other orders.

    Raises:
      ValueError: for an empty name, a negative code, or a name or code already taken by
        another kind.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a layer kind needs a non-empty name, got {name!r}")
    if name in _KINDS:
        if code is not None and int(code) != _KINDS[name]:
            raise ValueError(f"layer kind {name!r} already has code {_KINDS[name]}, not {code}")
        return _KINDS[name]
    if code is None:
        code = max(_KINDS.values()) + 1
    if int(code) < 0 or int(code) in _KINDS.values():
        raise ValueError(
            f"layer kind {name!r}: code {code} is negative or taken ({kind_name(int(code))!r})"
        )
    _KINDS[name] = int(code)
    return int(code)


def kind_name(code: int) -> str:
    """The name of the layer kind with ``layer_type`` ``code`` (``"kind <code>"`` if none)."""
    return next((n for n, c in _KINDS.items() if c == int(code)), f"kind {int(code)}")


# ----------------------------------------------------------------------------- layer specs


@dataclasses.dataclass(frozen=True)
class TensorRole:
    """What the descriptors need to know about one tensor of a layer.

    Attributes:
      param_type: the PARAM_TYPE index-descriptor value.
      axes: for each tensor axis, the index field (name from :data:`AXIS_FIELDS`) that
        enumerates it. Adjacent axes may share a field: they are folded in C order, so a
        ``(E, heads, head_dim)`` kernel with axes ``("input_idx", "output_idx",
        "output_idx")`` has ``output_idx = head * head_dim + d``.
      target: ``(mean, std)`` the initialisation stage matches (spec §3.1).
    """

    param_type: int
    axes: tuple[str, ...]
    target: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of a base model, as the descriptors see it.

    Attributes:
      name: the layer's path in the params pytree: the keys of its tensors except the last,
        joined with ``"/"`` (``"layer_000"``, or ``"Block_0/Dense_0"`` for
        ``params["Block_0"]["Dense_0"]["kernel"]``).
      layer_type: the layer kind's code (:class:`LayerType` or :func:`register_kind`).
      fields: structure-descriptor values as ``(name, value)`` pairs (names from
        :data:`STRUCTURE_FIELDS`; ``layer_idx`` and ``layer_type`` are filled in for you).
      roles: ``(tensor name, TensorRole)`` pairs. Empty: the function registered for
        ``layer_type`` (:func:`register_layer`) names the roles from the fields.
    """

    name: str
    layer_type: int
    fields: tuple[tuple[str, float], ...] = ()
    roles: tuple[tuple[str, TensorRole], ...] = ()

    def __post_init__(self):
        for key, _ in self.fields:
            if key not in STRUCTURE_FIELDS:
                raise ValueError(f"layer {self.name!r}: unknown structure field {key!r}")
        if isinstance(self.layer_type, bool) or not isinstance(self.layer_type, int):
            raise TypeError(f"layer {self.name!r}: layer_type must be an int code")
        if not self.roles:  # the kind's function reads these fields to name the roles
            for key in _REQUIRED.get(self.layer_type, ()):
                value = dict(self.fields).get(key)
                if value is None or not value > 0:
                    raise ValueError(
                        f"layer {self.name!r} of kind {kind_name(self.layer_type)!r} needs the "
                        f"structure field {key!r} > 0, "
                        + ("which is missing" if value is None else f"got {value!r}")
                    )

    def get(self, key: str, default: float = 0.0) -> float:
        return dict(self.fields).get(key, default)


LayerFn = Callable[[LayerSpec], Mapping[str, TensorRole]]
_LAYER_FNS: dict[int, LayerFn] = {}
_REQUIRED: dict[int, tuple[str, ...]] = {}  # structure fields each kind's function needs > 0


def register_layer(kind: int | str, requires: Sequence[str] = ()) -> Callable[[LayerFn], LayerFn]:
    """Registers the function that names the tensors of layer kind ``kind`` (code or name).

    The function takes a :class:`LayerSpec` and returns ``{tensor name: TensorRole}`` for the
    leaves directly under the layer's sub-tree. The built-in kinds' functions are in
    :mod:`uhn_jax.core.roles`. ``requires`` names the structure fields it needs (> 0): a
    :class:`LayerSpec` of this kind without explicit roles is refused without them.
    """
    code = register_kind(kind) if isinstance(kind, str) else int(kind)

    def decorator(fn: LayerFn) -> LayerFn:
        _LAYER_FNS[code] = fn
        _REQUIRED[code] = tuple(requires)
        return fn

    return decorator


def fold_axes(
    shape: tuple[int, ...], axes: Sequence[str], where: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The grid shape and field positions of a tensor: runs of adjacent axes that share a
    field merged into one grid axis (C order, so the flat order is unchanged).

    Raises:
      ValueError: naming ``where`` if ``axes`` does not name one enumerable field per axis of
        ``shape``, or one field enumerates axes that are not adjacent.
    """
    if len(axes) != len(shape):
        raise ValueError(f"{where} has shape {shape} but its role names {len(axes)} axes {axes}")
    grid_shape: list[int] = []
    fields: list[int] = []
    for dim, name in zip(shape, axes, strict=True):
        if name not in AXIS_FIELDS:
            raise ValueError(f"{where}: axis field {name!r} is not one of {AXIS_FIELDS}")
        if fields and fields[-1] == _IDX[name]:
            grid_shape[-1] *= dim
        elif _IDX[name] in fields:
            raise ValueError(f"{where}: field {name!r} enumerates non-adjacent axes of {axes}")
        else:
            grid_shape.append(dim)
            fields.append(_IDX[name])
    return tuple(grid_shape), tuple(fields)


class StageWisePoolingType(enum.IntEnum):
    NONE = 0
    AVG = 1
    MAX = 2
    CONV_POOLING = 3


# ----------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class TensorGrid:
    """Index descriptors of one parameter tensor in grid form.

    ``const`` holds all 10 fields (varying fields hold -1 there); ``axes[k]`` is the position
    in :data:`INDEX_FIELDS` of the field that equals the index along grid axis ``k``. The grid
    ``shape`` is the leaf's shape with folded axes merged (:func:`fold_axes`); its C order is
    the leaf's.
    """

    keys: tuple[str, ...]
    shape: tuple[int, ...]
    const: tuple[float, ...]
    axes: tuple[int, ...]
    target: tuple[float, float]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def materialize(self) -> np.ndarray:
        """Returns the ``(size, 10)`` float32 index descriptors in C order."""
        out = np.tile(np.asarray(self.const, np.float32), (self.size, 1))
        if self.shape:
            grid = np.indices(self.shape).reshape(len(self.shape), -1)
            for k, field in enumerate(self.axes):
                out[:, field] = grid[k]
        return out

    def field_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-field (min, max) over this tensor, computed from the grid without materialising."""
        lo = np.asarray(self.const, np.float64)
        hi = lo.copy()
        for field, dim in zip(self.axes, self.shape, strict=True):
            lo[field], hi[field] = 0.0, float(dim - 1)
        return lo, hi


@dataclasses.dataclass(frozen=True)
class Ranges:
    """Declared ``[lo, hi]`` per field, used for min/max normalisation."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self):
        if len(self.lo) != len(self.hi):
            raise ValueError("Ranges: lo and hi differ in length")
        for i, (a, b) in enumerate(zip(self.lo, self.hi, strict=True)):
            if a > b:
                raise ValueError(f"Ranges: field {i} has lo {a} > hi {b}")

    def union(self, other: Ranges) -> Ranges:
        """Element-wise union, as used over the tasks and models of one generator."""
        return Ranges(
            tuple(map(min, self.lo, other.lo)),
            tuple(map(max, self.hi, other.hi)),
        )


def union_all(ranges: Sequence[Ranges]) -> Ranges:
    """Union of several ranges."""
    return functools.reduce(Ranges.union, ranges)


def minmax_stats(ranges: Ranges) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, mean, std)`` float32 arrays of the uniform-on-``[lo, hi]`` standardisation."""
    lo = np.asarray(ranges.lo, np.float32)
    hi = np.asarray(ranges.hi, np.float32)
    return lo, hi, (lo + hi) / 2, np.sqrt((hi - lo) ** 2 / 12.0 + 1e-5).astype(np.float32)


def normalize(x: np.ndarray, ranges: Ranges, names: Sequence[str], out_of_range: str = "error"):
    """Min/max normalisation of the last axis of ``x`` (numpy or jax).

    Each field is standardised as if uniform on ``[lo, hi]``:
    ``(x - (lo+hi)/2) / sqrt((hi-lo)^2/12 + 1e-5)``. Fields with ``lo == hi`` map to 0.

    Args:
      x: array ``(..., F)``.
      ranges: the declared ranges (F fields).
      names: field names, for error messages.
      out_of_range: ``"error"`` raises ValueError for a value outside its range (numpy input
        only); ``"clip"`` clamps to the range first.
    """
    lo, hi, mean, std = minmax_stats(ranges)
    if out_of_range == "error":
        if isinstance(x, np.ndarray):
            check_in_range(
                x.reshape(-1, x.shape[-1]).min(0), x.reshape(-1, x.shape[-1]).max(0), ranges, names
            )
    elif out_of_range == "clip":
        x = x.clip(lo, hi)
    else:
        raise ValueError(f"out_of_range must be 'error' or 'clip', got {out_of_range!r}")
    return (x - mean) / std


def check_in_range(xmin, xmax, ranges: Ranges, names: Sequence[str], where: str = "") -> None:
    """Raises ValueError naming the first field whose values leave the declared range (and
    ``where``, e.g. the argument that holds them)."""
    for i, name in enumerate(names):
        lo, hi = ranges.lo[i], ranges.hi[i]
        if xmin[i] < lo - 1e-6 or xmax[i] > hi + 1e-6:
            raise ValueError(
                f"{where}descriptor field {name!r} takes values in [{xmin[i]:g}, {xmax[i]:g}], "
                f"outside its declared range [{lo:g}, {hi:g}]. Widen the generator's declared "
                "ranges (train it on a family that covers this architecture) or pass "
                "out_of_range='clip' to clamp explicitly."
            )


# ----------------------------------------------------------------------------- model descriptors


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDescriptors:
    """All descriptors of one architecture. Built once by :func:`build` and cached.

    Attributes:
      layout: the params layout the grids follow (same leaf order).
      grids: one :class:`TensorGrid` per layout leaf, in layout order.
      structure: ``(L, 21)`` local structure descriptors.
      global_: ``(8,)`` global/task descriptor.
    """

    layout: layouts.Layout
    grids: tuple[TensorGrid, ...]
    structure: np.ndarray
    global_: np.ndarray

    @property
    def num_params(self) -> int:
        return self.layout.size

    @functools.cached_property
    def index(self) -> np.ndarray:
        """The materialised ``(N, 10)`` float32 index descriptors (layout order)."""
        return np.concatenate([g.materialize() for g in self.grids])

    @functools.cached_property
    def structure_input(self) -> np.ndarray:
        """``(L, 29)`` = ``concat(global, local)`` per layer: the structure encoder's input."""
        g = np.broadcast_to(self.global_, (self.structure.shape[0], len(GLOBAL_FIELDS)))
        return np.concatenate([g, self.structure], axis=1).astype(np.float32)

    @functools.cached_property
    def segment_ids(self) -> np.ndarray:
        """``(N,)`` int32 tensor id of every scalar (position in :attr:`grids`)."""
        return np.repeat(np.arange(len(self.grids), dtype=np.int32), [g.size for g in self.grids])

    @functools.cached_property
    def targets(self) -> np.ndarray:
        """``(T, 2)`` float32 init-stage (mean, std) targets, one row per tensor."""
        return np.asarray([g.target for g in self.grids], np.float32)

    def index_ranges(self) -> Ranges:
        """Per-field bounds of the index descriptors, from the grids (no data involved)."""
        bounds = [g.field_bounds() for g in self.grids]
        lo = np.min([b[0] for b in bounds], axis=0)
        hi = np.max([b[1] for b in bounds], axis=0)
        return Ranges(tuple(lo.tolist()), tuple(hi.tolist()))

    def structure_ranges(self) -> Ranges:
        """Per-field bounds of the 29-dim structure input of this one architecture."""
        s = self.structure_input
        return Ranges(tuple(s.min(0).tolist()), tuple(s.max(0).tolist()))


def build(
    layout: layouts.Layout,
    layers: Sequence[LayerSpec],
    global_fields: Mapping[str, float],
) -> ModelDescriptors:
    """Builds (and caches) the descriptors of one architecture.

    Args:
      layout: layout of the base model's params; every leaf must belong to one layer: leaf
        ``keys[:-1]`` joined with ``"/"`` is the layer's name, ``keys[-1]`` the tensor's.
      layers: the base model's layers in order (``layer_idx`` is the position).
      global_fields: values for :data:`GLOBAL_FIELDS` (missing ones are 0; ``num_layers`` is
        filled in).

    Returns:
      The :class:`ModelDescriptors`.
    """
    if not isinstance(layout, layouts.Layout):
        raise TypeError(f"layout must be a layouts.Layout, got {type(layout).__name__}")
    specs = () if isinstance(layers, str) else tuple(layers)
    if isinstance(layers, str) or not all(isinstance(x, LayerSpec) for x in specs):
        raise TypeError(f"layers must be a sequence of LayerSpec, got {layers!r:.100}")
    if not isinstance(global_fields, Mapping):
        raise TypeError(
            f"global_fields must be a mapping of GLOBAL_FIELDS names to numbers, got "
            f"{type(global_fields).__name__}"
        )
    return _build_cached(
        layout, specs, tuple(sorted((k, float(v)) for k, v in global_fields.items()))
    )


def _layer_roles(layer: LayerSpec) -> Mapping[str, TensorRole]:
    if layer.roles:
        return dict(layer.roles)
    if layer.layer_type not in _LAYER_FNS:
        raise ValueError(
            f"layer {layer.name!r}: no descriptor function for layer kind "
            f"{kind_name(layer.layer_type)!r} and no explicit roles"
        )
    return _LAYER_FNS[layer.layer_type](layer)


def _grid(leaf: layouts.Leaf, i: int, layer: LayerSpec, roles) -> TensorGrid:
    tensor = leaf.keys[-1]
    if tensor not in roles:
        raise ValueError(
            f"params leaf {leaf.path}: layer kind {kind_name(layer.layer_type)} has tensors "
            f"{list(roles)}, not {tensor!r}"
        )
    role = roles[tensor]
    shape, axes = fold_axes(leaf.shape, role.axes, f"params leaf {leaf.path}")
    const = [-1.0] * len(INDEX_FIELDS)
    const[_IDX["layer_idx"]] = float(i)
    const[_IDX["layer_type"]] = float(layer.layer_type)
    const[_IDX["param_type"]] = float(role.param_type)
    return TensorGrid(
        keys=leaf.keys,
        shape=shape,
        const=tuple(const),
        axes=axes,
        target=tuple(float(t) for t in role.target),
    )


@functools.lru_cache(maxsize=256)
def _build_cached(layout, layers, global_items) -> ModelDescriptors:
    by_name = {}
    for i, layer in enumerate(layers):
        if layer.name in by_name:
            raise ValueError(f"duplicate layer name {layer.name!r}")
        by_name[layer.name] = (i, layer, _layer_roles(layer))

    grids = []
    for leaf in layout.leaves:
        name = "/".join(leaf.keys[:-1])
        if not leaf.keys or name not in by_name:
            raise ValueError(
                f"params leaf {leaf.path} is not a tensor of a declared layer; expected "
                f"params[<layer path>][<tensor>] with layer names {list(by_name)}"
            )
        grids.append(_grid(leaf, *by_name[name]))

    structure = np.zeros((len(layers), len(STRUCTURE_FIELDS)), np.float32)
    for i, layer in enumerate(layers):
        values = dict(layer.fields, layer_idx=i, layer_type=int(layer.layer_type))
        for key, value in values.items():
            structure[i, STRUCTURE_FIELDS.index(key)] = value

    global_values = dict(global_items)
    global_values["num_layers"] = float(len(layers))
    unknown = set(global_values) - set(GLOBAL_FIELDS)
    if unknown:
        raise ValueError(f"unknown global descriptor fields {sorted(unknown)}")
    global_ = np.asarray([global_values.get(k, 0.0) for k in GLOBAL_FIELDS], np.float32)
    return ModelDescriptors(layout, tuple(grids), structure, global_)
