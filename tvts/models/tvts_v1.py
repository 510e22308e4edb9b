"""TVTS v1: a joint space-time ViT over tubelets, a DistilBERT text tower and the transcript sorting head, composed.

Video tower (docs/published_recipe.md, "TVTS v1"), tokens [B, 1 + tubes*n, D] = CLS then the kept patches of tube 0,
then tube 1, ... (tube-major, row-major inside a tube, as the official Conv3d's flatten orders them):

    x = tubelet_embed(video)            Conv3d of 2 frames x p x p with bias, as a matmul over flattened tubelets
    x = x + pos[1:] (tiled over tubes) + temporal[tube]       CLS gets cls + pos[0]
    keep [B, tubes, n_keep]             each tube keeps its own positions (`random_tube_keep`); masked ones dropped
    x = blocks(x)                       pre-LN ViT blocks, joint attention over all tokens, LayerNorm eps 1e-6, GELU
    x = norm(x)                         no ln_pre; the final norm applies to every token

The sort head reads every normed token (CLS included) at the tower's width, and the transcripts' DistilBERT
first-token features with gradients stopped; the contrastive embeddings are `proj(CLS)` (video) and `proj(ReLU(.))`
(text), 256-d as published.

Parameter tree (stacked layers carry a leading 'layers' axis):
    video/{patch_embed/{kernel, bias}, cls_token, pos_embedding, temporal_embedding, blocks/{ln_1, attn, ln_2, mlp},
          norm, proj}
    text/{word_embeddings, position_embeddings, embeddings_ln, blocks/{attn/{q, k, v, out}, ln_1, mlp, ln_2}, proj}
    sort_head/{type_embedding, block_0, block_1, ln, classifier}            (tvts.models.sort_head.SortHead)
"""
from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from tvts.models.distilbert import DistilBertEncoder
from tvts.models.inputs import num_kept
from tvts.models.layers import (
    Dtype,
    LayerNorm,
    ResidualBlock,
    attention_implementation,
    default_kernel_init,
    embed_init,
    layer_stack,
    logical,
    shard_residual,
)
from tvts.models.sort_head import SortHead
from tvts.models.variants_v1 import TubeletVideoTower, V1Variant
from tvts.models.video_vit import temporal_init


class TubeletEmbed(nn.Module):
    """video [B, T, H, W, C] -> [B, T / tubelet, (H / p) * (W / p), width]; kernel [tubelet, p, p, C, width], bias.

    The same map as a Conv3d with stride = kernel (the official PatchEmbed), written as one matmul over the flattened
    tubelets; positions inside a tube are row-major.
    """

    width: int
    patch_size: int
    tubelet_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array) -> jax.Array:
        pt, p, c = self.tubelet_size, self.patch_size, video.shape[-1]
        kernel = self.param("kernel", logical(nn.initializers.lecun_normal(in_axis=(0, 1, 2, 3), out_axis=4),
                                              (None, None, None, None, "embed")), (pt, p, p, c, self.width))
        bias = self.param("bias", logical(nn.initializers.zeros, ("embed",)), (self.width,))
        x = einops.rearrange(video.astype(self.dtype), "b (t i) (h j) (w k) c -> b t (h w) i j k c", i=pt, j=p, k=p)
        return jnp.einsum("btnijkc,ijkcd->btnd", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


def gather_kept_per_tube(patches: jax.Array, keep: jax.Array) -> jax.Array:
    """Masking per temporal tube. patches [B, tubes, P, D], keep [B, tubes, n_keep] -> [B, tubes, n_keep, D].

    The indices come from `random_tube_keep` and are in range: mode='clip' spares the out-of-range select over the
    whole output (as `video_vit.gather_kept_patches`)."""
    return jnp.take_along_axis(patches, keep[..., None], axis=2, mode="clip")


def random_tube_keep(rng: jax.Array, batch: int, tubes: int, num_patches: int, ratio: float) -> jax.Array | None:
    """Per video and per tube, `num_kept(num_patches, ratio)` random patch positions (sorted), drawn independently
    for every tube (the official loaders draw one permutation per tube). [B, tubes, n_keep]; None at ratio 0."""
    if ratio == 0.0:
        return None
    order = jnp.argsort(jax.random.uniform(rng, (batch, tubes, num_patches)), axis=-1)
    return jnp.sort(order[..., :num_kept(num_patches, ratio)], axis=-1)


class TubeletVideoEncoder(nn.Module):
    """video [B, T, H, W, 3] (normalised floats), keep [B, T / tubelet, n_keep] or None
    -> (features [B, 1 + tubes*n, width] after the final norm, projected [B, 1 + tubes*n, joint_dim]).

    T = 1 (an image) is repeated to one tubelet, as the official image loader does.
    """

    cfg: TubeletVideoTower
    joint_dim: int
    dtype: Dtype = jnp.float32
    remat: str = "none"
    # 0 (default): zeros, as published (the official temporal_embed starts at zeros and MAE has none); > 0 N(0, std);
    # < 0 N(0, width^-0.5) (tvts.models.video_vit.temporal_init)
    temporal_init_std: float = 0.0
    attention: str = "einsum"  # the attention implementation (layers.attend)
    unroll_layers: bool = False  # layers.layer_stack's unroll

    @nn.compact
    def __call__(self, video: jax.Array, keep: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        if video.shape[1] == 1:
            video = jnp.repeat(video, cfg.tubelet_size, axis=1)
        b, t, h, w, _ = video.shape
        if t % cfg.tubelet_size:
            raise ValueError(f"{t} frames do not fill whole tubelets of {cfg.tubelet_size} frames")
        tubes = t // cfg.tubelet_size
        if tubes > cfg.max_tubes:
            raise ValueError(f"{t} frames make {tubes} tubes; the temporal embedding has {cfg.max_tubes} rows")
        if (h, w) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"frames are {h}x{w}, the video tower expects {cfg.image_size}x{cfg.image_size}")
        if keep is not None and keep.shape[:2] != (b, tubes):
            raise ValueError(f"keep indices {keep.shape}: expected [{b}, {tubes} tubes, n_keep]")

        x = TubeletEmbed(cfg.width, cfg.patch_size, cfg.tubelet_size, self.dtype, name="patch_embed")(video)
        pos = self.param("pos_embedding", logical(embed_init, (None, "embed")), (cfg.num_patches + 1, cfg.width))
        temporal = self.param("temporal_embedding", logical(temporal_init(self.temporal_init_std, cfg.width),
                                                            (None, "embed")), (cfg.max_tubes, cfg.width))
        cls = self.param("cls_token", logical(embed_init, ("embed",)), (cfg.width,))
        x = x + (pos[None, None, 1:] + temporal[None, :tubes, None]).astype(self.dtype)
        if keep is not None:
            x = gather_kept_per_tube(x, keep)
        x = x.reshape(b, tubes * x.shape[2], cfg.width)
        cls_tok = jnp.broadcast_to((cls + pos[0]).astype(self.dtype), (b, 1, cfg.width))
        x = shard_residual(jnp.concatenate([cls_tok, x], axis=1))

        blocks = layer_stack(ResidualBlock, cfg.depth, self.remat, unroll=self.unroll_layers)
        x, _ = blocks(cfg.heads, cfg.mlp_dim, "gelu", cfg.epsilon, self.dtype, self.attention, name="blocks")(x, None)
        x = LayerNorm(cfg.epsilon, self.dtype, name="norm")(x)
        projected = nn.Dense(self.joint_dim, dtype=self.dtype,
                             kernel_init=logical(default_kernel_init, ("embed", "joint")),
                             bias_init=logical(nn.initializers.zeros, ("joint",)), name="proj")(x)
        return x, projected


class TVTSv1(nn.Module):
    """The v1 model with TVTSv2's interface: `__call__(video, keep, texts)` gives the same outputs, `encode_video`
    and `encode_text` the projected embeddings."""

    variant: V1Variant
    dtype: Dtype = jnp.float32
    remat: str = "none"
    temporal_init_std: float = 0.0  # see TubeletVideoEncoder
    sort_type_init_std: float = 0.0  # sort-head type embedding: 0 the published zeros; > 0 N(0, value)
    # every attention's implementation (layers.ATTENTION_CHOICES, config.model.attention); 'auto': token-major einsum
    # in every program (the heads-major copies were measured on TVTSv2's divided attention only)
    attention: str = "auto"
    unroll_layers: bool = False  # the layer stacks unrolled (config.model.unroll_layers, layers.layer_stack)

    def setup(self):
        v = self.variant
        attention = attention_implementation(self.attention)
        self.video = TubeletVideoEncoder(v.video, v.joint_dim, self.dtype, self.remat, self.temporal_init_std,
                                         attention, self.unroll_layers)
        self.text = DistilBertEncoder(v.text, v.joint_dim, self.dtype, self.remat, attention, self.unroll_layers)
        self.sort_head = SortHead(v.sort_head, self.dtype, self.sort_type_init_std, attention)

    def for_inference(self) -> TVTSv1:
        """The same model for forward-only programs (evaluation, export): no remat."""
        return self.clone(remat="none")

    def video_features(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """[B, T, H, W, 3] -> every token after the final norm [B, 1 + tubes*n, width] (float32): the sort head's
        input."""
        return self.video(video, keep)[0].astype(jnp.float32)

    def encode_video(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """[B, T, H, W, 3] -> every token projected [B, 1 + tubes*n, E] (float32); [:, 0] is the video embedding
        (the official vid_proj of the CLS); the patch tokens go through the same projection."""
        return self.video(video, keep)[1].astype(jnp.float32)

    def _text(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        lead = tokens.shape[:-1]
        features, projected = self.text(tokens.reshape(-1, tokens.shape[-1]))
        return (features.astype(jnp.float32).reshape(*lead, -1), projected.astype(jnp.float32).reshape(*lead, -1))

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """[..., L] -> the first token's last hidden state [..., width] (float32)."""
        return self._text(tokens)[0]

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """[..., L] -> [..., E] (float32)."""
        return self._text(tokens)[1]

    def sort(self, video_features: jax.Array, transcript_features: jax.Array) -> jax.Array:
        return self.sort_head(video_features, transcript_features)

    def __call__(self, video: jax.Array, keep: jax.Array | None, texts: jax.Array) -> dict[str, jax.Array]:
        """video [B, T, H, W, 3], keep [B, tubes, n_keep] | None, texts [B, n, L] (n = 1 caption or n transcripts)."""
        features, tokens = (a.astype(jnp.float32) for a in self.video(video, keep))
        text_features, text_emb = self._text(texts)
        out = {"video_tokens": tokens, "video_emb": tokens[:, 0], "text_emb": text_emb}
        if texts.shape[1] > 1 or self.is_initializing():
            # Sorting trains the video tower and the head only: the transcripts' features enter with gradients stopped.
            out["sort_logits"] = self.sort(features, jax.lax.stop_gradient(text_features))
        return out


def dummy_inputs(variant: V1Variant, num_frames: int | None = None, batch: int = 1
                 ) -> tuple[jax.Array, None, jax.Array]:
    size = variant.video.image_size
    frames = num_frames or variant.video.tubelet_size
    return (jnp.zeros((batch, frames, size, size, 3), jnp.float32), None,
            jnp.zeros((batch, variant.sort_head.num_clips, 8), jnp.int32))


def init_params(model: TVTSv1, rng: jax.Array) -> Any:
    """Random init of the whole model; boxed params (nn.LogicallyPartitioned leaves), as tvtsv2.init_params."""
    return model.init(rng, *dummy_inputs(model.variant))["params"]


def abstract_params(variant: V1Variant, dtype: Dtype = jnp.float32) -> Any:
    """Parameter shapes of a v1 variant without allocating anything (boxed ShapeDtypeStructs)."""
    model = TVTSv1(variant, dtype)
    return jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
