"""The synthetic video-transcript corpus: API, determinism, splits, labels read back from pixels,
corpus statistics and generation speed."""
import time

import numpy as np
import pytest

from tvts.data import synthetic as S
from tvts.data.synthetic import COLOURS, MOTIONS, SHAPES, SyntheticConfig, SyntheticCorpus
from tvts.data.transcripts import clean_subtitles, frame_times

CONTENT = set(SHAPES) | set(COLOURS) | set(MOTIONS)


@pytest.fixture(scope='module')
def train():
    return SyntheticCorpus(SyntheticConfig(), 'train')


@pytest.fixture(scope='module')
def val():
    return SyntheticCorpus(SyntheticConfig(), 'val')


def attrs_of(video):
    return tuple((e.shape, e.colour, e.motion) for e in video.events)


def object_mask(frames):
    """Object pixels: saturated colour. The background is grey (channel spread <= 16 + rounding)."""
    f = frames.astype(np.int32)
    return (f.max(-1) - f.min(-1)) > 60


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


# --- API ----------------------------------------------------------------------------------------
def test_sample_api(train):
    s = train.transcribed(3)
    assert s['frames'].dtype == np.uint8 and s['frames'].shape == (12, 32, 32, 3)
    assert isinstance(s['transcripts'], list) and len(s['transcripts']) == 4
    assert all(isinstance(t, str) and t for t in s['transcripts'])
    assert all(type(v) is int for v in s['labels'].values())
    assert s['id'] == 'synth_train_t0000003'
    c = train.captioned(3)
    assert c['frames'].shape == (12, 32, 32, 3) and isinstance(c['caption'], str)
    assert c['id'] == 'synth_train_c0000003'
    with pytest.raises(IndexError):
        train.transcribed(len(train))
    with pytest.raises(ValueError):
        SyntheticCorpus(split='dev')


@pytest.mark.parametrize('train_mode', [False, True])
def test_batches_equal_single_samples(train, train_mode):
    idx = [5, 0, 17]
    b = train.transcribed_batch(idx, train=train_mode, epoch=2)
    assert b['frames'].shape == (3, 12, 32, 32, 3) and b['frames'].dtype == np.uint8
    cb = train.captioned_batch(idx, train=train_mode, epoch=2)
    for j, i in enumerate(idx):
        s = train.transcribed(i, train=train_mode, epoch=2)
        np.testing.assert_array_equal(b['frames'][j], s['frames'])
        assert b['transcripts'][j] == s['transcripts']
        c = train.captioned(i, train=train_mode, epoch=2)
        np.testing.assert_array_equal(cb['frames'][j], c['frames'])
        assert cb['captions'][j] == c['caption']
        for k, v in s['labels'].items():
            assert b['labels'][k].dtype == np.int32 and b['labels'][k][j] == v
    bare = train.transcribed_batch(np.array(idx), train=train_mode, render=False)
    assert bare['frames'] is None and bare['transcripts'] == b['transcripts']
    assert all(np.array_equal(bare['labels'][k], b['labels'][k]) for k in b['labels'])
    unlabelled = train.captioned_batch(idx, train=train_mode, epoch=2, labels=False)  # the trainer's batches
    assert unlabelled['labels'] is None and unlabelled['captions'] == cb['captions']
    np.testing.assert_array_equal(unlabelled['frames'], cb['frames'])


def test_frames_are_the_renderer_at_the_frame_times(train):
    v = train.video(7)
    eval_times = frame_times(v.clips, 3)                      # published layout, midpoints
    np.testing.assert_array_equal(train.transcribed(7, train=False)['frames'], v.render(eval_times))
    t = train.sample_frame_times(v, 7, train=True)
    edges = np.linspace(v.clips[0][0], v.clips[-1][1], 13)
    assert np.all((t > edges[:-1]) & (t < edges[1:]))       # one random time per segment
    np.testing.assert_array_equal(train.transcribed(7)['frames'], v.render(t))
    np.testing.assert_array_equal(v.render(t[4]), v.render(t)[4])  # scalar time -> one frame


# --- determinism and splits ---------------------------------------------------------------------
def test_determinism(train):
    again = SyntheticCorpus(SyntheticConfig(), 'train')
    for i in (0, 11):
        a, b = train.transcribed(i), again.transcribed(i)
        np.testing.assert_array_equal(a['frames'], b['frames'])
        assert a['transcripts'] == b['transcripts'] and a['labels'] == b['labels']
        assert train.captioned(i)['caption'] == again.captioned(i)['caption']
    other = SyntheticCorpus(SyntheticConfig(seed=1), 'train')
    assert train.video(0).words != other.video(0).words
    # epoch varies only the training frame times
    e0, e1 = train.transcribed(4, epoch=0), train.transcribed(4, epoch=1)
    assert not np.array_equal(e0['frames'], e1['frames']) and e0['transcripts'] == e1['transcripts']
    np.testing.assert_array_equal(train.transcribed(4, train=False, epoch=0)['frames'],
                                  train.transcribed(4, train=False, epoch=5)['frames'])


def test_splits_are_disjoint_in_content(train, val):
    test = SyntheticCorpus(SyntheticConfig(), 'test')
    seqs = {name: {attrs_of(c.video(i, kind)) for i in range(n) for kind in ('transcribed', 'captioned')}
            for name, c, n in (('train', train, 1500), ('val', val, 300), ('test', test, 300))}
    assert not seqs['train'] & seqs['val'] and not seqs['train'] & seqs['test']
    assert not seqs['val'] & seqs['test']
    assert {S.sequence_bucket(s) for s in seqs['test']} == {0}
    assert {S.sequence_bucket(s) for s in seqs['val']} == {1}
    ids = {c.video(0).id for c in (train, val, test)}
    assert len(ids) == 3


def test_hard_negative_groups():
    """Members 1..3 of a training group differ from member 0 in one attribute of one event, cycling
    shape, motion, colour (captioned: event order instead of colour); held-out splits ignore it."""
    config = SyntheticConfig(negative_group_size=4)
    grouped = SyntheticCorpus(config, 'train')
    changed = {'shape': 0, 'colour': 1, 'motion': 2}
    for kind, third in (('transcribed', 'colour'), ('captioned', 'order')):
        for group in range(40):
            base = attrs_of(grouped.video(4 * group, kind))
            for member, mutation in zip((1, 2, 3), ('shape', 'motion', third)):
                other = attrs_of(grouped.video(4 * group + member, kind))
                assert other != base and len(set(other)) == 4
                assert not any(len({e[a] for e in other}) == 4 for a in range(3))
                assert S.sequence_bucket(other) >= 2                    # still a training sequence
                diffs = [(k, a) for k in range(4) for a in range(3) if other[k][a] != base[k][a]]
                if mutation == 'order':
                    assert sorted(other) == sorted(base)
                else:
                    assert [a for _, a in diffs] == [changed[mutation]], (kind, group, member)
    for split in ('val', 'test'):
        plain, asked = SyntheticCorpus(SyntheticConfig(), split), SyntheticCorpus(config, split)
        assert [attrs_of(plain.video(i)) for i in range(8)] == [attrs_of(asked.video(i)) for i in range(8)]
    with pytest.raises(ValueError, match='negative_group_size'):
        SyntheticConfig(negative_group_size=0)


# --- text -----------------------------------------------------------------------------------------
def test_transcripts_hold_exactly_their_event_words(train):
    for i in range(200):
        v = train.video(i)
        for e, text in zip(v.events, v.transcripts):
            shape, colour, motion = e.names
            words = text.split()
            assert [w for w in words if w in CONTENT] == [colour, shape, motion], text
            assert len(words) <= 16


def test_word_timestamps_lie_inside_their_clip(train):
    for i in range(100):
        v = train.video(i)
        words = clean_subtitles(v.subtitles)
        times = [w['time'] for w in words]
        assert times == sorted(times) and 0 < times[0] and times[-1] < v.duration
        for (s, e), text in zip(v.clips, v.transcripts):
            inside = [w['word'] for w in words if s < w['time'] < e]
            assert ' '.join(inside) == text
            assert all(s + 0.1 < w['time'] < e - 0.1 for w in words if s < w['time'] < e)
        # the denoised sentences hold the same words as the cleaned ASR
        assert ' '.join(t for t, _, _ in v.sentences).split() == [w['word'] for w in words]


def test_captions(val):
    caps = [val.captioned(i) for i in range(256)]
    assert len({c['caption'] for c in caps}) >= 250            # retrieval over 256 is meaningful
    for c in caps:
        text = c['caption']
        assert len(text.replace(',', ' ,').split()) <= 28        # fits 32 CLIP tokens with SOT/EOT
        content = [w for w in text.replace(',', ' ').split() if w in CONTENT]
        lab = c['labels']
        expected = []
        for k in range(4):
            expected += [COLOURS[lab[f'event{k}_colour']], SHAPES[lab[f'event{k}_shape']],
                         MOTIONS[lab[f'event{k}_motion']]]
        assert content == expected, text


# --- labels against the pixels -----------------------------------------------------------------
def test_labels_match_events(train):
    for i in range(100):
        v = train.video(i)
        lab = v.labels
        a = attrs_of(v)
        assert lab['has_circle'] == int(any(s == 0 for s, _, _ in a))
        assert lab['has_leftward'] == int(any(m == MOTIONS.index('left') for _, _, m in a))
        assert (lab['first_shape'], lab['first_colour'], lab['first_motion']) == a[0]
        assert (lab['last_shape'], lab['last_colour'], lab['last_motion']) == a[-1]
        assert lab['clip_seconds'] in (3, 4, 5)


def test_motion_read_back_from_pixels(train):
    """Every event's object centroid, measured in rendered pixels, moves in the labelled direction
    by about the configured travel, and not across it; has_leftward=1 iff some event moves left."""
    travel = train.config.travel * 32
    n_left = 0
    for i in range(40):
        v = train.video(i)
        moved_left = False
        for e in v.events:
            L = e.end - e.start
            frames = v.render(np.array([e.start + 0.1 * L, e.end - 0.1 * L]))
            d = centroid(object_mask(frames[1])) - centroid(object_mask(frames[0]))
            direction = S._DIRECTION[e.motion]
            along = float(d @ direction)
            across = float(abs(d @ direction[::-1]))
            assert 0.7 * travel < along < 0.9 * travel, (i, e.names, d)
            assert across < 0.5, (i, e.names, d)
            moved_left |= d[0] < -0.5 * travel
        assert v.labels['has_leftward'] == int(moved_left)
        n_left += moved_left
    assert 5 < n_left < 35


def test_motion_is_visible_across_a_clips_frames(train):
    """Eval frames 3k..3k+2 of the published layout: several px of motion between frames."""
    steps = []
    for i in range(30):
        v = train.video(i)
        frames = train.transcribed(i, train=False)['frames']
        ks = v.event_at(frame_times(v.clips, 3))
        for f in range(11):
            if ks[f] == ks[f + 1]:
                steps.append(np.linalg.norm(centroid(object_mask(frames[f + 1]))
                                            - centroid(object_mask(frames[f]))))
    assert np.median(steps) > 3.0
    # the nominal clip of a frame shows its event most of the time
    share = np.mean([np.mean(train.video(i).event_at(frame_times(train.video(i).clips, 3))
                             == np.repeat(np.arange(4), 3)) for i in range(200)])
    assert share > 0.85


def test_gap_shows_the_nearer_event_at_rest(train):
    v = train.video(2)
    e0, e1 = v.events[0], v.events[1]
    np.testing.assert_allclose(v.centre_at(e0.end + 0.2), e0.p1)      # first half: previous, end
    np.testing.assert_allclose(v.centre_at(e1.start - 0.2), e1.p0)    # second half: next, start
    np.testing.assert_allclose(v.centre_at(0.0), v.events[0].p0)      # lead-in
    np.testing.assert_allclose(v.centre_at(v.duration), v.events[-1].p1)


@pytest.mark.parametrize('shape,area', [(0, np.pi), (1, 1.7 ** 2), (2, 1.1 * 1.9), (3, 2.31)])
def test_renderer_shape_areas(shape, area):
    """White shape on black: summed coverage equals the analytic area (anti-aliased edges)."""
    for r in (5.5, 9.0):
        f = S.render_frames(64, centre=[[31.3, 30.7]], radius=[r], shape=[shape], rgb=[[255] * 3],
                            background=[[0] * 3], gradient=[[0, 0]])
        cover = f[0, ..., 0].astype(np.float64) / 255
        assert cover.sum() == pytest.approx(area * r * r, rel=0.03)
        assert np.all(f[0, ..., 0] == f[0, ..., 1])
        if shape != 2:  # triangle's centroid sits below its reference point
            ys, xs = np.mgrid[0:64, 0:64] + 0.5
            c = np.array([(xs * cover).sum(), (ys * cover).sum()]) / cover.sum()
            np.testing.assert_allclose(c, [31.3, 30.7], atol=0.05)


# --- corpus statistics --------------------------------------------------------------------------
def test_no_single_attribute_orders_the_clips(train):
    needed, alone = [], 0
    labels = {'has_circle': [], 'has_leftward': []}
    for i in range(3000):
        v = train.video(i)
        a = attrs_of(v)
        assert len(set(a)) == 4
        alone += any(len({x[j] for x in a}) == 4 for j in range(3))
        needed.append(S._needed(a))
        for k in labels:
            labels[k].append(v.labels[k])
    needed = np.array(needed)
    assert alone == 0                                     # documented: fraction 0
    frac = needed.mean(0)
    assert frac[2] > 0.75                                 # motion needed (documented ~0.82)
    assert frac[0] > 0.5 and frac[1] > 0.5                # shape / colour needed (~0.6)
    for k, v in labels.items():
        assert 0.3 < np.mean(v) < 0.8, k


def test_generation_speed(train):
    """>= 500 transcribed samples/s at 32 px, in process CPU time (robust to a busy machine).
    Measured on the development machine: ~1500-3000 samples/s single, ~2000-4000 in batches."""
    best = 0.0
    for rep in range(3):
        t = time.process_time()
        for i in range(200):
            train.transcribed(1000 + 200 * rep + i)
        best = max(best, 200 / (time.process_time() - t))
    t = time.process_time()
    train.transcribed_batch(range(5000, 5256))
    batch_rate = 256 / (time.process_time() - t)
    print(f'transcribed: {best:.0f} samples/s, transcribed_batch(256): {batch_rate:.0f} samples/s')
    assert best >= 500 and batch_rate >= 500
