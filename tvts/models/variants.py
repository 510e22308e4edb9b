"""The one immutable table of TVTSv2 variants.

`decode_variant('H/14')` returns a frozen `Variant`; nothing mutates it. Overrides
(for tests or ablations) go through `dataclasses.replace`, which builds a new value.
Published variants follow docs/published_recipe.md; g/14 and G/14 reuse OpenCLIP's ViT-g/14 and
ViT-bigG/14 towers and go beyond the paper. Their sort head reads what the official H/14's does ('patches'): the
official video tower for OpenCLIP weights (v2/model/video_encoder_ViT_H_14.py) is written for any OpenCLIP ViT config,
so g/14 and G/14 built the official way would take that path; L/14 (an OpenAI tower) reads what B/32 and B/16 read.
The TVTS v1 rows ('v1-B/16', 'v1-tiny') have their own dataclass in `tvts.models.variants_v1`; `decode_variant`
dispatches to them on the 'v1-' prefix. Both tables import the sort head's row type from
`tvts.models.sort_head_config`, so neither imports the other in a circle (this module imports variants_v1).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from tvts.models.sort_head_config import SortHeadConfig
from tvts.models.variants_v1 import V1_PREFIX, V1_VARIANT_NAMES, V1Variant, decode_v1_variant

Activation = Literal["quick_gelu", "gelu"]
# What the sort head reads of the video tower's output (docs/published_recipe.md, "Sort head"):
#   'all'     every token after ln_post and proj, CLS included (the official B/32, B/16:
#             v2/model/video_encoder_ViT_B_16.py:230-233 projects every ln_post-ed token, the sort head reads them all);
#   'patches' the patch tokens only, projected by proj without ln_post, no CLS (the official H/14: its OpenCLIP tower's
#             _global_pool splits x[:, 0] from x[:, 1:] and applies ln_post to the pooled CLS alone,
#             v2/model/video_encoder_ViT_H_14.py:413-417, :477-482).
# The video embedding is the projected CLS after ln_post either way.
SortTokens = Literal["all", "patches"]
SORT_TOKENS = ("all", "patches")


@dataclasses.dataclass(frozen=True)
class VideoTower:
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    max_frames: int = 12  # rows of the learned temporal embedding

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclasses.dataclass(frozen=True)
class TextTower:
    width: int
    depth: int
    heads: int
    num_frozen: int  # the first `num_frozen` blocks never receive an update
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def mlp_dim(self) -> int:
        return 4 * self.width


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    video: VideoTower
    text: TextTower
    sort_head: SortHeadConfig
    joint_dim: int
    act: Activation
    mask_ratio: float  # the published training mask ratio
    init: str  # which released CLIP weights the towers start from ('random' for tiny)
    sort_tokens: SortTokens = "all"  # see SORT_TOKENS above; 'patches' for the OpenCLIP towers (H/14, g/14, G/14)

    def __post_init__(self):
        if self.video.image_size % self.video.patch_size:
            raise ValueError(f"variant {self.name}: image_size {self.video.image_size} is not a multiple "
                             f"of patch_size {self.video.patch_size}")
        if not 0 <= self.text.num_frozen <= self.text.depth:
            raise ValueError(f"variant {self.name}: num_frozen={self.text.num_frozen} outside [0, {self.text.depth}]")
        if self.sort_head.width != self.joint_dim:
            raise ValueError(f"variant {self.name}: sort head width {self.sort_head.width} must equal "
                             f"joint_dim {self.joint_dim} (it reads projected tokens)")
        if self.sort_tokens not in SORT_TOKENS:
            raise ValueError(f"variant {self.name}: sort_tokens {self.sort_tokens!r}: use one of {SORT_TOKENS}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"variant {self.name}: mask_ratio {self.mask_ratio} outside [0, 1)")


def _video(width, depth, heads, patch, mlp=None, image=224):
    return VideoTower(width=width, depth=depth, heads=heads, mlp_dim=mlp or 4 * width,
                      patch_size=patch, image_size=image)


_B_TEXT = TextTower(width=512, depth=12, heads=8, num_frozen=9)
_L_TEXT = TextTower(width=768, depth=12, heads=12, num_frozen=9)
_H_TEXT = TextTower(width=1024, depth=24, heads=16, num_frozen=18)
_G_TEXT = TextTower(width=1280, depth=32, heads=20, num_frozen=24)

_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # tiny: 8 video heads of 8 dims, not 4 of 16. Trained on the first event's motion from all 12 frames
        # (tools/research/learnability.py, 600 steps), 4 heads stay at chance (0.26) and 8 heads reach 0.96
        # (docs/tiny_recipe.md, "How the tiny recipe got there").
        Variant("tiny", VideoTower(width=64, depth=2, heads=8, mlp_dim=256, patch_size=8, image_size=32),
                TextTower(width=64, depth=3, heads=4, num_frozen=1, context_length=32),
                SortHeadConfig(width=64, heads=4), joint_dim=64, act="gelu", mask_ratio=0.5, init="random"),
        Variant("B/32", _video(768, 12, 12, 32), _B_TEXT, SortHeadConfig(512, 8), 512, "quick_gelu", 0.0,
                "openai:ViT-B-32"),
        Variant("B/16", _video(768, 12, 12, 16), _B_TEXT, SortHeadConfig(512, 8), 512, "quick_gelu", 0.5,
                "openai:ViT-B-16"),
        Variant("L/14", _video(1024, 24, 16, 14), _L_TEXT, SortHeadConfig(768, 12), 768, "quick_gelu", 0.7,
                "openai:ViT-L-14"),
        Variant("H/14", _video(1280, 32, 16, 14), _H_TEXT, SortHeadConfig(1024, 16), 1024, "gelu", 0.7,
                "open_clip:ViT-H-14:laion2b_s32b_b79k", sort_tokens="patches"),
        Variant("g/14", _video(1408, 40, 16, 14, mlp=6144), _H_TEXT, SortHeadConfig(1024, 16), 1024, "gelu",
                0.7, "open_clip:ViT-g-14:laion2b_s34b_b88k", sort_tokens="patches"),
        Variant("G/14", _video(1664, 48, 16, 14, mlp=8192), _G_TEXT, SortHeadConfig(1280, 20), 1280, "gelu",
                0.7, "open_clip:ViT-bigG-14:laion2b_s39b_b160k", sort_tokens="patches"),
    )
}

VARIANT_NAMES = tuple(_VARIANTS)  # the TVTSv2 rows (what the TVTSv2 model builds)
ALL_VARIANT_NAMES = VARIANT_NAMES + V1_VARIANT_NAMES  # every row of both families

__all__ = ["ALL_VARIANT_NAMES", "SORT_TOKENS", "VARIANT_NAMES", "SortHeadConfig", "TextTower", "V1Variant", "Variant",
           "VideoTower", "decode_variant", "is_v1"]


def is_v1(variant: Variant | V1Variant | str) -> bool:
    """Whether a variant (or its name) is of the TVTS v1 family."""
    name = variant if isinstance(variant, str) else variant.name
    return isinstance(variant, V1Variant) or name.startswith(V1_PREFIX)


def decode_variant(name: str) -> Variant | V1Variant:
    """A TVTSv2 row; a name starting with 'v1-' returns the TVTS v1 row (`tvts.models.variants_v1.V1Variant`).

    VARIANT_NAMES lists the TVTSv2 rows only (what the TVTSv2 model builds); the v1 names are
    `tvts.models.variants_v1.V1_VARIANT_NAMES`, both together ALL_VARIANT_NAMES.
    """
    if name.startswith(V1_PREFIX):
        return decode_v1_variant(name)
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known variants: {', '.join(VARIANT_NAMES)} "
                         f"(TVTS v1: {', '.join(V1_VARIANT_NAMES)})") from None
