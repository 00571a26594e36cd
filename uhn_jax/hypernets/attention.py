"""Attention hypernetworks for a frozen model: residual MLPs on the key and value inputs.

The Stable-Diffusion "hypernetwork" (NovelAI; AUTOMATIC1111's ``hypernetwork.py``): every
attention layer of a frozen model gets a module pair, one for keys and one for values, that
maps the *inputs* of the key and value projections ``x -> x + strength * MLP(x)``; the query
input is left alone. Only the pair's params train; the model and its params are untouched.

* :class:`Settings`: the MLP's layer structure (multipliers of the feature size, e.g.
  ``(1, 2, 1)``), activation, optional layer norm and dropout, init, one pair per attention
  layer or one shared pair.
* :class:`ResidualMLP` and :class:`KVHypernet` (the pair), plain Linen modules.
* :func:`uhn_jax.hypernets.attention_attach.attach` finds every attention layer of a model and
  returns an :class:`~uhn_jax.hypernets.attention_attach.AttentionHypernet` with ``init`` and
  ``apply``.
* :func:`save` / :func:`load`: the pair's params and settings as a small orbax checkpoint of
  their own.

Initialisation. ``init="zero_last"`` (the default) zero-initialises the last Dense of each MLP
(kernel and bias), so ``MLP(x) = 0`` and the frozen model's outputs are exactly unchanged at
step 0; the hidden layers keep Flax's default init, so the first gradient step moves the last
layer and every later one all of them. ``init="normal"`` is AUTOMATIC1111's default
("Normal"): every kernel ``N(0, 0.01^2)``, zero biases, so the change at step 0 is small but not
zero. Layer norm (if on) follows the activation of every hidden layer, as there, but never
the last layer (normalising its zero-initialised output, of zero variance, would scale that
layer's first gradient by ``1/sqrt(eps)``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from uhn_jax.core import checks
from uhn_jax.hypernets import conditional_layers

#: Initialisations of the residual MLP (see the module docstring).
INITS = ("zero_last", "normal")
#: The params key of the one pair shared by every attention layer (``Settings.shared``).
SHARED = "shared"
#: The two members of a pair, also their params keys.
ROLES = ("key", "value")
_FORMAT, _VERSION = "uhn_jax.attention_hypernet", 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an attention hypernetwork looks like; every field is validated on construction.

    Attributes:
      layer_structure: widths of the residual MLP as multipliers of the feature size ``F``,
        input first: ``(1, 2, 1)`` is ``F -> 2F -> F``. Starts and ends with 1 (the residual's
        input and output); a layer of width ``int(F * m)`` must keep at least one unit.
      activation: after every hidden layer; one of ``conditional_layers.ACTIVATIONS``
        (``identity`` is AUTOMATIC1111's ``linear``).
      layer_norm: a LayerNorm after every hidden layer's activation.
      dropout_rate: dropout after every hidden layer, in training (``hyper_rng`` given).
      init: ``zero_last`` (exact identity at step 0) or ``normal`` (AUTOMATIC1111's).
      shared: one pair for every attention layer (their key and value feature sizes must
        agree) instead of one pair per layer.
      strength: scales the residual, ``x + strength * MLP(x)``; 0 turns the pair off.
    """

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str = "relu"
    layer_norm: bool = False
    dropout_rate: float = 0.0
    init: str = "zero_last"
    shared: bool = False
    strength: float = 1.0

    def __post_init__(self) -> None:
        ls = self.layer_structure
        if (
            not isinstance(ls, tuple | list)
            or len(ls) < 2
            or not all(_real(m) and math.isfinite(m) and m > 0 for m in ls)
        ):
            raise ValueError(
                "Settings.layer_structure must be a sequence of at least 2 positive, finite "
                f"multipliers of the feature size, e.g. (1, 2, 1); got {ls!r}"
            )
        if ls[0] != 1 or ls[-1] != 1:
            raise ValueError(
                "Settings.layer_structure must start and end with 1 (the residual MLP maps "
                f"features back to the same size); got {tuple(ls)!r}"
            )
        object.__setattr__(self, "layer_structure", tuple(float(m) for m in ls))
        checks.choice("Settings.activation", self.activation, tuple(conditional_layers.ACTIVATIONS))
        checks.choice("Settings.init", self.init, INITS)
        for name in ("layer_norm", "shared"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Settings.{name} must be a bool, got {getattr(self, name)!r}")
        if not _real(self.dropout_rate):
            raise ValueError(f"Settings.dropout_rate must be a number, got {self.dropout_rate!r}")
        checks.in_range("Settings.dropout_rate", self.dropout_rate, 0.0, 1.0, hi_open=True)
        if not _real(self.strength) or not math.isfinite(self.strength):
            raise ValueError(f"Settings.strength must be a finite number, got {self.strength!r}")

    def widths(self, features: int, where: str = "") -> tuple[int, ...]:
        """Layer widths for ``features`` inputs, ``int(features * m)`` (AUTOMATIC1111's rounding).

        Raises:
          ValueError: naming ``layer_structure`` (and ``where``) if a layer would be empty.
        """
        widths = tuple(int(features * m) for m in self.layer_structure)
        if min(widths) < 1:
            raise ValueError(
                f"Settings.layer_structure {self.layer_structure} gives a layer of width 0 for "
                f"{features} features{f' at {where}' if where else ''}; raise the smallest "
                "multiplier"
            )
        return widths

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        d = dataclasses.asdict(self)
        d["layer_structure"] = list(self.layer_structure)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        """Settings from :meth:`to_dict`'s output.

        Raises:
          ValueError: naming unknown fields, or a bad value as the constructor does.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Settings field(s) {unknown}; known: {sorted(known)}")
        values = dict(d)
        if isinstance(values.get("layer_structure"), list):
            values["layer_structure"] = tuple(values["layer_structure"])
        return cls(**values)


def _real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class ResidualMLP(nn.Module):
    """``x + strength * MLP(x)`` on the last axis; see :class:`Settings` for the MLP."""

    settings: Settings

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        s = self.settings
        widths = s.widths(x.shape[-1])
        act = conditional_layers.ACTIVATIONS[s.activation]
        h, n = x, len(widths) - 1
        for i, width in enumerate(widths[1:]):
            last = i == n - 1
            h = nn.Dense(width, kernel_init=_kernel_init(s.init, last), name=f"dense_{i}")(h)
            if last:
                break
            h = act(h)
            if s.layer_norm:
                h = nn.LayerNorm(name=f"norm_{i}")(h)
            if s.dropout_rate:
                h = nn.Dropout(s.dropout_rate, deterministic=deterministic)(h)
        return (x + s.strength * h).astype(x.dtype)  # the frozen model keeps its dtypes


def _kernel_init(init: str, last: bool):
    if init == "normal":
        return nn.initializers.normal(0.01)
    return nn.initializers.zeros_init() if last else nn.linear.default_kernel_init


class KVHypernet(nn.Module):
    """The pair: ``key`` transforms the key projection's input, ``value`` the value's."""

    settings: Settings

    def setup(self) -> None:
        self.key = ResidualMLP(self.settings)
        self.value = ResidualMLP(self.settings)

    def __call__(
        self, inputs_k: jax.Array, inputs_v: jax.Array, *, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """``(key(inputs_k), value(inputs_v))``."""
        return (
            self.key(inputs_k, deterministic=deterministic),
            self.value(inputs_v, deterministic=deterministic),
        )

    def transform(self, role: str, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """One member on its own (``role`` is ``"key"`` or ``"value"``)."""
        return getattr(self, role)(x, deterministic=deterministic)


def num_params(params: Any) -> int:
    """Scalars in a params pytree."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- files


def check_tree(params: Any, where: str = "params") -> None:
    """``params`` must map names to ``{"key": ..., "value": ...}`` pairs.

    Raises:
      ValueError: naming ``where`` and the first entry that does not.
    """
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            f"{where} must be a non-empty mapping of attention layers to "
            f"{{'key': ..., 'value': ...}} params, got {type(params).__name__}"
        )
    for name, pair in params.items():
        if not isinstance(pair, Mapping) or set(pair) != set(ROLES):
            got = sorted(pair) if isinstance(pair, Mapping) else type(pair).__name__
            raise ValueError(f"{where}[{name!r}] must hold exactly {list(ROLES)}, got {got}")


def size_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (a file written by :func:`save`)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save(path: str | Path, params: Any, settings: Settings) -> int:
    """Writes the hypernetwork's params and settings as an orbax checkpoint of their own.

    The directory holds the params (orbax ``StandardSave``) and a JSON item with the settings
    and a format marker; nothing of the frozen model. An earlier file written by ``save`` at
    ``path`` is replaced; anything else there is refused.

    Args:
      path: the checkpoint directory.
      params: the params of ``AttentionHypernet.init`` (trained).
      settings: the :class:`Settings` they were built with.

    Returns:
      The size of what was written, in bytes.

    Raises:
      TypeError: if ``settings`` is not a :class:`Settings`.
      ValueError: if ``params`` is not a tree of key/value pairs.
      FileExistsError: if ``path`` exists and is not a file written by ``save``.
    """
    if not isinstance(settings, Settings):
        raise TypeError(f"save: settings must be a Settings, got {type(settings).__name__}")
    check_tree(params, "save: params")
    path = Path(path).absolute()
    if path.exists() and _read_meta(path) is None:
        raise FileExistsError(
            f"save: {path} exists and is not an attention-hypernetwork file; refusing to "
            "overwrite it (choose a new path)"
        )
    meta = {"format": _FORMAT, "version": _VERSION, "settings": settings.to_dict()}
    args = ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=args, force=True)
    return size_bytes(path)


def load(path: str | Path) -> tuple[dict, Settings]:
    """``(params, settings)`` of a file written by :func:`save`.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if it is not a file written by :func:`save`.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"load: no attention-hypernetwork file at {path}")
    meta = _read_meta(path)
    if meta is None:
        raise ValueError(f"load: {path} is not an attention-hypernetwork file written by save")
    if meta.get("version") != _VERSION:
        raise ValueError(
            f"load: {path} has format version {meta.get('version')!r}; this uhn_jax reads "
            f"version {_VERSION}"
        )
    args = ocp.args.Composite(params=ocp.args.StandardRestore())
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        params = ckptr.restore(path, args=args).params
    return params, Settings.from_dict(meta["settings"])


def _read_meta(path: Path) -> dict | None:
    """The JSON item of a file written by :func:`save`, or ``None`` if ``path`` is not one."""
    try:
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            meta = ckptr.restore(path, args=args).meta
    except Exception:  # orbax raises various errors for a directory it did not write
        return None
    return dict(meta) if isinstance(meta, Mapping) and meta.get("format") == _FORMAT else None
