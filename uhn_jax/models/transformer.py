"""The reference text Transformer (spec §4.3): embedding, pre-norm encoders without FFN, CLS head.

The network is a flat sequence of layers, each its own entry ``layer_NNN`` in the params tree:

* layer 0, Embedding: ``x = tokens[ids] + positions[:L]``, then dropout;
* per encoder, one MHA layer ``x + dropout(MHA(pre(x)))`` followed by ``linears_per_encoder``
  Linear(E -> E) layers ``x + dropout(Linear(LN(leaky_relu(x))))``. ``pre`` is the identity
  for the first encoder's MHA and ``LN(leaky_relu(.))`` for later ones (activation *before* a
  non-affine LayerNorm, as everywhere in the reference). There is no 4x feed-forward
  expansion;
* the head, ``Linear(E -> C)`` on the first (``<cls>``) token, with no activation or norm before
  it.

Tensor names and layouts follow the descriptor functions registered in
:mod:`uhn_jax.descriptors` (Flax style: output axis last). The PyTorch tensors map to ours as
(PARAM_TYPE: spec tensor, PyTorch shape -> our name, our shape):

- Embedding 0: token table, (V, E) -> ``tokens``, ``(V, E)``;
- Embedding 1: positional table, (1, Lmax, E) -> ``positions``, ``(Lmax, E)``;
- MHA 0/1/2: Wq/Wk/Wv, (E, E) -> ``{query,key,value}_kernel``, ``(E_in, E_out)``;
- MHA 3/4/5: bq/bk/bv, (E,) -> ``{query,key,value}_bias``, ``(E,)``;
- MHA 6/7: W_out, b_out -> ``out_kernel`` ``(E_in, E_out)``, ``out_bias`` ``(E,)``;
- Linear 0/1: W (out, in), b -> ``kernel`` ``(in, out)``, ``bias`` ``(out,)``.

Attention heads are contiguous blocks of ``E / num_heads`` columns of the projections' output
axis, as in ``torch.nn.MultiheadAttention``. Keys whose token is ``<pad>`` are masked out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from uhn_jax.core import descriptors as D
from uhn_jax.models.common import layer_norm, torch_default_init

# Id of `<pad>`; equal to `uhn_jax.text_data.PAD_ID` (kept here so base models don't import
# the data loaders). Positions holding it are masked out as attention keys.
PAD_ID = 1

_EMBEDDING, _MHA, _LINEAR, _HEAD = "embedding", "mha", "linear", "head"


def multi_head_attention(
    p: dict,
    x_BLE: jax.Array,
    valid_BL: jax.Array,
    num_heads: int,
    *,
    weights_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Self-attention with a key padding mask, as ``F.multi_head_attention_forward``.

    Args:
      p: one MHA layer's params (``{query,key,value,out}_{kernel,bias}``).
      x_BLE: inputs ``(B, L, E)``; used as queries, keys and values.
      valid_BL: ``True`` where a position may be attended to (not padding).
      num_heads: H; head ``h`` uses output columns ``h*E/H .. (h+1)*E/H - 1``.
      weights_fn: applied to the ``(B, H, L, L)`` attention weights after the softmax (the
        model's attention dropout in training); ``None`` for the identity.

    Returns:
      ``(B, L, E)`` outputs after the output projection. A query whose keys are all masked
      attends uniformly to them instead of producing NaN (PyTorch gives NaN); with a leading
      ``<cls>`` token this never happens.
    """
    b, n, e = x_BLE.shape
    d = e // num_heads

    def project(name: str) -> jax.Array:
        y = x_BLE @ p[f"{name}_kernel"] + p[f"{name}_bias"]
        return y.reshape(b, n, num_heads, d)

    q_BLHD, k_BLHD, v_BLHD = project("query"), project("key"), project("value")
    scores_BHQK = jnp.einsum("bqhd,bkhd->bhqk", q_BLHD, k_BLHD) / math.sqrt(d)
    # A finite minimum rather than -inf: masked keys still get exactly zero weight after the
    # max-subtracting softmax, and an all-masked row stays finite.
    scores_BHQK = jnp.where(
        valid_BL[:, None, None, :], scores_BHQK, jnp.finfo(scores_BHQK.dtype).min
    )
    weights_BHQK = jax.nn.softmax(scores_BHQK, axis=-1)
    if weights_fn is not None:
        weights_BHQK = weights_fn(weights_BHQK)
    out_BLE = jnp.einsum("bhqk,bkhd->bqhd", weights_BHQK, v_BLHD).reshape(b, n, e)
    return out_BLE @ p["out_kernel"] + p["out_bias"]


class _Dropout:
    """Inverted dropout (as ``common.dropout``) whose masks all come from one random draw.

    ``draw`` makes every keep-mask of one forward pass with a single ``bernoulli`` call and
    slices it; each call then uses the next mask. The distribution is that of independent
    per-site draws, but XLA compiles one random-number kernel instead of one per site. On a
    busy 2-core CPU, the jitted gradient of a small two-encoder model (nine dropout sites)
    compiled in about 3 s this way against 8-15 s with one threefry draw per site; for the
    AG News model, 3-5 s against 6-7 s. Runtime was the same.
    """

    def __init__(self, rate: float, masks: list[jax.Array] | None):
        self.rate, self._masks = rate, masks

    @classmethod
    def draw(cls, rate: float, rng: jax.Array | None, shapes) -> _Dropout:
        """Masks for ``shapes`` (in call order); the identity if ``rate == 0`` or no ``rng``."""
        if rate == 0.0 or rng is None:
            return cls(rate, None)
        sizes = [math.prod(s) for s in shapes]
        keep = jax.random.bernoulli(rng, 1.0 - rate, (sum(sizes),))
        parts = jnp.split(keep, np.cumsum(sizes)[:-1])
        return cls(rate, [m.reshape(s) for m, s in zip(parts, shapes, strict=True)][::-1])

    def __call__(self, x: jax.Array) -> jax.Array:
        if self._masks is None:
            return x
        keep = self._masks.pop()
        assert keep.shape == x.shape, (keep.shape, x.shape)  # shapes listed in call order
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)

    def check_consumed(self) -> None:
        assert not self._masks, f"{len(self._masks)} dropout masks drawn but not used"


@dataclasses.dataclass(frozen=True)
class Transformer:
    """Embedding -> encoders of [MHA, Linear x k] with residuals -> CLS head, as the reference.

    The AG News reference is ``Transformer(5000, 128, 4)`` (378,372 params) and the IMDB one
    ``Transformer(5000, 512, 2, num_encoders=1, dropout_rate=0.4,
    dataset_type=DatasetType.IMDB)`` (377,858).

    Attributes:
      vocab_size: V, rows of the token table (specials included).
      max_len: Lmax, rows of the positional table; the longest accepted input.
      num_classes: C, output width.
      embed_dim: E, the model width (divisible by ``num_heads``).
      num_encoders: number of [MHA, Linear x ``linears_per_encoder``] blocks.
      num_heads: attention heads per MHA layer.
      linears_per_encoder: residual Linear(E -> E) layers after each MHA.
      dropout_rate: dropout of the embedding, attention weights, MHA output and encoder
        Linears, in training only (the head has none).
      slope: LeakyReLU negative slope.
      dataset_type: :class:`~uhn_jax.descriptors.DatasetType` for the global descriptor.
    """

    vocab_size: int
    max_len: int
    num_classes: int
    embed_dim: int = 64
    num_encoders: int = 2
    num_heads: int = 2
    linears_per_encoder: int = 2
    dropout_rate: float = 0.2
    slope: float = 0.1
    dataset_type: int = int(D.DatasetType.AG_NEWS)

    def __post_init__(self):
        for field in (
            "vocab_size",
            "max_len",
            "num_classes",
            "embed_dim",
            "num_encoders",
            "num_heads",
        ):
            value = getattr(self, field)
            if int(value) != value or value < 1:
                raise ValueError(f"Transformer {field} must be a positive int, got {value!r}")
        if int(self.linears_per_encoder) != self.linears_per_encoder or (
            self.linears_per_encoder < 0
        ):
            raise ValueError(
                "Transformer linears_per_encoder must be a non-negative int, got "
                f"{self.linears_per_encoder!r}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"Transformer embed_dim {self.embed_dim} is not divisible by num_heads "
                f"{self.num_heads}; each head needs embed_dim / num_heads columns"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"Transformer dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The role of every layer: ``embedding``, then ``mha``/``linear`` per encoder, ``head``."""
        encoder = (_MHA,) + (_LINEAR,) * self.linears_per_encoder
        return (_EMBEDDING,) + encoder * self.num_encoders + (_HEAD,)

    @property
    def num_layers(self) -> int:
        return len(self.kinds)

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    def _dropout_shapes(self, b: int, n: int) -> tuple[tuple[int, ...], ...]:
        """Shapes of one forward pass's dropout masks, in the order the layers use them."""
        e, h = self.embed_dim, self.num_heads
        per_kind = {
            _EMBEDDING: ((b, n, e),),
            _MHA: ((b, h, n, n), (b, n, e)),  # attention weights, then the MHA output
            _LINEAR: ((b, n, e),),
            _HEAD: (),
        }
        return tuple(shape for kind in self.kinds for shape in per_kind[kind])

    def layers(self) -> tuple[D.LayerSpec, ...]:
        e, rate = self.embed_dim, self.dropout_rate
        leaky = {
            "norm_type": 1,
            "activation_type": int(D.ActivationType.LEAKY_RELU),
            "activation_param": self.slope,
        }
        plain = {"norm_type": 0, "activation_type": int(D.ActivationType.NONE)}
        init = {"initialization_type": int(D.InitializationType.DEFAULT)}
        specs = []
        for i, kind in enumerate(self.kinds):
            if kind == _EMBEDDING:
                layer_type = D.LayerType.EMBEDDING
                fields = {
                    "output_size": e,
                    "dropout_rate": rate,
                    "embedding_num": self.vocab_size,
                    "max_sequence_length": self.max_len,
                    **init,
                }
            elif kind == _MHA:
                layer_type = D.LayerType.MHA
                fields = {
                    "bias_type": 1,
                    **(plain if i == 1 else leaky),  # layer 1 is the first encoder's MHA
                    "shortcut_type": 1,
                    "output_size": e,
                    "input_size": e,
                    "dropout_rate": rate,
                    "num_heads": self.num_heads,
                    **init,
                }
            elif kind == _LINEAR:
                layer_type = D.LayerType.LINEAR
                fields = {
                    "bias_type": 1,
                    **leaky,
                    "shortcut_type": 1,
                    "output_size": e,
                    "input_size": e,
                    "dropout_rate": rate,
                    "input_pooling_reshape_type": int(D.InputPoolingReshapeType.NONE),
                    **init,
                }
            else:
                layer_type = D.LayerType.LINEAR
                fields = {
                    "bias_type": 1,
                    **plain,
                    "shortcut_type": 0,
                    "output_size": self.num_classes,
                    "input_size": e,
                    "dropout_rate": 0.0,
                    "input_pooling_reshape_type": int(D.InputPoolingReshapeType.FIRST_TOKEN),
                    **init,
                }
            specs.append(D.LayerSpec(self.name(i), layer_type, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.TRANSFORMER),
            "task_type": int(D.TaskType.TEXT_CLS),
            "dataset_type": self.dataset_type,
            "num_encoders": self.num_encoders,
        }

    def init(self, key: jax.Array) -> dict:
        """Draws params matching the §3.1 targets (mean, std) of every tensor.

        Token table ``N(0, 1)``, zero positional table; query/key/value kernels
        ``U(+-sqrt(3/E))`` (std ``sqrt(1/E)``), out kernel ``U(+-1/sqrt(E))``, zero MHA biases;
        Linear kernels and biases ``U(+-1/sqrt(fan_in))`` (PyTorch default). Layer ``i`` draws
        from ``fold_in(key, i)``.
        """
        e, f32 = self.embed_dim, jnp.float32
        params = {}
        for i, kind in enumerate(self.kinds):
            k = jax.random.fold_in(key, i)
            if kind == _EMBEDDING:
                p = {
                    "tokens": jax.random.normal(k, (self.vocab_size, e), f32),
                    "positions": jnp.zeros((self.max_len, e), f32),
                }
            elif kind == _MHA:
                k_q, k_k, k_v, k_o = jax.random.split(k, 4)
                qkv, out = math.sqrt(3.0 / e), 1.0 / math.sqrt(e)
                p = {
                    "query_kernel": jax.random.uniform(k_q, (e, e), f32, -qkv, qkv),
                    "key_kernel": jax.random.uniform(k_k, (e, e), f32, -qkv, qkv),
                    "value_kernel": jax.random.uniform(k_v, (e, e), f32, -qkv, qkv),
                    "out_kernel": jax.random.uniform(k_o, (e, e), f32, -out, out),
                }
                p |= {f"{t}_bias": jnp.zeros((e,), f32) for t in ("query", "key", "value", "out")}
            else:
                n_out = self.num_classes if kind == _HEAD else e
                p = torch_default_init(k, {"linear": ((e, n_out), e)})["linear"]
            params[self.name(i)] = p
        return params

    def apply(
        self,
        params: dict,
        tokens: jax.Array,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``(B, num_classes)`` for token ids ``(B, L)``, ``1 <= L <= max_len``.

        Position 0 of every row should be ``<cls>``: the head reads it. Positions holding
        ``<pad>`` (id 1) are never attended to, so trailing padding does not change the logits.

        Args:
          params: the params tree of :meth:`init` (or generated weights unflattened into it).
          tokens: integer token ids ``(B, L)``; numpy inputs are also checked to lie in
            ``[0, vocab_size)`` (traced inputs cannot be).
          train: enables dropout (together with ``rng``).
          rng: PRNG key for dropout; ``None`` disables it.

        Returns:
          Logits ``(B, num_classes)``.
        """
        if not hasattr(tokens, "ndim"):
            tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"Transformer expects token ids (B, L), got shape {tokens.shape}")
        n = tokens.shape[1]
        if not 1 <= n <= self.max_len:
            raise ValueError(
                f"Transformer sequence length must be in [1, max_len={self.max_len}], got {n}; "
                "truncate the inputs or build the model with a larger max_len"
            )
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"Transformer expects integer token ids, got dtype {tokens.dtype}")
        if (
            isinstance(tokens, np.ndarray)
            and tokens.size
            and (tokens.min() < 0 or tokens.max() >= self.vocab_size)
        ):
            raise ValueError(
                f"token ids must be in [0, vocab_size={self.vocab_size}), got values in "
                f"[{tokens.min()}, {tokens.max()}]"
            )

        drop = _Dropout.draw(
            self.dropout_rate if train else 0.0, rng, self._dropout_shapes(*tokens.shape)
        )
        valid_BL = tokens != PAD_ID
        h = None
        for i, kind in enumerate(self.kinds):
            p = params[self.name(i)]
            if kind == _EMBEDDING:
                h = drop(p["tokens"][tokens] + p["positions"][:n])
            elif kind == _MHA:
                y = h if i == 1 else layer_norm(jax.nn.leaky_relu(h, self.slope))
                h = h + drop(multi_head_attention(p, y, valid_BL, self.num_heads, weights_fn=drop))
            elif kind == _LINEAR:
                y = layer_norm(jax.nn.leaky_relu(h, self.slope)) @ p["kernel"] + p["bias"]
                h = h + drop(y)
            else:
                h = h[:, 0] @ p["kernel"] + p["bias"]
        drop.check_consumed()
        return h
