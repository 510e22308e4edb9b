"""Conceptual Captions 3M (captioned images): TFDS builder ``cc3m``, splits ``train`` and ``val``; TVTS v1's second
stage trains on it beside WebVid.

Manual directory (the layout the official TVTS v1 loader reads, ``v1/data_loader/ConceptualCaptions_dataset.py:50-55,
69-76``, as the Frozen-in-Time download script leaves it)::

    meta_data/cc3m_{train,val}.tsv     tab-separated with a header row: the caption first, the image's file name
                                       second (columns named caption / filename when the header names them)
      (or cc3m_{train,val}.tsv at the top level)
    training/<file name>               the train images
    validation/<file name>             the val images

Example: ``{"id" (the file name without extension), "video" (the image file's bytes: a one-frame video to the loader,
which decodes it with PyAV), "format" (jpg, png, ...), "duration" (0), "caption"}``.

Skipped: a row whose image is missing, empty or not decodable (PIL: opened, verified and fully loaded), a row with an
empty caption, the wrong number of fields or invalid UTF-8, an image listed twice.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import BadSample, Sample, Skip, VideoProbe

__all__ = ['Cc3m', 'probe_image']

_DIRS = {'train': 'training', 'val': 'validation'}
_TSV_NAMES = ('meta_data/cc3m_{split}.tsv', 'cc3m_{split}.tsv')


def probe_image(data: bytes) -> VideoProbe:
    """Checks that ``data`` is a whole image PIL decodes; BadSample('empty file' | 'unreadable image') if not."""
    from PIL import Image

    if not data:
        raise BadSample('empty file')
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()           # structure; verify() leaves the image unusable, so open again to decode
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height, kind = image.width, image.height, (image.format or '').lower()
    except Exception as e:  # noqa: BLE001  (PIL raises many types for bad files)
        raise BadSample('unreadable image', f'{type(e).__name__}: {e}') from None
    return VideoProbe(duration=0.0, num_frames=1, width=width, height=height, codec=kind, container='image')


def _tsv_names(split: str) -> tuple[str, ...]:
    return tuple(pattern.format(split=split) for pattern in _TSV_NAMES)


class Cc3m(common.VideoBuilder, skip_registration=True):
    """Conceptual Captions images with their caption."""

    name = 'cc3m'
    SPLITS = ('train', 'val')
    MIN_FRAMES = 1
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://ai.google.com/research/ConceptualCaptions/'
    CITATION = ('@inproceedings{sharma2018conceptual, title={Conceptual Captions: A Cleaned, Hypernymed, Image '
                'Alt-text Dataset For Automatic Image Captioning}, author={Sharma, Piyush and Ding, Nan and Goodman, '
                'Sebastian and Soricut, Radu}, booktitle={ACL}, year={2018}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
cc3m reads a manual directory holding
  meta_data/cc3m_train.tsv, meta_data/cc3m_val.tsv   (caption<TAB>file name, with a header row)
  training/<file name>, validation/<file name>       the images
"""

    def _text_features(self):
        return {'duration': tfds.features.Scalar(dtype=np.float32), 'caption': tfds.features.Text()}

    def _required(self):
        return [_tsv_names(split) for split in self.SPLITS] + [f'{d}/' for d in _DIRS.values()]

    def _probe(self, data: bytes, name: str) -> VideoProbe:
        return probe_image(data)

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = common.first_file(manual_dir, _tsv_names(split))
        header, rows = common.read_csv(os.path.join(manual_dir, rel), delimiter='\t')
        lower = [h.lower() for h in header]
        cap = lower.index('caption') if 'caption' in lower else 0
        col = next((lower.index(c) for c in ('filename', 'file', 'image') if c in lower), 1)
        for line, fields in rows:
            where = f'{rel}:{line}'
            if len(fields) < max(cap, col) + 1:
                yield Skip(where, 'malformed row', f'{len(fields)} fields, need a caption and a file name')
                continue
            if any(common.has_invalid_utf8(f) for f in fields):
                yield Skip(where, 'invalid UTF-8', common.printable('\t'.join(fields))[:120])
                continue
            caption, name = ' '.join(fields[cap].split()), fields[col].strip()
            path = f'{_DIRS[split]}/{name}'
            if not caption:
                yield Skip(path, 'empty caption', where)
                continue
            exists = bool(name) and os.path.isfile(os.path.join(manual_dir, path))
            yield Sample(key=name, id=os.path.splitext(os.path.basename(name))[0], video=path if exists else None,
                         missing=path, fields={'caption': caption, 'duration': np.float32(0.0)})


common.register(Cc3m)
