"""MSR-VTT (text-video retrieval): TFDS builder ``msrvtt``, splits ``train`` and ``test``.

Manual directory (CLIP4Clip's ``msrvtt_data.zip`` annotations and Frozen-in-Time's ``MSRVTT.zip`` videos,
the files the TVTSv2 zero-shot evaluation uses)::

    annotation/MSRVTT_data.json     {"videos": [{"video_id": "video0", ...}], "sentences": [{"video_id", "caption",
                                     "sen_id"}]}   (also found at the top level)
    MSRVTT_JSFUSION_test.csv        key,vid_key,video_id,sentence: the 1k-A test set, one sentence per video
                                    (also found in annotation/)
    videos/all/video<N>.mp4         (.webm and other containers are found too)

Splits: ``test``: the 1k-A videos, each with its one JSFusion sentence; ``train``: every other video of
MSRVTT_data.json (9,000 of the 10,000) with all its captions in ``sen_id`` order.
Example: ``{"id" ("video<N>"), "video" (file bytes), "format", "captions" (sequence of str)}``.

Skipped: missing / empty / unreadable / truncated video, fewer than 4 frames, a video without caption, a CSV
row that is not valid UTF-8. A train caption that is not valid UTF-8 is dropped (listed in skipped.json with
its ``sen_id``); its video keeps its other captions.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import BadSample, ManualDirError, Sample, Skip

__all__ = ['Msrvtt']

_JSON = ('annotation/MSRVTT_data.json', 'MSRVTT_data.json')
_TEST_CSV = ('MSRVTT_JSFUSION_test.csv', 'annotation/MSRVTT_JSFUSION_test.csv')


class Msrvtt(common.VideoBuilder, skip_registration=True):
    """MSR-VTT videos with their captions; test = the 1k-A (JSFusion) split."""

    name = 'msrvtt'
    SPLITS = ('train', 'test')
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://www.microsoft.com/en-us/research/publication/msr-vtt-a-large-video-description-dataset-for-bridging-video-and-language/'
    CITATION = ('@inproceedings{xu2016msrvtt, title={MSR-VTT: A Large Video Description Dataset for Bridging '
                'Video and Language}, author={Xu, Jun and Mei, Tao and Yao, Ting and Rui, Yong}, '
                'booktitle={CVPR}, year={2016}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
msrvtt reads a manual directory holding
  annotation/MSRVTT_data.json
  MSRVTT_JSFUSION_test.csv          (key,vid_key,video_id,sentence)
  videos/all/video<N>.mp4
"""

    def _text_features(self):
        return {'captions': tfds.features.Sequence(tfds.features.Text())}

    def _required(self):
        return ('videos/all/', _JSON, _TEST_CSV)

    def _prepare(self, manual_dir: str) -> None:
        self._json_rel = common.first_file(manual_dir, _JSON)
        self._csv_rel = common.first_file(manual_dir, _TEST_CSV)
        try:
            data = common.read_json(os.path.join(manual_dir, self._json_rel))
        except BadSample as e:
            raise ManualDirError(f'msrvtt: {self._json_rel}: {e}') from None
        if not isinstance(data, dict) or not isinstance(data.get('videos'), list) \
                or not isinstance(data.get('sentences'), list):
            raise ManualDirError(f'msrvtt: {self._json_rel} lacks its "videos" / "sentences" lists')
        self._videos = [v.get('video_id') for v in data['videos'] if isinstance(v, dict)]
        self._sentences = [s for s in data['sentences'] if isinstance(s, dict)]

    def _video(self, manual_dir: str, video_id: str) -> str | None:
        return common.find_video(manual_dir, f'videos/all/{video_id}')

    def _test_rows(self, manual_dir: str):
        header, rows = common.read_csv(os.path.join(manual_dir, self._csv_rel), delimiter=',')
        if 'video_id' not in header or 'sentence' not in header:
            raise ManualDirError(f'msrvtt: {self._csv_rel} lacks the video_id / sentence columns '
                                 f'(header {header})')
        return header, rows

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        header, rows = self._test_rows(manual_dir)
        iv, isent = header.index('video_id'), header.index('sentence')
        ikey = header.index('key') if 'key' in header else None
        if split == 'test':
            for line, fields in rows:
                where = f'{self._csv_rel}:{line}'
                if len(fields) != len(header):
                    yield Skip(where, 'malformed row', f'{len(fields)} fields, the header has {len(header)}')
                    continue
                video_id, sentence = fields[iv].strip(), fields[isent].strip()
                if common.has_invalid_utf8(video_id + sentence):
                    yield Skip(where, 'invalid UTF-8', fields[iv])
                    continue
                if not sentence:
                    yield Skip(where, 'empty caption', video_id)
                    continue
                key = fields[ikey].strip() if ikey is not None else video_id
                yield Sample(key=key or video_id, id=video_id, video=self._video(manual_dir, video_id),
                             missing=f'videos/all/{video_id}.mp4', fields={'captions': [sentence]})
            return
        test_ids = {fields[iv].strip() for _, fields in rows if len(fields) == len(header)}
        captions: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        for k, s in enumerate(self._sentences):
            vid, cap = s.get('video_id'), s.get('caption')
            if not isinstance(vid, str) or vid in test_ids:
                continue
            if not isinstance(cap, str) or not cap.strip():
                continue
            if common.has_invalid_utf8(cap):
                self.skips.add(split, self._json_rel, 'invalid UTF-8', f'{vid} sen_id {s.get("sen_id")}')
                continue
            try:
                order = float(s.get('sen_id', k))
            except (TypeError, ValueError):
                order = float(k)
            captions[vid].append((order, cap.strip()))
        for video_id in self._videos:
            if not isinstance(video_id, str) or video_id in test_ids:
                continue
            if common.has_invalid_utf8(video_id):
                yield Skip(self._json_rel, 'invalid UTF-8', common.printable(video_id))
                continue
            caps = [c for _, c in sorted(captions.get(video_id, []), key=lambda x: x[0])]
            if not caps:
                yield Skip(f'videos/all/{video_id}.mp4', 'empty caption', f'no caption in {self._json_rel}')
                continue
            yield Sample(key=video_id, id=video_id, video=self._video(manual_dir, video_id),
                         missing=f'videos/all/{video_id}.mp4', fields={'captions': caps})


common.register(Msrvtt)
