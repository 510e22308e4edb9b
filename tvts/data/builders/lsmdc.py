"""LSMDC (movie-clip retrieval): TFDS builder ``lsmdc``, splits ``train``, ``val`` and ``test``.

Manual directory (the LSMDC 2016 challenge files; CLIP4Clip ``dataloaders/dataloader_lsmdc_retrieval.py`` and
the TVTSv2 loader ``v2/data_loader/LSMDC_dataset.py`` read the same)::

    LSMDC16_annos_training.csv              train
    LSMDC16_annos_val.csv                   val
    LSMDC16_challenge_1000_publictect.csv   test (the 1,000-clip retrieval test set)
        tab-separated, no header: <CLIP_ID> <START_ALIGNED> <END_ALIGNED> <START_EXTRACTED> <END_EXTRACTED>
        <SENTENCE>; a clip id may have several rows (sentences)
    avi/<movie>/<CLIP_ID>.avi               the clips (found at any depth under avi/ or videos/, any container)

Example: ``{"id" (clip id), "video" (file bytes), "format", "captions" (the clip's sentences in file order)}``.

Skipped: a clip without a file, missing / empty / unreadable / truncated video, fewer than 4 frames, a row with
the wrong number of fields or invalid UTF-8 (that sentence; the clip keeps its other sentences).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Lsmdc', 'SPLIT_FILES']

SPLIT_FILES = {
    'train': 'LSMDC16_annos_training.csv',
    'val': 'LSMDC16_annos_val.csv',
    'test': 'LSMDC16_challenge_1000_publictect.csv',
}
_VIDEO_DIRS = ('avi', 'videos')


class Lsmdc(common.VideoBuilder, skip_registration=True):
    """LSMDC 2016 movie clips with their sentences."""

    name = 'lsmdc'
    SPLITS = ('train', 'val', 'test')
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://sites.google.com/site/describingmovies/'
    CITATION = ('@article{rohrbach2017lsmdc, title={Movie Description}, author={Rohrbach, Anna and Torabi, '
                'Atousa and Rohrbach, Marcus and Tandon, Niket and Pal, Christopher and Larochelle, Hugo and '
                'Courville, Aaron and Schiele, Bernt}, journal={IJCV}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
lsmdc reads a manual directory holding
  LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv  (tab-separated)
  avi/<movie>/<clip id>.avi
"""

    def _text_features(self):
        return {'captions': tfds.features.Sequence(tfds.features.Text())}

    def _required(self):
        return tuple(SPLIT_FILES.values())

    def _prepare(self, manual_dir: str) -> None:
        dirs = [d for d in _VIDEO_DIRS if os.path.isdir(os.path.join(manual_dir, d))]
        if not dirs:
            raise ManualDirError(f'lsmdc: the manual directory {manual_dir} lacks avi/ (the clips).\n'
                                 f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
        self._index: dict[str, str] = {}
        for d in dirs:
            for name, rel in common.index_videos(os.path.join(manual_dir, d)).items():
                self._index.setdefault(name, f'{d}/{rel}')

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = SPLIT_FILES[split]
        clips: dict[str, list[str]] = {}
        for line, text in common.read_lines(os.path.join(manual_dir, rel)):
            if not text.strip():
                continue
            fields = text.split('\t')
            where = f'{rel}:{line}'
            if len(fields) != 6:
                yield Skip(where, 'malformed row', f'{len(fields)} tab-separated fields, expected 6')
                continue
            clip_id, sentence = fields[0].strip(), fields[5].strip()
            if common.has_invalid_utf8(text):
                yield Skip(where, 'invalid UTF-8', common.printable(clip_id))
                continue
            clips.setdefault(clip_id, [])
            if sentence:
                clips[clip_id].append(sentence)
        for clip_id, sentences in clips.items():
            path = self._index.get(clip_id)
            shown = path or f'avi/{clip_id.rsplit("_", 1)[0]}/{clip_id}.avi'
            if not sentences:
                yield Skip(shown, 'empty caption', rel)
                continue
            yield Sample(key=clip_id, id=clip_id, video=path, missing=shown, fields={'captions': sentences})


common.register(Lsmdc)
