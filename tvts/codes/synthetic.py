"""Synthetic feature files with planted class structure, for checking compact codes without a backbone:

    python -m tvts.codes.synthetic --out DIR [--seed 0] [--train 4000] [--queries 500] [--database 4000]

writes DIR/{train,query,database}.npz in the feature-file format (tvts/codes/features.py). In a random orthonormal
basis of R^256 (fixed by the seed, shared by the splits) the coordinates are split into
    S  (24 dims)  the class signal: the class centre (std 1 per dim) plus the item's own detail (std 0.45),
                  shared by every frame of the item and by its text
    U  (16 dims)  per-frame nuisance (std 4.5 per frame and dim, so 1.3 per dim in the mean of 12 frames: more
                  than the signal's variance per dim, so a PCA ranks these directions first)
    W  (16 dims)  per-token text nuisance (std 1.5)
    R  (200 dims) item-level noise (std 0.6), shared by the item's frames
Each video has `frames` per-frame features (x_f = S + U_f + R + small per-frame noise): its frames are
near-duplicate views of one content. `embeddings` is their mean (as tvts.extract's whole-video vector is one
vector); `frame_embeddings` the frames; `texts` one caption per video as `text_tokens` tokens (S + W_l + a constant
text offset, the modality gap); `depth_0`, `depth_1` noisier features of narrower width (64, 128) standing for
shallower layers (for PHPQ's pyramid); `labels` the class ids. What it is built to show: the isotropic noise spread
over 200 dims keeps random hyperplanes (LSH) near their floor at few bits, while the cosine of the float features
still ranks well; the per-frame nuisance holds the top principal components, so ITQ spends bits on it; methods
that contrast views, or use labels, can learn to drop both.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticFeatureConfig:
    dim: int = 256
    classes: int = 24
    signal_dim: int = 24
    class_scale: float = 1.0
    item_scale: float = 0.45
    frames: int = 12
    frame_nuisance_dim: int = 40
    frame_nuisance_scale: float = 4.0
    frame_noise_scale: float = 0.1
    item_noise_scale: float = 0.6
    text_tokens: int = 6
    text_nuisance_dim: int = 16
    text_nuisance_scale: float = 1.5
    text_offset: float = 3.0
    depth_dims: tuple[int, ...] = (64, 128)
    depth_noise_scale: tuple[float, ...] = (1.0, 0.5)

    def __post_init__(self):
        used = self.signal_dim + self.frame_nuisance_dim + self.text_nuisance_dim
        if used >= self.dim:
            raise ValueError(f"signal, frame and text sub-spaces ({used} dims) must leave room in dim={self.dim}")
        if len(self.depth_dims) != len(self.depth_noise_scale):
            raise ValueError("depth_dims and depth_noise_scale need one entry per depth")


SPLIT_SEEDS = {"train": 1, "query": 2, "database": 3}


def _world(cfg: SyntheticFeatureConfig, seed: int) -> dict[str, np.ndarray]:
    """What the splits share: the basis, the class centres, the text offset and the depth maps."""
    rng = np.random.default_rng([seed, 0])
    basis, _ = np.linalg.qr(rng.standard_normal((cfg.dim, cfg.dim)))
    s, u, w = cfg.signal_dim, cfg.frame_nuisance_dim, cfg.text_nuisance_dim
    rest = basis[:, s + u + w:]
    return {
        "S": basis[:, :s], "U": basis[:, s:s + u], "W": basis[:, s + u:s + u + w], "R": rest,
        "centres": cfg.class_scale * rng.standard_normal((cfg.classes, s)),
        "text_offset": cfg.text_offset * rest @ (v := rng.standard_normal(rest.shape[1])) / np.linalg.norm(v),
        "depth_maps": [rng.standard_normal((cfg.dim, d)) / np.sqrt(cfg.dim) for d in cfg.depth_dims],
    }


def generate(n: int, split: str, cfg: SyntheticFeatureConfig = SyntheticFeatureConfig(), seed: int = 0
             ) -> dict[str, np.ndarray]:
    """The arrays of one split's feature file (float32), a pure function of (cfg, seed, split, n)."""
    world = _world(cfg, seed)
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    labels = rng.integers(0, cfg.classes, n)
    content = world["centres"][labels] + cfg.item_scale * rng.standard_normal((n, cfg.signal_dim))
    item = content @ world["S"].T + cfg.item_noise_scale * rng.standard_normal((n, world["R"].shape[1])) @ world["R"].T
    t = cfg.frames
    frame_nuisance = cfg.frame_nuisance_scale * rng.standard_normal((n, t, cfg.frame_nuisance_dim)) @ world["U"].T
    frames = item[:, None] + frame_nuisance + cfg.frame_noise_scale * rng.standard_normal((n, t, cfg.dim))
    text_nuisance = cfg.text_nuisance_scale * rng.standard_normal((n, cfg.text_tokens, cfg.text_nuisance_dim))
    tokens = (content @ world["S"].T)[:, None] + text_nuisance @ world["W"].T + world["text_offset"]
    tokens = tokens + cfg.frame_noise_scale * rng.standard_normal(tokens.shape)
    out = {"embeddings": frames.mean(1), "frame_embeddings": frames, "labels": labels.astype(np.int64),
           "texts": tokens.mean(1), "text_tokens": tokens}
    for i, (m, noise) in enumerate(zip(world["depth_maps"], cfg.depth_noise_scale)):
        out[f"depth_{i}"] = frames @ m + noise * rng.standard_normal((n, t, m.shape[1]))
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in out.items()}


def write(out_dir: str, *, seed: int = 0, train: int = 4000, queries: int = 500, database: int = 4000,
          cfg: SyntheticFeatureConfig = SyntheticFeatureConfig()) -> dict[str, str]:
    """Writes the three splits; returns split -> path."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in (("train", train), ("query", queries), ("database", database)):
        arrays = generate(n, split, cfg, seed)
        arrays["meta"] = np.array(json.dumps({"generator": "tvts.codes.synthetic", "seed": seed, "split": split,
                                              "config": asdict(cfg)}))
        paths[split] = os.path.join(out_dir, f"{split}.npz")
        np.savez(paths[split], **arrays)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tvts.codes.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for train.npz, query.npz, database.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--database", type=int, default=4000)
    args = p.parse_args(argv)
    for split, path in write(args.out, seed=args.seed, train=args.train, queries=args.queries,
                             database=args.database).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
