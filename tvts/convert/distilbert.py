"""Hugging Face DistilBERT checkpoints (`model.safetensors` or `pytorch_model.bin`, with `config.json`) -> the TVTS v1
text tower.

The official v1 model loads `AutoModel.from_pretrained('distilbert-base-uncased')` as its text model and trains all
of it (docs/published_recipe.md, "TVTS v1"; `v1/model/model_dist_TVTS.py:33-34`). Names (DistilBertModel):

    embeddings.{word_embeddings.weight, position_embeddings.weight, LayerNorm.{weight,bias}}
    transformer.layer.N.{attention.{q_lin,k_lin,v_lin,out_lin}, sa_layer_norm, ffn.{lin1,lin2}, output_layer_norm}
                       .{weight,bias}

The files on the Hub hold a task model (distilbert-base-uncased: DistilBertForMaskedLM): the encoder under
`distilbert.` and a head beside it (`vocab_transform`, `vocab_layer_norm`, `vocab_projector`, or a classifier). The
prefix is removed and the head dropped (and logged), as `AutoModel.from_pretrained` does. An `embeddings.position_ids`
buffer (some releases save it) is dropped too. The config must describe the variant's text tower (widths, depth,
heads, vocabulary, positions, GELU, learned positions, padding id); every mismatch is named in one error.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tvts.convert.io import StateDict, load_state_dict, strip_ddp_prefix
from tvts.convert.names import Conversion, Rule, resolve_variant
from tvts.convert.names import convert as run_rules
from tvts.convert.openai_clip import layer_norm, mlp
from tvts.models.variants_v1 import V1Variant

log = logging.getLogger("tvts.convert")

BASE_PREFIX = "distilbert."
POSITION_IDS = "a buffer of position indices, not a parameter"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def text_rules(variant: str | V1Variant, prefix: str = "") -> list[Rule]:
    """DistilBertModel's names (under `prefix`) -> text tower parameters, in its state dict's order."""
    v = resolve_variant(variant)
    out = [Rule(f"{prefix}embeddings.word_embeddings.weight", "text/word_embeddings"),
           Rule(f"{prefix}embeddings.position_embeddings.weight", "text/position_embeddings"),
           *layer_norm(f"{prefix}embeddings.LayerNorm", "text/embeddings_ln")]
    for i in range(v.text.depth):  # TransformerBlock: attention (q, k, v, out), sa_layer_norm, ffn, output_layer_norm
        src, dst = f"{prefix}transformer.layer.{i}", "text/blocks"
        for name in ("q", "k", "v"):
            out += [Rule(f"{src}.attention.{name}_lin.weight", f"{dst}/attn/{name}/kernel", i, "heads"),
                    Rule(f"{src}.attention.{name}_lin.bias", f"{dst}/attn/{name}/bias", i, "heads_bias")]
        out += [Rule(f"{src}.attention.out_lin.weight", f"{dst}/attn/out/kernel", i, "out"),
                Rule(f"{src}.attention.out_lin.bias", f"{dst}/attn/out/bias", i),
                *layer_norm(f"{src}.sa_layer_norm", f"{dst}/ln_1", i),
                *mlp(f"{src}.ffn", f"{dst}/mlp", i, "lin1", "lin2"),
                *layer_norm(f"{src}.output_layer_norm", f"{dst}/ln_2", i)]
    return out


def rules(variant: str | V1Variant) -> list[Rule]:
    return text_rules(variant)


def check_config(config: Mapping[str, Any], variant: V1Variant) -> None:
    """Every way the Hugging Face config differs from the variant's text tower, in one error."""
    t = variant.text
    want = {"model_type": "distilbert", "dim": t.width, "n_layers": t.depth, "n_heads": t.heads,
            "hidden_dim": t.mlp_dim, "vocab_size": t.vocab_size, "max_position_embeddings": t.max_positions,
            "activation": "gelu", "sinusoidal_pos_embds": False, "pad_token_id": t.pad_token_id}
    wrong = [f"{k} is {config[k]!r}, variant {variant.name} needs {v!r}" for k, v in want.items()
             if k in config and config[k] != v]
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in config]
    if wrong or missing:
        raise ValueError(f"DistilBERT config: {'; '.join(wrong + [f'{k} missing' for k in missing])}")


def strip_base_prefix(state_dict: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, str]]:
    """(the encoder's tensors under DistilBertModel's names, task-head tensors -> why they are dropped)."""
    names = list(state_dict)
    if not any(k.startswith(BASE_PREFIX) for k in names):
        return state_dict, {}
    head = {k: "the checkpoint's task head (beside the DistilBERT encoder)" for k in names
            if not k.startswith(BASE_PREFIX)}
    rename = lambda k: k.removeprefix(BASE_PREFIX)
    if isinstance(state_dict, StateDict):
        return state_dict.renamed(rename), head
    return {rename(k): x for k, x in state_dict.items()}, head


def convert(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant, source: str = "",
            config: Mapping[str, Any] | None = None) -> Conversion:
    v = resolve_variant(variant)
    if not isinstance(v, V1Variant):
        raise ValueError(f"DistilBERT weights initialise the TVTS v1 text tower; {v.name} is not a v1 variant")
    if config is not None:
        check_config(config, v)
    else:
        log.info("%s: no DistilBERT config given: heads, activation and padding id not checked", source or "distilbert")
    state_dict, dropped = strip_base_prefix(strip_ddp_prefix(state_dict))
    if "embeddings.position_ids" in state_dict:
        dropped["embeddings.position_ids"] = POSITION_IDS
    return run_rules(state_dict, v, rules(v), dropped=dropped, source=source or "distilbert")


def load_checkpoint(path: str) -> tuple[StateDict, dict[str, Any]]:
    """A Hugging Face model directory (its `model.safetensors` or `pytorch_model.bin`, and `config.json`), or a weights
    file with `config.json` beside it -> (lazy state dict, config)."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(WEIGHT_FILES)}")
        path = found[0]
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json beside {path}: the DistilBERT converter checks the model's config")
    with open(config_path) as f:
        config = json.load(f)
    return load_state_dict(path), config


def convert_file(path: str, variant: str | V1Variant) -> Conversion:
    state_dict, config = load_checkpoint(path)
    return convert(state_dict, variant, source=os.path.basename(os.path.normpath(path)), config=config)


def to_params(state_dict: Mapping[str, np.ndarray], variant: str | V1Variant,
              config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The loaded part of the parameter tree: the text tower without its projection."""
    return convert(state_dict, variant, config=config).params
