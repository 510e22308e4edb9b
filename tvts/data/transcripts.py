"""Transcript windows on word-level ASR: the published TVTSv2 sampler for YT-Temporal-style videos.

A transcribed video comes with word-level ASR, ``subtitles = [{'word': str, 'time': seconds}, ...]``.
One training sample is a *window* of ``num_clips`` clips (4), each ``randint(3, 5)`` seconds long,
separated by 1 s gaps, at a random start that fits inside the video:

    |-- lead --|== clip 0 ==| gap |== clip 1 ==| gap |== clip 2 ==| gap |== clip 3 ==|-- rest --|
               start                                                                 end

* clip ``i`` covers ``(start + i * (L + gap), start + i * (L + gap) + L)``;
* its transcript is the cleaned ASR words whose time lies strictly inside it (``start < t < end``),
  joined by single spaces; a clip with no words gets ``''`` and the caller decides (skip / retry);
* 12 frame times (3 per clip): the window ``[start of clip 0, end of clip 3]`` is cut into 12 equal
  segments and one time is drawn uniformly inside each (training) or the segment midpoints are taken
  (evaluation). This is the ``'window'`` layout of the published code; frames can therefore land in the
  1 s gaps. ``layout='clips'`` instead cuts every clip into ``frames_per_clip`` equal segments.

Facts of the published code that this module follows: one clip length is drawn per window and shared by
all clips (``randint(3, 5)`` inclusive, i.e. 3, 4 or 5 s); the word test is strict on both ends.
Deliberate differences: the start is drawn uniformly in ``[0, duration - window]`` (the published code
floors the duration, keeps a 1 s tail margin and shrinks the last clip when the draw overshoots); a video
shorter than the window is handled explicitly (see ``sample_window``) instead of by a bare ``except``.
``independent_lengths=True`` draws each clip's length separately instead.

Word cleaning (``clean_word``): fix mojibake (ftfy) and HTML entities, strip whitespace, drop empty
tokens, bracketed non-speech annotations (``[Music]``, ``(applause)``) and tokens without any letter or
digit (``>>`` speaker changes, stray punctuation).

Everything here is pure Python / NumPy; randomness comes only from the ``rng`` argument
(``numpy.random.Generator``).
"""
from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

try:  # ftfy is a project dependency; fall back to html.unescape only if it is missing.
    import ftfy as _ftfy
except ImportError:  # pragma: no cover
    _ftfy = None

__all__ = [
    'TranscriptWindow', 'clean_word', 'clean_subtitles', 'clip_windows', 'frame_times', 'words_in',
    'sample_window',
]

_NON_SPEECH = re.compile(r'^\s*(\[[^\]]*\]|\([^)]*\)|<[^>]*>)\s*$')
_HAS_ALNUM = re.compile(r'\w', re.UNICODE)


def clean_word(word: str) -> str:
    """One ASR token -> cleaned token, or '' when it is not speech (caller drops '')."""
    if not isinstance(word, str):
        return ''
    if _ftfy is not None and not word.isascii():  # mojibake repair only where it can apply
        word = _ftfy.fix_text(word)
    if '&' in word:
        word = html.unescape(word)
    word = word.strip()
    if not word or _NON_SPEECH.match(word):
        return ''
    if not _HAS_ALNUM.search(word.replace('_', '')):
        return ''
    return ' '.join(word.split())  # collapse inner whitespace


def clean_subtitles(subtitles: Iterable[Mapping]) -> list[dict]:
    """``[{'word', 'time'}]`` -> cleaned copies (new dicts, float times), non-speech tokens dropped.

    Entries without a usable time (missing, None, NaN) are dropped too.
    """
    out = []
    for item in subtitles:
        word = clean_word(item.get('word', ''))
        if not word:
            continue
        try:
            t = float(item['time'])
        except (KeyError, TypeError, ValueError):
            continue
        if not np.isfinite(t):
            continue
        out.append({'word': word, 'time': t})
    return out


def clip_windows(start: float, clip_lengths: float | Sequence[float], num_clips: int = 4,
                 gap: float = 1.0) -> tuple[tuple[float, float], ...]:
    """Per-clip ``(start, end)`` of a window beginning at ``start``.

    ``clip_lengths``: one length shared by all clips, or one per clip. Clip ``i`` starts after the
    previous clip's end plus ``gap``. (The synthetic corpus builds its event times with this function
    too, so aligned windows reproduce them bit for bit.)
    """
    if np.ndim(clip_lengths) == 0:
        lengths = [float(clip_lengths)] * num_clips
    else:
        lengths = [float(x) for x in clip_lengths]
        if len(lengths) != num_clips:
            raise ValueError(f'{len(lengths)} clip lengths for {num_clips} clips')
    clips, t = [], float(start)
    for length in lengths:
        clips.append((t, t + length))
        t = t + length + gap
    return tuple(clips)


def frame_times(clips: Sequence[tuple[float, float]], frames_per_clip: int = 3,
                rng: np.random.Generator | None = None, layout: str = 'window') -> np.ndarray:
    """Frame times [num_clips * frames_per_clip] (float64 seconds, increasing) for a clip window.

    ``layout='window'`` (published): ``[clips[0].start, clips[-1].end]`` cut into
    ``num_clips * frames_per_clip`` equal segments. ``layout='clips'``: each clip cut into
    ``frames_per_clip`` equal segments. With ``rng`` a time is drawn uniformly inside each segment
    (training); without, the segment midpoints are returned (evaluation).
    """
    clips = np.asarray(clips, dtype=np.float64).reshape(-1, 2)
    if layout == 'window':
        edges = np.linspace(clips[0, 0], clips[-1, 1], len(clips) * frames_per_clip + 1)
        lo, hi = edges[:-1], edges[1:]
    elif layout == 'clips':
        frac = np.arange(frames_per_clip + 1) / frames_per_clip
        edges = clips[:, :1] + (clips[:, 1:] - clips[:, :1]) * frac[None]  # [C, F+1]
        lo, hi = edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1)
    else:
        raise ValueError(f"layout must be 'window' or 'clips', got {layout!r}")
    if rng is None:
        return 0.5 * (lo + hi)
    return lo + (hi - lo) * rng.random(lo.shape[0])


def words_in(subtitles: Sequence[Mapping], start: float, end: float) -> list[dict]:
    """The (already cleaned) words with ``start < time < end``, in input order."""
    return [w for w in subtitles if start < w['time'] < end]


@dataclasses.dataclass(frozen=True)
class TranscriptWindow:
    """One sampled window. ``transcripts[i]`` is ``''`` when clip ``i`` holds no word."""
    clips: tuple[tuple[float, float], ...]       # per-clip (start, end), seconds
    transcripts: tuple[str, ...]                 # per clip, temporal order
    clip_words: tuple[tuple[dict, ...], ...]     # per clip, the cleaned {'word', 'time'} used
    frame_times: np.ndarray                      # [num_clips * frames_per_clip] seconds
    shrunk: bool = False                         # True if the video was shorter than the drawn window

    @property
    def start(self) -> float:
        return self.clips[0][0]

    @property
    def end(self) -> float:
        return self.clips[-1][1]

    @property
    def num_empty(self) -> int:
        return sum(1 for t in self.transcripts if not t)


def sample_window(subtitles: Sequence[Mapping], duration: float,
                  rng: np.random.Generator | None = None, *, train: bool = True,
                  num_clips: int = 4, frames_per_clip: int = 3,
                  clip_seconds: tuple[int, int] = (3, 5), gap_seconds: float = 1.0,
                  independent_lengths: bool = False, min_clip_seconds: float = 1.0,
                  start: float | None = None, clip_len: float | Sequence[float] | None = None,
                  layout: str = 'window', video_id: str | None = None,
                  cleaned: bool = False) -> TranscriptWindow:
    """Sample the published 4-clip transcript window of one video.

    Args:
      subtitles: raw word-level ASR ``[{'word': str, 'time': seconds}, ...]`` (cleaned here unless
        ``cleaned=True``).
      duration: video length in seconds.
      rng: source of randomness for the clip length, start and (if ``train``) frame times. Without
        it the window is deterministic: the longest allowed clip length that fits, centred.
      train: random frame times inside the segments (True) or segment midpoints (False).
      clip_seconds: inclusive integer range of the clip length (``randint(3, 5)``).
      independent_lengths: draw one length per clip instead of one shared length (published: shared).
      min_clip_seconds: a video too short for the drawn window is shrunk (window = whole video, equal
        clips of ``(duration - gaps) / num_clips``); below this clip length a ValueError is raised.
      start, clip_len: pin the window (both given: nothing is drawn for the window). A pinned window
        must lie inside ``[0, duration]``.
      layout: 'window' (published) or 'clips', see ``frame_times``.
      video_id: named in error messages.

    Returns:
      TranscriptWindow with per-clip (start, end), transcripts ('' for a clip without words), the
      words used and the frame times.
    """
    name = repr(video_id) if video_id is not None else '<unnamed video>'
    duration = float(duration)
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(f'video {name}: invalid duration {duration!r}')
    lo_len, hi_len = int(clip_seconds[0]), int(clip_seconds[1])
    gaps = gap_seconds * (num_clips - 1)
    shrunk = False

    if train and rng is None:
        raise ValueError('train=True needs an rng for the frame times (or pass train=False)')
    if (start is None) != (clip_len is None):
        raise ValueError('pin the window with both start and clip_len, or neither')
    if start is not None:
        clips = clip_windows(start, clip_len, num_clips, gap_seconds)
        if clips[0][0] < 0 or clips[-1][1] > duration + 1e-9:
            raise ValueError(f'video {name}: pinned window {clips[0][0]:.3f}-{clips[-1][1]:.3f} s '
                             f'does not fit in its {duration:.3f} s')
    else:
        if rng is None:  # deterministic: longest length that fits, centred
            fitting = [n for n in range(hi_len, lo_len - 1, -1) if n * num_clips + gaps <= duration]
            lengths = [float(fitting[0] if fitting else hi_len)] * num_clips
        elif independent_lengths:
            lengths = [float(x) for x in rng.integers(lo_len, hi_len + 1, size=num_clips)]
        else:
            lengths = [float(rng.integers(lo_len, hi_len + 1))] * num_clips
        total = sum(lengths) + gaps
        if total <= duration:
            if rng is None:
                t0 = 0.5 * (duration - total)
            else:
                t0 = float(rng.uniform(0.0, duration - total))
        else:
            length = (duration - gaps) / num_clips
            if length < min_clip_seconds:
                need = min_clip_seconds * num_clips + gaps
                raise ValueError(
                    f'video {name} is {duration:.2f} s long: too short for a window of {num_clips} '
                    f'clips of at least {min_clip_seconds:g} s with {gap_seconds:g} s gaps '
                    f'(needs >= {need:.2f} s)')
            lengths, t0, shrunk = [length] * num_clips, 0.0, True
        clips = clip_windows(t0, lengths, num_clips, gap_seconds)

    words = list(subtitles) if cleaned else clean_subtitles(subtitles)
    clip_words = tuple(tuple(words_in(words, s, e)) for s, e in clips)
    transcripts = tuple(' '.join(w['word'] for w in cw) for cw in clip_words)
    times = frame_times(clips, frames_per_clip, rng if train else None, layout)
    return TranscriptWindow(clips=clips, transcripts=transcripts, clip_words=clip_words,
                            frame_times=times, shrunk=shrunk)
