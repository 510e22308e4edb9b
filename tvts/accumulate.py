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


def accumulated_grads(objective, trainable: Any, frozen: Any, model, batch: dict, keep: jax.Array | None,
                      num_micro: int) -> tuple[tuple[jax.Array, dict], Any]:
    """Same contract as jax.value_and_grad(objective.loss, has_aux=True) over the full batch (an `Objective`)."""
    micro = {k: split_microbatches(v, num_micro) for k, v in batch.items()}
    micro_keep = None if keep is None else split_microbatches(keep, num_micro)
    with_sort = batch["texts"].shape[1] > 1

    def forward(trainable, i):
        mk = None if micro_keep is None else micro_keep[i]
        return objective.forward(optim.merge(trainable, frozen), model, jax.tree.map(lambda a: a[i], micro), mk)

    def embed(_, i):
        out = forward(jax.lax.stop_gradient(trainable), i)
        return None, (out.video_emb, out.text_emb)

    _, (video_emb, text_emb) = jax.lax.scan(embed, None, jnp.arange(num_micro))
    # back to batch order: [num, m, E] -> [m, num, E] -> [B, E] (inverse of split_microbatches)
    unsplit = lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, x.shape[-1])
    (c_loss, metrics), (g_video, g_text) = jax.value_and_grad(objective.contrastive, argnums=(0, 1), has_aux=True)(
        unsplit(video_emb), unsplit(text_emb))
    c_weight = objective.contrastive_weight(with_sort)
    g_video, g_text = (split_microbatches(c_weight * g, num_micro) for g in (g_video, g_text))
    with_contrastive = bool(c_weight)  # a Python number: at 0 the term's backward pass is left out

    def surrogate(trainable, i):
        out = forward(trainable, i)
        value = jnp.sum(out.video_emb * g_video[i]) + jnp.sum(out.text_emb * g_text[i]) if with_contrastive \
            else jnp.zeros(())
        sort_loss = sort_acc = jnp.zeros(())
        if with_sort:
            sort_loss, sort_acc = losses.sorting_loss(out.sort_logits)
            value = value + objective.sort_weight * sort_loss / num_micro
        return value, (sort_loss, sort_acc)

    def accumulate(grads, i):
        g, (s_loss, s_acc) = jax.grad(surrogate, has_aux=True)(trainable, i)
        return jax.tree.map(jnp.add, grads, g), (s_loss, s_acc)

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    grads, (sort_losses, sort_accs) = jax.lax.scan(accumulate, zeros, jnp.arange(num_micro))
    sort = (sort_losses.mean(), sort_accs.mean()) if with_sort else None
    return objective.combine(c_loss, metrics, sort), grads
