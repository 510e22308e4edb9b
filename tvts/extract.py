"""Video embeddings of a list of files and folders with an exported backbone (docs/backbone.md):

    python -m tvts.extract --backbone BACKBONE_DIR --out FEATURES.npz PATH [PATH ...]
        [--clips K] [--per_frame [alone|context]] [--resize stretch|crop] [--batch_size 16] [--workers 2]

PATHs are video files, or folders searched recursively for .mp4 .avi .webm .mkv .mov (any case). Each video gives
`spec.num_frames` frames at `np.linspace(0, n_frames - 1, num_frames).astype(int)`, each resized to the spec's
resolution (`stretch`: straight to S x S with PIL bilinear, as the published feature extraction does; `crop`: short
side to S, then the centre S x S), and the backbone's `encode_video` embeds them. Files are decoded from start to
the last frame needed (no seeking) by a pool of threads while the backbone runs; batches have a fixed size (the last
one is padded), so the programs compile once.

The .npz holds
    paths             [N] str     the videos embedded: relative to the folder given, or the file argument as given
    roots             [N] str     the folder argument each was found under ('' for file arguments)
    embeddings        [N, E]      float32, the projected CLS (not normalised) of the whole-video sample
    num_frames        [N] int     frames in the file (the count the sampling used)
    frame_indices     [N, T] int  the frames sampled
    failed            [F, 2] str  (path, reason) of the files that could not be read; they never stop the run
    meta              str         JSON: backbone, spec, options, counts, seconds
and, with --clips K (K > 1): the video cut into K equal windows [k n / K, (k + 1) n / K), each sampled like a whole
video (its own num_frames evenly spaced frames)
    clip_embeddings   [N, K, E]   clip_frame_indices [N, K, T]
and with --per_frame: one vector per sampled frame (of the K clips, or of the whole-video sample when K = 1)
    frame_embeddings  [N, K*T, E] frame k*T + i is frame i of clip k
`alone` (the default): each frame encoded alone as a one-frame clip (`Backbone.encode_frames`: temporal embedding
row 0, time attention over that frame only); `context`: the frame's projected patch tokens from the clip's own pass,
averaged (`Backbone.frames_in_context`; they have seen the other frames, so they carry motion; one more pass of the
video tower per clip; a TVTS v1 backbone gives one vector per tube, T / tubelet_size per clip).
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import collections
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
RESIZES = ("stretch", "crop")


# -----------------------------------------------------------------------------------------------------------------
# Files
# -----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFile:
    file: str  # what is opened
    path: str  # what is recorded: relative to `root`, or the argument as given
    root: str = ""


def find_videos(paths: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS
                ) -> tuple[list[VideoFile], list[tuple[str, str]]]:
    """(videos, failed): files as given (any extension), folders searched recursively (sorted) for `extensions`;
    an argument that does not exist is failed."""
    exts = tuple(e.lower() for e in extensions)
    videos, failed = [], []
    for arg in paths:
        if os.path.isdir(arg):
            found = []
            for dirpath, dirnames, filenames in os.walk(arg):
                dirnames.sort()
                found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(exts)]
            videos += [VideoFile(f, os.path.relpath(f, arg), arg) for f in sorted(found)]
        elif os.path.exists(arg):
            videos.append(VideoFile(arg, arg))
        else:
            failed.append((arg, "no such file or directory"))
    return videos, failed


# -----------------------------------------------------------------------------------------------------------------
# Sampling and decoding
# -----------------------------------------------------------------------------------------------------------------
def sample_indices(n_frames: int, num_frames: int) -> np.ndarray:
    """The published sampling: num_frames indices evenly spaced over [0, n_frames - 1], floored."""
    return np.linspace(0, n_frames - 1, num_frames).astype(int)


def clip_indices(n_frames: int, num_frames: int, clips: int) -> np.ndarray:
    """[clips, num_frames]: window k = [k n / K, (k + 1) n / K) sampled evenly (its first to last frame)."""
    edges = np.arange(clips + 1) * n_frames / clips
    out = np.stack([np.linspace(edges[k], edges[k + 1] - 1, num_frames) for k in range(clips)])
    return np.clip(np.floor(out), 0, n_frames - 1).astype(int)


def resize_frame(frame: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """uint8 [h, w, 3] -> [size, size, 3]. 'stretch': PIL bilinear straight to size x size (torchvision's
    Resize((224, 224)) on PIL images, which the published feature extraction uses). 'crop': short side to size
    (torchvision's int-truncated long side), then the centre crop."""
    from PIL import Image

    image = Image.fromarray(frame)
    if mode == "stretch":
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    if mode != "crop":
        raise ValueError(f"resize mode {mode!r}; use one of {RESIZES}")
    w, h = image.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


@dataclass
class Sampled:
    n_frames: int
    indices: np.ndarray  # [T] whole-video sample
    frames: np.ndarray  # [T, S, S, 3]
    clip_indices: np.ndarray | None = None  # [K, T]
    clip_frames: np.ndarray | None = None  # [K, T, S, S, 3]


def load_video(path: str, num_frames: int, size: int, clips: int = 1, resize: str = "stretch") -> Sampled:
    """A file's whole-video sample (and its K clips' samples), resized. Raises on an unreadable file."""
    from tvts.data.video_io import sample_frames

    def choose(n):
        whole = sample_indices(n, num_frames)
        return whole if clips <= 1 else np.concatenate([whole, clip_indices(n, num_frames, clips).ravel()])

    n, chosen, frames = sample_frames(path, choose, lambda f: resize_frame(f, size, resize))
    take = lambda idx: np.stack([frames[int(i)] for i in np.ravel(idx)]).reshape(*np.shape(idx), size, size, 3)
    whole = chosen[:num_frames]
    windows = chosen[num_frames:].reshape(clips, num_frames) if clips > 1 else None
    return Sampled(n, whole, take(whole), windows, None if windows is None else take(windows))


# -----------------------------------------------------------------------------------------------------------------
# Extraction
# -----------------------------------------------------------------------------------------------------------------
@dataclass
class _Batcher:
    """Fixed-size batches of inputs through `fn`; outputs kept in order."""

    fn: Any
    size: int
    item_shape: tuple[int, ...]
    pending: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    count: int = 0

    def add(self, items: np.ndarray) -> None:
        for item in items:
            self.pending.append(item)
            if len(self.pending) == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        n = len(self.pending)
        x = np.zeros((self.size, *self.item_shape), np.uint8)
        x[:n] = np.stack(self.pending)
        self.outputs.append(np.asarray(self.fn(x))[:n])
        self.count += n
        self.pending = []

    def result(self, dim: int) -> np.ndarray:
        self.flush()
        return np.concatenate(self.outputs) if self.outputs else np.zeros((0, dim), np.float32)


PER_FRAME = ("alone", "context")


def extract(bb, paths: Sequence[str], *, clips: int = 1, per_frame: str | None = None, batch_size: int = 16,
            workers: int = 2, resize: str = "stretch", progress: bool = True) -> dict[str, np.ndarray]:
    """The .npz's arrays (see the module docstring) for the videos under `paths`, with `bb` a
    tvts.backbone.Backbone. per_frame: None, 'alone' or 'context'."""
    if per_frame is not None and per_frame not in PER_FRAME:
        raise ValueError(f"per_frame={per_frame!r}; use one of {PER_FRAME}")
    if clips < 1:
        raise ValueError(f"clips={clips} must be >= 1")
    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}; use one of {RESIZES}")
    start = time.perf_counter()
    spec = bb.spec
    t, s, e = spec.num_frames, spec.image_size, bb.embed_dim
    videos, failed = find_videos(paths)
    video_batches = _Batcher(bb.encode_video, batch_size, (t, s, s, 3))
    frame_batches = None
    if per_frame == "alone":
        frame_batches = _Batcher(bb.encode_frames, batch_size * t, (s, s, 3))
    elif per_frame == "context":
        frame_batches = _Batcher(bb.frames_in_context, batch_size, (t, s, s, 3))
    good: list[tuple[VideoFile, Sampled]] = []

    from tqdm import tqdm

    bar = tqdm(total=len(videos), unit="video", desc="extract", disable=not progress, dynamic_ncols=True)
    load = lambda v: load_video(v.file, t, s, clips, resize)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        queue: collections.deque = collections.deque()
        todo = iter(videos)
        ahead = max(2 * batch_size, 2 * workers)  # decoded videos held at most

        def submit():
            v = next(todo, None)
            if v is not None:
                queue.append((v, pool.submit(load, v)))

        for _ in range(ahead):
            submit()
        while queue:
            v, future = queue.popleft()
            submit()
            try:
                sample = future.result()
            except Exception as err:  # an unreadable file is recorded, never fatal
                failed.append((v.path, f"{type(err).__name__}: {err}".strip().rstrip(":")))
                bar.set_postfix(failed=len(failed), refresh=False)
                bar.update()
                continue
            video_batches.add(sample.frames[None])
            if clips > 1:
                video_batches.add(sample.clip_frames)
            if per_frame:
                whole = sample.frames[None] if clips == 1 else sample.clip_frames
                frame_batches.add(whole.reshape(-1, s, s, 3) if per_frame == "alone" else whole)
            good.append((v, _indices_only(sample)))
            bar.update()
    units = 1 if clips == 1 else 1 + clips
    per_video = video_batches.result(e).reshape(len(good), units, e)
    bar.close()

    out: dict[str, np.ndarray] = {
        "paths": np.array([v.path for v, _ in good], dtype=str),
        "roots": np.array([v.root for v, _ in good], dtype=str),
        "embeddings": per_video[:, 0].astype(np.float32),
        "num_frames": np.array([x.n_frames for _, x in good], dtype=np.int64),
        "frame_indices": np.array([x.indices for _, x in good], dtype=np.int64).reshape(len(good), t),
        "failed": np.array(failed, dtype=str).reshape(len(failed), 2),
    }
    if clips > 1:
        out["clip_embeddings"] = per_video[:, 1:].astype(np.float32)
        out["clip_frame_indices"] = np.array([x.clip_indices for _, x in good], dtype=np.int64).reshape(
            len(good), clips, t)
    if per_frame:
        per_clip = t if per_frame == "alone" else bb.token_groups
        out["frame_embeddings"] = frame_batches.result(e).reshape(len(good), clips * per_clip, e).astype(np.float32)
    seconds = time.perf_counter() - start
    meta = {"backbone": getattr(bb, "directory", None), "spec": dict(spec), "clips": clips, "per_frame": per_frame,
            "resize": resize, "sampling": "np.linspace(0, n_frames - 1, num_frames).astype(int)",
            "videos": len(good), "failed": len(failed), "clips_encoded": video_batches.count,
            "frames_encoded": 0 if per_frame is None else frame_batches.count * (1 if per_frame == "alone" else t),
            "seconds": round(seconds, 3)}
    out["meta"] = np.array(json.dumps(meta))
    return out


def _indices_only(sample: Sampled) -> Sampled:
    """What is kept of a video once its frames are queued (the indices, not the pixels)."""
    return Sampled(sample.n_frames, sample.indices, np.empty(0, np.uint8), sample.clip_indices, None)


def save(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the .npz atomically (no pickled objects: it loads with allow_pickle=False)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tvts.extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files or folders (searched recursively)")
    p.add_argument("--backbone", required=True, help="a backbone directory (python -m tvts.export)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--clips", type=int, default=1, help="K > 1: also K per-clip embeddings per video")
    p.add_argument("--per_frame", nargs="?", const="alone", default=None, choices=PER_FRAME,
                   help="also one vector per sampled frame: 'alone' (default; each frame as a 1-frame clip) or "
                   "'context' (its patch tokens from the clip's pass, averaged)")
    p.add_argument("--resize", default="stretch", choices=RESIZES, help="stretch: straight to SxS (published); "
                   "crop: short side to S, centre crop")
    p.add_argument("--batch_size", type=int, default=16, help="clips per backbone call")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from tvts import backbone

    functions = {None: ("video",), "alone": ("video", "image"), "context": ("video", "video_tokens")}[args.per_frame]
    bb = backbone.load(args.backbone, functions=functions)
    arrays = extract(bb, args.paths, clips=args.clips, per_frame=args.per_frame, batch_size=args.batch_size,
                     workers=args.workers, resize=args.resize, progress=not args.quiet)
    save(args.out, arrays)
    meta = json.loads(str(arrays["meta"]))
    rate = meta["clips_encoded"] / meta["seconds"] if meta["seconds"] else 0.0
    print(f"wrote {args.out}: {meta['videos']} videos, {meta['failed']} failed, {meta['clips_encoded']} clips in "
          f"{meta['seconds']:.1f} s ({rate:.1f} clips/s)", file=sys.stderr)
    for path, reason in arrays["failed"][:10]:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    if len(arrays["failed"]) > 10:
        print(f"  ... and {len(arrays['failed']) - 10} more (the .npz's 'failed')", file=sys.stderr)
    return arrays


if __name__ == "__main__":
    main()
