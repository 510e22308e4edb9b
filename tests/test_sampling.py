"""Sampling as published (tvts/data/sampling.py): windows and transcripts on hand-made word timings, frame times,
the resize + crop, decoding only the frames a sample needs, and every bad input named at the stage that meets it."""
import collections

import numpy as np
import pytest

from tvts.data import sampling as S
from tvts.data.video_io import decode_mp4, encode_mp4


class Script:
    """A stand-in for np.random.Generator that returns scripted draws, in order, per method."""

    def __init__(self, integers=(), uniform=(), random_u=0.5):
        self._integers, self._uniform, self.u = list(integers), list(uniform), random_u

    def integers(self, lo, hi=None, size=None):
        value = self._integers.pop(0)
        assert (0 if hi is None else lo) <= value < (lo if hi is None else hi), (lo, hi, value)
        return value

    def uniform(self, lo, hi):
        frac = self._uniform.pop(0)
        return lo + frac * (hi - lo)

    def random(self, n):
        return np.full(n, self.u)


def record(pairs, duration=30.0, **extra):
    return {'words': [w.encode() for w, _ in pairs], 'times': np.array([t for _, t in pairs], np.float32),
            'duration': np.float32(duration), **extra}


CFG = S.SamplingConfig(image_size=32, num_frames=12)
# Window of length 4 s from 2.0 s: clips (2, 6) (7, 11) (12, 16) (17, 21).
BOUNDARY_WORDS = [('a', 2.0),      # on clip 0's start: out (strict)
                  ('b', 3.0),      # clip 0
                  ('c', 6.0),      # on clip 0's end: out
                  ('d', 6.5),      # in the gap
                  ('e', 7.0),      # on clip 1's start: out
                  ('f', 8.0), ('[Music]', 9.0),  # clip 1; the non-speech token is dropped
                  ('g', 13.0),     # clip 2
                  ('h', 20.5),     # clip 3
                  ('i', 21.0)]     # on clip 3's end: out


def words_of(pairs):
    return S.read_words([w for w, _ in pairs], [t for _, t in pairs])


def test_window_and_transcripts_on_hand_made_timings():
    # length 4 (window 19 s), start = uniform(0, 30 - 19) = 2.0
    counts = collections.Counter()
    w = S.draw_window(words_of(BOUNDARY_WORDS), 30.0, Script(integers=[4], uniform=[2.0 / 11]), CFG, counts)
    np.testing.assert_allclose(w.clips, ((2, 6), (7, 11), (12, 16), (17, 21)))
    assert w.transcripts == ('b', 'f', 'g', 'h')
    # 12 frames: the window 2..21 cut into 12 equal segments, one time in each (here the midpoint, u = 0.5)
    np.testing.assert_allclose(w.frame_times, 2.0 + 19 / 12 * (np.arange(12) + 0.5))
    assert not counts


def test_a_silent_clip_redraws_the_window_and_every_draw_silent_skips():
    pairs = [p for p in BOUNDARY_WORDS if p[0] != 'g']  # clip 2 of the window above is now silent
    # draw 1: length 4 from 2.0: (2,6) 'b' (7,11) 'f' (12,16) '' (17,21) 'h'
    # draw 2: length 3 from 0.0: (0,3) 'a' (4,7) 'c d' (8,11) '' ('f' at 8.0 is on the edge) (12,15) ''
    # draw 3: length 5 from 2.5: (2.5,7.5) 'b c d e' (8.5,13.5) '' (14.5,19.5) '' (20.5,25.5) 'i'
    script = lambda: Script(integers=[4, 3, 5], uniform=[2.0 / 11, 0.0, 2.5 / 7])  # noqa: E731
    cfg = S.SamplingConfig(image_size=32, window_tries=3)
    counts = collections.Counter()
    with pytest.raises(S.BadExample) as e:
        S.draw_window(words_of(pairs), 30.0, script(), cfg, counts)
    assert e.value.reason == 'silent_window'
    assert counts == {'silent_clip': 2}  # two re-draws; the third silent window skips the video

    pairs += [('k', 10.0), ('g2', 18.0), ('j', 22.0)]  # draw 3 now speaks in every clip
    counts = collections.Counter()
    w = S.draw_window(words_of(pairs), 30.0, script(), cfg, counts)
    assert w.clips[0] == pytest.approx((2.5, 7.5))
    assert w.transcripts == ('b c d e', 'k', 'g2', 'i j')
    assert counts == {'silent_clip': 2}
    # evaluation keeps its one centred window, silent clips and all (their transcript is '')
    assert S.draw_window(words_of(BOUNDARY_WORDS[:2]), 30.0, None, CFG).transcripts == ('', '', '', '')


def test_a_length_that_does_not_fit_is_redrawn_among_those_that_do():
    # 17 s: only length 3 fits (4 * 3 + 3 = 15 <= 17; 4 * 4 + 3 = 19 > 17)
    pairs = [(f'w{k}', 0.5 + k) for k in range(16)]
    counts = collections.Counter()
    w = S.draw_window(words_of(pairs), 17.0, Script(integers=[5, 0], uniform=[0.5]), CFG, counts)
    assert counts == {'window_too_long': 1}
    assert w.clips[0] == pytest.approx((1.0, 4.0)) and w.clips[-1] == pytest.approx((13.0, 16.0))
    # shorter than 15 s: the whole video, 4 equal clips between the gaps (the published fallback)
    counts = collections.Counter()
    w = S.draw_window(words_of(pairs), 11.0, np.random.default_rng(0), CFG, counts)
    np.testing.assert_allclose(w.clips, ((0, 2), (3, 5), (6, 8), (9, 11)))
    assert w.transcripts == ('w0 w1', 'w3 w4', 'w6 w7', 'w9 w10') and counts == {'shrunk_window': 1}
    with pytest.raises(S.BadExample, match='silent_window'):  # one window only: a silent clip skips the video
        S.draw_window(words_of(pairs[:5]), 11.0, np.random.default_rng(0), CFG)
    with pytest.raises(S.BadExample) as e:  # clips under 1 s
        S.draw_window(words_of(pairs), 6.9, np.random.default_rng(0), CFG)
    assert e.value.reason == 'too_short'


def test_evaluation_takes_the_centred_longest_window_and_midpoints():
    w = S.draw_window(words_of(BOUNDARY_WORDS), 30.0, None, CFG)  # length 5 -> 23 s, from 3.5
    assert w.clips[0] == pytest.approx((3.5, 8.5)) and w.clips[-1] == pytest.approx((21.5, 26.5))
    np.testing.assert_allclose(w.frame_times, 3.5 + 23 / 12 * (np.arange(12) + 0.5))
    np.testing.assert_allclose(S.captioned_frame_times(12.0, 12, None), np.arange(12) + 0.5)
    t = S.captioned_frame_times(12.0, 12, np.random.default_rng(0))
    np.testing.assert_array_equal(np.floor(t), np.arange(12))  # one random time in each 1 s segment


def test_random_windows_fit_and_follow_the_recipe():
    rng = np.random.default_rng(0)
    pairs = [(f'w{k}', 0.25 + 0.5 * k) for k in range(80)]  # a word every 0.5 s: no clip is silent
    lengths = set()
    for _ in range(100):
        w = S.draw_window(words_of(pairs), 40.0, rng, CFG)
        c = np.array(w.clips)
        lengths.add(round(c[0, 1] - c[0, 0], 6))
        np.testing.assert_allclose(c[1:, 0] - c[:-1, 1], 1.0)
        assert c[0, 0] >= 0 and c[-1, 1] <= 40.0
    assert lengths == {3.0, 4.0, 5.0}


def test_annotations_bad_cases():
    with pytest.raises(S.BadExample, match='no_subtitles'):
        S.read_words([], [])
    with pytest.raises(S.BadExample, match='no_subtitles'):
        S.read_words(None, None)
    with pytest.raises(S.BadExample, match='no_subtitles'):
        S.read_words([b'[Music]', b'>>'], [1.0, 2.0])  # nothing spoken
    with pytest.raises(S.BadExample, match='bad_annotation'):
        S.read_words([b'a', b'b'], [1.0])
    with pytest.raises(S.BadExample, match='bad_annotation'):
        S.read_words([b'a'], [float('nan')])
    assert S.read_words(np.array([b'caf\xc3\xa9', b' x ']), np.array([1, 2], np.float32)) == [
        {'word': 'café', 'time': 1.0}, {'word': 'x', 'time': 2.0}]
    for bad in (None, float('nan'), 0.0, -1.0, 'abc'):
        with pytest.raises(S.BadExample, match='bad_duration'):
            S.read_duration(bad)
    assert S.read_duration(np.float32(2.5)) == 2.5
    assert S.as_text(np.array(b'hi')) == 'hi' and S.as_text(None) == ''


def test_resize_and_crop_as_published():
    assert S.resized_shape(360, 640, 38) == (38, 67) and S.resized_shape(640, 360, 38) == (67, 38)
    cfg = S.SamplingConfig(image_size=4, num_frames=12)  # resize short side to int(4 * 1.2) = 4: identity rows
    rows, cols = S.crop_indices(8, 16, cfg, S.CropDraw())  # 8x16 -> 4x8, centre crop x0 = round(4 / 2) = 2
    np.testing.assert_array_equal(rows, [0, 2, 4, 6])
    np.testing.assert_array_equal(cols, [4, 6, 8, 10])
    rows, cols = S.crop_indices(8, 16, cfg, S.CropDraw(y=0.0, x=0.999, centre=False))  # x0 = randint(0, 4) -> 4
    np.testing.assert_array_equal(rows, [0, 2, 4, 6])
    np.testing.assert_array_equal(cols, [8, 10, 12, 14])
    _, flipped = S.crop_indices(8, 16, cfg, S.CropDraw(y=0.0, x=0.999, flip=True, centre=False))
    np.testing.assert_array_equal(flipped, [14, 12, 10, 8])
    # no flip unless asked (the published transform has none); draws are taken either way
    rng = np.random.default_rng(0)
    assert not any(S.draw_crop(rng, CFG).flip for _ in range(50))
    flips = [S.draw_crop(rng, S.SamplingConfig(image_size=32, flip=True)).flip for _ in range(200)]
    assert 50 < sum(flips) < 150
    assert S.draw_crop(None, CFG) == S.CropDraw()  # evaluation: centre, no flip


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    """A 10 s, 4 fps, 48x32 clip whose frame k shows the value 5 k (decodes back within a few levels)."""
    frames = np.zeros((40, 32, 48, 3), np.uint8) + (5 * np.arange(40, dtype=np.uint8))[:, None, None, None]
    path = str(tmp_path_factory.mktemp('video') / 'v.mp4')
    encode_mp4(path, frames, 4)
    with open(path, 'rb') as f:
        data = f.read()
    return data, path


def test_decode_frames_takes_the_frame_on_screen_and_matches_a_full_decode(video):
    data, path = video
    every, times = decode_mp4(path)
    want = np.array([0.0, 0.24, 0.25, 3.1, 7.9, 9.99, 1.2])  # unsorted on purpose; 3.1 onwards seeks
    got = S.decode_frames(data, want)
    np.testing.assert_array_equal(got, every[np.searchsorted(times, want, side='right') - 1])
    late = S.decode_frames(data, [6.6, 8.0])  # a window starting late seeks to its keyframe
    np.testing.assert_array_equal(late, every[[26, 32]])
    assert abs(float(late[0].mean()) - 130) < 4


def test_decode_bad_videos_by_reason(video):
    data, _ = video
    for blob, reason in ((b'', 'empty_video'), (None, 'empty_video'), (b'\x00garbage' * 64, 'unreadable'),
                         (data[:len(data) // 2], 'truncated')):
        with pytest.raises(S.BadExample) as e:
            S.decode_frames(blob, [1.0])
        assert e.value.reason == reason
    with pytest.raises(S.BadExample) as e:  # the file ends at 9.75 s; the sample needs 12 s
        S.decode_frames(data, [1.0, 12.0])
    assert e.value.reason == 'truncated' and 'frames end at 9.75' in str(e.value)
    S.decode_frames(data, [10.2])  # within 0.5 s of the last frame: the last frame


def test_samples_check_the_cheapest_stage_first(video):
    data, _ = video
    words = [(f'w{k}', 0.4 + 0.5 * k) for k in range(40)]
    cases = [
        (record([], 20.0, video=b''), 'no_subtitles'),           # annotation before the (empty) video
        (record(words, float('nan'), video=b''), 'bad_duration'),
        (record(words, 6.0, video=b''), 'too_short'),              # window before the video
        (record(words, 20.0, video=b''), 'empty_video'),
        (record(words, 20.0, video=b'junk' * 100), 'unreadable'),
        (record(words, 20.0, video=data), 'truncated'),            # claims 20 s, holds 10 s (most windows)
    ]
    rng = np.random.default_rng(3)
    for example, reason in cases:
        with pytest.raises(S.BadExample) as e:
            S.transcribed_sample(example, rng, CFG)
        assert e.value.reason == reason, (reason, e.value)
    with pytest.raises(S.BadExample, match='no_caption'):
        S.captioned_sample({'caption': b'  ', 'duration': 10.0, 'video': data}, rng, CFG)
    with pytest.raises(S.BadExample, match='bad_duration'):
        S.captioned_sample({'caption': b'a dog', 'duration': 0.0, 'video': data}, rng, CFG)


def test_samples_are_deterministic_uint8_at_the_image_size(video):
    data, _ = video
    example = {'caption': b'a grey ramp', 'duration': np.float32(10.0), 'video': data}
    a, texts = S.captioned_sample(example, np.random.default_rng(7), CFG)
    b, _ = S.captioned_sample(example, np.random.default_rng(7), CFG)
    assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3) and texts == ['a grey ramp']
    np.testing.assert_array_equal(a, b)
    # frame k of 12 lies in [k, k + 1) * 10 / 12 s: its value (5 per file frame) grows with k
    means = a.reshape(12, -1).mean(1)
    assert np.all(np.diff(means) > -3) and means[-1] - means[0] > 150
    ev, _ = S.captioned_sample(example, None, S.SamplingConfig(image_size=32, num_frames=12, train=False))
    ev2, _ = S.captioned_sample(example, np.random.default_rng(1),
                                S.SamplingConfig(image_size=32, num_frames=12, train=False))
    np.testing.assert_array_equal(ev, ev2)  # evaluation ignores the rng


def test_rgb_at_the_kept_pixels_is_the_whole_frame_conversion_cropped(video):
    import io

    import av

    data, _ = video
    rows, cols = S.crop_indices(32, 48, S.SamplingConfig(image_size=16), S.CropDraw(0.3, 0.8, flip=True,
                                                                                      centre=False))
    with av.open(io.BytesIO(data)) as c:
        for _, frame in zip(range(3), c.decode(video=0)):
            whole = frame.to_ndarray(format='rgb24')
            np.testing.assert_array_equal(S.frame_to_rgb(frame, rows, cols), whole[rows[:, None], cols[None, :]])
