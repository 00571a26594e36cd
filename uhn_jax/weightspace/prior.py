"""IGPG's prior: a causal Transformer over a network's VQ-VAE codes, conditioned by prefix
embeddings of its dataset, task and architecture (:mod:`uhn_jax.weightspace.conditioning`).

The sequence the Transformer reads is ``P`` prefix vectors (the dataset's image-set encoding,
the task, the family with the architecture's features, then one per params leaf, padded to
``max_layers`` with a learned "no leaf" vector), then ``T`` token positions. The input at
token position ``t`` is the embedding of code ``t - 1`` (a begin code at ``t = 0``) plus the
role of token ``t`` (its leaf from the first and from the last, the leaf kind and the chunk's
relative position, as the VQ-VAE reads it) and a learned position; its output is the
distribution of code ``t``. Attention is causal over the whole sequence, so code ``t`` depends
on the conditions and on codes ``< t`` only.

Sampling (:func:`sample`) draws the ``T`` codes of a batch of networks one position at a time
in a ``lax.fori_loop``: the prefix fills each block's key-value cache once
(:meth:`Prior.prefill`), then each position is one token's pass against the cache
(:meth:`Prior.step`), with temperature and top-k filtering (:func:`filter_logits`).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from uhn_jax.weightspace import vqvae


@dataclasses.dataclass(frozen=True)
class Settings:
    """The prior's shape (hashable: a jit static argument). ``codebook_size``,
    ``max_layers`` and ``position_buckets`` follow the VQ-VAE's; ``families`` are the
    architecture families it embeds."""

    codebook_size: int
    families: tuple[str, ...]
    max_tokens: int = 512
    max_layers: int = 16
    position_buckets: int = 16
    dim: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0  # on each block's attention and MLP outputs, in training only

    @property
    def prefix(self) -> int:
        """Prefix vectors: dataset, task, family, then one per leaf."""
        return 3 + self.max_layers


class Attention(nn.Module):
    """Multi-head self-attention over a whole sequence (:meth:`__call__`, with a mask) or one
    new position against a key-value cache (:meth:`step`)."""

    dim: int
    heads: int

    def setup(self):
        self.qkv = nn.Dense(3 * self.dim)
        self.out = nn.Dense(self.dim)

    def _qkv(self, x):
        b, n, _ = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, -1)
        shape = (b, n, self.heads, self.dim // self.heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _attend(self, q, k, v, mask):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        w = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(logits.dtype).min), -1)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        return self.out(out.reshape(*out.shape[:2], self.dim))

    def __call__(self, x, mask):
        """``(output, (keys, values))`` of ``x [B, n, D]``; ``mask [B, 1, n, n]``."""
        q, k, v = self._qkv(x)
        return self._attend(q, k, v, mask), (k, v)

    def step(self, x, cache, index):
        """The output at position ``index`` of one new position ``x [B, 1, D]``, attending to
        the cached keys and values of positions ``<= index`` (the new one written there)."""
        q, k, v = self._qkv(x)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, index, 1)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, index, 1)
        mask = (jnp.arange(keys.shape[1]) <= index)[None, None, None, :]
        return self._attend(q, keys, values, mask), (keys, values)


class Block(nn.Module):
    """A pre-LayerNorm Transformer block: causal self-attention, then a GELU MLP (each
    output dropped out at ``dropout`` in training)."""

    dim: int
    heads: int
    mlp_ratio: int
    dropout: float = 0.0

    def setup(self):
        self.ln_attn, self.ln_mlp = nn.LayerNorm(), nn.LayerNorm()
        self.attn = Attention(self.dim, self.heads)
        self.fc_in = nn.Dense(self.mlp_ratio * self.dim)
        self.fc_out = nn.Dense(self.dim)
        self.drop = nn.Dropout(self.dropout)

    def _mlp(self, h, train: bool = False):
        out = self.fc_out(nn.gelu(self.fc_in(self.ln_mlp(h))))
        return h + self.drop(out, deterministic=not train)

    def __call__(self, h, mask, train: bool = False):
        a, kv = self.attn(self.ln_attn(h), mask)
        return self._mlp(h + self.drop(a, deterministic=not train), train), kv

    def step(self, h, cache, index):
        """One new position ``h [B, 1, D]`` at ``index`` against the block's cache."""
        a, kv = self.attn.step(self.ln_attn(h), cache, index)
        return self._mlp(h + a), kv


class Prior(nn.Module):
    """The causal Transformer (see the module docstring): :meth:`__call__` reads whole
    sequences (training); :meth:`prefill` and :meth:`step` decode one code at a time with a
    key-value cache (sampling), to the same logits."""

    s: Settings

    def setup(self):
        s, d = self.s, self.s.dim
        normal = nn.initializers.normal(0.02)
        self.data_in, self.task_in = nn.Dense(d), nn.Dense(d)
        self.family = nn.Embed(len(s.families), d)
        self.arch_in, self.leaf_in = nn.Dense(d), nn.Dense(d)
        self.no_leaf = self.param("no_leaf", normal, (d,))
        self.prefix_positions = self.param("prefix_positions", normal, (s.prefix, d))
        self.code = nn.Embed(s.codebook_size + 1, d)
        self.role = vqvae.RoleEmbed(s.max_layers, s.position_buckets, d)
        self.positions = self.param("positions", normal, (s.max_tokens, d))
        self.blocks = [Block(d, s.heads, s.mlp_ratio, s.dropout) for _ in range(s.layers)]
        self.ln_out = nn.LayerNorm()
        self.head = nn.Dense(s.codebook_size)

    def _prefix(self, cond: dict) -> jax.Array:
        data = self.data_in(cond["data"])
        task = self.task_in(cond["task"])
        family = self.family(cond["family"]) + self.arch_in(cond["arch"])
        leaves = self.leaf_in(cond["leaves"])
        leaves = jnp.where(cond["leaf_mask"][..., None], leaves, self.no_leaf)
        prefix = jnp.concatenate([data[:, None], task[:, None], family[:, None], leaves], 1)
        return prefix + self.prefix_positions

    def __call__(self, codes_BT: jax.Array, roles: dict, cond: dict, train: bool = False):
        """Logits ``[B, T, K]`` of every code given the earlier ones.

        Args:
          codes_BT: ``int [B, T]`` codes (``T <= max_tokens``).
          roles: :data:`uhn_jax.weightspace.vqvae.ROLE_KEYS`, each ``int [B, T]``.
          cond: condition arrays with a leading batch axis (``conditioning.stack``).
          train: apply dropout (needs a ``dropout`` rng).
        """
        s = self.s
        b, t = codes_BT.shape
        begin = jnp.full((b, 1), s.codebook_size, codes_BT.dtype)
        previous = jnp.concatenate([begin, codes_BT[:, :-1]], 1)
        h = self.code(previous) + self.role(roles) + self.positions[:t]
        h = jnp.concatenate([self._prefix(cond), h], 1)
        mask = nn.make_causal_mask(jnp.ones((b, s.prefix + t)))
        for block in self.blocks:
            h, _ = block(h, mask, train)
        return self.head(self.ln_out(h[:, s.prefix :]))

    def prefill(self, cond: dict, length: int) -> list:
        """Each block's key-value cache ``[B, P + length, H, D / H]`` holding the prefix."""
        h = self._prefix(cond)
        b, p, _ = h.shape
        mask = nn.make_causal_mask(jnp.ones((b, p)))
        caches = []
        for block in self.blocks:
            h, (k, v) = block(h, mask)
            pad = ((0, 0), (0, length), (0, 0), (0, 0))
            caches.append((jnp.pad(k, pad), jnp.pad(v, pad)))
        return caches

    def step(self, caches: list, previous: jax.Array, roles_t: dict, t) -> tuple:
        """``(logits [B, K] of code t, caches)`` given code ``t - 1`` (``previous [B]``, the
        begin code ``K`` at ``t = 0``) and the roles of token ``t`` (each ``[B]``)."""
        h = self.code(previous) + self.role(roles_t) + self.positions[t]
        h, new = h[:, None], []
        for block, cache in zip(self.blocks, caches, strict=True):
            h, kv = block.step(h, cache, self.s.prefix + t)
            new.append(kv)
        return self.head(self.ln_out(h[:, 0])), new


def loss_fn(model: Prior, params, batch: dict, rng=None) -> tuple[jax.Array, jax.Array]:
    """``(mean cross-entropy, accuracy)`` of the codes over the real tokens of ``batch``
    (``codes [B, T]``, ``mask [B, T]``, ``roles``, ``cond``); with ``rng``, in training mode
    (dropout)."""
    args = (batch["codes"], batch["roles"], batch["cond"])
    if rng is None:
        logits = model.apply(params, *args)
    else:
        logits = model.apply(params, *args, train=True, rngs={"dropout": rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["codes"])
    w = batch["mask"].astype(logits.dtype)
    n = jnp.maximum(w.sum(), 1.0)
    acc = ((logits.argmax(-1) == batch["codes"]) * w).sum() / n
    return (ce * w).sum() / n, acc


def take(data: dict, idx: jax.Array) -> dict:
    """Rows ``idx`` of every array of a (nested) batch dict."""
    return jax.tree.map(lambda a: a[idx], data)


def train_step(model: Prior, tx, batch_size: int, state: dict, data: dict, key) -> tuple:
    """One step on ``batch_size`` networks of ``data`` drawn from ``fold_in(key, step)``
    (pure; resumable bit-identically)."""
    step = state["step"]
    n = data["codes"].shape[0]
    draw = jax.random.fold_in(key, step)
    batch = take(data, jax.random.randint(draw, (batch_size,), 0, n))
    drop = jax.random.fold_in(draw, 1)

    def objective(p):
        return loss_fn(model, p, batch, drop if model.s.dropout else None)

    (loss, acc), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"step": step + 1, "params": params, "opt_state": opt_state}
    return new, {"loss": loss, "token_accuracy": acc, "grad_norm": optax.tree.norm(grads)}


def init_params(model: Prior, data: dict, seed: int):
    """The prior's params, initialised on the first two networks of ``data`` (numpy)."""
    first = jax.tree.map(lambda a: a[:2], data)
    return jax.jit(model.init)(jax.random.key(seed), first["codes"], first["roles"], first["cond"])


def filter_logits(logits: jax.Array, temperature, top_k) -> jax.Array:
    """``logits / temperature`` with all but the ``top_k`` largest set to ``-inf`` along the
    last axis (``top_k`` 0: none dropped; ties at the k-th value are all kept). Both may be
    traced, so one compiled sampler serves every temperature and k."""
    logits = logits / temperature
    k = jnp.clip(jnp.asarray(top_k), 0, logits.shape[-1])
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    kth = jnp.take(ordered, jnp.maximum(k - 1, 0), axis=-1)[..., None]
    return jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)


@functools.partial(jax.jit, static_argnums=(0, 5, 8))
def _sample(model: Prior, params, roles, cond, key, num: int, temperature, top_k, keep: bool):
    t = roles["layer"].shape[0]
    cond_B = jax.tree.map(lambda a: jnp.broadcast_to(a, (num, *a.shape)), cond)
    caches = model.apply(params, cond_B, t, method=Prior.prefill)

    def body(i, carry):
        codes, probs, caches, previous = carry
        roles_t = {k: jnp.broadcast_to(v[i], (num,)) for k, v in roles.items()}
        logits, caches = model.apply(params, caches, previous, roles_t, i, method=Prior.step)
        logits = filter_logits(logits, temperature, top_k)
        drawn = jax.random.categorical(jax.random.fold_in(key, i), logits).astype(jnp.int32)
        if keep:
            probs = probs.at[:, i].set(jax.nn.softmax(logits))
        return codes.at[:, i].set(drawn), probs, caches, drawn

    begin = jnp.full((num,), model.s.codebook_size, jnp.int32)
    probs = jnp.zeros((num, t, model.s.codebook_size) if keep else (), jnp.float32)
    start = (jnp.zeros((num, t), jnp.int32), probs, caches, begin)
    codes, probs, _, _ = jax.lax.fori_loop(0, t, body, start)
    return (codes, probs) if keep else codes


def sample(
    model: Prior,
    params,
    roles: dict,
    cond: dict,
    key: jax.Array,
    num: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    probabilities: bool = False,
):
    """``int32 [num, T]``: ``num`` networks' codes drawn for one architecture (``roles``, each
    ``[T]``) and condition (``cond``, unbatched); with ``probabilities``, ``(codes, probs)``
    where ``probs[num, T, K]`` is the (temperature and top-k filtered) distribution each
    code was drawn from, given the codes drawn before it.

    Raises:
      ValueError: for ``temperature <= 0``, ``top_k < 0`` or a sequence longer than the
        prior's ``max_tokens``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no filtering), got {top_k!r}")
    t = len(roles["layer"])
    if t > model.s.max_tokens:
        raise ValueError(
            f"the architecture is {t} tokens long, more than the prior's max_tokens="
            f"{model.s.max_tokens}"
        )
    roles = {k: jnp.asarray(v) for k, v in roles.items()}
    cond = {k: jnp.asarray(v) for k, v in cond.items()}
    args = (jnp.float32(temperature), jnp.int32(top_k), bool(probabilities))
    return _sample(model, params, roles, cond, key, num, *args)


def sequence_nll(model: Prior, params, batch: dict) -> jax.Array:
    """The mean cross-entropy per network ``[B]`` of ``batch`` (its real tokens)."""
    logits = model.apply(params, batch["codes"], batch["roles"], batch["cond"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["codes"])
    w = batch["mask"].astype(logits.dtype)
    return (ce * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
