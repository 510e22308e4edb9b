"""TFDS dataset builders (ArrayRecord) for the TVTSv2 pre-training and evaluation datasets.

Importing this package registers the builders under their TFDS names, so that
``tfds.builder(NAME, data_dir=OUT)`` / ``tfds.data_source(NAME, split=..., data_dir=OUT)`` find them:

    yttemporal, webvid            pre-training (transcribed / captioned videos)
    cc3m                          pre-training, TVTS v1's second stage (captioned images)
    msrvtt, didemo, lsmdc         text-video retrieval
    ucf101, hmdb51                action classification (configs split1, split2, split3)
    kinetics400                   action classification (train, val)
    ssv2                          Something-Something v2 (configs labels: classification; mc: multiple choice)

Each reads a manual directory in the dataset's distributed layout (see each module's docstring, and
docs/data.md); ``python -m tvts.data.build NAME --manual_dir DIR --data_dir OUT`` builds one.
"""
from __future__ import annotations

from tvts.data.builders.cc3m import Cc3m
from tvts.data.builders.common import BadSample, ManualDirError, VideoBuilder
from tvts.data.builders.didemo import Didemo
from tvts.data.builders.hmdb51 import Hmdb51
from tvts.data.builders.kinetics400 import Kinetics400
from tvts.data.builders.lsmdc import Lsmdc
from tvts.data.builders.msrvtt import Msrvtt
from tvts.data.builders.ssv2 import Ssv2
from tvts.data.builders.ucf101 import Ucf101
from tvts.data.builders.webvid import Webvid
from tvts.data.builders.yttemporal import Yttemporal

__all__ = ['BUILDERS', 'BadSample', 'ManualDirError', 'VideoBuilder', 'Yttemporal', 'Webvid', 'Msrvtt', 'Didemo',
           'Lsmdc', 'Ucf101', 'Hmdb51', 'Kinetics400', 'Ssv2', 'Cc3m']

BUILDERS: dict[str, type[VideoBuilder]] = {
    cls.name: cls for cls in (Yttemporal, Webvid, Cc3m, Msrvtt, Didemo, Lsmdc, Ucf101, Hmdb51, Kinetics400, Ssv2)}
