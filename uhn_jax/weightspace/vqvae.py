"""A VQ-VAE over chunks of a network's weights: the tokenizer of IGPG (issue 26, part 3).

A network's params are read per *layer*, here one params leaf (``layer_001/kernel``, ...), in
the order of :mod:`uhn_jax.core.layouts`. Each leaf's raveled values are zero-padded to a
multiple of ``chunk_size`` and cut into chunks (:class:`ChunkPlan`, static and hashable, built
from the layout alone). A chunk is one token: the encoder MLP reads the chunk and its *role*
(the leaf's position from the first and from the last leaf, the leaf kind kernel / bias /
other, and the chunk's relative position within its leaf, bucketed), the latent snaps to the
nearest of ``codebook_size`` codes, and the decoder MLP turns the code and the same role back
into a chunk.

Frames. Before encoding, a network is put in its layout's *frame*, ``x = (w - shift) /
scale`` per value (:class:`Frame`). The default frame divides every leaf by ``1 / sqrt(fan_in)``
of its layer (a kernel's fan-in is the product of all but its last axis; a bias or other
per-unit leaf takes its module's kernel's), the scale of the base models' default init. It
depends on the shape alone, so networks of an architecture the VQ-VAE never saw are coded the
same way and decoding needs no side information: the tokens and the :class:`ChunkPlan`
(rebuilt from the architecture) are the whole description of a network. With
``Settings.standardize`` each layout's frame is instead the per-value mean and standard
deviation of its training networks (:func:`standard_frame`), the per-coordinate normalisation
of weight-space generative models: codes then describe a network's departure from its
architecture's typical one, and only the layouts seen in training can be coded.

Codebook. Codes move by exponential moving averages of the latents assigned to them (van den
Oord et al. 2017, appendix); a code whose averaged usage falls below ``restart`` times the
uniform share is restarted at a random latent of the batch, so codes do not die. The codebook
starts empty, so the first step initialises it from the data. The encoder
learns through the straight-through estimator, with a commitment loss (weight ``beta``). The
reconstruction loss is the mean squared error of the framed chunks' real (not padded)
values. :meth:`Codec.decode_mean` decodes per-token code distributions (a prior's) to their
expected chunks. :func:`train_step` is pure; the loop in :mod:`uhn_jax.training.igpg_fit`
drives it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from uhn_jax.core import layouts

#: Leaf kinds of the role embedding.
KINDS = ("kernel", "bias", "other")
#: The role arrays of a token sequence (:meth:`ChunkPlan.roles`), each ``int32 [T]``.
ROLE_KEYS = ("layer", "from_end", "kind", "position")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The VQ-VAE's shape and codebook dynamics (hashable: a jit static argument)."""

    chunk_size: int = 8
    max_chunks_per_layer: int = 4096
    codebook_size: int = 256
    latent_dim: int = 16
    hidden: int = 128
    role_dim: int = 16
    max_layers: int = 16
    position_buckets: int = 16
    beta: float = 0.25
    decay: float = 0.99
    restart: float = 0.03
    standardize: bool = False  # frames from the training networks' mean and std (docstring)


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """How a layout's leaves are cut into chunks (static; see the module docstring).

    Attributes:
      layout: the params layout.
      chunk_size: values per chunk ``c``.
      chunks: chunks per leaf.
      fan_in: the normalising fan-in per leaf.
      kinds: an index into :data:`KINDS` per leaf.
    """

    layout: layouts.Layout
    chunk_size: int
    chunks: tuple[int, ...]
    fan_in: tuple[int, ...]
    kinds: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        """Tokens (chunks) of a network, ``T``."""
        return sum(self.chunks)

    @property
    def num_layers(self) -> int:
        """Params leaves of a network."""
        return len(self.chunks)

    def leaf_of_token(self) -> np.ndarray:
        """``int32 [T]``: each token's leaf."""
        return np.repeat(np.arange(self.num_layers, dtype=np.int32), self.chunks)

    def roles(self, position_buckets: int = 16) -> dict[str, np.ndarray]:
        """``{layer, from_end, kind, position}``, each ``int32 [T]``: a token's leaf index from
        the first and from the last leaf, its leaf's kind, and its chunk's relative position
        in its leaf in ``position_buckets`` buckets."""
        leaf = self.leaf_of_token()
        within = np.concatenate([np.arange(n) for n in self.chunks])
        total = np.repeat(np.asarray(self.chunks), self.chunks)
        return {
            "layer": leaf,
            "from_end": (self.num_layers - 1 - leaf).astype(np.int32),
            "kind": np.asarray(self.kinds, np.int32)[leaf],
            "position": (within * position_buckets // total).astype(np.int32),
        }

    def scale(self) -> np.ndarray:
        """``float32 [T]``: each token's normalising scale ``1 / sqrt(fan_in)``."""
        per_leaf = 1.0 / np.sqrt(np.asarray(self.fan_in, np.float64))
        return per_leaf[self.leaf_of_token()].astype(np.float32)

    def valid(self) -> np.ndarray:
        """``bool [T, c]``: the real (not padding) values of each chunk."""
        c, rows = self.chunk_size, []
        for leaf, n in zip(self.layout.leaves, self.chunks, strict=True):
            rows.append((np.arange(n * c) < leaf.size).reshape(n, c))
        return np.concatenate(rows)


def _leaf_name(leaf: layouts.Leaf) -> str:
    return "/".join(leaf.keys)


def _fan_in(layout: layouts.Layout, leaf: layouts.Leaf) -> int:
    if leaf.keys[-1] == "kernel" and len(leaf.shape) >= 2:
        return max(math.prod(leaf.shape[:-1]), 1)
    sibling = (*leaf.keys[:-1], "kernel")
    for other in layout.leaves:
        if other.keys == sibling and len(other.shape) >= 2:
            return max(math.prod(other.shape[:-1]), 1)
    return 1


def check_chunk_size(value: Any, name: str = "chunk_size") -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is an int > 0."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be an int > 0 (values per chunk), got {value!r}")


def plan(layout: layouts.Layout, chunk_size: int, max_chunks_per_layer: int) -> ChunkPlan:
    """The :class:`ChunkPlan` of ``layout``.

    Raises:
      ValueError: for a chunk size <= 0, or naming the layer (leaf) whose chunks exceed
        ``max_chunks_per_layer``.
    """
    check_chunk_size(chunk_size)
    chunks, fans, kinds = [], [], []
    for leaf in layout.leaves:
        n = max(-(-leaf.size // chunk_size), 1)
        if n > max_chunks_per_layer:
            raise ValueError(
                f"layer {_leaf_name(leaf)} (shape {leaf.shape}, {leaf.size} values) is {n} "
                f"chunks of {chunk_size}, more than max_chunks_per_layer={max_chunks_per_layer}: "
                "raise the chunk size or the limit, or leave this architecture out"
            )
        chunks.append(n)
        fans.append(_fan_in(layout, leaf))
        name = leaf.keys[-1]
        kinds.append(KINDS.index(name) if name in KINDS[:2] else 2)
    return ChunkPlan(layout, chunk_size, tuple(chunks), tuple(fans), tuple(kinds))


def chunk(w_N, cp: ChunkPlan):
    """``[T, c]``: every leaf of the flat ``w_N`` zero-padded and cut into chunks (raw
    values; a :class:`Frame` scales them). numpy in, numpy out; else jax."""
    xp = np if isinstance(w_N, np.ndarray) else jnp
    c, parts = cp.chunk_size, []
    for leaf, n in zip(cp.layout.leaves, cp.chunks, strict=True):
        seg = w_N[..., leaf.offset : leaf.offset + leaf.size]
        pad = [(0, 0)] * (w_N.ndim - 1) + [(0, n * c - leaf.size)]
        parts.append(xp.pad(seg, pad).reshape(*w_N.shape[:-1], n, c))
    return xp.concatenate(parts, axis=-2)


def unchunk(chunks_TC, cp: ChunkPlan):
    """The flat ``w[N]`` of chunks ``[T, c]`` (padding dropped): the inverse of :func:`chunk`."""
    xp = np if isinstance(chunks_TC, np.ndarray) else jnp
    c, parts, start = cp.chunk_size, [], 0
    for leaf, n in zip(cp.layout.leaves, cp.chunks, strict=True):
        parts.append(chunks_TC[start : start + n].reshape(n * c)[: leaf.size])
        start += n
    return xp.concatenate(parts)


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """The coordinates a layout's networks are coded in: ``w = shift + scale * x`` per value
    (``shift``, ``scale``: ``float32 [N]``; see the module docstring)."""

    shift: np.ndarray
    scale: np.ndarray

    def chunks(self, cp: ChunkPlan) -> tuple[np.ndarray, np.ndarray]:
        """``(shift, scale)`` cut as chunks ``[T, c]`` (padding: shift 0, scale 1)."""
        return chunk(self.shift, cp), np.where(cp.valid(), chunk(self.scale, cp), 1.0)

    def to_chunks(self, w_MN: np.ndarray, cp: ChunkPlan) -> np.ndarray:
        """``x[M, T, c]``: networks ``w[M, N]`` framed and cut into chunks (numpy)."""
        shift, scale = self.chunks(cp)
        return (chunk(np.asarray(w_MN, np.float32), cp) - shift) / scale


def init_frame(cp: ChunkPlan) -> Frame:
    """The default frame: no shift, each leaf scaled by its layer's ``1 / sqrt(fan_in)``."""
    scale = unchunk(np.repeat(cp.scale()[:, None], cp.chunk_size, 1), cp)
    return Frame(np.zeros_like(scale), scale)


def standard_frame(w_MN) -> Frame:
    """The frame of networks ``w[M, N]`` (``M >= 2``) of one layout: per value their mean and
    standard deviation (floored at 1e-3 of the root-mean-square deviation, so a value that
    never varies does not blow up)."""
    w = np.asarray(w_MN, np.float64)
    if w.ndim != 2 or len(w) < 2:
        raise ValueError(
            f"a standardised frame needs >= 2 networks w[M, N] of a layout, got shape {w.shape}"
        )
    std = w.std(0)
    floor = 1e-3 * math.sqrt(float((std**2).mean())) + 1e-12
    return Frame(w.mean(0).astype(np.float32), np.maximum(std, floor).astype(np.float32))


def frame_of(cp: ChunkPlan, s: Settings, frames: dict) -> Frame:
    """The frame ``cp``'s networks are coded in: :func:`init_frame`, or with
    ``s.standardize`` the layout's entry of ``frames``.

    Raises:
      ValueError: with ``standardize``, for a layout with no frame (not seen in training).
    """
    if not s.standardize:
        return init_frame(cp)
    if cp.layout not in frames:
        shapes = ", ".join(f"{_leaf_name(leaf)} {leaf.shape}" for leaf in cp.layout.leaves)
        raise ValueError(
            f"vqvae.standardize codes each architecture relative to its training networks, "
            f"and this one ({shapes}) had none: only architectures seen in training can be "
            "coded (hold out a dataset, not an architecture, or use sample.fallback)"
        )
    return frames[cp.layout]


def check_roles(cp: ChunkPlan, s: Settings) -> None:
    """Raises ``ValueError`` when the plan has more leaves than ``s.max_layers``."""
    if cp.num_layers > s.max_layers:
        names = ", ".join(_leaf_name(leaf) for leaf in cp.layout.leaves)
        raise ValueError(
            f"a network of {cp.num_layers} params leaves ({names}) exceeds the VQ-VAE's "
            f"max_layers={s.max_layers}: raise it"
        )


class RoleEmbed(nn.Module):
    """The sum of a token's role embeddings (:data:`ROLE_KEYS`)."""

    max_layers: int
    buckets: int
    dim: int

    @nn.compact
    def __call__(self, roles: dict) -> jax.Array:
        sizes = {
            "layer": self.max_layers,
            "from_end": self.max_layers,
            "kind": len(KINDS),
            "position": self.buckets,
        }
        return sum(nn.Embed(sizes[k], self.dim, name=f"role_{k}")(roles[k]) for k in ROLE_KEYS)


class VQVAE(nn.Module):
    """Encoder and decoder MLPs of chunks (the codebook lives in the train state, updated by
    EMA; see :func:`quantize`)."""

    s: Settings

    def setup(self):
        s = self.s
        self.role = RoleEmbed(s.max_layers, s.position_buckets, s.role_dim)
        self.enc = [nn.Dense(s.hidden), nn.Dense(s.hidden), nn.Dense(s.latent_dim)]
        self.dec = [nn.Dense(s.hidden), nn.Dense(s.hidden), nn.Dense(s.chunk_size)]

    @staticmethod
    def _mlp(layers, h):
        for layer in layers[:-1]:
            h = nn.gelu(layer(h))
        return layers[-1](h)

    def encode(self, x_BC: jax.Array, roles: dict) -> jax.Array:
        """Latents ``[B, d]`` of normalised chunks ``[B, c]``."""
        return self._mlp(self.enc, jnp.concatenate([x_BC, self.role(roles)], -1))

    def decode(self, q_BD: jax.Array, roles: dict) -> jax.Array:
        """Normalised chunks ``[B, c]`` of (quantised) latents ``[B, d]``."""
        return self._mlp(self.dec, jnp.concatenate([q_BD, self.role(roles)], -1))

    def __call__(self, x_BC: jax.Array, roles: dict) -> jax.Array:
        return self.decode(self.encode(x_BC, roles), roles)


def quantize(z_BD: jax.Array, embed_KD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(codes [B], quantised latents [B, d])``: each latent's nearest code (L2)."""
    d = (z_BD**2).sum(-1, keepdims=True) - 2 * z_BD @ embed_KD.T + (embed_KD**2).sum(-1)
    codes = jnp.argmin(d, -1)
    return codes, embed_KD[codes]


def usage_stats(codes: jax.Array, k: int) -> dict[str, jax.Array]:
    """``perplexity`` (exp of the entropy of the codes' frequencies) and ``usage`` (the
    fraction of the codebook used) of a set of codes."""
    p = jnp.bincount(jnp.ravel(codes), length=k) / codes.size
    entropy = -(p * jnp.log(jnp.where(p > 0, p, 1.0))).sum()
    return {"perplexity": jnp.exp(entropy), "usage": (p > 0).mean()}


def _ema(s: Settings, book: dict, z_BD, codes, key, step) -> dict:
    """The codebook after one EMA update with latents ``z_BD`` assigned to ``codes``. A code
    whose bias-corrected usage (codes per batch) is below ``restart`` times the uniform share
    restarts at a random latent of the batch, as if it had been used once per batch; the
    codebook starts empty, so the first step sets every code but one from the data."""
    k, b = s.codebook_size, z_BD.shape[0]
    onehot = jax.nn.one_hot(codes, k, dtype=z_BD.dtype)
    size = s.decay * book["cluster_size"] + (1 - s.decay) * onehot.sum(0)
    total = s.decay * book["embed_sum"] + (1 - s.decay) * onehot.T @ z_BD
    bias = 1 - s.decay ** (step + 1).astype(z_BD.dtype)
    n = size.sum()
    smoothed = (size + 1e-5 * bias) / (n + k * 1e-5 * bias) * n
    embed = total / smoothed[:, None]
    dead = size / bias < s.restart * b / k
    pick = z_BD[jax.random.randint(key, (k,), 0, b)]
    return {
        "embed": jnp.where(dead[:, None], pick, embed),
        "embed_sum": jnp.where(dead[:, None], pick * bias, total),
        "cluster_size": jnp.where(dead, bias, size),
    }


def loss_fn(model: VQVAE, params, embed, x_BC, roles, valid_BC, beta: float):
    """The loss of a batch of normalised chunks and its parts: reconstruction MSE over the
    real values plus ``beta`` times the commitment loss."""
    z = model.apply(params, x_BC, roles, method=VQVAE.encode)
    codes, q = quantize(z, jax.lax.stop_gradient(embed))
    x_hat = model.apply(params, z + jax.lax.stop_gradient(q - z), roles, method=VQVAE.decode)
    w = valid_BC.astype(x_BC.dtype)
    recon = (w * (x_hat - x_BC) ** 2).sum() / jnp.maximum(w.sum(), 1.0)
    commit = ((z - jax.lax.stop_gradient(q)) ** 2).mean()
    return recon + beta * commit, (z, codes, recon, commit)


def init_state(model: VQVAE, tx, data: dict, seed: int) -> dict:
    """The step-0 train state ``{step, params, opt_state, codebook}`` (``data``: numpy
    ``{x [n, c], valid, roles}``). The codebook starts empty: the first step sets it from
    the batch's latents (see :func:`_ema`)."""
    s = model.s
    x, roles = data["x"][:2], {k: v[:2] for k, v in data["roles"].items()}
    params = jax.jit(model.init)(jax.random.key(seed), x, roles)
    book = {
        "embed": jnp.zeros((s.codebook_size, s.latent_dim)),
        "embed_sum": jnp.zeros((s.codebook_size, s.latent_dim)),
        "cluster_size": jnp.zeros((s.codebook_size,)),
    }
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "codebook": book,
    }


def train_step(model: VQVAE, tx, batch_size: int, state: dict, data: dict, key) -> tuple:
    """One step on ``batch_size`` chunks of ``data`` drawn from ``fold_in(key, step)``
    (pure; resumable bit-identically)."""
    s, step = model.s, state["step"]
    k_batch, k_restart = jax.random.split(jax.random.fold_in(key, step))
    idx = jax.random.randint(k_batch, (batch_size,), 0, data["x"].shape[0])
    x, valid = data["x"][idx], data["valid"][idx]
    roles = {k: v[idx] for k, v in data["roles"].items()}
    book = state["codebook"]

    def objective(p):
        return loss_fn(model, p, book["embed"], x, roles, valid, s.beta)

    (loss, (z, codes, recon, commit)), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    book = _ema(s, book, jax.lax.stop_gradient(z), codes, k_restart, step)
    metrics = {
        "loss": loss,
        "recon": recon,
        "commit": commit,
        **usage_stats(codes, s.codebook_size),
    }
    new = {"step": step + 1, "params": params, "opt_state": opt_state, "codebook": book}
    return new, metrics


@dataclasses.dataclass(frozen=True, eq=False)
class Codec:
    """A trained VQ-VAE: encodes networks into codes and decodes codes back to params."""

    model: VQVAE
    params: Any
    embed: jax.Array
    frames: dict = dataclasses.field(default_factory=dict)  # {layout: Frame}, standardize only

    @property
    def settings(self) -> Settings:
        """The VQ-VAE's settings."""
        return self.model.s

    def plan(self, layout: layouts.Layout) -> ChunkPlan:
        """The chunk plan of ``layout`` at this VQ-VAE's chunk size (checked)."""
        s = self.settings
        cp = plan(layout, s.chunk_size, s.max_chunks_per_layer)
        check_roles(cp, s)
        return cp

    def frame(self, layout: layouts.Layout) -> Frame:
        """The frame ``layout``'s networks are coded in (:func:`frame_of`)."""
        return frame_of(self.plan(layout), self.settings, self.frames)

    def can_code(self, layout: layouts.Layout) -> bool:
        """Whether ``layout`` has a frame (always, unless ``standardize``)."""
        return not self.settings.standardize or layout in self.frames

    def encode(self, w_MN, layout: layouts.Layout) -> np.ndarray:
        """``int32 [M, T]``: the codes of ``M`` flat networks ``w[M, N]`` of ``layout``."""
        cp = self.plan(layout)
        w_MN = np.asarray(w_MN, np.float32)
        shift, scale = self.frame(layout).chunks(cp)
        w = jnp.asarray(_pad(w_MN))
        codes = _encode(self.model, cp, self.params, self.embed, w, shift, scale)
        return np.asarray(codes)[: len(w_MN)]

    def decode(self, codes_MT, layout: layouts.Layout) -> np.ndarray:
        """``float32 [M, N]``: the flat networks of codes ``[M, T]``."""
        cp = self.plan(layout)
        codes_MT = np.asarray(codes_MT, np.int32)
        if codes_MT.ndim != 2 or codes_MT.shape[1] != cp.num_tokens:
            raise ValueError(
                f"codes of shape {codes_MT.shape} do not fit this architecture: it is "
                f"{cp.num_tokens} tokens long"
            )
        shift, scale = self.frame(layout).chunks(cp)
        codes = jnp.asarray(_pad(codes_MT))
        w = _decode(self.model, cp, self.params, self.embed, codes, shift, scale)
        return np.asarray(w)[: len(codes_MT)]

    def decode_mean(self, probs_MTK, layout: layouts.Layout) -> np.ndarray:
        """``float32 [M, N]``: networks whose every chunk is the expected decoded chunk under
        per-token code distributions ``probs[M, T, K]`` (e.g. a prior's, along its sampled
        path): the mean-squared-error optimal point estimate of each token's values."""
        cp = self.plan(layout)
        probs = np.asarray(probs_MTK, np.float32)
        want = (cp.num_tokens, self.settings.codebook_size)
        if probs.ndim != 3 or probs.shape[1:] != want:
            raise ValueError(
                f"code distributions of shape {probs.shape} do not fit this architecture and "
                f"codebook: [M, {want[0]}, {want[1]}] expected"
            )
        keys = np.stack([cp.roles(self.settings.position_buckets)[k] for k in ROLE_KEYS], 1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        roles = {k: jnp.asarray(unique[:, i]) for i, k in enumerate(ROLE_KEYS)}
        shift, scale = self.frame(layout).chunks(cp)
        args = (jnp.asarray(_pad(probs)), roles, jnp.asarray(inverse.ravel()), shift, scale)
        w = _decode_mean(self.model, cp, self.params, self.embed, *args)
        return np.asarray(w)[: len(probs)]

    def decode_params(self, codes_T, layout: layouts.Layout) -> Any:
        """One network's params pytree from its codes ``[T]`` (via ``layouts.unflatten``)."""
        w = self.decode(np.asarray(codes_T)[None], layout)[0]
        return layouts.unflatten(jnp.asarray(w), layout)


#: Networks per encoding or decoding program (a call's are padded to a multiple of it).
BUCKET = 8


def _pad(x: np.ndarray) -> np.ndarray:
    """``x`` with its last row repeated up to a multiple of :data:`BUCKET` rows."""
    pad = -len(x) % BUCKET
    return np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x


def _roles(cp: ChunkPlan, s: Settings) -> dict:
    return {k: jnp.asarray(v) for k, v in cp.roles(s.position_buckets).items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(model: VQVAE, cp: ChunkPlan, params, embed, w_MN, shift_TC, scale_TC):
    roles = _roles(cp, model.s)

    def one(w_N):
        x = (chunk(w_N, cp) - shift_TC) / scale_TC
        return quantize(model.apply(params, x, roles, method=VQVAE.encode), embed)[0]

    return jax.lax.map(one, w_MN).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(model: VQVAE, cp: ChunkPlan, params, embed, codes_MT, shift_TC, scale_TC):
    roles = _roles(cp, model.s)

    def one(codes_T):
        x = model.apply(params, embed[codes_T], roles, method=VQVAE.decode)
        return unchunk(x * scale_TC + shift_TC, cp)

    return jax.lax.map(one, codes_MT)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_mean(model: VQVAE, cp, params, embed, probs_MTK, roles_U, inverse_T, shift, scale):
    def table(role):  # every code decoded at one distinct role: [K, c]
        role_K = {k: jnp.broadcast_to(v, embed.shape[:1]) for k, v in role.items()}
        return model.apply(params, embed, role_K, method=VQVAE.decode)

    chunks_TKC = jax.lax.map(table, roles_U)[inverse_T]
    x_MTC = jnp.einsum("mtk,tkc->mtc", probs_MTK, chunks_TKC)
    return jax.vmap(lambda x: unchunk(x * scale + shift, cp))(x_MTC)


def training_data(w_by_layout: dict, s: Settings, frames: dict) -> dict[str, Any]:
    """The VQ-VAE's training chunks (numpy): every network of ``{layout: w[M, N]}`` in its
    frame (:func:`frame_of` with ``frames``), with ``valid`` and ``roles``, concatenated."""
    xs, valid, roles = [], [], {k: [] for k in ROLE_KEYS}
    for layout, w_MN in w_by_layout.items():
        cp = plan(layout, s.chunk_size, s.max_chunks_per_layer)
        check_roles(cp, s)
        chunks = frame_of(cp, s, frames).to_chunks(w_MN, cp)
        m = chunks.shape[0]
        xs.append(chunks.reshape(-1, s.chunk_size))
        valid.append(np.tile(cp.valid(), (m, 1)))
        for k, v in cp.roles(s.position_buckets).items():
            roles[k].append(np.tile(v, m))
    return {
        "x": np.concatenate(xs).astype(np.float32),
        "valid": np.concatenate(valid),
        "roles": {k: np.concatenate(v) for k, v in roles.items()},
    }
