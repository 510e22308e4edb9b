"""Transcript sorting head: which clip does each transcript belong to?

Input: all projected video tokens [B, Nv, E] then the n transcript embeddings [B, n, E]
(gradients stopped by the caller's choice, see `TVTSv2`), each tagged with a learned type
embedding (video vs text). No positional embedding on the transcripts: the head cannot see
their input order, so plain labels 0..n-1 in temporal order are as good as shuffling.
The published type embedding starts at zeros (docs/published_recipe.md, "Sort head").
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvts.models.layers import Dtype, LayerNorm, ResidualBlock, default_kernel_init, logical
from tvts.models.variants import SortHeadConfig


class SortHead(nn.Module):
    """video_tokens [B, Nv, E], transcripts [B, n, E] -> logits [B, n, num_clips]."""

    cfg: SortHeadConfig
    dtype: Dtype = jnp.float32
    type_init_std: float = 0.0  # 0: zeros, as published; > 0: N(0, type_init_std) (the tiny demo: 0.02)
    attention: str = "einsum"  # the attention implementation (layers.attend)

    @nn.compact
    def __call__(self, video_tokens: jax.Array, transcripts: jax.Array) -> jax.Array:
        cfg = self.cfg
        type_init = nn.initializers.normal(self.type_init_std) if self.type_init_std else nn.initializers.zeros
        types = self.param("type_embedding", logical(type_init, (None, "joint")), (2, cfg.width))
        x = jnp.concatenate([video_tokens + types[0], transcripts + types[1]], axis=1).astype(self.dtype)
        for i in range(cfg.depth):
            x, _ = ResidualBlock(cfg.heads, 4 * cfg.width, "gelu", 1e-6, self.dtype, self.attention,
                                 name=f"block_{i}")(x, None)
        x = LayerNorm(1e-6, self.dtype, name="ln")(x[:, -transcripts.shape[1]:])
        return nn.Dense(cfg.num_clips, dtype=jnp.float32, kernel_init=logical(default_kernel_init, ("joint", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)), name="classifier")(x)
