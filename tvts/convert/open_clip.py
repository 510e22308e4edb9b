"""OpenCLIP ViT checkpoints (ViT-H-14 `laion2b_s32b_b79k` for H/14; ViT-g-14, ViT-bigG-14) -> TVTSv2.

OpenCLIP's ViT towers (`open_clip/transformer.py`: VisionTransformer, TextTransformer) use OpenAI CLIP's state-dict
names, so the rules are `tvts.convert.openai_clip.rules`; what differs is the activation (GELU for these towers,
QuickGELU for the `-quickgelu` models) and that the official H/14 takes the tower with nothing else changed
(docs/published_recipe.md, "Video encoder"). Files: `open_clip_pytorch_model.bin` (a plain state dict),
`open_clip_model.safetensors`, or a training checkpoint (`{'state_dict': ...}` with `module.` prefixes).
LayerScale (`ls_1`, `ls_2`) is not supported: the towers above have none.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert import openai_clip
from tvts.convert.names import Conversion, resolve_variant
from tvts.convert.names import convert as run_rules
from tvts.models.variants import Variant

DROPPED = {"logit_scale": openai_clip.DROPPED["logit_scale"], "attn_mask": openai_clip.DROPPED["attn_mask"]}


def rules(variant: str | Variant):
    return openai_clip.rules(variant)


def convert(state_dict: Mapping[str, np.ndarray], variant: str | Variant, source: str = "") -> Conversion:
    return run_rules(state_dict, resolve_variant(variant), rules(variant), dropped=DROPPED,
                     source=source or "open_clip")


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | Variant) -> dict[str, Any]:
    """The loaded part of the parameter tree (see `tvts.convert.openai_clip.to_params`)."""
    return convert(state_dict, variant).params
