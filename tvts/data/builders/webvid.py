"""WebVid-2M (captioned stock clips): TFDS builder ``webvid``, splits ``train`` and ``val``.

Manual directory (WebVid's own distribution: the ``results_2M_{train,val}.csv`` metadata files, and the
``videos/<page_dir>/<videoid>.mp4`` folders its download script writes)::

    results_2M_train.csv    header videoid,contentUrl,duration,page_dir,name (name: the caption; quoted when it
    results_2M_val.csv      holds commas or quotes; duration: ISO 8601, e.g. PT00H00M11S)
    videos/<page_dir>/<videoid>.mp4     (another container PyAV reads is found too: .webm, .mkv, ...)

Example: ``{"id" (videoid), "video" (file bytes), "format", "duration" (float32 seconds, measured from the
file's packets; the CSV's whole seconds only if the file has no timing), "caption" (str)}``.

Skipped: a row whose file is missing, missing / empty / unreadable / truncated video, fewer than 4 frames (one per
clip of the 4-clip window: captioned videos are sampled over the whole file), an empty caption, a row that is
not valid UTF-8 or lacks a field.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import Sample, Skip

__all__ = ['Webvid', 'COLUMNS', 'iso_duration']

COLUMNS = ('videoid', 'contentUrl', 'duration', 'page_dir', 'name')
_ISO = re.compile(r'^P(?:(\d+(?:\.\d+)?)D)?T?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$')


def iso_duration(text: str) -> float | None:
    """'PT00H00M11S' -> 11.0; a plain number of seconds is accepted too; None if neither."""
    text = (text or '').strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = _ISO.match(text)
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


class Webvid(common.VideoBuilder, skip_registration=True):
    """WebVid-2M captioned videos."""

    name = 'webvid'
    SPLITS = ('train', 'val')
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://m-bain.github.io/webvid-dataset/'
    CITATION = ('@inproceedings{bain2021frozen, title={Frozen in Time: A Joint Video and Image Encoder for '
                'End-to-End Retrieval}, author={Bain, Max and Nagrani, Arsha and Varol, G{\\"u}l and '
                'Zisserman, Andrew}, booktitle={ICCV}, year={2021}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
webvid reads a manual directory holding
  results_2M_train.csv, results_2M_val.csv   (videoid,contentUrl,duration,page_dir,name)
  videos/<page_dir>/<videoid>.mp4
"""

    def _required(self):
        return ('results_2M_train.csv', 'results_2M_val.csv', 'videos/')

    def _text_features(self):
        return {'duration': tfds.features.Scalar(dtype=np.float32), 'caption': tfds.features.Text()}

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        csv_rel = f'results_2M_{split}.csv'
        header, rows = common.read_csv(os.path.join(manual_dir, csv_rel), delimiter=',')
        missing = [c for c in ('videoid', 'page_dir', 'name') if c not in header]
        if missing:
            raise common.ManualDirError(f'webvid: {csv_rel} lacks the column(s) {", ".join(missing)} '
                                        f'(header {header}; expected {",".join(COLUMNS)})')
        col = {c: header.index(c) for c in header}
        for line, fields in rows:
            where = f'{csv_rel}:{line}'
            if len(fields) != len(header):
                yield Skip(where, 'malformed row', f'{len(fields)} fields, the header has {len(header)}')
                continue
            row = {c: fields[i] for c, i in col.items()}
            videoid, page_dir, caption = row['videoid'].strip(), row['page_dir'].strip(), row['name']
            if not videoid or not page_dir:
                yield Skip(where, 'malformed row', 'empty videoid or page_dir')
                continue
            stem = f'videos/{page_dir}/{videoid}'
            if common.has_invalid_utf8(videoid + page_dir):
                yield Skip(where, 'invalid UTF-8', stem)
                continue
            if common.has_invalid_utf8(caption) or common.has_invalid_utf8(row.get('duration', '')):
                yield Skip(stem + '.mp4', 'invalid UTF-8', f'{where}: the caption is not valid UTF-8')
                continue
            video = common.find_video(manual_dir, stem)
            if not caption.strip():
                yield Skip(video or stem + '.mp4', 'empty caption', where)
                continue
            yield Sample(key=videoid, id=videoid, video=video, missing=stem + '.mp4',
                         fields={'caption': caption.strip()},
                         meta={'csv_duration': iso_duration(row.get('duration', ''))})

    def _finish(self, sample, probe):
        return {'duration': np.float32(probe.duration or sample.meta.get('csv_duration') or 0.0)}


common.register(Webvid)
