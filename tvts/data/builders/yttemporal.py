"""YT-Temporal-180M (transcribed YouTube videos): TFDS builder ``yttemporal``, splits ``train`` and ``val``.

Manual directory (the layout the official TVTSv2 loader reads, ``v2/data_loader/YTTemporal_dataset.py``)::

    meta_data/yttemporal_train.csv      column ``Name`` (tab- or comma-separated): ``<subset>/data/<id>.mp4``
    meta_data/yttemporal_val.csv
    videos/<subset>/data/<id>.<ext>     the video (mp4, or any container PyAV reads)
    videos/<subset>/annotations/<id>.json
        {"subtitles": [{"word": str, "time": seconds}, ...],      raw word-level ASR
         "denoised": [{"cleanasr": str, ...}, ...],               cleaned ASR segments
         "info": {"duration": seconds, ...}}

Example: ``{"id", "video" (file bytes), "format", "duration" (float32, info.duration; the file's length if the
annotation has none), "words" (str per timed word), "times" (float32 [n])}``. ``times[k]`` is the time of the
k-th timed word that survives ``tvts.data.transcripts.clean_subtitles`` (non-speech tokens such as ``[Music]``
and ``&gt;&gt;`` dropped); ``words[k]`` is the cleaned ASR text aligned to it by the official DTW alignment
(``align.align_using_dtw``): usually one word, sometimes several, ``''`` when no cleaned word matched it. Join
the non-empty ``words`` of a clip with single spaces to get its transcript.

Skipped (counted, listed in skipped.json): missing / empty / unreadable / truncated video, a video shorter than
the 4-clip window (``MIN_SECONDS``: 4 clips of >= 1 s and 3 gaps of 1 s, the floor of
``transcripts.sample_window``), a missing or malformed annotation (no ``denoised``), no timed speech word
(empty or missing ``subtitles``), invalid UTF-8 in the annotation or the CSV row.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

try:
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - ftfy is a project dependency
    _ftfy = None

from tvts.data import transcripts
from tvts.data.builders import align, common
from tvts.data.builders.common import BadSample, Sample, Skip

__all__ = ['Yttemporal', 'MIN_SECONDS', 'annotation_words']

# transcripts.sample_window: clips of >= min_clip_seconds (1 s), 4 clips, 1 s gaps
MIN_SECONDS = 4 * 1.0 + 3 * 1.0


def annotation_words(ann) -> tuple[list[str], np.ndarray, float | None]:
    """(aligned words, times [n] float32, info.duration or None) of a parsed annotation; BadSample if unusable."""
    ann = common.mapping(ann)
    subtitles = ann.get('subtitles')
    if not subtitles:
        raise BadSample('empty or missing subtitles', 'no "subtitles"' if subtitles is None else '"subtitles" is empty')
    if not isinstance(subtitles, list) or not all(isinstance(x, dict) for x in subtitles):
        raise BadSample('malformed annotation', '"subtitles" is not a list of {word, time}')
    timed = transcripts.clean_subtitles(subtitles)
    if not timed:
        raise BadSample('empty or missing subtitles', f'none of the {len(subtitles)} subtitle tokens is a timed '
                                                      'speech word')
    denoised = ann.get('denoised')
    if not isinstance(denoised, list) or not all(isinstance(x, dict) and isinstance(x.get('cleanasr'), str)
                                                 for x in denoised):
        raise BadSample('malformed annotation', '"denoised" is not a list of {cleanasr: str}')
    texts = [x['cleanasr'] for x in denoised]
    if _ftfy is not None:
        texts = [_ftfy.fix_text(t) for t in texts]
    words = align.align_using_dtw([w['word'] for w in timed], align.split_cleanasr(texts))
    times = np.asarray([w['time'] for w in timed], np.float32)
    info = ann.get('info')
    duration = None
    if isinstance(info, dict):
        try:
            duration = float(info.get('duration'))
        except (TypeError, ValueError):
            duration = None
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            duration = None
    return words, times, duration


class Yttemporal(common.VideoBuilder, skip_registration=True):
    """YT-Temporal-180M videos with word-level ASR aligned to the cleaned transcript."""

    name = 'yttemporal'
    SPLITS = ('train', 'val')
    MIN_SECONDS = MIN_SECONDS
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://rowanzellers.com/merlot/'
    CITATION = ('@inproceedings{zellers2021merlot, title={MERLOT: Multimodal Neural Script Knowledge Models}, '
                'author={Zellers, Rowan and others}, booktitle={NeurIPS}, year={2021}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
yttemporal reads a manual directory holding
  meta_data/yttemporal_train.csv, meta_data/yttemporal_val.csv   (column Name: <subset>/data/<id>.mp4)
  videos/<subset>/data/<id>.mp4                                  (any container PyAV reads)
  videos/<subset>/annotations/<id>.json                          ({subtitles, denoised, info.duration})
"""

    def _required(self):
        return ('meta_data/yttemporal_train.csv', 'meta_data/yttemporal_val.csv', 'videos/')

    def _text_features(self):
        return {
            'duration': tfds.features.Scalar(dtype=np.float32),
            'words': tfds.features.Sequence(tfds.features.Text()),
            'times': tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        csv_rel = f'meta_data/yttemporal_{split}.csv'
        header, rows = common.read_csv(os.path.join(manual_dir, csv_rel))
        if 'Name' not in header:
            raise common.ManualDirError(f'yttemporal: {csv_rel} has no "Name" column (header {header})')
        col = header.index('Name')
        for line, fields in rows:
            where = f'{csv_rel}:{line}'
            if col >= len(fields) or not fields[col].strip():
                yield Skip(where, 'malformed row', 'no Name')
                continue
            name = fields[col].strip()
            if common.has_invalid_utf8(name):
                yield Skip(where, 'invalid UTF-8', name)
                continue
            video_rel = 'videos/' + name.lstrip('/')
            subset = name.split('/')[0]
            video_id = os.path.splitext(os.path.basename(name))[0]
            ann_rel = f'videos/{subset}/annotations/{video_id}.json'
            if not os.path.exists(os.path.join(manual_dir, video_rel)):
                yield Sample(key=name, id=video_id, video=None, fields={}, missing=video_rel)
                continue
            try:
                words, times, duration = annotation_words(common.read_json(os.path.join(manual_dir, ann_rel)))
            except BadSample as e:
                yield Skip(ann_rel, e.reason, e.detail)
                continue
            yield Sample(key=name, id=video_id, video=video_rel, annotation=ann_rel,
                         fields={'words': words, 'times': times}, meta={'duration': duration})

    def _too_short(self, sample, probe):
        duration = probe.duration
        if sample.meta['duration'] is not None:
            duration = min(duration, sample.meta['duration'])
        if duration < self.MIN_SECONDS:
            return (f'{duration:.2f} s, the 4-clip window needs >= {self.MIN_SECONDS:g} s '
                    f'(file {probe.duration:.2f} s)')
        return super()._too_short(sample, probe)

    def _finish(self, sample, probe):
        duration = sample.meta['duration']
        return {'duration': np.float32(probe.duration if duration is None else duration)}


common.register(Yttemporal)
