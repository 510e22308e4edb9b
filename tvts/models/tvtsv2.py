"""TVTSv2: the video tower, the text tower and the transcript sorting head, composed.

Parameter tree (stacked layers carry a leading 'layers' axis):
    video/{patch_embed, pos_embedding, temporal_embedding, cls_token, ln_pre, blocks/{time_attn, ln_3, attn,
          ln_1, mlp, ln_2}, ln_post, proj}
    text/{token_embedding, positional_embedding, frozen_blocks, tuned_blocks, ln_final, text_projection}
    sort_head/{type_embedding, block_0, block_1, ln, classifier}
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tvts.models.layers import Dtype, attention_implementation
from tvts.models.sort_head import SortHead
from tvts.models.text import TextEncoder
from tvts.models.variants import Variant
from tvts.models.video_vit import VideoEncoder

TimeInit = Literal["learnable", "published"]


class TVTSv2(nn.Module):
    variant: Variant
    dtype: Dtype = jnp.float32
    remat: str = "none"
    # temporal embedding init (see VideoEncoder): < 0 the published N(0, width^-0.5); 0 zeros; > 0 N(0, value)
    temporal_init_std: float = -1.0
    # sort-head type embedding init (see SortHead): 0 the published zeros; > 0 N(0, value)
    sort_type_init_std: float = 0.0
    # every attention's implementation (layers.ATTENTION_CHOICES, config.model.attention). 'auto': heads-major in the
    # video tower, token-major einsum in the text tower and the sort head (docs/benchmarks.md, "Attention layout")
    attention: str = "auto"
    unroll_layers: bool = False  # the layer stacks unrolled (config.model.unroll_layers, layers.layer_stack)

    @property
    def video_attention(self) -> str:
        """The video tower's attention implementation (layers.attend)."""
        return attention_implementation(self.attention, "einsum_heads_major")

    def setup(self):
        v = self.variant
        others = attention_implementation(self.attention)  # the text tower's and the sort head's
        self.video = VideoEncoder(v.video, v.joint_dim, v.act, self.dtype, self.remat, self.temporal_init_std,
                                  v.sort_tokens, self.video_attention, self.unroll_layers)
        self.text = TextEncoder(v.text, v.joint_dim, v.act, self.dtype, self.remat, others, self.unroll_layers)
        self.sort_head = SortHead(v.sort_head, self.dtype, self.sort_type_init_std, others)

    def for_inference(self) -> TVTSv2:
        """The same model for forward-only programs (evaluation, export): no remat."""
        return self.clone(remat="none")

    def encode_video(self, video: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """[B, T, H, W, 3] -> all projected tokens [B, 1 + T*n_keep, E] (float32); [:, 0] is the video embedding
        (the CLS after ln_post). The patch tokens skip ln_post when the variant's sort_tokens is 'patches'."""
        return self.video(video, keep).astype(jnp.float32)

    def sort_input(self, video_tokens: jax.Array) -> jax.Array:
        """What the sort head reads of `encode_video`'s tokens: all of them ('all', B/32 and B/16 as published) or
        the patch tokens alone ('patches', H/14 as published)."""
        return video_tokens[:, 1:] if self.variant.sort_tokens == "patches" else video_tokens

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """[..., L] -> [..., E] (float32)."""
        lead = tokens.shape[:-1]
        return self.text(tokens.reshape(-1, tokens.shape[-1])).astype(jnp.float32).reshape(*lead, -1)

    def sort(self, video_tokens: jax.Array, transcripts: jax.Array) -> jax.Array:
        return self.sort_head(video_tokens, transcripts)

    def __call__(self, video: jax.Array, keep: jax.Array | None, texts: jax.Array) -> dict[str, jax.Array]:
        """video [B, T, H, W, 3], keep [B, n_keep] | None, texts [B, n, L] (n = 1 caption or n clip transcripts)."""
        tokens = self.encode_video(video, keep)
        text_emb = self.encode_text(texts)
        out = {"video_tokens": tokens, "video_emb": tokens[:, 0], "text_emb": text_emb}
        if texts.shape[1] > 1 or self.is_initializing():
            # The sort head reads transcripts with gradients stopped: sorting trains video and head only.
            out["sort_logits"] = self.sort(self.sort_input(tokens), jax.lax.stop_gradient(text_emb))
        return out


def dummy_inputs(variant: Variant, num_frames: int = 2, batch: int = 1) -> tuple[jax.Array, None, jax.Array]:
    size = variant.video.image_size
    return (jnp.zeros((batch, num_frames, size, size, 3), jnp.float32), None,
            jnp.zeros((batch, variant.sort_head.num_clips, 8), jnp.int32))


def init_params(model: TVTSv2, rng: jax.Array, time_init: TimeInit = "learnable") -> Any:
    """Random init of the whole model, with the time attention set as a no-op (see `init_time_attention`).

    Returns boxed params (nn.LogicallyPartitioned leaves) so callers can derive shardings; use nn.unbox for values.
    """
    params = model.init(rng, *dummy_inputs(model.variant))["params"]
    return init_time_attention(params, time_init)


def init_time_attention(params: Any, scheme: TimeInit) -> Any:
    """Make every block's time attention a no-op; call after the space attention holds its (CLIP) weights.

    'published': qkv weight and bias 0, output projection weight 1, bias 0 (the official init; its gradient
        vanishes in exact arithmetic: the all-ones projection adds the same value to every channel and ln_1
        removes it again).
    'learnable': output projection 0 and qkv copied from the block's space attention. The output is still 0,
        but the projection receives a non-zero gradient at once.
    Works on boxed or plain trees; returns a new tree.
    """
    blocks = dict(params["video"]["blocks"])
    time_attn = dict(blocks["time_attn"])
    space = blocks["attn"]

    def like(leaf, fill):
        return _rebox(leaf, lambda v: jnp.full_like(v, fill))

    if scheme == "published":
        time_attn["qkv"] = jax.tree.map(lambda l: like(l, 0.0), time_attn["qkv"], is_leaf=_is_box)
        time_attn["out"] = {"kernel": like(time_attn["out"]["kernel"], 1.0),
                            "bias": like(time_attn["out"]["bias"], 0.0)}
    elif scheme == "learnable":
        time_attn["qkv"] = jax.tree.map(lambda t, s: _rebox(t, lambda _: jnp.array(_unbox(s))), time_attn["qkv"],
                                        space["qkv"], is_leaf=_is_box)
        time_attn["out"] = jax.tree.map(lambda l: like(l, 0.0), time_attn["out"], is_leaf=_is_box)
    else:
        raise ValueError(f"unknown time attention init {scheme!r}; use 'learnable' or 'published'")
    blocks["time_attn"] = time_attn
    video = dict(params["video"])
    video["blocks"] = blocks
    return {**params, "video": video}


def merge_loaded(base: Any, loaded: Any, time_init: TimeInit | None = None) -> Any:
    """`base` (a complete init, e.g. the run's random one) with every leaf of `loaded` (a partial tree: converted CLIP
    weights hold no time attention, ln_3, temporal embedding or sort head) put over it. Plain trees; jit-able.

    When `loaded` brings the space attention but no time attention, the time attention is initialised again with
    `init_time_attention(time_init)` (unless `time_init` is None), so that 'learnable' copies the loaded qkv rather
    than the random one. A loaded leaf `base` does not have is an error.
    """
    def overlay(b, l, path):
        if not isinstance(l, Mapping):
            return l
        if not isinstance(b, Mapping):
            raise ValueError(f"loaded parameters: {path or '/'} is a subtree, the model has a leaf there")
        out = dict(b)
        for key, value in l.items():
            if key not in b:
                raise ValueError(f"loaded parameters: the model has no {path}{key}")
            out[key] = overlay(b[key], value, f"{path}{key}/")
        return out

    merged = overlay(base, loaded, "")
    blocks = loaded.get("video", {}).get("blocks", {})
    if time_init is not None and "attn" in blocks and "time_attn" not in blocks:
        merged = init_time_attention(merged, time_init)
    return merged


def without_time_attention(params: Any) -> Any:
    """`params` with every block's time attention switched off (output projection 0): each block then adds
    nothing from across frames, and the tower computes as the image model it was inflated from. Used to
    measure what a trained model owes to its time attention; plain (unboxed) trees."""
    blocks = dict(params["video"]["blocks"])
    off = jax.tree.map(lambda x: jnp.zeros_like(x, device=getattr(x, "sharding", None)), blocks["time_attn"]["out"])
    blocks["time_attn"] = {**blocks["time_attn"], "out": off}
    return {**params, "video": {**params["video"], "blocks": blocks}}


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _unbox(x):
    return x.unbox() if _is_box(x) else x


def _rebox(leaf, fn):
    return leaf.replace_boxed(fn(leaf.unbox())) if _is_box(leaf) else fn(leaf)


def abstract_params(variant: Variant, dtype: Dtype = jnp.float32) -> Any:
    """Parameter shapes of a variant without allocating anything (boxed ShapeDtypeStructs)."""
    model = TVTSv2(variant, dtype)
    return jax.eval_shape(lambda rng: model.init(rng, *dummy_inputs(variant))["params"], jax.random.key(0))


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree))))
