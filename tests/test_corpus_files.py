"""Synthetic corpus written as YT-Temporal / WebVid files (tvts.data.synthetic_files): decode back
(tvts.data.video_io), annotations, CSV (tvts.data.metadata), labels, the transcript sampler on the written json,
and the make_corpus tool."""
import csv
import json
import os

import numpy as np
import pytest

from tools import make_corpus
from tvts.data import transcripts as T
from tvts.data.metadata import read_webvid_csv, read_yttemporal_csv
from tvts.data.synthetic import SyntheticConfig, SyntheticCorpus
from tvts.data.synthetic_files import write_split
from tvts.data.video_io import decode_mp4, encode_mp4, file_frame_times

N_T, N_C = 3, 2


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('corpus'))
    summary = write_split(root, 'val', N_T, N_C, SyntheticConfig())
    return root, summary, SyntheticCorpus(SyntheticConfig(), 'val')


def load_ann(root, subset, vid):
    with open(os.path.join(root, 'videos', subset, 'annotations', vid + '.json')) as f:
        return json.load(f)


def test_mp4_decodes_to_the_renderer(written):
    root, summary, corpus = written
    names = read_yttemporal_csv(summary['yttemporal_csv'])
    assert len(names) == N_T
    for i, name in enumerate(names):
        video = corpus.video(i)
        assert name == f"{summary['subset']}/data/{video.id}.mp4"
        frames, times = decode_mp4(os.path.join(root, 'videos', name))
        ann = load_ann(root, summary['subset'], video.id)
        n = int(np.ceil(video.duration * 8))
        assert frames.shape == (n, 32, 32, 3) and ann['info']['num_frames'] == n
        np.testing.assert_allclose(times, np.arange(n) / 8, atol=1e-6)
        ref = video.render(times)
        err = np.abs(frames.astype(np.int16) - ref.astype(np.int16))
        assert err.mean() < 6.0, err.mean()
        # the moving object is where the renderer put it (codec error stays local to edges)
        assert np.percentile(err.reshape(n, -1).mean(1), 99) < 10


def test_annotation_words_and_transcripts(written):
    root, summary, corpus = written
    for i in range(N_T):
        video = corpus.video(i)
        ann = load_ann(root, summary['subset'], video.id)
        assert set(ann) >= {'subtitles', 'denoised', 'info'}
        assert ann['info']['duration'] == pytest.approx(video.duration)
        clips = [tuple(c) for c in ann['info']['clips']]
        assert clips == list(video.clips)
        words = T.clean_subtitles(ann['subtitles'])
        for (s, e), text, seg in zip(clips, video.transcripts,
                                     [d for d in ann['denoised'] if d['start'] in dict(clips)]):
            inside = [w for w in words if s < w['time'] < e]
            assert all(s < w['time'] < e for w in inside) and inside
            assert ' '.join(w['word'] for w in inside) == text
            assert seg['cleanasr'] == text and (seg['start'], seg['end']) == (s, e)
        # raw stream keeps the non-speech tokens that the cleaning removes
        raw = [w['word'] for w in ann['subtitles']]
        assert len(raw) >= len(words)
        assert ' '.join(d['cleanasr'] for d in ann['denoised']).split() == [w['word'] for w in words]


def test_sampler_on_written_json_reproduces_generator(written):
    root, summary, corpus = written
    for i in range(N_T):
        sample = corpus.transcribed(i, train=False)
        ann = load_ann(root, summary['subset'], sample['id'])
        info = ann['info']
        w = T.sample_window(ann['subtitles'], info['duration'], train=False,
                            start=info['clips'][0][0], clip_len=info['clip_seconds'],
                            video_id=sample['id'])
        assert list(w.transcripts) == sample['transcripts']
        # same window -> same eval frame times as the in-memory sample
        np.testing.assert_allclose(w.frame_times, corpus.video(i).frame_times())
        # a random window on the file: every clip's transcript is the words inside it
        rng = np.random.default_rng(i)
        w = T.sample_window(ann['subtitles'], info['duration'], rng, video_id=sample['id'])
        for (s, e), text in zip(w.clips, w.transcripts):
            assert text == ' '.join(x['word'] for x in T.clean_subtitles(ann['subtitles'])
                                    if s < x['time'] < e)


def test_webvid_csv_and_files(written):
    root, summary, corpus = written
    with open(summary['webvid_csv'], newline='') as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ['videoid', 'name', 'page_dir'] and len(rows) == N_C
    for i, (videoid, name, page_dir) in enumerate(rows):
        sample = corpus.captioned(i, train=False)
        assert videoid == sample['id'] and name == sample['caption'] and ',' in name
        path = os.path.join(root, 'videos', page_dir, videoid + '.mp4')
        assert os.path.isfile(path)
        frames, times = decode_mp4(path)
        video = corpus.video(i, 'captioned')
        assert len(frames) == int(np.ceil(video.duration * 8))
        assert np.abs(frames.astype(np.int16) - video.render(times).astype(np.int16)).mean() < 6.0


def test_labels_json(written):
    root, summary, corpus = written
    with open(summary['labels']) as f:
        labels = json.load(f)
    assert len(labels) == N_T + N_C
    for i in range(N_T):
        assert labels[corpus.sample_id(i)] == corpus.video(i).labels
    for i in range(N_C):
        assert labels[corpus.sample_id(i, 'captioned')] == corpus.video(i, 'captioned').labels


def test_mpeg4_codec(tmp_path):
    video = SyntheticCorpus().video(0, 'captioned')
    path = str(tmp_path / 'v.mp4')
    ref = video.render(file_frame_times(video.duration, 8))
    encode_mp4(path, ref, 8, codec='mpeg4')
    frames, _ = decode_mp4(path)
    assert frames.shape == ref.shape
    assert np.abs(frames.astype(np.int16) - ref.astype(np.int16)).mean() < 6.0


def test_make_corpus_tool(tmp_path, capsys):
    root = str(tmp_path / 'c')
    make_corpus.main(['--root', root, '--split', 'test', '--num_transcribed', '2', '--num_captioned', '1',
                      '--subset', 'subset_7'])
    out = capsys.readouterr()
    assert 'wrote 2 transcribed' in out.out and '1 captioned' in out.out
    assert '3/3 videos' in out.err
    names = read_yttemporal_csv(os.path.join(root, 'meta_data', 'yttemporal_test.csv'))
    assert names == ['subset_7/data/synth_test_t0000000.mp4', 'subset_7/data/synth_test_t0000001.mp4']
    assert all(os.path.isfile(os.path.join(root, 'videos', n)) for n in names)
    assert os.path.isfile(os.path.join(root, 'videos', 'subset_7', 'annotations', 'synth_test_t0000001.json'))
    rows = read_webvid_csv(os.path.join(root, 'meta_data', 'webvid_test.csv'))
    assert [r['videoid'] for r in rows] == ['synth_test_c0000000']
    with open(os.path.join(root, 'meta_data', 'labels_test.json')) as f:
        assert len(json.load(f)) == 3
