"""What the video tower is fed: pixel normalisation, the preprocessing spec, tube masks.

The preprocessing spec travels with a model (the trainer's encoders, an exported backbone), so an
evaluator or a user's feature extraction prepares frames exactly as the model was trained on them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# mean, std per RGB channel of frames scaled to [0, 1]. TVTSv2 normalises with ImageNet's statistics
# (docs/published_recipe.md, "Data sampling"); CLIP's own are an option for CLIP-style evaluation.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def normalize(video: jax.Array, normalization: str = "imagenet") -> jax.Array:
    """uint8 [..., H, W, 3] -> float32, scaled to [0, 1] then standardised per channel."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {sorted(NORMALIZATIONS)}")
    mean, std = (np.asarray(s, np.float32) for s in NORMALIZATIONS[normalization])
    return (video.astype(jnp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How frames and texts must be prepared for a model (saved beside an exported backbone)."""

    num_frames: int
    image_size: int
    normalization: str = "imagenet"
    tokenizer: str = "clip_bpe"  # or 'wordpiece' (TVTS v1; tvts.data.tokenizer.text_tokenizer)
    context_length: int = 77
    # WordPiece: the vocab.txt (an exported backbone stores 'vocab.txt', relative to its folder); CLIP BPE: ''
    vocab_path: str = ""

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"PreprocessSpec.normalization={self.normalization!r}; known: {sorted(NORMALIZATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["vocab_path"]:  # CLIP BPE: the spec reads as it did before the field existed
            del d["vocab_path"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"preprocessing spec: unknown fields {sorted(unknown)}; expected {sorted(fields)}")
        return cls(**d)


def num_kept(num_patches: int, ratio: float) -> int:
    return int(num_patches * (1.0 - ratio))


def random_keep(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> jax.Array | None:
    """Tube mask: per video, `num_kept` random patch positions (sorted), the same in every frame. None at ratio 0."""
    if ratio == 0.0:
        return None
    order = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
    return jnp.sort(order[:, :num_kept(num_patches, ratio)], axis=1)
