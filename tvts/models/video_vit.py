"""TVTSv2 video tower: a CLIP ViT with divided space-time attention and tube masking.

Token layout throughout: x [B, 1 + T*N, D] = CLS followed by the patch tokens of frame 0,
then frame 1, ... (N patches per frame, after masking N = n_keep).

Block (docs/published_recipe.md, "Video encoder"), exactly:
    t = time_attn(ln_3(x))      attention across frames at each patch position
    s = attn(ln_1(x + t))       attention across patches within each frame
    x = x + s                   t itself is not added to the residual
    x = x + mlp(ln_2(x))
In both attentions the CLS query attends to every token of the clip; a patch query attends to
the CLS token plus its own frame (space) or its own position across frames (time).
"""
from __future__ import annotations

from typing import Literal

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from tvts.models.layers import (
    Dtype,
    LayerNorm,
    Mlp,
    attend,
    embed_init,
    layer_stack,
    logical,
    out_projection,
    qkv_projection,
    shard_residual,
)
from tvts.models.variants import VideoTower


def divided_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_frames: int,
                      over: Literal["space", "time"], implementation: str = "einsum") -> jax.Array:
    """q, k, v: [B, 1 + T*N, H, Dh] -> [B, 1 + T*N, H, Dh]. implementation: see layers.attend."""
    cls_out = attend(q[:, :1], k, v, implementation=implementation)  # CLS sees the whole clip

    def grouped(a):  # patch tokens [B, T*N, H, Dh] -> [B, groups, members, H, Dh]
        a = einops.rearrange(a[:, 1:], "b (t n) h d -> b t n h d", t=num_frames)
        return a if over == "space" else einops.rearrange(a, "b t n h d -> b n t h d")

    def with_cls(a, cls):  # prepend the CLS key/value to every group
        cls = jnp.broadcast_to(cls[:, None], (a.shape[0], a.shape[1], 1) + a.shape[3:])
        return jnp.concatenate([cls, a], axis=2)

    out = attend(grouped(q), with_cls(grouped(k), k[:, :1]), with_cls(grouped(v), v[:, :1]),
                 implementation=implementation)
    pattern = "b t n h d -> b (t n) h d" if over == "space" else "b n t h d -> b (t n) h d"
    return jnp.concatenate([cls_out, einops.rearrange(out, pattern)], axis=1)


class DividedAttention(nn.Module):
    heads: int
    num_frames: int
    over: Literal["space", "time"]
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the implementation (layers.attend)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = qkv_projection(x, self.heads, self.dtype)
        return out_projection(divided_attention(q, k, v, self.num_frames, self.over, self.attention), self.dtype)


class SpaceTimeBlock(nn.Module):
    """One divided space-time block; scan-compatible signature (x, _) -> (x, None)."""

    heads: int
    mlp_dim: int
    act: str
    num_frames: int
    dtype: Dtype = jnp.float32
    attention: str = "einsum"  # the implementation (layers.attend)

    @nn.compact
    def __call__(self, x: jax.Array, _=None) -> tuple[jax.Array, None]:
        num_frames = self.num_frames
        x = shard_residual(x)
        h = shard_residual(LayerNorm(dtype=self.dtype, name="ln_3")(x))
        t = shard_residual(DividedAttention(self.heads, num_frames, "time", self.dtype, self.attention,
                                            name="time_attn")(h))
        h = shard_residual(LayerNorm(dtype=self.dtype, name="ln_1")(x + t))
        x = x + shard_residual(DividedAttention(self.heads, num_frames, "space", self.dtype, self.attention,
                                                name="attn")(h))
        h = shard_residual(LayerNorm(dtype=self.dtype, name="ln_2")(x))
        return x + shard_residual(Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(h)), None


def gather_kept_patches(patches: jax.Array, keep: jax.Array) -> jax.Array:
    """Tube masking. patches [B, T, P, D], keep [B, n_keep] patch indices -> [B, T, n_keep, D].

    The same positions are kept in every frame of a video. The indices come from `tvts.models.inputs` and are in
    range; mode='clip' spares the gather's out-of-range select over its whole output (4 ms of a 300 ms tiny step).
    """
    return jnp.take_along_axis(patches, keep[:, None, :, None], axis=2, mode="clip")


class PatchEmbed(nn.Module):
    """video [B, T, H, W, C], keep [B, n_keep] or None -> [B, T, n_keep (or H/p * W/p), width].

    CLIP's conv1 (stride = kernel, no bias; kernel [p, p, C, width] as a Conv2d's) written as one matmul over the
    flattened patches, taken after the tube mask: masked patches are never embedded. On XLA:CPU the convolution ran
    at a tenth of the matmul ceiling (docs/benchmarks.md, "Where the tiny step's time goes").
    """

    width: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        p, c = self.patch_size, video.shape[-1]
        kernel = self.param("kernel", logical(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                            (p, p, c, self.width))
        x = einops.rearrange(video.astype(self.dtype), "b t (h i) (w j) c -> b t (h w) (i j c)", i=p, j=p)
        if keep is not None:
            x = gather_kept_patches(x, keep)
        return jnp.einsum("btnk,kd->btnd", x, kernel.reshape(p * p * c, self.width).astype(self.dtype))


class VideoEncoder(nn.Module):
    """video [B, T, H, W, 3] (normalised floats), keep [B, n_keep] or None -> tokens [B, 1 + T*n_keep, joint_dim].

    Index 0 is the video embedding: the CLS token after ln_post, projected. The patch tokens after it are projected
    after ln_post (sort_tokens='all', the OpenAI towers as published) or without it (sort_tokens='patches', the
    official H/14's OpenCLIP tower, which applies ln_post to the pooled CLS alone; see variants.SORT_TOKENS).
    T = 1 encodes single images.
    """

    cfg: VideoTower
    joint_dim: int
    act: str
    dtype: Dtype = jnp.float32
    remat: str = "none"
    # Init of the temporal embedding: < 0 (default) the published N(0, width^-0.5), like CLIP's other embeddings
    # (docs/published_recipe.md, "Video encoder"); > 0 N(0, temporal_init_std) (the tiny demo uses 1.0: trained
    # from random weights, the sort head needs a strong frame code from the start); 0 zeros (an ablation: the
    # tower then starts as the image model, and nothing tells the sort head which frame a token came from until
    # the embedding has learned it).
    temporal_init_std: float = -1.0
    sort_tokens: str = "all"  # 'all' | 'patches': whether ln_post also applies to the patch tokens (see above)
    attention: str = "einsum"  # the attention implementation (layers.attend)
    unroll_layers: bool = False  # layers.layer_stack's unroll

    @nn.compact
    def __call__(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        b, t, h, w, _ = video.shape
        if t > cfg.max_frames:
            raise ValueError(f"{t} frames exceed the temporal embedding's {cfg.max_frames} rows")
        if (h, w) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"frames are {h}x{w}, the video tower expects {cfg.image_size}x{cfg.image_size}")
        x = PatchEmbed(cfg.width, cfg.patch_size, self.dtype, name="patch_embed")(video, keep)  # [B, T, n, D]
        pos = self.param("pos_embedding", logical(embed_init, (None, "embed")), (cfg.num_patches + 1, cfg.width))
        temporal = self.param("temporal_embedding", logical(temporal_init(self.temporal_init_std, cfg.width),
                                                            (None, "embed")),
                              (cfg.max_frames, cfg.width))
        cls = self.param("cls_token", logical(embed_init, ("embed",)), (cfg.width,))
        pos_patches = pos[None, 1:] if keep is None else jnp.take(pos[1:], keep, axis=0, mode="clip")  # [B or 1, n, D]
        x = x + (pos_patches[:, None] + temporal[None, :t, None]).astype(self.dtype)
        n_kept = x.shape[2]
        x = x.reshape(b, t * n_kept, cfg.width)
        cls_tok = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (b, 1, cfg.width))
        x = jnp.concatenate([cls_tok, x], axis=1)
        x = LayerNorm(dtype=self.dtype, name="ln_pre")(x)

        blocks = layer_stack(SpaceTimeBlock, cfg.depth, self.remat, unroll=self.unroll_layers)
        x, _ = blocks(cfg.heads, cfg.mlp_dim, self.act, t, self.dtype, self.attention, name="blocks")(x, None)

        ln_post = LayerNorm(dtype=self.dtype, name="ln_post")
        if self.sort_tokens == "patches":  # ln_post on the CLS alone (LayerNorm is per token: same CLS as 'all')
            x = jnp.concatenate([ln_post(x[:, :1]), x[:, 1:]], axis=1)
        else:
            x = ln_post(x)
        proj = self.param("proj", logical(default_proj_init(cfg.width), ("embed", "joint")),
                          (cfg.width, self.joint_dim))
        return jnp.einsum("bld,de->ble", x, proj.astype(self.dtype))


def default_proj_init(width: int):
    return nn.initializers.normal(stddev=width**-0.5)


def temporal_init(std: float, width: int):
    """std < 0: the published N(0, width^-0.5); 0: zeros; > 0: N(0, std)."""
    if std < 0:
        return nn.initializers.normal(stddev=width**-0.5)
    return nn.initializers.normal(stddev=std) if std else nn.initializers.zeros
