"""SNE, a Set-based Neural network Encoder (after Andreis et al. 2023): a Flax Linen module that
reads a network's tokens (:mod:`uhn_jax.weightspace.chunking`) and predicts its test accuracy.

The pipeline, for a batch of networks padded by :func:`chunking.collate`::

    tokens [B, T, c] -> embedding: Linear(chunk), Linear(log RMS of the chunk), both
                        relative to the chunk's layer's kernel RMS
                        + Linear(layer roles) + Linear(sinusoid(k))
                        + Linear(one-hot class index + 1, or 0)
      -> per layer, set to set: ISAB blocks (masked induced set attention: m learned inducing
         points attend to the layer's tokens, then every token attends to its layer's m
         summaries; cost linear in the tokens)
      -> per layer, set to vector: PMA (a learned seed attends to the layer's tokens)
      -> layer vectors + Linear(layer roles) + Linear(layer summary statistics)
         + Linear(sinusoid(index from the first layer), sinusoid(index from the last layer))
      -> over layers, set to set: SAB blocks (masked self-attention; L is small)
      -> PMA over the layers -> network vector (+ Linear(standardised size), with
         ``network_size``) -> MLP head -> sigmoid: accuracy in [0, 1]

A network's tokens are one padded axis ``T``; each belongs to a segment, its layer (a one-hot
over the ``L`` layer slots, zero for a padding token), so a layer's attention is a softmax over
its own tokens (:func:`pool`, :func:`spread`) and no layer is padded to the largest layer's
token count. Padding tokens and padding layers are masked out of every attention, so they
change no real network's output. Every step is
permutation-equivariant over a layer's tokens and the poolings are invariant; with the
canonical token order of :mod:`chunking`, a network with permuted hidden units gives the same
token array and so the same prediction, bit for bit.

The layer summary (``Settings.layer_summary``, on by default; :func:`chunking.layer_summary`:
the log RMS, and the mean, std and quantiles over the RMS, of the layer's kernel and of its
bias) gives each layer the statistics Unterthiner et al.'s baseline reads, and the chunks and
their log RMS are then read relative to their layer's kernel RMS: the scale enters through the
summaries only.
A zoo of one architecture family teaches little about another's raw chunk values; the
summaries are comparable across families (on the ``cpu`` zoo they take HaCNN -> MLP from
chance to tau 0.36 and MLP -> HaCNN from 0.35 to 0.51; docs/sne.md). With
``layer_summary=False`` the chunks are read at the zoo's global scale and the layers get no
summary (the encoder before that option). ``raw_summary`` adds the summary's values at the
weights' own scale (:func:`raw_statistics`); ``fan_in_scale`` reads each kernel's scale in
units of its init's, ``1 / sqrt(fan-in)`` (:func:`fan_in_summary`); ``layer_positions=False``
places each layer by its roles alone, without its index; ``network_size`` gives the network
vector the size the statistics baseline reads; ``last_layer`` gives it the last layer's
summary directly (all five for transfer between families; docs/sne.md).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import checks
from uhn_jax.weightspace import chunking, statistics

#: The masked-out logit: finite, so an all-masked row gives zeros, never NaN.
_MASKED = -1e30


#: The on / off fields of :class:`Settings`.
FLAGS = (
    "layer_summary", "raw_summary", "fan_in_scale", "last_layer", "layer_positions",
    "network_size",
)  # fmt: skip
#: The last layer's flag among the role features.
_LAST = chunking.ROLE_FEATURES.index("last")


@dataclasses.dataclass(frozen=True)
class Settings:
    """SNE's sizes.

    Attributes:
      dim: the width of every token, layer and network vector (``d``).
      heads: attention heads (``dim`` must be a multiple).
      inducing: ISAB inducing points per layer (``m``).
      token_blocks: ISAB blocks over each layer's tokens.
      layer_blocks: SAB blocks over the layers.
      hidden: the width of the feed-forward blocks and of the head's hidden layer.
      chunk_features: the sinusoid width of the chunk index.
      max_classes: the most classes a network may have (class embeddings).
      max_layers: the most layers a network may have (the batch's padded layer count).
      layer_summary: add each layer's summary statistics to its vector and read its chunks
        relative to its kernel's RMS (see the module docstring).
      raw_summary: with ``layer_summary``, also give each layer the summary's mean, std and
        quantiles at the weights' own scale (:func:`raw_statistics`).
      fan_in_scale: with ``layer_summary``, read each kernel's scale in units of its init's,
        ``1 / sqrt(fan-in)`` (:func:`fan_in_summary`): its log RMS, and with ``raw_summary``
        its raw statistics, times ``sqrt(fan-in)``, so a conv of 9 x 16 inputs and a dense
        layer of 64 read alike.
      last_layer: with ``layer_summary``, also add the last layer's summary features (as the
        layers read them) to the network vector: the one layer whose job (features to classes)
        is the same in every family.
      layer_positions: add each layer's index from the first and from the last layer to its
        vector (sinusoids); without them a layer is placed by its roles alone (first, last,
        conv or dense), so a network of another depth reads like the training networks.
      network_size: add the network's size (log10 of its params, its number of layers),
        standardised over the training networks, to its vector, as the statistics baseline
        reads it; the training networks' mean and std come with the batch
        (:func:`size_norm`, :func:`with_size_norm`).
    """

    dim: int = 32
    heads: int = 4
    inducing: int = 8
    token_blocks: int = 1
    layer_blocks: int = 1
    hidden: int = 64
    chunk_features: int = 16
    max_classes: int = 10
    max_layers: int = 8
    layer_summary: bool = True
    raw_summary: bool = False
    fan_in_scale: bool = False
    last_layer: bool = False
    layer_positions: bool = True
    network_size: bool = False

    def check(self, prefix: str = "sne") -> None:
        """Raises ``ValueError`` naming ``<prefix>.<field>`` for a bad size or flag."""
        for flag in FLAGS:
            checks.flag(f"{prefix}.{flag}", getattr(self, flag))
        for flag in ("raw_summary", "fan_in_scale", "last_layer"):
            if getattr(self, flag) and not self.layer_summary:
                raise ValueError(
                    f"{prefix}.{flag} reads the layer summary: it needs {prefix}.layer_summary=True"
                )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in FLAGS:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{prefix}.{f.name} must be a positive int, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(
                f"{prefix}.dim ({self.dim}) must be a multiple of {prefix}.heads ({self.heads})"
            )
        if self.chunk_features % 2:
            raise ValueError(f"{prefix}.chunk_features must be even, got {self.chunk_features}")


def raw_statistics(summary: jax.Array) -> jax.Array:
    """``[..., 14]``: the mean, std and quantiles of a layer summary ``[..., 16]``
    (:data:`chunking.SUMMARY_FEATURES`) at the weights' own scale, kernel then bias: each
    ratio times its part's RMS (zeros for a missing part, whose ratios are zeros).

    The summary reads a layer's scale and its shape apart; these are the values Unterthiner
    et al.'s statistics read (``statistics.features``). Which of the two views ranks
    networks depends on the zoo: docs/sne.md measures both.
    """
    n = len(chunking.PART_SUMMARY)
    parts = summary.reshape(*summary.shape[:-1], -1, n)
    return (parts[..., 1:] * jnp.exp(parts[..., :1])).reshape(*summary.shape[:-1], -1)


def fan_in_summary(summary: jax.Array, roles: jax.Array) -> jax.Array:
    """A layer summary ``[..., 16]`` with its kernel's log RMS plus half its log fan-in
    (:func:`chunking.log_fan_in` of the layer's roles ``[..., R]``): the kernel's scale in
    units of ``1 / sqrt(fan-in)``, the scale of a LeCun init (variance ``1 / fan-in``), which
    is comparable between layers of any shape where the raw scale is not. A missing kernel
    (a padding layer) stays zeros; the other features are ratios and do not change.
    """
    summary = jnp.asarray(summary)
    present = jnp.any(summary[..., : len(chunking.PART_SUMMARY)] != 0, -1)
    shifted = summary[..., 0] + 0.5 * chunking.log_fan_in(roles)
    return summary.at[..., 0].set(jnp.where(present, shifted, 0.0))


def summary_features(s: Settings, batch: dict) -> jax.Array:
    """``[B, L, F]``: each layer's summary as SNE reads it: the batch's ``summary``, its
    kernel scale in init units with ``s.fan_in_scale`` (:func:`fan_in_summary`), then its
    raw statistics with ``s.raw_summary`` (:func:`raw_statistics`)."""
    summary = batch["summary"]
    if s.fan_in_scale:
        summary = fan_in_summary(summary, batch["roles"])
    if s.raw_summary:
        summary = jnp.concatenate([summary, raw_statistics(summary)], -1)
    return summary


def size_norm(sizes) -> np.ndarray:
    """``[2, 2]``: the mean and std of the training networks' sizes ``[n, 2]`` (the
    :func:`chunking.collate` batches' ``size``); a size constant in training (one depth) is
    only centred (:class:`statistics.Standardizer`)."""
    norm = statistics.Standardizer.fit(np.asarray(sizes))
    return np.stack([norm.mean, norm.std]).astype(np.float32)


def with_size_norm(batch: dict, norm: np.ndarray) -> dict:
    """``batch`` with :func:`size_norm`'s mean and std as ``size_norm [B, 2, 2]``."""
    return {**batch, "size_norm": np.broadcast_to(norm, (len(batch["size"]), *norm.shape))}


def sinusoid(position: jax.Array, width: int) -> jax.Array:
    """``[..., width]``: sines and cosines of ``position`` at ``width / 2`` geometric
    frequencies (the Transformer's position encoding)."""
    freqs = 1.0 / (100.0 ** (np.arange(width // 2) / max(width // 2, 1)))
    angle = position[..., None].astype(jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1)


def pool(q_MHK, k_BTHK, v_BTHK, member_BTS) -> jax.Array:
    """Attention of ``M`` shared queries over each segment's items: ``[B, S, M, H, K]``.

    ``member_BTS`` (0/1) says which segment item ``t`` of network ``b`` is in (none for a
    padding item); the softmax is normalised within each segment, and a segment without items
    gives zeros. Segments are one-hot matmuls, not gathers and scatters: XLA compiles them
    about twice as fast on CPU.
    """
    b, t, h, k = k_BTHK.shape
    member = member_BTS > 0
    used_BT = member.any(-1)
    logits_BTHM = jnp.einsum("bthk,mhk->bthm", k_BTHK, q_MHK) / np.sqrt(k)
    # The segment's max, for a stable softmax (a shift that cancels, so no gradient).
    masked = jnp.where(
        member[..., None, None], jax.lax.stop_gradient(logits_BTHM)[:, :, None], _MASKED
    )
    peak_BSHM = masked.max(axis=1)
    peak_BTHM = jnp.einsum("bts,bshm->bthm", member_BTS, peak_BSHM)  # exact: one term
    shifted = jnp.where(used_BT[..., None, None], logits_BTHM - peak_BTHM, 0.0)
    w_BTHM = jnp.where(used_BT[..., None, None], jnp.exp(shifted), 0.0)
    den_BSHM = jnp.einsum("bts,bthm->bshm", member_BTS, w_BTHM)
    wv = (w_BTHM[..., None] * v_BTHK[:, :, :, None, :]).reshape(b, t, -1)
    num_BSHMK = jnp.einsum("bts,btx->bsx", member_BTS, wv).reshape(b, -1, *w_BTHM.shape[2:], k)
    out_BSHMK = num_BSHMK / jnp.where(den_BSHM > 0, den_BSHM, 1.0)[..., None]
    return jnp.swapaxes(out_BSHMK, 2, 3)


def spread(q_BTHK, k_BSMHK, v_BSMHK, member_BTS) -> jax.Array:
    """Attention of every item over its own segment's ``M`` summaries: ``[B, T, H, K]``
    (zeros for a padding item). Scored against every segment's summaries and masked, so each
    contraction is a plain batched matmul (XLA's CPU backend runs a matmul batched over
    every item slowly)."""
    logits_BTHSM = jnp.einsum("bthk,bsmhk->bthsm", q_BTHK, k_BSMHK) / np.sqrt(q_BTHK.shape[-1])
    own = member_BTS[:, :, None, :, None]
    logits_BTHM = (logits_BTHSM * own).sum(3)  # exact: one term
    w_BTHSM = jax.nn.softmax(logits_BTHM, axis=-1)[:, :, :, None, :] * own
    return jnp.einsum("bthsm,bsmhk->bthk", w_BTHSM, v_BSMHK)


class FeedForward(nn.Module):
    """``x + FF(x)`` then LayerNorm (the second half of a Set Transformer block)."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.hidden)(x)))
        return nn.LayerNorm()(x + y)


class Heads(nn.Module):
    """A linear map ``[..., D] -> [..., H, D / H]``."""

    heads: int

    @nn.compact
    def __call__(self, x):
        return nn.DenseGeneral((self.heads, x.shape[-1] // self.heads))(x)


def _out(x, dim: int):
    """Heads ``[..., H, K]`` merged back to ``[..., dim]`` by a linear map."""
    return nn.DenseGeneral(dim, axis=(-2, -1))(x)


class SegmentPool(nn.Module):
    """MAB(Q, segment): ``queries`` learned points attend to each segment's items:
    ``[B, S, queries, D]`` (PMA with ``queries=1``; the first half of an ISAB)."""

    s: Settings
    queries: int

    @nn.compact
    def __call__(self, x_BTD, member_BTS):
        d, h = self.s.dim, self.s.heads
        seeds_MD = self.param("seeds", nn.initializers.normal(1.0), (self.queries, d))
        att = pool(Heads(h)(seeds_MD), Heads(h)(x_BTD), Heads(h)(x_BTD), member_BTS)
        y_BSMD = nn.LayerNorm()(seeds_MD + _out(att, d))
        return FeedForward(self.s.hidden)(y_BSMD)


class TokenISAB(nn.Module):
    """Induced set attention within each segment: ``m`` inducing points summarise the
    segment's items (:class:`SegmentPool`), then each item attends to its segment's summaries."""

    s: Settings

    @nn.compact
    def __call__(self, x_BTD, member_BTS):
        d, h = self.s.dim, self.s.heads
        hid_BSMD = SegmentPool(self.s, self.s.inducing)(x_BTD, member_BTS)
        att = spread(Heads(h)(x_BTD), Heads(h)(hid_BSMD), Heads(h)(hid_BSMD), member_BTS)
        y_BTD = nn.LayerNorm()(x_BTD + _out(att, d))
        return FeedForward(self.s.hidden)(y_BTD)


class LayerSAB(nn.Module):
    """Masked self-attention over each network's layers ``[B, L, D]``."""

    s: Settings

    @nn.compact
    def __call__(self, x_BLD, mask_BL):
        d, h = self.s.dim, self.s.heads
        q, k, v = (Heads(h)(x_BLD) for _ in range(3))
        logits = jnp.einsum("bqhk,bphk->bhqp", q, k) / np.sqrt(d // h)
        logits = jnp.where(mask_BL[:, None, None, :], logits, _MASKED)
        att = jnp.einsum("bhqp,bphk->bqhk", jax.nn.softmax(logits, -1), v)
        y = nn.LayerNorm()(x_BLD + _out(att, d))
        return FeedForward(self.s.hidden)(y)


class TokenEmbed(nn.Module):
    """Token embeddings ``[B, T, D]``: the chunk and its log RMS (both over its layer's kernel
    RMS with ``layer_summary``), its layer's roles, its chunk index and its class (0 for none),
    each mapped to ``D`` and summed, then LayerNorm."""

    s: Settings

    @nn.compact
    def __call__(self, batch, member_BTL) -> jax.Array:
        d = self.s.dim
        roles_BTR = jnp.einsum("btl,blr->btr", member_BTL, batch["roles"])
        label = jax.nn.one_hot(batch["label"], self.s.max_classes + 1)
        values = batch["values"]
        if self.s.layer_summary:  # the chunk relative to its layer's kernel RMS
            layer_log_rms_BT = jnp.einsum("btl,bl->bt", member_BTL, batch["summary"][..., 0])
            values = values * jnp.exp(-layer_log_rms_BT)[..., None]
        # The chunk's scale as a feature of its own: the LayerNorms would divide it out.
        log_rms = jnp.log(jnp.sqrt(jnp.mean(values**2, -1, keepdims=True)) + 1e-3)
        x = nn.Dense(d, name="chunk")(values) + nn.Dense(d, name="chunk_scale")(log_rms)
        x = x + nn.Dense(d, name="roles")(roles_BTR)
        x = x + nn.Dense(d, name="chunk_index")(sinusoid(batch["chunk"], self.s.chunk_features))
        x = x + nn.Dense(d, use_bias=False, name="label")(label)
        return nn.LayerNorm()(x)


class SNE(nn.Module):
    """The encoder and head: a :func:`chunking.collate` batch -> predicted accuracy ``[B]``."""

    s: Settings = Settings()

    @nn.compact
    def __call__(self, batch) -> jax.Array:
        self.s.check()  # a bad size or option combination, named, before any tracing fails
        if self.s.network_size and "size_norm" not in batch:
            raise ValueError(
                "SNE(network_size=True) reads the training networks' sizes from the batch: add "
                "them with sne.with_size_norm(batch, sne.size_norm(training sizes))"
            )
        num_layers = batch["roles"].shape[1]
        member_BTL = jax.nn.one_hot(batch["layer"], num_layers) * batch["mask"][..., None]
        x_BTD = TokenEmbed(self.s)(batch, member_BTL)
        for _ in range(self.s.token_blocks):
            x_BTD = TokenISAB(self.s)(x_BTD, member_BTL)
        z_BLD = SegmentPool(self.s, 1, name="layer_pool")(x_BTD, member_BTL)[:, :, 0]
        z_BLD = z_BLD + nn.Dense(self.s.dim, name="layer_roles")(batch["roles"])
        if self.s.layer_summary:
            summary_BLS = summary_features(self.s, batch)
            z_BLD = z_BLD + nn.Dense(self.s.dim, name="layer_summary")(summary_BLS)
        if self.s.layer_positions:
            pos = jnp.concatenate(
                [sinusoid(batch["depth"][..., 0], 16), sinusoid(batch["depth"][..., 1], 16)], -1
            )
            z_BLD = z_BLD + nn.Dense(self.s.dim, name="layer_position")(pos)
        z_BLD = nn.LayerNorm()(z_BLD)
        mask_BL = batch["layer_mask"]
        for _ in range(self.s.layer_blocks):
            z_BLD = LayerSAB(self.s)(z_BLD, mask_BL)
        one = mask_BL[..., None].astype(jnp.float32)
        net_BD = SegmentPool(self.s, 1, name="network_pool")(z_BLD, one)[:, 0, 0]
        if self.s.last_layer:
            last_BL = batch["roles"][..., _LAST] * mask_BL
            last_BS = jnp.einsum("bl,bls->bs", last_BL, summary_BLS)
            net_BD = net_BD + nn.Dense(self.s.dim, name="last_layer")(last_BS)
        if self.s.network_size:
            norm = batch["size_norm"]
            size = (batch["size"] - norm[:, 0]) / norm[:, 1]
            net_BD = net_BD + nn.Dense(self.s.dim, name="network_size")(size)
        hidden = nn.gelu(nn.Dense(self.s.hidden, name="head_hidden")(net_BD))
        return jax.nn.sigmoid(nn.Dense(1, name="head")(hidden)[:, 0])
