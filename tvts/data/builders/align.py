"""Align YT-Temporal's cleaned ASR (``denoised[].cleanasr``) back to its timed words, as the official loader.

The official TVTSv2 loader (``v2/data_loader/YTTemporal_dataset.py:97-108``) splits every
``denoised[i]['cleanasr']`` on single spaces (after ftfy), concatenates them, and aligns that word list to the
timed words with ``align_using_dtw`` (``v2/base/base_dataset_yt.py:439-485``): a cost matrix of character edit
distances between the words lower-cased and stripped of punctuation, inside a band of
``max(0.1 * len(timed), 32)`` words around the diagonal (9999 outside), the cleaned list cut to
``len(timed) + radius`` words when longer; tslearn's ``dtw_path_from_metric(metric='precomputed')`` (plain DTW:
``acc[i, j] = cost[i, j] + min(acc[i-1, j], acc[i, j-1], acc[i-1, j-1])``, the path traced back from the last
cell taking the first minimum of (diagonal, up, left)); then walking the path, each cleaned word is given to the
first timed word it is matched with. A timed word gets the space-joined cleaned words given to it: one word,
several, or ``''``. This module reimplements that without tslearn / editdistance (same path, same ties).
"""
from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

__all__ = ['align_using_dtw', 'dtw_path', 'edit_distances', 'split_cleanasr']

_PUNCT = str.maketrans('', '', string.punctuation)
_OUTSIDE = 9999.0


def split_cleanasr(denoised: Sequence[str]) -> list[str]:
    """The cleaned word list: each segment split on single spaces (as the official loader), concatenated."""
    words: list[str] = []
    for text in denoised:
        words += text.split(' ')
    return words


def _preprocess(x: str) -> str:
    return x.translate(_PUNCT).strip().lower()


def edit_distances(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Levenshtein distances between ``a[k]`` and ``b[k]`` for all k (characters; batched in NumPy)."""
    n = len(a)
    out = np.zeros(n, np.int64)
    if n == 0:
        return out
    la = np.array([len(x) for x in a])
    lb = np.array([len(x) for x in b])
    ma, mb = int(la.max(initial=0)), int(lb.max(initial=0))
    if ma == 0 or mb == 0:
        return np.maximum(la, lb)

    def codes(words, width):
        arr = np.full((len(words), width), -1, np.int64)
        for k, w in enumerate(words):
            if w:
                arr[k, :len(w)] = np.frombuffer(w.encode('utf-32-le'), np.uint32)
        return arr

    ca, cb = codes(a, ma), codes(b, mb)
    prev = np.broadcast_to(np.arange(mb + 1), (n, mb + 1)).copy()
    out = lb.copy()                      # rows with len(a) == 0
    for i in range(1, ma + 1):
        cur = np.empty_like(prev)
        cur[:, 0] = i
        sub = prev[:, :-1] + (ca[:, i - 1:i] != cb)      # substitution (or match) into column j
        dele = prev[:, 1:] + 1
        best = np.minimum(sub, dele)
        # insertion runs along the row: cur[j] = min(best[j], cur[j-1] + 1) -> prefix min of best - j
        j = np.arange(1, mb + 1)
        run = np.minimum.accumulate(np.concatenate([cur[:, :1], best - j], axis=1), axis=1)
        cur[:, 1:] = run[:, 1:] + j
        done = la == i
        if done.any():
            out[done] = cur[done, lb[done]]
        prev = cur
    return out


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """tslearn's ``dtw_path_from_metric(cost, metric='precomputed')`` path (no global constraint)."""
    n, m = cost.shape
    cost = np.asarray(cost, np.float64)
    # direction of each cell's predecessor on the traced path: 0 diagonal, 1 up (i-1, j), 2 left (i, j-1)
    dirs = np.empty((n, m), np.uint8)
    prev = None
    j = np.arange(m)
    for i in range(n):
        d = cost[i]
        if prev is None:
            row = np.cumsum(d)                      # only left moves in the first row
            dirs[0, :] = 2
        else:
            a = np.minimum(prev, np.concatenate([[np.inf], prev[:-1]]))   # min(up, diagonal)
            # row[j] = d[j] + min(a[j], row[j-1]); exact in float64 for integer costs
            csum = np.cumsum(d)
            row = csum + np.minimum.accumulate(a - (csum - d))
            # predecessor chosen when tracing back: first minimum of (diagonal, up, left) -- tslearn order
            diag = np.concatenate([[np.inf], prev[:-1]])
            left = np.concatenate([[np.inf], row[:-1]])
            dirs[i] = np.argmin(np.stack([diag, prev, left]), axis=0).astype(np.uint8)
            dirs[i, 0] = 1
        prev = row
    del j
    path = [(n - 1, m - 1)]
    i, k = n - 1, m - 1
    while (i, k) != (0, 0):
        if i == 0:
            k -= 1
        elif k == 0:
            i -= 1
        else:
            step = dirs[i, k]
            if step == 0:
                i, k = i - 1, k - 1
            elif step == 1:
                i -= 1
            else:
                k -= 1
        path.append((i, k))
    return path[::-1]


def align_using_dtw(input_asr: Sequence[str], grover_output: Sequence[str], radius_perc: float = 0.1,
                    radius_abs: int = 32) -> list[str]:
    """For each timed word of ``input_asr``, the cleaned words of ``grover_output`` aligned to it (joined by
    spaces; '' when none). Same result as the official ``align_using_dtw``."""
    n = len(input_asr)
    if n == 0:
        return []
    max_radius = int(max(n * radius_perc, radius_abs))
    grover_output = list(grover_output)
    if len(grover_output) > n:
        grover_output = grover_output[:n + max_radius]
    m = len(grover_output)
    if m == 0:
        return [''] * n
    a_pre = [_preprocess(x) for x in input_asr]
    g_pre = [_preprocess(x) for x in grover_output]
    cost = np.full((n, m), _OUTSIDE)
    rows, cols = [], []
    for i in range(n):
        lo, hi = max(i - max_radius, 0), min(i + max_radius, m)
        if hi > lo:
            rows.append(np.full(hi - lo, i))
            cols.append(np.arange(lo, hi))
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
        # distinct word pairs only
        vocab: dict[str, int] = {}
        ia = np.array([vocab.setdefault(w, len(vocab)) for w in a_pre])
        ig = np.array([vocab.setdefault(w, len(vocab)) for w in g_pre])
        words = list(vocab)
        pair = ia[r] * len(words) + ig[c]
        uniq, inv = np.unique(pair, return_inverse=True)
        ua, ub = uniq // len(words), uniq % len(words)
        dist = edit_distances([words[x] for x in ua], [words[x] for x in ub])
        cost[r, c] = dist[inv]
    denoised_out: list[list[str]] = [[] for _ in range(n)]
    has_seen = -1
    for i, k in dtw_path(cost):
        if k > has_seen:
            denoised_out[i].append(grover_output[k])
        has_seen = k
    return [' '.join(x) for x in denoised_out]
