"""TFDS video builders (tvts/data/builders): each builds its synthetic fixture (tvts/data/fixtures.py) and reads
it back with tfds.data_source, split sizes and fields checked against the fixture's truth; bad inputs are skipped,
counted by reason and listed in skipped.json while every good sample is kept; a missing or malformed manual
directory stops with a message naming what is missing; TFDS's own `tfds build` command builds them too."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys

import av
import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from tvts.data import build as build_cli  # noqa: E402
from tvts.data import fixtures  # noqa: E402
from tvts.data.builders import BUILDERS, ManualDirError, align  # noqa: E402
from tvts.data.builders.common import BadSample, probe_video  # noqa: E402

PLAIN = ('yttemporal', 'webvid', 'cc3m', 'msrvtt', 'didemo', 'lsmdc')
TEXT_FIELDS = {'yttemporal': ('words',), 'webvid': ('caption',), 'cc3m': ('caption',), 'msrvtt': ('captions',),
               'didemo': ('captions',), 'lsmdc': ('captions',)}


def _s(x) -> str:
    return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _read_all(name: str, data_dir: str, split: str) -> dict[str, dict]:
    ds = tfds.data_source(name, split=split, data_dir=data_dir)
    out = {}
    for i in range(len(ds)):
        ex = ds[i]
        out[_s(ex['id'])] = ex
    assert len(out) == len(ds), 'ids must be unique'
    return out


def _decode(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


def _skipped(report) -> list[dict]:
    with open(report['skipped_json']) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """Every dataset's fixture written and built once: {name: (manual_dir, data_dir, truth, reports)}."""
    root = tmp_path_factory.mktemp('builders')
    out = {}
    for name in (*PLAIN, 'ucf101', 'hmdb51', 'kinetics400', 'ssv2'):
        manual, data_dir = str(root / 'manual' / name), str(root / 'out')
        truth = fixtures.write(name, manual)
        configs = [c.name for c in BUILDERS[name].BUILDER_CONFIGS] or [None]
        reports = [build_cli.build(name, manual, data_dir, c, verbose=False) for c in configs]
        out[name] = (manual, data_dir, truth, reports)
    return out


@pytest.mark.parametrize('name', PLAIN)
def test_builds_and_reads_fixture(built, name):
    manual, data_dir, truth, (report,) = built[name]
    assert report['splits'] == {split: len(ids) for split, ids in truth.items()}
    assert _skipped(report) == []
    for split, expected in truth.items():
        got = _read_all(name, data_dir, split)
        assert sorted(got) == sorted(expected)
        for vid, want in expected.items():
            ex = got[vid]
            with open(os.path.join(manual, want['path']), 'rb') as f:
                assert ex['video'] == f.read(), 'the stored form is the file bytes'
            assert _s(ex['format']) == want['format']
            if name == 'yttemporal':
                assert [_s(w) for w in ex['words']] == want['words']      # aligned cleaned words
                np.testing.assert_allclose(ex['times'], want['times'], atol=1e-5)
                assert ex['times'].dtype == np.float32
                assert ex['duration'] == pytest.approx(want['duration'], abs=1e-4)
            elif name == 'webvid':
                assert _s(ex['caption']) == want['caption']
                assert ex['duration'] == pytest.approx(want['duration'], abs=0.2)
            elif name == 'cc3m':   # an image: a one-frame video to the loader
                assert _s(ex['caption']) == want['caption'] and ex['duration'] == 0.0
            else:
                assert [_s(c) for c in ex['captions']] == want['captions']
    # one stored video decodes at load time (an image: its one frame)
    first = next(iter(truth.values()))
    assert _decode(_read_all(name, data_dir, next(iter(truth)))[next(iter(first))]['video']) >= (
        1 if name == 'cc3m' else 4)


@pytest.mark.parametrize('name', ('ucf101', 'hmdb51'))
def test_classification_configs(built, name):
    manual, data_dir, truth, reports = built[name]
    assert [r['config'] for r in reports] == ['split1', 'split2', 'split3']
    for report in reports:
        config = report['config']
        assert report['splits'] == {s: len(ids) for s, ids in truth[config].items()}
        assert _skipped(report) == []
        builder = tfds.builder(f'{name}/{config}', data_dir=data_dir)
        label = builder.info.features['label']
        assert label.num_classes == (101 if name == 'ucf101' else 51)
        for split, expected in truth[config].items():
            got = _read_all(f'{name}/{config}', data_dir, split)
            assert sorted(got) == sorted(expected)
            for vid, want in expected.items():
                assert label.int2str(int(got[vid]['label'])) == want['label']
                assert _s(got[vid]['format']) == 'avi'
    names = tfds.builder(f'{name}/split1', data_dir=data_dir).info.features['label'].names
    assert (names[0], names[-1]) == (('ApplyEyeMakeup', 'YoYo') if name == 'ucf101' else ('brush_hair', 'wave'))
    # the three configs partition the same videos differently
    sets = [set(truth[f'split{k}']['test']) for k in (1, 2, 3)]
    assert sets[0] != sets[1] != sets[2]


def test_kinetics400_and_ssv2_read_their_fixtures(built):
    manual, data_dir, truth, (report,) = built['kinetics400']
    assert report['splits'] == {s: len(v) for s, v in truth.items()} and _skipped(report) == []
    label = tfds.builder('kinetics400', data_dir=data_dir).info.features['label']
    assert label.num_classes == 400 and (label.names[0], label.names[-1]) == ('abseiling', 'zumba')
    for split, expected in truth.items():
        got = _read_all('kinetics400', data_dir, split)
        assert sorted(got) == sorted(expected)
        for vid, want in expected.items():   # 'hurling_-sport-' in the val CSV is the class 'hurling (sport)'
            assert label.int2str(int(got[vid]['label'])) == want['label']
            assert _s(got[vid]['format']) == want['format']
            with open(os.path.join(manual, want['path']), 'rb') as f:
                assert got[vid]['video'] == f.read()

    manual, data_dir, truth, reports = built['ssv2']
    assert [r['config'] for r in reports] == ['labels', 'mc']
    label = tfds.builder('ssv2/labels', data_dir=data_dir).info.features['label']
    assert label.num_classes == 174 and label.names[0] == 'Approaching something with your camera'
    for report in reports:
        config = report['config']
        assert report['splits'] == {s: len(v) for s, v in truth[config].items()} and _skipped(report) == []
        for split, expected in truth[config].items():
            got = _read_all(f'ssv2/{config}', data_dir, split)
            assert sorted(got) == sorted(expected)
            for vid, want in expected.items():
                ex = got[vid]
                assert _s(ex['format']) == 'webm'
                if config == 'labels':
                    assert label.int2str(int(ex['label'])) == want['label']
                    assert (_s(ex['caption']), _s(ex['template'])) == (want['caption'], want['template'])
                else:
                    assert [_s(o) for o in ex['options']] == want['options'] and int(ex['answer']) == want['answer']


def test_cc3m_bad_images_skipped_and_counted(tmp_path):
    manual, out = str(tmp_path / 'cc3m'), str(tmp_path / 'out')
    truth = fixtures.write_cc3m(manual)
    first = next(iter(truth['train'].values()))['path']
    with open(os.path.join(manual, first), 'rb') as f:
        data = f.read()
    with open(os.path.join(manual, 'training', 'cut.jpg'), 'wb') as f:
        f.write(data[:len(data) // 2])
    open(os.path.join(manual, 'training', 'zero.jpg'), 'wb').close()
    with open(os.path.join(manual, 'meta_data', 'cc3m_train.tsv'), 'a') as f:
        f.write('a cut image\tcut.jpg\n')
        f.write('an empty image\tzero.jpg\n')
        f.write('not there\tgone.jpg\n')
        f.write('   \tgone2.jpg\n')
    report = build_cli.build('cc3m', manual, out, verbose=False)
    assert _reasons(_skipped(report)) == {'training/cut.jpg': 'unreadable image', 'training/zero.jpg': 'empty file',
                                          'training/gone.jpg': 'missing file', 'training/gone2.jpg': 'empty caption'}
    assert report['splits'] == {s: len(v) for s, v in truth.items()}


def test_kinetics400_and_ssv2_bad_inputs(tmp_path):
    manual, out = str(tmp_path / 'k400'), str(tmp_path / 'out')
    truth = fixtures.write_kinetics400(manual)
    csv_path = os.path.join(manual, 'annotations', 'val.csv')
    _append_csv(csv_path, ['not a class', 'zzzzzzzzzzz', '0', '10', 'val', '0'])
    _append_csv(csv_path, ['zumba', 'missing1234', '0', '10', 'val', '0'])
    _append_csv(csv_path, ['zumba', 'badtime', 'x', '10', 'val', '0'])
    _append_csv(csv_path, ['zumba', 'INVALID', '0', '10', 'val', '0'], encoding_error=True)
    report = build_cli.build('kinetics400', manual, out, verbose=False)
    assert _reasons(_skipped(report)) == {
        'annotations/val.csv:8': 'unknown class', 'val/missing1234_000000_000010.mp4': 'missing file',
        'annotations/val.csv:10': 'malformed row', 'annotations/val.csv:11': 'invalid UTF-8'}
    assert report['splits'] == {s: len(v) for s, v in truth.items()}
    os.remove(os.path.join(manual, 'annotations', 'train.csv'))
    with pytest.raises(ManualDirError, match='lacks annotations/train.csv'):
        build_cli.build('kinetics400', manual, str(tmp_path / 'out2'), verbose=False)

    manual = str(tmp_path / 'ssv2')
    truth = fixtures.write_ssv2(manual)
    with open(os.path.join(manual, 'mc', 'val.jsonl'), 'a') as f:
        f.write('not json\n')
        f.write(json.dumps({'clip_name': '1.webm', 'options': ['a', 'b'], 'answer': 2}) + '\n')
        f.write(json.dumps({'clip_name': 'nowhere.webm', 'options': ['a', 'b'], 'answer': 1}) + '\n')
    entries = json.load(open(os.path.join(manual, 'labels', 'validation.json')))
    entries += [{'id': '77', 'label': 'x', 'template': 'Juggling [something]', 'placeholders': ['x']},
                {'label': 'no id', 'template': 'Pushing [something] from left to right'}]
    json.dump(entries, open(os.path.join(manual, 'labels', 'validation.json'), 'w'))
    labels, mc = (build_cli.build('ssv2', manual, out, c, verbose=False) for c in ('labels', 'mc'))
    assert _reasons(_skipped(labels)) == {'labels/validation.json[6]': 'unknown class',
                                          'labels/validation.json[7]': 'malformed annotation'}
    assert _reasons(_skipped(mc)) == {'mc/val.jsonl:7': 'malformed row', 'mc/val.jsonl:8': 'malformed row',
                                      '20bn-something-something-v2/nowhere.webm': 'missing file'}
    assert mc['splits'] == {'validation': len(truth['mc']['validation'])}
    json.dump({'Only one class': '0'}, open(os.path.join(manual, 'labels', 'labels.json'), 'w'))
    with pytest.raises(ManualDirError, match='174 Something-Something v2 templates'):
        build_cli.build('ssv2', manual, str(tmp_path / 'out3'), 'labels', verbose=False)


def test_builder_from_directory_reads_without_the_code(built):
    _, data_dir, truth, (report,) = built['webvid']
    b = tfds.builder_from_directory(report['path'])
    assert {s: b.info.splits[s].num_examples for s in b.info.splits} == {s: len(v) for s, v in truth.items()}
    assert len(b.as_data_source('val')) == len(truth['val'])
    assert b.info.metadata['stored_form'].startswith('encoded video file bytes')


# -- bad input ------------------------------------------------------------------------------------------------


def _append_csv(path: str, row: list[str], encoding_error: bool = False) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerow(row)
    data = buf.getvalue().encode('utf-8')
    if encoding_error:
        data = data.replace(b'INVALID', b'\xff\xfe caf\xe9')
    with open(path, 'ab') as f:
        f.write(data)


def _reasons(skipped: list[dict]) -> dict[str, str]:
    return {r['path']: r['reason'] for r in skipped}


def test_yttemporal_bad_inputs_skipped_and_counted(tmp_path, capsys):
    manual, out = str(tmp_path / 'manual'), str(tmp_path / 'out')
    truth = fixtures.write_yttemporal(manual, sizes={'train': 3, 'val': 2})
    sub = 'videos/subset_0'
    csv_path = os.path.join(manual, 'meta_data', 'yttemporal_train.csv')
    good_video = os.path.join(manual, truth['train'][next(iter(truth['train']))]['path'])
    ann_of = {vid: json.load(open(os.path.join(manual, sub, 'annotations', vid + '.json')))
              for vid in truth['train']}
    a_good = next(iter(ann_of.values()))

    def add(vid: str, video: bytes | None, ann: dict | bytes | None):
        if video is not None:
            with open(os.path.join(manual, sub, 'data', vid + '.mp4'), 'wb') as f:
                f.write(video)
        if ann is not None:
            with open(os.path.join(manual, sub, 'annotations', vid + '.json'), 'wb') as f:
                f.write(ann if isinstance(ann, bytes) else json.dumps(ann).encode())
        _append_csv(csv_path, [f'subset_0/data/{vid}.mp4'])

    good = open(good_video, 'rb').read()
    add('zero_byte', b'', a_good)
    add('truncated', good[:len(good) // 2], a_good)
    add('garbage', b'not a video at all' * 50, a_good)
    short = os.path.join(manual, sub, 'data', 'too_short.mp4')
    fixtures.short_video(short, seconds=3.0)
    add('too_short', None, a_good)
    add('empty_subs', good, {**a_good, 'subtitles': []})
    add('no_subs', good, {k: v for k, v in a_good.items() if k != 'subtitles'})
    add('only_music', good, {**a_good, 'subtitles': [{'word': '[Music]', 'time': 1.0}]})
    add('bad_utf8_ann', good, json.dumps(a_good).replace('"info"', '"inf\udcff"', 1).encode('utf-8', 'surrogateescape'))
    add('bad_json', good, b'{"subtitles": [')
    add('no_ann', good, None)
    add('missing_file', None, a_good)           # listed, never written
    _append_csv(csv_path, ['subset_0/data/INVALID.mp4'], encoding_error=True)

    # also a webm video among the good ones: any container PyAV reads
    webm_id = 'webm_video'
    from tvts.data import synthetic_files, transcripts
    from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus
    v = SyntheticCorpus(SyntheticConfig(), 'train').video(7, 'transcribed')
    synthetic_files.write_video_file(v, os.path.join(manual, sub, 'data', webm_id + '.webm'))
    ann = synthetic_files.yttemporal_annotation(v, fixtures.FPS)
    with open(os.path.join(manual, sub, 'annotations', webm_id + '.json'), 'w') as f:
        json.dump(ann, f)
    _append_csv(csv_path, [f'subset_0/data/{webm_id}.webm'])

    reports = build_cli.main(['yttemporal', '--manual_dir', manual, '--data_dir', out])
    printed = capsys.readouterr()
    (report,) = reports
    skipped = _skipped(report)
    expected = {
        f'{sub}/data/zero_byte.mp4': 'empty file',
        f'{sub}/data/truncated.mp4': 'truncated video',
        f'{sub}/data/garbage.mp4': 'unreadable video',
        f'{sub}/data/too_short.mp4': 'too short',
        f'{sub}/annotations/empty_subs.json': 'empty or missing subtitles',
        f'{sub}/annotations/no_subs.json': 'empty or missing subtitles',
        f'{sub}/annotations/only_music.json': 'empty or missing subtitles',
        f'{sub}/annotations/bad_utf8_ann.json': 'invalid UTF-8',
        f'{sub}/annotations/bad_json.json': 'malformed annotation',
        f'{sub}/annotations/no_ann.json': 'missing annotation',
        f'{sub}/data/missing_file.mp4': 'missing file',
    }
    got = _reasons(skipped)
    bad_csv = [p for p in got if p.startswith('meta_data/yttemporal_train.csv:')]
    assert len(bad_csv) == 1 and got.pop(bad_csv[0]) == 'invalid UTF-8'
    assert got == expected
    assert all(r['split'] == 'train' for r in skipped)
    counts = report['skipped']['train']
    assert counts == {'empty file': 1, 'truncated video': 1, 'unreadable video': 1, 'too short': 1,
                      'empty or missing subtitles': 3, 'invalid UTF-8': 2, 'malformed annotation': 1,
                      'missing annotation': 1, 'missing file': 1}
    # nothing else is lost: all good samples (and the webm one) are there
    assert report['splits'] == {'train': len(truth['train']) + 1, 'val': len(truth['val'])}
    got_train = _read_all('yttemporal', out, 'train')
    assert set(got_train) == set(truth['train']) | {webm_id}
    assert _s(got_train[webm_id]['format']) == 'webm'
    assert [_s(w) for w in got_train[webm_id]['words']] == [
        w['word'] for w in transcripts.clean_subtitles(v.subtitles)]
    # the summary is printed, with the counts by reason
    assert 'train: 4 examples, 12 skipped' in printed.out
    assert 'empty or missing subtitles: 3' in printed.out
    assert 'skipped.json' in printed.out
    meta = tfds.builder_from_directory(report['path']).info.metadata
    assert meta['skipped']['train']['too short'] == 1


def test_webvid_bad_inputs_skipped_and_counted(tmp_path):
    manual, out = str(tmp_path / 'manual'), str(tmp_path / 'out')
    truth = fixtures.write_webvid(manual, sizes={'train': 3, 'val': 2})
    csv_path = os.path.join(manual, 'results_2M_val.csv')
    page = '000001_000050'
    good = open(os.path.join(manual, next(iter(truth['val'].values()))['path']), 'rb').read()

    def add(videoid: str, video: bytes | None, caption: str = 'a caption, "quoted"', bad: bool = False):
        if video is not None:
            with open(os.path.join(manual, 'videos', page, videoid + '.mp4'), 'wb') as f:
                f.write(video)
        _append_csv(csv_path, [videoid, 'synthetic://x', 'PT00H00M20S', page, caption], encoding_error=bad)

    add('90001', b'')
    add('90002', good[: len(good) * 3 // 4])
    fixtures.short_video(os.path.join(manual, 'videos', page, '90003.mp4'), seconds=0.25)   # 2 frames
    add('90003', None)
    add('90004', None)                                   # missing file
    add('90005', good, caption='INVALID caption', bad=True)   # invalid UTF-8 in the CSV row
    add('90006', good, caption='   ')                    # empty caption
    add(list(truth['val'])[0], good)                     # listed twice
    add('90007', good, caption='line one\nline two, with a comma')   # a quoted multi-line caption is fine
    report = build_cli.build('webvid', manual, out, verbose=False)
    got = _reasons(_skipped(report))
    assert got == {f'videos/{page}/90001.mp4': 'empty file', f'videos/{page}/90002.mp4': 'truncated video',
                   f'videos/{page}/90003.mp4': 'too short', f'videos/{page}/90004.mp4': 'missing file',
                   f'videos/{page}/90005.mp4': 'invalid UTF-8', f'videos/{page}/90006.mp4': 'empty caption',
                   truth['val'][list(truth['val'])[0]]['path']: 'duplicate'}
    assert report['splits'] == {'train': 3, 'val': 3}
    val = _read_all('webvid', out, 'val')
    assert set(val) == set(truth['val']) | {'90007'}
    assert _s(val['90007']['caption']) == 'line one\nline two, with a comma'


def test_classification_bad_inputs(tmp_path):
    manual, out = str(tmp_path / 'ucf'), str(tmp_path / 'out')
    truth = fixtures.write_ucf101(manual)
    test1 = truth['split1']['test']
    zero = next(iter(test1))
    open(os.path.join(manual, test1[zero]['path']), 'wb').close()                   # zero-byte avi
    with open(os.path.join(manual, 'ucfTrainTestlist', 'testlist01.txt'), 'ab') as f:
        f.write(b'Archery/v_Archery_g03_c09.avi\r\n')                              # listed, missing
        f.write(b'NoSuchClass/v_NoSuchClass_g01_c01.avi\r\n')
    report = build_cli.build('ucf101', manual, out, 'split1', verbose=False)
    assert _reasons(_skipped(report)) == {
        test1[zero]['path']: 'empty file', 'UCF-101/Archery/v_Archery_g03_c09.avi': 'missing file',
        'UCF-101/NoSuchClass/v_NoSuchClass_g01_c01.avi': 'unknown class'}
    assert report['splits'] == {'train': len(truth['split1']['train']), 'test': len(test1) - 1}

    manual = str(tmp_path / 'hmdb')
    truth = fixtures.write_hmdb51(manual)
    with open(os.path.join(manual, 'splits', 'wave_test_split2.txt'), 'a') as f:
        f.write('not_there.avi 2 \n')
        f.write('broken line without flag\n')
    report = build_cli.build('hmdb51', manual, out, 'split2', verbose=False)
    assert _reasons(_skipped(report)) == {'videos/wave/not_there.avi': 'missing file',
                                         'splits/wave_test_split2.txt:6': 'malformed row'}
    assert report['splits'] == {s: len(v) for s, v in truth['split2'].items()}


def test_retrieval_bad_inputs(tmp_path):
    manual, out = str(tmp_path / 'msrvtt'), str(tmp_path / 'out')
    truth = fixtures.write_msrvtt(manual, num_train=3, num_test=2)
    victim = next(iter(truth['test']))
    os.remove(os.path.join(manual, truth['test'][victim]['path']))
    report = build_cli.build('msrvtt', manual, out, verbose=False)
    assert _reasons(_skipped(report)) == {f'videos/all/{victim}.mp4': 'missing file'}
    assert report['splits'] == {'train': 3, 'test': 1}

    manual = str(tmp_path / 'lsmdc')
    truth = fixtures.write_lsmdc(manual)
    with open(os.path.join(manual, 'LSMDC16_annos_val.csv'), 'ab') as f:
        f.write(b'1002_Synthetic_Movie_Val_00.00.01.000-00.00.09.000\t0\t0\t0\t0\tcaf\xe9 bad\n')
        f.write(b'only\tthree\tfields\n')
    report = build_cli.build('lsmdc', manual, out, verbose=False)
    assert _reasons(_skipped(report)) == {'LSMDC16_annos_val.csv:3': 'invalid UTF-8',
                                         'LSMDC16_annos_val.csv:4': 'malformed row'}
    assert report['splits'] == {s: len(v) for s, v in truth.items()}

    manual = str(tmp_path / 'didemo')
    truth = fixtures.write_didemo(manual)
    gone = next(iter(truth['test']))
    os.remove(os.path.join(manual, truth['test'][gone]['path']))
    report = build_cli.build('didemo', manual, out, verbose=False)
    assert _reasons(_skipped(report)) == {f'videos/{gone}': 'missing file'}
    assert report['splits'] == {'train': 2, 'val': 1, 'test': 1}


def test_missing_or_malformed_manual_dir(tmp_path, capsys):
    out = str(tmp_path / 'out')
    with pytest.raises(ManualDirError, match='does not exist'):
        build_cli.build('webvid', str(tmp_path / 'nowhere'), out, verbose=False)
    manual = str(tmp_path / 'webvid')
    fixtures.write_webvid(manual, sizes={'train': 1, 'val': 1})
    os.remove(os.path.join(manual, 'results_2M_val.csv'))
    with pytest.raises(ManualDirError, match='lacks results_2M_val.csv'):
        build_cli.build('webvid', manual, out, verbose=False)
    with pytest.raises(SystemExit) as e:
        build_cli.main(['webvid', '--manual_dir', manual, '--data_dir', out])
    assert e.value.code == 2
    assert 'lacks results_2M_val.csv' in capsys.readouterr().err

    manual = str(tmp_path / 'ucf')
    os.makedirs(os.path.join(manual, 'UCF-101'))
    os.makedirs(os.path.join(manual, 'ucfTrainTestlist'))
    with pytest.raises(ManualDirError, match='classInd.txt, ucfTrainTestlist/trainlist02.txt'):
        build_cli.build('ucf101', manual, out, 'split2', verbose=False)
    with open(os.path.join(manual, 'ucfTrainTestlist', 'classInd.txt'), 'w') as f:
        f.write('1 ApplyEyeMakeup\r\n2 Archery\r\n')
    for k in (1,):
        open(os.path.join(manual, 'ucfTrainTestlist', f'trainlist0{k}.txt'), 'w').close()
        open(os.path.join(manual, 'ucfTrainTestlist', f'testlist0{k}.txt'), 'w').close()
    with pytest.raises(ManualDirError, match='101 UCF101 classes'):
        build_cli.build('ucf101', manual, out, 'split1', verbose=False)
    # a split where every sample is bad stops too, naming the reasons
    manual = str(tmp_path / 'msrvtt')
    truth = fixtures.write_msrvtt(manual, num_train=1, num_test=1)
    for want in truth['test'].values():
        open(os.path.join(manual, want['path']), 'wb').close()
    with pytest.raises(ManualDirError, match="split 'test' has no usable sample.*empty file"):
        build_cli.build('msrvtt', manual, out, verbose=False)


def test_tfds_build_command(tmp_path, built):
    """TFDS's own `tfds build` command code builds the builders (the registered name, and the module path)."""
    manual, _, truth, _ = built['didemo']
    out = str(tmp_path / 'out')
    build_cli.main(['tfds', 'didemo', '--imports', 'tvts.data.builders', '--manual_dir', manual,
                    '--data_dir', out, '--file_format', 'array_record'])
    assert len(tfds.data_source('didemo', split='test', data_dir=out)) == len(truth['test'])
    manual, _, truth, _ = built['hmdb51']
    module = os.path.join(os.path.dirname(sys.modules['tvts.data.builders'].__file__), 'hmdb51.py')
    out2 = str(tmp_path / 'out2')
    build_cli.main(['tfds', module, '--config', 'split3', '--manual_dir', manual, '--data_dir', out2])
    b = tfds.builder_from_directory(os.path.join(out2, 'hmdb51', 'split3', '1.0.0'))
    assert b.info.splits['test'].num_examples == len(truth['split3']['test'])
    assert os.path.exists(os.path.join(out2, 'hmdb51', 'split3', '1.0.0', 'skipped.json'))
    assert tfds.builder_cls('hmdb51') is BUILDERS['hmdb51']   # the module-path import registered nothing new


def test_rebuild_reuses_and_overwrite_rebuilds(built, capsys):
    manual, data_dir, truth, (report,) = built['lsmdc']
    (again,) = build_cli.main(['lsmdc', '--manual_dir', manual, '--data_dir', data_dir])
    assert again['reused'] and 'already built' in capsys.readouterr().out
    (fresh,) = build_cli.main(['lsmdc', '--manual_dir', manual, '--data_dir', data_dir, '--overwrite',
                               '--check', 'full', '--workers', '2'])
    assert not fresh['reused'] and fresh['splits'] == report['splits']


# -- pieces ---------------------------------------------------------------------------------------------------


def test_probe_video_containers_and_truncation(tmp_path):
    from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus
    from tvts.data.synthetic_files import write_video_file
    v = SyntheticCorpus(SyntheticConfig(), 'val').video(0, 'captioned')
    for ext in ('.mp4', '.avi', '.webm', '.mkv', '.mov'):
        data = open(write_video_file(v, str(tmp_path / f'v{ext}')), 'rb').read()
        probe = probe_video(data)
        assert probe.num_frames == int(np.ceil(v.duration * fixtures.FPS - 1e-9))
        assert probe.duration == pytest.approx(v.duration, abs=0.2)
        if ext != '.avi':          # a cut AVI can keep all its frames and lose only its index
            with pytest.raises(BadSample, match='truncated video'):
                probe_video(data[: len(data) * 2 // 3])
    with pytest.raises(BadSample, match='empty file'):
        probe_video(b'')


def test_align_matches_official_behaviour():
    # identical word lists align one to one
    words = 'hey guys welcome back to the channel'.split()
    assert align.align_using_dtw(words, words) == words
    # cleaned words differ by punctuation / case / merges; every cleaned word is given out once, in order
    timed = ['much', 'of', 'a', 'pancake', 'waffle', 'person', 'so', 'i', 'love', 'a']
    cleaned = ['Much', 'of', 'a', 'pancakewaffle', 'person.', 'So', 'I', 'love', 'a', 'good']
    out = align.align_using_dtw(timed, cleaned)
    assert len(out) == len(timed)
    assert ' '.join(w for w in out if w).split() == cleaned[:len(' '.join(w for w in out if w).split())]
    assert out[:3] == ['Much', 'of', 'a'] and out[-3:] == ['I', 'love', 'a good']
    assert align.align_using_dtw(['a', 'b'], []) == ['', '']
    assert align.split_cleanasr(['a b', 'c']) == ['a', 'b', 'c']


def test_dtw_path_equals_reference():
    rng = np.random.default_rng(0)

    def reference(cost):   # tslearn's accumulated matrix and traceback, written out
        n, m = cost.shape
        cum = np.full((n + 1, m + 1), np.inf)
        cum[0, 0] = 0
        for i in range(n):
            for j in range(m):
                cum[i + 1, j + 1] = cost[i, j] + min(cum[i, j + 1], cum[i + 1, j], cum[i, j])
        acc, path = cum[1:, 1:], [(n - 1, m - 1)]
        while path[-1] != (0, 0):
            i, j = path[-1]
            if i == 0:
                path.append((0, j - 1))
            elif j == 0:
                path.append((i - 1, 0))
            else:
                k = int(np.argmin([acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1]]))
                path.append([(i - 1, j - 1), (i - 1, j), (i, j - 1)][k])
        return path[::-1]

    for _ in range(200):
        cost = rng.choice([0.0, 1.0, 2.0, 9999.0], size=(rng.integers(1, 9), rng.integers(1, 9)))
        assert align.dtw_path(cost) == reference(cost)
    words_a = ['', 'a', 'abc', 'kitten', 'flaw', 'café']
    words_b = ['x', '', 'abd', 'sitting', 'lawn', 'cafe']
    assert list(align.edit_distances(words_a, words_b)) == [1, 1, 1, 3, 2, 1]


def test_fixture_layout_quirks(tmp_path):
    root = str(tmp_path)
    fixtures.write_ucf101(os.path.join(root, 'ucf'))
    assert open(os.path.join(root, 'ucf', 'ucfTrainTestlist', 'classInd.txt'), 'rb').read().startswith(
        b'1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n')
    fixtures.write_hmdb51(os.path.join(root, 'hmdb'))
    line = open(os.path.join(root, 'hmdb', 'splits', 'wave_test_split1.txt')).readline()
    assert line.endswith(' 2 \n')
    fixtures.write_webvid(os.path.join(root, 'webvid'))
    text = open(os.path.join(root, 'webvid', 'results_2M_train.csv')).read()
    assert text.startswith('videoid,contentUrl,duration,page_dir,name\n') and '""synthetic""' in text
    shutil.rmtree(root)


def test_event_classes_show_their_sequence():
    """Synthetic benchmark classes: every video of a class shows its 4 events (each rendered anew); the
    multiple-choice options are the sequence's caption (at `answer`) and captions of re-orderings of it."""
    classes = fixtures.EventClasses(3)
    assert len(set(classes.events)) == 3
    for slot in range(3):
        a, b = classes(slot, 10), classes(slot, 11)
        for v in (a, b):
            assert tuple((e.shape, e.colour, e.motion) for e in v.events) == classes.events[slot]
        assert [e.p0 for e in a.events] != [e.p0 for e in b.events]
        options, answer = classes.options(slot)
        assert len(set(options)) == 5 and options[answer] == classes.phrase(slot)
        words = sorted(classes.phrase(slot).replace(',', ' ').split())
        for k, text in enumerate(options):   # the same events and words, in another order
            assert sorted(text.replace(',', ' ').split()) == words or k == answer
