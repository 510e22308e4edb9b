"""DistilBERT text tower (TVTS v1): post-LN blocks over learned positions, read at the first token.

As Hugging Face's DistilBertModel computes it (the official v1 text model, docs/published_recipe.md, "TVTS v1"):

    x = LN_emb(word[ids] + position[0..L-1])                    no token types; LayerNorm eps 1e-12
    per block:  x = ln_1(x + attn(x))                           post-LN (DistilBERT's sa_layer_norm)
                x = ln_2(x + mlp(x))                            GELU (erf); DistilBERT's output_layer_norm
    feature = x[:, 0]                                           the first ([CLS]) token's last hidden state

Keys holding the padding id are masked out of every attention, as the tokenizer's attention mask does; padding is
thus invisible to the feature, whatever the padded length. The query, key and value are separate projections
(`attn/{q,k,v}`, kernels [D, H, Dh]) as DistilBERT stores them (`q_lin`, `k_lin`, `v_lin`), so that one released
tensor converts to one parameter. The projection to the joint space (v1's `txt_proj`: ReLU, then Linear) is `proj`.
Dropout (DistilBERT's 0.1 during the official training) is not applied: the towers here are deterministic.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvts.models.layers import (
    Dtype,
    LayerNorm,
    Mlp,
    Projection,
    attend,
    default_kernel_init,
    embed_init,
    layer_stack,
    logical,
    out_projection,
    product_input,
    shard_residual,
)
from tvts.models.variants_v1 import DistilBertTower


class SeparateQKVAttention(nn.Module):
    """Self-attention with separate q, k, v projections (kernels [D, H, Dh], biases [H, Dh]) and `out` [H, Dh, D]."""

    heads: int
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the implementation (layers.attend)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        width = x.shape[-1]
        shape = (width, self.heads, width // self.heads)
        x = product_input(x)
        q, k, v = (Projection("...d,dhk->...hk", shape, ("embed", "heads", "kv"), dtype=self.dtype, name=n)(x)
                   for n in ("q", "k", "v"))
        return out_projection(attend(q, k, v, mask, self.attention), self.dtype)


class PostLNBlock(nn.Module):
    """One DistilBERT block; scan-compatible: (x, mask) -> (x, None)."""

    heads: int
    mlp_dim: int
    epsilon: float = 1e-12
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the attention implementation (layers.attend)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, None]:
        x = shard_residual(x)
        attn = SeparateQKVAttention(self.heads, self.dtype, self.attention, name="attn")
        x = shard_residual(LayerNorm(self.epsilon, self.dtype, name="ln_1")(x + shard_residual(attn(x, mask))))
        mlp = Mlp(self.mlp_dim, "gelu", self.dtype, name="mlp")
        return shard_residual(LayerNorm(self.epsilon, self.dtype, name="ln_2")(x + shard_residual(mlp(x)))), None


class DistilBertEncoder(nn.Module):
    """tokens [B, L] int (L <= context_length) -> (features [B, width], projected [B, joint_dim]).

    `features` is the first token's last hidden state (what the v1 sort head reads); `projected` = proj(ReLU(it)).
    """

    cfg: DistilBertTower
    joint_dim: int
    dtype: Dtype = jnp.float32
    remat: str = "none"
    attention: str = "einsum"  # the attention implementation (layers.attend)
    unroll_layers: bool = False  # layers.layer_stack's unroll

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        length = tokens.shape[-1]
        if length > cfg.context_length:
            raise ValueError(f"{length} text tokens exceed the context length {cfg.context_length}")
        words = self.param("word_embeddings", logical(embed_init, ("vocab", "embed")), (cfg.vocab_size, cfg.width))
        positions = self.param("position_embeddings", logical(embed_init, (None, "embed")),
                               (cfg.max_positions, cfg.width))
        x = jnp.take(words, tokens, axis=0) + positions[:length]
        x = LayerNorm(cfg.epsilon, self.dtype, name="embeddings_ln")(x)
        keep = (tokens != cfg.pad_token_id)[:, None, None, :]  # [B, 1 (heads), 1 (queries), L (keys)]
        stack = layer_stack(PostLNBlock, cfg.depth, self.remat, unroll=self.unroll_layers)
        x, _ = stack(cfg.heads, cfg.mlp_dim, cfg.epsilon, self.dtype, self.attention, name="blocks")(x, keep)
        features = x[:, 0]
        projected = nn.Dense(self.joint_dim, dtype=self.dtype, kernel_init=logical(default_kernel_init,
                                                                                  ("embed", "joint")),
                             bias_init=logical(nn.initializers.zeros, ("joint",)), name="proj")(nn.relu(features))
        return features, projected
