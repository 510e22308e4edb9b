"""The TVTS v1 variants: rows of the variant table that `tvts.models.variants.decode_variant` dispatches to.

TVTS v1 (docs/published_recipe.md, "TVTS v1") cannot be a `Variant` row: its sort head is as wide as the towers
(768), not the joint space (256), its video tower embeds 2-frame tubelets and has no ln_pre, and its text tower is a
DistilBERT with its own vocabulary, positions and padding id. So it has its own frozen dataclass, built of the same
kind of pieces (the sort head's `SortHeadConfig` is shared), and the same rule: rows are immutable, overrides go
through `dataclasses.replace`. Names start with 'v1-', which is how `decode_variant` tells the families apart.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from tvts.models.sort_head_config import SortHeadConfig

V1_PREFIX = "v1-"


@dataclasses.dataclass(frozen=True)
class TubeletVideoTower:
    """A ViT with joint space-time attention over tubelets of `tubelet_size` frames x patch x patch pixels."""

    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    tubelet_size: int = 2
    max_frames: int = 16  # the temporal embedding has max_frames // tubelet_size rows (one per tube)
    epsilon: float = 1e-6  # LayerNorm eps of the blocks and the final norm (the official norm_layer)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch positions per tube."""
        return self.grid**2

    @property
    def max_tubes(self) -> int:
        return self.max_frames // self.tubelet_size


@dataclasses.dataclass(frozen=True)
class DistilBertTower:
    """A DistilBERT encoder (post-LN blocks, learned positions) read at its first token. Defaults: distilbert-base."""

    width: int = 768
    depth: int = 6
    heads: int = 12
    mlp_dim: int = 3072
    vocab_size: int = 30522
    max_positions: int = 512  # rows of the learned position embedding
    context_length: int = 50  # the official trainer truncates at 50 tokens
    pad_token_id: int = 0  # keys holding this id are masked out of attention
    epsilon: float = 1e-12  # DistilBERT's LayerNorm eps

    # The whole DistilBERT is trained (v1/train_dist_TVTS.py:66-67): no frozen blocks. Shared code that reads a
    # text tower's frozen depth (FLOP counts, optimizer rules) reads 0.
    num_frozen: ClassVar[int] = 0


@dataclasses.dataclass(frozen=True)
class V1Variant:
    family: ClassVar[str] = "v1"

    name: str
    video: TubeletVideoTower
    text: DistilBertTower
    sort_head: SortHeadConfig
    joint_dim: int  # the projections' output (256 as published)
    mask_ratio: float  # the published training mask ratio of transcribed videos, per tube
    init: str  # which released weights the towers start from ('random' for tiny)
    num_frames: int = 16  # frames per training video (4 clips x 4 frames as published)
    act: str = "gelu"  # both towers and the sort head use the exact (erf) GELU
    # captioned videos and images are not masked (mask_ratio 0: v1/base/base_dataset.py:129, :172)
    captioned_mask_ratio: float = 0.0

    def __post_init__(self):
        v, t = self.video, self.text
        problems = []
        if v.image_size % v.patch_size:
            problems.append(f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        if v.max_frames % v.tubelet_size or self.num_frames % v.tubelet_size:
            problems.append(f"max_frames {v.max_frames} and num_frames {self.num_frames} must be multiples of "
                            f"tubelet_size {v.tubelet_size}")
        if self.num_frames > v.max_frames:
            problems.append(f"num_frames {self.num_frames} exceeds max_frames {v.max_frames}")
        if not self.sort_head.width == v.width == t.width:
            problems.append(f"the sort head ({self.sort_head.width}) reads the video tokens ({v.width}) and the text "
                            f"features ({t.width}) before projection: the three widths must agree")
        for what, width, heads in (("video", v.width, v.heads), ("text", t.width, t.heads),
                                   ("sort head", self.sort_head.width, self.sort_head.heads)):
            if width % heads:
                problems.append(f"{what} width {width} is not divisible by {heads} heads")
        if t.context_length > t.max_positions:
            problems.append(f"text context_length {t.context_length} exceeds max_positions {t.max_positions}")
        if not 0.0 <= self.mask_ratio < 1.0:
            problems.append(f"mask_ratio {self.mask_ratio} outside [0, 1)")
        if not self.name.startswith(V1_PREFIX):
            problems.append(f"v1 variant names start with {V1_PREFIX!r}")
        if problems:
            raise ValueError(f"variant {self.name}: " + "; ".join(problems))


_V1_VARIANTS: dict[str, V1Variant] = {
    v.name: v
    for v in (
        # As published (docs/published_recipe.md, "TVTS v1"): ViT-B/16 over 2-frame tubelets, 16 frames (8 tubes),
        # distilbert-base-uncased, projections to 256, the sort head at 768 / 12 heads, 75% masked per tube.
        V1Variant("v1-B/16",
                  TubeletVideoTower(width=768, depth=12, heads=12, mlp_dim=3072, patch_size=16, image_size=224),
                  DistilBertTower(), SortHeadConfig(width=768, heads=12), joint_dim=256, mask_ratio=0.75,
                  init="mae:ViT-B-16+distilbert-base-uncased"),
        # For tests and the synthetic demo: the tiny TVTSv2's video shape (8 heads of 8, patch 8 on 32 px) at 16
        # frames; a 1024-entry vocabulary holds a WordPiece vocabulary built from the synthetic corpus's words; mask
        # 0.5 as the tiny TVTSv2 (16 positions per tube keep 8).
        V1Variant("v1-tiny",
                  TubeletVideoTower(width=64, depth=2, heads=8, mlp_dim=256, patch_size=8, image_size=32),
                  DistilBertTower(width=64, depth=2, heads=4, mlp_dim=256, vocab_size=1024, max_positions=64),
                  SortHeadConfig(width=64, heads=4), joint_dim=64, mask_ratio=0.5, init="random"),
    )
}

V1_VARIANT_NAMES = tuple(_V1_VARIANTS)


def decode_v1_variant(name: str) -> V1Variant:
    try:
        return _V1_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known v1 variants: {', '.join(V1_VARIANT_NAMES)}") from None
