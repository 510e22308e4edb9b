"""Nested-dict parameter trees <-> flat '/'-joined names. Plain Python (no jax, no flax), so the exported backbone's
loader can use it too."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def path_str(path) -> str:
    """A jax key path -> 'video/blocks/attn/qkv/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a/b/c': leaf}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dicts."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
