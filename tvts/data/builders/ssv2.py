"""Something-Something v2: TFDS builder ``ssv2``, configs ``labels`` (action classification, splits ``train`` and
``validation``) and ``mc`` (multiple choice, split ``validation``).

Manual directory (the dataset's archives and label files unpacked; the label files under ``labels/``, or with
their original names at the top level)::

    20bn-something-something-v2/<id>.webm      the videos (any folder below the manual directory is searched)
    labels/labels.json                         {"<template without brackets>": "<class index>", ...}  (174)
    labels/train.json, labels/validation.json  [{"id", "label", "template", "placeholders"}, ...]
      (or something-something-v2-{labels,train,validation}.json)
    mc/val.jsonl                               config mc: one {"clip_name": "<id>.webm", "options": [...],
                                               "answer": <index of the right option>} per line

``labels`` example: ``{"id", "video" (file bytes), "format", "label" (ClassLabel over the 174 templates, spelled as
in labels.json; classes/ssv2.txt), "caption" (the entry's label: the template with its objects filled in),
"template" (with its [something] brackets)}``. The class is the template with its brackets removed, as the
dataset's labels.json keys it.

``mc`` example: ``{"id", "video", "format", "options" (the candidate texts), "answer" (int64)}``. The file is the
one the official TVTSv2 multiple-choice loader reads (``v2/data_loader/SSV2_mc_dataset.py:19``, fields ``clip_name``,
``options``, ``answer`` at :30 and :71).

Skipped: an entry whose video is missing, empty, unreadable, truncated or has fewer than 4 frames; an entry
without an id or template, with an unknown template, invalid UTF-8, or (mc) a line that is not a JSON object, has
fewer than 2 options or an answer outside them. A labels.json that disagrees with the 174 classes stops the build.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Ssv2', 'CLASSES', 'template_class']

CLASSES = tuple(resources.files('tvts.data.builders').joinpath('classes/ssv2.txt').read_text().splitlines())
assert len(CLASSES) == 174

_LABEL_FILES = {'labels': ('labels/labels.json', 'something-something-v2-labels.json'),
                'train': ('labels/train.json', 'something-something-v2-train.json'),
                'validation': ('labels/validation.json', 'something-something-v2-validation.json'),
                'mc': ('mc/val.jsonl', 'meta_data/ssv2/mc/val.jsonl')}


def template_class(template: str) -> str:
    """'Holding [something] next to [something]' -> 'Holding something next to something' (labels.json's key)."""
    return ' '.join(template.replace('[', '').replace(']', '').split())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


class Ssv2(common.VideoBuilder, skip_registration=True):
    """Something-Something v2 videos with their template class, or with multiple-choice options."""

    name = 'ssv2'
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='labels', description='174 template classes'),
                       tfds.core.BuilderConfig(name='mc', description='multiple choice (mc/val.jsonl)')]
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://developer.qualcomm.com/software/ai-datasets/something-something'
    CITATION = ('@inproceedings{goyal2017something, title={The "something something" video database for learning and '
                'evaluating visual common sense}, author={Goyal, Raghav and others}, booktitle={ICCV}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ssv2 reads a manual directory holding
  20bn-something-something-v2/<id>.webm
  labels/labels.json, labels/train.json, labels/validation.json   (config labels)
  mc/val.jsonl   {"clip_name", "options", "answer"} per line      (config mc)
"""

    @property
    def SPLITS(self):  # noqa: N802  (the base class's name)
        return ('validation',) if self.builder_config.name == 'mc' else ('train', 'validation')

    def _text_features(self):
        if self.builder_config.name == 'mc':
            return {'options': tfds.features.Sequence(tfds.features.Text()),
                    'answer': tfds.features.Scalar(dtype=np.int64)}
        return {'label': tfds.features.ClassLabel(names=list(CLASSES)), 'caption': tfds.features.Text(),
                'template': tfds.features.Text()}

    def _required(self):
        return [_LABEL_FILES[w] for w in (('mc',) if self.builder_config.name == 'mc'
                                          else ('labels', 'train', 'validation'))]

    def _prepare(self, manual_dir: str) -> None:
        self._videos = common.index_videos(manual_dir)
        if self.builder_config.name == 'labels':
            rel = common.first_file(manual_dir, _LABEL_FILES['labels'])
            try:
                found = common.read_json(os.path.join(manual_dir, rel))
                found = {str(k): int(v) for k, v in common.mapping(found).items()}
            except (common.BadSample, ValueError, TypeError) as e:
                raise ManualDirError(f'ssv2: {rel} is not a {{template: index}} object ({e})') from None
            expected = {c: i for i, c in enumerate(CLASSES)}
            if found != expected:
                wrong = sorted(set(found.items()) ^ set(expected.items()))[:5]
                raise ManualDirError(f'ssv2: {rel} does not list the 174 Something-Something v2 templates in order '
                                     f'(first differences: {wrong})')

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        if self.builder_config.name == 'mc':
            yield from self._mc_samples(manual_dir)
            return
        rel = common.first_file(manual_dir, _LABEL_FILES[split])
        try:
            entries = json.loads(common.read_text(os.path.join(manual_dir, rel)))
        except ValueError as e:
            raise ManualDirError(f'ssv2: {rel} is not valid JSON ({e})') from None
        if not isinstance(entries, list):
            raise ManualDirError(f'ssv2: {rel} must hold a list of entries, got {type(entries).__name__}')
        classes = {c: i for i, c in enumerate(CLASSES)}
        for n, entry in enumerate(entries):
            where = f'{rel}[{n}]'
            if not isinstance(entry, dict) or not str(entry.get('id', '')).strip() or 'template' not in entry:
                yield Skip(where, 'malformed annotation', 'an entry needs "id" and "template"')
                continue
            if any(common.has_invalid_utf8(s) for s in _strings(entry)):
                yield Skip(where, 'invalid UTF-8', common.printable(str(entry.get('id'))))
                continue
            video_id = str(entry['id']).strip()
            cls = template_class(str(entry['template']))
            if cls not in classes:
                yield Skip(where, 'unknown class', f'template {entry["template"]!r}')
                continue
            caption = ' '.join(str(entry.get('label') or cls).split())
            yield Sample(key=video_id, id=video_id, video=self._videos.get(video_id),
                         missing=f'20bn-something-something-v2/{video_id}.webm',
                         fields={'label': classes[cls], 'caption': caption, 'template': str(entry['template'])})

    def _mc_samples(self, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = common.first_file(manual_dir, _LABEL_FILES['mc'])
        for line, text in common.read_lines(os.path.join(manual_dir, rel)):
            if not text.strip():
                continue
            where = f'{rel}:{line}'
            if common.has_invalid_utf8(text):
                yield Skip(where, 'invalid UTF-8', common.printable(text[:80]))
                continue
            try:
                item = json.loads(text)
                clip, options, answer = str(item['clip_name']), [str(o) for o in item['options']], int(item['answer'])
            except (ValueError, TypeError, KeyError) as e:
                yield Skip(where, 'malformed row', f'needs a JSON object with clip_name, options, answer ({e!r})')
                continue
            if len(options) < 2 or not 0 <= answer < len(options):
                yield Skip(where, 'malformed row', f'{len(options)} options, answer {answer}')
                continue
            stem = os.path.splitext(os.path.basename(clip))[0]
            video = self._videos.get(os.path.basename(clip)) or self._videos.get(stem)
            yield Sample(key=stem, id=stem, video=video, missing=f'20bn-something-something-v2/{clip}',
                         fields={'options': options, 'answer': np.int64(answer)})


common.register(Ssv2)
