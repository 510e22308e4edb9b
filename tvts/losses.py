"""The two TVTSv2 objectives.

Both take global-batch arrays: under jit on a mesh the similarity matrix spans every video
and every text of the global batch (GSPMD gathers the embeddings), which is the published
all-gather contrastive loss without a hand-written collective.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """x / max(||x||, eps) along the last axis, in float32: the published `sim_matrix` clamps each vector's own
    norm at eps = 1e-8 (docs/published_recipe.md, "Objectives")."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """a [N, E], b [M, E] -> [N, M] cosine similarities; each norm is clamped at eps separately (not the product)."""
    return l2_normalize(a, eps) @ l2_normalize(b, eps).T


REDUCTIONS = ("sum", "mean")


def contrastive_loss(video_emb: jax.Array, text_emb: jax.Array, temperature: float = 0.05, reduction: str = "sum"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """video_emb [B, E], text_emb [B, E]; pair i is video i with text i.

    logits = cosine similarity / temperature. CE(video->text) and CE(text->video) are each a mean over the batch;
    reduction 'sum' (published: `-loss_i - loss_j`) adds the two directions, 'mean' averages them (half the
    loss and half the gradient of 'sum'; the tiny demo's setting).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown contrastive reduction {reduction!r}; use one of {REDUCTIONS}")
    logits = cosine_similarity(video_emb, text_emb) / temperature
    labels = jnp.arange(logits.shape[0])
    v2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t2v = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    acc = (jnp.argmax(logits, axis=1) == labels).mean()
    loss = v2t + t2v if reduction == "sum" else (v2t + t2v) / 2
    return loss, {"contrastive_v2t": v2t, "contrastive_t2v": t2v, "batch_v2t_acc": acc}


def transcript_text_embedding(transcript_emb: jax.Array) -> jax.Array:
    """[B, n, E] -> [B, E]: a transcribed video's text embedding is the mean of its transcripts' embeddings."""
    return transcript_emb.mean(axis=1)


def sorting_loss(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits [B, n, n]: transcript j (in temporal order) belongs to clip j. Returns (mean CE, accuracy)."""
    labels = jnp.broadcast_to(jnp.arange(logits.shape[1]), logits.shape[:2])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    return loss, (jnp.argmax(logits, axis=-1) == labels).mean()
