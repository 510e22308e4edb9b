"""DiDeMo (paragraph-to-video retrieval): TFDS builder ``didemo``, splits ``train``, ``val`` and ``test``.

Manual directory (the annotation files of LisaAnne/LocalizingMoments ``data/``, the videos in one folder)::

    train_data.json, val_data.json, test_data.json
        [{"video": "<file name>", "description": str, "times": [[s, e], ...], "annotation_id": int, ...}, ...]
        (one entry per moment; several moments per video)
    videos/...            the videos, at any depth, named ``<video>`` as in the JSON or ``<video>`` with its
                          extension replaced or another appended (``x.mov`` -> ``x.mp4`` / ``x.mov.mp4``);
                          mp4, mov, avi, webm, mkv, ... as PyAV reads them

Example: ``{"id" (the JSON's "video"), "video" (file bytes), "format", "captions" (one str: the video's
descriptions joined by single spaces in file order, the common paragraph-retrieval practice, e.g. CLIP4Clip's
``dataloaders/dataloader_didemo_retrieval.py``)}``.

Skipped: a video the JSON names but the folder lacks (``missing file``; many DiDeMo videos are gone from Flickr),
missing / empty / unreadable / truncated video, fewer than 4 frames, a description that is not valid UTF-8
(the whole video: its paragraph would be incomplete), no description.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Didemo', 'resolve_video']


def resolve_video(index: dict[str, str], video: str) -> str | None:
    """The file (relative to videos/) for a JSON ``video`` name, from ``common.index_videos``."""
    stem = os.path.splitext(video)[0]
    for name in (video, stem):
        if name in index:
            return index[name]
    return None


class Didemo(common.VideoBuilder, skip_registration=True):
    """DiDeMo videos with their moment descriptions joined into one paragraph."""

    name = 'didemo'
    SPLITS = ('train', 'val', 'test')
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://github.com/LisaAnne/LocalizingMoments'
    CITATION = ('@inproceedings{hendricks2017didemo, title={Localizing Moments in Video with Natural Language}, '
                'author={Hendricks, Lisa Anne and Wang, Oliver and Shechtman, Eli and Sivic, Josef and Darrell, '
                'Trevor and Russell, Bryan}, booktitle={ICCV}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
didemo reads a manual directory holding
  train_data.json, val_data.json, test_data.json    (LocalizingMoments data/)
  videos/<video file named as the JSON's "video">
"""

    def _text_features(self):
        return {'captions': tfds.features.Sequence(tfds.features.Text())}

    def _required(self):
        return ('train_data.json', 'val_data.json', 'test_data.json', 'videos/')

    def _prepare(self, manual_dir: str) -> None:
        self._index = common.index_videos(os.path.join(manual_dir, 'videos'))

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = f'{split}_data.json'
        try:   # undecodable bytes stay as surrogates: the entries that hold them are found below
            entries = json.loads(common.read_text(os.path.join(manual_dir, rel)))
        except ValueError as e:
            raise ManualDirError(f'didemo: {rel} is not valid JSON: {e}') from None
        if not isinstance(entries, list):
            raise ManualDirError(f'didemo: {rel} is not a list of moments')
        paragraphs: dict[str, list[str]] = {}
        bad: set[str] = set()
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get('video'), str):
                yield Skip(f'{rel}#{k}', 'malformed annotation', 'an entry without "video"')
                continue
            video, text = entry['video'], entry.get('description')
            text = text if isinstance(text, str) else ''
            paragraphs.setdefault(video, [])
            if common.has_invalid_utf8(video + text):
                bad.add(video)
            elif text.strip():
                paragraphs[video].append(' '.join(text.split()))
        for video, texts in paragraphs.items():
            path = resolve_video(self._index, video) if not common.has_invalid_utf8(video) else None
            shown = 'videos/' + (path or video)
            if video in bad:
                yield Skip(shown, 'invalid UTF-8', f'a description of {common.printable(video)} in {rel}')
                continue
            if not texts:
                yield Skip(shown, 'empty caption', f'no description in {rel}')
                continue
            yield Sample(key=video, id=video, video=f'videos/{path}' if path else None, missing=shown,
                         fields={'captions': [' '.join(texts)]})


common.register(Didemo)
