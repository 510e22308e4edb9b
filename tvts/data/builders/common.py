"""Shared machinery of the TFDS video builders: the base builder, video checks, strict text readers, skip log.

Stored form: every example holds the video file's *encoded bytes* (``video``) and its container extension
(``format``); frames are decoded at load time (docs/data.md says why). A build reads a *manual directory* in
the dataset's distributed layout; nothing is downloaded.

Bad input never stops a build and never loses a good sample: a sample whose video is missing, empty,
unreadable, truncated or too short, whose annotation is missing, malformed or has no subtitles, or whose CSV
row / annotation is not valid UTF-8, is skipped, counted by reason, printed in a summary at the end and
listed in ``skipped.json`` (``[{"split", "path", "reason", "detail"}]``, ``path`` relative to the manual
directory; a CSV row that cannot name its video is ``<csv path>:<line>``) in the dataset's version folder.
The counts are also in the dataset's ``metadata.json`` (``builder.info.metadata['skipped']``).
A *missing or malformed manual directory* (a required file or folder absent, a class list that disagrees
with the dataset's) stops the build with a ``ManualDirError`` naming what is missing.
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import av
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

__all__ = [
    'VERSION', 'VIDEO_EXTENSIONS', 'REASONS', 'ManualDirError', 'BadSample', 'Sample', 'Skip', 'VideoProbe',
    'probe_video', 'SkipLog', 'VideoBuilder', 'register', 'read_text', 'read_json', 'read_csv', 'read_lines',
    'has_invalid_utf8', 'printable', 'require', 'first_file', 'index_videos', 'find_video', 'DEFAULT_MIN_FRAMES',
    'mapping',
]

VERSION = tfds.core.Version('1.0.0')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.webm', '.mkv', '.mov', '.m4v', '.3gp', '.mpg', '.mpeg', '.wmv', '.flv',
                    '.ogv')
# One frame for each clip of the 4-clip window, at least (captioned / classification datasets sample over the
# whole file). YT-Temporal instead needs the time of the window itself (yttemporal.MIN_SECONDS).
DEFAULT_MIN_FRAMES = 4

REASONS = {
    'missing file': 'the video the list names does not exist',
    'empty file': 'the video file has zero bytes',
    'unreadable video': 'PyAV cannot open it, it has no video stream, or no frame decodes',
    'unreadable image': 'PIL cannot decode the image (not an image, or cut short)',
    'truncated video': 'the file ends before the data its container announces',
    'too short': 'shorter than the 4-clip window',
    'missing annotation': 'the annotation file does not exist',
    'malformed annotation': 'the annotation is not valid JSON or lacks a field',
    'empty or missing subtitles': 'the annotation has no timed words',
    'invalid UTF-8': 'an annotation or a list row is not valid UTF-8',
    'malformed row': 'a list row has the wrong number of fields or a bad value',
    'empty caption': 'no caption text',
    'unknown class': 'the class is not one of the dataset\'s classes',
    'duplicate': 'the same video is listed twice in a split',
}


class ManualDirError(FileNotFoundError):
    """The manual directory is missing or lacks a required file: the build stops."""


class BadSample(Exception):
    """One sample cannot be used: it is skipped and counted under ``reason`` (a key of REASONS)."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class Sample:
    """A sample the lists name: its key, id, video path (relative to the manual dir) and text/label fields."""
    key: str
    id: str
    video: str | None                       # relative path; None: not found (``missing`` names what was sought)
    fields: dict[str, Any]
    missing: str = ''                       # the path reported when ``video`` is None
    annotation: str | None = None           # relative path, for the builders that read one per sample
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)   # builder-private, not stored


@dataclasses.dataclass
class Skip:
    """A row or entry rejected before its video is looked at."""
    path: str
    reason: str
    detail: str = ''


# ---------------------------------------------------------------------------------------------------------
# Video checks


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    duration: float          # seconds spanned by the video packets (first pts to last pts + its duration)
    num_frames: int          # video packets demuxed (one frame each)
    width: int
    height: int
    codec: str
    container: str


_ISO_BMFF_TYPES = {b'ftyp', b'moov', b'mdat', b'free', b'skip', b'wide', b'uuid', b'pdin', b'moof', b'mfra',
                   b'meta', b'styp', b'sidx', b'prft', b'emsg', b'pnot', b'junk'}


def _isobmff_truncation(data: bytes) -> str:
    """For MP4/MOV/3GP files: '' if the top-level boxes tile the file, else why it is truncated."""
    if len(data) < 8 or data[4:8] not in _ISO_BMFF_TYPES:
        return ''
    pos, n = 0, len(data)
    while pos + 8 <= n:
        size, kind = struct.unpack('>I4s', data[pos:pos + 8])
        if size == 1:
            if pos + 16 > n:
                return f'box header at byte {pos} cut off'
            size = struct.unpack('>Q', data[pos + 8:pos + 16])[0]
        elif size == 0:          # box runs to the end of the file
            return ''
        if size < 8:
            return ''             # not a box stream we understand; leave it to the demuxer
        if pos + size > n:
            return (f"box '{kind.decode('latin-1')}' at byte {pos} needs {size} bytes, the file has "
                    f'{n - pos} left')
        pos += size
    return '' if pos == n else f'{n - pos} stray bytes at the end'


def probe_video(data: bytes, name: str = '', check: str = 'quick') -> VideoProbe:
    """Check that ``data`` (a video file's bytes) is a whole, decodable video; raise BadSample if not.

    ``check='quick'``: the container opens and has a video stream, MP4-family box sizes fit the file, every
    video packet demuxes (and as many as the container's frame count, when it has one), the first frame and
    the last group of pictures decode. ``check='full'``: every frame decodes.
    """
    if check not in ('quick', 'full'):
        raise ValueError(f"check must be 'quick' or 'full', got {check!r}")
    if not data:
        raise BadSample('empty file')
    why = _isobmff_truncation(data)
    if why:
        raise BadSample('truncated video', why)
    try:
        container = av.open(io.BytesIO(data), mode='r')
    except (av.FFmpegError, ValueError, OSError) as e:
        raise BadSample('unreadable video', f'{type(e).__name__}: {e}') from None
    with container:
        if not container.streams.video:
            raise BadSample('unreadable video', 'no video stream')
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 0.0
        expected = int(stream.frames or 0)
        n, lo, hi, last_key = 0, None, None, None
        ends: dict[int, float] = {}       # per stream: last packet end, seconds
        try:
            for pkt in container.demux():
                if pkt.size == 0:
                    continue      # a flush packet
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if pkt.stream.index != stream.index:
                    if t is not None and pkt.stream.time_base:
                        end_s = float((t + (pkt.duration or 0)) * pkt.stream.time_base)
                        ends[pkt.stream.index] = max(ends.get(pkt.stream.index, end_s), end_s)
                    continue
                n += 1
                if t is not None:
                    lo = t if lo is None else min(lo, t)
                    end = t + (pkt.duration or 0)
                    hi = end if hi is None else max(hi, end)
                    if pkt.is_keyframe:
                        last_key = t if last_key is None else max(last_key, t)
        except (av.FFmpegError, EOFError) as e:
            raise BadSample('truncated video' if n else 'unreadable video',
                            f'demuxing stopped after {n} packets: {e}') from None
        if n == 0:
            raise BadSample('unreadable video', 'no video packet')
        if expected and n < expected:
            raise BadSample('truncated video', f'{n} of the {expected} frames its container announces')
        if lo is not None and hi is not None and tb and hi > lo:
            duration = (hi - lo) * tb
        else:
            rate = stream.average_rate or stream.guessed_rate
            duration = n / float(rate) if rate else 0.0
        if hi is not None and tb:
            ends[stream.index] = hi * tb
        # The packets must reach the end the container announces (Matroska/WebM have no frame count; a cut
        # file loses its last packets in every stream, whereas a longer audio track is not a truncation).
        announced = []
        if stream.duration and tb:
            announced.append((float(stream.duration) * tb + (lo or 0) * tb, ends.get(stream.index, 0.0),
                              'the video stream'))
        if container.duration and ends:
            start = (container.start_time or 0) / av.time_base
            announced.append((container.duration / av.time_base + start, max(ends.values()), 'the container'))
        for total, reached, what in announced:
            if reached < total - max(0.5, 0.02 * total):
                raise BadSample('truncated video', f'packets reach {reached:.2f} s of the {total:.2f} s '
                                                   f'{what} announces')
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
        decoded = 0
        try:
            container.seek(lo or 0, stream=stream)
            if check == 'full':
                for _ in container.decode(stream):
                    decoded += 1
                if decoded < n // 2:
                    raise BadSample('truncated video', f'{decoded} of {n} frames decode')
            else:
                for _ in container.decode(stream):
                    decoded += 1
                    break
                if last_key is not None and n > 1:
                    container.seek(last_key, stream=stream, backward=True, any_frame=False)
                    for _ in container.decode(stream):
                        decoded += 1
        except BadSample:
            raise
        except (av.FFmpegError, EOFError) as e:
            raise BadSample('truncated video' if decoded else 'unreadable video',
                            f'decoding failed after {decoded} frames: {e}') from None
        if decoded == 0:
            raise BadSample('unreadable video', 'no frame decodes')
    return VideoProbe(duration=float(duration), num_frames=n, width=width or 0, height=height or 0,
                      codec=codec or '', container=container.format.name if container.format else '')


# ---------------------------------------------------------------------------------------------------------
# Strict text readers: invalid UTF-8 is found per row (CSV) or per file (JSON), never silently replaced.


def has_invalid_utf8(text: str) -> bool:
    """True if ``text`` (decoded with errors='surrogateescape') held bytes that are not UTF-8."""
    return any('\udc80' <= c <= '\udcff' for c in text)


def printable(text: str) -> str:
    """``text`` with undecodable bytes shown as \\xNN (for messages and skipped.json)."""
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def read_text(path: str) -> str:
    """A whole file as text; undecodable bytes are kept as surrogates (see has_invalid_utf8)."""
    with open(path, 'rb') as f:
        raw = f.read()
    if raw.startswith(b'\xef\xbb\xbf'):
        raw = raw[3:]
    return raw.decode('utf-8', 'surrogateescape')


def read_json(path: str) -> Any:
    """A JSON file; BadSample('missing annotation' | 'invalid UTF-8' | 'malformed annotation')."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise BadSample('missing annotation') from None
    if has_invalid_utf8(text):
        raise BadSample('invalid UTF-8', 'the annotation is not valid UTF-8')
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadSample('malformed annotation', f'invalid JSON: {e}') from None


def read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, line without its LF / CRLF) for every line of a text file."""
    return list(enumerate(read_text(path).splitlines(), start=1))


def read_csv(path: str, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV file with a header row; ``delimiter=None`` takes a tab if
    the header has one, else a comma. Quoted fields may hold delimiters, quotes and newlines."""
    text = read_text(path)
    if delimiter is None:
        first = text.split('\n', 1)[0]
        delimiter = '\t' if '\t' in first else ','
    reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start = 1
    for fields in reader:
        line = start
        start = reader.line_num + 1
        if header is None:
            header = [h.strip() for h in fields]
            continue
        if not fields or all(not f.strip() for f in fields):
            continue
        rows.append((line, fields))
    return header or [], rows


def _exists(manual_dir: str, rel: str) -> bool:
    full = os.path.join(manual_dir, rel.rstrip('/'))
    return os.path.isdir(full) if rel.endswith('/') else os.path.isfile(full)


def first_file(manual_dir: str, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` (relative paths; a trailing '/' means a folder) the manual directory holds."""
    return next((rel for rel in candidates if _exists(manual_dir, rel)), None)


def require(manual_dir: str, dataset: str, paths: Iterable[str | Sequence[str]], instructions: str = '') -> None:
    """Raise ManualDirError naming every path of ``paths`` (relative; a trailing '/' means a folder) that
    the manual directory lacks; an item may be a tuple of alternative paths (the layouts a dataset is found in),
    any one of which will do."""
    missing = []
    for rel in paths:
        alternatives = (rel,) if isinstance(rel, str) else tuple(rel)
        if first_file(manual_dir, alternatives) is None:
            missing.append(alternatives[0] + (f' (or {", ".join(alternatives[1:])})' if len(alternatives) > 1
                                              else ''))
    if missing:
        raise ManualDirError(
            f'{dataset}: the manual directory {manual_dir} lacks ' + ', '.join(missing) +
            (f'.\n{instructions}' if instructions else '.'))


def index_videos(root: str) -> dict[str, str]:
    """Every video file under ``root`` (recursively): {file name: path relative to root} and
    {file name without its extension: path}, first found wins (sorted walk, so deterministic)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if ext.lower() not in VIDEO_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root)
            found.setdefault(fn, rel)
            found.setdefault(stem, rel)
    return found


def find_video(manual_dir: str, rel_stem: str, first_ext: str = '.mp4') -> str | None:
    """``rel_stem + ext`` for the first extension (``first_ext``, then VIDEO_EXTENSIONS) that exists."""
    for ext in (first_ext, *VIDEO_EXTENSIONS):
        if os.path.exists(os.path.join(manual_dir, rel_stem + ext)):
            return rel_stem + ext
    return None


# ---------------------------------------------------------------------------------------------------------
# Skip log


class SkipLog:
    """Skipped samples: counted by reason, printed as a summary, written to skipped.json."""

    def __init__(self):
        self.records: list[dict[str, str]] = []
        self.kept: dict[str, int] = {}

    def add(self, split: str, path: str, reason: str, detail: str = '') -> None:
        if reason not in REASONS:
            raise ValueError(f'unknown skip reason {reason!r}')
        self.records.append({'split': split, 'path': printable(path), 'reason': reason,
                             'detail': printable(detail)})

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {reason: count}} in first-seen order."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            out.setdefault(r['split'], collections.Counter())[r['reason']] += 1
        return {s: dict(c) for s, c in out.items()}

    def summary(self, name: str) -> str:
        lines = [f'[{name}] kept / skipped per split:']
        counts = self.counts()
        for split in list(self.kept) + [s for s in counts if s not in self.kept]:
            c = counts.get(split, {})
            detail = ', '.join(f'{reason} {n}' for reason, n in sorted(c.items()))
            lines.append(f'  {split}: kept {self.kept.get(split, 0)}, skipped {sum(c.values())}'
                         + (f' ({detail})' if detail else ''))
        return '\n'.join(lines)

    def write(self, path: str) -> None:
        with open(path, 'w') as f:
            json.dump(self.records, f, indent=1)


# ---------------------------------------------------------------------------------------------------------
# Base builder


def register(cls: type) -> type:
    """Register ``cls`` under ``cls.name`` in TFDS's registry, replacing a builder TFDS ships under that name
    (TFDS has its own ``webvid`` and ``ucf101``; in a process that imported tvts.data.builders, the names
    mean these builders). Skipped inside ``registered.skip_registration()`` (``tfds build path/to/file.py``
    imports a module that way and takes its builder class from the module itself)."""
    if getattr(registered, '_skip_registration', False):
        return cls
    registered._DATASET_REGISTRY[cls.name] = cls  # pylint: disable=protected-access
    return cls


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, on ``workers`` threads (PyAV releases the GIL while it demuxes/decodes)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the video builders. Subclasses set ``name``, ``SPLITS``, ``REQUIRED`` (paths the manual
    directory must hold), ``MANUAL_DOWNLOAD_INSTRUCTIONS``, ``_text_features()`` and ``_samples()``."""

    VERSION = VERSION
    RELEASE_NOTES = {'1.0.0': 'Encoded video bytes + text/label fields; bad samples skipped and listed.'}
    SPLITS: tuple[str, ...] = ('train',)
    MIN_FRAMES: int = DEFAULT_MIN_FRAMES
    MIN_SECONDS: float = 0.0
    DESCRIPTION = ''
    HOMEPAGE = ''
    CITATION = ''

    def __init__(self, *, check: str = 'quick', workers: int = 1, verbose: bool = True,
                 file_format: str | None = None, **kwargs):
        if check not in ('quick', 'full'):
            raise ValueError(f"check must be 'quick' or 'full', got {check!r}")
        self._check = check
        self._workers = max(1, int(workers))
        self._verbose = verbose
        self.skips = SkipLog()
        super().__init__(file_format=file_format or 'array_record', **kwargs)

    # -- subclass interface -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _text_features(self) -> dict[str, tfds.features.FeatureConnector]:
        """The dataset's fields besides id / video / format."""

    @abc.abstractmethod
    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        """Every sample the split's lists name (or a Skip for a rejected row), in list order."""

    def _required(self) -> Sequence[str | Sequence[str]]:
        """What the manual directory must hold: paths, or tuples of alternative paths (see `require`)."""
        return ()

    def _probe(self, data: bytes, name: str) -> VideoProbe:
        """Checks a sample's file (a video; cc3m: an image); raises BadSample."""
        return probe_video(data, name, self._check)

    def _finish(self, sample: Sample, probe: VideoProbe) -> dict[str, Any]:
        """Fields computed from the probe (e.g. webvid's duration); default none."""
        return {}

    def _too_short(self, sample: Sample, probe: VideoProbe) -> str:
        """'' or why the video is shorter than the 4-clip window."""
        if probe.num_frames < self.MIN_FRAMES:
            return f'{probe.num_frames} frames, the 4-clip window needs >= {self.MIN_FRAMES}'
        if probe.duration < self.MIN_SECONDS:
            return f'{probe.duration:.2f} s, the 4-clip window needs >= {self.MIN_SECONDS:g} s'
        return ''

    # -- TFDS interface -----------------------------------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            'id': tfds.features.Text(),
            'video': tfds.features.Tensor(shape=(), dtype=np.object_),   # the file's encoded bytes
            'format': tfds.features.Text(),                              # container extension: mp4, avi, ...
            **self._text_features(),
        }
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, features=tfds.features.FeaturesDict(features),
            homepage=self.HOMEPAGE or None, citation=self.CITATION or None, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        require(manual_dir, self.name, self._required(), self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        self._prepare(manual_dir)
        return {split: self._generate_examples(split=split, manual_dir=manual_dir) for split in self.SPLITS}

    def _prepare(self, manual_dir: str) -> None:
        """Hook run once after the layout check (e.g. reading a shared annotation file)."""

    def _generate_examples(self, split: str, manual_dir: str):
        t0 = time.perf_counter()
        seen: set[str] = set()
        kept = 0

        def rejected(item) -> bool:
            if isinstance(item, Skip):
                self.skips.add(split, item.path, item.reason, item.detail)
                return True
            if item.video is None:
                self.skips.add(split, item.missing, 'missing file')
                return True
            if item.key in seen:
                self.skips.add(split, item.video, 'duplicate')
                return True
            seen.add(item.key)
            return False

        candidates = (item for item in self._samples(split, manual_dir) if not rejected(item))
        for sample, result in _ordered_map(lambda s: (s, self._load(s, manual_dir)), candidates, self._workers):
            if isinstance(result, BadSample):
                self.skips.add(split, sample.video, result.reason, result.detail)
                continue
            kept += 1
            yield sample.key, result
        self.skips.kept[split] = kept
        if self._verbose:
            n_skip = sum(1 for r in self.skips.records if r['split'] == split)
            print(f'[{self.name}] {split}: {kept} examples, {n_skip} skipped '
                  f'({time.perf_counter() - t0:.1f} s)', file=sys.stderr, flush=True)
        if kept == 0:
            counts = self.skips.counts().get(split, {})
            raise ManualDirError(
                f'{self.name}: split {split!r} has no usable sample in {manual_dir} '
                f'(skipped: {counts or "none listed"}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')

    def _load(self, sample: Sample, manual_dir: str) -> dict[str, Any] | BadSample:
        path = os.path.join(manual_dir, sample.video)
        try:
            try:
                with open(path, 'rb') as f:
                    data = f.read()
            except FileNotFoundError:
                raise BadSample('missing file') from None
            except OSError as e:
                raise BadSample('unreadable video', f'{type(e).__name__}: {e}') from None
            probe = self._probe(data, sample.video)
            why = self._too_short(sample, probe)
            if why:
                raise BadSample('too short', why)
            ext = os.path.splitext(sample.video)[1].lower().lstrip('.') or probe.container.split(',')[0]
            return {'id': sample.id, 'video': data, 'format': ext, **sample.fields, **self._finish(sample, probe)}
        except BadSample as e:
            return e

    def _download_and_prepare(self, dl_manager, download_config=None):
        self.skips = SkipLog()
        t0 = time.perf_counter()
        result = super()._download_and_prepare(dl_manager, download_config)
        # Still inside TFDS's temporary folder, renamed to the version folder when the build succeeds.
        self.skips.write(os.path.join(os.fspath(self.data_path), 'skipped.json'))
        self.info.metadata['skipped'] = self.skips.counts()
        self.info.metadata['kept'] = dict(self.skips.kept)
        self.info.metadata['stored_form'] = 'encoded video file bytes (decode at load time)'
        self.info.metadata['check'] = self._check
        if self._verbose:
            print(self.skips.summary(self.name) + f'\n[{self.name}] built in {time.perf_counter() - t0:.1f} s; '
                  f'skipped samples are listed in skipped.json', file=sys.stderr, flush=True)
        return result


def mapping(value: Any) -> Mapping:
    if not isinstance(value, Mapping):
        raise BadSample('malformed annotation', f'expected an object, got {type(value).__name__}')
    return value


class ClassSplitsBuilder(VideoBuilder, skip_registration=True):
    """Base of the action-recognition builders (ucf101, hmdb51): videos with a class label, one builder config per
    official train/test split. Subclasses set ``CLASSES`` (as the dataset spells them)."""

    CLASSES: tuple[str, ...] = ()
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f'split{k}', description=f'official train/test split {k}')
                       for k in (1, 2, 3)]
    SPLITS = ('train', 'test')

    @property
    def _split_number(self) -> int:
        return int(self.builder_config.name[-1])

    def _text_features(self):
        return {'label': tfds.features.ClassLabel(names=list(self.CLASSES))}
