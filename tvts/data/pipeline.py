"""Batches for the trainer: host-sharded, deterministic in the iteration number, prefetched.

A batch source maps an iteration number to this process's slice of the global batch, so the
loader state to checkpoint is the iteration itself and a resumed run sees exactly the batches
an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np

from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus
from tvts.data.texts import data_tokenizer, text_length
from tvts.data.tokenizer import text_tokenizer

Batch = dict[str, np.ndarray]


class BatchSource(Protocol):
    kind: str  # 'transcribed', 'captioned' or 'images'

    def batch(self, iteration: int) -> Batch: ...


class SyntheticSource:
    """The built-in corpus. Batch: video uint8 [b, T, H, W, 3], texts int32 [b, n, L] (n = 4 transcripts or 1
    caption). An 'images' sample is a still: the middle frame of one event of a captioned video (event i % 4 of
    video i), repeated over the T frames, captioned by that event's clause."""

    def __init__(self, kind: str, corpus: SyntheticCorpus, global_batch: int, context_length: int,
                 process_index: int = 0, process_count: int = 1, train: bool = True,
                 tokenizer: tuple[str, str] = ("clip_bpe", ""), still_frames: int = 1):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.kind, self.corpus, self.global_batch = kind, corpus, global_batch
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.tokenizer = text_tokenizer(tokenizer[0], context_length, tokenizer[1])  # (name, vocab_path)
        self.context_length, self.train = context_length, train
        self.still_frames = still_frames  # 'images': frames per still (the image repeated)

    def indices(self, iteration: int) -> np.ndarray:
        return iteration * self.global_batch + self.offset + np.arange(self.local_batch)

    def batch(self, iteration: int) -> Batch:
        idx = self.indices(iteration)
        if self.kind == "transcribed":
            raw = self.corpus.transcribed_batch(idx, train=self.train, labels=False)
            texts = [t for video in raw["transcripts"] for t in video]
            tokens = self.tokenizer(texts, self.context_length).reshape(len(idx), -1, self.context_length)
        elif self.kind == "images":
            frames, captions = [], []
            for i in idx:
                video = self.corpus.video(int(i), "captioned")
                event = video.events[int(i) % len(video.events)]
                frames.append(video.render(np.array([(event.start + event.end) / 2])))
                captions.append(event.text)
            raw = {"frames": np.repeat(np.stack(frames), self.still_frames, axis=1)}
            tokens = self.tokenizer(captions, self.context_length)[:, None]
        else:
            raw = self.corpus.captioned_batch(idx, train=self.train, labels=False)
            tokens = self.tokenizer(raw["captions"], self.context_length)[:, None]
        return {"video": raw["frames"], "texts": tokens.astype(np.int32)}


def make_sources(data_cfg, image_size: int, num_frames: int | Mapping[str, int], process_index: int = 0,
                 process_count: int = 1, seed: int = 0) -> dict[str, BatchSource]:
    """The sources of `data_cfg.sources`: the built-in synthetic corpus (data.name 'synthetic'; `seed` unused, its
    own is data.synthetic.seed) or prepared TFDS datasets read with grain (data.name 'tfds', shuffled by `seed`:
    tvts/data/loader.py). `num_frames`: frames per sample, one for all sources or {source: frames}."""
    if not isinstance(num_frames, Mapping):
        num_frames = {kind: num_frames for kind in data_cfg.sources}
    if data_cfg.name == "tfds":
        from tvts.data.loader import make_tfds_sources

        return make_tfds_sources(data_cfg, image_size, num_frames, process_index, process_count, seed)
    if data_cfg.name != "synthetic":
        raise ValueError(f"config.data.name={data_cfg.name!r}: known data 'synthetic' (built in) and 'tfds' "
                         f"(prepared datasets in data.tfds_data_dir)")
    tokenizer = data_tokenizer(data_cfg)  # one corpus per frame count: the frames sampled differ, the videos do not
    corpora: dict[int, SyntheticCorpus] = {}
    sources = {}
    for kind in data_cfg.sources:
        frames = num_frames[kind] if kind != "images" else SyntheticConfig().num_clips  # a still: any corpus
        if frames not in corpora:
            corpora[frames] = SyntheticCorpus(synthetic_config(data_cfg, image_size, frames), split="train")
        sources[kind] = SyntheticSource(kind, corpora[frames], data_cfg[f"{kind}_batch"], text_length(data_cfg, kind),
                                        process_index, process_count, tokenizer=tokenizer,
                                        still_frames=num_frames[kind])
    return sources


def synthetic_config(data_cfg, image_size: int, num_frames: int) -> SyntheticConfig:
    clips = SyntheticConfig().num_clips
    if num_frames % clips:
        raise ValueError(f"config.model.num_frames={num_frames}: the synthetic corpus needs a multiple of {clips} "
                         f"(frames per clip x {clips} clips)")
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = set(data_cfg.synthetic) - fields
    if unknown:
        raise ValueError(f"config.data.synthetic: unknown fields {sorted(unknown)}; "
                         f"SyntheticConfig has {sorted(fields)}")
    return SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_cfg.synthetic.items()},
                           image_size=image_size, frames_per_clip=num_frames // clips)


class Prefetcher:
    """Runs `make(i)` for i = start, start+1, ... in a background thread, `depth` items ahead."""

    def __init__(self, make: Callable[[int], object], start: int, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, start), daemon=True)
        self._thread.start()

    def _run(self, make, i):
        while not self._stop.is_set():
            try:
                item = (i, make(i), None)
            except Exception as e:  # surfaced in the consumer, with the iteration that failed
                item = (i, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            i += 1

    def __iter__(self) -> Iterator:
        while True:
            i, value, err = self._queue.get()
            if err is not None:
                raise RuntimeError(f"data loading failed at iteration {i}: {err}") from err
            yield i, value

    def close(self):
        self._stop.set()
