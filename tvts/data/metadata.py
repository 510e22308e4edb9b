"""Dataset metadata readers: the CSV files that list a corpus's videos.

- YT-Temporal: ``meta_data/yttemporal_<split>.csv``, header ``Name``; each row a video path relative to
  ``videos/`` (``<subset>/data/<id>.mp4``), its annotation at ``videos/<subset>/annotations/<id>.json``.
- WebVid: ``meta_data/webvid_<split>.csv``, header ``videoid,name,page_dir`` (``name`` is the caption); the
  video is ``videos/<page_dir>/<videoid>.mp4``.
"""
from __future__ import annotations

import csv

__all__ = ['YTTEMPORAL_COLUMNS', 'WEBVID_COLUMNS', 'read_yttemporal_csv', 'read_webvid_csv']

YTTEMPORAL_COLUMNS = ('Name',)
WEBVID_COLUMNS = ('videoid', 'name', 'page_dir')


def read_yttemporal_csv(path: str) -> list[str]:
    """The video paths (relative to ``videos/``) of a YT-Temporal metadata file."""
    with open(path, newline='') as f:
        return [row['Name'] for row in csv.DictReader(f)]


def read_webvid_csv(path: str) -> list[dict[str, str]]:
    """The rows of a WebVid metadata file: {'videoid', 'name' (the caption), 'page_dir'}."""
    with open(path, newline='') as f:
        return list(csv.DictReader(f))
