"""Config helpers: `get_config(arg)` argument parsing, validation before anything is allocated.

Configs are ml_collections ConfigDicts, locked by the config files so that a mistyped override
(`--config.optim.lerning_rate=...`) fails at once. `validate` checks values against the model
variant before any array exists.
"""
from __future__ import annotations

import ast
from typing import Any

import ml_collections

from tvts.models.variants import VARIANT_NAMES, Variant, decode_variant
import dataclasses


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """'variant=B/16,runlocal=True' -> ConfigDict over `defaults`; unknown keys are errors.

    Values are parsed as Python literals when they are ('True', '0.5', '8'), else kept as strings ('B/16').
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key] = value
    return ml_collections.ConfigDict(out)


def model_variant(model_cfg: Any) -> Variant:
    """The variant named by `config.model`, with the config's overrides applied (a new frozen value)."""
    if model_cfg.variant not in VARIANT_NAMES:
        raise ValueError(f"config.model.variant: unknown variant {model_cfg.variant!r}; "
                         f"known variants: {', '.join(VARIANT_NAMES)}")
    variant = decode_variant(model_cfg.variant)
    if model_cfg.text_num_frozen >= 0:
        if model_cfg.text_num_frozen > variant.text.depth:
            raise ValueError(f"config.model.text_num_frozen={model_cfg.text_num_frozen} exceeds the text tower's "
                             f"{variant.text.depth} blocks")
        variant = dataclasses.replace(variant, text=dataclasses.replace(variant.text,
                                                                        num_frozen=model_cfg.text_num_frozen))
    return variant


def mask_ratio(config: Any) -> float:
    return model_variant(config.model).mask_ratio if config.model.mask_ratio < 0 else config.model.mask_ratio


def validate(config: Any) -> None:
    """Fail with a message naming the field before anything is allocated."""
    variant = model_variant(config.model)
    ratio = mask_ratio(config)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"config.model.mask_ratio={ratio} must be in [0, 1): a ratio of 1 drops every patch")
    if int(variant.video.num_patches * (1 - ratio)) < 1:
        raise ValueError(f"config.model.mask_ratio={ratio} keeps no patch of {variant.video.num_patches}")
    if not 1 <= config.model.num_frames <= variant.video.max_frames:
        raise ValueError(f"config.model.num_frames={config.model.num_frames}: the temporal embedding holds "
                         f"{variant.video.max_frames} frames")
    if config.model.time_init not in ("learnable", "published"):
        raise ValueError(f"config.model.time_init={config.model.time_init!r}: use 'learnable' or 'published'")
    if config.data.context_length > variant.text.context_length:
        raise ValueError(f"config.data.context_length={config.data.context_length} exceeds the text tower's "
                         f"{variant.text.context_length}")
    if not (config.data.transcript_length == -1 or 1 <= config.data.transcript_length <= config.data.context_length):
        raise ValueError(f"config.data.transcript_length={config.data.transcript_length} must be in "
                         f"[1, context_length={config.data.context_length}] (or -1: context_length)")
    for source in config.data.sources:
        if source not in ("transcribed", "captioned"):
            raise ValueError(f"config.data.sources: unknown source {source!r}; use 'transcribed', 'captioned'")
        if getattr(config.data, f"{source}_batch") <= 0:
            raise ValueError(f"config.data.{source}_batch must be positive")
    for name, fraction in config.data.source_start.items():
        if name not in ("transcribed", "captioned"):
            raise ValueError(f"config.data.source_start.{name}: unknown source; use 'transcribed', 'captioned'")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"config.data.source_start.{name}={fraction} must be a fraction of training in [0, 1)")
    if all(config.data.source_start.get(k, 0.0) > 0 for k in config.data.sources):
        raise ValueError(f"config.data.source_start={dict(config.data.source_start)}: some source of "
                         f"data.sources={tuple(config.data.sources)} must start at 0, or the first iterations "
                         f"would take no update (e.g. --config.data.source_start.{config.data.sources[0]}=0)")
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be positive")
    for name in ("sort_weight", "transcribed_contrastive_weight"):
        if getattr(config.loss, name) < 0:
            raise ValueError(f"config.loss.{name}={getattr(config.loss, name)} must be >= 0")
    if not 0.0 <= config.loss.transcribed_contrastive_start < 1.0:
        raise ValueError(f"config.loss.transcribed_contrastive_start={config.loss.transcribed_contrastive_start} "
                         "must be a fraction of training in [0, 1)")
    for name, lr in config.optim.groups.items():
        if lr < 0:
            raise ValueError(f"config.optim.groups.{name}={lr} must be >= 0")
    if config.optim.rules and (config.optim.freeze_text_embeddings or config.optim.temporal_embedding_group != "clip"):
        raise ValueError("config.optim.freeze_text_embeddings / temporal_embedding_group switch the published rules; "
                         "config.optim.rules is set, so write the switch into those rules instead")
    for name, fraction in config.optim.group_start.items():
        if name not in config.optim.groups:
            raise ValueError(f"config.optim.group_start.{name}: no such group; groups: {sorted(config.optim.groups)}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"config.optim.group_start.{name}={fraction} must be a fraction of training in [0, 1)")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/pretrain.py:variant=tiny' -> the locked config (what --config does on the command line)."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted fields ({"optim.eps": 1.0}) in place; a field the config does not have raises."""
    with config.unlocked():
        for key, value in overrides.items():
            node = config
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            if last not in node:
                raise KeyError(f"config has no field {key!r}")
            node[last] = value
    return config
