"""Feature files (.npz) for compact codes: reading, checking, and the views each method needs.

Keys read (any other key, e.g. tvts.extract's `paths` or `meta`, is carried along and ignored):
    embeddings        [N, D] one vector per item, or [N, T, D] per frame / per token (then the vector is the mean)
    frame_embeddings  [N, T, D] per frame (tvts.extract --per_frame)
    clip_embeddings   [N, K, D] per clip (tvts.extract --clips K)
    token_embeddings  [N, P, D] per token (the video tokens of a backbone)
    depth_<i>         [N, T_i, D_i] features from depth i of the backbone (i = 0 shallowest); PHPQ's pyramid
    labels            [N] int, or [N, C] multi-hot (0/1)
    texts             [N, D] one text per item, or [N, L, D] per text token (then the text vector is the mean)
    text_tokens       [N, L, D] per text token (fine-grained text for HCQ)

Everything is checked when the file is read, before any training: a missing `embeddings`, an item count that
differs between keys, a feature width that differs between video and text, a label array of the wrong shape, and
any NaN or infinity each raise `FeatureFileError` naming the file and the problem. Method-specific needs (per-frame
features for ConMH, texts for HCQ, labels for PHPQ, enough items for 256 codewords) are checked by `require_*`
before a method starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

SEQUENCE_KEYS = ("frame_embeddings", "token_embeddings", "clip_embeddings")  # per-frame sources, preferred first
FLOAT_KEYS = ("embeddings", *SEQUENCE_KEYS, "texts", "text_tokens")


class FeatureFileError(ValueError):
    """A feature file that cannot be used; the message names the file and the problem."""


@dataclass
class Features:
    """The arrays of one feature file, checked. `vectors` is always [N, D] float32."""

    path: str
    vectors: np.ndarray  # [N, D]
    sequence: np.ndarray | None = None  # [N, T, D] per frame / token / clip, if the file has any
    sequence_key: str | None = None
    labels: np.ndarray | None = None  # [N] int or [N, C] int8 multi-hot
    texts: np.ndarray | None = None  # [N, D] text vectors
    text_sequence: np.ndarray | None = None  # [N, L, D] text tokens
    tokens: np.ndarray | None = None  # [N, P, D] video tokens (token_embeddings), for HCQ's fine-grained video side
    depths: list[np.ndarray] = field(default_factory=list)  # [N, T_i, D_i], shallowest first
    sequences: dict[str, np.ndarray] = field(default_factory=dict)  # every per-frame / clip / token array present

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def fail(self, problem: str) -> FeatureFileError:
        return FeatureFileError(f"{self.path}: {problem}")

    # -- what methods need: each fails with the file's name before training starts --------------------------------
    def require_sequence(self, method: str, min_length: int = 2) -> np.ndarray:
        if self.sequence is None or self.sequence.shape[1] < min_length:
            have = "none" if self.sequence is None else f"{self.sequence_key} with {self.sequence.shape[1]} per item"
            raise self.fail(f"{method} needs per-frame features (embeddings [N, T, D] or one of {SEQUENCE_KEYS}) with "
                            f"T >= {min_length}; found {have} (write them with python -m tvts.extract --per_frame)")
        return self.sequence

    def require_labels(self, method: str) -> np.ndarray:
        if self.labels is None:
            raise self.fail(f"{method} is supervised and needs 'labels' ([N] int or [N, C] multi-hot)")
        return self.labels

    def require_texts(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(text vectors [N, D], text tokens [N, L, D])."""
        if self.texts is None or self.text_sequence is None:
            raise self.fail(f"{method} needs token-level text features ('texts' [N, L, D] or 'text_tokens' [N, L, D])"
                            f"{'' if self.texts is not None else ' and has no texts at all'}")
        return self.texts, self.text_sequence

    def require_items(self, method: str, count: int, why: str) -> None:
        if len(self) < count:
            raise self.fail(f"{len(self)} items are too few for {method}: it needs at least {count} ({why})")


def _check_finite(path: str, key: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(a.shape[0], -1))[0])
        kinds = "NaN" if np.isnan(a).any() else "infinite values"
        raise FeatureFileError(f"{path}: '{key}' holds {kinds} in {len(rows)} of {a.shape[0]} items "
                               f"(first: item {int(rows[0])})")


def from_arrays(arrays: dict[str, np.ndarray], path: str = "<arrays>") -> Features:
    """Checks a dict of arrays (a loaded .npz) and returns its Features; raises FeatureFileError."""
    if "embeddings" not in arrays:
        raise FeatureFileError(f"{path}: no 'embeddings' key (found: {', '.join(sorted(arrays)) or 'nothing'}); a "
                               f"feature file needs embeddings [N, D] or [N, T, D] (python -m tvts.extract writes it)")
    for key in FLOAT_KEYS + tuple(k for k in arrays if k.startswith("depth_")):
        if key in arrays:
            a = np.asarray(arrays[key])
            if not np.issubdtype(a.dtype, np.number):
                raise FeatureFileError(f"{path}: '{key}' has dtype {a.dtype}, expected floating point numbers")
            _check_finite(path, key, a)
    emb = np.asarray(arrays["embeddings"], np.float32)
    if emb.ndim not in (2, 3) or emb.shape[0] == 0 or emb.shape[-1] == 0:
        raise FeatureFileError(f"{path}: 'embeddings' has shape {emb.shape}, expected [N, D] or [N, T, D] with "
                               f"N, D > 0")
    n, d = emb.shape[0], emb.shape[-1]

    def checked(key: str, ndims: tuple[int, ...], width: int | None = d) -> np.ndarray | None:
        if key not in arrays:
            return None
        a = np.asarray(arrays[key], np.float32)
        if a.ndim not in ndims or a.shape[0] != n or (width is not None and a.shape[-1] != width):
            want = " or ".join(f"[{', '.join(['N'] + ['T'] * (k - 2) + ['D'])}]" for k in ndims)
            raise FeatureFileError(f"{path}: '{key}' has shape {a.shape}, expected {want} with N = {n} items and "
                                   f"D = {width} (the width of 'embeddings')" if width else
                                   f"{path}: '{key}' has shape {a.shape}, expected {want} with N = {n} items")
        if a.ndim == 3 and a.shape[1] == 0:
            raise FeatureFileError(f"{path}: '{key}' has no frames or tokens (shape {a.shape})")
        return a

    seqs = {k: checked(k, (3,)) for k in SEQUENCE_KEYS}
    sequence, sequence_key = (emb, "embeddings") if emb.ndim == 3 else (None, None)
    for k in SEQUENCE_KEYS:
        if sequence is None and seqs[k] is not None:
            sequence, sequence_key = seqs[k], k
    vectors = emb.mean(1) if emb.ndim == 3 else emb

    texts = checked("texts", (2, 3))
    text_tokens = checked("text_tokens", (3,))
    text_sequence = text_tokens if text_tokens is not None else (texts if texts is not None and texts.ndim == 3
                                                                 else None)
    text_vectors = None if texts is None else (texts.mean(1) if texts.ndim == 3 else texts)

    depth_keys = sorted((k for k in arrays if k.startswith("depth_")), key=lambda k: (len(k), k))
    depths = [checked(k, (2, 3), None) for k in depth_keys]
    depths = [a[:, None] if a.ndim == 2 else a for a in depths]

    labels = None
    if "labels" in arrays:
        labels = np.asarray(arrays["labels"])
        if labels.shape[:1] != (n,) or labels.ndim not in (1, 2):
            raise FeatureFileError(f"{path}: 'labels' has shape {labels.shape}, expected [{n}] (class ids) or "
                                   f"[{n}, C] (multi-hot), one row per item of 'embeddings'")
        if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
            if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
                raise FeatureFileError(f"{path}: 'labels' must be integers (class ids or 0/1), got {labels.dtype} "
                                       f"values that are not whole numbers")
        labels = labels.astype(np.int64) if labels.ndim == 1 else (labels != 0).astype(np.int8)
        if labels.ndim == 1 and labels.min() < 0:
            raise FeatureFileError(f"{path}: 'labels' holds negative class ids (min {labels.min()})")
    sequences = {k: v for k, v in (("embeddings", emb if emb.ndim == 3 else None), *seqs.items()) if v is not None}
    return Features(path, vectors, sequence, sequence_key, labels, text_vectors, text_sequence,
                    seqs["token_embeddings"], depths, sequences)


def load(path: str) -> Features:
    """Reads and checks a feature file (see the module docstring); raises FeatureFileError naming `path`."""
    if not os.path.exists(path):
        raise FeatureFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # a truncated or non-npz file
        raise FeatureFileError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    return from_arrays(arrays, path)


def check_compatible(train_dim: int, feats: Features, what: str) -> None:
    """Queries and database must have the width the codes were trained on."""
    if feats.dim != train_dim:
        raise feats.fail(f"{what} features have width D = {feats.dim}, but the codes were trained on D = {train_dim}")
