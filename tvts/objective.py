"""The TVTSv2 objective, assembled once: used by the plain train step and by gradient accumulation.

A transcribed batch (texts [B, 4, L]) weighs `sort_weight` x sorting + `contrastive_weight` x contrastive, where
the contrastive text of a video is the mean of its transcripts' embeddings; a captioned batch (texts [B, 1, L])
has the contrastive term alone. A weight of 0 leaves its term out of the program (no backward pass).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from tvts import losses
from tvts.models.inputs import normalize


class Outputs(NamedTuple):
    video_emb: jax.Array  # [B, E]
    text_emb: jax.Array  # [B, E] (transcribed: the mean of the transcripts')
    sort_logits: jax.Array | None  # [B, n, n], transcribed batches only


@dataclasses.dataclass(frozen=True)
class Objective:
    temperature: float
    reduction: str  # of the contrastive term's two directions: 'sum' (published) or 'mean'
    sort_weight: float
    transcribed_contrastive_weight: float  # this phase's (curriculum.Phase.transcribed_weight)
    normalization: str = "imagenet"

    @classmethod
    def from_config(cls, config: Any, transcribed_weight: float) -> Objective:
        return cls(config.loss.temperature, config.loss.contrastive_reduction, config.loss.sort_weight,
                   transcribed_weight, config.data.normalization)

    def contrastive_weight(self, with_sort: bool) -> float:
        return self.transcribed_contrastive_weight if with_sort else 1.0

    def forward(self, params, model, batch: dict, keep: jax.Array | None) -> Outputs:
        """batch: video uint8 [B, T, H, W, 3], texts int32 [B, n, L]."""
        out = model.apply({"params": params}, normalize(batch["video"], self.normalization), keep, batch["texts"])
        return Outputs(out["video_emb"], losses.transcript_text_embedding(out["text_emb"]), out.get("sort_logits"))

    def contrastive(self, video_emb: jax.Array, text_emb: jax.Array) -> tuple[jax.Array, dict]:
        return losses.contrastive_loss(video_emb, text_emb, self.temperature, self.reduction)

    def combine(self, contrastive: jax.Array, metrics: dict, sort: tuple[jax.Array, jax.Array] | None
                ) -> tuple[jax.Array, dict]:
        """The weighted total from the terms' values; `sort` = (loss, accuracy) on transcribed batches."""
        metrics = {**metrics, "contrastive_loss": contrastive}
        weight = self.contrastive_weight(sort is not None)
        total = weight * contrastive if weight else 0.0
        if sort is not None:
            metrics.update(sort_loss=sort[0], sort_accuracy=sort[1])
            total = total + self.sort_weight * sort[0]
        metrics["loss"] = total
        return total, metrics

    def loss(self, params, model, batch: dict, keep: jax.Array | None) -> tuple[jax.Array, dict]:
        out = self.forward(params, model, batch, keep)
        contrastive, metrics = self.contrastive(out.video_emb, out.text_emb)
        sort = None if out.sort_logits is None else losses.sorting_loss(out.sort_logits)
        return self.combine(contrastive, metrics, sort)
