"""Gradient accumulation that is exact for a global-batch contrastive loss.

Summing per-microbatch gradients of per-microbatch contrastive losses would change the objective
(each video would only see the texts of its microbatch). Instead (the "gradient cache" idea):
  1. embed every microbatch without gradients, giving all video and text embeddings of the batch;
  2. compute the contrastive loss over the whole batch and its gradient w.r.t. the embeddings;
  3. run each microbatch again with gradients, back-propagating those embedding gradients (plus the
     microbatch's share of the sorting loss), and sum the parameter gradients.
The result is the full-batch gradient; activation memory is that of one microbatch. The cost is one
extra forward pass.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tvts import losses, optim


def split_microbatches(x: jax.Array, num: int) -> jax.Array:
    """[B, ...] -> [num, B/num, ...], microbatch i = rows i, i+num, ... so every device keeps its share of each."""
    if x.shape[0] % num:
        raise ValueError(f"batch of {x.shape[0]} does not split into {num} microbatches")
    return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)


def accumulated_grads(trainable: Any, frozen: Any, model, batch: dict, keep: jax.Array | None, loss_cfg,
                      num_micro: int, transcribed_weight=None) -> tuple[tuple[jax.Array, dict], Any]:
    """Same contract as jax.value_and_grad(compute_losses, has_aux=True) over the full batch."""
    from tvts.train import preprocess_video

    micro = {k: split_microbatches(v, num_micro) for k, v in batch.items()}
    micro_keep = None if keep is None else split_microbatches(keep, num_micro)
    with_sort = batch["texts"].shape[1] > 1

    def forward(trainable, mb, mk):
        params = optim.merge(trainable, frozen)
        out = model.apply({"params": params}, preprocess_video(mb["video"]), mk, mb["texts"])
        return out["video_emb"], losses.transcript_text_embedding(out["text_emb"]), out.get("sort_logits")

    def embed(_, i):
        mk = None if micro_keep is None else micro_keep[i]
        v, t, _ = forward(jax.lax.stop_gradient(trainable), jax.tree.map(lambda a: a[i], micro), mk)
        return None, (v, t)

    _, (video_emb, text_emb) = jax.lax.scan(embed, None, jnp.arange(num_micro))
    # back to batch order: [num, m, E] -> [m, num, E] -> [B, E] (inverse of split_microbatches)
    unsplit = lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, x.shape[-1])
    (c_loss, metrics), (g_video, g_text) = jax.value_and_grad(
        lambda v, t: losses.contrastive_loss(v, t, loss_cfg.temperature), argnums=(0, 1), has_aux=True)(
            unsplit(video_emb), unsplit(text_emb))
    if transcribed_weight is None:
        transcribed_weight = loss_cfg.transcribed_contrastive_weight
    c_weight = transcribed_weight if with_sort else 1.0
    g_video, g_text = (split_microbatches(c_weight * g, num_micro) for g in (g_video, g_text))
    with_contrastive = bool(c_weight)  # a Python number: at 0 the term's backward pass is left out

    def surrogate(trainable, i):
        mk = None if micro_keep is None else micro_keep[i]
        v, t, sort_logits = forward(trainable, jax.tree.map(lambda a: a[i], micro), mk)
        value = jnp.sum(v * g_video[i]) + jnp.sum(t * g_text[i]) if with_contrastive else jnp.zeros(())
        sort_loss = sort_acc = jnp.zeros(())
        if with_sort:
            sort_loss, sort_acc = losses.sorting_loss(sort_logits)
            value = value + loss_cfg.sort_weight * sort_loss / num_micro
        return value, (sort_loss, sort_acc)

    def accumulate(grads, i):
        g, (s_loss, s_acc) = jax.grad(surrogate, has_aux=True)(trainable, i)
        return jax.tree.map(jnp.add, grads, g), (s_loss, s_acc)

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    grads, (sort_losses, sort_accs) = jax.lax.scan(accumulate, zeros, jnp.arange(num_micro))
    metrics["contrastive_loss"] = c_loss
    total = c_weight * c_loss
    if with_sort:
        metrics.update(sort_loss=sort_losses.mean(), sort_accuracy=sort_accs.mean())
        total = total + loss_cfg.sort_weight * metrics["sort_loss"]
    metrics["loss"] = total
    return (total, metrics), grads
