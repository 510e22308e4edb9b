"""Retrieval metric core: pure functions on similarity matrices / embeddings.

Conventions
-----------
* ``sim[i, j]`` is the score of candidate ``j`` for query ``i``; by default the ground truth of
  query ``i`` is candidate ``i`` (the diagonal), so ``N_query == N_candidate``.
* Ranks are 1-based. **Ties count against the query (pessimistic rank)**:

      rank_i = #{j : sim[i, j] >= sim[i, gt_i]}        (the ground truth itself included)
             = 1 + #{j != gt_i : sim[i, j] >= sim[i, gt_i]}

  so a ground truth tied with ``m`` other candidates is ranked below all of them. This is
  deterministic and independent of candidate order (unlike ``argsort``-based ranking, whose
  answer depends on the position of the tied candidates). NaN scores are treated as ``-inf``
  (a NaN ground-truth score therefore gets the worst rank, ``N_candidate``).
* ``R@K`` is the percentage of queries with ``rank <= K``; ``MdR`` / ``MnR`` are the median /
  mean of the 1-based ranks.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

RECALL_KS = (1, 5, 10, 50)

# Rows of the similarity matrix handled per block when ranking (bounds the boolean temporary).
_ROW_BLOCK = 2048


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||, eps)`` along ``axis`` (float64 when the input is not floating)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def retrieval_ranks(sim, targets=None) -> np.ndarray:
    """1-based pessimistic rank of each query's ground-truth candidate (see module docstring).

    Args:
      sim: ``[N_query, N_candidate]`` scores.
      targets: optional ``[N_query]`` int index of the ground-truth candidate of each query;
        default is the diagonal (``targets[i] = i``, requires a square matrix).
    Returns:
      ``[N_query]`` int64 ranks in ``[1, N_candidate]``.
    """
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f'sim must be 2-D, got shape {sim.shape}')
    n_q, n_c = sim.shape
    if targets is None:
        if n_q != n_c:
            raise ValueError(f'diagonal ground truth needs a square sim matrix, got {sim.shape}')
        targets = np.arange(n_q)
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (n_q,):
        raise ValueError(f'targets must have shape ({n_q},), got {targets.shape}')
    if n_q and (targets.min() < 0 or targets.max() >= n_c):
        raise ValueError('targets out of range')
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    ranks = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, _ROW_BLOCK):
        block = sim[start:start + _ROW_BLOCK]
        block = np.where(np.isnan(block), -np.inf, block)
        rows = np.arange(block.shape[0])
        gt = block[rows, targets[start:start + _ROW_BLOCK]]
        ranks[start:start + _ROW_BLOCK] = np.sum(block >= gt[:, None], axis=1)
    return ranks


def metrics_from_ranks(ranks, ks: Iterable[int] = RECALL_KS) -> dict[str, float]:
    """``{'R@K' (percent) for K in ks, 'MdR', 'MnR'}`` from 1-based ranks."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError('no queries')
    out = {f'R@{k}': float(100.0 * np.mean(ranks <= k)) for k in ks}
    out['MdR'] = float(np.median(ranks))
    out['MnR'] = float(np.mean(ranks))
    return out


def chance_metrics(num_candidates: int, ks: Iterable[int] = RECALL_KS) -> dict[str, float]:
    """The :func:`metrics_from_ranks` keys for a uniformly random ranking of ``num_candidates``:
    R@K = 100 min(K, N) / N, median and mean rank (N + 1) / 2."""
    n = int(num_candidates)
    if n < 1:
        raise ValueError(f'need at least one candidate, got {n}')
    out = {f'R@{k}': 100.0 * min(k, n) / n for k in ks}
    out['MdR'] = out['MnR'] = (n + 1) / 2
    return out


def retrieval_metrics(sim, *, targets=None) -> dict[str, float]:
    """R@1/5/10/50 (percent), median and mean rank (1-based, ties against the query).

    ``sim`` is ``[N_query, N_candidate]`` with the ground truth on the diagonal unless
    ``targets`` (``[N_query]`` candidate indices) is given.
    """
    return metrics_from_ranks(retrieval_ranks(sim, targets))


def cosine_similarity(a, b) -> np.ndarray:
    """``[Na, Nb]`` cosine similarities between the rows of ``a [Na, D]`` and ``b [Nb, D]``."""
    a = l2_normalize(a)
    b = l2_normalize(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f'expected [Na, D] and [Nb, D], got {a.shape} and {b.shape}')
    return a @ b.T


def text_video_retrieval(text_emb, video_emb) -> dict[str, float]:
    """Both retrieval directions from paired embeddings (text ``i`` describes video ``i``).

    Embeddings are L2-normalised here; scores are cosine similarities. Keys are the
    :func:`retrieval_metrics` keys prefixed with ``'t2v/'`` (text queries, video candidates)
    and ``'v2t/'`` (video queries, text candidates).
    """
    text_emb = np.asarray(text_emb)
    video_emb = np.asarray(video_emb)
    if text_emb.shape[0] != video_emb.shape[0]:
        raise ValueError(f'need one text per video, got {text_emb.shape[0]} texts and '
                         f'{video_emb.shape[0]} videos')
    sim = cosine_similarity(text_emb, video_emb)
    out = {f't2v/{k}': v for k, v in retrieval_metrics(sim).items()}
    out.update({f'v2t/{k}': v for k, v in retrieval_metrics(sim.T).items()})
    return out


def recall_at_k_curve(sim, ks: Iterable[int] = range(1, 101), *, targets=None) -> np.ndarray:
    """``R@K`` in percent for every ``K`` in ``ks`` (float64 array, same order as ``ks``)."""
    ranks = retrieval_ranks(sim, targets)
    ks = np.asarray(list(ks), dtype=np.int64)
    if ranks.size == 0:
        raise ValueError('no queries')
    return 100.0 * np.mean(ranks[None, :] <= ks[:, None], axis=1)
