"""The conversion engine shared by the three sources: rules from source names to parameter paths, the layouts of
PyTorch tensors against this codebase's, and the bookkeeping (every source tensor used or named in one error, every
parameter not loaded listed in one log line, shapes checked before anything is read).

A rule maps one source tensor to one parameter leaf, or to one layer of a stacked (scanned) leaf, through a layout:

    copy      the same array
    linear    torch Linear weight [out, in] -> kernel [in, out]
    qkv       fused q, k, v weight [3D, D] (heads contiguous in each) -> kernel [D, 3, H, Dh]
    qkv_bias  [3D] -> [3, H, Dh]
    out       attention output weight [D, H*Dh] -> kernel [H, Dh, D]
    conv      patch conv weight [W, 3, p, p] (no bias) -> kernel [p, p, 3, W]
    batch1    [1, ...] -> [...] (the sort head's type embedding [1, 2, E])
    pos       a position embedding [1 + g*g, D]; resampled (bicubic) when the source grid g differs

TVTS v1's sources (`mae`, `distilbert`, `tvts_v1`) add:

    heads       a separate q, k or v Linear weight [H*Dh, D] -> kernel [D, H, Dh] (DistilBERT's q_lin, k_lin, v_lin)
    heads_bias  [H*Dh] -> [H, Dh]
    batch2      [1, 1, ...] -> [...] (the ViT's cls_token [1, 1, D])
    conv3d      tubelet Conv3d weight [W, C, t, p, p] (with its own bias) -> kernel [t, p, p, C, W]
    inflate     a 2D patch Conv2d weight [W, C, p, p] -> kernel [t, p, p, C, W], the same 2D kernel in each of the
                tubelet's t frames, not divided by t (the official v1 init from MAE weights)

Every layout has an exact inverse (`pos` only when the grids agree; `inflate` has none, it only goes one way), which
`tvtsv2.from_params` and `tvts_v1.from_params` use.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tvts.convert.io import StateDict, is_float, shape_of, strip_ddp_prefix, upcast
from tvts.models.variants import Variant, decode_variant
from tvts.trees import flatten, path_str, unflatten

log = logging.getLogger("tvts.convert")

LAYOUTS = ("copy", "linear", "qkv", "qkv_bias", "out", "conv", "batch1", "pos",
           "heads", "heads_bias", "batch2", "conv3d", "inflate")


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str  # the source tensor's name
    target: str  # '/'-joined parameter path
    layer: int | None = None  # index along the stacked leaf's leading 'layers' axis; None: unstacked
    layout: str = "copy"


def source_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape that `layout` turns into the parameter shape `shape`."""
    if layout in ("copy", "pos"):
        return shape
    if layout == "linear":
        return shape[::-1]
    if layout == "qkv":  # [D, 3, H, Dh]
        return (shape[1] * shape[2] * shape[3], shape[0])
    if layout == "qkv_bias":  # [3, H, Dh]
        return (math.prod(shape),)
    if layout == "out":  # [H, Dh, D]
        return (shape[2], shape[0] * shape[1])
    if layout == "conv":  # [p, p, 3, W]
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "batch1":
        return (1,) + shape
    if layout == "heads":  # [D, H, Dh]
        return (shape[1] * shape[2], shape[0])
    if layout == "heads_bias":  # [H, Dh]
        return (math.prod(shape),)
    if layout == "batch2":
        return (1, 1) + shape
    if layout == "conv3d":  # [t, p, p, C, W]
        return (shape[4], shape[3], shape[0], shape[1], shape[2])
    if layout == "inflate":  # [t, p, p, C, W] from [W, C, p, p]
        return (shape[4], shape[3], shape[1], shape[2])
    raise ValueError(f"unknown layout {layout!r}")


def to_ours(layout: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """PyTorch tensor -> parameter (a view where possible)."""
    if layout == "copy":
        return x
    if layout == "linear":
        return x.T
    if layout == "qkv":
        d, three, h, dh = shape
        return x.reshape(three, h, dh, d).transpose(3, 0, 1, 2)
    if layout in ("qkv_bias", "batch1"):
        return x.reshape(shape)
    if layout == "out":
        return x.T.reshape(shape)
    if layout == "conv":
        return x.transpose(2, 3, 1, 0)
    if layout == "pos":
        return x if x.shape == shape else resample_pos_embedding(x, shape)
    if layout == "heads":
        return x.T.reshape(shape)
    if layout in ("heads_bias", "batch2"):
        return x.reshape(shape)
    if layout == "conv3d":
        return x.transpose(2, 3, 4, 1, 0)
    if layout == "inflate":
        return np.broadcast_to(x.transpose(2, 3, 1, 0)[None], shape)
    raise ValueError(f"unknown layout {layout!r}")


def to_torch(layout: str, x: np.ndarray) -> np.ndarray:
    """Parameter -> PyTorch tensor (the inverse of `to_ours`; a view where possible)."""
    if layout in ("copy", "pos"):
        return x
    if layout == "linear":
        return x.T
    if layout == "qkv":
        d = x.shape[0]
        return x.transpose(1, 2, 3, 0).reshape(-1, d)
    if layout == "qkv_bias":
        return x.reshape(-1)
    if layout == "out":
        return x.reshape(-1, x.shape[-1]).T
    if layout == "conv":
        return x.transpose(3, 2, 0, 1)
    if layout == "batch1":
        return x[None]
    if layout == "heads":
        return x.reshape(x.shape[0], -1).T
    if layout == "heads_bias":
        return x.reshape(-1)
    if layout == "batch2":
        return x[None, None]
    if layout == "conv3d":
        return x.transpose(4, 3, 0, 1, 2)
    if layout == "inflate":
        raise ValueError("the inflated 2D patch kernel has no inverse: it only converts 2D weights into a tubelet")
    raise ValueError(f"unknown layout {layout!r}")


def resample_pos_embedding(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """[1 + g0*g0, D] -> [1 + g*g, D]: the CLS row kept, the patch grid resized bicubically (half-pixel centres)."""
    import jax

    g0, g = math.isqrt(x.shape[0] - 1), math.isqrt(shape[0] - 1)
    grid = x[1:].reshape(g0, g0, x.shape[1])
    resized = np.asarray(jax.image.resize(grid, (g, g, x.shape[1]), method="cubic", antialias=g < g0))
    return np.concatenate([x[:1], resized.reshape(g * g, x.shape[1]).astype(x.dtype)], axis=0)


def _pos_compatible(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    if len(src) != 2 or len(dst) != 2 or src[1] != dst[1]:
        return False
    return all(n >= 2 and math.isqrt(n - 1) ** 2 == n - 1 for n in (src[0], dst[0]))


# -------------------------------------------------------------------------------------------------- the variant

def resolve_variant(variant: str | Variant) -> Variant:
    return decode_variant(variant) if isinstance(variant, str) else variant


def target_shapes(variant: Variant) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path -> shape, for every parameter of the model (nothing allocated)."""
    import flax.linen as nn
    import jax

    from tvts.models.tvtsv2 import abstract_params
    from tvts.models.variants_v1 import V1Variant

    if isinstance(variant, V1Variant):  # the TVTS v1 model family (tvts.models.tvts_v1)
        from tvts.models.tvts_v1 import abstract_params as v1_abstract_params

        tree = nn.unbox(v1_abstract_params(variant))
    else:
        tree = nn.unbox(abstract_params(variant))
    return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def collapse(paths: Iterable[str], universe: Iterable[str]) -> list[str]:
    """The shortest list of subtrees covering `paths` exactly (within `universe`, all paths): e.g. every sort-head
    leaf -> 'sort_head'."""
    paths, universe = set(paths), set(universe)
    out = []
    for p in sorted(paths):
        parts = p.split("/")
        best = p
        for i in range(1, len(parts)):
            root = "/".join(parts[:i])
            under = {u for u in universe if u.startswith(root + "/")}
            if under <= paths:
                best = root
                break
        if best not in out:
            out.append(best)
    return out


def text_block_target(variant: Variant, index: int) -> tuple[str, int]:
    """Text block `index` -> (stack, layer) under the variant's frozen/tuned split (text.num_frozen)."""
    nf = variant.text.num_frozen
    return ("text/frozen_blocks", index) if index < nf else ("text/tuned_blocks", index - nf)


# ------------------------------------------------------------------------------------------------- conversion

@dataclasses.dataclass
class Conversion:
    """What `convert` made: `params` holds the loaded leaves only (a nested dict of float32 numpy arrays); the rest
    of the model (`initialised`, collapsed to subtrees) comes from the run's own init."""

    params: dict[str, Any]
    variant: Variant
    loaded: list[str]  # parameter paths written
    initialised: list[str]  # parameter subtrees the source does not have
    dropped: dict[str, str]  # source tensors deliberately not used -> why
    resampled: list[str]  # notes on position embeddings resampled to the variant's grid
    source_dtypes: dict[str, int]  # source dtype -> number of tensors

    def summary(self) -> str:
        n = sum(int(np.prod(np.shape(v))) for v in flatten(self.params).values())
        dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(self.source_dtypes.items()))
        return f"{len(self.loaded)} parameters ({n:,} values) loaded from tensors {dtypes}"


def convert(state_dict: Mapping[str, Any], variant: Variant, rules: list[Rule], *,
            optional: Mapping[str, str] = {}, dropped: Mapping[str, str] = {}, source: str = "") -> Conversion:
    """Applies `rules` to `state_dict` for `variant`.

    optional: source-name prefix -> what it is; a group of rules that may be absent as a whole (then its parameters
        are initialised and listed), but not in part.
    dropped: source names that exist in some files and have no counterpart here (e.g. CLIP's logit_scale) -> why.
    Errors: every source tensor neither used nor dropped, in one error; every required tensor missing, in one error;
    every shape mismatch (tensor, its shape, the expected one), in one error, before any tensor is read.
    """
    state_dict = strip_ddp_prefix(state_dict)
    what = f"{source}: " if source else ""
    shapes = target_shapes(variant)
    by_source = {}
    for r in rules:
        if r.target not in shapes:
            raise AssertionError(f"rule {r} names a parameter variant {variant.name} does not have")
        by_source[r.source] = r
    names = list(state_dict)
    present = set(names)

    unknown = [k for k in names if k not in by_source and k not in dropped]
    if unknown:
        family = "TVTS v1" if getattr(variant, "family", None) == "v1" else "TVTSv2"
        raise ValueError(f"{what}{len(unknown)} tensors have no place in {family} variant {variant.name} (another "
                         f"source or variant?): {', '.join(unknown)}")
    absent_groups = []
    for prefix, description in optional.items():
        group = [r.source for r in rules if r.source.startswith(prefix)]
        found = [s for s in group if s in present]
        if not found:
            absent_groups.append(prefix)
        elif len(found) < len(group):
            missing = [s for s in group if s not in present]
            raise ValueError(f"{what}{description} ({prefix}*) is incomplete: {len(missing)} tensors missing: "
                             f"{', '.join(missing)}")
    missing = [r.source for r in rules if r.source not in present and not r.source.startswith(tuple(absent_groups))]
    if missing:
        raise ValueError(f"{what}{len(missing)} tensors that variant {variant.name} needs are missing: "
                         f"{', '.join(missing)}")

    active = [r for r in rules if r.source in present]
    wrong, resampled = [], []
    for r in active:
        leaf = shapes[r.target] if r.layer is None else shapes[r.target][1:]
        want, got = source_shape(r.layout, leaf), shape_of(state_dict, r.source)
        if got == want:
            continue
        if r.layout == "pos" and _pos_compatible(got, want):
            resampled.append(f"{r.source} {got} -> {want}")
            continue
        wrong.append(f"{r.source} has shape {got}, variant {variant.name} needs {want}")
    if wrong:
        raise ValueError(f"{what}shape mismatch: {'; '.join(wrong)}")

    flat: dict[str, np.ndarray] = {}
    dtypes: dict[str, int] = {}
    for r in active:  # one source tensor at a time, written into its (preallocated) leaf
        if r.target not in flat:
            flat[r.target] = np.empty(shapes[r.target], np.float32)
        leaf_shape = shapes[r.target] if r.layer is None else shapes[r.target][1:]
        x = np.asarray(state_dict[r.source])
        if not is_float(x.dtype):
            raise ValueError(f"{what}{r.source} is {x.dtype}, not a floating tensor")
        value = to_ours(r.layout, upcast(x), leaf_shape)
        if r.layer is None:
            flat[r.target][...] = value
        else:
            flat[r.target][r.layer] = value
        dt = state_dict.dtype(r.source) if isinstance(state_dict, StateDict) else str(x.dtype)
        dtypes[dt] = dtypes.get(dt, 0) + 1
        del x, value

    initialised = collapse(set(shapes) - set(flat), shapes)
    used_dropped = {k: v for k, v in dropped.items() if k in present}
    conversion = Conversion(unflatten(flat), variant, sorted(flat), initialised, used_dropped, resampled, dtypes)
    log.info("%s%s", what, conversion.summary())
    for note in resampled:
        log.info("%sposition embedding resampled: %s", what, note)
    if used_dropped:
        log.info("%snot used: %s", what, "; ".join(f"{k} ({v})" for k, v in used_dropped.items()))
    log.info("%snot loaded, initialised as the run's config says: %s", what,
             ", ".join(initialised) if initialised else "nothing")
    return conversion


def invert(params: Mapping[str, Any], variant: Variant, rules: list[Rule]) -> dict[str, np.ndarray]:
    """Source name -> PyTorch-layout array, for every rule whose parameter `params` holds (views where possible)."""
    flat = flatten(params)
    shapes = target_shapes(variant)
    for key, value in flat.items():
        if key not in shapes:
            raise ValueError(f"parameter {key} is not in variant {variant.name}")
        if tuple(np.shape(value)) != shapes[key]:
            raise ValueError(f"parameter {key} has shape {tuple(np.shape(value))}, variant {variant.name} "
                             f"has {shapes[key]}")
    out = {}
    for r in rules:
        if r.target in flat:
            value = np.asarray(flat[r.target])
            out[r.source] = to_torch(r.layout, value if r.layer is None else value[r.layer])
    return out


def official_tensors(params: Mapping[str, Any], variant, rules: list[Rule], sort_head_prefix: str,
                     contiguous: bool = True) -> dict[str, np.ndarray]:
    """`invert` checked for completeness, in the rules' (official) order: the sort head's tensors only when `params`
    has the sort head; every other official tensor must be there. contiguous=False returns views of `params`."""
    out = invert(params, variant, rules)
    needed = [r.source for r in rules if not r.source.startswith(sort_head_prefix) or "sort_head" in params]
    missing = [s for s in needed if s not in out]
    if missing:
        raise ValueError(f"from_params: parameters missing for {len(missing)} official tensors: {', '.join(missing)}")
    return {k: np.ascontiguousarray(out[k]) if contiguous else out[k] for k in needed}
