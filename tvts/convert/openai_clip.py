"""OpenAI CLIP (`ViT-B-32.pt`, `ViT-B-16.pt`, `ViT-L-14.pt`, TorchScript archives or plain state dicts) -> TVTSv2.

The visual tower goes into the video encoder (its attention becomes the space attention, as the official code's
renaming `in_proj_` -> `qkv.`, `out_proj` -> `proj` does: docs/published_recipe.md, "Video encoder"), the text
tower into the text encoder (blocks split into frozen/tuned by the variant's text.num_frozen). The time attention,
`ln_3`, the temporal embedding and the sort head are not in CLIP: they come from the run's init. `logit_scale` (and
the TorchScript archives' `input_resolution`, `context_length`, `vocab_size`) have no counterpart and are dropped.

State-dict names: `visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre.*`,
`visual.transformer.resblocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1.*, mlp.c_fc.*,
mlp.c_proj.*, ln_2.*}`, `visual.ln_post.*`, `visual.proj`, `token_embedding.weight`, `positional_embedding`,
`transformer.resblocks.N.*`, `ln_final.*`, `text_projection`, `logit_scale`. OpenCLIP's ViT towers use the same names
(`tvts.convert.open_clip`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert.names import Conversion, Rule, resolve_variant, text_block_target
from tvts.convert.names import convert as run_rules
from tvts.models.variants import Variant

DROPPED = {
    "logit_scale": "CLIP's learned temperature; TVTSv2's contrastive temperature is fixed",
    "input_resolution": "TorchScript metadata", "context_length": "TorchScript metadata",
    "vocab_size": "TorchScript metadata", "attn_mask": "the causal mask, a constant",
}


def layer_norm(source: str, target: str, layer: int | None = None) -> list[Rule]:
    return [Rule(f"{source}.weight", f"{target}/norm/scale", layer),
            Rule(f"{source}.bias", f"{target}/norm/bias", layer)]


def attention(source: str, target: str, layer: int | None, style: str = "mha") -> list[Rule]:
    """'mha': nn.MultiheadAttention (`in_proj_weight`, `in_proj_bias`, `out_proj.*`); 'qkv': the official TVTSv2's
    VarAttention and the sort head's SelfAttention (`qkv.*`, `proj.*`)."""
    qkv_w, qkv_b, out = (("in_proj_weight", "in_proj_bias", "out_proj") if style == "mha" else
                         ("qkv.weight", "qkv.bias", "proj"))
    return [Rule(f"{source}.{qkv_w}", f"{target}/qkv/kernel", layer, "qkv"),
            Rule(f"{source}.{qkv_b}", f"{target}/qkv/bias", layer, "qkv_bias"),
            Rule(f"{source}.{out}.weight", f"{target}/out/kernel", layer, "out"),
            Rule(f"{source}.{out}.bias", f"{target}/out/bias", layer)]


def mlp(source: str, target: str, layer: int | None, fc: str = "c_fc", proj: str = "c_proj") -> list[Rule]:
    return [Rule(f"{source}.{fc}.weight", f"{target}/fc/kernel", layer, "linear"),
            Rule(f"{source}.{fc}.bias", f"{target}/fc/bias", layer),
            Rule(f"{source}.{proj}.weight", f"{target}/proj/kernel", layer, "linear"),
            Rule(f"{source}.{proj}.bias", f"{target}/proj/bias", layer)]


def clip_block(source: str, target: str, layer: int, style: str = "mha") -> list[Rule]:
    """CLIP's ResidualAttentionBlock -> one layer of a stacked block (in OpenAI's order: attn, ln_1, mlp, ln_2)."""
    return [*attention(f"{source}.attn", f"{target}/attn", layer, style),
            *layer_norm(f"{source}.ln_1", f"{target}/ln_1", layer),
            *mlp(f"{source}.mlp", f"{target}/mlp", layer),
            *layer_norm(f"{source}.ln_2", f"{target}/ln_2", layer)]


def rules(variant: str | Variant) -> list[Rule]:
    """Every CLIP tensor name -> parameter, for the variant's depths and frozen/tuned text split."""
    v = resolve_variant(variant)
    out = [
        Rule("visual.conv1.weight", "video/patch_embed/kernel", None, "conv"),
        Rule("visual.class_embedding", "video/cls_token"),
        Rule("visual.positional_embedding", "video/pos_embedding", None, "pos"),
        *layer_norm("visual.ln_pre", "video/ln_pre"),
    ]
    for i in range(v.video.depth):
        out += clip_block(f"visual.transformer.resblocks.{i}", "video/blocks", i)
    out += [*layer_norm("visual.ln_post", "video/ln_post"), Rule("visual.proj", "video/proj"),
            Rule("token_embedding.weight", "text/token_embedding"),
            Rule("positional_embedding", "text/positional_embedding")]
    for i in range(v.text.depth):
        out += clip_block(f"transformer.resblocks.{i}", *text_block_target(v, i))
    out += [*layer_norm("ln_final", "text/ln_final"), Rule("text_projection", "text/text_projection")]
    return out


def convert(state_dict: Mapping[str, np.ndarray], variant: str | Variant, source: str = "") -> Conversion:
    v = resolve_variant(variant)
    if v.act != "quick_gelu":
        raise ValueError(f"OpenAI CLIP towers use QuickGELU; variant {v.name} uses {v.act} "
                         f"(an OpenCLIP variant: use the open_clip converter)")
    return run_rules(state_dict, v, rules(v), dropped=DROPPED, source=source or "openai_clip")


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | Variant) -> dict[str, Any]:
    """The loaded part of the parameter tree (nested dict of float32 numpy arrays): everything but the time
    attention, ln_3, the temporal embedding and the sort head, which come from the run's init."""
    return convert(state_dict, variant).params
