"""The official TVTS v1 checkpoints (the `TVTS` model's `state_dict`) <-> this codebase's v1 parameters; and the
published v1 init (MAE video tower + DistilBERT text tower) as one conversion.

Names, in the official state dict's order (modules as `TVTS.__init__` registers them: text_model, video_model,
txt_proj, vid_proj, pred_model; `v1/model/model_dist_TVTS.py:33`, :63, :79-80, :83; docs/published_recipe.md,
"TVTS v1"):

    text_model.{embeddings.*, transformer.layer.N.*}          DistilBertModel (tvts.convert.distilbert)
    video_model.{cls_token, pos_embed, temporal_embed, patch_embed.proj.{weight,bias},
                 blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*}
                                                              `v1/model/video_encoder.py:127-146`
    txt_proj.1.{weight,bias}                                  Sequential(ReLU, Linear): the Linear is index 1
    vid_proj.0.{weight,bias}                                  Sequential(Linear)
    pred_model.{type_embed, blocks.{0,1}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*, head.*}
                                                              `v1/model/sort_transformer.py:101-113`

A checkpoint without `pred_model.*` converts (the sort head is then initialised and listed); an
`text_model.embeddings.position_ids` buffer is dropped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert import distilbert, mae
from tvts.convert.names import Conversion, Rule, collapse, official_tensors, resolve_variant, target_shapes
from tvts.convert.names import convert as run_rules
from tvts.convert.openai_clip import attention, layer_norm, mlp
from tvts.models.variants_v1 import V1Variant
from tvts.trees import flatten, unflatten

SORT_HEAD = "pred_model."
POSITION_IDS = "text_model.embeddings.position_ids"


def sort_head_rules(variant: V1Variant, prefix: str = SORT_HEAD) -> list[Rule]:
    out = [Rule(f"{prefix}type_embed", "sort_head/type_embedding", None, "batch1")]
    for i in range(variant.sort_head.depth):  # AttnBlock: norm1, attn (qkv, proj), norm2, mlp (fc1, fc2)
        src, dst = f"{prefix}blocks.{i}", f"sort_head/block_{i}"
        out += [*layer_norm(f"{src}.norm1", f"{dst}/ln_1"),
                *attention(f"{src}.attn", f"{dst}/attn", None, "qkv"),
                *layer_norm(f"{src}.norm2", f"{dst}/ln_2"),
                *mlp(f"{src}.mlp", f"{dst}/mlp", None, "fc1", "fc2")]
    return out + [*layer_norm(f"{prefix}norm", "sort_head/ln"),
                  Rule(f"{prefix}head.weight", "sort_head/classifier/kernel", None, "linear"),
                  Rule(f"{prefix}head.bias", "sort_head/classifier/bias")]


def rules(variant: str | V1Variant) -> list[Rule]:
    """Every official name -> parameter, in the official state dict's order."""
    v = _v1(variant)
    return [*distilbert.text_rules(v, "text_model."),
            *mae.video_rules(v, "video_model.", patch_layout="conv3d", temporal=True),
            Rule("txt_proj.1.weight", "text/proj/kernel", None, "linear"),
            Rule("txt_proj.1.bias", "text/proj/bias"),
            Rule("vid_proj.0.weight", "video/proj/kernel", None, "linear"),
            Rule("vid_proj.0.bias", "video/proj/bias"),
            *sort_head_rules(v)]


def convert(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant, source: str = "") -> Conversion:
    v = _v1(variant)
    dropped = {POSITION_IDS: distilbert.POSITION_IDS}
    return run_rules(state_dict, v, rules(v), optional={SORT_HEAD: "the sort head"}, dropped=dropped,
                     source=source or "tvts_v1")


def convert_file(path: str, variant: str | V1Variant) -> Conversion:
    from tvts.convert.io import load_state_dict

    return convert(load_state_dict(path), variant, source=os.path.basename(path))


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant) -> dict[str, Any]:
    """The parameter tree (nested dict of float32 numpy arrays); without `sort_head` when the checkpoint has no
    `pred_model.*`."""
    return convert(state_dict, variant).params


def from_params(params: Mapping[str, Any], variant: str | V1Variant, contiguous: bool = True) -> dict[str, np.ndarray]:
    """Official name -> array (PyTorch layouts, the parameters' dtype), exactly the official names in the official
    order: `pred_model.*` only when `params` has the sort head; every other parameter must be there. contiguous=False
    returns views of `params` (`tvts.convert.io.write_safetensors` copies one tensor at a time)."""
    v = _v1(variant)
    return official_tensors(params, v, rules(v), SORT_HEAD, contiguous)


def published_init(mae_state_dict: Mapping[str, np.ndarray], distilbert_state_dict: Mapping[str, np.ndarray],
                   variant: str | V1Variant, distilbert_config: Mapping[str, Any] | None = None,
                   sources: tuple[str, str] = ("mae", "distilbert")) -> Conversion:
    """The published v1 init as one conversion: the video tower from MAE, the text tower from DistilBERT; the
    temporal embedding, both projections and the sort head from the run's init (listed in `initialised`)."""
    v = _v1(variant)
    video = mae.convert(mae_state_dict, v, source=sources[0])
    text = distilbert.convert(distilbert_state_dict, v, source=sources[1], config=distilbert_config)
    flat = {**flatten(video.params), **flatten(text.params)}
    dtypes = dict(video.source_dtypes)
    for k, n in text.source_dtypes.items():
        dtypes[k] = dtypes.get(k, 0) + n
    shapes = target_shapes(v)
    return Conversion(unflatten(flat), v, sorted(flat), collapse(set(shapes) - set(flat), shapes),
                      {**video.dropped, **text.dropped}, video.resampled + text.resampled, dtypes)


def published_init_files(mae_path: str, distilbert_path: str, variant: str | V1Variant) -> Conversion:
    """`published_init` from files: MAE's .pth (or .safetensors); a DistilBERT model directory or weights file with
    its config.json."""
    from tvts.convert.io import load_state_dict

    text_sd, config = distilbert.load_checkpoint(distilbert_path)
    return published_init(load_state_dict(mae_path), text_sd, variant, config,
                          (os.path.basename(mae_path), os.path.basename(os.path.normpath(distilbert_path))))


def _v1(variant: str | V1Variant) -> V1Variant:
    v = resolve_variant(variant)
    if not isinstance(v, V1Variant):
        raise ValueError(f"variant {v.name} is not a TVTS v1 variant (v1-B/16, v1-tiny, ...)")
    return v
