"""Distances between queries and coded databases, and the ranking metrics of compact-code retrieval.

Distances (smaller is nearer)
-----------------------------
* Hamming ranking for binary codes: bits packed 8 to a byte (np.packbits order), distance = popcount(q XOR d),
  computed as (bits - <q, d>) / 2 on +-1 codes (a float32 matmul; exact for integer counts below 2^24).
* ADC (asymmetric distance computation) for product quantisers: the query stays a float vector, split into M
  sub-vectors; a [M, K] table per query holds its distance to every codeword, and an item's distance is the sum of
  its M table entries. `metric="l2"`: squared Euclidean (PQ, OPQ); `metric="ip"`: minus the inner product (the
  learned quantisers, trained with cosine / inner-product scores).

Ties
----
Binary codes tie often (16 bits give 17 possible distances). `ties="index"` (the default) breaks them by database
position, as the published hashing evaluations do (a stable argsort); on a database in random order that is a
random tie-break. `ties="pessimistic"` puts, within a group of equal distances, every irrelevant item before every
relevant one (the lowest score a tie-break can give; it does not depend on database order).

mAP@K
-----
Relevance: same class id ([N] labels) or at least one shared class (multi-hot [N, C]). With rel(k) = 1 when the
k-th ranked item is relevant and P(k) the precision of the top k, AP@K = sum_{k<=K} P(k) rel(k) / Z with
`ap_norm` choosing Z:
    "retrieved" (default)  Z = relevant items in the top K (the usual hashing mAP@K; AP@K = 0 when there are none);
    "min"                  Z = min(K, relevant items in the whole database);
    "ssvh"                 Z = K, as SSVH's evaluation code does (so AP@K <= (relevant in top K) / K).
K = "all" is the whole database; there "retrieved" and "min" coincide with the standard AP. A query with no
relevant item in the database has AP = 0 under every normalisation (it still counts in the mean).
precision@K = relevant items in the top K / K.

R@K (text to video) is the percentage of text queries whose paired video ranks within the top K; the rank follows
the same tie rule (`pessimistic`: every video at the same distance as the paired one ranks before it, as
tvts.evaluators.retrieval does).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAP_KS: tuple[int | str, ...] = (5, 20, 100, 1000, "all")
RECALL_KS = (1, 5, 10, 50)
AP_NORMS = ("retrieved", "min", "ssvh")
TIES = ("index", "pessimistic")
_BLOCK = 512  # query rows per block (bounds the [block, N] temporaries)


# ---------------------------------------------------------------------------------------------------------------
# Codes and distances
# ---------------------------------------------------------------------------------------------------------------
def pack_bits(signs: np.ndarray) -> np.ndarray:
    """[N, bits] of +-1 (or any sign) -> uint8 [N, ceil(bits / 8)]: bit = 1 where the value is > 0."""
    return np.packbits(np.asarray(signs) > 0, axis=-1)


def unpack_signs(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [N, bytes] -> float32 [N, bits] of +-1."""
    return np.unpackbits(packed, axis=-1, count=bits).astype(np.float32) * 2 - 1


def hamming_distances(query_codes: np.ndarray, database_codes: np.ndarray, bits: int) -> np.ndarray:
    """float32 [Q, N] Hamming distances between packed codes."""
    q, d = unpack_signs(query_codes, bits), unpack_signs(database_codes, bits)
    return (bits - q @ d.T) * np.float32(0.5)


def adc_tables(queries: np.ndarray, codebooks: np.ndarray, metric: str) -> np.ndarray:
    """float32 [Q, M, K]: each query sub-vector's distance to every codeword (codebooks [M, K, d_sub])."""
    m, k, ds = codebooks.shape
    q = np.asarray(queries, np.float32).reshape(len(queries), m, ds)
    ip = np.einsum("qmd,mkd->qmk", q, codebooks)
    if metric == "ip":
        return -ip
    if metric == "l2":
        return (q * q).sum(-1)[..., None] - 2 * ip + (codebooks * codebooks).sum(-1)[None]
    raise ValueError(f"metric {metric!r}; use 'l2' or 'ip'")


def adc_distances(queries: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, metric: str) -> np.ndarray:
    """float32 [Q, N]: sum over sub-spaces m of table[q, m, codes[n, m]]."""
    tables = adc_tables(queries, codebooks, metric)
    codes = np.asarray(codes, np.int64)
    out = np.zeros((len(queries), len(codes)), np.float32)
    for m in range(codebooks.shape[0]):
        out += tables[:, m, codes[:, m]]
    return out


def decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """[N, M] codeword ids -> [N, M * d_sub] reconstructions."""
    m = codebooks.shape[0]
    return np.concatenate([codebooks[i][codes[:, i]] for i in range(m)], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Rankings and metrics
# ---------------------------------------------------------------------------------------------------------------
def relevance(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """bool [Q, N]: same class id, or at least one class in common (multi-hot)."""
    if query_labels.ndim == 1:
        return query_labels[:, None] == database_labels[None, :]
    return (query_labels.astype(np.float32) @ database_labels.astype(np.float32).T) > 0


def rank_order(distances: np.ndarray, relevant: np.ndarray | None = None, ties: str = "index") -> np.ndarray:
    """int [Q, N]: database indices nearest first. Ties as in the module docstring ('pessimistic' needs
    `relevant`)."""
    if ties == "index":
        return np.argsort(distances, axis=1, kind="stable")
    if ties != "pessimistic":
        raise ValueError(f"ties={ties!r}; use one of {TIES}")
    if relevant is None:
        raise ValueError("ties='pessimistic' needs the relevance matrix")
    order = np.empty(distances.shape, np.int64)
    for i in range(len(distances)):  # np.lexsort sorts by the last key first: distance, then irrelevant first
        order[i] = np.lexsort((relevant[i].astype(np.int8), distances[i]))
    return order


def _k_value(k: int | str, n: int) -> int:
    return n if k == "all" else min(int(k), n)


def ranking_metrics(distances: np.ndarray, relevant: np.ndarray, ks: Sequence[int | str] = MAP_KS,
                    ap_norm: str = "retrieved", ties: str = "index") -> dict[str, float]:
    """{'mAP@K', 'P@K'} for K in ks ('all' = the whole database), averaged over queries (module docstring)."""
    if ap_norm not in AP_NORMS:
        raise ValueError(f"ap_norm={ap_norm!r}; use one of {AP_NORMS}")
    q, n = distances.shape
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("mAP", "P")}
    for start in range(0, q, _BLOCK):
        dist, rel = distances[start:start + _BLOCK], relevant[start:start + _BLOCK]
        order = rank_order(dist, rel, ties)
        hits = np.take_along_axis(rel, order, axis=1).astype(np.float64)  # [b, N] rel(k) in rank order
        cum = np.cumsum(hits, axis=1)
        prec_at = cum / np.arange(1, n + 1)
        total_relevant = hits.sum(1)
        for k in ks:
            kk = _k_value(k, n)
            found = cum[:, kk - 1]
            numerator = (prec_at[:, :kk] * hits[:, :kk]).sum(1)
            z = {"retrieved": found, "min": np.minimum(kk, total_relevant), "ssvh": np.full_like(found, kk)}[ap_norm]
            ap = np.divide(numerator, z, out=np.zeros_like(numerator), where=z > 0)
            sums[f"mAP@{k}"] += float(ap.sum())
            sums[f"P@{k}"] += float((found / kk).sum())
    return {key: value / q for key, value in sums.items()}


def paired_ranks(distances: np.ndarray, targets: np.ndarray | None = None, ties: str = "index") -> np.ndarray:
    """1-based rank of each query's paired item (default: item i for query i) under the tie rule."""
    q = distances.shape[0]
    targets = np.arange(q) if targets is None else np.asarray(targets)
    gt = distances[np.arange(q), targets][:, None]
    closer = (distances < gt).sum(1)
    if ties == "pessimistic":
        return closer + (distances == gt).sum(1)
    if ties == "index":
        earlier_tied = ((distances == gt) & (np.arange(distances.shape[1])[None] < targets[:, None])).sum(1)
        return closer + earlier_tied + 1
    raise ValueError(f"ties={ties!r}; use one of {TIES}")


def recall_metrics(distances: np.ndarray, targets: np.ndarray | None = None, ks: Sequence[int] = RECALL_KS,
                   ties: str = "index") -> dict[str, float]:
    """{'R@K'} in percent, plus the median rank 'MdR'."""
    ranks = paired_ranks(distances, targets, ties)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MdR"] = float(np.median(ranks))
    return out


def cosine_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """float32 [Q, N]: 1 - cosine similarity (the float features' reference ranking)."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (1.0 - unit(np.asarray(queries, np.float32)) @ unit(np.asarray(database, np.float32)).T).astype(np.float32)
