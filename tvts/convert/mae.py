"""MAE ImageNet-1K ViT checkpoints (`mae_pretrain_vit_base.pth`, `{'model': ...}`) -> the TVTS v1 video tower.

The official v1 model starts its video tower from these weights (docs/published_recipe.md, "TVTS v1";
`v1/model/model_dist_TVTS.py:49-61`): the 2D patch kernel [W, 3, p, p] is repeated over the tubelet's 2 frames, NOT
divided by 2 (`unsqueeze(2).repeat(1, 1, 2, 1, 1)`, :57-58): a static video embeds to 2 x (the 2D projection without
its bias) + bias. Everything else loads by name (`strict=False`, :61). The temporal embedding is not in MAE: it stays
at its init (zeros as published). The text tower, the projections and the sort head come from elsewhere (the
`distilbert` converter, the run's init).

State-dict names (MAE's encoder, timm's ViT names): `cls_token` [1, 1, W], `pos_embed` [1, 1 + g*g, W],
`patch_embed.proj.{weight,bias}`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,bias}`,
`norm.{weight,bias}`. Files from MAE's pretraining model with its decoder (`mask_token`, `decoder_*`) convert too:
the decoder is dropped and logged.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert.io import strip_ddp_prefix
from tvts.convert.names import Conversion, Rule, resolve_variant
from tvts.convert.names import convert as run_rules
from tvts.convert.openai_clip import attention, layer_norm, mlp
from tvts.models.variants_v1 import V1Variant

DECODER = "MAE's pretraining decoder: no counterpart in the video tower"


def video_rules(variant: str | V1Variant, prefix: str = "", patch_layout: str = "inflate",
                temporal: bool = False) -> list[Rule]:
    """The ViT's names (under `prefix`) -> video tower parameters, in the ViT state dict's order (its own Parameters
    cls_token, pos_embed[, temporal_embed], then patch_embed, blocks, norm). patch_layout 'inflate' for a 2D patch
    kernel (MAE), 'conv3d' for a tubelet kernel (the v1 checkpoints); temporal: whether `temporal_embed` is there."""
    v = resolve_variant(variant)
    out = [Rule(f"{prefix}cls_token", "video/cls_token", None, "batch2"),
           Rule(f"{prefix}pos_embed", "video/pos_embedding", None, "batch1")]
    if temporal:
        out.append(Rule(f"{prefix}temporal_embed", "video/temporal_embedding", None, "batch1"))
    out += [Rule(f"{prefix}patch_embed.proj.weight", "video/patch_embed/kernel", None, patch_layout),
            Rule(f"{prefix}patch_embed.proj.bias", "video/patch_embed/bias")]
    for i in range(v.video.depth):  # timm's Block: norm1, attn (qkv, proj), norm2, mlp (fc1, fc2)
        src, dst = f"{prefix}blocks.{i}", "video/blocks"
        out += [*layer_norm(f"{src}.norm1", f"{dst}/ln_1", i),
                *attention(f"{src}.attn", f"{dst}/attn", i, "qkv"),
                *layer_norm(f"{src}.norm2", f"{dst}/ln_2", i),
                *mlp(f"{src}.mlp", f"{dst}/mlp", i, "fc1", "fc2")]
    return out + layer_norm(f"{prefix}norm", "video/norm")


def rules(variant: str | V1Variant) -> list[Rule]:
    return video_rules(variant)


def convert(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant, source: str = "") -> Conversion:
    v = resolve_variant(variant)
    if not isinstance(v, V1Variant):
        raise ValueError(f"MAE weights initialise the TVTS v1 video tower; {v.name} is not a v1 variant")
    state_dict = strip_ddp_prefix(state_dict)
    dropped = {k: DECODER for k in state_dict if k == "mask_token" or k.startswith("decoder_")}
    return run_rules(state_dict, v, rules(v), dropped=dropped, source=source or "mae")


def convert_file(path: str, variant: str | V1Variant) -> Conversion:
    """A checkpoint file (.pth with {'model': ...}, or .safetensors) -> Conversion."""
    import os

    from tvts.convert.io import load_state_dict

    return convert(load_state_dict(path), variant, source=os.path.basename(path))


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant) -> dict[str, Any]:
    """The loaded part of the parameter tree: the video tower without its temporal embedding and projection."""
    return convert(state_dict, variant).params
