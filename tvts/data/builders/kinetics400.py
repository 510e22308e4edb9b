"""Kinetics-400 (action classification): TFDS builder ``kinetics400``, splits ``train`` and ``val``.

Manual directory (the CVDF release, github.com/cvdfoundation/kinetics-dataset, or DeepMind's CSVs beside videos
you fetched yourself)::

    annotations/{train,val}.csv        "label,youtube_id,time_start,time_end,split[,is_cc]" (a header row)
      (or kinetics400_{train,val}.csv / kinetics_400_{train,val}.csv at the top level)
    any folders below:  <youtube_id>_<time_start:06d>_<time_end:06d>.<ext>
      (CVDF: train/, val/; per-class folders such as val/<label>/ are found too; any container PyAV reads)

Example: ``{"id" (the file stem), "video" (file bytes), "format", "label" (ClassLabel over the 400 classes as the
dataset spells them: abseiling, air drumming, ..., zumba; classes/kinetics400.txt)}``.

The val split is the one zero-shot Kinetics-400 figures are reported on (the official TVTSv2 loader reads the val
list for 'test': ``v2/data_loader/K400_dataset.py:16-19``); the test split's labels were not released with the
videos, so it is not built. A label spelled as a folder name (``air_drumming``, ``hurling_-sport-``) is read as
its class.

Skipped: a row whose video is missing, empty, unreadable, truncated or has fewer than 4 frames; a row with an
unknown class, a bad time, the wrong number of fields or invalid UTF-8; a video listed twice.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from importlib import resources

import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Kinetics400', 'CLASSES', 'class_index']

CLASSES = tuple(resources.files('tvts.data.builders').joinpath('classes/kinetics400.txt').read_text().splitlines())
assert len(CLASSES) == 400

_CSV_NAMES = ('annotations/{split}.csv', 'kinetics400_{split}.csv', 'kinetics_400_{split}.csv')


def _key(label: str) -> str:
    """Spelling-independent form: 'hurling (sport)', 'hurling_-sport-' and 'Hurling (Sport)' agree."""
    return re.sub(r'[^a-z0-9]', '', label.lower())


_EXACT = {c: i for i, c in enumerate(CLASSES)}
_BY_KEY = {_key(c): i for i, c in enumerate(CLASSES)}
assert len(_BY_KEY) == len(CLASSES)


def class_index(label: str) -> int | None:
    """A CSV or folder label -> class index (None if it is not a Kinetics-400 class)."""
    return _EXACT.get(label, _BY_KEY.get(_key(label)))


def _csv_names(split: str) -> tuple[str, ...]:
    return tuple(pattern.format(split=split) for pattern in _CSV_NAMES)


class Kinetics400(common.VideoBuilder, skip_registration=True):
    """Kinetics-400 YouTube clips with their action class."""

    name = 'kinetics400'
    SPLITS = ('train', 'val')
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://github.com/cvdfoundation/kinetics-dataset'
    CITATION = ('@article{kay2017kinetics, title={The Kinetics Human Action Video Dataset}, author={Kay, Will and '
                'Carreira, Joao and Simonyan, Karen and others}, journal={arXiv:1705.06950}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
kinetics400 reads a manual directory holding
  annotations/train.csv, annotations/val.csv   (label,youtube_id,time_start,time_end,split)
  the videos, named <youtube_id>_<time_start:06d>_<time_end:06d>.mp4, in any folders below it (e.g. train/, val/)
"""

    def _text_features(self):
        return {'label': tfds.features.ClassLabel(names=list(CLASSES))}

    def _required(self):
        return [_csv_names(split) for split in self.SPLITS]

    def _prepare(self, manual_dir: str) -> None:
        self._videos = common.index_videos(manual_dir)   # stem -> path; one walk for both splits

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = common.first_file(manual_dir, _csv_names(split))
        header, rows = common.read_csv(os.path.join(manual_dir, rel), delimiter=',')
        need = ('label', 'youtube_id', 'time_start', 'time_end')
        absent = [c for c in need if c not in header]
        if absent:
            raise ManualDirError(f'kinetics400: {rel} lacks the column(s) {", ".join(absent)} (header {header})')
        col = {c: header.index(c) for c in need}
        for line, fields in rows:
            where = f'{rel}:{line}'
            if len(fields) != len(header):
                yield Skip(where, 'malformed row', f'{len(fields)} fields, the header has {len(header)}')
                continue
            if any(common.has_invalid_utf8(f) for f in fields):
                yield Skip(where, 'invalid UTF-8', common.printable(','.join(fields)))
                continue
            label, youtube_id = fields[col['label']].strip(), fields[col['youtube_id']].strip()
            try:
                start, end = int(float(fields[col['time_start']])), int(float(fields[col['time_end']]))
            except ValueError:
                yield Skip(where, 'malformed row', f'time_start/time_end {fields[col["time_start"]]!r}, '
                                                   f'{fields[col["time_end"]]!r}')
                continue
            stem = f'{youtube_id}_{start:06d}_{end:06d}'
            index = class_index(label)
            if index is None:
                yield Skip(where, 'unknown class', f'{label!r} is not a Kinetics-400 class')
                continue
            yield Sample(key=stem, id=stem, video=self._videos.get(stem), missing=f'{split}/{stem}.mp4',
                         fields={'label': index})


common.register(Kinetics400)
