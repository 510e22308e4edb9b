"""Clip and frame sampling and the image augmentation of the published recipe, for videos read from files.

One sample of a *transcribed* video (YT-Temporal): a window of 4 clips of ``randint(3, 5)`` s (one length
for the window) with 1 s gaps at a random start; each clip's transcript is the words timed strictly inside
it; 12 frames, one drawn uniformly inside each of 12 equal segments of the window (3 per clip, gaps
included: the published 'window' layout, `tvts.data.transcripts`). A *captioned* video (WebVid): the
caption and 12 frames drawn the same way over the whole video. Evaluation takes the segment midpoints and
the centred window of the longest clip length that fits. docs/published_recipe.md ("Data sampling") cites
the official code for each of these facts.

Augmentation (published, ``VideoTransform``): resize the short side to ``int(1.2 * image_size)`` keeping the
aspect (the long side ``int(S * long / short)``), nearest neighbour as cv2's ``INTER_NEAREST``
(``src = floor(dst * in / out)``); then a random ``image_size`` crop (train; one offset per video) or the
centre crop (evaluation, offset ``round((n - size) / 2)``). The published transform has no flip;
``SamplingConfig.flip`` adds a horizontal flip with probability 1/2 (off by default). The result stays
uint8: normalisation happens on device (`tvts.models.inputs.normalize`).

A frame time maps to the frame on screen then: the last frame whose timestamp is at or before it. Only the
window is decoded (the decoder seeks to the keyframe before it) and only the chosen frames are converted to
RGB (`frame_to_rgb`: one swscale context per thread, reused), then resized and cropped by indexing.

Bad input raises `BadExample(reason)` at the stage that meets it (see `SKIP_REASONS`); a window that can be
re-drawn is re-drawn, and each re-draw is counted in the ``counts`` Counter the caller passes
(`REDRAW_REASONS`). Every random draw comes from the ``rng`` argument; without one (evaluation) the result
is deterministic.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tvts.data.transcripts import TranscriptWindow, clean_word, frame_times, sample_window

__all__ = ['SKIP_REASONS', 'REDRAW_REASONS', 'BadExample', 'SamplingConfig', 'as_text', 'read_words',
           'read_duration', 'draw_window', 'captioned_frame_times', 'CropDraw', 'draw_crop', 'crop_indices',
           'frame_to_rgb', 'decode_frames', 'transcribed_sample', 'captioned_sample', 'image_sample']

# Why an example is skipped, by the stage that finds out (first to last).
SKIP_REASONS = (
    'read_error',      # reading the record failed (the data source raised)
    'no_subtitles',    # transcribed: no words (missing or empty `words` / `times`)
    'bad_annotation',  # transcribed: `words` and `times` differ in length, or a time is not a finite number
    'no_caption',      # captioned: missing or empty caption
    'bad_duration',    # `duration` missing, not finite or <= 0
    'too_short',       # transcribed: too short for 4 clips of `min_clip_seconds` (1 s) and 3 gaps of 1 s: < 7 s
    'silent_window',   # transcribed: every drawn window had a clip without a word (`SamplingConfig.window_tries`)
    'empty_video',     # zero bytes of video
    'unreadable',      # not a video the decoder can open, no video stream, or no frame decodes
    'truncated',       # a container that starts well but breaks off, or whose frames end before the window
)
# Why a window was drawn again (the sample is kept).
REDRAW_REASONS = (
    'window_too_long',  # the drawn clip length does not fit the video: drawn again among the lengths that do
    'shrunk_window',    # shorter than the shortest window (15 s): the window is the whole video, clips shrunk
    'silent_clip',      # a clip of the window holds no word: the window is drawn again
)


class BadExample(Exception):
    """An example that cannot give a sample; ``reason`` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ''):
        if reason not in SKIP_REASONS:
            raise ValueError(f'unknown skip reason {reason!r}')
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    image_size: int = 224
    num_frames: int = 12               # transcribed: num_clips x frames per clip; captioned: all of them
    train: bool = True                 # random draws, random crop (else midpoints, centre crop)
    num_clips: int = 4
    clip_seconds: tuple[int, int] = (3, 5)  # inclusive, one draw per window
    gap_seconds: float = 1.0
    layout: str = 'window'             # frame layout, `tvts.data.transcripts.frame_times`
    window_tries: int = 5              # windows drawn before a transcribed video is skipped as 'silent_window'
    resize_ratio: float = 1.2          # short side resized to int(resize_ratio * image_size) before the crop
    flip: bool = False                 # random horizontal flip (not in the published transform)
    min_clip_seconds: float = 1.0      # shrunk clips shorter than this skip the video ('too_short')
    decode_threads: int = 1            # decoder threads per video (1: the worker processes give the parallelism)

    def __post_init__(self):
        if self.num_frames % self.num_clips:
            raise ValueError(f'num_frames={self.num_frames} is not a multiple of num_clips={self.num_clips}')
        if self.image_size < 1 or self.resize_ratio < 1.0:
            raise ValueError(f'image_size={self.image_size}, resize_ratio={self.resize_ratio}: need >= 1')
        if self.window_tries < 1:
            raise ValueError(f'window_tries={self.window_tries} must be >= 1')

    @property
    def frames_per_clip(self) -> int:
        return self.num_frames // self.num_clips

    @property
    def resize_to(self) -> int:
        return int(self.image_size * self.resize_ratio)

    @property
    def min_window_seconds(self) -> float:
        return self.clip_seconds[0] * self.num_clips + self.gap_seconds * (self.num_clips - 1)

    @property
    def min_video_seconds(self) -> float:
        return self.min_clip_seconds * self.num_clips + self.gap_seconds * (self.num_clips - 1)


# ----------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------
def as_text(x: Any) -> str:
    """A text field as read from a record (str, bytes or a 0-d array of either) -> str."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x.item()
    if isinstance(x, bytes | bytearray | np.bytes_):
        return bytes(x).decode('utf-8', errors='replace')
    return '' if x is None else str(x)


def read_words(words: Any, times: Any) -> list[dict]:
    """Word-level ASR fields -> ``[{'word', 'time'}]`` (words as str, re-cleaned: a no-op on cleaned words,
    non-speech tokens dropped otherwise). Raises 'no_subtitles' / 'bad_annotation'."""
    if words is None or times is None or len(words) == 0:
        raise BadExample('no_subtitles', 'no words')
    if len(words) != len(times):
        raise BadExample('bad_annotation', f'{len(words)} words but {len(times)} times')
    try:
        times = np.asarray(times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BadExample('bad_annotation', f'times are not numbers ({e})') from None
    if not np.all(np.isfinite(times)):
        raise BadExample('bad_annotation', 'a word time is not finite')
    out = []
    for w, t in zip(words, times):
        word = clean_word(as_text(w))
        if word:
            out.append({'word': word, 'time': float(t)})
    if not out:
        raise BadExample('no_subtitles', 'no spoken word after cleaning')
    return out


def read_duration(x: Any) -> float:
    try:
        duration = float(np.asarray(x).reshape(()))
    except (TypeError, ValueError):
        raise BadExample('bad_duration', f'duration {x!r}') from None
    if not math.isfinite(duration) or duration <= 0:
        raise BadExample('bad_duration', f'duration {duration!r}')
    return duration


# ----------------------------------------------------------------------------------------------
# Windows and frame times
# ----------------------------------------------------------------------------------------------
def draw_window(words: Sequence[Mapping], duration: float, rng: np.random.Generator | None,
                cfg: SamplingConfig, counts: collections.Counter | None = None) -> TranscriptWindow:
    """The 4-clip window of a transcribed video with cleaned ``words``.

    Train (``rng``): the clip length is ``rng.integers(3, 6)`` (3, 4 or 5 s) and the start uniform in
    ``[0, duration - window]``. A length whose window does not fit is drawn again among those that fit
    ('window_too_long'); a window with a clip holding no word is drawn again ('silent_clip'), up to
    ``cfg.window_tries`` windows, then the video is skipped ('silent_window'). Evaluation (no ``rng``): the
    longest length that fits, centred (one window; a silent clip keeps its empty transcript).
    A video shorter than the shortest window (15 s) takes the whole video as its window, 4 equal clips between
    the 1 s gaps ('shrunk_window', as the published code falls back to; `transcripts.sample_window`); below
    clips of ``cfg.min_clip_seconds`` (a 7 s video) it is skipped ('too_short').
    """
    counts = counts if counts is not None else collections.Counter()
    lo, hi = cfg.clip_seconds
    gaps = cfg.gap_seconds * (cfg.num_clips - 1)
    fitting = [n for n in range(lo, hi + 1) if n * cfg.num_clips + gaps <= duration]
    kw = dict(num_clips=cfg.num_clips, frames_per_clip=cfg.frames_per_clip, gap_seconds=cfg.gap_seconds,
              layout=cfg.layout, cleaned=True)
    if not fitting:
        length = (duration - gaps) / cfg.num_clips
        if length < cfg.min_clip_seconds:
            raise BadExample('too_short', f'{duration:.2f} s < {cfg.min_video_seconds:g} s (4 clips of '
                                          f'{cfg.min_clip_seconds:g} s and the gaps)')
        counts['shrunk_window'] += 1
        window = sample_window(words, duration, rng, train=rng is not None, start=0.0, clip_len=length, **kw)
        if rng is not None and window.num_empty:  # the one window there is: nothing to re-draw
            raise BadExample('silent_window', 'the whole (short) video has a clip without a word')
        return window
    if rng is None:
        length = float(fitting[-1])
        start = 0.5 * (duration - (length * cfg.num_clips + gaps))
        return sample_window(words, duration, None, train=False, start=start, clip_len=length, **kw)
    for attempt in range(cfg.window_tries):
        length = int(rng.integers(lo, hi + 1))
        if length not in fitting:
            counts['window_too_long'] += 1
            length = fitting[int(rng.integers(len(fitting)))]
        total = length * cfg.num_clips + gaps
        start = float(rng.uniform(0.0, duration - total))
        window = sample_window(words, duration, rng, train=True, start=start, clip_len=float(length), **kw)
        if window.num_empty == 0:
            return window
        if attempt + 1 < cfg.window_tries:
            counts['silent_clip'] += 1
    raise BadExample('silent_window', f'{cfg.window_tries} windows each had a clip without a word')


def captioned_frame_times(duration: float, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
    """``num_frames`` times over the whole video: uniform in equal segments (train) or their midpoints."""
    return frame_times(((0.0, float(duration)),), num_frames, rng)


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CropDraw:
    """Where to crop, as fractions of the free range (drawn before the frame size is known), and the flip."""
    y: float = 0.5
    x: float = 0.5
    flip: bool = False
    centre: bool = True


def draw_crop(rng: np.random.Generator | None, cfg: SamplingConfig) -> CropDraw:
    """Three uniforms are always drawn in training (y, x, flip), so the stream does not depend on `cfg.flip`."""
    if rng is None or not cfg.train:
        return CropDraw()
    y, x, f = rng.random(3)
    return CropDraw(float(y), float(x), bool(cfg.flip and f < 0.5), centre=False)


def resized_shape(h: int, w: int, short: int) -> tuple[int, int]:
    """The published ``get_resize_sizes``: short side ``short``, long side ``int(short * long / short_in)``."""
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


def crop_indices(h: int, w: int, cfg: SamplingConfig, crop: CropDraw) -> tuple[np.ndarray, np.ndarray]:
    """Source rows [size] and columns [size] of the output pixels: resize (nearest) then crop, then flip."""
    size = cfg.image_size
    rh, rw = resized_shape(h, w, cfg.resize_to)
    if rh < size or rw < size:  # only when resize_ratio < 1 would allow it; kept as a clear message
        raise ValueError(f'resized frame {rh}x{rw} is smaller than the {size} crop')
    if crop.centre:
        y0, x0 = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    else:  # published RandomCrop: randint(0, n - size) inclusive
        y0 = min(int(crop.y * (rh - size + 1)), rh - size)
        x0 = min(int(crop.x * (rw - size + 1)), rw - size)
    rows = np.minimum(((y0 + np.arange(size)) * h) // rh, h - 1)
    cols = np.minimum(((x0 + np.arange(size)) * w) // rw, w - 1)
    if crop.flip:
        cols = cols[::-1].copy()
    return rows, cols


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
_SIGNATURES = (b'\x1a\x45\xdf\xa3',)  # Matroska / WebM EBML header
_SEEK_AFTER = 1.0  # seconds: windows starting later seek to the keyframe before them instead of decoding from 0


def _looks_like_a_container(data: bytes) -> bool:
    return data[4:8] in (b'ftyp', b'moov', b'mdat', b'free', b'wide') or data.startswith(_SIGNATURES)


def decode_frames(data: bytes, times: Sequence[float], convert: Callable[[Any], np.ndarray] | None = None,
                  threads: int = 1) -> np.ndarray:
    """The frames on screen at ``times`` (seconds) of an encoded video: [T, ...] uint8.

    ``convert`` maps one decoded frame (``av.VideoFrame``) to the output array (default: the whole RGB frame;
    `frame_to_rgb` resizes and crops); a frame chosen for several times is converted once. Raises
    'empty_video', 'unreadable' or 'truncated' (see `SKIP_REASONS`): a stream that ends (or breaks) before a
    time, by more than max(2 frame periods, 0.5 s), is truncated.
    """
    import av  # in the worker that decodes

    convert = convert or (lambda frame: _reformatter().reformat(frame, format='rgb24').to_ndarray())
    if data is None or len(data) == 0:
        raise BadExample('empty_video', '0 bytes')
    data = bytes(data)
    times = np.asarray(times, np.float64)
    container_like = _looks_like_a_container(data)
    broken = 'truncated' if container_like else 'unreadable'
    try:
        container = av.open(io.BytesIO(data), mode='r')
    except Exception as e:  # noqa: BLE001 - any failure to open is this example's problem
        raise BadExample(broken, f'cannot open ({type(e).__name__}: {e})') from None
    with container:
        try:
            out = _decode(container, times, convert, threads, broken)
        except BadExample:
            raise
        except Exception as e:  # noqa: BLE001 - whatever else a broken file makes the decoder do
            raise BadExample(broken, f'{type(e).__name__}: {e}') from None
    return np.stack(out).astype(np.uint8, copy=False)


_local = threading.local()


def _reformatter():
    """One swscale context per thread, kept across frames: made per frame (what ``frame.to_ndarray(format=...)``
    does) its set-up costs 2-5 ms, 20-80x the conversion of a 336 px frame."""
    if not hasattr(_local, 'reformatter'):
        from av.video.reformatter import VideoReformatter

        _local.reformatter = VideoReformatter()
    return _local.reformatter


def frame_to_rgb(frame, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint8 [len(rows), len(cols), 3]: a decoded frame in RGB (swscale, as ``to_ndarray(format='rgb24')``), at
    the pixels (rows x cols)."""
    rgb = _reformatter().reformat(frame, format='rgb24').to_ndarray()
    return rgb.take(rows, axis=0).take(cols, axis=1)


def _decode(container, times: np.ndarray, convert, threads: int, broken: str) -> list[np.ndarray]:
    if not container.streams.video:
        raise BadExample('unreadable', 'no video stream')
    stream = container.streams.video[0]
    try:
        stream.codec_context.thread_count = max(int(threads), 1)
    except Exception:  # noqa: BLE001 - a codec that does not take the option decodes anyway
        pass
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    period = 1.0 / rate if rate > 0 else 0.04
    # times count from the first frame: a stream may start later than 0 (edit lists, webm offsets)
    origin = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base \
        else 0.0
    order = np.argsort(times, kind='stable')
    out: list[np.ndarray | None] = [None] * len(times)
    if len(times) and times[order[0]] > _SEEK_AFTER and stream.time_base:
        target = int((times[order[0]] + origin) / stream.time_base)
        try:
            container.seek(max(target, 0), stream=stream, backward=True)
        except Exception:  # noqa: BLE001 - no index: decode from the start instead
            container.seek(0)
    k, prev, prev_t, prev_rgb, last_t = 0, None, None, None, None
    error = None
    try:
        for frame in container.decode(stream):
            t = frame.time
            t = (last_t + period if last_t is not None else 0.0) if t is None else t - origin
            last_t = t
            while k < len(times) and t > times[order[k]] + 1e-6:
                if prev is None:  # the first decoded frame is already past the time: the nearest one
                    prev, prev_t, prev_rgb = frame, t, None
                if prev_rgb is None:
                    prev_rgb = convert(prev)
                out[order[k]] = prev_rgb
                k += 1
            if k == len(times):
                break
            if prev is not frame:
                prev, prev_t, prev_rgb = frame, t, None
    except Exception as e:  # noqa: BLE001 - a corrupt packet: keep what decoded, judge below
        error = f'{type(e).__name__}: {e}'
    if prev is None and k < len(times):
        raise BadExample(broken, f'no frame decodes{f" ({error})" if error else ""}')
    while k < len(times):
        need = times[order[k]]
        if need > prev_t + max(2 * period, 0.5):
            raise BadExample('truncated', f'frames end at {prev_t:.2f} s, the sample needs {need:.2f} s'
                                          f'{f" ({error})" if error else ""}')
        if prev_rgb is None:
            prev_rgb = convert(prev)
        out[order[k]] = prev_rgb
        k += 1
    return out


def _cropper(cfg: SamplingConfig, crop: CropDraw) -> Callable[[Any], np.ndarray]:
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def convert(frame) -> np.ndarray:
        h, w = frame.height, frame.width
        if (h, w) not in cache:
            cache[(h, w)] = crop_indices(h, w, cfg, crop)
        return frame_to_rgb(frame, *cache[(h, w)])
    return convert


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------
def transcribed_sample(example: Mapping[str, Any], rng: np.random.Generator | None, cfg: SamplingConfig,
                       counts: collections.Counter | None = None) -> tuple[np.ndarray, list[str]]:
    """A yttemporal record (``video``, ``duration``, ``words``, ``times``) -> (frames uint8 [T, S, S, 3],
    ``num_clips`` transcripts in temporal order). Checks run cheapest first: annotation, duration, window,
    then the video."""
    rng = rng if cfg.train else None
    words = read_words(example.get('words'), example.get('times'))
    duration = read_duration(example.get('duration'))
    window = draw_window(words, duration, rng, cfg, counts)
    crop = draw_crop(rng, cfg)
    frames = decode_frames(example.get('video'), window.frame_times, _cropper(cfg, crop), cfg.decode_threads)
    return frames, list(window.transcripts)


def image_sample(example: Mapping[str, Any], rng: np.random.Generator | None,
                 cfg: SamplingConfig) -> tuple[np.ndarray, list[str]]:
    """A cc3m record (``video`` = the image file, ``caption``) -> (the image as ``cfg.num_frames`` identical frames,
    uint8 [T, S, S, 3], [caption]); the crop is the videos' (TVTS v1's image transform, a random resized crop with
    flips, is not reproduced)."""
    rng = rng if cfg.train else None
    caption = _caption(example)
    crop = draw_crop(rng, cfg)
    frames = decode_frames(example.get('video'), np.zeros(cfg.num_frames), _cropper(cfg, crop), cfg.decode_threads)
    return frames, [caption]


def _caption(example: Mapping[str, Any]) -> str:
    caption = ' '.join(as_text(example.get('caption')).split())
    if not caption:
        raise BadExample('no_caption', 'empty caption')
    return caption


def captioned_sample(example: Mapping[str, Any], rng: np.random.Generator | None,
                     cfg: SamplingConfig) -> tuple[np.ndarray, list[str]]:
    """A webvid record (``video``, ``duration``, ``caption``) -> (frames uint8 [T, S, S, 3], [caption])."""
    rng = rng if cfg.train else None
    caption = _caption(example)
    duration = read_duration(example.get('duration'))
    times = captioned_frame_times(duration, cfg.num_frames, rng)
    crop = draw_crop(rng, cfg)
    frames = decode_frames(example.get('video'), times, _cropper(cfg, crop), cfg.decode_threads)
    return frames, [caption]
