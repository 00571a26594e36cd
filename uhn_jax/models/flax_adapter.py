"""Any Flax Linen or NNX module as a base model whose chosen params a UHN generates.

:class:`FlaxModel` satisfies the base-model protocol of :mod:`uhn_jax.models` (``init``,
``apply``, ``layers``, ``global_fields``) for one module. Its params are a plain nested dict
(the Linen ``params`` collection, or the NNX ``nnx.Param`` state); everything else (Linen
``batch_stats``/``cache``, NNX ``BatchStat``/``Cache``/RNG streams) is *state*, a plain nested
dict passed alongside and never generated. A ``select`` predicate on leaf paths picks the
generated leaves; :meth:`FlaxModel.split` and :meth:`FlaxModel.merge` separate them from the
rest. The descriptors of the generated leaves come from the leaf describers of
:mod:`uhn_jax.core.roles`, which see each leaf's owning module: recorded with
``nn.intercept_methods`` while a Linen module initialises, found with ``nnx.iter_graph`` in an
NNX one.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uhn_jax.core import descriptors, layouts, roles

Path = tuple[str, ...]
Select = Callable[[Path], bool]
#: NNX variable types kept as state by default; any other type but ``nnx.Param`` is refused
#: unless named in ``from_nnx(..., state_types=...)``.
NNX_STATE_TYPES = (nnx.BatchStat, nnx.Cache, nnx.RngState, nnx.Intermediate)


@dataclasses.dataclass(frozen=True)
class FlaxModel:
    """A Flax module as a base model with a chosen subset of its params generated.

    Frozen and hashable (a valid ``jax.jit`` static argument): it stores the module (Linen) or
    its ``GraphDef`` (NNX), shapes, dtypes and the descriptors' layer specs. The initial
    variables are kept by reference in ``initial``, outside hashing and equality: an NNX module
    cannot be re-initialised from a key, and a Linen module given its variables keeps them, so
    :meth:`init` returns them there.

    Build with :meth:`from_linen` or :meth:`from_nnx`.
    """

    framework: str  # "linen" or "nnx"
    module: Any  # the Linen module, or the NNX GraphDef
    layout: layouts.Layout  # of the generated leaves only
    specs: tuple[descriptors.LayerSpec, ...]
    generated: frozenset[Path]
    global_items: tuple[tuple[str, float], ...] = ()
    inputs: Any = None  # Linen: (treedef, ShapeDtypeStructs) of the example input
    init_kwargs: tuple[tuple[str, Any], ...] = ()
    train_arg: str | None = None  # Linen: "train" or "deterministic" if __call__ takes one
    nnx_trees: tuple = ()  # NNX: (params treedef, paths, state treedef, paths)
    initial: Any = dataclasses.field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_linen(
        cls,
        module: nn.Module,
        example_input: Any = None,
        *,
        variables: Mapping | None = None,
        select: Select | None = None,
        key: jax.Array | None = None,
        global_fields: Mapping[str, float] | None = None,
        **init_kwargs,
    ) -> FlaxModel:
        """Adapts a Linen module.

        Args:
          module: the (unbound) Linen module.
          example_input: an example input (a tuple is unpacked as several positional
            arguments), or the module's variables (a mapping with ``"params"``).
          variables: the module's variables; with an example input too, they are the initial
            values and the input only serves to find each leaf's module class.
          select: predicate on a params leaf's path (a tuple of strings): generate it or not.
            Default: every leaf.
          key: init key (default ``jax.random.key(0)``); the initial values set the leaves'
            init targets.
          global_fields: values of ``descriptors.GLOBAL_FIELDS`` (default all 0).
          **init_kwargs: keyword arguments of ``module.init`` (e.g. ``train=False``).

        Raises:
          ValueError: without an input or variables, if select chooses nothing, or for a leaf
            the role registry cannot describe (see :func:`uhn_jax.core.roles.describe`).
        """
        if isinstance(example_input, Mapping) and "params" in example_input:
            example_input, variables = None, example_input
        if example_input is None and variables is None:
            raise ValueError("from_linen needs an example input or the module's variables")
        key = jax.random.key(0) if key is None else key
        owners, inputs = {}, None
        if example_input is not None:
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            found, owners = _linen_init(module, key, args, init_kwargs, variables is not None)
            if variables is None:  # else init() returns the given variables
                leaves, treedef = jax.tree_util.tree_flatten(args)
                specs = tuple(jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves)
                variables, inputs = found, (treedef, specs)
        variables = dict(nn.meta.unbox(variables))
        params = variables.pop("params")
        return _make(
            "linen",
            module,
            params,
            variables,
            owners,
            select,
            global_fields,
            inputs=inputs,
            init_kwargs=tuple(sorted(init_kwargs.items())),
            train_arg=_train_arg(module),
        )

    @classmethod
    def from_nnx(
        cls,
        module: nnx.Module | tuple,
        select: Select | None = None,
        *,
        state_types: tuple[type, ...] = (),
        global_fields: Mapping[str, float] | None = None,
    ) -> FlaxModel:
        """Adapts an NNX module, or its ``(graphdef, state, ...)`` from ``nnx.split``.

        Args:
          module: the module or its split form.
          select: as in :meth:`from_linen`, over the ``nnx.Param`` leaves.
          state_types: NNX variable types kept as state besides :data:`NNX_STATE_TYPES`.
          global_fields: as in :meth:`from_linen`.

        Raises:
          ValueError: for a variable type that is neither ``nnx.Param`` nor a state type, a
            variable that does not hold an array, and as :meth:`from_linen`.
        """
        if isinstance(module, tuple):
            module = nnx.merge(*module)
        owners = _nnx_check(module, state_types)
        graphdef, params_state, rest_state = nnx.split(module, nnx.Param, ...)
        params, p_tree, p_paths = _to_dict(params_state)
        state, s_tree, s_paths = _to_dict(rest_state)
        trees = (p_tree, p_paths, s_tree, s_paths)
        return _make("nnx", graphdef, params, state, owners, select, global_fields, nnx_trees=trees)

    # ------------------------------------------------------------------ base-model protocol

    def init(self, key: jax.Array) -> dict:
        """The full params (a nested dict), freshly initialised when the module can be."""
        return self.init_variables(key)["params"]

    def init_variables(self, key: jax.Array) -> dict:
        """``{"params": params, "state": state}``: a Linen module given an example input is
        initialised with ``key``; otherwise (NNX, Linen from variables) the initial values."""
        if self.inputs is None:
            return {"params": self.initial["params"], "state": self.initial["state"]}
        treedef, specs = self.inputs
        args = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s.shape, s.dtype) for s in specs])
        rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
        variables = dict(nn.meta.unbox(self.module.init(rngs, *args, **dict(self.init_kwargs))))
        return {"params": variables.pop("params"), "state": variables}

    def apply(
        self,
        params: Mapping,
        x: Any,
        *args,
        train: bool = False,
        rng: jax.Array | None = None,
        state: Mapping | None = None,
        **kwargs,
    ):
        """Outputs for inputs ``x`` (the base-model protocol).

        ``train`` goes to a Linen ``__call__``'s ``train``/``deterministic`` argument if it
        has one, or switches an NNX module's ``train()``/``eval()``; ``rng`` is the dropout
        key when training. ``state`` defaults to the initial state. Running statistics are
        not updated here; use :meth:`call` with ``mutable=`` for that.
        """
        state = self.initial["state"] if state is None else state
        if self.framework == "nnx":
            kwargs.setdefault("train", train)
        elif self.train_arg:
            kwargs.setdefault(self.train_arg, train if self.train_arg == "train" else not train)
        if train and rng is not None:
            kwargs.setdefault("rngs", {"dropout": rng})
        if train and state and self.framework == "linen" and "mutable" not in kwargs:
            return self.call(params, state, x, *args, mutable=list(state), **kwargs)[0]
        return self.call(params, state, x, *args, **kwargs)

    def layers(self) -> tuple[descriptors.LayerSpec, ...]:
        """Layer specs of the generated leaves (roles included)."""
        return self.specs

    def global_fields(self) -> dict[str, float]:
        return dict(self.global_items)

    def build_descriptors(self) -> descriptors.ModelDescriptors:
        """The descriptors of the generated leaves."""
        return descriptors.build(self.layout, self.specs, self.global_fields())

    # ------------------------------------------------------------------ pure helpers

    def split(self, params: Mapping) -> tuple[dict, dict]:
        """``(generated, rest)``: the selected leaves and the others, as nested dicts."""
        return _partition(params, self.generated)

    def merge(self, generated: Mapping, rest: Mapping) -> dict:
        """The full params from :meth:`split`'s two parts."""
        return _deep_merge(rest, generated)

    def call(self, params: Mapping, state: Mapping, *args, **kwargs):
        """Runs the module on ``args`` with full ``params`` and ``state``.

        Linen: ``module.apply({"params": params, **state}, *args, **kwargs)`` (so ``mutable=``
        and ``rngs=`` work as there). NNX: the module is rebuilt from its graphdef; ``train``
        (``True``/``False``/``None``) switches ``train()``/``eval()``, ``rngs={"dropout": key}``
        reseeds its RNG streams and ``mutable=True`` also returns the new state.
        """
        if self.framework == "linen":
            return self.module.apply({"params": params, **state}, *args, **kwargs)
        return self._nnx_call(params, state, *args, **kwargs)

    def to_nnx(self, params: Mapping, state: Mapping) -> nnx.Module:
        """The NNX module with these params and state (for export)."""
        p_tree, p_paths, s_tree, s_paths = self.nnx_trees
        p = jax.tree_util.tree_unflatten(p_tree, [_get(params, k) for k in p_paths])
        s = jax.tree_util.tree_unflatten(s_tree, [_get(state, k) for k in s_paths])
        return nnx.merge(self.module, p, s)

    def _nnx_call(self, params, state, *args, mutable=False, rngs=None, train=None, **kwargs):
        module = self.to_nnx(params, state)
        if train is not None:
            module.train() if train else module.eval()
        if rngs:
            nnx.reseed(module, **rngs)
        out = module(*args, **kwargs)
        if not mutable:
            return out
        return out, _to_dict(nnx.split(module, nnx.Param, ...)[2])[0]


# ----------------------------------------------------------------------------- construction


def _make(framework, module, params, state, owners, select, global_fields, **extra) -> FlaxModel:
    """Describes the selected leaves and builds the :class:`FlaxModel`."""
    items = _items(params)
    if not items:
        raise ValueError(f"the {framework} module has no params leaves to generate")
    chosen = [(p, x) for p, x in items if select is None or select(p)]
    if not chosen:
        paths = ["/".join(p) for p, _ in items]
        raise ValueError(f"select chose none of the {len(paths)} params leaves: {paths}")
    global_items = tuple(sorted((k, float(v)) for k, v in (global_fields or {}).items()))
    unknown = {k for k, _ in global_items} - set(descriptors.GLOBAL_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown global_fields {sorted(unknown)}; known: {descriptors.GLOBAL_FIELDS}"
        )
    siblings: dict[Path, dict[str, tuple[int, ...]]] = {}
    for p, x in items:
        siblings.setdefault(p[:-1], {})[p[-1]] = tuple(np.shape(x))
    infos = [
        roles.LeafInfo(
            path=p,
            shape=tuple(np.shape(x)),
            dtype=np.dtype(x.dtype),
            module=owners.get(p[:-1]),
            parent=owners.get(p[:-2]) if len(p) > 1 else None,
            value=np.asarray(x),
            siblings=siblings[p[:-1]],
        )
        for p, x in chosen
    ]
    specs = roles.describe(infos)
    shapes = _nest([(p, jax.ShapeDtypeStruct(np.shape(x), x.dtype)) for p, x in chosen])
    return FlaxModel(
        framework=framework,
        module=module,
        layout=layouts.from_params(shapes),
        specs=specs,
        generated=frozenset(p for p, _ in chosen),
        global_items=global_items,
        initial={"params": params, "state": state},
        **extra,
    )


def _linen_init(module, key, args, kwargs, abstract: bool):
    """Initialises (or only traces, when ``abstract``) a Linen module, recording the module
    at each path."""
    owners = {}

    def record(next_fun, call_args, call_kwargs, context):
        owners.setdefault(tuple(context.module.path), context.module)
        return next_fun(*call_args, **call_kwargs)

    rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
    init = functools.partial(module.init, rngs, *args, **kwargs)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(init) if abstract else init()
    return variables, owners


def _train_arg(module: nn.Module) -> str | None:
    try:
        names = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ("train", "deterministic") if n in names), None)


def _nnx_check(module: nnx.Module, state_types: tuple[type, ...]) -> dict[Path, Any]:
    """Refuses variables the adapter cannot handle; returns the modules by path."""
    owners, kept = {}, (nnx.Param, *NNX_STATE_TYPES, *state_types)
    for path, node in nnx.iter_graph(module):
        path = tuple(str(k) for k in path)
        if isinstance(node, nnx.Module):
            owners[path] = node
        elif isinstance(node, nnx.Variable):
            where = f"NNX variable {'/'.join(path)} ({type(node).__name__})"
            if not isinstance(node, kept):
                raise ValueError(
                    f"{where}: hypernetize generates nnx.Param leaves and keeps "
                    f"{[t.__name__ for t in kept[1:]]} as state; pass "
                    f"state_types=({type(node).__name__},) to keep this type as state too"
                )
            if not hasattr(node.get_value(), "shape"):
                raise ValueError(f"{where} holds a {type(node.get_value()).__name__}, not an array")
    return owners


# ----------------------------------------------------------------------------- nested dicts


def _key(entry) -> str:
    return str(getattr(entry, "key", getattr(entry, "idx", entry)))


def _items(tree) -> list[tuple[Path, Any]]:
    """``(path, leaf)`` pairs of a pytree in flatten order; paths as strings, without the
    ``.value`` attribute of NNX variables."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    keep = [[_key(k) for k in p if not isinstance(k, jax.tree_util.GetAttrKey)] for p, _ in flat]
    return [(tuple(k), x) for k, (_, x) in zip(keep, flat, strict=True)]


def _to_dict(state) -> tuple[dict, Any, tuple[Path, ...]]:
    """An NNX State as a plain nested dict, with what rebuilds the State from one."""
    items = _items(state)
    return _nest(items), jax.tree_util.tree_structure(state), tuple(p for p, _ in items)


def _nest(items) -> dict:
    out: dict = {}
    for path, x in items:
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = x
    return out


def _get(tree: Mapping, path: Path):
    for k in path:
        tree = tree[k]
    return tree


def _partition(tree: Mapping, chosen: frozenset[Path], prefix: Path = ()) -> tuple[dict, dict]:
    picked, rest = {}, {}
    for k, v in tree.items():
        path = (*prefix, str(k))
        if isinstance(v, Mapping):
            a, b = _partition(v, chosen, path)
            if a:
                picked[k] = a
            if b:
                rest[k] = b
        elif path in chosen:
            picked[k] = v
        else:
            rest[k] = v
    return picked, rest


def _deep_merge(a: Mapping, b: Mapping) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and k in out else v
    return out
