"""UCF101 (action classification): TFDS builder ``ucf101``, configs ``split1``/``split2``/``split3``, each with
splits ``train`` and ``test``.

Manual directory (``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip`` unpacked)::

    UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ucfTrainTestlist/classInd.txt            "<index> <Class>" (1-based; CRLF line endings in the original)
    ucfTrainTestlist/trainlist0{1,2,3}.txt   "<Class>/<file>.avi <index>"
    ucfTrainTestlist/testlist0{1,2,3}.txt    "<Class>/<file>.avi"

Example: ``{"id" (file name without extension), "video" (file bytes), "format", "label" (ClassLabel over the 101
classes of classInd.txt, spelled as there: ApplyEyeMakeup, ..., HandstandPushups, ..., YoYo)}``. The label is
the class of the file's folder; a trainlist index that disagrees with it is a malformed row.

Skipped: a listed file that is missing, empty, unreadable, truncated or has fewer than 4 frames, a row with an
unknown class, a bad index or invalid UTF-8. A classInd.txt that disagrees with the 101 classes stops the build.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from tvts.data.builders import common
from tvts.data.builders.common import ManualDirError, Sample, Skip

__all__ = ['Ucf101', 'CLASSES']

CLASSES = (
    'ApplyEyeMakeup', 'ApplyLipstick', 'Archery', 'BabyCrawling', 'BalanceBeam', 'BandMarching', 'BaseballPitch',
    'Basketball', 'BasketballDunk', 'BenchPress', 'Biking', 'Billiards', 'BlowDryHair', 'BlowingCandles',
    'BodyWeightSquats', 'Bowling', 'BoxingPunchingBag', 'BoxingSpeedBag', 'BreastStroke', 'BrushingTeeth',
    'CleanAndJerk', 'CliffDiving', 'CricketBowling', 'CricketShot', 'CuttingInKitchen', 'Diving', 'Drumming',
    'Fencing', 'FieldHockeyPenalty', 'FloorGymnastics', 'FrisbeeCatch', 'FrontCrawl', 'GolfSwing', 'Haircut',
    'Hammering', 'HammerThrow', 'HandstandPushups', 'HandstandWalking', 'HeadMassage', 'HighJump', 'HorseRace',
    'HorseRiding', 'HulaHoop', 'IceDancing', 'JavelinThrow', 'JugglingBalls', 'JumpingJack', 'JumpRope',
    'Kayaking', 'Knitting', 'LongJump', 'Lunges', 'MilitaryParade', 'Mixing', 'MoppingFloor', 'Nunchucks',
    'ParallelBars', 'PizzaTossing', 'PlayingCello', 'PlayingDaf', 'PlayingDhol', 'PlayingFlute', 'PlayingGuitar',
    'PlayingPiano', 'PlayingSitar', 'PlayingTabla', 'PlayingViolin', 'PoleVault', 'PommelHorse', 'PullUps',
    'Punch', 'PushUps', 'Rafting', 'RockClimbingIndoor', 'RopeClimbing', 'Rowing', 'SalsaSpin', 'ShavingBeard',
    'Shotput', 'SkateBoarding', 'Skiing', 'Skijet', 'SkyDiving', 'SoccerJuggling', 'SoccerPenalty', 'StillRings',
    'SumoWrestling', 'Surfing', 'Swing', 'TableTennisShot', 'TaiChi', 'TennisSwing', 'ThrowDiscus',
    'TrampolineJumping', 'Typing', 'UnevenBars', 'VolleyballSpiking', 'WalkingWithDog', 'WallPushups',
    'WritingOnBoard', 'YoYo',
)
assert len(CLASSES) == 101

_LISTS = 'ucfTrainTestlist'


def read_class_index(path: str) -> dict[str, int]:
    """classInd.txt -> {Class: 0-based label}; ManualDirError if it is not the dataset's 101 classes."""
    found: dict[str, int] = {}
    for line, text in common.read_lines(path):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManualDirError(f'ucf101: {_LISTS}/classInd.txt:{line}: expected "<index> <Class>", got {text!r}')
        found[parts[1]] = int(parts[0]) - 1
    expected = {c: i for i, c in enumerate(CLASSES)}
    if found != expected:
        wrong = sorted(set(found.items()) ^ set(expected.items()))[:5]
        raise ManualDirError(f'ucf101: {_LISTS}/classInd.txt does not list the 101 UCF101 classes in order '
                             f'(first differences: {wrong})')
    return found


class Ucf101(common.ClassSplitsBuilder, skip_registration=True):
    """UCF101 action videos with their class; one config per official train/test split."""

    name = 'ucf101'
    CLASSES = CLASSES
    DESCRIPTION = __doc__
    HOMEPAGE = 'https://www.crcv.ucf.edu/data/UCF101.php'
    CITATION = ('@article{soomro2012ucf101, title={UCF101: A Dataset of 101 Human Actions Classes From Videos in '
                'The Wild}, author={Soomro, Khurram and Zamir, Amir Roshan and Shah, Mubarak}, '
                'journal={arXiv:1212.0402}, year={2012}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ucf101 reads a manual directory holding
  UCF-101/<Class>/v_<Class>_gXX_cYY.avi
  ucfTrainTestlist/classInd.txt, trainlist01.txt .. trainlist03.txt, testlist01.txt .. testlist03.txt
"""

    def _required(self):
        k = self._split_number
        return ('UCF-101/', f'{_LISTS}/classInd.txt', f'{_LISTS}/trainlist0{k}.txt', f'{_LISTS}/testlist0{k}.txt')

    def _prepare(self, manual_dir: str) -> None:
        self._classes = read_class_index(os.path.join(manual_dir, _LISTS, 'classInd.txt'))

    def _samples(self, split: str, manual_dir: str) -> Iterator[Sample | Skip]:
        rel = f'{_LISTS}/{split}list0{self._split_number}.txt'
        for line, text in common.read_lines(os.path.join(manual_dir, rel)):
            parts = text.split()
            if not parts:
                continue
            where = f'{rel}:{line}'
            if common.has_invalid_utf8(text):
                yield Skip(where, 'invalid UTF-8', common.printable(text))
                continue
            path = parts[0].replace('\\', '/')
            cls = path.split('/')[0] if '/' in path else ''
            if cls not in self._classes:
                yield Skip(f'UCF-101/{path}', 'unknown class', f'{where}: class {cls!r}')
                continue
            label = self._classes[cls]
            if len(parts) > 2 or (len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) - 1 != label)):
                yield Skip(where, 'malformed row', f'index {parts[1:]} for class {cls} ({label + 1})')
                continue
            video_id = os.path.splitext(os.path.basename(path))[0]
            full = f'UCF-101/{path}'
            exists = os.path.exists(os.path.join(manual_dir, full))
            yield Sample(key=path, id=video_id, video=full if exists else None, missing=full,
                         fields={'label': label})


common.register(Ucf101)
