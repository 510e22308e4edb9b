"""HMDB51 (action classification): TFDS builder ``hmdb51``, configs ``split1``/``split2``/``split3``, each with
splits ``train`` and ``test``.

Manual directory (``hmdb51_org.rar`` with its per-class archives unpacked into ``videos/``, and
``test_train_splits.rar`` unpacked into ``splits/``; its original folder name ``testTrainMulti_7030_splits/`` is
accepted too)::

    videos/<class>/<name>.avi
    splits/<class>_test_split{1,2,3}.txt    "<name>.avi <flag>" per line (trailing spaces in the original):
                                            flag 1 = train, 2 = test, 0 = not used in this split

Example: ``{"id" (file name without extension), "video" (file bytes), "format", "label" (ClassLabel over the 51
classes as the dataset spells its folders: brush_hair, cartwheel, ..., wave)}``.

Skipped: a listed file that is missing, empty, unreadable, truncated or has fewer than 4 frames, a malformed line
(not "<file> <0|1|2>") or one with invalid UTF-8, a split file of an unknown class. A class without a split file
for the config is reported (the build goes on with the others).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Hmdb51', 'CLASSES']

CLASSES = (
    'brush_hair', 'cartwheel', 'catch', 'chew', 'clap', 'climb', 'climb_stairs', 'dive', 'draw_sword', 'dribble',
    'drink', 'eat', 'fall_floor', 'fencing', 'flic_flac', 'golf', 'handstand', 'hit', 'hug', 'jump', 'kick',
    'kick_ball', 'kiss', 'laugh', 'pick', 'pour', 'pullup', 'punch', 'push', 'pushup', 'ride_bike', 'ride_horse',
    'run', 'shake_hands', 'shoot_ball', 'shoot_bow', 'shoot_gun', 'sit', 'situp', 'smile', 'smoke', 'somersault',
    'stand', 'swing_baseball', 'sword', 'sword_exercise', 'talk', 'throw', 'turn', 'walk', 'wave',
)
assert len(CLASSES) == 51

_SPLIT_DIRS = ('splits', 'testTrainMulti_7030_splits')
_FLAGS = {'1': 'train', '2': 'test', '0': None}


class Hmdb51(common.ClassSplitsBuilder, skip_registration=True):
    """HMDB51 action videos with their class; one config per official train/test split."""

    name = 'hmdb51'
    CLASSES = CLASSES
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/'
    CITATION = ('@inproceedings{kuehne2011hmdb, title={HMDB: A Large Video Database for Human Motion Recognition}, '
                'author={Kuehne, Hildegard and Jhuang, Hueihan and Garrote, Estibaliz and Poggio, Tomaso and '
                'Serre, Thomas}, booktitle={ICCV}, year={2011}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
hmdb51 reads a manual directory holding
  videos/<class>/<name>.avi
  splits/<class>_test_split1.txt .. <class>_test_split3.txt     ("<name>.avi <0|1|2>" lines)
"""

    def _required(self):
        return ('videos/',)

    def _prepare(self, manual_dir: str) -> None:
        k = self._split_number
        dirs = [d for d in _SPLIT_DIRS if os.path.isdir(os.path.join(manual_dir, d))]
        pattern = re.compile(rf'^(.+)_test_split{k}\.txt$')
        self._split_files: list[tuple[str, str]] = []     # (class, relative path)
        for d in dirs:
            for fn in sorted(os.listdir(os.path.join(manual_dir, d))):
                m = pattern.match(fn)
                if m:
                    self._split_files.append((m.group(1), f'{d}/{fn}'))
        if not self._split_files:
            raise ManualDirError(f'hmdb51: the manual directory {manual_dir} lacks splits/<class>_test_split{k}.txt '
                                 f'(no split file for {self.builder_config.name}).\n'
                                 f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
        absent = sorted(set(CLASSES) - {c for c, _ in self._split_files})
        if absent and self._verbose:
            print(f'[hmdb51] {self.builder_config.name}: {len(absent)} of the 51 classes have no split file '
                  f'({", ".join(absent[:5])}{", ..." if len(absent) > 5 else ""})', file=sys.stderr)

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        label_of = {c: i for i, c in enumerate(CLASSES)}
        for cls, rel in self._split_files:
            for line, text in common.read_lines(os.path.join(manual_dir, rel)):
                parts = text.split()
                if not parts:
                    continue
                where = f'{rel}:{line}'
                if len(parts) != 2 or parts[1] not in _FLAGS:   # reported once, with the first split
                    if split == self.SPLITS[0]:
                        yield Skip(where, 'malformed row', f'expected "<file> <0|1|2>", got '
                                                           f'{common.printable(text.strip())!r}')
                    continue
                if _FLAGS[parts[1]] != split:
                    continue
                if common.has_invalid_utf8(text):
                    yield Skip(where, 'invalid UTF-8', common.printable(text.strip()))
                    continue
                full = f'videos/{cls}/{parts[0]}'
                if cls not in label_of:
                    yield Skip(full, 'unknown class', f'{rel}: class {cls!r}')
                    continue
                exists = os.path.exists(os.path.join(manual_dir, full))
                yield Sample(key=f'{cls}/{parts[0]}', id=os.path.splitext(parts[0])[0],
                             video=full if exists else None, missing=full, fields={'label': label_of[cls]})


common.register(Hmdb51)
