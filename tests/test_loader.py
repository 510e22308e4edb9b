"""The file loader (tvts/data/loader.py): batches a pure function of (seed, iteration, process), a resumed stream
equal to the uninterrupted one, disjoint processes, worker processes changing nothing, bad input skipped, counted
and replaced, the bad-fraction stop, the checkpointed counters, and TFDS datasets read through `make_sources`."""
import collections
import re
import types

import numpy as np
import pytest
from helpers import tiny_config

from tvts import config as config_lib
from tvts.data import loader as L
from tvts.data.pipeline import make_sources
from tvts.data.sampling import SamplingConfig
from tvts.data.tokenizer import get_tokenizer
from tvts.data.video_io import encode_mp4

FPS, SIZE, TEXT_LENGTH = 2, 32, 16
SAMPLING = SamplingConfig(image_size=SIZE, num_frames=4)  # 4 clips x 1 frame
CAPTIONED = SamplingConfig(image_size=SIZE, num_frames=4, num_clips=1)


def mp4_bytes(tmp_path, name, frames):
    path = str(tmp_path / f'{name}.mp4')
    encode_mp4(path, frames, FPS)
    with open(path, 'rb') as f:
        return f.read()


def ramp(value, seconds):
    """A 32 px video of `seconds` at 2 fps, grey level `value` plus the frame index."""
    n = int(seconds * FPS)
    return (np.zeros((n, SIZE, SIZE, 3), np.uint8) + np.uint8(value)
            + np.arange(n, dtype=np.uint8)[:, None, None, None])


def transcribed_record(i, data, duration=24.0, words=None):
    if words is None:  # a word every 0.3 s: no clip of any window is silent, and each names its example
        words = [(f'e{i}w{k}', 0.15 + 0.3 * k) for k in range(int(duration / 0.3))]
    return {'id': f'yt{i}'.encode(), 'video': data, 'format': b'mp4', 'duration': np.float32(duration),
            'words': np.array([w.encode() for w, _ in words], dtype=object),
            'times': np.array([t for _, t in words], np.float32)}


def captioned_record(i, data, duration=6.0, caption=None):
    return {'id': f'wv{i}'.encode(), 'video': data, 'format': b'mp4', 'duration': np.float32(duration),
            'caption': (f'clip {i} of a grey ramp' if caption is None else caption).encode()}


class Records(list):
    """A random-access source that remembers what it was asked for and fails on the indices in `fail`."""

    def __init__(self, items, fail=()):
        super().__init__(items)
        self.fail, self.reads = set(fail), []

    def __getitem__(self, index):
        self.reads.append(index)
        if index in self.fail:
            raise OSError(f'record {index} is corrupt')
        return super().__getitem__(index)


N_GOOD = 9


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """Good and bad transcribed records (each bad one with the reason it must be skipped for), and good captioned
    records."""
    tmp = tmp_path_factory.mktemp('records')
    good = [transcribed_record(i, mp4_bytes(tmp, f'g{i}', ramp(20 * i, 24.0))) for i in range(N_GOOD)]
    video = good[0]['video']
    bad = {
        'read_error': transcribed_record(100, video),
        'no_subtitles': transcribed_record(101, video, words=[]),
        'bad_annotation': {**transcribed_record(102, video), 'times': np.zeros(3, np.float32)},
        'bad_duration': {**transcribed_record(103, video), 'duration': np.float32('nan')},
        'too_short': transcribed_record(104, mp4_bytes(tmp, 'short', ramp(0, 6.0)), duration=6.0),
        'silent_window': transcribed_record(105, video, duration=20.0, words=[('hello', 0.5)]),
        'empty_video': transcribed_record(106, b''),
        'unreadable': transcribed_record(107, b'\x00not a video' * 50),
        'truncated': transcribed_record(108, video[:len(video) // 2]),
    }
    records = good + list(bad.values())
    reasons = {N_GOOD + k: reason for k, reason in enumerate(bad)}
    captioned = [captioned_record(i, mp4_bytes(tmp, f'c{i}', ramp(25 * i, 6.0))) for i in range(8)]
    return records, reasons, captioned


def transcribed_source(corpus, *, batch=4, process_index=0, process_count=1, seed=0, workers=0, **kw):
    records, reasons, _ = corpus
    data = Records(records, fail=[i for i, r in reasons.items() if r == 'read_error'])
    return L.FileSource('transcribed', data, batch, TEXT_LENGTH, SAMPLING, process_index, process_count, seed,
                        workers, max_bad_fraction=kw.pop('max_bad_fraction', 1.0), **kw)


def captioned_source(corpus, *, batch=4, process_index=0, process_count=1, seed=0):
    return L.FileSource('captioned', Records(corpus[2]), batch, TEXT_LENGTH, CAPTIONED, process_index,
                        process_count, seed, 0, max_bad_fraction=0.0)


def example_ids(texts):
    """Which example each row of a batch's texts came from (transcribed words 'e<i>w<k>', captions 'clip <i>')."""
    tok = get_tokenizer(TEXT_LENGTH)
    ids = []
    for row in texts:
        text = ''.join(tok.decode(t) for t in row).replace(' ', '')  # CLIP's BPE splits digits apart
        ids.append(int(re.search(r'(?:^e|clip)(\d+)(?:w|of)', text).group(1)))
    return ids


def assert_batches_equal(a, b):
    assert a.keys() == b.keys() == {'video', 'texts'}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_are_uint8_frames_and_int32_tokens(corpus):
    t = transcribed_source(corpus).batch(0)
    assert t['video'].dtype == np.uint8 and t['video'].shape == (4, 4, SIZE, SIZE, 3)
    assert t['texts'].dtype == np.int32 and t['texts'].shape == (4, 4, TEXT_LENGTH)
    c = captioned_source(corpus).batch(0)
    assert c['video'].shape == (4, 4, SIZE, SIZE, 3) and c['texts'].shape == (4, 1, TEXT_LENGTH)


def test_the_same_seed_and_iteration_give_the_same_batch(corpus):
    a, b = transcribed_source(corpus), transcribed_source(corpus)
    first = [a.batch(i) for i in range(4)]
    assert_batches_equal(b.batch(2), first[2])  # read directly, without the batches before it
    assert_batches_equal(b.batch(0), first[0])  # and back
    other = transcribed_source(corpus, seed=1).batch(2)
    assert not np.array_equal(other['video'], first[2]['video'])


def test_a_run_resumed_mid_epoch_sees_the_uninterrupted_batches_and_counts(corpus):
    # 18 records, global batch 4: iteration 4 holds positions 16-19, across the first epoch's end
    straight = transcribed_source(corpus)
    batches = [straight.batch(i) for i in range(7)]
    saved = straight.state(3)  # the checkpoint at iteration 3 (batches 0-2 consumed)
    resumed = transcribed_source(corpus)
    resumed.restore(saved)
    for i in range(3, 7):
        assert_batches_equal(resumed.batch(i), batches[i])
    assert resumed.counters(7) == straight.counters(7)
    assert straight.counters(7)['skipped/read_error'] > 0


def test_the_epoch_is_a_permutation_and_processes_read_disjoint_examples(corpus):
    one = captioned_source(corpus)  # 8 records, global batch 4: iterations 0 and 1 are the first epoch
    epoch = example_ids(one.batch(0)['texts']) + example_ids(one.batch(1)['texts'])
    assert sorted(epoch) == list(range(8))
    second = example_ids(one.batch(2)['texts']) + example_ids(one.batch(3)['texts'])
    assert sorted(second) == list(range(8)) and second != epoch  # reshuffled
    halves = [captioned_source(corpus, process_index=p, process_count=2) for p in range(2)]
    for i in range(2):
        parts = [h.batch(i) for h in halves]
        assert not set(example_ids(parts[0]['texts'])) & set(example_ids(parts[1]['texts']))
        whole = one.batch(i)
        assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)
    assert not set(halves[0].data.reads) & set(halves[1].data.reads)
    assert sorted(halves[0].data.reads + halves[1].data.reads) == list(range(8))
    # the same with replacements: the global batch does not depend on the process count
    whole = transcribed_source(corpus).batch(3)
    parts = [transcribed_source(corpus, process_index=p, process_count=2).batch(3) for p in range(2)]
    assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)


def test_every_bad_input_is_skipped_counted_by_reason_and_replaced(corpus):
    records, reasons, _ = corpus
    source = transcribed_source(corpus)
    iterations = 10  # 40 positions: more than two epochs of 18
    got_ids = [example_ids(source.batch(i)['texts']) for i in range(iterations)]
    # what the loader must have done, from its order and replacement rule alone
    maker, want, want_ids = source.maker, collections.Counter(), []
    for slot in range(iterations * 4):
        position = maker.position(slot)
        for attempt in range(L.MAX_ATTEMPTS):
            index = maker.index(position, attempt)
            want['read'] += 1
            if index in reasons:
                want[f'skipped/{reasons[index]}'] += 1
                continue
            want_ids.append(index)
            break
    counts = source.counters(iterations)
    assert {k: v for k, v in counts.items() if not k.startswith('redrawn/')} == {
        k: want.get(k, 0) for k in L.COUNTER_KEYS if not k.startswith('redrawn/')}
    # the good records speak every 0.3 s and last 24 s: only the silent one re-draws, 4 times before its skip
    assert counts['redrawn/silent_clip'] == 4 * counts['skipped/silent_window']
    assert counts['redrawn/window_too_long'] > 0  # its 20 s do not fit 5 s clips
    assert [i for batch in got_ids for i in batch] == want_ids
    assert all(counts[f'skipped/{r}'] >= 2 for r in set(reasons.values()))  # each met in both epochs
    assert set(want_ids) == set(range(N_GOOD))  # every good example read
    assert source.skipped(iterations) == {r: counts[f'skipped/{r}'] for r in L.SKIP_REASONS}
    assert {r for r, _, _ in source.recent_bad} <= set(reasons.values())


def test_past_max_bad_fraction_the_source_stops_with_the_reasons(corpus):
    source = transcribed_source(corpus, max_bad_fraction=0.1, min_read=8)
    with pytest.raises(RuntimeError, match=r'config\.data\.max_bad_fraction=0\.1.*by reason'):
        for i in range(5):
            source.batch(i)
    records, reasons, _ = corpus
    all_bad = L.FileSource('transcribed', [records[i] for i, r in reasons.items() if r != 'read_error'], 2,
                           TEXT_LENGTH, SAMPLING,
                           max_bad_fraction=1.0)
    with pytest.raises(RuntimeError, match='64 examples in a row were bad'):
        all_bad.batch(0)


def test_worker_processes_give_the_same_batches(corpus):
    records = corpus[0]
    inline = L.FileSource('transcribed', list(records), 4, TEXT_LENGTH, SAMPLING, num_workers=0,
                          max_bad_fraction=1.0)
    pooled = L.FileSource('transcribed', list(records), 4, TEXT_LENGTH, SAMPLING, num_workers=2,
                          max_bad_fraction=1.0)
    try:
        for i in range(3):
            assert_batches_equal(pooled.batch(i), inline.batch(i))
        assert_batches_equal(pooled.batch(1), inline.batch(1))  # a restart at another iteration
        assert pooled.counters(2) == inline.counters(2) and pooled.counters(2)['skipped/unreadable'] >= 0
    finally:
        pooled.close()


def test_data_counters_sum_processes_report_changes_and_round_trip_checkpoints(corpus):
    sources = {'transcribed': transcribed_source(corpus), 'captioned': captioned_source(corpus)}
    for i in range(3):
        for s in sources.values():
            s.batch(i)
    counters = L.DataCounters(sources)
    scalars = counters.scalars(2)  # batches 0 and 1
    assert scalars['data/transcribed/read'] == sources['transcribed'].counters(2)['read']
    assert scalars['data/captioned/skipped/truncated'] == 0
    assert set(scalars) == {f'data/{k}/{key}' for k in sources for key in L.COUNTER_KEYS}
    line = counters.report(scalars)
    assert line.startswith('data: transcribed: skipped ') and 'captioned' not in line
    assert counters.report(scalars) is None  # nothing new
    meta = counters.meta(3)
    assert meta['data_counters']['transcribed'] == [sources['transcribed'].counters(3)]
    fresh = {'transcribed': transcribed_source(corpus), 'captioned': captioned_source(corpus)}
    L.DataCounters(fresh).restore(meta)
    assert fresh['transcribed'].counters(3) == sources['transcribed'].counters(3)
    # saved by 2 processes, restored by 1: the sums go to process 0
    two = {'data_counters': {'transcribed': [{'read': 5, 'skipped/truncated': 1}, {'read': 7}]}}
    L.DataCounters(fresh).restore(two)
    assert fresh['transcribed'].counters(0)['read'] == 12
    assert fresh['transcribed'].counters(0)['skipped/truncated'] == 1
    # the synthetic corpus has no counters: nothing logged, nothing saved
    synthetic = make_sources(tiny_config().data, SIZE, 4)
    assert L.DataCounters(synthetic).scalars(1) == {} and L.DataCounters(synthetic).meta(1) == {}



def test_data_counters_gather_every_process_and_restore_each_its_own(corpus, monkeypatch):
    from jax.experimental import multihost_utils

    sources = {'transcribed': transcribed_source(corpus, process_index=1, process_count=2)}
    sources['transcribed'].batch(0)
    mine = sources['transcribed'].counters(1)
    other = {k: 0 for k in L.COUNTER_KEYS} | {'read': 3, 'skipped/truncated': 1}

    def allgather(local):  # what process 0 contributes, stacked before this process's row
        return np.stack([np.array([[other[k] for k in L.COUNTER_KEYS]], np.int32), local])

    monkeypatch.setattr(multihost_utils, 'process_allgather', allgather)
    counters = L.DataCounters(sources, process_index=1, process_count=2)
    scalars = counters.scalars(1)
    assert scalars['data/transcribed/read'] == mine['read'] + 3
    assert scalars['data/transcribed/skipped/truncated'] == mine['skipped/truncated'] + 1
    meta = counters.meta(1)
    assert meta['data_counters']['transcribed'] == [other, mine]
    again = {'transcribed': transcribed_source(corpus, process_index=1, process_count=2)}
    L.DataCounters(again, process_index=1, process_count=2).restore(meta)
    assert again['transcribed'].counters(0) == mine

# ----------------------------------------------------------------------------------------------
# Prepared TFDS datasets (the builders' contract: docs/data_loader.md), through config and make_sources
# ----------------------------------------------------------------------------------------------
def write_tfds(data_dir, name, records):
    """`records` as the prepared TFDS dataset `name` (ArrayRecord), with the builders' fields."""
    import tensorflow_datasets as tfds

    features = {'id': tfds.features.Text(), 'video': tfds.features.Tensor(shape=(), dtype=np.object_),
                'format': tfds.features.Text(), 'duration': tfds.features.Scalar(np.float32)}
    if name == 'yttemporal':
        features |= {'words': tfds.features.Sequence(tfds.features.Text()),
                     'times': tfds.features.Tensor(shape=(None,), dtype=np.float32)}
    else:
        features |= {'caption': tfds.features.Text()}

    def body(ns):
        ns['VERSION'] = tfds.core.Version('1.0.0')
        ns['_info'] = lambda self: tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))
        ns['_split_generators'] = lambda self, dl_manager: {'train': self._generate_examples()}
        ns['_generate_examples'] = lambda self: (
            (k, {f: (list(r[f]) if f == 'words' else r[f]) for f in features}) for k, r in enumerate(records))

    # the class name gives the dataset name; not registered, so the builders' own classes are left alone
    Builder = types.new_class(name.capitalize(), (tfds.core.GeneratorBasedBuilder,),
                              {'skip_registration': True}, body)
    assert Builder.name == name
    Builder(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


@pytest.fixture(scope='module')
def tfds_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp('tfds')
    records, reasons, captioned = corpus
    keep = [r for i, r in enumerate(records) if reasons.get(i) != 'read_error']
    write_tfds(out, 'yttemporal', keep)
    write_tfds(out, 'webvid', captioned)
    return str(out)


def tfds_config(data_dir, **overrides):
    return tiny_config(**{'data.name': 'tfds', 'data.tfds_data_dir': data_dir, 'data.num_workers': 0,
                          'data.sources': ('transcribed', 'captioned'), 'data.max_bad_fraction': 1.0, **overrides})


def test_tfds_datasets_through_the_config_and_make_sources(tfds_dir):
    config = tfds_config(tfds_dir)
    config_lib.validate(config)
    sources = make_sources(config.data, SIZE, config.model.num_frames, seed=config.seed)
    assert {k: type(s) for k, s in sources.items()} == {'transcribed': L.FileSource, 'captioned': L.FileSource}
    assert len(sources['transcribed'].data) == 17 and len(sources['captioned'].data) == 8
    t, c = sources['transcribed'].batch(0), sources['captioned'].batch(0)
    assert t['video'].shape == (8, 4, SIZE, SIZE, 3) and t['texts'].shape == (8, 4, TEXT_LENGTH)
    assert c['video'].shape == (8, 4, SIZE, SIZE, 3) and c['texts'].shape == (8, 1, TEXT_LENGTH)
    assert sources['transcribed'].counters(None)['read'] > 8  # the bad records were met and replaced
    again = make_sources(config.data, SIZE, config.model.num_frames, seed=config.seed)['captioned'].batch(0)
    assert_batches_equal(again, c)


def test_tfds_config_errors_name_the_field(tfds_dir, tmp_path):
    with pytest.raises(ValueError, match='tfds_data_dir=DIR'):
        config_lib.validate(tfds_config(''))
    with pytest.raises(FileNotFoundError, match='tfds_data_dir'):
        config_lib.validate(tfds_config(str(tmp_path / 'nowhere')))
    with pytest.raises(ValueError, match='num_frames=6'):
        config_lib.validate(tfds_config(tfds_dir, **{'model.num_frames': 6}))
    with pytest.raises(ValueError, match='max_bad_fraction=1.5'):
        config_lib.validate(tfds_config(tfds_dir, **{'data.max_bad_fraction': 1.5}))
    with pytest.raises(ValueError, match='num_workers=-2'):
        config_lib.validate(tfds_config(tfds_dir, **{'data.num_workers': -2}))
    with pytest.raises(FileNotFoundError, match='python -m tvts.data.build yttemporal'):  # no dataset there
        make_sources(tfds_config(str(tmp_path)).data, SIZE, 4)


@pytest.mark.slow
def test_the_trainer_reads_files_logs_the_counts_and_resumes_them(tfds_dir, tmp_path, capsys):
    """`python -m tvts.train --config ...:data=tfds`: counts in metrics.jsonl and on the console, saved with the
    checkpoint; a run resumed from iteration 2 logs the uninterrupted run's losses and counts."""
    import json
    import shutil

    from tvts import train

    config = tfds_config(tfds_dir, total_steps=4, log_every=1, checkpoint_every=2)
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    train.train_and_evaluate(config, str(straight))
    assert 'data: transcribed: skipped' in capsys.readouterr().err
    rows = [json.loads(line) for line in (straight / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [1, 2, 3, 4]
    keys = {f'data/{k}/{c}' for k in ('transcribed', 'captioned') for c in L.COUNTER_KEYS}
    assert all(keys <= r.keys() for r in rows)
    assert rows[-1]['data/transcribed/read'] > 32 and sum(
        rows[-1][f'data/transcribed/skipped/{r}'] for r in L.SKIP_REASONS) == rows[-1]['data/transcribed/read'] - 32
    assert [r['data/captioned/read'] for r in rows] == [8, 16, 24, 32]
    # model FLOPs utilisation: the analytic FLOPs of an iteration's two updates over its time, against the ceiling
    from tvts.flops import peak_flops, step_flops
    per_iteration = sum(step_flops(config, kind)['model_flops'] for kind in ('transcribed', 'captioned'))
    for r in rows:
        assert 0 < r['mfu'] < 1
        assert r['mfu'] == pytest.approx(per_iteration / r['step_time'] / peak_flops()[0], rel=1e-6)

    (resumed / 'checkpoints').mkdir(parents=True)
    shutil.copytree(straight / 'checkpoints' / '2', resumed / 'checkpoints' / '2')
    train.train_and_evaluate(config, str(resumed))
    again = [json.loads(line) for line in (resumed / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in again] == [3, 4]
    for got, want in zip(again, rows[2:]):
        for key in ('transcribed/loss', 'captioned/loss', *sorted(keys)):
            assert got[key] == want[key], (key, got['step'])


def test_the_datasets_the_builders_write_are_read(tmp_path):
    """The real path: fixtures in the distributed layouts -> `python -m tvts.data.build` -> make_sources."""
    from tvts.data import build, fixtures

    manual, out = tmp_path / 'manual', tmp_path / 'out'
    truth = {name: fixtures.write(name, str(manual / name)) for name in L.TFDS_NAMES.values()}  # train 3, val 2
    for name in truth:
        build.build(name, str(manual / name), str(out), verbose=False)
    config = tfds_config(str(out), **{'data.max_bad_fraction': 0.0, 'data.images_batch': 8,
                                      'data.sources': ('transcribed', 'captioned', 'images')})
    config_lib.validate(config)
    frames = {kind: config_lib.source_frames(config, kind) for kind in config.data.sources}
    assert frames == {'transcribed': 4, 'captioned': 4, 'images': 1}   # cc3m: one frame, an image
    sources = make_sources(config.data, SIZE, frames, seed=0)
    for kind, name in L.TFDS_NAMES.items():
        assert len(sources[kind].data) == len(truth[name]['train'])
        batch = sources[kind].batch(0)
        assert batch['video'].shape == (8, frames[kind], SIZE, SIZE, 3) and batch['video'].std() > 0
        assert (batch['texts'][:, :, 1] != 49407).all()  # every text holds a word before its end token
        assert sources[kind].skipped(1) == {r: 0 for r in L.SKIP_REASONS}
