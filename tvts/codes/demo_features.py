"""Feature files for compact codes from an exported backbone on the built-in synthetic corpus's held-out videos:

    python -m tvts.codes.demo_features --backbone workdirs/demo/backbone --out DIR
        [--train 2000] [--queries 250] [--database 2000] [--batch 32] [--tokens]
    python -m tvts.codes.sweep --features DIR --out RESULTS

writes DIR/{train,query,database}.npz in the feature-file format (tvts/codes/features.py) for captioned videos the
pretraining never saw: train from the corpus's 'val' split (indices 0 .. train - 1), query and database from its
'test' split (disjoint index ranges). Frames are rendered as the held-out evaluation renders them (deterministic
frame times) at the backbone's spec. Per video:
    embeddings        [N, E]     encode_video (the whole clip)
    frame_embeddings  [N, T, E]  frames_in_context (each frame's patch tokens from the whole-clip pass, averaged), as
                                 tvts.extract --per_frame context: frames encoded alone cannot show the motion events
    texts             [N, E]     the caption's embedding
    text_tokens       [N, 4, E]  each of the caption's 4 clauses ("first a red circle moves left", ...) embedded
                                 alone: the backbone exports no per-word outputs, so phrases are HCQ's text tokens
    token_embeddings  [N, 1 + T*P, E]  with --tokens: every projected video token (video_tokens), for HCQ
    labels            [N, C]     multi-hot over the corpus's events (shape, colour, motion): two videos are
                                 relevant to each other when they show a common event
"""
from __future__ import annotations

if __name__ == "__main__":  # a program: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np


def _clauses(caption: str, count: int) -> list[str]:
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    if len(parts) != count:
        raise ValueError(f"caption {caption!r} does not split into {count} clauses")
    return parts


def event_labels(corpus, index: int) -> np.ndarray:
    """Multi-hot [shapes * colours * motions] of a captioned video's events."""
    from tvts.data.synthetic import MOTIONS

    cfg = corpus.config
    video = corpus.video(index, "captioned")
    out = np.zeros(cfg.num_shapes * cfg.num_colours * len(MOTIONS), np.int8)
    for k in range(cfg.num_clips):
        shape, colour, motion = (video.labels[f"event{k}_{a}"] for a in ("shape", "colour", "motion"))
        out[(shape * cfg.num_colours + colour) * len(MOTIONS) + motion] = 1
    return out


def features_for(bb, corpus, indices: Sequence[int], *, batch: int = 32, tokens: bool = False,
                 progress: bool = True) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    clips = corpus.config.num_clips
    out: dict[str, list] = {k: [] for k in ("embeddings", "frame_embeddings", "texts", "text_tokens", "labels")}
    if tokens:
        out["token_embeddings"] = []
    for start in tqdm(range(0, len(indices), batch), desc=f"encode {corpus.split}", disable=not progress,
                      leave=False):
        idx = list(indices[start:start + batch])
        raw = corpus.captioned_batch(idx, train=False)
        frames = raw["frames"]
        b = len(frames)
        out["embeddings"].append(bb.encode_video(frames))
        video_tokens = bb.video_tokens(frames)
        out["frame_embeddings"].append(bb.frame_means(video_tokens))
        out["texts"].append(bb.encode_text(raw["captions"]))
        phrases = [c for caption in raw["captions"] for c in _clauses(caption, clips)]
        out["text_tokens"].append(bb.encode_text(phrases).reshape(b, clips, -1))
        out["labels"].append(np.stack([event_labels(corpus, i) for i in idx]))
        if tokens:
            out["token_embeddings"].append(video_tokens)
    return {k: np.concatenate(v).astype(np.float32 if k != "labels" else np.int8) for k, v in out.items()}


def write(backbone_dir: str, out_dir: str, *, train: int = 2000, queries: int = 250, database: int = 2000,
          batch: int = 32, tokens: bool = False, progress: bool = True) -> dict[str, str]:
    from tvts import backbone
    from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus

    functions = ("video", "text", "video_tokens")
    bb = backbone.load(backbone_dir, functions=functions)
    spec = bb.spec
    clips = SyntheticConfig().num_clips
    if spec.num_frames % clips:
        raise SystemExit(f"error: the backbone takes {spec.num_frames} frames; the synthetic corpus needs a multiple "
                         f"of {clips}")
    cfg = SyntheticConfig(image_size=spec.image_size, frames_per_clip=spec.num_frames // clips)
    splits = {"train": ("val", range(train)), "query": ("test", range(queries)),
              "database": ("test", range(queries, queries + database))}
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, (split, indices) in splits.items():
        arrays = features_for(bb, SyntheticCorpus(cfg, split), list(indices), batch=batch, tokens=tokens,
                              progress=progress)
        arrays["meta"] = np.array(json.dumps({"generator": "tvts.codes.demo_features", "backbone": backbone_dir,
                                              "corpus_split": split, "indices": [indices.start, indices.stop],
                                              "spec": dict(spec)}))
        paths[name] = os.path.join(out_dir, f"{name}.npz")
        np.savez(paths[name], **arrays)
        print(f"{name}: {paths[name]} ({len(indices)} videos of the corpus's '{split}' split)", file=sys.stderr)
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="python -m tvts.codes.demo_features", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="an exported backbone directory (python -m tvts.export)")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--queries", type=int, default=250)
    p.add_argument("--database", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", action="store_true", help="also every video token (token_embeddings; large)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    return write(args.backbone, args.out, train=args.train, queries=args.queries, database=args.database,
                 batch=args.batch, tokens=args.tokens, progress=not args.quiet)


if __name__ == "__main__":
    main()
