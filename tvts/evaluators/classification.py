"""Zero-shot recognition and multiple-choice metric cores (pure NumPy, model independent).

All scores are cosine similarities of L2-normalised embeddings. Top-k uses the same
pessimistic tie convention as :mod:`tvts.evaluators.retrieval`: the true class's rank is the
number of classes whose score is ``>=`` its own score (itself included), and a sample is
top-k correct iff that rank is ``<= k``. So a true class tied with another class for first
place is *not* top-1 correct. Results never depend on class order. NaN scores count as
``-inf``.
"""
from __future__ import annotations

import numpy as np

from tvts.evaluators.retrieval import l2_normalize


def _true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based pessimistic rank of ``labels[i]`` in row ``scores[i]``."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    true = np.take_along_axis(scores, labels[:, None], axis=1)
    return np.sum(scores >= true, axis=1)


def average_views(emb) -> np.ndarray:
    """Multi-view / multi-prompt pooling: ``[..., V, D] -> [..., D]``.

    Each view embedding is L2-normalised, the views are averaged, and the mean is
    renormalised.
    """
    emb = np.asarray(emb)
    if emb.ndim < 2:
        raise ValueError(f'expected [..., V, D], got shape {emb.shape}')
    return l2_normalize(np.mean(l2_normalize(emb), axis=-2))


def class_embeddings(class_emb) -> np.ndarray:
    """``[C, D]`` (normalised) or ``[C, P, D]`` (P prompts, averaged by :func:`average_views`)."""
    class_emb = np.asarray(class_emb)
    if class_emb.ndim == 3:
        return average_views(class_emb)
    if class_emb.ndim == 2:
        return l2_normalize(class_emb)
    raise ValueError(f'class_emb must be [C, D] or [C, P, D], got shape {class_emb.shape}')


def zero_shot_classify(video_emb, class_emb, labels, logit_scale: float = 100.0, *,
                       return_logits: bool = False) -> dict:
    """Zero-shot recognition accuracy.

    Args:
      video_emb: ``[N, D]`` video embeddings (normalised here).
      class_emb: ``[C, D]`` class-name embeddings, or ``[C, P, D]`` with ``P`` prompt templates
        per class (each prompt normalised, averaged, renormalised).
      labels: ``[N]`` int true class indices.
      logit_scale: logits are ``logit_scale * cosine`` (does not change the accuracies).
      return_logits: also return the ``[N, C]`` logits under ``'logits'``.
    Returns:
      ``{'top1': percent, 'top5': percent (only when C >= 5)}`` (+ ``'logits'``).
    """
    video = l2_normalize(video_emb)
    classes = class_embeddings(class_emb)
    labels = np.asarray(labels, dtype=np.int64)
    if video.ndim != 2 or video.shape[1] != classes.shape[1]:
        raise ValueError(f'video_emb {video.shape} incompatible with class_emb {classes.shape}')
    if labels.shape != (video.shape[0],):
        raise ValueError(f'labels must have shape ({video.shape[0]},), got {labels.shape}')
    n_classes = classes.shape[0]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError('labels out of range')
    logits = logit_scale * (video @ classes.T)
    rank = _true_class_rank(logits, labels)
    out = {'top1': float(100.0 * np.mean(rank <= 1))}
    if n_classes >= 5:
        out['top5'] = float(100.0 * np.mean(rank <= 5))
    if return_logits:
        out['logits'] = logits
    return out


def multiple_choice(video_emb, option_emb, answer) -> dict:
    """Per-video multiple choice (e.g. SSv2-MC): argmax cosine over that video's options.

    Args:
      video_emb: ``[N, D]``.
      option_emb: ``[N, K, D]``, the ``K`` candidate texts of each video.
      answer: ``[N]`` int index of the correct option.
    Returns:
      ``{'accuracy': percent}``; an answer tied with another option for the best score counts
      as wrong.
    """
    video = l2_normalize(video_emb)
    options = l2_normalize(option_emb)
    answer = np.asarray(answer, dtype=np.int64)
    if options.ndim != 3 or video.ndim != 2 or options.shape[0] != video.shape[0] \
            or options.shape[2] != video.shape[1]:
        raise ValueError(f'expected video [N, D] and options [N, K, D], got {video.shape} and '
                         f'{options.shape}')
    if answer.shape != (video.shape[0],):
        raise ValueError(f'answer must have shape ({video.shape[0]},), got {answer.shape}')
    if answer.size and (answer.min() < 0 or answer.max() >= options.shape[1]):
        raise ValueError('answer out of range')
    scores = np.einsum('nd,nkd->nk', video, options)
    rank = _true_class_rank(scores, answer)
    return {'accuracy': float(100.0 * np.mean(rank <= 1))}
