"""Downstream benchmarks on the built TFDS datasets (docs/evaluation.md), for any `Encoders` (a trainer's
ModelEncoders or an exported backbone):

    python -m tvts.evaluate --backbone BACKBONE_DIR --task TASK --data_dir TFDS_DIR --out RESULTS_DIR

TASKS: `{msrvtt,didemo,lsmdc}_retrieval` (text<->video R@1/5/10/50, MdR, MnR), `{ucf101,hmdb51,kinetics400}_zeroshot`
(top-1/top-5 with prompt templates), `{ucf101,hmdb51,kinetics400}_linear` (logistic-regression probe on frozen
features), `{ucf101,hmdb51}_v2v` (test queries against the train gallery, hit = same class, R@1/5/10/20) and
`ssv2_mc` (each video against its own options, accuracy). Kinetics-400 is tested on its val split and SSv2 on its
validation split, as published.

Frames: `spec.num_frames` at the segment midpoints (the published test sampling), the short side resized to
round(image_size * 268 / 224), then the centre image_size crop: one view, as published. `clips` x `crops` views
(the video cut into `clips` equal parts, each sampled at its segment midpoints; 3 crops along the long side) are
embedded separately and averaged (each normalised, averaged, renormalised). A video that cannot be read is
reported and counted: its embedding is NaN, which ranks it last everywhere (a miss as a query, never retrieved as a
candidate, a wrong answer).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvts.evaluators.common import Evaluator

# task -> (kind, dataset)
TASKS: dict[str, tuple[str, str]] = {
    "msrvtt_retrieval": ("retrieval", "msrvtt"),
    "didemo_retrieval": ("retrieval", "didemo"),
    "lsmdc_retrieval": ("retrieval", "lsmdc"),
    "ucf101_zeroshot": ("zeroshot", "ucf101"),
    "hmdb51_zeroshot": ("zeroshot", "hmdb51"),
    "ucf101_linear": ("linear", "ucf101"),
    "hmdb51_linear": ("linear", "hmdb51"),
    "ucf101_v2v": ("v2v", "ucf101"),
    "hmdb51_v2v": ("v2v", "hmdb51"),
    "kinetics400_zeroshot": ("zeroshot", "kinetics400"),
    "kinetics400_linear": ("linear", "kinetics400"),
    "ssv2_mc": ("mc", "ssv2"),
}
# the split each dataset is tested on (Kinetics-400: val, v2/data_loader/K400_dataset.py:16-19; SSv2-MC: the
# validation videos, v2/data_loader/SSV2_mc_dataset.py:17-21); the others' is 'test'
TEST_SPLITS = {"kinetics400": "val", "ssv2": "validation"}
TEMPLATE = "a person {}"  # the published zero-shot template
# An optional ensemble (`templates="ensemble"`), in the style of CLIP's video-action prompts.
ENSEMBLE_TEMPLATES = ("a person {}", "a video of a person {}", "a photo of a person {}", "a person is {}",
                      "a video of {}", "a clip of a person doing {}", "a person performing {}",
                      "an example of a person {}")
V2V_KS = (1, 5, 10, 20)
RESIZE_RATIO = 268 / 224
FEATURE_VERSION = 2  # bump when the frame sampling or resizing changes (invalidates cached features)


# ---------------------------------------------------------------------------------------------------------------
# Class names, frames
# ---------------------------------------------------------------------------------------------------------------
def phrase(name: str) -> str:
    """A dataset class name as words: 'ApplyEyeMakeup' -> 'apply eye makeup', 'brush_hair' -> 'brush hair',
    'YoYo' -> 'yo yo', 'TVShow' -> 'tv show'."""
    s = name.replace("_", " ").replace("-", " ")
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", s)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", s)
    return " ".join(s.lower().split())


def class_phrases(names: Sequence[str], overrides: dict[str, str] | str | None = None) -> list[str]:
    """phrase() of each class, except those in `overrides` ({class: phrase}, or the path of a JSON file of it)."""
    if isinstance(overrides, str) and overrides:
        with open(overrides) as f:
            overrides = json.load(f)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"class-name overrides for unknown classes: {unknown[:5]}")
    return [overrides.get(n, phrase(n)) for n in names]


def midpoint_indices(n_frames: int, num_frames: int) -> np.ndarray:
    """The published test sampling (TVTS v2/base/base_dataset.py:111-112): cut [0, n) into num_frames segments at
    linspace(0, n, num_frames + 1).astype(int) and take each segment's middle frame ((start + end - 1) // 2)."""
    if n_frames < 1:
        raise ValueError("no frames")
    edges = np.linspace(0, n_frames, num_frames + 1).astype(int)
    mids = (edges[:-1] + edges[1:] - 1) // 2
    return np.clip(mids, 0, n_frames - 1)


def clip_midpoints(n_frames: int, num_frames: int, clips: int = 1) -> np.ndarray:
    """[clips, num_frames]: [0, n) cut into `clips` equal parts, each sampled at its segment midpoints
    (clips=1: midpoint_indices)."""
    edges = np.linspace(0, n_frames, clips + 1).astype(int)
    return np.stack([lo + midpoint_indices(max(hi - lo, 1), num_frames) for lo, hi in zip(edges[:-1], edges[1:])])


def eval_crops(frame: np.ndarray, size: int, crops: int = 1) -> list[np.ndarray]:
    """uint8 [h, w, 3] -> `crops` x [size, size, 3]: short side to round(size * 268 / 224) (bilinear), then the
    centre crop (crops=1) or the start, centre and end crops along the long side (crops=3)."""
    from PIL import Image

    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    short = int(round(size * RESIZE_RATIO))
    image = Image.fromarray(frame)
    w, h = image.size
    nw, nh = (short, max(short, int(round(short * h / w)))) if w <= h else (max(short, int(round(short * w / h))),
                                                                              short)
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    along = [(left, top)] if crops == 1 else (
        [(0, top), (left, top), (nw - size, top)] if nw >= nh else [(left, 0), (left, top), (left, nh - size)])
    return [np.asarray(image.crop((x, y, x + size, y + size))) for x, y in along]


def eval_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [h, w, 3] -> [size, size, 3]: short side to round(size * 268 / 224) (bilinear), centre crop."""
    return eval_crops(frame, size, 1)[0]


def load_frames(data: bytes, num_frames: int, size: int, clips: int = 1, crops: int = 1) -> np.ndarray:
    """A video file's bytes -> uint8 [num_frames, size, size, 3] at the segment midpoints (one view), or
    [clips * crops, num_frames, size, size, 3] when there are several views. Raises when unreadable."""
    from tvts.data.video_io import sample_frames

    _, idx, frames = sample_frames(data, lambda n: clip_midpoints(n, num_frames, clips),
                                   lambda f: np.stack(eval_crops(f, size, crops)))
    views = np.stack([np.stack([frames[int(i)] for i in row], axis=1) for row in idx])  # [clips, crops, T, ...]
    views = views.reshape(-1, *views.shape[2:])
    return views[0] if len(views) == 1 else views


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------
def _s(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def normalize_config(dataset: str, split: Any, kind: str = "") -> str | None:
    """ucf101/hmdb51: 1, '2', 'split3' -> 'split1'.. (default split1); ssv2: 'mc' for multiple choice, else
    'labels'; the other datasets have none."""
    if dataset == "ssv2":
        return "mc" if kind == "mc" else "labels"
    if dataset not in ("ucf101", "hmdb51"):
        return None
    s = str(split if split not in (None, "") else 1)
    s = s[len("split"):] if s.startswith("split") else s
    if s not in ("1", "2", "3"):
        raise ValueError(f"{dataset}: split {split!r}; use 1, 2 or 3")
    return f"split{s}"


def open_split(data_dir: str, dataset: str, config: str | None, split: str):
    """(data source, builder info) of a built split."""
    import tensorflow_datasets as tfds

    import tvts.data.builders  # noqa: F401  (registers the names before tfds looks them up)

    name = dataset if config is None else f"{dataset}/{config}"
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{name} is not built under {data_dir} (python -m tvts.data.build {dataset} "
                                f"--manual_dir DIR --data_dir {data_dir})")
    return builder.as_data_source(split), builder.info


@dataclass
class Items:
    """One split's videos: ids, labels or captions, and their embeddings (NaN rows = unreadable)."""
    ids: list[str]
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    captions: list[list[str]] | None = None
    options: list[list[str]] | None = None
    answers: np.ndarray | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)


def _batches(n: int, batch: int):
    for start in range(0, n, batch):
        yield np.arange(start, min(start + batch, n))


def encode_videos(encoders, examples: Callable[[int], dict], n: int, *, batch: int = 16, workers: int = 2,
                  spec=None, clips: int = 1, crops: int = 1) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Embeds n videos (examples(i)['video'] = file bytes) in fixed-size batches (the last padded, so programs
    compile once); with several views (clips x crops) a video's embedding is their average_views. Returns
    ([n, E] float32 with NaN rows for unreadable videos, [(index, reason)])."""
    from tvts.evaluators.classification import average_views

    spec = spec or encoders.spec
    t, s, views = int(spec.num_frames), int(spec.image_size), int(clips) * int(crops)

    def load(i):
        try:
            return load_frames(examples(i)["video"], t, s, clips, crops).reshape(views, t, s, s, 3), None
        except Exception as e:  # noqa: BLE001  (any decode failure: reported and counted)
            return None, f"{type(e).__name__}: {e}"[:200]

    out, failed = None, []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for idx in _batches(n, batch):
            loaded = list(pool.map(load, idx))
            x = np.zeros((batch, views, t, s, s, 3), np.uint8)
            for k, (frames, err) in enumerate(loaded):
                if err is None:
                    x[k] = frames
                else:
                    failed.append((int(idx[k]), err))
            emb = np.asarray(encoders.encode_video(x.reshape(batch * views, t, s, s, 3)), np.float32)
            emb = emb.reshape(batch, views, -1)[:len(idx)]
            emb = emb[:, 0] if views == 1 else average_views(emb.astype(np.float64)).astype(np.float32)
            if out is None:
                out = np.full((n, emb.shape[1]), np.nan, np.float32)
            out[idx] = emb
            for k, (_, err) in enumerate(loaded):
                if err is not None:
                    out[idx[k]] = np.nan
    if out is None:
        raise ValueError("empty split")
    return out, failed


def encode_texts(encoders, texts: Sequence[str], *, batch: int = 16, spec=None) -> np.ndarray:
    from tvts.data.tokenizer import tokenizer_for_spec

    spec = spec or encoders.spec
    tok = tokenizer_for_spec(spec, getattr(encoders, "directory", None))  # the spec's: CLIP BPE or WordPiece
    out = []
    for idx in _batches(len(texts), batch):
        tokens = np.zeros((batch, int(spec.context_length)), np.int32)
        tokens[:len(idx)] = tok([texts[i] for i in idx])
        out.append(np.asarray(encoders.encode_text(tokens), np.float32)[:len(idx)])
    return np.concatenate(out)


def _cache_key(encoders, dataset, config, split, views=(1, 1)) -> str | None:
    """A key naming the backbone's files and the sampling; None for encoders that are not an exported backbone
    (a training run's parameters change, so its features are never cached)."""
    directory = getattr(encoders, "directory", None)
    if directory is None or not os.path.isdir(str(directory)):
        return None
    h = hashlib.sha1()
    for name in ("backbone.json", "params.safetensors"):
        p = os.path.join(str(directory), name)
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{os.path.abspath(p)}:{st and st.st_size}:{st and st.st_mtime_ns}".encode())
    h.update(f"{dataset}/{config}/{split}/v{FEATURE_VERSION}/views{views[0]}x{views[1]}".encode())
    return f"{dataset}_{config or 'default'}_{split}_{h.hexdigest()[:16]}"


def load_items(encoders, data_dir: str, dataset: str, config: str | None, split: str, *, batch: int = 16,
               workers: int = 2, cache_dir: str | None = None, clips: int = 1, crops: int = 1) -> tuple[Items, Any]:
    """A split's items embedded by `encoders` (clips x crops views each); with `cache_dir` (and a backbone) the
    embeddings are read from / written to cache_dir/<key>.npz."""
    source, info = open_split(data_dir, dataset, config, split)
    n = len(source)
    meta = [{k: v for k, v in source[i].items() if k != "video"} for i in range(n)]
    ids = [_s(m["id"]) for m in meta]
    labels = np.array([int(m["label"]) for m in meta], np.int64) if "label" in info.features else None
    captions = [[_s(c) for c in m["captions"]] for m in meta] if "captions" in info.features else None
    options = [[_s(o) for o in m["options"]] for m in meta] if "options" in info.features else None
    answers = np.array([int(m["answer"]) for m in meta], np.int64) if "answer" in info.features else None
    key = _cache_key(encoders, dataset, config, split, (clips, crops)) if cache_dir else None
    path = os.path.join(cache_dir, key + ".npz") if key else None
    if path and os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        if list(z["ids"]) == ids:
            failed = [(str(a), str(b)) for a, b in z["failed"]]
            return Items(ids, z["embeddings"], labels, captions, options, answers, failed), info
    emb, failed_idx = encode_videos(encoders, lambda i: source[i], n, batch=batch, workers=workers, clips=clips,
                                    crops=crops)
    failed = [(ids[i], why) for i, why in failed_idx]
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, ids=np.array(ids), embeddings=emb,
                 failed=np.array(failed, dtype=str).reshape(-1, 2))
        os.replace(tmp, path)
    return Items(ids, emb, labels, captions, options, answers, failed), info


# ---------------------------------------------------------------------------------------------------------------
# Metrics (NaN embeddings rank last)
# ---------------------------------------------------------------------------------------------------------------
def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from tvts.evaluators.retrieval import l2_normalize

    return l2_normalize(np.asarray(a, np.float64)) @ l2_normalize(np.asarray(b, np.float64)).T


def multi_target_ranks(sim: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of the best-scored positive of each query: 1 + #{negatives j: sim[i, j] >= max
    positive score}. positives [Q, N] bool; a query without positive (or a NaN best score) ranks N + 1."""
    sim = np.where(np.isnan(sim), -np.inf, np.asarray(sim, np.float64))
    positives = np.asarray(positives, bool)
    best = np.where(positives, sim, -np.inf).max(axis=1, initial=-np.inf)
    ranks = 1 + np.sum(~positives & (sim >= best[:, None]), axis=1)
    no_hit = ~positives.any(axis=1) | ~np.isfinite(best)
    return np.where(no_hit, sim.shape[1] + 1, ranks).astype(np.int64)


def retrieval_result(text_emb: np.ndarray, text_video: np.ndarray, video_emb: np.ndarray) -> dict:
    """t2v: each text against all videos (ground truth: its video); v2t: each video against all texts (any of its
    texts). Returns metrics, chance and the R@K curves (K = 1..100)."""
    from tvts.evaluators.retrieval import RECALL_KS, chance_metrics, metrics_from_ranks, retrieval_ranks

    sim = _cos(text_emb, video_emb)  # [texts, videos]
    t2v = retrieval_ranks(sim, targets=text_video)
    pos = np.zeros((video_emb.shape[0], text_emb.shape[0]), bool)
    pos[text_video, np.arange(len(text_video))] = True
    v2t = multi_target_ranks(sim.T, pos)
    ks = np.arange(1, 101)
    metrics = {**{f"t2v/{k}": v for k, v in metrics_from_ranks(t2v, RECALL_KS).items()},
               **{f"v2t/{k}": v for k, v in metrics_from_ranks(v2t, RECALL_KS).items()}}
    chance = {**{f"t2v/{k}": v for k, v in chance_metrics(video_emb.shape[0]).items()},
              **{f"v2t/{k}": v for k, v in chance_metrics(text_emb.shape[0]).items()}}
    curves = {"text-to-video": 100.0 * np.mean(t2v[None] <= ks[:, None], axis=1),
              "video-to-text": 100.0 * np.mean(v2t[None] <= ks[:, None], axis=1)}
    return {"metrics": metrics, "chance": chance, "curves": curves}


def v2v_ranks(query_emb, query_labels, gallery_emb, gallery_labels) -> np.ndarray:
    """Rank of the first same-class gallery video for each query (ties against the query)."""
    sim = _cos(query_emb, gallery_emb)
    pos = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    return multi_target_ranks(sim, pos)


def v2v_chance(query_labels, gallery_labels, ks=V2V_KS) -> dict[str, float]:
    """Expected R@K of a uniformly random gallery order: mean over queries of 1 - C(N - P, K) / C(N, K), with P
    the gallery videos of the query's class."""
    from math import comb

    n = len(gallery_labels)
    gl = np.asarray(gallery_labels)
    out = {}
    for k in ks:
        kk = min(k, n)
        p = [1.0 - comb(n - int(np.sum(gl == q)), kk) / comb(n, kk) for q in query_labels]
        out[f"R@{k}"] = 100.0 * float(np.mean(p))
    return out


def topk_from_logits(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> tuple[dict[str, float], np.ndarray]:
    """({'topK': percent of rows whose true class ranks <= K}, the ranks): ties count against the sample, a row
    whose true-class logit is NaN (an unreadable video) ranks last."""
    logits = np.where(np.isnan(logits), -np.inf, logits)
    true = np.take_along_axis(logits, labels[:, None], axis=1)
    rank = np.where(np.isfinite(true[:, 0]), np.sum(logits >= true, axis=1), logits.shape[1] + 1)
    return {f"top{k}": float(100.0 * np.mean(rank <= k)) for k in ks if k <= logits.shape[1]}, rank


def multiple_choice_result(video_emb: np.ndarray, option_emb: np.ndarray, num_options: Sequence[int],
                           answers: np.ndarray) -> dict:
    """Each video against its own options (option_emb holds every video's options, in order): right when its
    answer scores strictly above every other option (classification.multiple_choice: a tie, or an unreadable
    video, is wrong). Chance: the mean of 1 / options."""
    from tvts.evaluators.classification import multiple_choice

    k = np.asarray(num_options, np.int64)
    starts = np.cumsum(k) - k
    right = 0.0
    for kk in np.unique(k):  # the metric core takes [N, K, D]: one call per option count
        rows = np.flatnonzero(k == kk)
        options = np.asarray(option_emb)[starts[rows, None] + np.arange(kk)]
        right += multiple_choice(video_emb[rows], options, np.asarray(answers)[rows])["accuracy"] * len(rows)
    return {"metrics": {"accuracy": float(right / len(k))},
            "chance": {"accuracy": 100.0 * float(np.mean(1.0 / k))}, "num_texts": int(k.sum())}


def per_class_accuracy(rank: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {names[c]: float(100.0 * np.mean(rank[labels == c] <= 1)) for c in np.unique(labels)}


# ---------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Options:
    split: Any = None                 # retrieval: the TFDS split (default test); ucf101/hmdb51: 1, 2 or 3
    batch: int = 16
    workers: int = 2
    templates: Any = None             # None/'single': 'a person {}'; 'ensemble'; or a list of templates
    class_names: Any = None           # overrides: {class: phrase} or a JSON file path
    cache_dir: str | None = None
    l2_grid: Sequence[float] | None = None
    probe: str = "lbfgs"              # linear probe: 'lbfgs' (CLIP's protocol) or 'sgd' (TVTS v1's)
    clips: int = 1                    # views per video: clips x crops, averaged (published: one view)
    crops: int = 1                    # 1 (centre) or 3 (start, centre, end of the long side)


def _templates(option) -> list[str]:
    if option in (None, "", "single"):
        return [TEMPLATE]
    if option == "ensemble":
        return list(ENSEMBLE_TEMPLATES)
    if isinstance(option, str):
        return [t for t in option.split("|") if t]
    return list(option)


def run_task(task: str, encoders, data_dir: str, opts: Options | None = None) -> dict:
    """Runs one task; returns {'task', 'dataset', 'split', 'metrics', 'chance', 'num_items', 'num_failed',
    'failed', ...} (+ 'curves' or 'per_class' for the plots)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    opts = opts or Options()
    kind, dataset = TASKS[task]
    config = normalize_config(dataset, opts.split, kind)
    load = lambda split: load_items(encoders, data_dir, dataset, config, split, batch=opts.batch,
                                    workers=opts.workers, cache_dir=opts.cache_dir, clips=opts.clips, crops=opts.crops)
    test_split = TEST_SPLITS.get(dataset, "test")
    t0 = time.perf_counter()
    if kind == "retrieval":
        split = str(opts.split or "test")
        items, _ = load(split)
        texts, text_video = [], []
        for v, caps in enumerate(items.captions):
            texts += caps
            text_video += [v] * len(caps)
        text_emb = encode_texts(encoders, texts, batch=opts.batch)
        res = retrieval_result(text_emb, np.array(text_video, np.int64), items.embeddings)
        res.update(num_items=len(items.ids), num_texts=len(texts), split=split)
        failed = items.failed
    elif kind == "mc":
        items, _ = load(test_split)
        res = multiple_choice_result(items.embeddings, encode_texts(encoders, [o for opts_ in items.options
                                                                              for o in opts_], batch=opts.batch),
                                     [len(o) for o in items.options], items.answers)
        res.update(split=f"{config}/{test_split}", num_items=len(items.ids))
        failed = items.failed
    else:
        test, info = load(test_split)
        names = list(info.features["label"].names)
        res = {"split": f"{config}/{test_split}" if config else test_split, "num_items": len(test.ids),
               "num_classes": len(names)}
        failed = list(test.failed)
        if kind == "zeroshot":
            templates = _templates(opts.templates)
            phrases = class_phrases(names, opts.class_names)
            prompts = [t.format(p) for p in phrases for t in templates]
            class_emb = encode_texts(encoders, prompts, batch=opts.batch).reshape(len(names), len(templates), -1)
            from tvts.evaluators.classification import class_embeddings
            from tvts.evaluators.retrieval import l2_normalize

            logits = 100.0 * l2_normalize(test.embeddings.astype(np.float64)) @ class_embeddings(class_emb).T
            metrics, rank = topk_from_logits(logits, test.labels)
            res.update(templates=templates, class_phrases=dict(zip(names, phrases)))
        elif kind == "linear":
            from tvts.evaluators.linear_probe import DEFAULT_L2_GRID, linear_probe

            train, _ = load("train")
            ok = ~np.isnan(train.embeddings).any(axis=1)
            failed += [(i, f"train: {w}") for i, w in train.failed]
            test_ok = ~np.isnan(test.embeddings).any(axis=1)
            test_x = np.where(test_ok[:, None], test.embeddings, 0.0)
            probe = linear_probe(train.embeddings[ok], train.labels[ok], test_x[test_ok] if test_ok.any() else
                                 test_x[:1], test.labels[test_ok] if test_ok.any() else test.labels[:1],
                                 num_classes=len(names), l2_grid=tuple(opts.l2_grid or DEFAULT_L2_GRID),
                                 solver=opts.probe, return_model=True)
            logits = test_x.astype(np.float64) @ probe["weights"] + probe["bias"]
            logits[~test_ok] = np.nan
            metrics, rank = topk_from_logits(logits, test.labels)
            res.update(num_train=len(train.ids), num_train_used=int(ok.sum()), solver=probe["solver"], l2=probe["l2"],
                       train_accuracy=probe["train_accuracy"], l2_grid=probe["l2_grid"],
                       val_accuracy=probe["val_accuracy"])
        else:  # v2v
            train, _ = load("train")
            ranks = v2v_ranks(test.embeddings, test.labels, train.embeddings, train.labels)
            from tvts.evaluators.retrieval import metrics_from_ranks

            metrics = {k: v for k, v in metrics_from_ranks(ranks, V2V_KS).items()}
            res.update(chance=v2v_chance(test.labels, train.labels), num_gallery=len(train.ids),
                       curves={"video-to-video": 100.0 * np.mean(ranks[None] <= np.arange(1, 101)[:, None], 1)})
            failed += [(i, f"gallery: {w}") for i, w in train.failed]
        if kind != "v2v":
            c = len(names)
            res["chance"] = {f"top{k}": 100.0 * min(k, c) / c for k in (1, 5) if k <= c}
            counts = np.bincount(test.labels, minlength=c)
            res["chance"]["majority_top1"] = 100.0 * counts.max() / counts.sum()
            res["per_class"] = per_class_accuracy(rank, test.labels, names)
        res["metrics"] = metrics
    res.update(task=task, dataset=dataset, num_failed=len(failed), failed=[list(f) for f in failed],
               seconds=round(time.perf_counter() - t0, 3))
    return res


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------
def _markdown(res: dict) -> str:
    lines = [f"# {res['task']}", "",
             f"{res['dataset']} {res['split']}: {res['num_items']} test items ({res['num_failed']} unreadable, "
             f"counted as misses)" + (f", {res['num_texts']} texts" if "num_texts" in res else "") + ".", "",
             "| metric | value | chance |", "| --- | ---: | ---: |"]
    for k, v in res["metrics"].items():
        c = res["chance"].get(k)
        lines.append(f"| {k} | {v:.2f} | {'' if c is None else f'{c:.2f}'} |")
    if res.get("failed"):
        lines += ["", "Unreadable videos:", ""] + [f"- `{i}`: {w}" for i, w in res["failed"]]
    if "command" in res:
        lines += ["", f"Command: `{res['command']}`"]
    return "\n".join(lines) + "\n"


def plot_per_class(per_class: dict[str, float], path: str, title: str = "") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure

    from tvts.plots import _save

    names = list(per_class)
    fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(names)), [per_class[n] for n in names])
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def write_results(res: dict, out_dir: str) -> dict[str, str]:
    """out_dir/<task>.json, <task>.md and <task>.png."""
    from tvts.plots import plot_recall_curves

    os.makedirs(out_dir, exist_ok=True)
    task = res["task"]
    paths = {ext: os.path.join(out_dir, f"{task}.{ext}") for ext in ("json", "md", "png")}
    if "curves" in res:
        plot_recall_curves(res["curves"], paths["png"], title=f"{task} ({res['num_items']} queries)")
    elif "per_class" in res:
        plot_per_class(res["per_class"], paths["png"], title=f"{task}: per-class top-1")
    else:  # multiple choice: accuracy beside chance
        plot_per_class({"accuracy": res["metrics"]["accuracy"], "chance": res["chance"]["accuracy"]}, paths["png"],
                       title=f"{task} ({res['num_items']} videos)")
    first = ("task", "dataset", "split", "metrics", "chance", "num_items", "num_failed", "command")
    keys = [k for k in first if k in res] + [k for k in res if k not in first and k != "curves"]
    data = {k: (res[k].tolist() if isinstance(res[k], np.ndarray) else res[k]) for k in keys}
    data["curves"] = {k: np.asarray(v).tolist() for k, v in res.get("curves", {}).items()}
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(_markdown(res))
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Evaluator types (config.evals.NAME = dict(type='msrvtt_retrieval', data_dir=..., split=..., every=0))
# ---------------------------------------------------------------------------------------------------------------
class BenchmarkEvaluator(Evaluator):
    TASK = ""
    REFERENCE_LABELS = {"chance": "chance"}

    def _options(self) -> Options:
        g = self.cfg.get
        return Options(split=g("split", None), batch=int(g("batch", 16)), workers=int(g("workers", 2)),
                       templates=g("templates", None), class_names=g("class_names", None),
                       cache_dir=g("cache_dir", None), clips=int(g("clips", 1)), crops=int(g("crops", 1)),
                       probe=g("probe", "lbfgs"))

    def compute(self, encoders, final, references):
        res = run_task(self.TASK, encoders, self.cfg.data_dir, self._options())
        out = dict(res["metrics"])
        out.update({f"chance/{k}": v for k, v in res["chance"].items()})
        out["num_items"], out["num_failed"] = res["num_items"], res["num_failed"]
        for ref, enc in references.items():
            out.update({f"{ref}/{k}": v for k, v in
                        run_task(self.TASK, enc, self.cfg.data_dir, self._options())["metrics"].items()})
        if self.output_dir is not None and final:
            write_results(res, os.path.join(str(self.output_dir), "benchmarks"))
        return out


EVALUATORS: dict[str, type[Evaluator]] = {
    task: type(f"Benchmark_{task}", (BenchmarkEvaluator,), {"TASK": task}) for task in TASKS}


def report_benchmark(encoders, task: str, data_dir: str, out: str, opts: Options, command: str, **about) -> dict:
    """Runs `task` with `encoders`, writes out/<task>.{json,md,png} and prints the table; `about` (e.g. the
    backbone or workdir) goes into the JSON."""
    res = run_task(task, encoders, data_dir, opts)
    res.update(command=command, views={"clips": opts.clips, "crops": opts.crops}, **about)
    paths = write_results(res, out)
    print(_markdown(res))
    print("wrote " + ", ".join(paths.values()))
    return res


def main_benchmark(backbone_dir: str, task: str, data_dir: str, out: str, opts: Options, command: str) -> dict:
    """The `python -m tvts.evaluate --backbone ... --task ...` mode (features cached in out/cache)."""
    from tvts import backbone as backbone_lib

    bb = backbone_lib.load(backbone_dir)
    opts.cache_dir = opts.cache_dir or os.path.join(out, "cache")
    return report_benchmark(bb, task, data_dir, out, opts, command, backbone=os.path.abspath(backbone_dir),
                            spec=dict(bb.spec))
