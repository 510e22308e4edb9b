"""Batches from prepared TFDS datasets: grain over `tfds.data_source`, behind the trainer's `BatchSource` interface.

    python -m tvts.train --config configs/demo.py:data=tfds --config.data.tfds_data_dir=OUT --workdir W

reads `yttemporal` (the transcribed source) and `webvid` (the captioned one) from OUT (docs/data_loader.md).

**Order.** A source's examples form one endless stream of positions: position ``q`` is example
``order[q]``, where ``order`` is grain's ``MapDataset.range(N).shuffle(seed)``: a fresh permutation of the N
examples in every epoch (``q // N``), computed by random access, with a seed derived from ``config.seed`` and the
source. Batch ``i`` of process ``p`` (of P; global batch B, local b = B / P) is positions
``i * B + p * b + j`` for ``j < b``: processes read disjoint examples of every global batch, and the global batch
does not depend on the number of processes.

**Determinism.** Each position is sampled (window, frames, crop) with a generator seeded by
``(seed, source, position, attempt)``, so batch ``i`` is a pure function of the seed and ``i``: it does not
depend on the number of worker processes, on the batches read before it or on when it is read. The loader's
state is therefore the checkpoint's ``iteration``, already saved in every checkpoint's meta; a resumed (or
preempted) run restarts the stream at that iteration and sees exactly the batches of an uninterrupted run.
The cumulative bad-input counters are the one other piece of loader state: `DataCounters` saves them beside
the iteration.

**Bad input.** An example that fails (`tvts.data.sampling.SKIP_REASONS`: unreadable, truncated or zero-byte
video, too short for the window, no subtitles, ...) is counted by reason and replaced by a random example drawn
from ``(seed, source, position, attempt)``: the batch keeps its size and every good example is still read at
its own position (a replacement can repeat a good example). Past ``data.max_bad_fraction`` of the examples read
(counted over at least `MIN_READ` examples) the source stops the run with an error naming the reasons and the
last bad examples.

**Work.** Decoding, sampling, augmentation and tokenisation run in ``data.num_workers`` grain worker processes
per training process (``mp_prefetch``; 0: in the calling thread); the main process only stacks the examples
into uint8 frames [b, T, H, W, 3] and int32 tokens [b, n, L], which the trainer's prefetch thread hands to the
devices.
"""
from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tvts.data.sampling import (
    REDRAW_REASONS,
    SKIP_REASONS,
    BadExample,
    SamplingConfig,
    as_text,
    captioned_sample,
    image_sample,
    transcribed_sample,
)

__all__ = ['TFDS_NAMES', 'COUNTER_KEYS', 'TfdsDataSource', 'ExampleMaker', 'FileSource', 'make_tfds_sources',
           'DataCounters', 'resolve_workers']

log = logging.getLogger(__name__)

TFDS_NAMES = {'transcribed': 'yttemporal', 'captioned': 'webvid', 'images': 'cc3m'}
TEXTS_PER_VIDEO = {'transcribed': 4, 'captioned': 1, 'images': 1}
_SOURCE_IDS = {'transcribed': 0, 'captioned': 1, 'images': 2}
COUNTER_KEYS = ('read', *(f'skipped/{r}' for r in SKIP_REASONS), *(f'redrawn/{r}' for r in REDRAW_REASONS))
MAX_ATTEMPTS = 64  # examples tried for one position before the source gives up (all of them bad)
MIN_READ = 200  # the bad fraction is taken over at least this many examples (early on, a few bad ones are noise)
_UNBOUNDED = 2 ** 62  # positions of the endless stream


def stream_seed(seed: int, kind: str) -> int:
    """The 32-bit shuffle seed of a source (grain's shuffle takes seed + epoch per epoch)."""
    return int(np.random.SeedSequence([int(seed), _SOURCE_IDS[kind]]).generate_state(1)[0])


def resolve_workers(num_workers: int) -> int:
    """-1: one worker per CPU core but one, between 1 and 32."""
    if num_workers >= 0:
        return int(num_workers)
    return max(1, min(32, (os.cpu_count() or 2) - 1))


class TfdsDataSource:
    """The split of a prepared TFDS dataset, ``DATA_DIR/NAME[/CONFIG]/VERSION``, opened on first use (it pickles as
    its arguments, so every worker process opens its own readers).

    The newest prepared version in ``data_dir`` is read from its own files (``tfds.builder_from_directory``), so
    neither the builder's code nor its registered version is needed; without such a directory this falls back
    to ``tfds.data_source(name, split=split, data_dir=data_dir)``.
    """

    def __init__(self, name: str, split: str, data_dir: str):
        self.name, self.split, self.data_dir = name, split, data_dir
        self._source = None

    def prepared_dir(self):
        """The newest ``NAME[/CONFIG]/VERSION`` directory holding a dataset_info.json, or None."""
        from etils import epath

        root = epath.Path(self.data_dir) / self.name
        if not root.exists():
            return None
        found = [p.parent for pattern in ('*/dataset_info.json', '*/*/dataset_info.json') for p in root.glob(pattern)
                 if not any(part.startswith('incomplete') for part in p.parent.relative_to(root).parts)]
        versions = []
        for d in found:
            try:
                versions.append((tuple(int(x) for x in d.name.split('.')), str(d)))
            except ValueError:
                continue
        if not versions:
            return None
        newest = max(v for v, _ in versions)
        dirs = sorted(d for v, d in versions if v == newest)
        if len(dirs) > 1:
            raise ValueError(f'{root}: several prepared configs of version {newest}: {dirs}; keep one')
        return dirs[0]

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            try:
                prepared = self.prepared_dir()
                if prepared is not None:
                    self._source = tfds.builder_from_directory(prepared).as_data_source(split=self.split)
                else:
                    self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)
            except Exception as e:  # noqa: BLE001 - re-raised with the command that prepares the data
                raise FileNotFoundError(
                    f"cannot read the TFDS dataset {self.name!r} (split {self.split!r}) from "
                    f"config.data.tfds_data_dir={self.data_dir!r}: {type(e).__name__}: {e}. Prepare it with "
                    f"`python -m tvts.data.build {self.name} --manual_dir DIR --data_dir {self.data_dir}`") from e
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self._open()[index]

    def __getstate__(self):
        return {'name': self.name, 'split': self.split, 'data_dir': self.data_dir}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return f'tfds {self.name}[{self.split}] in {self.data_dir}'


class ExampleMaker:
    """Slot (the k-th example this process reads) -> one sample; runs in the worker processes.

    Returns {'video': uint8 [T, S, S, 3], 'texts': int32 [n, L], 'counts': int64 [len(COUNTER_KEYS)],
    'bad': [(reason, example id, detail), ...]} for the examples it had to skip first.
    """

    def __init__(self, kind: str, data: Sequence, seed: int, global_batch: int, local_batch: int, offset: int,
                 sampling: SamplingConfig, text_length: int, tokenizer: tuple[str, str] = ('clip_bpe', '')):
        import grain

        if kind not in TFDS_NAMES:
            raise ValueError(f'unknown source kind {kind!r}; known {sorted(TFDS_NAMES)}')
        self.kind, self.data, self.seed = kind, data, int(seed)
        self.size = len(data)
        if self.size == 0:
            raise ValueError(f'{data!r} holds no example')
        self.global_batch, self.local_batch, self.offset = global_batch, local_batch, offset
        self.sampling, self.text_length = sampling, text_length
        self.tokenizer_spec = tuple(tokenizer)  # (name, vocab path): tvts.data.tokenizer.text_tokenizer
        self.order = grain.MapDataset.range(self.size).shuffle(seed=stream_seed(seed, kind))
        self._tokenizer = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != '_tokenizer'} | {'_tokenizer': None}

    def position(self, slot: int) -> int:
        iteration, j = divmod(int(slot), self.local_batch)
        return iteration * self.global_batch + self.offset + j

    def index(self, position: int, attempt: int) -> int:
        """The example tried at ``attempt`` for ``position``: its own first, then random replacements."""
        if attempt == 0:
            return int(self.order[position])
        key = [self.seed, _SOURCE_IDS[self.kind], int(position), int(attempt), 1]
        return int(np.random.default_rng(key).integers(self.size))

    def rng(self, position: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SOURCE_IDS[self.kind], int(position), int(attempt)])

    def sample(self, example: Mapping[str, Any], rng: np.random.Generator,
               redraws: collections.Counter) -> tuple[np.ndarray, list[str]]:
        if self.kind == 'transcribed':
            return transcribed_sample(example, rng, self.sampling, redraws)
        if self.kind == 'images':
            return image_sample(example, rng, self.sampling)
        return captioned_sample(example, rng, self.sampling)

    def tokens(self, texts: list[str]) -> np.ndarray:
        if self._tokenizer is None:
            from tvts.data.tokenizer import text_tokenizer

            name, vocab = self.tokenizer_spec
            self._tokenizer = text_tokenizer(name, self.text_length, vocab)
        return self._tokenizer(texts, self.text_length).astype(np.int32)

    def __call__(self, slot: int) -> dict[str, Any]:
        position = self.position(slot)
        counts = collections.Counter()
        bad = []
        for attempt in range(MAX_ATTEMPTS):
            index = self.index(position, attempt)
            counts['read'] += 1
            try:
                example = self.data[index]
            except Exception as e:  # noqa: BLE001 - a record that cannot be read is this example's problem
                counts['skipped/read_error'] += 1
                bad.append(('read_error', f'#{index}', f'{type(e).__name__}: {e}'))
                continue
            redraws = collections.Counter()
            try:
                frames, texts = self.sample(example, self.rng(position, attempt), redraws)
            except BadExample as e:
                counts[f'skipped/{e.reason}'] += 1
                bad.append((e.reason, as_text(example.get('id')) or f'#{index}', e.detail))
                continue
            finally:
                counts.update({f'redrawn/{k}': v for k, v in redraws.items()})
            return {'video': frames, 'texts': self.tokens(texts), 'counts': _vector(counts), 'bad': bad}
        reasons = collections.Counter(r for r, _, _ in bad)
        raise RuntimeError(f'{self.kind} source ({self.data!r}): {MAX_ATTEMPTS} examples in a row were bad at '
                           f'position {position} ({dict(reasons)}; last: {bad[-1]})')


def _vector(counts: Mapping[str, int]) -> np.ndarray:
    return np.array([counts.get(k, 0) for k in COUNTER_KEYS], np.int64)


class FileSource:
    """A `BatchSource` over a random-access data source (`TfdsDataSource`, or any object with ``__len__`` and
    ``__getitem__`` giving records with the fields of docs/data_loader.md).

    ``batch(i)``: {'video': uint8 [b, T, S, S, 3], 'texts': int32 [b, n, L]} (n = 4 transcripts or 1 caption),
    this process's slice of global batch ``i``. Reading ``i, i + 1, ...`` streams from worker processes; any
    other ``i`` restarts the stream there (same result, only slower).
    Counters: ``counters(through)`` are the cumulative `COUNTER_KEYS` of the batches before iteration
    ``through`` (the ones the trainer has consumed: batches made ahead are not counted yet), plus what
    ``restore`` set.
    """

    def __init__(self, kind: str, data: Sequence, global_batch: int, text_length: int, sampling: SamplingConfig,
                 process_index: int = 0, process_count: int = 1, seed: int = 0, num_workers: int = 0,
                 max_bad_fraction: float = 0.05, min_read: int = MIN_READ, worker_buffer: int | None = None,
                 tokenizer: tuple[str, str] = ('clip_bpe', '')):
        if global_batch % process_count:
            raise ValueError(f'global batch {global_batch} is not divisible by {process_count} processes')
        if kind == 'transcribed' and sampling.num_clips != TEXTS_PER_VIDEO[kind]:
            raise ValueError(f'the transcribed source takes {TEXTS_PER_VIDEO[kind]} clips')
        self.kind, self.data, self.global_batch = kind, data, global_batch
        self.local_batch = global_batch // process_count
        self.process_index, self.process_count = process_index, process_count
        self.maker = ExampleMaker(kind, data, seed, global_batch, self.local_batch,
                                  process_index * self.local_batch, sampling, text_length, tokenizer)
        self.num_workers, self.max_bad_fraction, self.min_read = int(num_workers), max_bad_fraction, min_read
        self.worker_buffer = worker_buffer
        self._iter, self._next = None, None
        self._base = collections.Counter()
        self._pending: dict[int, collections.Counter] = {}
        self.recent_bad: collections.deque = collections.deque(maxlen=8)

    # --- batches ------------------------------------------------------------------------------
    def _start(self, iteration: int) -> None:
        import grain

        self.close()
        slots = grain.MapDataset.range(iteration * self.local_batch, _UNBOUNDED).map(self.maker)
        ds = slots.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if self.num_workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain reads its flags; outside an absl app (tests, tools) use defaults
                flags.FLAGS.mark_as_parsed()
            buffer = self.worker_buffer or max(2, -(-2 * self.local_batch // self.num_workers))
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers,
                                                             per_worker_buffer_size=buffer))
        self._iter, self._next = iter(ds), iteration

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        iteration = int(iteration)
        if self._iter is None or iteration != self._next:
            self._start(iteration)
        examples = [next(self._iter) for _ in range(self.local_batch)]
        self._next = iteration + 1
        counts = collections.Counter(dict(zip(COUNTER_KEYS, (int(x) for x in
                                                              np.sum([e['counts'] for e in examples], axis=0)))))
        for e in examples:
            self.recent_bad.extend(e['bad'])
        self._pending[iteration] = counts
        self._check_bad_fraction(iteration)
        return {'video': np.stack([e['video'] for e in examples]),
                'texts': np.stack([e['texts'] for e in examples])}

    def _check_bad_fraction(self, iteration: int) -> None:
        total = self.counters(None)
        bad = {k.split('/', 1)[1]: v for k, v in total.items() if k.startswith('skipped/') and v}
        read = total['read']
        if sum(bad.values()) > self.max_bad_fraction * max(read, self.min_read):
            raise RuntimeError(
                f"data source {self.kind!r} ({self.data!r}): {sum(bad.values())} of the {read} examples read up "
                f"to iteration {iteration} on process {self.process_index} were bad, more than "
                f"config.data.max_bad_fraction={self.max_bad_fraction:g} (counted over at least {self.min_read}); "
                f"by reason {bad}; last bad examples (reason, id, detail): {list(self.recent_bad)}")

    def close(self) -> None:
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, 'close'):
            it.close()

    # --- counters -----------------------------------------------------------------------------
    def counters(self, through: int | None = None) -> dict[str, int]:
        """Cumulative counts of the batches before iteration ``through`` (None: of every batch made)."""
        if through is None:
            total = collections.Counter(self._base)
            for c in self._pending.values():
                total.update(c)
        else:
            for it in [it for it in self._pending if it < through]:
                self._base.update(self._pending.pop(it))
            total = self._base
        return {k: int(total.get(k, 0)) for k in COUNTER_KEYS}

    def skipped(self, through: int | None = None) -> dict[str, int]:
        return {k.split('/', 1)[1]: v for k, v in self.counters(through).items() if k.startswith('skipped/')}

    def state(self, through: int) -> dict[str, int]:
        return self.counters(through)

    def restore(self, state: Mapping[str, int]) -> None:
        """Counters of a checkpoint (`state`), for the batches from its iteration on to add to."""
        unknown = set(state) - set(COUNTER_KEYS)
        if unknown:
            log.warning('%s source: unknown saved counters %s ignored', self.kind, sorted(unknown))
        self._base = collections.Counter({k: int(v) for k, v in state.items() if k in COUNTER_KEYS})
        self._pending.clear()


def make_tfds_sources(data_cfg, image_size: int, num_frames: int | Mapping[str, int], process_index: int = 0,
                      process_count: int = 1, seed: int = 0, data: Mapping[str, Sequence] | None = None
                      ) -> dict[str, FileSource]:
    """The sources of ``data_cfg.sources`` read from ``data_cfg.tfds_data_dir`` (`TFDS_NAMES`, split 'train'), with
    ``num_frames`` per sample (one for all, or {source: frames}). ``data`` replaces the TFDS readers by other
    random-access sources (tests)."""
    from tvts.data.texts import data_tokenizer, text_length

    tokenizer = data_tokenizer(data_cfg)
    workers = resolve_workers(data_cfg.num_workers)
    sources = {}
    for kind in data_cfg.sources:
        source = data[kind] if data is not None else TfdsDataSource(TFDS_NAMES[kind], 'train',
                                                                    data_cfg.tfds_data_dir)
        frames = num_frames[kind] if isinstance(num_frames, Mapping) else num_frames
        sampling = SamplingConfig(image_size=image_size, num_frames=frames,
                                  num_clips=TEXTS_PER_VIDEO['transcribed'] if kind == 'transcribed' else 1)
        sources[kind] = FileSource(kind, source, data_cfg[f'{kind}_batch'], text_length(data_cfg, kind), sampling,
                                   process_index, process_count, seed, workers, data_cfg.max_bad_fraction,
                                   tokenizer=tokenizer)
    return sources


class DataCounters:
    """The trainer's view of the sources' counters: summed over processes for the metrics
    (``data/<source>/skipped/<reason>``, ``data/<source>/redrawn/<reason>``, ``data/<source>/read``), kept per
    process in the checkpoint meta (``data_counters``) and restored from it.

    Sources without counters (the synthetic corpus) are left out: nothing is gathered, logged or saved for
    them. With several processes `scalars` and `meta` are collectives: call them at the same iteration on every
    process (the trainer's log and checkpoint iterations).
    """

    META_KEY = 'data_counters'

    def __init__(self, sources: Mapping[str, Any], process_index: int = 0, process_count: int = 1):
        self.sources = {k: s for k, s in sources.items() if hasattr(s, 'counters')}
        self.process_index, self.process_count = process_index, process_count
        self._reported: dict[str, int] = {}

    def _gather(self, through: int) -> dict[str, np.ndarray]:
        """kind -> int64 [process_count, len(COUNTER_KEYS)]."""
        if not self.sources:
            return {}
        local = np.array([[s.counters(through)[k] for k in COUNTER_KEYS] for s in self.sources.values()], np.int64)
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            everyone = np.asarray(multihost_utils.process_allgather(local.astype(np.int32))).astype(np.int64)
        else:
            everyone = local[None]
        return {kind: everyone[:, i] for i, kind in enumerate(self.sources)}

    def scalars(self, through: int) -> dict[str, float]:
        out = {}
        for kind, per_process in self._gather(through).items():
            for key, value in zip(COUNTER_KEYS, per_process.sum(0)):
                out[f'data/{kind}/{key}'] = float(value)
        return out

    def report(self, scalars: Mapping[str, float]) -> str | None:
        """A console line when the skip or re-draw totals in ``scalars`` changed since the last report."""
        now = {k: int(v) for k, v in scalars.items() if k.startswith('data/') and not k.endswith('/read') and v}
        if now == self._reported:
            return None
        self._reported = now
        parts = []
        for kind in self.sources:
            read = int(scalars.get(f'data/{kind}/read', 0))
            skipped = {k.split('/')[-1]: v for k, v in now.items() if k.startswith(f'data/{kind}/skipped/')}
            redrawn = {k.split('/')[-1]: v for k, v in now.items() if k.startswith(f'data/{kind}/redrawn/')}
            if skipped or redrawn:
                parts.append(f"{kind}: skipped {sum(skipped.values())} of {read} read {skipped or ''}"
                             f"{f', windows re-drawn {redrawn}' if redrawn else ''}")
        return 'data: ' + '; '.join(parts) if parts else None

    def meta(self, through: int) -> dict[str, Any]:
        gathered = self._gather(through)
        if not gathered:
            return {}
        return {self.META_KEY: {kind: [dict(zip(COUNTER_KEYS, (int(x) for x in row))) for row in per_process]
                                for kind, per_process in gathered.items()}}

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Counters saved by a checkpoint. Saved by another process count, the totals go to process 0 (the
        summed metrics stay right; each process's bad fraction starts from its share)."""
        saved = (meta or {}).get(self.META_KEY, {})
        for kind, source in self.sources.items():
            rows = saved.get(kind)
            if not rows:
                continue
            if len(rows) == self.process_count:
                source.restore(rows[self.process_index])
            elif self.process_index == 0:
                source.restore(dict(sum((collections.Counter(r) for r in rows), collections.Counter())))
