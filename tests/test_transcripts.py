"""The published transcript-window sampler, against hand-computed cases."""
import numpy as np
import pytest

from tvts.data import transcripts as T


class StubRng:
    """Deterministic stand-in for np.random.Generator: fixed, hand-computable draws."""

    def __init__(self, length=4, frac=0.25, u=0.5):
        self.length, self.frac, self.u = length, frac, u

    def integers(self, lo, hi, size=None):
        assert lo <= self.length < hi
        return self.length if size is None else np.full(size, self.length)

    def uniform(self, lo, hi):
        return lo + self.frac * (hi - lo)

    def random(self, n):
        return np.full(n, self.u)


def words(*pairs):
    return [{'word': w, 'time': t} for w, t in pairs]


def test_clean_word():
    assert T.clean_word('  hello ') == 'hello'
    assert T.clean_word("don&#39;t") == "don't"
    for junk in ('[Music]', '[ Applause ]', '(laughs)', '&gt;&gt;', '>>', '', '   ', '-', '...', None):
        assert T.clean_word(junk) == '', junk
    assert T.clean_word('a  b') == 'a b'
    assert T.clean_word('3d') == '3d'
    assert T.clean_word('cafÃ©') == 'café'  # mojibake repaired (ftfy)


def test_clean_subtitles_drops_and_converts():
    subs = words(('hi', '0.5'), ('[Music]', 1.0), (' there ', 2), ('&gt;&gt;', 3.0), ('x', None),
                 ('y', float('nan')))
    assert T.clean_subtitles(subs) == [{'word': 'hi', 'time': 0.5}, {'word': 'there', 'time': 2.0}]


def test_clip_windows():
    assert T.clip_windows(10.0, 3, 4, 1.0) == ((10, 13), (14, 17), (18, 21), (22, 25))
    assert T.clip_windows(0.0, [3, 5, 4, 3], 4, 1.0) == ((0, 3), (4, 9), (10, 14), (15, 18))
    with pytest.raises(ValueError):
        T.clip_windows(0.0, [3, 5], 4)


def test_frame_times_hand_computed():
    clips = T.clip_windows(10.0, 3, 4, 1.0)          # window 10..25, 12 segments of 1.25 s
    np.testing.assert_allclose(T.frame_times(clips), 10.625 + 1.25 * np.arange(12))
    np.testing.assert_allclose(  # 'clips': 3 segments of 1 s inside every clip
        T.frame_times(clips, layout='clips'),
        [10.5, 11.5, 12.5, 14.5, 15.5, 16.5, 18.5, 19.5, 20.5, 22.5, 23.5, 24.5])
    np.testing.assert_allclose(T.frame_times(clips, rng=StubRng(u=0.0)), 10 + 1.25 * np.arange(12))
    t = T.frame_times(clips, rng=np.random.default_rng(0))
    seg = np.floor((t - 10) / 1.25)
    np.testing.assert_array_equal(seg, np.arange(12))  # one random time inside each segment
    with pytest.raises(ValueError):
        T.frame_times(clips, layout='nope')


SUBS = words(
    ('[Music]', 0.1), ('hello', 1.0), ('everyone', 1.5),
    ('the', 2.5),                 # exactly at clip 0's start: excluded (strict)
    ('red', 3.0), ('circle', 4.0), ('&gt;&gt;', 5.0), ('moves', 6.0), ('left', 6.5),  # clip 0 2.5-6.5
    ('um', 7.0),                  # gap 6.5-7.5
    ('blue', 8.0), ('[Applause]', 9.0),                                           # clip 1 7.5-11.5
    # clip 2 12.5-16.5: no words
    ('  green ', 18.0), ('square', 21.4), ('up', 21.5),                           # clip 3 17.5-21.5
    ('bye', 25.0))


def test_sample_window_hand_computed():
    # duration 30, length 4 -> window 19 s; start = 0.25 * (30 - 19) = 2.75 with StubRng(frac=.25)
    w = T.sample_window(SUBS, 30.0, StubRng(length=4, frac=0.25, u=0.5), train=True)
    assert w.clips == ((2.75, 6.75), (7.75, 11.75), (12.75, 16.75), (17.75, 21.75))
    assert w.transcripts == ('red circle moves left', 'blue', '', 'green square up')
    assert w.num_empty == 1 and not w.shrunk
    np.testing.assert_allclose(w.frame_times, 2.75 + 19 / 12 * (np.arange(12) + 0.5))
    assert [x['word'] for x in w.clip_words[3]] == ['green', 'square', 'up']


def test_pinned_window_is_strict_at_both_ends():
    w = T.sample_window(SUBS, 30.0, start=2.5, clip_len=4, train=False)
    assert w.clips == ((2.5, 6.5), (7.5, 11.5), (12.5, 16.5), (17.5, 21.5))
    # 'the' at 2.5 / 'left' at 6.5 sit on the edges of clip 0, 'up' at 21.5 on clip 3's end: excluded.
    assert w.transcripts == ('red circle moves', 'blue', '', 'green square')
    np.testing.assert_allclose(w.frame_times, 2.5 + 19 / 12 * (np.arange(12) + 0.5))
    with pytest.raises(ValueError, match='pinned window'):
        T.sample_window(SUBS, 20.0, start=2.5, clip_len=4, train=False)
    with pytest.raises(ValueError, match='both'):
        T.sample_window(SUBS, 30.0, start=2.5, train=False)


def test_deterministic_eval_window_without_rng():
    w = T.sample_window(SUBS, 30.0, train=False)      # longest fitting length 5 -> 23 s, centred
    assert w.clips[0] == (3.5, 8.5) and w.clips[-1] == (21.5, 26.5)
    with pytest.raises(ValueError, match='rng'):
        T.sample_window(SUBS, 30.0, train=True)


def test_random_windows_follow_the_recipe():
    rng = np.random.default_rng(0)
    lengths, starts = set(), []
    for _ in range(300):
        w = T.sample_window(SUBS, 30.0, rng)
        clips = np.array(w.clips)
        length = clips[0, 1] - clips[0, 0]
        lengths.add(round(length, 9))
        np.testing.assert_allclose(clips[:, 1] - clips[:, 0], length)       # one shared length
        np.testing.assert_allclose(clips[1:, 0] - clips[:-1, 1], 1.0)       # 1 s gaps
        assert 0 <= clips[0, 0] and clips[-1, 1] <= 30.0
        starts.append(clips[0, 0] / (30.0 - (4 * length + 3)))
        for (s, e), text in zip(w.clips, w.transcripts):  # brute-force reference
            assert text == ' '.join(x['word'] for x in T.clean_subtitles(SUBS) if s < x['time'] < e)
        seg = np.floor((w.frame_times - clips[0, 0]) / ((clips[-1, 1] - clips[0, 0]) / 12))
        np.testing.assert_array_equal(seg, np.arange(12))
    assert lengths == {3.0, 4.0, 5.0}
    assert min(starts) < 0.05 and max(starts) > 0.95      # start covers the whole admissible range


def test_independent_lengths():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(50):
        w = T.sample_window(SUBS, 40.0, rng, independent_lengths=True)
        c = np.array(w.clips)
        seen.add(tuple(c[:, 1] - c[:, 0]))
        np.testing.assert_allclose(c[1:, 0] - c[:-1, 1], 1.0)
    assert any(len(set(x)) > 1 for x in seen)


def test_short_videos_shrink_or_raise():
    # 16 s video, drawn length 5 (23 s window): shrink to 4 clips of (16 - 3) / 4 = 3.25 s from 0.
    w = T.sample_window(SUBS, 16.0, StubRng(length=5))
    assert w.shrunk
    np.testing.assert_allclose(w.clips, [(0, 3.25), (4.25, 7.5), (8.5, 11.75), (12.75, 16.0)])
    assert w.transcripts[0] == 'hello everyone the red'
    # 6 s video: clips would be 0.75 s < 1 s -> a clear error naming the video.
    with pytest.raises(ValueError, match="'vid42' is 6.00 s long"):
        T.sample_window(SUBS, 6.0, np.random.default_rng(0), video_id='vid42')
    with pytest.raises(ValueError, match='invalid duration'):
        T.sample_window(SUBS, 0.0, np.random.default_rng(0))
