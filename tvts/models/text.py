"""CLIP text tower with a frozen shallow stack and a tuned deep stack.

The blocks live in two scanned stacks, `frozen_blocks` (the first `num_frozen`) and
`tuned_blocks` (the rest), so that freezing is a parameter-path rule and each stack keeps
stacked parameters for scan. Pooling takes the token at the EOT position (the highest token id).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvts.models.layers import Dtype, LayerNorm, ResidualBlock, embed_init, layer_stack, logical, shard_residual
from tvts.models.variants import TextTower
from tvts.models.video_vit import default_proj_init


def eot_pool(x: jax.Array, tokens: jax.Array) -> jax.Array:
    """x [B, L, D], tokens [B, L] -> [B, D]: the features at each sequence's EOT (argmax id) position."""
    return jnp.take_along_axis(x, jnp.argmax(tokens, axis=-1)[:, None, None], axis=1)[:, 0]


class TextEncoder(nn.Module):
    """tokens [B, L] int (L <= context_length) -> embeddings [B, joint_dim]."""

    cfg: TextTower
    joint_dim: int
    act: str
    dtype: Dtype = jnp.float32
    remat: str = "none"
    attention: str = "einsum"  # the attention implementation (layers.attend)
    unroll_layers: bool = False  # layers.layer_stack's unroll

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.cfg
        length = tokens.shape[-1]
        if length > cfg.context_length:
            raise ValueError(f"{length} text tokens exceed the context length {cfg.context_length}")
        tok_emb = self.param("token_embedding", logical(embed_init, ("vocab", "embed")), (cfg.vocab_size, cfg.width))
        pos_emb = self.param("positional_embedding", logical(nn.initializers.normal(0.01), (None, "embed")),
                             (cfg.context_length, cfg.width))
        x = (jnp.take(tok_emb, tokens, axis=0) + pos_emb[:length]).astype(self.dtype)
        x = shard_residual(x)
        causal = jnp.tril(jnp.ones((length, length), bool))
        for name, depth in (("frozen_blocks", cfg.num_frozen), ("tuned_blocks", cfg.depth - cfg.num_frozen)):
            if depth:
                stack = layer_stack(ResidualBlock, depth, self.remat, unroll=self.unroll_layers)
                x, _ = stack(cfg.heads, cfg.mlp_dim, self.act, 1e-5, self.dtype, self.attention, name=name)(x, causal)
        x = LayerNorm(dtype=self.dtype, name="ln_final")(x)
        proj = self.param("text_projection", logical(default_proj_init(cfg.width), ("embed", "joint")),
                          (cfg.width, self.joint_dim))
        return eot_pool(x, tokens) @ proj.astype(self.dtype)
