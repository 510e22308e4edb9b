"""The official TVTSv2 checkpoints (`TVTSv2_{B_32,B_16,H_14}`, their `state_dict`) <-> this codebase's parameters.

Names (docs/published_recipe.md, "Parameter names"; `v2/model/model_dist_TVTSv2_ViT_B_16.py:21-48`,
`v2/model/video_encoder_ViT_B_16.py:99-167`, `v2/model/sort_transformer.py`):

    video_model.{conv1.weight, class_embedding, positional_embedding, temporal_embedding, ln_pre.*, ln_post.*, proj}
    video_model.transformer.resblocks.N.{attn.qkv.*, attn.proj.*, timeattn.qkv.*, timeattn.proj.*,
                                         ln_1.*, ln_2.*, ln_3.*, mlp.c_fc.*, mlp.c_proj.*}
    text_token_embedding.weight, text_positional_embedding, text_ln_final.*, text_projection
    text_model.resblocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1.*, ln_2.*, mlp.c_fc.*,
                            mlp.c_proj.*}
    pred_model.{type_embed, blocks.{0,1}.{norm1.*, attn.qkv.*, attn.proj.*, norm2.*, mlp.fc1.*, mlp.fc2.*},
                norm.*, head.*}

The downstream models (`v2/downstream/model_TVTSv2_ViT_*.py`) have no `pred_model`: a checkpoint without it converts,
and the sort head is initialised (and listed). The H/14 model's LayerScale modules are identities (no tensors).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert.names import Conversion, Rule, official_tensors, resolve_variant, text_block_target
from tvts.convert.names import convert as run_rules
from tvts.convert.openai_clip import attention, clip_block, layer_norm, mlp
from tvts.models.variants import Variant

SORT_HEAD = "pred_model."


def rules(variant: str | Variant) -> list[Rule]:
    """Every official name -> parameter (in the order of the official B/32 and B/16 state dicts)."""
    v = resolve_variant(variant)
    out = [Rule("text_positional_embedding", "text/positional_embedding"),
           Rule("text_projection", "text/text_projection")]
    for i in range(v.text.depth):
        out += clip_block(f"text_model.resblocks.{i}", *text_block_target(v, i))
    out += [Rule("text_token_embedding.weight", "text/token_embedding"),
            *layer_norm("text_ln_final", "text/ln_final"),
            Rule("video_model.class_embedding", "video/cls_token"),
            Rule("video_model.positional_embedding", "video/pos_embedding", None, "pos"),
            Rule("video_model.proj", "video/proj"),
            Rule("video_model.temporal_embedding", "video/temporal_embedding"),
            Rule("video_model.conv1.weight", "video/patch_embed/kernel", None, "conv"),
            *layer_norm("video_model.ln_pre", "video/ln_pre")]
    for i in range(v.video.depth):
        src, dst = f"video_model.transformer.resblocks.{i}", "video/blocks"
        out += [*attention(f"{src}.attn", f"{dst}/attn", i, "qkv"),
                *attention(f"{src}.timeattn", f"{dst}/time_attn", i, "qkv"),
                *layer_norm(f"{src}.ln_3", f"{dst}/ln_3", i),
                *layer_norm(f"{src}.ln_1", f"{dst}/ln_1", i),
                *mlp(f"{src}.mlp", f"{dst}/mlp", i),
                *layer_norm(f"{src}.ln_2", f"{dst}/ln_2", i)]
    out += [*layer_norm("video_model.ln_post", "video/ln_post"),
            Rule("pred_model.type_embed", "sort_head/type_embedding", None, "batch1")]
    for i in range(v.sort_head.depth):
        src, dst = f"pred_model.blocks.{i}", f"sort_head/block_{i}"
        out += [*layer_norm(f"{src}.norm1", f"{dst}/ln_1"),
                *attention(f"{src}.attn", f"{dst}/attn", None, "qkv"),
                *layer_norm(f"{src}.norm2", f"{dst}/ln_2"),
                *mlp(f"{src}.mlp", f"{dst}/mlp", None, "fc1", "fc2")]
    out += [*layer_norm("pred_model.norm", "sort_head/ln"),
            Rule("pred_model.head.weight", "sort_head/classifier/kernel", None, "linear"),
            Rule("pred_model.head.bias", "sort_head/classifier/bias")]
    return out


def convert(state_dict: Mapping[str, np.ndarray], variant: str | Variant, source: str = "") -> Conversion:
    v = resolve_variant(variant)
    return run_rules(state_dict, v, rules(v), optional={SORT_HEAD: "the sort head"}, source=source or "tvtsv2")


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | Variant) -> dict[str, Any]:
    """The parameter tree (nested dict of float32 numpy arrays); without `sort_head` when the checkpoint has no
    `pred_model.*` (the run's init supplies it)."""
    return convert(state_dict, variant).params


def from_params(params: Mapping[str, Any], variant: str | Variant, contiguous: bool = True) -> dict[str, np.ndarray]:
    """Official name -> array (PyTorch layouts, the parameters' dtype), exactly the official names (in the order of
    the official B state dicts): `pred_model.*` only when `params` has the sort head; every other parameter must be
    there. contiguous=False returns views of `params` (no copy; `tvts.convert.io.write_safetensors` copies one at a
    time)."""
    v = resolve_variant(variant)
    return official_tensors(params, v, rules(v), SORT_HEAD, contiguous)
