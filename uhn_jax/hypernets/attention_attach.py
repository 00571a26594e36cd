"""Attaching attention hypernetworks to every attention layer of a frozen model, unedited.

:func:`attach` finds the attention layers of a model from one abstract trace of its ``apply``
and returns an :class:`AttentionHypernet`, whose ``apply(hyper_params, frozen, *args)`` runs
the model with each layer's key and value inputs transformed by its
:class:`~uhn_jax.hypernets.attention.KVHypernet`. Two ways in, neither edits the model:

* **Linen** (a module, or a :class:`~uhn_jax.models.flax_adapter.FlaxModel` of one): every
  call of ``nn.MultiHeadDotProductAttention.__call__`` is intercepted with
  ``nn.intercept_methods``; its ``inputs_k`` and ``inputs_v`` (defaulting, as Flax does, to
  ``inputs_q`` and ``inputs_k``) are replaced by their transforms and ``inputs_q`` is passed on
  unchanged. A subclass that calls ``super().__call__`` (``nn.SelfAttention``) is caught there.
  A layer is addressed by its module path (``block/self_attn``).
* **A params-tree base model** (the library's :class:`~uhn_jax.models.transformer.Transformer`):
  every params layer holding ``key_kernel`` and ``value_kernel`` (the library's attention
  layout) is an attention layer; ``apply`` passes the model those kernels wrapped so that
  ``inputs @ kernel`` computes ``transform(inputs) @ kernel``: the input of exactly that
  projection changes, ``query_kernel`` is untouched. :func:`attach` checks with a trace that
  the model uses each wrapped kernel that way (and only that way). A layer is addressed by its
  params path (``layer_001``).

The frozen params are an argument of ``apply``, never of the optimiser: take gradients with
respect to ``hyper_params`` only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uhn_jax.hypernets import attention
from uhn_jax.models import flax_adapter

Path = tuple[str, ...]
#: ``transform(path, role, x) -> x'``: what an attention layer's key or value input becomes.
Transform = Callable[[Path, str, jax.Array], jax.Array]

_MHA_CALL = inspect.unwrap(nn.MultiHeadDotProductAttention.__call__)
_MHA_SIGNATURE = inspect.signature(_MHA_CALL)
_INTERCEPT, _KERNELS = "intercept", "kernels"


@dataclasses.dataclass(frozen=True)
class Site:
    """One attention layer: its path and the feature sizes of its key and value inputs."""

    path: Path
    key_features: int
    value_features: int

    @property
    def name(self) -> str:
        """The params key of its pair: the path joined with ``/`` (``<root>`` if empty)."""
        return "/".join(self.path) or "<root>"


@dataclasses.dataclass(frozen=True)
class AttentionHypernet:
    """Attention hypernetworks attached to a frozen model; build with :func:`attach`.

    Frozen and hashable; holds no arrays. Params are ``{name: {"key": ..., "value": ...}}``
    with one entry per :class:`Site` (``Site.name``), or the single entry
    ``attention.SHARED`` when ``settings.shared``.
    """

    model: Any
    settings: attention.Settings
    sites: tuple[Site, ...]
    mechanism: str  # "intercept" (Linen) or "kernels" (a params-tree base model)

    @property
    def names(self) -> tuple[str, ...]:
        """The top-level keys of the params."""
        return (attention.SHARED,) if self.settings.shared else tuple(s.name for s in self.sites)

    def init(self, key: jax.Array) -> dict:
        """Fresh params: the frozen model's outputs are unchanged with them (``zero_last``)."""
        params = {}
        for i, name in enumerate(self.names):
            site = self.sites[0] if self.settings.shared else self.sites[i]
            k = jnp.zeros((1, site.key_features), jnp.float32)
            v = jnp.zeros((1, site.value_features), jnp.float32)
            net = attention.KVHypernet(self.settings)
            params[name] = net.init(jax.random.fold_in(key, i), k, v)["params"]
        return params

    def apply(self, hyper_params: Mapping, frozen: Any, *args, hyper_rng=None, **kwargs):
        """The frozen model's ``apply(frozen, *args, **kwargs)`` with the pairs attached.

        Pure and jit-safe. Args:
          hyper_params: params of :meth:`init` (trained, or from ``attention.load``).
          frozen: what the model's own ``apply`` takes first (Linen: its variables;
            a base model: its params). Not changed.
          *args, **kwargs: passed on to the model's ``apply`` (its inputs, ``train``/``rng``
            or ``deterministic``/``rngs``, ``mutable``, ...).
          hyper_rng: the pairs' dropout key; ``None`` turns their dropout off.

        Raises:
          ValueError: if ``hyper_params`` does not fit these sites (naming the entry).
        """
        self.check(hyper_params)
        transform = functools.partial(self._transform, hyper_params, hyper_rng)
        if self.mechanism == _KERNELS:
            return self.model.apply(_wrap_kernels(frozen, self.sites, transform), *args, **kwargs)
        with nn.intercept_methods(_interceptor(transform)):
            return self.model.apply(frozen, *args, **kwargs)

    def _transform(self, hyper_params, rng, path: Path, role: str, x: jax.Array) -> jax.Array:
        index = next((i for i, s in enumerate(self.sites) if s.path == path), None)
        if index is None:
            raise ValueError(
                f"attention layer {'/'.join(path)} was not called when the hypernetworks were "
                f"attached (sites: {[s.name for s in self.sites]}); attach with an example "
                "call that reaches every attention layer"
            )
        name = attention.SHARED if self.settings.shared else self.sites[index].name
        rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, index)}
        return attention.KVHypernet(self.settings).apply(
            {"params": hyper_params[name]},
            role,
            x,
            deterministic=rng is None,
            rngs=rngs,
            method=attention.KVHypernet.transform,
        )

    def check(self, hyper_params: Any) -> None:
        """``hyper_params`` must have :meth:`init`'s entries and shapes.

        Raises:
          ValueError: naming the missing, unexpected or misshapen entry.
        """
        attention.check_tree(hyper_params, "hyper_params")
        missing = sorted(set(self.names) - set(hyper_params))
        extra = sorted(set(hyper_params) - set(self.names))
        if missing or extra:
            raise ValueError(
                f"hyper_params do not fit the attention layers of {_model_name(self.model)}: "
                f"missing {missing}, unexpected {extra} (shared={self.settings.shared})"
            )
        got = jax.tree_util.tree_flatten_with_path(hyper_params)[0]
        want = dict(jax.tree_util.tree_flatten_with_path(self._shapes)[0])
        for path, x in got:
            expected = want.get(path)
            if expected is None or tuple(np.shape(x)) != expected.shape:
                shape = None if expected is None else expected.shape
                raise ValueError(
                    f"hyper_params{jax.tree_util.keystr(path)} has shape {np.shape(x)}, "
                    f"expected {shape} (settings {self.settings})"
                )
        if len(got) != len(want):
            raise ValueError(f"hyper_params have {len(got)} leaves, expected {len(want)}")

    @functools.cached_property
    def _shapes(self):
        return jax.eval_shape(self.init, jax.random.key(0))

    def num_params(self, hyper_params: Any) -> int:
        """Trainable scalars in ``hyper_params``."""
        return attention.num_params(hyper_params)


def attach(
    model: Any,
    frozen: Any,
    *example_args,
    settings: attention.Settings | None = None,
    **example_kwargs,
) -> AttentionHypernet:
    """Finds every attention layer of ``model`` and attaches a key/value pair to it.

    Args:
      model: a Linen module, a Linen ``FlaxModel``, or a base model with
        ``apply(params, ...)`` whose attention layers hold ``key_kernel`` and ``value_kernel``.
      frozen: what ``model.apply`` takes first (Linen variables, or the params); arrays or
        their ``jax.ShapeDtypeStruct``s (``jax.eval_shape(model.init, ...)``): only their
        shapes are read.
      *example_args, **example_kwargs: an example call's other arguments; traced abstractly
        (nothing runs) to find the attention layers and their input sizes.
      settings: the pairs' :class:`~uhn_jax.hypernets.attention.Settings` (default ones).

    Raises:
      TypeError: for an NNX model, a model without ``apply``, or bad settings.
      ValueError: naming the model if it has no attention layer; naming the layers if
        ``shared`` pairs would see different feature sizes or a layer would be empty.
    """
    settings = attention.Settings() if settings is None else settings
    if not isinstance(settings, attention.Settings):
        raise TypeError(f"attach: settings must be an attention.Settings, got {settings!r}")
    name = _model_name(model)
    if isinstance(model, nnx.Module) or getattr(model, "framework", None) == "nnx":
        raise TypeError(
            f"attach: {name} is an NNX model; only Linen and params-tree models are supported "
            "yet (nnx.MultiHeadAttention is not intercepted)"
        )
    if isinstance(model, nn.Module | flax_adapter.FlaxModel):
        sites, mechanism = _linen_sites(model, frozen, example_args, example_kwargs), _INTERCEPT
    elif callable(getattr(model, "apply", None)) and isinstance(frozen, Mapping):
        sites, mechanism = _kernel_sites(model, frozen, example_args, example_kwargs), _KERNELS
    else:
        raise TypeError(
            f"attach: {name} is neither a Linen module nor a model with apply(params, ...) "
            f"given a params mapping (frozen is a {type(frozen).__name__})"
        )
    if not sites:
        what = (
            "calls no nn.MultiHeadDotProductAttention"
            if mechanism == _INTERCEPT
            else "has no params layer holding both key_kernel and value_kernel"
        )
        raise ValueError(f"attach: model {name} has no attention layer to attach to: it {what}")
    _check_sites(sites, settings)
    return AttentionHypernet(model, settings, sites, mechanism)


def _model_name(model: Any) -> str:
    if isinstance(model, flax_adapter.FlaxModel) and model.framework == "linen":
        return f"FlaxModel({type(model.module).__name__})"
    return type(model).__name__


def _check_sites(sites: tuple[Site, ...], settings: attention.Settings) -> None:
    """Every layer gets non-empty widths; shared pairs see one feature size per role."""
    for s in sites:
        settings.widths(s.key_features, f"{s.name} (keys)")
        settings.widths(s.value_features, f"{s.name} (values)")
    if settings.shared:
        sizes = {(s.key_features, s.value_features): s.name for s in sites}
        if len(sizes) > 1:
            found = ", ".join(f"{n}: keys {k}, values {v}" for (k, v), n in sizes.items())
            raise ValueError(
                f"Settings.shared needs every attention layer to have the same key and value "
                f"feature sizes; found {found}. Use shared=False (one pair per layer)"
            )


# ----------------------------------------------------------------------------- Linen


def _is_attention_call(context) -> bool:
    """Whether this is ``MultiHeadDotProductAttention.__call__`` itself (not a subclass's
    override, whose ``super().__call__`` is intercepted in turn)."""
    if not isinstance(context.module, nn.MultiHeadDotProductAttention):
        return False
    fn = getattr(context.orig_method, "func", context.orig_method)
    return inspect.unwrap(fn) is _MHA_CALL


def _split_inputs(args, kwargs):
    """``(q, k, v, rest)`` of a ``MultiHeadDotProductAttention`` call, with Flax's defaults;
    ``None`` for arguments Flax itself rejects (it then raises its own error)."""
    try:
        bound = _MHA_SIGNATURE.bind(None, *args, **kwargs)
    except TypeError:
        return None
    rest = dict(bound.arguments)
    del rest["self"]
    q, k, v = rest.pop("inputs_q"), rest.pop("inputs_k", None), rest.pop("inputs_v", None)
    kv = rest.pop("inputs_kv", None)
    if kv is not None:
        if k is not None or v is not None:
            return None
        k = v = kv
    if k is None and v is not None:
        return None
    k = q if k is None else k
    return q, k, k if v is None else v, rest


def _interceptor(transform: Transform):
    """An ``nn.intercept_methods`` interceptor that transforms every attention call's key and
    value inputs."""

    def intercept(next_fun, args, kwargs, context):
        split = _split_inputs(args, kwargs) if _is_attention_call(context) else None
        if split is None:
            return next_fun(*args, **kwargs)
        q, k, v, rest = split
        path = tuple(context.module.path)
        k, v = transform(path, "key", k), transform(path, "value", v)
        with warnings.catch_warnings():
            # Flax warns when inputs_v is square (length == features), in case it was meant
            # as a mask; here it is the value input by construction.
            warnings.filterwarnings("ignore", "You are passing an array of shape", Warning)
            return next_fun(q, k, v, **rest)

    return intercept


def _linen_sites(model, frozen, args, kwargs) -> tuple[Site, ...]:
    """The attention layers a Linen model calls, from an abstract trace."""
    found: dict[Path, dict[str, int]] = {}

    def record(path: Path, role: str, x: jax.Array) -> jax.Array:
        features = found.setdefault(path, {})
        size = int(x.shape[-1])
        if features.setdefault(role, size) != size:
            raise ValueError(
                f"attach: attention layer {'/'.join(path)} is called with {role} inputs of "
                f"{features[role]} and {size} features; one pair cannot take both"
            )
        return x

    with nn.intercept_methods(_interceptor(record)):
        jax.eval_shape(lambda f: model.apply(f, *args, **kwargs), frozen)
    return tuple(Site(p, f["key"], f["value"]) for p, f in found.items())


# ----------------------------------------------------------------------------- params trees


class _TransformedKernel:
    """A projection kernel whose input is transformed first: ``x @ this`` is
    ``transform(x) @ kernel``. It is not an array (``jax.Array.__matmul__`` returns
    ``NotImplemented`` for it, so Python calls :meth:`__rmatmul__`); any other use fails."""

    __slots__ = ("kernel", "transform")
    __array_ufunc__ = None  # a numpy left operand defers to __rmatmul__ too

    def __init__(self, kernel: Any, transform: Callable[[jax.Array], jax.Array]):
        self.kernel, self.transform = kernel, transform

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        return self.transform(x) @ self.kernel


def _layers(tree: Mapping, prefix: Path = ()):
    """``(path, layer)`` of every mapping in a params tree holding key and value kernels."""
    if {"key_kernel", "value_kernel"} <= set(tree):
        yield prefix, tree
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _layers(v, (*prefix, str(k)))


def _wrap_kernels(params: Mapping, sites: tuple[Site, ...], transform: Transform) -> dict:
    """``params`` with every site's key and value kernels wrapped (paths copied, leaves shared)."""
    out = dict(params)
    for site in sites:
        node = out
        for k in site.path:
            node[k] = dict(node[k])
            node = node[k]
        for role in attention.ROLES:
            fn = functools.partial(transform, site.path, role)
            node[f"{role}_kernel"] = _TransformedKernel(node[f"{role}_kernel"], fn)
    return out


def _kernel_sites(model, params, args, kwargs) -> tuple[Site, ...]:
    """The attention layers of a params-tree model, checked to project with ``inputs @ kernel``."""
    sites = tuple(
        Site(path, int(np.shape(p["key_kernel"])[0]), int(np.shape(p["value_kernel"])[0]))
        for path, p in _layers(params)
    )
    if not sites:
        return sites
    jax.eval_shape(lambda p: model.apply(p, *args, **kwargs), params)  # the model's errors first
    used = collections.Counter()

    def record(path: Path, role: str, x: jax.Array) -> jax.Array:
        used[path, role] += 1
        return x

    name = _model_name(model)
    try:
        jax.eval_shape(
            lambda p: model.apply(_wrap_kernels(p, sites, record), *args, **kwargs), params
        )
    except Exception as e:
        raise ValueError(
            f"attach: {name} uses an attention kernel other than as `inputs @ kernel` "
            f"({type(e).__name__}: {e}); the key/value inputs cannot be intercepted there"
        ) from e
    unused = [f"{s.name}/{r}_kernel" for s in sites for r in attention.ROLES if not used[s.path, r]]
    if unused:
        raise ValueError(f"attach: {name}.apply never computes `inputs @ kernel` with {unused}")
    return sites
