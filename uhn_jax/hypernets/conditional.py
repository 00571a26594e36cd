"""The classic conditional hypernetwork (Ha et al. 2016): a condition generates a target MLP.

A conditioning vector ``c`` drives one weight-generator MLP per target layer (or one shared
generator fed a learned layer embedding); the target MLP then runs on the data with the
generated weights. Every function is pure: ``init(key) -> params``,
``generate(params, c) -> flat per-layer weights``, ``apply(params, c, data) -> outputs``.

Three ways to run it (``apply(..., method=...)``):

* ``"vmap"``: every row of the batch gets its own target network (``[batch, n]`` weights per
  layer, run through ``jax.vmap``);
* ``"factored"``: the same outputs, but the generator head's last linear map is contracted
  with the features and the data directly, never forming the per-sample weights;
* ``"shared"``: one condition for the whole batch (a ``[conditioning_size]`` vector, or the
  first row of a batch the caller knows to be constant): each layer is generated once and run
  as one batched matmul.

See ``docs/conditional.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.hypernets import conditional_layers as layers
from uhn_jax.hypernets.conditional_layers import (  # noqa: F401  (re-exported API)
    ACTIVATIONS,
    WeightGenerator,
    apply_generated_weights,
    build_weight_generator,
    split_layer,
)

METHODS = ("vmap", "factored", "shared")


def _check_sizes(sizes, input_size: int | None) -> None:
    if not sizes:
        raise ValueError(f"target_layer_sizes must list at least one (in, out), got {sizes!r}")
    for i, pair in enumerate(sizes):
        if len(pair) != 2:
            raise ValueError(f"target_layer_sizes[{i}] must be an (in, out) pair, got {pair!r}")
        layers.check_positive_ints(f"target_layer_sizes[{i}]", pair)
    for i in range(len(sizes) - 1):
        if sizes[i][1] != sizes[i + 1][0]:
            raise ValueError(
                f"target_layer_sizes do not chain: layer {i} outputs {sizes[i][1]} but layer "
                f"{i + 1} takes {sizes[i + 1][0]}, in {sizes!r}"
            )
    if input_size is not None and sizes[0][0] != input_size:
        raise ValueError(
            f"input_size={input_size!r} does not match the first layer's input "
            f"{sizes[0][0]} in target_layer_sizes={sizes!r}"
        )


@dataclasses.dataclass(frozen=True)
class ConditionalHypernet:
    """A conditional hypernetwork; build it with :func:`build`. Frozen, hashable, no arrays.

    Params: ``{"generators": {name: WeightGenerator params}}`` with one ``layer_{i:03d}`` per
    target layer (or one ``shared``), plus ``"layer_embeddings" [L, E]`` when ``shared`` and
    ``"chunk_embeddings" {name: [chunks, E]}`` when ``chunk_size`` is set.

    Attributes:
      conditioning_size: width of the condition.
      target_layer_sizes: ``(in, out)`` per target layer.
      hidden_sizes: the generators' hidden widths.
      input_size: the data width (defaults to the first layer's ``in``).
      activation: the target network's activation between layers.
      shared: one generator for all layers, fed a learned layer embedding.
      layer_embedding_size: width of the layer embedding (``shared`` only).
      chunk_size: if set, generators emit this many values per call, one call per learned
        chunk embedding; a layer's chunks are concatenated and truncated.
      chunk_embedding_size: width of the chunk embedding (``chunk_size`` only).
      generator_activation: the generators' hidden activation.
    """

    conditioning_size: int
    target_layer_sizes: tuple[tuple[int, int], ...]
    hidden_sizes: tuple[int, ...] = (256, 256)
    input_size: int | None = None
    activation: str = "relu"
    shared: bool = False
    layer_embedding_size: int = 8
    chunk_size: int | None = None
    chunk_embedding_size: int = 8
    generator_activation: str = "relu"

    def __post_init__(self):
        sizes = self.target_layer_sizes
        if isinstance(sizes, Sequence):
            sizes = tuple(tuple(p) if isinstance(p, Sequence) else (p,) for p in sizes)
        object.__setattr__(self, "target_layer_sizes", sizes)
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        layers.check_positive_ints("conditioning_size", [self.conditioning_size])
        _check_sizes(sizes, self.input_size)
        if self.input_size is None:
            object.__setattr__(self, "input_size", sizes[0][0])
        layers.check_hidden_sizes("hidden_sizes", self.hidden_sizes)
        layers.check_positive_ints("layer_embedding_size", [self.layer_embedding_size])
        layers.check_positive_ints("chunk_embedding_size", [self.chunk_embedding_size])
        if self.chunk_size is not None:
            layers.check_positive_ints("chunk_size", [self.chunk_size])
        layers.activation_fn(self.activation, "activation")
        layers.activation_fn(self.generator_activation, "generator_activation")

    # --- static structure -------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.target_layer_sizes)

    @property
    def output_size(self) -> int:
        return self.target_layer_sizes[-1][1]

    def layer_sizes(self) -> tuple[int, ...]:
        """Generated values per target layer (kernel then bias)."""
        return tuple(layers.layer_size(i, o) for i, o in self.target_layer_sizes)

    def generator_name(self, layer: int) -> str:
        return "shared" if self.shared else f"layer_{layer:03d}"

    def _served(self, name: str) -> list[int]:
        return [i for i in range(self.num_layers) if self.generator_name(i) == name]

    def num_chunks(self, layer: int) -> int:
        """Generator calls for one layer (1 unless chunked)."""
        n = self.layer_sizes()[layer]
        return 1 if self.chunk_size is None else -(-n // self.chunk_size)

    def _scale(self, layer: int) -> float:
        # A shared head serves layers of different fan-in: it is initialised for unit output
        # variance and each layer's values are multiplied by this constant 1/sqrt(fan_in).
        return 1.0 / math.sqrt(self.target_layer_sizes[layer][0]) if self.shared else 1.0

    def generator(self, name: str) -> layers.WeightGenerator:
        """The Linen generator called ``name`` (see :meth:`generator_name`)."""
        served = self._served(name)
        n_max = max(self.layer_sizes()[i] for i in served)
        width = self.conditioning_size + self.layer_embedding_size * self.shared
        width += self.chunk_embedding_size * (self.chunk_size is not None)
        fan_in = 1 if self.shared else self.target_layer_sizes[served[0]][0]
        # Zero-initialised bias columns need a head column to be a bias for every layer it
        # serves: one unchunked layer. Elsewhere the biases start like the weights.
        bias_cols = 0 if (self.shared or self.chunk_size) else self.target_layer_sizes[served[0]][1]
        return layers.WeightGenerator(
            input_size=width,
            hidden_sizes=self.hidden_sizes,
            out_size=self.chunk_size or n_max,
            head_std=1.0 / math.sqrt(self.hidden_sizes[-1] * fan_in),
            zero_tail=bias_cols,
            activation=self.generator_activation,
        )

    def generator_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.generator_name(i) for i in range(self.num_layers)))

    # --- params -----------------------------------------------------------------------------

    def init(self, key: jax.Array) -> dict:
        """Fresh params: generators (hyperfan-in heads) and unit-normal embeddings."""
        params: dict = {"generators": {}}
        k_gen, k_layer, k_chunk = jax.random.split(key, 3)
        for g, name in enumerate(self.generator_names()):
            gen = self.generator(name)
            x = jnp.zeros((1, gen.input_size), jnp.float32)
            params["generators"][name] = gen.init(jax.random.fold_in(k_gen, g), x)["params"]
        if self.shared:
            shape = (self.num_layers, self.layer_embedding_size)
            params["layer_embeddings"] = jax.random.normal(k_layer, shape)
        if self.chunk_size is not None:
            params["chunk_embeddings"] = {
                name: jax.random.normal(
                    jax.random.fold_in(k_chunk, g),
                    (
                        max(self.num_chunks(i) for i in self._served(name)),
                        self.chunk_embedding_size,
                    ),
                )
                for g, name in enumerate(self.generator_names())
            }
        return params

    def num_params(self, params: dict) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))

    # --- generation -------------------------------------------------------------------------

    def _inputs(self, params: dict, c: jax.Array, layer: int) -> jax.Array:
        """Generator inputs ``[..., chunks, width]``: the condition, then the layer and chunk
        embeddings when used."""
        lead, chunks = c.shape[:-1], self.num_chunks(layer)
        parts = [jnp.broadcast_to(c[..., None, :], (*lead, chunks, c.shape[-1]))]
        if self.shared:
            e = params["layer_embeddings"][layer]
            parts.append(jnp.broadcast_to(e, (*lead, chunks, e.shape[-1])))
        if self.chunk_size is not None:
            e = params["chunk_embeddings"][self.generator_name(layer)][:chunks]
            parts.append(jnp.broadcast_to(e, (*lead, *e.shape)))
        return jnp.concatenate(parts, axis=-1)

    def _check_conditioning(self, conditioning: jax.Array) -> None:
        if conditioning.ndim not in (1, 2) or conditioning.shape[-1] != self.conditioning_size:
            raise ValueError(
                f"conditioning must be [{self.conditioning_size}] or [batch, "
                f"{self.conditioning_size}], got shape {conditioning.shape}"
            )

    def generate_layer(self, params: dict, conditioning: jax.Array, layer: int) -> jax.Array:
        """Flat values ``[..., n_in*n_out + n_out]`` of target layer ``layer``."""
        self._check_conditioning(conditioning)
        name = self.generator_name(layer)
        out = self.generator(name).apply(
            {"params": params["generators"][name]}, self._inputs(params, conditioning, layer)
        )
        flat = out.reshape(*out.shape[:-2], -1)[..., : self.layer_sizes()[layer]]
        return flat * self._scale(layer) if self.shared else flat

    def generate(self, params: dict, conditioning: jax.Array) -> tuple[jax.Array, ...]:
        """Every target layer's flat values, ``[batch, n]`` for ``conditioning [batch, C]``
        or ``[n]`` for ``[C]``; unflatten with :func:`split_layer`."""
        return tuple(self.generate_layer(params, conditioning, i) for i in range(self.num_layers))

    # --- running the target -----------------------------------------------------------------

    def apply(
        self, params: dict, conditioning: jax.Array, data: jax.Array, *, method: str = "vmap"
    ) -> jax.Array:
        """The generated target MLP on ``data``.

        Args:
          params: from :meth:`init`.
          conditioning: ``[batch, conditioning_size]``, or ``[conditioning_size]`` for one
            condition shared by the whole batch (then the ``"shared"`` path runs).
          data: ``[batch, input_size]``.
          method: ``"vmap"`` (per-sample weights), ``"factored"`` (per-sample, without forming
            the weights; not with ``chunk_size``) or ``"shared"`` (one network from the first
            condition row: the caller asserts the rows are equal).

        Returns:
          ``[batch, output_size]``.
        """
        self._check_inputs(conditioning, data, method)
        if conditioning.ndim == 1 or method == "shared":
            c = conditioning if conditioning.ndim == 1 else conditioning[0]
            generated = self.generate(params, c)
            return apply_generated_weights(
                data, generated, self.target_layer_sizes, self.activation
            )
        if method == "vmap":
            generated = self.generate(params, conditioning)
            return apply_generated_weights(
                data, generated, self.target_layer_sizes, self.activation
            )
        return self._apply_factored(params, conditioning, data)

    def _check_inputs(self, conditioning: jax.Array, data: jax.Array, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "factored" and self.chunk_size is not None:
            raise ValueError(
                f"method='factored' needs unchunked generators, but chunk_size={self.chunk_size}"
            )
        self._check_conditioning(conditioning)
        if data.ndim != 2 or data.shape[1] != self.input_size:
            raise ValueError(f"data must be [batch, {self.input_size}], got shape {data.shape}")
        if conditioning.ndim == 2 and conditioning.shape[0] != data.shape[0]:
            raise ValueError(
                f"conditioning has batch {conditioning.shape[0]} but data has batch "
                f"{data.shape[0]}; pass one [{self.conditioning_size}] condition to share it"
            )

    def _apply_factored(self, params: dict, conditioning: jax.Array, x: jax.Array) -> jax.Array:
        act = layers.activation_fn(self.activation)
        for i, (n_in, n_out) in enumerate(self.target_layer_sizes):
            name = self.generator_name(i)
            gen, gp = self.generator(name), params["generators"][name]
            u = self._inputs(params, conditioning, i)[:, 0]
            h = gen.apply({"params": gp}, u, method=layers.WeightGenerator.features)
            head = gp["head"]
            x = layers.factored_linear(x, h, head["kernel"], head["bias"], n_in, n_out)
            x = x * self._scale(i) if self.shared else x
            x = act(x) if i < self.num_layers - 1 else x
        return x

    def weight_stats(self, params: dict, conditioning: jax.Array) -> list[dict[str, float]]:
        """Per target layer: the generated kernels' and biases' std over the conditions and
        entries, next to the hyperfan-in target ``1/sqrt(fan_in)``. Fetches to host."""
        stats = []
        for i, (n_in, n_out) in enumerate(self.target_layer_sizes):
            w, b = split_layer(self.generate_layer(params, conditioning, i), n_in, n_out)
            stats.append(
                {
                    "layer": i,
                    "fan_in": n_in,
                    "weight_std": float(jnp.std(w)),
                    "target_std": 1.0 / math.sqrt(n_in),
                    "bias_std": float(jnp.std(b)),
                }
            )
        return stats


def build(
    conditioning_size: int,
    target_layer_sizes: Sequence[tuple[int, int]],
    hidden_sizes: Sequence[int] = (256, 256),
    input_size: int | None = None,
    activation: str = "relu",
    shared: bool = False,
    layer_embedding_size: int = 8,
    chunk_size: int | None = None,
    chunk_embedding_size: int = 8,
    generator_activation: str = "relu",
) -> ConditionalHypernet:
    """A conditional hypernetwork taking ``conditioning [batch, conditioning_size]`` and
    ``data [batch, input_size]`` to ``[batch, target_layer_sizes[-1][1]]``.

    Args:
      conditioning_size: width of the condition.
      target_layer_sizes: ``[(in, out), ...]`` of the target MLP; must chain.
      hidden_sizes: hidden widths of each weight generator.
      input_size: data width; defaults to the first ``in`` (and must equal it).
      activation: target activation between layers (:data:`ACTIVATIONS`).
      shared: one generator for every layer, fed a learned layer embedding.
      layer_embedding_size: width of that embedding.
      chunk_size: emit this many values per generator call (hypnettorch-style chunking).
      chunk_embedding_size: width of the learned chunk embedding.
      generator_activation: the generators' hidden activation.

    Raises:
      ValueError: naming the bad argument and its value.
    """
    return ConditionalHypernet(
        conditioning_size=conditioning_size,
        target_layer_sizes=target_layer_sizes,
        hidden_sizes=tuple(hidden_sizes),
        input_size=input_size,
        activation=activation,
        shared=shared,
        layer_embedding_size=layer_embedding_size,
        chunk_size=chunk_size,
        chunk_embedding_size=chunk_embedding_size,
        generator_activation=generator_activation,
    )
