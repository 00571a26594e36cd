"""The open role registry: what each parameter tensor is, for the descriptors.

Two ways in, one result (:class:`~uhn_jax.core.descriptors.TensorRole` per tensor):

* **Layer functions** (:func:`~uhn_jax.core.descriptors.register_layer`): the library's own base
  models declare their layers (:class:`~uhn_jax.core.descriptors.LayerSpec`) and the function of
  each layer kind names its tensors' roles. The built-in kinds' functions are below.
* **Leaf describers** (:func:`register`): for any params pytree, e.g. a Flax model's, a
  describer looks at one leaf (:class:`LeafInfo`: path, shape, dtype, owning module and its
  initial value) and returns a :class:`Description`: the layer kind, the tensor's
  ``param_type``, the index field of each axis, the structure fields of its layer and, unless
  it knows better, nothing for the init target, which then is the leaf's own initial
  ``(mean, std)``. :func:`describe` turns the described leaves into layer specs.

Built-in describers cover Flax Linen and NNX Dense/Linear, DenseGeneral/LinearGeneral (extra
axes folded, attention projections as kind ``"mha"``), Conv of any rank with groups,
ConvTranspose, Embed and the LayerNorm/RMSNorm/GroupNorm/BatchNorm scales and biases. They
match Flax classes by name, so this module does not import Flax. A leaf no describer takes
gets the generic description (kind ``"generic"``, one index field per axis), and
:func:`describe` warns once naming all such leaves.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from uhn_jax.core import descriptors as D

# Kinds the Flax describers add to the built-in LayerType codes 0..6; fixed codes so that
# descriptors do not depend on the order in which user code registers its own kinds.
NORM = D.register_kind("norm", 7)
CONV_TRANSPOSE = D.register_kind("conv_transpose", 8)
GENERIC = D.register_kind("generic", 9)
#: ``norm_type`` structure field of the ``"norm"`` kind, by Flax class name.
NORM_TYPES = {"LayerNorm": 1, "RMSNorm": 2, "GroupNorm": 3, "BatchNorm": 4}

# ----------------------------------------------------------------------------- layer functions


def _zero_or(layer: D.LayerSpec, std: float) -> tuple[float, float]:
    if layer.get("initialization_type") == D.InitializationType.ZERO:
        return (0.0, 0.0)
    return (0.0, std)


@D.register_layer(D.LayerType.LINEAR, requires=("input_size",))
def _linear(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # Flax convention: kernel is (in, out), so x @ kernel. PyTorch default init is
    # U(+-1/sqrt(fan_in)) for both tensors, i.e. std 1/sqrt(3 fan_in).
    target = _zero_or(layer, 1.0 / math.sqrt(3.0 * layer.get("input_size")))
    return {
        "kernel": D.TensorRole(0, ("input_idx", "output_idx"), target),
        "bias": D.TensorRole(1, ("output_idx",), target),
    }


@D.register_layer(D.LayerType.CONV, requires=("input_size", "kernel_size"))
def _conv(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # Flax convention: kernel is HWIO (kh, kw, in, out); the reference's PyTorch kernels are
    # OIHW. Targets as for Linear with fan_in = in * k * k.
    k = layer.get("kernel_size")
    target = _zero_or(layer, 1.0 / math.sqrt(3.0 * layer.get("input_size") * k * k))
    return {
        "kernel": D.TensorRole(
            0, ("kernel_h_idx", "kernel_w_idx", "input_idx", "output_idx"), target
        ),
        "bias": D.TensorRole(1, ("output_idx",), target),
    }


@D.register_layer(D.LayerType.GCN, requires=("input_size", "output_size"))
def _gcn(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # kernel (in, out), as PyG's GCNConv lin.weight transposed; Glorot std, zero bias.
    n_in, n_out = layer.get("input_size"), layer.get("output_size")
    w = _zero_or(layer, math.sqrt(2.0 / (n_in + n_out)))
    return {
        "kernel": D.TensorRole(0, ("input_idx", "output_idx"), w),
        "bias": D.TensorRole(1, ("output_idx",), (0.0, 0.0)),
    }


@D.register_layer(D.LayerType.GAT, requires=("input_size", "output_size", "num_heads"))
def _gat(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # output_size is the per-head width. kernel (in, heads * out) and the attention vectors
    # (heads * out,) are head-major along output_idx; the bias is (heads * out,) when heads are
    # concatenated and (out,) when averaged.
    n_in, n_out, heads = (layer.get(k) for k in ("input_size", "output_size", "num_heads"))
    w = _zero_or(layer, math.sqrt(2.0 / (n_in + heads * n_out)))
    att = _zero_or(layer, math.sqrt(2.0 / (n_out + heads)))
    return {
        "kernel": D.TensorRole(0, ("input_idx", "output_idx"), w),
        "bias": D.TensorRole(1, ("output_idx",), (0.0, 0.0)),
        "att_src": D.TensorRole(2, ("output_idx",), att),
        "att_dst": D.TensorRole(3, ("output_idx",), att),
    }


@D.register_layer(D.LayerType.EMBEDDING)
def _embedding(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # tokens (V, E): N(0, 1) as nn.Embedding; positions (Lmax, E): zero-initialised table.
    tokens = _zero_or(layer, 1.0)
    return {
        "tokens": D.TensorRole(0, ("embedding_idx", "output_idx"), tokens),
        "positions": D.TensorRole(1, ("sequence_idx", "output_idx"), (0.0, 0.0)),
    }


@D.register_layer(D.LayerType.MHA, requires=("output_size",))
def _mha(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # Projections are (E_in, E_out) kernels; heads are contiguous blocks of output_idx.
    e = layer.get("output_size")
    qkv = _zero_or(layer, math.sqrt(1.0 / e))
    out = _zero_or(layer, 1.0 / math.sqrt(3.0 * e))
    roles = {}
    for k, name in enumerate(("query", "key", "value")):
        roles[f"{name}_kernel"] = D.TensorRole(k, ("input_idx", "output_idx"), qkv)
        roles[f"{name}_bias"] = D.TensorRole(3 + k, ("output_idx",), (0.0, 0.0))
    roles["out_kernel"] = D.TensorRole(6, ("input_idx", "output_idx"), out)
    roles["out_bias"] = D.TensorRole(7, ("output_idx",), (0.0, 0.0))
    return roles


@D.register_layer(D.LayerType.KAN, requires=("input_size",))
def _kan(layer: D.LayerSpec) -> Mapping[str, D.TensorRole]:
    # Tensor names and layouts of uhn_jax.models.kan (Flax style: output axis last).
    # PARAM_TYPE 0..6 follow the reference: base W, base b, spline W, spline scale, grid
    # lower bound, grid log-length, knot logits. The per-input grid tensors (4..6) leave
    # output_idx at -1. Targets per spec §3.1; the ZERO init type zeroes every target.
    if layer.get("initialization_type") == D.InitializationType.ZERO:
        w = b = spline = lower = length = knots = (0.0, 0.0)
    else:
        w = (0.0, 1.0 / math.sqrt(3.0 * layer.get("input_size")))
        b, spline = (0.0, 0.0), (0.0, 0.1)
        lower, length, knots = (-1.0, 0.0), (math.log(2.0), 0.0), (0.0, 0.0)
    return {
        "base_kernel": D.TensorRole(0, ("input_idx", "output_idx"), w),
        "base_bias": D.TensorRole(1, ("output_idx",), b),
        "spline_kernel": D.TensorRole(2, ("input_idx", "grid_idx", "output_idx"), spline),
        "spline_scale": D.TensorRole(3, ("input_idx", "output_idx"), w),
        "grid_lower": D.TensorRole(4, ("input_idx",), lower),
        "grid_log_length": D.TensorRole(5, ("input_idx",), length),
        "knot_logits": D.TensorRole(6, ("input_idx", "grid_idx"), knots),
    }


# ----------------------------------------------------------------------------- leaf describers


@dataclasses.dataclass(frozen=True, eq=False)
class LeafInfo:
    """What a describer sees of one params leaf.

    Attributes:
      path: the leaf's keys, e.g. ``("Block_0", "Dense_0", "kernel")``.
      shape: its shape.
      dtype: its dtype.
      module: the module owning the leaf (a Linen or NNX module instance, for reading its
        attributes such as ``feature_group_count``), or None when unknown.
      parent: the module owning ``module``, or None.
      value: its initial value (numpy), or None when unknown.
      siblings: ``{tensor name: shape}`` of every leaf of the same layer, this one included.
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: Any
    module: Any = None
    parent: Any = None
    value: np.ndarray | None = None
    siblings: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """The tensor's name: the last key."""
        return self.path[-1]

    @property
    def layer(self) -> str:
        """The layer's name: the other keys joined with ``"/"``."""
        return "/".join(self.path[:-1])

    @property
    def module_type(self) -> type | None:
        return None if self.module is None else type(self.module)


@dataclasses.dataclass(frozen=True, eq=False)
class Description:
    """What a describer says about one leaf.

    Attributes:
      kind: the layer kind, a name (registered with ``descriptors.register_kind`` on first use)
        or a code.
      param_type: the PARAM_TYPE index field; distinct for each tensor of a layer.
      axes: the index field enumerating each axis (:data:`~uhn_jax.core.descriptors.AXIS_FIELDS`;
        adjacent axes may share one, see :class:`~uhn_jax.core.descriptors.TensorRole`).
      fields: structure fields of the leaf's layer (names from ``descriptors.STRUCTURE_FIELDS``).
      target: init-stage ``(mean, std)``; None uses the leaf's initial value's.
    """

    kind: str | int
    param_type: int
    axes: tuple[str, ...]
    fields: Mapping[str, float] = dataclasses.field(default_factory=dict)
    target: tuple[float, float] | None = None


Describer = Callable[[LeafInfo], Description | None]


@dataclasses.dataclass(frozen=True)
class _Entry:
    match: Any  # a module class or a predicate on LeafInfo
    tensor: str | None
    fn: Describer

    def matches(self, info: LeafInfo) -> bool:
        if self.tensor is not None and info.name != self.tensor:
            return False
        if isinstance(self.match, type):
            return isinstance(info.module, self.match)
        return bool(self.match(info))


_DESCRIBERS: list[_Entry] = []


def register(match: type | Callable[[LeafInfo], bool], tensor: str | None = None, fn=None):
    """Registers a describer; usable as a decorator when ``fn`` is omitted.

    The newest registration is tried first; a describer returning None passes the leaf on.

    Args:
      match: a module class (leaves whose owning module is an instance of it) or a predicate
        ``LeafInfo -> bool``.
      tensor: only leaves with this name (last key); None for any.
      fn: the describer, ``LeafInfo -> Description | None``.

    Returns:
      ``fn`` (or the decorator).
    """
    if not isinstance(match, type) and not callable(match):
        raise TypeError(f"match must be a module class or a predicate, got {match!r}")

    def decorator(fn: Describer) -> Describer:
        _DESCRIBERS.append(_Entry(match, tensor, fn))
        return fn

    return decorator if fn is None else decorator(fn)


def unregister(fn: Describer) -> None:
    """Removes every registration of the describer ``fn``."""
    _DESCRIBERS[:] = [e for e in _DESCRIBERS if e.fn is not fn]


def describe(leaves: Sequence[LeafInfo]) -> tuple[D.LayerSpec, ...]:
    """Layer specs with explicit roles for params leaves (layers in order of first leaf).

    Leaves no describer takes get the generic description, with one warning naming them all.

    Raises:
      ValueError: naming the leaf, for a non-float leaf, a describer's bad output, a leaf with
        more axes than index fields, or leaves of one layer that disagree on its kind, its
        structure fields or share a ``param_type``.
    """
    layers: dict[str, list[tuple[LeafInfo, Description | None]]] = {}
    for info in leaves:
        layers.setdefault(info.layer, []).append((info, _describe_leaf(info)))
    specs = tuple(_layer_spec(name, items) for name, items in layers.items())
    generic = ["/".join(i.path) for items in layers.values() for i, d in items if d is None]
    if generic:
        warnings.warn(
            f"no describer for {len(generic)} params leaves, described generically (kind "
            f"'generic', one index field per axis, init target from the initial value): "
            f"{generic}. Register one with uhn_jax.core.roles.register to describe them.",
            stacklevel=2,
        )
    return specs


def _describe_leaf(info: LeafInfo) -> Description | None:
    where = f"params leaf {'/'.join(info.path)}"
    if not jnp.issubdtype(info.dtype, jnp.floating):  # bfloat16 too, unlike numpy's
        raise ValueError(
            f"{where} has dtype {np.dtype(info.dtype)}; only float leaves can be generated "
            "(leave it out with select=)"
        )
    for entry in reversed(_DESCRIBERS):
        if entry.matches(info):
            desc = entry.fn(info)
            if desc is not None:
                name = getattr(entry.fn, "__name__", repr(entry.fn))
                return _checked(info, desc, f"{where} (describer {name})")
    if len(info.shape) > len(D.AXIS_FIELDS):
        raise ValueError(
            f"{where} has {len(info.shape)} axes but only {len(D.AXIS_FIELDS)} index fields "
            "can enumerate axes; register a describer that folds adjacent axes "
            "(uhn_jax.core.roles.register) or leave it out with select="
        )
    return None


def _checked(info: LeafInfo, desc: Description, where: str) -> Description:
    if not isinstance(desc, Description):
        raise ValueError(f"{where} returned {type(desc).__name__}, not a roles.Description")
    D.fold_axes(info.shape, tuple(desc.axes), where)
    unknown = set(desc.fields) - set(D.STRUCTURE_FIELDS[2:])
    if unknown:
        raise ValueError(f"{where}: unknown structure fields {sorted(unknown)}")
    param_type = desc.param_type
    if (
        isinstance(param_type, bool)
        or not isinstance(param_type, int | np.integer)
        or param_type < 0
    ):
        raise ValueError(f"{where}: param_type must be an int >= 0, got {param_type!r}")
    target = desc.target
    if target is None:
        if info.value is None:
            raise ValueError(f"{where}: no init target and no initial value to take it from")
        value = np.asarray(info.value, np.float64)
        target = (float(value.mean()), float(value.std()))
    target = tuple(np.asarray(target, np.float64).reshape(-1).tolist())
    if len(target) != 2 or not all(map(math.isfinite, target)) or target[1] < 0:
        raise ValueError(f"{where}: target must be (mean, std >= 0), got {desc.target!r}")
    kind = D.register_kind(desc.kind) if isinstance(desc.kind, str) else int(desc.kind)
    fields = {k: float(v) for k, v in desc.fields.items()}
    return Description(kind, int(desc.param_type), tuple(desc.axes), fields, target)


def _generic(info: LeafInfo, param_type: int) -> Description:
    # Flax convention: the last axis is the output, the first the input; kernel-like axes
    # in between.
    rank = len(info.shape)
    middle = ("kernel_h_idx", "kernel_w_idx", "embedding_idx", "sequence_idx", "grid_idx")
    axes = ("input_idx", *middle[: rank - 2], "output_idx")[-rank:] if rank else ()
    where = f"params leaf {'/'.join(info.path)} (generic description)"
    return _checked(info, Description(GENERIC, param_type, axes), where)


def _layer_spec(name: str, items) -> D.LayerSpec:
    kinds = {d.kind for _, d in items if d is not None}
    if len(kinds) > 1:
        found = {"/".join(i.path): D.kind_name(d.kind) for i, d in items if d is not None}
        raise ValueError(f"layer {name!r}: its leaves are described as different kinds {found}")
    # Leaves nobody described join their layer's kind, after its described param types.
    first = 1 + max((d.param_type for _, d in items if d is not None), default=-1)
    unnamed = sorted(i.name for i, d in items if d is None)
    roles, fields, owner = {}, {}, {}
    for info, desc in items:
        desc = desc or _generic(info, first + unnamed.index(info.name))
        for key, value in desc.fields.items():
            if fields.setdefault(key, value) != value:
                raise ValueError(
                    f"layer {name!r}: its leaves disagree on structure field {key!r} "
                    f"({fields[key]:g} vs {value:g} from {'/'.join(info.path)})"
                )
        if desc.param_type in owner:
            raise ValueError(
                f"layer {name!r}: tensors {owner[desc.param_type]!r} and {info.name!r} share "
                f"param_type {desc.param_type}; describe each tensor with its own"
            )
        owner[desc.param_type] = info.name
        roles[info.name] = D.TensorRole(desc.param_type, desc.axes, desc.target)
    kind = kinds.pop() if kinds else GENERIC
    return D.LayerSpec(name, kind, tuple(sorted(fields.items())), tuple(roles.items()))


# ----------------------------------------------------------------------------- Flax describers


def _flax_class(module: Any, names) -> str | None:
    """The name of the first class of ``module``'s MRO that is a Flax class in ``names``."""
    for cls in type(module).__mro__ if module is not None else ():
        if cls.__module__.startswith("flax.") and cls.__name__ in names:
            return cls.__name__
    return None


def _flax(*names: str) -> Callable[[LeafInfo], bool]:
    return lambda info: _flax_class(info.module, names) is not None


def _bias_type(info: LeafInfo) -> dict[str, float]:
    return {"bias_type": float("bias" in info.siblings)}


@register(_flax("Dense", "Linear"))
def _dense(info: LeafInfo) -> Description | None:
    kernel = info.siblings.get("kernel")
    if kernel is None or len(kernel) != 2:
        return None
    fields = {"input_size": kernel[0], "output_size": kernel[1], **_bias_type(info)}
    if info.name == "kernel":
        return Description("linear", 0, ("input_idx", "output_idx"), fields)
    if info.name == "bias" and info.shape == kernel[1:]:
        return Description("linear", 1, ("output_idx",), fields)
    return None


# param_type of (kernel, bias) of each attention projection, as the built-in "mha" kind.
_MHA_TYPES = {"query": (0, 3), "key": (1, 4), "value": (2, 5), "out": (6, 7)}
_MHA_NAMES = ("MultiHeadDotProductAttention", "MultiHeadAttention", "SelfAttention")


def _out_rank(info: LeafInfo, kernel: tuple[int, ...]) -> int | None:
    """How many trailing kernel axes are outputs (None: not a plain DenseGeneral)."""
    module = info.module
    if getattr(module, "batch_dims", ()) or getattr(module, "batch_axis", {}):
        return None
    features = getattr(module, "features", getattr(module, "out_features", None))
    if features is not None:
        n = len(features) if isinstance(features, Sequence) else 1
    elif "bias" in info.siblings:
        n = len(info.siblings["bias"])
    else:
        return None
    return n if 1 <= n < len(kernel) else None


@register(_flax("DenseGeneral", "LinearGeneral"))
def _dense_general(info: LeafInfo) -> Description | None:
    kernel = info.siblings.get("kernel")
    n_out = None if kernel is None else _out_rank(info, kernel)
    if n_out is None:
        return None
    n_in = len(kernel) - n_out
    ins, outs = kernel[:n_in], kernel[n_in:]
    fields = {"input_size": math.prod(ins), "output_size": math.prod(outs), **_bias_type(info)}
    projection = info.path[-2] if len(info.path) >= 2 else ""
    attention = _flax_class(info.parent, _MHA_NAMES) and projection in _MHA_TYPES
    kind, types = ("mha", _MHA_TYPES[projection]) if attention else ("linear", (0, 1))
    if attention:
        fields["num_heads"] = (ins if projection == "out" else outs)[0]
    if info.name == "kernel":
        return Description(kind, types[0], ("input_idx",) * n_in + ("output_idx",) * n_out, fields)
    if info.name == "bias" and info.shape == outs:
        return Description(kind, types[1], ("output_idx",) * n_out, fields)
    return None


def _conv(info: LeafInfo, kind: str = "conv") -> Description | None:
    # Flax kernels are (*spatial, in / groups, out). Leading spatial axes fold into
    # kernel_h_idx, so 1-D, 2-D and 3-D kernels all fit.
    kernel = info.siblings.get("kernel")
    if kernel is None or len(kernel) < 3:
        return None
    spatial, (c_in, c_out) = kernel[:-2], kernel[-2:]
    groups = int(getattr(info.module, "feature_group_count", 1) or 1)
    fields = {
        "input_size": c_in * groups,
        "output_size": c_out,
        "kernel_size": max(spatial),
        "group_num": groups,
        **_bias_type(info),
    }
    if info.name == "kernel":
        k_axes = ("kernel_h_idx",) * (len(spatial) - 1) + ("kernel_w_idx",)
        return Description(kind, 0, (*k_axes, "input_idx", "output_idx"), fields)
    if info.name == "bias" and info.shape == (c_out,):
        return Description(kind, 1, ("output_idx",), fields)
    return None


register(_flax("Conv"), fn=_conv)
register(_flax("ConvTranspose"), fn=lambda info: _conv(info, "conv_transpose"))


@register(_flax("Embed"), "embedding")
def _embed(info: LeafInfo) -> Description | None:
    if len(info.shape) != 2:
        return None
    fields = {"embedding_num": info.shape[0], "output_size": info.shape[1]}
    return Description("embedding", 0, ("embedding_idx", "output_idx"), fields)


@register(_flax(*NORM_TYPES))
def _norm(info: LeafInfo) -> Description | None:
    if info.name not in ("scale", "bias") or not info.shape:
        return None
    cls = _flax_class(info.module, NORM_TYPES)
    fields = {
        "output_size": math.prod(info.shape),
        "norm_type": NORM_TYPES[cls],
        "group_num": int(getattr(info.module, "num_groups", 0) or 0),
        **_bias_type(info),
    }
    axes = ("output_idx",) * len(info.shape)
    return Description("norm", int(info.name == "bias"), axes, fields)
