"""The JAX pieces the learned coders share: straight-through sign, soft product quantisation, the debiased
contrastive loss, transformer blocks, the training loop (optax, tqdm) and parameter (de)serialisation."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# ---------------------------------------------------------------------------------------------------------------
# Binary and product codes
# ---------------------------------------------------------------------------------------------------------------


@jax.custom_vjp
def ste_sign(x: jax.Array) -> jax.Array:
    """Exactly +-1 (sign, with sign(0) = +1) forward; the identity's gradient backward, cut to 0 where |x| > 1
    (the straight-through estimator of hardtanh). A custom VJP rather than `x + stop_gradient(sign(x) - x)`, whose
    forward value is only +-1 up to rounding."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _ste_forward(x):
    return ste_sign(x), x


def _ste_backward(x, g):
    return (g * (jnp.abs(x) <= 1).astype(g.dtype),)


ste_sign.defvjp(_ste_forward, _ste_backward)


def l2n(x: jax.Array, axis: int = -1) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


def split(x: jax.Array, m: int) -> jax.Array:
    """[..., M * d] -> [..., M, d]."""
    return x.reshape(*x.shape[:-1], m, x.shape[-1] // m)


def codeword_scores(z: jax.Array, codebooks: jax.Array) -> jax.Array:
    """Cosine scores [..., M, K] of each sub-vector of z [..., M * d] with the codewords of codebooks [M, K, d]."""
    return jnp.einsum("...md,mkd->...mk", l2n(split(z, codebooks.shape[0])), l2n(codebooks))


def soft_quantize(z: jax.Array, codebooks: jax.Array, alpha: float, top: int | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """(reconstruction [..., M * d], assignment [..., M, K]): each sub-vector becomes the softmax(alpha * cosine)
    -weighted sum of its codebook's (unit) codewords. `top`: attend only to the `top` best-scoring codewords of each
    codebook (PHPQ's partial attention); the others get weight 0."""
    scores = alpha * codeword_scores(z, codebooks)
    if top is not None and top < codebooks.shape[1]:
        kth = jax.lax.top_k(scores, top)[0][..., -1:]
        scores = jnp.where(scores >= kth, scores, -jnp.inf)
    p = jax.nn.softmax(scores, axis=-1)
    return decode_soft(p, codebooks), p


def decode_soft(p: jax.Array, codebooks: jax.Array) -> jax.Array:
    """Assignments [..., M, K] -> reconstructions [..., M * d] with the unit codewords."""
    recon = jnp.einsum("...mk,mkd->...md", p, l2n(codebooks))
    return recon.reshape(*recon.shape[:-2], -1)


def hard_codes(z: jax.Array, codebooks: jax.Array) -> jax.Array:
    """uint8 [..., M]: the best codeword (by cosine) of each sub-vector."""
    return jnp.argmax(codeword_scores(z, codebooks), axis=-1).astype(jnp.uint8)


def kmeans_codebooks(z: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Codebooks [M, 256, d] from k-means (faiss) on the unit sub-vectors of z [N, M * d]: the start of a learned
    quantiser. From random codewords, soft assignment trains only the few codewords that first win, and the hard
    codes of the trained quantiser then rank far below PQ on the same embedding (measured: docs/codes.md)."""
    from tvts.codes.baselines import train_pq

    sub = np.asarray(l2n(split(jnp.asarray(z, jnp.float32), m)))
    return train_pq(sub.reshape(len(z), -1), m, seed)


def with_kmeans_codebooks(params, z: np.ndarray, seed: int):
    """params with its 'codebooks' replaced by kmeans_codebooks of the embeddings z."""
    return {**params, "codebooks": jnp.asarray(kmeans_codebooks(z, params["codebooks"].shape[0], seed))}


def codeword_diversity(codebooks: jax.Array) -> jax.Array:
    """Mean cosine similarity between distinct codewords of the same codebook (minimised: codewords spread out
    instead of collapsing onto the few the contrastive loss first pulls)."""
    c = l2n(codebooks)
    gram = jnp.einsum("mkd,mjd->mkj", c, c)
    k = codebooks.shape[1]
    return (gram.sum((1, 2)) - k).mean() / (k * (k - 1))


# ---------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------
def debiased_contrastive(a: jax.Array, b: jax.Array, temperature: float, tau_plus: float,
                         extra_negatives: jax.Array | None = None, extra_weight: jax.Array | float = 1.0
                         ) -> jax.Array:
    """The debiased contrastive loss (Chuang et al. 2020) of two views a, b [B, E] (row i of a and of b are one
    item): every one of the 2B views has its other view as positive and the other 2B - 2 views (plus
    `extra_negatives` [Q, E], counted with `extra_weight`, 0 or 1: a switch inside a jitted step) as negatives,
    whose summed exp-similarity is corrected for the share `tau_plus` of negatives that are in truth of the same
    class, and floored at its theoretical minimum. Cosine similarities."""
    z = l2n(jnp.concatenate([a, b]))
    n2 = z.shape[0]
    sim = z @ z.T / temperature
    half = n2 // 2
    pos_index = (jnp.arange(n2) + half) % n2
    pos = jnp.exp(sim[jnp.arange(n2), pos_index])
    not_neg = jnp.eye(n2, dtype=bool) | (jnp.arange(n2)[None, :] == pos_index[:, None])
    neg = jnp.where(not_neg, 0.0, jnp.exp(sim)).sum(1)
    count = n2 - 2
    if extra_negatives is not None:
        neg = neg + extra_weight * jnp.exp(z @ l2n(extra_negatives).T / temperature).sum(1)
        count = count + extra_weight * extra_negatives.shape[0]
    debiased = (neg - count * tau_plus * pos) / (1.0 - tau_plus)
    debiased = jnp.maximum(debiased, count * jnp.exp(-1.0 / temperature))
    return jnp.mean(-jnp.log(pos / (pos + debiased)))


def info_nce(sim: jax.Array) -> jax.Array:
    """Symmetric cross-entropy of a [B, B] similarity-logit matrix whose diagonal holds the pairs."""
    labels = jnp.arange(sim.shape[0])
    rows = optax.softmax_cross_entropy_with_integer_labels(sim, labels).mean()
    cols = optax.softmax_cross_entropy_with_integer_labels(sim.T, labels).mean()
    return 0.5 * (rows + cols)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-LayerNorm transformer block over [B, T, W]."""

    heads: int = 4
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = x.shape[-1]
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=w)(y, y)
        y = nn.Dense(w * self.mlp_ratio)(nn.LayerNorm()(x))
        return x + nn.Dense(w)(nn.gelu(y))


# ---------------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------------
LossFn = Callable[[Any, Any, dict, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def fit(loss_fn: LossFn, params, state, sample: Callable[[np.random.Generator], dict], *, steps: int, lr: float,
        seed: int, desc: str, progress: bool = True, weight_decay: float = 1e-4, warmup: int = 20
        ) -> tuple[Any, Any, dict[str, Any]]:
    """AdamW with warm-up and cosine decay over `steps` jitted updates.

    loss_fn(params, state, batch, step, key) -> (loss, (new_state, logs)): `state` carries what is not
    differentiated (MeCoQ's code memory); `sample(rng)` draws a numpy batch. The batches come from one numpy
    generator and the dropout / mask keys from one JAX key, both seeded by `seed`, so a run is a function of its
    seed. Returns (params, state, history: seconds, first / last loss, logs every 10% of the run)."""
    from tqdm import tqdm

    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, steps // 4 + 1), steps, lr * 0.05)
    opt = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, state, batch, step, key):
        (loss, (state, logs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, step, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state, loss, logs

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    start = time.perf_counter()
    curve, first = [], None
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        key, sub = jax.random.split(key)
        params, opt_state, state, loss, logs = update(params, opt_state, state, sample(rng), step, sub)
        if step == 0 or step == steps - 1 or step % max(1, steps // 10) == 0:
            loss = float(loss)
            first = loss if first is None else first
            curve.append({"step": step, "loss": round(loss, 5), **{k: round(float(v), 5) for k, v in logs.items()}})
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss} at step {step}; lower the learning rate")
    bar.close()
    return params, state, {"train_seconds": time.perf_counter() - start, "first_loss": first,
                           "last_loss": curve[-1]["loss"], "curve": curve}


def batch_apply(fn: Callable[..., jax.Array], *arrays: np.ndarray, batch: int = 1024) -> np.ndarray:
    """fn over row chunks of the arrays (numpy out), with one compiled shape: the last chunk is padded."""
    n = len(arrays[0])
    jitted = jax.jit(fn)
    out = []
    for start in range(0, n, batch):
        chunk = [a[start:start + batch] for a in arrays]
        size = len(chunk[0])
        if size < batch and n > batch:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch - size, 0)]) for c in chunk]
        out.append(np.asarray(jitted(*chunk))[:size])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------------
# Parameters <-> flat numpy arrays (stored in the codes directory's params.npz)
# ---------------------------------------------------------------------------------------------------------------
def flatten_params(params, prefix: str = "params") -> dict[str, np.ndarray]:
    from flax import traverse_util

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return {f"{prefix}/{k}": np.asarray(v) for k, v in flat.items()}


def unflatten_params(arrays: dict[str, np.ndarray], prefix: str = "params"):
    from flax import traverse_util

    flat = {k[len(prefix) + 1:]: jnp.asarray(v) for k, v in arrays.items() if k.startswith(prefix + "/")}
    return traverse_util.unflatten_dict(flat, sep="/")
