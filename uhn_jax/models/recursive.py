"""A generated UHN (spec §5.3): the base model of recursive generation H0 -> H1 -> ... -> f.

``RecursiveUHN`` is a UHN written as an ordinary base model, so a generator can produce its
weights like any other model's. It has no encoders of its own: it takes the *encoded*
descriptors of the model it generates (index Fourier features ``(n, 2F)`` and structure Fourier
tokens ``(L, 2S)``), which the chain computes with the root generator's frozen normalisation and
Fourier matrices. Its 11 layers mirror the reference's ``RecursiveModel`` (181,121 parameters at
E=64, F=1024):

- structure path: 0 MHA (4 heads, residual, no pre-norm); 1-2 residual Linear E->E
  (LeakyReLU -> LN -> Linear); 3 Linear E->E on the masked mean over layer tokens (no
  activation); 4 Linear E->E after LeakyReLU -> LN, zero-initialised (so a fresh H_k adds
  nothing from the structure, as the root's zero-initialised output layer);
- index path: 5 Linear 2F->E (no activation); 6-9 residual Linear E->E;
- output: 10 LeakyReLU(structure vector + index hidden) -> Linear E->1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uhn_jax.core import descriptors as D
from uhn_jax.models.common import layer_norm, torch_default_init
from uhn_jax.models.transformer import multi_head_attention


@dataclasses.dataclass(frozen=True)
class RecursiveUHN:
    """A UHN as a base model (see the module docstring).

    Attributes:
      embed_dim: E, the width of both paths (the structure tokens' width, 2 x 32 freqs).
      index_features: 2F, the width of the index Fourier features (2 x 1024).
      num_heads: heads of the structure MHA.
      structure_linears: residual Linears after the MHA.
      index_blocks: residual Linears after the index input Linear.
      slope: LeakyReLU slope.
    """

    embed_dim: int = 64
    index_features: int = 2048
    num_heads: int = 4
    structure_linears: int = 2
    index_blocks: int = 4
    slope: float = 0.1

    def __post_init__(self):
        for name in ("embed_dim", "index_features", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RecursiveUHN {name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"RecursiveUHN embed_dim {self.embed_dim} is not divisible by {self.num_heads} "
                "heads"
            )

    @staticmethod
    def name(i: int) -> str:
        return f"layer_{i:03d}"

    @property
    def kinds(self) -> tuple[str, ...]:
        """Role of each layer, in order."""
        return (
            "mha",
            *("structure_linear",) * self.structure_linears,
            "pool",
            "structure_out",
            "index_in",
            *("index_block",) * self.index_blocks,
            "head",
        )

    def _sizes(self, kind: str) -> tuple[int, int]:
        e = self.embed_dim
        return {"index_in": (self.index_features, e), "head": (e, 1)}.get(kind, (e, e))

    def layers(self) -> tuple[D.LayerSpec, ...]:
        leaky = {
            "norm_type": 1,
            "activation_type": int(D.ActivationType.LEAKY_RELU),
            "activation_param": self.slope,
        }
        specs = []
        for i, kind in enumerate(self.kinds):
            n_in, n_out = self._sizes(kind)
            fields = {"bias_type": 1, "output_size": n_out, "input_size": n_in}
            if kind == "mha":
                fields |= {"shortcut_type": 1, "num_heads": self.num_heads}
            elif kind in ("structure_linear", "index_block"):
                fields |= {"shortcut_type": 1, **leaky}
            elif kind == "pool":
                fields["input_pooling_reshape_type"] = int(D.InputPoolingReshapeType.AVG_SEQUENCE)
            elif kind == "structure_out":
                fields |= {**leaky, "initialization_type": int(D.InitializationType.ZERO)}
            elif kind == "head":
                fields |= {
                    "activation_type": int(D.ActivationType.LEAKY_RELU),
                    "activation_param": self.slope,
                }
            layer_type = D.LayerType.MHA if kind == "mha" else D.LayerType.LINEAR
            specs.append(D.LayerSpec(self.name(i), layer_type, tuple(fields.items())))
        return tuple(specs)

    def global_fields(self) -> dict[str, float]:
        return {
            "model_type": int(D.ModelType.RECURSIVE),
            "task_type": int(D.TaskType.RECURSIVE),
            "dataset_type": int(D.DatasetType.RECURSIVE_IMAGE_CLS),
            "num_structure_freqs": self.embed_dim // 2,
            "num_index_freqs": self.index_features // 2,
        }

    def init(self, key: jax.Array) -> dict:
        """PyTorch-default Linears, the MHA as in the descriptor targets, zero layer 4."""
        e, params = self.embed_dim, {}
        for i, kind in enumerate(self.kinds):
            k = jax.random.fold_in(key, i)
            if kind == "mha":
                k_q, k_k, k_v, k_o = jax.random.split(k, 4)
                qkv, out = (3.0 / e) ** 0.5, e**-0.5
                p = {
                    f"{n}_kernel": jax.random.uniform(kk, (e, e), jnp.float32, -b, b)
                    for n, kk, b in (("query", k_q, qkv), ("key", k_k, qkv), ("value", k_v, qkv))
                }
                p["out_kernel"] = jax.random.uniform(k_o, (e, e), jnp.float32, -out, out)
                p |= {f"{n}_bias": jnp.zeros((e,)) for n in ("query", "key", "value", "out")}
            else:
                n_in, n_out = self._sizes(kind)
                p = torch_default_init(k, {"l": ((n_in, n_out), n_in)})["l"]
                if kind == "structure_out":
                    p = jax.tree.map(jnp.zeros_like, p)
            params[self.name(i)] = p
        return params

    def apply(self, params: dict, inputs, *, train: bool = False, rng=None) -> jax.Array:
        """Weights ``(n,)`` of the model whose encoded descriptors are ``inputs``.

        Args:
          params: this model's params (generated by its parent).
          inputs: ``(index_features (n, 2F), structure_tokens (L, E), layer_mask (L,))``; the
            mask marks real layers of zero-padded tokens (``None`` for all).
          train, rng: accepted for the base-model protocol; there is no dropout.
        """
        del train, rng
        feats, tokens, mask = inputs
        if feats.shape[-1] != self.index_features or tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"RecursiveUHN expects index features (n, {self.index_features}) and structure "
                f"tokens (L, {self.embed_dim}), got {feats.shape} and {tokens.shape}"
            )
        valid = jnp.ones(tokens.shape[0], bool) if mask is None else mask > 0
        s, h = tokens, None
        for i, kind in enumerate(self.kinds):
            p = params[self.name(i)]
            if kind == "mha":
                s = s + multi_head_attention(p, s[None], valid[None], self.num_heads)[0]
            elif kind == "structure_linear":
                s = s + layer_norm(jax.nn.leaky_relu(s, self.slope)) @ p["kernel"] + p["bias"]
            elif kind == "pool":
                m = valid.astype(s.dtype)[:, None]
                s = ((s * m).sum(0) / jnp.maximum(m.sum(), 1.0)) @ p["kernel"] + p["bias"]
            elif kind == "structure_out":
                s = layer_norm(jax.nn.leaky_relu(s, self.slope)) @ p["kernel"] + p["bias"]
            elif kind == "index_in":
                h = feats @ p["kernel"] + p["bias"]
            elif kind == "index_block":
                h = h + layer_norm(jax.nn.leaky_relu(h, self.slope)) @ p["kernel"] + p["bias"]
            else:
                h = jax.nn.leaky_relu(h + s, self.slope) @ p["kernel"] + p["bias"]
        return h[:, 0]
