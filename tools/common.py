"""Helpers shared by the tools (not a tool itself)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import ml_collections

from tvts.config import apply_overrides, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe_config(variant: str, eval: bool = False) -> ml_collections.ConfigDict:
    """The recipe a tool studies for `variant`: the tiny demo's (configs/demo.py) for 'tiny', else the published
    one (configs/pretrain.py; TVTS v1 rows: configs/pretrain_v1.py's first stage) from random weights, since the
    tools never need the converted CLIP, MAE or DistilBERT weights."""
    if variant == "tiny":
        return load_config(f"{CONFIGS / 'demo.py'}:eval={eval}")
    if variant.startswith("v1-"):
        return apply_overrides(load_config(f"{CONFIGS / 'pretrain_v1.py'}:variant={variant},eval={eval}"),
                               {"init": "random"})
    return apply_overrides(load_config(f"{CONFIGS / 'pretrain.py'}:variant={variant},eval={eval}"), {"init": "random"})


def in_round_order(cases: Mapping, round_index: int) -> Iterable:
    """The (name, case) pairs of one timing round: odd rounds in reverse, so that no case always runs first."""
    return reversed(cases.items()) if round_index % 2 else cases.items()
