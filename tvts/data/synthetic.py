"""Built-in synthetic video-transcript corpus: the default dataset of the demo job.

Every video is a sequence of ``num_clips`` (4) *events*. An event is one object -- a shape
(``SHAPES``: circle, square, triangle, cross) in a colour (``COLOURS``: red, green, blue, yellow) --
that moves in one direction (``MOTIONS``: left, right, up, down) over a grey, gently graded background.
At 32 px the object has a radius of 5-7 px and travels 13.4 px (0.42 of the frame) during its event,
about 4-5 px between consecutive sampled frames. Rendering is anti-aliased (signed distances), vectorised
in NumPy over all frames of a batch.

Time model (continuous seconds, the published recipe): one clip length ``L = randint(3, 5)`` per video
(the published code also shares one length between the 4 clips), events at
``clip_windows(lead_in, L, 4, gap=1)``, i.e. 1 s gaps; transcribed videos have a lead-in and a lead-out
of 1.5-3 s, captioned videos none (their file is exactly the event span, as a WebVid reader samples the
whole file). ``SyntheticVideo.render(t)`` draws any time: inside its event the object moves linearly
from its start to its end point; in the first half of a gap the previous object rests at its end point,
in the second half the next object waits at its start point (lead-in / lead-out: first / last object
resting). The in-memory sample takes 12 frame times from ``transcripts.frame_times``: the published
``'window'`` layout cuts ``[start of clip 0, end of clip 3]`` into 12 equal segments (random time in
each for training, midpoints for evaluation), so some frames land in a 1 s gap; thanks to the rule
above they show the resting object of the nearer event, and frame ``f`` shows the event of its nominal
clip ``f // 3`` for all evaluation frames and 97% of training frames. ``SyntheticConfig(frame_layout=
'clips')`` puts 3 frames inside every clip instead.

Events are built so that no single attribute orders the clips: the first event is uniform; every
further event copies a random earlier one and changes one attribute (motion with probability 1/2,
shape or colour 1/4 each; with probability 1/4 one more attribute), then the 4 events are shuffled.
A draw is rejected unless (a) all 4 events differ and (b) every attribute has a repeated value among
the 4 events (with ``num_clips`` = 2, (b) cannot hold and is skipped). Hence *no* video can be
ordered by shape alone, colour alone or motion alone (fraction 0). Measured over 20k training videos
(seed 0):

    motion needed (two events differ only in motion)      0.83 of videos
    colour needed (two events differ only in colour)      0.61
    shape needed  (two events differ only in shape)       0.60
    all three needed 0.17;  none needed 0.01 (shape + colour suffice in 0.17 of videos)

and the best expected transcript-sorting accuracy of a matcher that sees only some attributes
(guessing uniformly among the events that look identical to it):

    shape only 0.50   colour only 0.50   motion only 0.60
    no motion  0.72   no colour   0.82   no shape    0.82   all three 1.0

so sorting accuracy >= 0.85 needs shape, colour *and* motion (frame order). ``tests/test_synthetic.py``
re-measures the fractions. Label balance: ``has_circle`` 0.50, ``has_leftward`` 0.60.

Transcribed sample (YT-Temporal style): per clip an ASR-like sentence holding the content words
``<colour> <shape> <verb> <direction>`` with random filler ("now the red circle moves to the left",
"um this blue uh square is going straight up you see"); the canonical direction word (left, right,
up, down) is always a word of the sentence. Words get ASR timestamps inside their clip (0.15 s
margins); the full ASR stream also holds lead-in/lead-out chatter, gap fillers and non-speech tokens
(``[Music]``, ``&gt;&gt;``) that the transcript cleaning drops, so ``transcripts.sample_window`` on the
written files reproduces the transcripts when its window is pinned to the events.

Captioned sample (WebVid style): the same kind of 4-event video (no lead-in/out), 12 frames over the
whole video and one clean caption describing the 4 events in order: "first a red circle moves left,
then a blue square goes up, next the green triangle slides down, finally a yellow cross moves right"
(at most 28 words and commas, so it fits CLIP's 32-token context with SOT/EOT). Among the first 256
captioned 'val' videos there are 255 distinct ordered event sequences and 254 distinct event sets
(228 distinct multisets of shape+colour alone), so retrieval over 256 held-out videos is meaningful
and rewards motion and order.

Hard negatives (``negative_group_size`` = g > 1, 'train' split only): indices ``g*k .. g*k+g-1`` form a
group. Member 0 is an ordinary draw (seeded by the group); member m >= 1 changes it in one place, cycling
through shape of one event, motion of one event, and colour of one event (captioned videos: the order of
the events instead of a colour, since a caption states the order; a transcribed video's contrastive text is
the mean of its transcripts, which no reordering changes). Mutants stay valid and inside the split's
buckets (if 64 tries find none, the member is an ordinary draw). Consecutive indices fill a batch, so every
batch holds groups that only shape, motion or order tell apart, and a contrastive loss that reads colour
alone cannot separate them. Held-out splits are never grouped.

Splits and determinism: ``(seed, split, kind, index)`` seeds ``np.random.default_rng``, so a sample is
a pure function of them (``epoch`` only varies the training frame times). Splits are disjoint in
*content*, not only in seeds: the ordered 4-event sequence is hashed into 10 buckets, bucket 0 is
'test', 1 is 'val', 2-9 'train'; a split only accepts its own buckets (rejection sampling), so no
held-out event sequence ever appears in training.

Labels (ints): ``has_<shape>``, ``has_<colour>``, ``has_<motion>ward`` (e.g. ``has_circle``,
``has_leftward``; the latter is only readable from frame order: a left and a right move sweep the
same positions), ``first_/last_<shape|colour|motion>`` and ``event<k>_<shape|colour|motion>`` class
indices into ``SHAPES``/``COLOURS``/``MOTIONS``, ``clip_seconds`` and
``<motion|colour|shape>_needed``.

Speed (development machine, 2 busy cores, 32 px, one process): ``transcribed`` ~2000 samples/s of
CPU time (~1400/s wall clock under load), ``transcribed_batch`` ~2300/s, ``captioned`` ~2600/s; 64 px
~1300/s. The demo's batches (hard-negative groups of 4, tokenized by `tvts.data.pipeline.SyntheticSource`):
~1600 transcribed and ~2400 captioned samples/s of CPU time. Rendering is chunked so that NumPy temporaries stay
near 256 KB (far larger ones page-faulted on every call under glibc malloc and made rendering 3-5x slower).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tvts.data.transcripts import clip_windows, frame_times

__all__ = [
    'SHAPES', 'COLOURS', 'MOTIONS', 'SPLITS', 'SyntheticConfig', 'Event', 'SyntheticVideo',
    'SyntheticCorpus', 'render_frames',
]

SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle', 'cross')
COLOURS: tuple[str, ...] = ('red', 'green', 'blue', 'yellow')
MOTIONS: tuple[str, ...] = ('left', 'right', 'up', 'down')
SPLITS: tuple[str, ...] = ('train', 'val', 'test')

_KINDS = {'transcribed': 0, 'captioned': 1}
_RGB = np.array([[215, 45, 45], [45, 190, 70], [55, 95, 235], [225, 205, 45]], np.float32)
_RGB_LISTS = _RGB.tolist()  # Python floats: clipping scalars in numpy cost a quarter of `video`'s time
_DIRECTION = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.float32)  # (x, y), y points down
_SPLIT_BUCKETS = {'test': (0,), 'val': (1,), 'train': tuple(range(2, 10))}

# ASR-like phrasing. No filler contains a content word (shape, colour, direction).
_PRE = ('', '', '', 'now', 'okay', 'so', 'and now', 'um', 'and then', 'here', 'look')
_DET = ('the', 'the', 'a', 'this')
_VERB = ('moves', 'goes', 'slides', 'is moving', 'is going')
_DIR_PHRASE = {
    'left': ('left', 'to the left', 'over to the left'),
    'right': ('right', 'to the right', 'over to the right'),
    'up': ('up', 'straight up', 'up to the top'),
    'down': ('down', 'straight down', 'down to the bottom'),
}
_POST = ('', '', '', 'okay', 'like this', 'you see', 'there')
_HESITATION = ('uh', 'um')
_LEAD_IN = ('hey guys welcome back', 'hello everyone', "okay let's get started",
            'welcome back to the channel', 'hi there')
_LEAD_OUT = ('thanks for watching', 'see you next time', "that's all for today", 'bye bye')
_GAP_TOKENS = ('um', 'uh', '[Music]')
# Captions (WebVid style): clean, canonical direction words, <= 28 words and commas.
_CAP_FIRST = ('first ', '')
_CAP_THEN = ('then', 'next')
_CAP_LAST = ('finally', 'then', 'and then')
_CAP_VERB = ('moves', 'goes', 'slides')
_CAP_DET = ('a', 'the')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    image_size: int = 32
    num_clips: int = 4
    frames_per_clip: int = 3
    seed: int = 0
    num_shapes: int = 4                      # use SHAPES[:num_shapes]
    num_colours: int = 4                     # use COLOURS[:num_colours]
    clip_seconds: tuple[int, int] = (3, 5)   # inclusive, one draw per video
    gap_seconds: float = 1.0
    lead_seconds: tuple[float, float] = (1.5, 3.0)  # lead-in and lead-out of transcribed videos
    radius: tuple[float, float] = (0.16, 0.22)      # object radius, fraction of image_size
    travel: float = 0.42                     # distance travelled during an event, fraction of size
    colour_jitter: int = 20                  # +- per channel around the class colour
    change_probs: tuple[float, float, float] = (0.25, 0.25, 0.5)  # P(change shape / colour / motion)
    second_change_prob: float = 0.25         # P(a derived event changes one more attribute)
    frame_layout: str = 'window'             # 'window' (published) or 'clips'
    fps: float = 8.0                         # frame rate of exported files
    split_sizes: tuple[int, int, int] = (2**31, 2**16, 2**16)  # train, val, test (nominal)
    # 'train' only: consecutive indices form groups of this many hard negatives (see the docstring)
    negative_group_size: int = 1

    def __post_init__(self):
        if not 2 <= self.num_shapes <= len(SHAPES) or not 2 <= self.num_colours <= len(COLOURS):
            raise ValueError('num_shapes / num_colours must be in 2..4')
        if self.num_clips < 2 or self.frames_per_clip < 1:
            raise ValueError('need num_clips >= 2 and frames_per_clip >= 1')
        if self.frame_layout not in ('window', 'clips'):
            raise ValueError(f'frame_layout {self.frame_layout!r}')
        if 2 * self.radius[1] + self.travel > 1.0:
            raise ValueError('object of radius[1] cannot travel that far inside the frame')
        if self.num_clips > self.num_shapes * self.num_colours * len(MOTIONS):
            raise ValueError('more clips than distinct events in the vocabulary')
        if self.negative_group_size < 1:
            raise ValueError(f'negative_group_size must be >= 1, got {self.negative_group_size}')


@dataclasses.dataclass(frozen=True)
class Event:
    """One clip's event. Positions are in pixels (x right, y down), pixel centres at i + 0.5."""
    shape: int
    colour: int
    motion: int
    start: float
    end: float
    radius: float
    rgb: tuple[float, float, float]
    p0: tuple[float, float]
    p1: tuple[float, float]
    text: str                                   # transcript (cleaned words) or caption fragment

    @property
    def names(self) -> tuple[str, str, str]:
        return SHAPES[self.shape], COLOURS[self.colour], MOTIONS[self.motion]


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticVideo:
    """Continuous-time description of one video; ``render(t)`` draws any time."""
    id: str
    kind: str                                    # 'transcribed' | 'captioned'
    image_size: int
    duration: float
    events: tuple[Event, ...]
    background: tuple[float, float, float]       # base RGB
    gradient: tuple[float, float]                # brightness ramp across x and y (full width)
    words: tuple[tuple[str, float], ...]         # raw ASR stream (with non-speech tokens), sorted
    sentences: tuple[tuple[str, float, float], ...]  # denoised segments (text, start, end)
    caption: str                                 # '' for transcribed videos
    frame_layout: str = 'window'
    frames_per_clip: int = 3

    # --- time model -------------------------------------------------------------------------
    @property
    def clips(self) -> tuple[tuple[float, float], ...]:
        return tuple((e.start, e.end) for e in self.events)

    @property
    def transcripts(self) -> tuple[str, ...]:
        return tuple(e.text for e in self.events)

    @property
    def subtitles(self) -> list[dict]:
        return [{'word': w, 'time': t} for w, t in self.words]

    def frame_times(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """The sample's frame times: random in segments with ``rng``, midpoints without."""
        return frame_times(self.clips, self.frames_per_clip, rng, self.frame_layout)

    def event_at(self, t) -> np.ndarray:
        """Index of the event shown at time(s) t (nearest event; gaps split at their midpoint)."""
        t = np.asarray(t, np.float64)
        return _events_at([self], t.reshape(1, -1)).reshape(t.shape)

    def centre_at(self, t) -> np.ndarray:
        """Object centre(s) [..., 2] (x, y) in pixels at time(s) t."""
        t = np.asarray(t, np.float64)
        flat = t.reshape(1, -1)
        return _centres_at([self], flat, _events_at([self], flat)).reshape(*t.shape, 2)

    def _frame_params(self, times: np.ndarray) -> dict:
        return frame_params([self], np.asarray(times).reshape(1, -1))

    def render(self, t) -> np.ndarray:
        """uint8 frame [H, W, 3] at scalar time t, or frames [N, H, W, 3] for an array of times."""
        times = np.asarray(t, np.float64)
        frames = render_frames(self.image_size, **self._frame_params(times.reshape(-1)))
        return frames.reshape(times.shape + frames.shape[1:])

    # --- labels -------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        return _labels(self.events)


# The time model over a batch of videos (one array operation per field instead of one per video: per-video
# arrays took a tenth of the demo's batch making); times [B, N] seconds, results per (video, time).
def _per_event(videos: Sequence[SyntheticVideo], field: str, dtype) -> np.ndarray:
    """[B, E, ...]: `field` of every event of every video."""
    return np.array([[getattr(e, field) for e in v.events] for v in videos], dtype)


def _events_at(videos: Sequence[SyntheticVideo], times: np.ndarray) -> np.ndarray:
    start, end = _per_event(videos, 'start', np.float64), _per_event(videos, 'end', np.float64)
    bounds = 0.5 * (end[:, :-1] + start[:, 1:])  # [B, E - 1], increasing
    return (times[..., None] >= bounds[:, None, :]).sum(-1)  # = np.searchsorted(bounds, t, side='right')


def _centres_at(videos: Sequence[SyntheticVideo], times: np.ndarray, k: np.ndarray) -> np.ndarray:
    rows = np.arange(len(videos))[:, None]
    start, end, p0, p1 = (_per_event(videos, f, np.float64)[rows, k] for f in ('start', 'end', 'p0', 'p1'))
    prog = np.clip((times - start) / (end - start), 0.0, 1.0)[..., None]
    return p0 + prog * (p1 - p0)


def frame_params(videos: Sequence[SyntheticVideo], times: np.ndarray) -> dict:
    """`render_frames`' arguments for the frames at `times` [B, N] (seconds) of `videos` [B], flattened to B * N
    frames in (video, time) order."""
    times = np.asarray(times, np.float64)
    n = times.size
    k = _events_at(videos, times)
    rows = np.arange(len(videos))[:, None]

    def per_frame(field: str, dtype) -> np.ndarray:
        values = _per_event(videos, field, dtype)
        return values[rows, k].reshape(n, *values.shape[2:])

    def per_video(field: str) -> np.ndarray:
        return np.repeat(np.array([getattr(v, field) for v in videos], np.float32), times.shape[1], axis=0)

    return {'centre': _centres_at(videos, times, k).reshape(n, 2).astype(np.float32),
            'radius': per_frame('radius', np.float32), 'shape': per_frame('shape', np.int32),
            'rgb': per_frame('rgb', np.float32), 'background': per_video('background'),
            'gradient': per_video('gradient')}


def _labels(events: Sequence[Event]) -> dict[str, int]:
    attrs = [(e.shape, e.colour, e.motion) for e in events]
    out = {}
    for i, name in enumerate(SHAPES):
        out[f'has_{name}'] = int(any(a[0] == i for a in attrs))
    for i, name in enumerate(COLOURS):
        out[f'has_{name}'] = int(any(a[1] == i for a in attrs))
    for i, name in enumerate(MOTIONS):
        out[f'has_{name}ward'] = int(any(a[2] == i for a in attrs))
    for j, field in enumerate(('shape', 'colour', 'motion')):
        out[f'first_{field}'] = attrs[0][j]
        out[f'last_{field}'] = attrs[-1][j]
        for k, a in enumerate(attrs):
            out[f'event{k}_{field}'] = a[j]
    needed = _needed(attrs)
    out['shape_needed'], out['colour_needed'], out['motion_needed'] = needed
    out['clip_seconds'] = int(round(events[0].end - events[0].start))
    return out


def _needed(attrs) -> tuple[int, int, int]:
    """For (shape, colour, motion): 1 if two events differ in that attribute only."""
    need = [0, 0, 0]
    for i in range(len(attrs)):
        for j in range(i + 1, len(attrs)):
            diff = [attrs[i][a] != attrs[j][a] for a in range(3)]
            if sum(diff) == 1:
                need[diff.index(True)] = 1
    return tuple(need)


# --- rendering --------------------------------------------------------------------------------
def _sd_circle(dx, dy, r):
    return np.sqrt(dx * dx + dy * dy) - r


def _sd_square(dx, dy, r):
    return np.maximum(np.abs(dx), np.abs(dy)) - np.float32(0.85) * r


_TRI_H, _TRI_W = 1.9, 1.1  # triangle: apex up at -1.1 r, base at +0.8 r, half base 1.1 r
_TRI_NORM = float(np.hypot(_TRI_H, _TRI_W))


def _sd_triangle(dx, dy, r):
    side = (np.abs(dx) * np.float32(_TRI_H / _TRI_NORM)
            - (dy + np.float32(1.1) * r) * np.float32(_TRI_W / _TRI_NORM))
    return np.maximum(dy - np.float32(0.8) * r, side)


def _sd_cross(dx, dy, r):  # plus sign, arms of half-thickness 0.35 r
    ax, ay = np.abs(dx), np.abs(dy)
    t = np.float32(0.35) * r
    return np.minimum(np.maximum(ax - t, ay - r), np.maximum(ay - t, ax - r))


_SDF = (_sd_circle, _sd_square, _sd_triangle, _sd_cross)


def render_frames(size: int, centre, radius, shape, rgb, background, gradient) -> np.ndarray:
    """Vectorised renderer: N frames of one object over a graded background.

    centre [N, 2] (x, y) px; radius [N] px; shape [N] index into SHAPES; rgb [N, 3]; background
    [N, 3]; gradient [N, 2] brightness ramp over x and y. Returns uint8 [N, size, size, 3].
    Pixel (i, j) has its centre at (x, y) = (j + 0.5, i + 0.5); edges are anti-aliased by a
    one-pixel ramp of the signed distance.
    """
    centre = np.asarray(centre, np.float32)
    n = centre.shape[0]
    out = np.empty((n, size, size, 3), np.uint8)
    # Chunks keep every temporary near 256 KB: far larger ones go through mmap in glibc malloc and page-fault on
    # every call (several times slower), while 64 KB chunks spent a third of the time in per-chunk overhead
    # (64 frames at 32 px in 64 KB / 256 KB chunks: 14.5 / 8.3 ms on mimalloc, 18.8 / 14.2 ms on glibc malloc).
    chunk = max(1, 65536 // (size * size))
    args = [np.asarray(a, np.float32) for a in (radius, rgb, background, gradient)]
    shape = np.asarray(shape)
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        _render_chunk(size, centre[i:j], args[0][i:j], shape[i:j], args[1][i:j], args[2][i:j],
                      args[3][i:j], out[i:j])
    return out


def _render_chunk(size, centre, radius, shape, rgb, background, gradient, out):
    n = centre.shape[0]
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    dx = coords[None, None, :] - centre[:, 0, None, None]          # [n, 1, W]
    dy = coords[None, :, None] - centre[:, 1, None, None]          # [n, H, 1]
    r = radius[:, None, None]
    kinds = set(shape.tolist())
    if len(kinds) == 1:
        sd = _SDF[kinds.pop()](dx, dy, r)
    else:
        sd = np.empty((n, size, size), np.float32)
        for s in kinds:
            m = shape == s
            sd[m] = _SDF[s](dx[m], dy[m], r[m])
    alpha = np.subtract(np.float32(0.5), sd, out=sd)                 # coverage in [0, 1]
    np.minimum(np.maximum(alpha, np.float32(0), out=alpha), np.float32(1), out=alpha)
    rel = coords / np.float32(size) - np.float32(0.5)
    ramp = gradient[:, 0, None, None] * rel[None, None, :] + gradient[:, 1, None, None] * rel[None, :, None]
    ramp += np.float32(0.5)  # rounding offset for the final truncating cast
    for ch in range(3):
        val = ramp + background[:, ch, None, None]                   # [n, H, W]
        val += alpha * (rgb[:, ch, None, None] - val)
        np.minimum(np.maximum(val, np.float32(0), out=val), np.float32(255.5), out=val)
        out[..., ch] = val


# --- generation -------------------------------------------------------------------------------
class _Draws:
    """Uniform [0, 1) numbers from a Generator, fetched in blocks (Python-loop friendly)."""

    def __init__(self, rng: np.random.Generator, block: int = 128):
        self.rng, self.block = rng, block
        self.buf, self.i = rng.random(block).tolist(), 0

    def u(self) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = self.rng.random(self.block).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]

    def int(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def pick(self, seq):
        return seq[self.int(len(seq))]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.u()


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a fixed, platform-independent integer hash."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def sequence_bucket(attrs: Sequence[tuple[int, int, int]]) -> int:
    """Content bucket 0..9 of an ordered event sequence (0: test, 1: val, 2-9: train)."""
    code = 1
    for s, c, m in attrs:
        code = code * 64 + s * 16 + c * 4 + m
    return _mix64(code) % 10


def _sample_attrs(d: _Draws, cfg: SyntheticConfig, split: str) -> list[tuple[int, int, int]]:
    sizes = (cfg.num_shapes, cfg.num_colours, len(MOTIONS))
    p = np.asarray(cfg.change_probs, np.float64)
    cum = np.cumsum(p / p.sum()).tolist()
    buckets = _SPLIT_BUCKETS[split]
    n = cfg.num_clips
    for _ in range(100_000):
        events = [tuple(d.int(k) for k in sizes)]
        while len(events) < n:
            new = list(events[d.int(len(events))])
            u = d.u()
            attr = next(i for i, c in enumerate(cum) if u < c or i == 2)
            changed = [attr]
            if d.u() < cfg.second_change_prob:
                changed.append((attr + 1 + d.int(2)) % 3)
            for a in changed:
                new[a] = (new[a] + 1 + d.int(sizes[a] - 1)) % sizes[a]
            new = tuple(new)
            if new not in events:
                events.append(new)
        if not _valid(events, n):
            continue  # one attribute alone would order the clips (unsatisfiable for 2 clips)
        # Random orders of this (valid) set until one falls in the split's content buckets.
        for _ in range(32):
            order = sorted(range(n), key=lambda _: d.u())
            ordered = [events[i] for i in order]
            if sequence_bucket(ordered) in buckets:
                return ordered
    raise RuntimeError('could not sample an event sequence')  # pragma: no cover


# What member m >= 1 of a hard-negative group changes in the group's first video, cycling.
# Transcribed videos never get 'order': their contrastive text (the mean of the transcripts)
# is the same for any order, so a reordered sibling would be a false negative.
_MUTATIONS = {'transcribed': ('shape', 'motion', 'colour'), 'captioned': ('shape', 'motion', 'order')}


def _valid(events, n: int) -> bool:
    return (len(set(events)) == n
            and not (n >= 3 and any(len({e[a] for e in events}) == n for a in range(3))))


def _mutate(d: _Draws, base, mutation: str, cfg: SyntheticConfig, split: str):
    """``base`` with one attribute of one event changed (or its events reordered), still valid and
    inside the split's buckets; None if 64 tries find no such sequence."""
    sizes = (cfg.num_shapes, cfg.num_colours, len(MOTIONS))
    n, buckets = len(base), _SPLIT_BUCKETS[split]
    for _ in range(64):
        new = [list(e) for e in base]
        if mutation == 'order':
            new = sorted(new, key=lambda _: d.u())
        else:
            a = ('shape', 'colour', 'motion').index(mutation)
            k = d.int(n)
            new[k][a] = (new[k][a] + 1 + d.int(sizes[a] - 1)) % sizes[a]
        new = [tuple(e) for e in new]
        if new != list(base) and _valid(new, n) and sequence_bucket(new) in buckets:
            return new
    return None


def _sentence(d: _Draws, attrs: tuple[int, int, int]) -> list[str]:
    s, c, m = attrs
    words = [*d.pick(_PRE).split(), d.pick(_DET)]
    if d.u() < 0.15:
        words.append(d.pick(_HESITATION))
    words += [COLOURS[c], SHAPES[s], *d.pick(_VERB).split(), *d.pick(_DIR_PHRASE[MOTIONS[m]]).split(),
              *d.pick(_POST).split()]
    return words


def _spread(d: _Draws, words: Sequence[str], t0: float, t1: float) -> list[tuple[str, float]]:
    """ASR-like timestamps for words spoken within (t0, t1), rounded to ms, increasing."""
    n = len(words)
    slot = (t1 - t0) / n
    out = []
    for i, w in enumerate(words):
        out.append((w, round(t0 + slot * (i + 0.5 + 0.6 * (d.u() - 0.5)), 3)))
    return out


def _caption(d: _Draws, attrs: Sequence[tuple[int, int, int]]) -> tuple[str, list[str]]:
    frags = [f'{d.pick(_CAP_DET)} {COLOURS[c]} {SHAPES[s]} {d.pick(_CAP_VERB)} {MOTIONS[m]}'
             for s, c, m in attrs]
    parts = [d.pick(_CAP_FIRST) + frags[0]]
    parts += [f'{d.pick(_CAP_THEN)} {f}' for f in frags[1:-1]]
    parts.append(f'{d.pick(_CAP_LAST)} {frags[-1]}')
    return ', '.join(parts), frags


class SyntheticCorpus:
    """Deterministic, infinite-ish synthetic corpus of one split. See the module docstring."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), split: str = 'train'):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        self.config = config
        self.split = split
        self.shapes = SHAPES[:config.num_shapes]
        self.colours = COLOURS[:config.num_colours]
        self.motions = MOTIONS
        self._bases: dict[tuple[str, int], list[tuple[int, int, int]]] = {}  # hard-negative groups' first videos

    def __len__(self) -> int:
        return self.config.split_sizes[SPLITS.index(self.split)]

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} outside split {self.split!r} of size {len(self)}')
        return index

    def _rng(self, kind: str, index: int, *extra: int) -> np.random.Generator:
        key = [self.config.seed, SPLITS.index(self.split), _KINDS[kind], index, *extra]
        return np.random.default_rng(key)

    def sample_id(self, index: int, kind: str = 'transcribed') -> str:
        return f"synth_{self.split}_{'t' if kind == 'transcribed' else 'c'}{int(index):07d}"

    def _attrs(self, d: _Draws, kind: str, index: int) -> list[tuple[int, int, int]]:
        group_size = self.config.negative_group_size if self.split == 'train' else 1
        if group_size == 1:
            return _sample_attrs(d, self.config, self.split)
        group, member = divmod(index, group_size)
        base = self._group_base(kind, group)
        if member == 0:
            return base
        mutations = _MUTATIONS[kind]
        new = _mutate(d, base, mutations[(member - 1) % len(mutations)], self.config, self.split)
        return new if new is not None else _sample_attrs(d, self.config, self.split)

    def _group_base(self, kind: str, group: int) -> list[tuple[int, int, int]]:
        # a batch holds whole groups, so each group's first video is drawn once, not once per member
        key = (kind, group)
        base = self._bases.get(key)
        if base is None:
            if len(self._bases) >= 4096:
                self._bases.clear()
            base = self._bases[key] = _sample_attrs(_Draws(self._rng(kind, group, 2)), self.config, self.split)
        return list(base)

    # --- continuous-time video ----------------------------------------------------------------
    def video(self, index: int, kind: str = 'transcribed',
              events: Sequence[tuple[int, int, int]] | None = None) -> SyntheticVideo:
        """Full description of video ``index`` of this split (``kind``: 'transcribed'|'captioned').

        ``events``: the (shape, colour, motion) indices of the ``num_clips`` events to show instead of the drawn
        ones (synthetic benchmarks whose classes are event sequences); geometry, timing and words are still drawn
        from ``index``."""
        index = self._check(index)
        cfg, size = self.config, self.config.image_size
        d = _Draws(self._rng(kind, index))
        if events is None:
            attrs = self._attrs(d, kind, index)
        else:
            attrs = [tuple(int(v) for v in e) for e in events]
            if len(attrs) != cfg.num_clips or any(len(e) != 3 for e in attrs):
                raise ValueError(f'events must be {cfg.num_clips} (shape, colour, motion) triples, got {events!r}')
        n = cfg.num_clips
        clip_len = float(cfg.clip_seconds[0] + d.int(cfg.clip_seconds[1] - cfg.clip_seconds[0] + 1))
        transcribed = kind == 'transcribed'
        if transcribed:
            lead_in = round(d.uniform(*cfg.lead_seconds), 3)
            lead_out = round(d.uniform(*cfg.lead_seconds), 3)
        else:
            lead_in = lead_out = 0.0
        clips = clip_windows(lead_in, clip_len, n, cfg.gap_seconds)
        duration = clips[-1][1] + lead_out

        # Geometry and colour per event.
        travel = cfg.travel * size
        geo = []
        for _shape, c, m in attrs:
            r = d.uniform(*cfg.radius) * size
            dxy = _DIRECTION[m]
            p0 = []
            for axis in range(2):
                lo = r + (travel if dxy[axis] < 0 else 0.0)
                hi = size - r - (travel if dxy[axis] > 0 else 0.0)
                p0.append(d.uniform(lo, hi))
            p1 = (p0[0] + travel * float(dxy[0]), p0[1] + travel * float(dxy[1]))
            j = cfg.colour_jitter
            rgb = tuple(float(min(max(_RGB_LISTS[c][ch] + d.int(2 * j + 1) - j, 0), 255)) for ch in range(3))
            geo.append((r, rgb, (p0[0], p0[1]), p1))
        grey = d.uniform(30.0, 90.0)
        background = tuple(grey + d.uniform(-8.0, 8.0) for _ in range(3))
        gradient = (d.uniform(-20.0, 20.0), d.uniform(-20.0, 20.0))

        # Text.
        words: list[tuple[str, float]] = []
        sentences: list[tuple[str, float, float]] = []
        caption = ''
        if transcribed:
            texts = []
            if d.u() < 0.5:
                words.append(('[Music]', round(d.uniform(0.02, 0.3), 3)))
            lead = _LEAD_IN[d.int(len(_LEAD_IN))].split()
            lw = _spread(d, lead, 0.4, lead_in - 0.3)
            words += lw
            sentences.append((' '.join(lead), lw[0][1], lw[-1][1] + 0.2))
            for k, ((t0, t1), a) in enumerate(zip(clips, attrs)):
                sent = _sentence(d, a)
                if d.u() < 0.15:  # speaker-change marker, dropped by the cleaning
                    words.append(('&gt;&gt;', round(t0 + 0.12, 3)))
                words += _spread(d, sent, t0 + 0.15, t1 - 0.15)
                texts.append(' '.join(sent))
                sentences.append((texts[-1], t0, t1))
                if k < n - 1 and d.u() < 0.3:  # something said / heard in the gap
                    tok = d.pick(_GAP_TOKENS)
                    tg = round(t1 + cfg.gap_seconds * d.uniform(0.3, 0.7), 3)
                    words.append((tok, tg))
                    if tok != '[Music]':
                        sentences.append((tok, tg - 0.1, tg + 0.1))
            tail = _LEAD_OUT[d.int(len(_LEAD_OUT))].split()
            ow = _spread(d, tail, clips[-1][1] + 0.3, duration - 0.2)
            words += ow
            sentences.append((' '.join(tail), ow[0][1], ow[-1][1] + 0.1))
            if d.u() < 0.5:
                words.append(('[Music]', round(duration - 0.1, 3)))
            words.sort(key=lambda w: w[1])
        else:
            caption, texts = _caption(d, attrs)

        events = tuple(
            Event(shape=s, colour=c, motion=m, start=t0, end=t1, radius=r, rgb=rgb, p0=p0, p1=p1,
                  text=txt)
            for (s, c, m), (t0, t1), (r, rgb, p0, p1), txt in zip(attrs, clips, geo, texts))
        return SyntheticVideo(
            id=self.sample_id(index, kind), kind=kind, image_size=size, duration=duration,
            events=events, background=background, gradient=gradient, words=tuple(words),
            sentences=tuple(sentences), caption=caption, frame_layout=cfg.frame_layout,
            frames_per_clip=cfg.frames_per_clip)

    def sample_frame_times(self, video: SyntheticVideo, index: int, *, train: bool,
                           epoch: int = 0) -> np.ndarray:
        """12 frame times of a sample: random in segments (train, seeded by index and epoch) or
        segment midpoints (eval)."""
        rng = self._rng(video.kind, int(index), int(epoch), 1) if train else None
        return video.frame_times(rng)

    # --- samples ------------------------------------------------------------------------------
    def transcribed(self, index: int, *, train: bool = True, epoch: int = 0,
                    render: bool = True) -> dict:
        """{'frames': uint8 [T, H, W, 3], 'transcripts': list[str] (temporal order),
        'labels': dict[str, int], 'id': str}. ``render=False``: 'frames' is None (labels/text only)."""
        v = self.video(index, 'transcribed')
        frames = (v.render(self.sample_frame_times(v, index, train=train, epoch=epoch))
                  if render else None)
        return {'frames': frames, 'transcripts': list(v.transcripts), 'labels': v.labels, 'id': v.id}

    def captioned(self, index: int, *, train: bool = True, epoch: int = 0,
                  render: bool = True) -> dict:
        """{'frames': uint8 [T, H, W, 3], 'caption': str, 'labels': dict[str, int], 'id': str}"""
        v = self.video(index, 'captioned')
        frames = (v.render(self.sample_frame_times(v, index, train=train, epoch=epoch))
                  if render else None)
        return {'frames': frames, 'caption': v.caption, 'labels': v.labels, 'id': v.id}

    def _batch(self, indices, kind: str, train: bool, epoch: int, render: bool, labels: bool):
        indices = [int(i) for i in indices]
        videos = [self.video(i, kind) for i in indices]
        frames = None
        if render:
            times = np.stack([self.sample_frame_times(v, i, train=train, epoch=epoch)
                              for v, i in zip(videos, indices)])
            frames = render_frames(self.config.image_size, **frame_params(videos, times))
            frames = frames.reshape(*times.shape, *frames.shape[1:])
        arrays = None
        if labels:  # the trainer's batches need none
            label_dicts = [v.labels for v in videos]
            arrays = {k: np.array([ld[k] for ld in label_dicts], np.int32) for k in label_dicts[0]}
        return videos, frames, arrays

    def transcribed_batch(self, indices, *, train: bool = True, epoch: int = 0,
                          render: bool = True, labels: bool = True) -> dict:
        """{'frames': uint8 [B, T, H, W, 3] (None if not render), 'transcripts': list[list[str]],
        'labels': dict of int32 [B] (None if not labels), 'ids': list[str]}"""
        videos, frames, labels = self._batch(indices, 'transcribed', train, epoch, render, labels)
        return {'frames': frames, 'transcripts': [list(v.transcripts) for v in videos],
                'labels': labels, 'ids': [v.id for v in videos]}

    def captioned_batch(self, indices, *, train: bool = True, epoch: int = 0,
                        render: bool = True, labels: bool = True) -> dict:
        """{'frames': uint8 [B, T, H, W, 3] (None if not render), 'captions': list[str],
        'labels': dict of int32 [B] (None if not labels), 'ids': list[str]}"""
        videos, frames, labels = self._batch(indices, 'captioned', train, epoch, render, labels)
        return {'frames': frames, 'captions': [v.caption for v in videos], 'labels': labels,
                'ids': [v.id for v in videos]}


# ------------------------------------------------------------------------------------------------------------------
# A WordPiece vocabulary of the corpus's words (for the TVTS v1 text tower, which reads BERT's WordPiece ids)
# ------------------------------------------------------------------------------------------------------------------
def corpus_words() -> list[str]:
    """Every word and punctuation mark the corpus writes (transcripts, ASR chatter, captions), lowercased and split
    as BERT's pre-tokeniser splits them (on whitespace and around punctuation), sorted."""
    import re

    phrases = [*SHAPES, *COLOURS, *MOTIONS, *_PRE, *_DET, *_VERB, *(p for v in _DIR_PHRASE.values() for p in v),
               *_POST, *_HESITATION, *_LEAD_IN, *_LEAD_OUT, *_GAP_TOKENS, *_CAP_FIRST, *_CAP_THEN, *_CAP_LAST,
               *_CAP_VERB, *_CAP_DET, ',', '&gt;&gt;']
    return sorted({w for p in phrases for w in re.findall(r"\w+|[^\w\s]", p.lower())})


def write_wordpiece_vocab(path) -> str:
    """Writes a BERT-style `vocab.txt` ([PAD] 0, [UNK], [CLS], [SEP], [MASK], then `corpus_words()`, then every
    lowercase letter and digit alone and as a '##' continuation, so an unseen word splits into pieces rather than
    [UNK]) and returns its path. Fits the `v1-tiny` text tower's 1024 rows."""
    import os

    letters = [chr(c) for c in range(ord('a'), ord('z') + 1)] + [str(d) for d in range(10)]
    words = corpus_words()
    tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *words,
              *(c for c in letters if c not in words), *(f'##{c}' for c in letters)]
    path = os.fspath(path)
    tmp = f'{path}.{os.getpid()}.partial'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write('\n'.join(tokens) + '\n')
    os.replace(tmp, path)  # atomic: processes sharing a cache never read half a file
    return path


def wordpiece_vocab_path(cache_dir=None) -> str:
    """The corpus's WordPiece vocabulary (`write_wordpiece_vocab`), written once into `cache_dir` (default
    $TVTS_CACHE_DIR, else ~/.cache/tvts) under a name holding a hash of its contents; returns the path."""
    import hashlib
    import os

    cache_dir = cache_dir or os.environ.get('TVTS_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                                              'tvts')
    digest = hashlib.sha1('\n'.join(corpus_words()).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f'synthetic_wordpiece_{digest}.txt')
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        write_wordpiece_vocab(path)
    return path
