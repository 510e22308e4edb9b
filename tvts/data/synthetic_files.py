"""Write the synthetic corpus as real files in the YT-Temporal and WebVid layouts.

Layout under ``root`` (for one split; ``subset`` defaults to ``synthetic_<split>``)::

    videos/<subset>/data/<id>.mp4                 transcribed videos (YT-Temporal)
    videos/<subset>/annotations/<id>.json         {"subtitles": [{"word", "time"}], "denoised":
                                                   [{"cleanasr", "start", "end"}], "info": {...}}
    videos/<page_dir>/<videoid>.mp4               captioned videos (WebVid), page_dir =
                                                   webvid_<split>_<NNNNN> (500 videos per folder)
    meta_data/yttemporal_<split>.csv              header ``Name``; rows ``<subset>/data/<id>.mp4``
    meta_data/webvid_<split>.csv                  header ``videoid,name,page_dir`` (name = caption)
    results_2M_<split>.csv                        WebVid's own CSV (``videoid,contentUrl,duration,page_dir,name``),
                                                   so ``python -m tvts.data.build webvid`` reads the same files
    meta_data/labels_<split>.json                 {video id: {label: int}} for both kinds

The CSVs are read back with ``tvts.data.metadata``, the videos with ``tvts.data.video_io.decode_mp4``.
Videos are encoded by ``tvts.data.video_io.encode_mp4`` (H.264, CRF 12, or MPEG-4 Part 2) at ``config.fps``
(8): frame ``i`` is ``SyntheticVideo.render(i / fps)`` and has pts ``i / fps``, for ``i < ceil(duration * fps)``.
At 32 px the codec (mostly 4:2:0 chroma at colour edges) leaves a mean absolute error of about 3 grey levels
against the renderer.

The annotation's ``subtitles`` are the raw ASR stream, including the non-speech tokens that
``transcripts.clean_subtitles`` drops; ``denoised`` holds one segment per spoken sentence (lead-in,
each clip, gap fillers, lead-out) whose words, concatenated, equal the cleaned subtitle words.
``info`` carries the duration, fps, frame count and, for checks, the ground truth: clip windows,
transcripts and events. ``transcripts.sample_window(subtitles, duration, start=clips[0][0],
clip_len=clip_seconds, cleaned=False)`` reproduces ``info['transcripts']``.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TextIO

import numpy as np

from tvts.data.metadata import WEBVID_COLUMNS, YTTEMPORAL_COLUMNS
from tvts.data.synthetic import COLOURS, MOTIONS, SHAPES, SyntheticConfig, SyntheticCorpus, SyntheticVideo
from tvts.data.video_io import default_codec, encode_mp4, encode_video, file_frame_times

__all__ = ['WEBVID_PAGE_SIZE', 'yttemporal_annotation', 'write_transcribed', 'webvid_page_dir', 'write_captioned',
           'write_split', 'progress_printer']

WEBVID_PAGE_SIZE = 500


def yttemporal_annotation(video: SyntheticVideo, fps: float, split: str = '', index: int = -1) -> dict[str, Any]:
    """The YT-Temporal json of a transcribed synthetic video."""
    return {
        'subtitles': video.subtitles,
        'denoised': [{'cleanasr': text, 'start': start, 'end': end} for text, start, end in video.sentences],
        'info': {
            'duration': video.duration,
            'fps': fps,
            'num_frames': len(file_frame_times(video.duration, fps)),
            'width': video.image_size,
            'height': video.image_size,
            'id': video.id,
            'split': split,
            'index': index,
            'source': 'tvts synthetic corpus',
            'clip_seconds': video.events[0].end - video.events[0].start,
            'clips': [list(c) for c in video.clips],
            'transcripts': list(video.transcripts),
            'events': [{'shape': SHAPES[e.shape], 'colour': COLOURS[e.colour], 'motion': MOTIONS[e.motion],
                        'start': e.start, 'end': e.end} for e in video.events],
        },
    }


def _render_file_frames(video: SyntheticVideo, fps: float) -> np.ndarray:
    return video.render(file_frame_times(video.duration, fps))


def write_transcribed(video: SyntheticVideo, root: str, subset: str, fps: float, codec: str | None = None,
                      split: str = '', index: int = -1) -> str:
    """Write one transcribed video + annotation; returns ``<subset>/data/<id>.mp4``."""
    rel = f'{subset}/data/{video.id}.mp4'
    encode_mp4(os.path.join(root, 'videos', rel), _render_file_frames(video, fps), fps, codec)
    ann_path = os.path.join(root, 'videos', subset, 'annotations', video.id + '.json')
    os.makedirs(os.path.dirname(ann_path), exist_ok=True)
    with open(ann_path, 'w') as f:
        json.dump(yttemporal_annotation(video, fps, split, index), f)
    return rel


def webvid_page_dir(split: str, index: int) -> str:
    return f'webvid_{split}_{index // WEBVID_PAGE_SIZE:05d}'


def write_captioned(video: SyntheticVideo, root: str, page_dir: str, fps: float, codec: str | None = None) -> str:
    """Write one captioned video to ``videos/<page_dir>/<id>.mp4``; returns the path."""
    path = os.path.join(root, 'videos', page_dir, video.id + '.mp4')
    encode_mp4(path, _render_file_frames(video, fps), fps, codec)
    return path


def _write_one(job: tuple) -> tuple[str, str, Any, dict[str, int]]:
    """Worker: (config, split, kind, index, root, subset, fps, codec) -> row for the metadata."""
    config, split, kind, index, root, subset, fps, codec = job
    video = SyntheticCorpus(config, split).video(index, kind)
    if kind == 'transcribed':
        rel = write_transcribed(video, root, subset, fps, codec, split, index)
        return kind, video.id, rel, video.labels
    page_dir = webvid_page_dir(split, index)
    write_captioned(video, root, page_dir, fps, codec)
    return kind, video.id, (video.caption, page_dir, video.duration), video.labels


def write_split(root: str, split: str, num_transcribed: int, num_captioned: int,
                config: SyntheticConfig = SyntheticConfig(), *, subset: str | None = None,
                fps: float | None = None, codec: str | None = None, workers: int = 1,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write transcribed samples ``0..num_transcribed-1`` and captioned samples
    ``0..num_captioned-1`` of ``split`` under ``root``. Returns a summary with counts and paths."""
    SyntheticCorpus(config, split)  # validates the split
    subset = subset or f'synthetic_{split}'
    fps = float(fps or config.fps)
    codec = codec or default_codec()
    jobs = [(config, split, 'transcribed', i, root, subset, fps, codec) for i in range(num_transcribed)]
    jobs += [(config, split, 'captioned', i, root, subset, fps, codec) for i in range(num_captioned)]
    rows = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for row in pool.map(_write_one, jobs, chunksize=8):
                rows.append(row)
                if progress:
                    progress(len(rows), len(jobs))
    else:
        for job in jobs:
            rows.append(_write_one(job))
            if progress:
                progress(len(rows), len(jobs))

    meta = os.path.join(root, 'meta_data')
    os.makedirs(meta, exist_ok=True)
    yt_csv = os.path.join(meta, f'yttemporal_{split}.csv')
    wv_csv = os.path.join(meta, f'webvid_{split}.csv')
    labels_path = os.path.join(meta, f'labels_{split}.json')
    with open(yt_csv, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(YTTEMPORAL_COLUMNS)
        w.writerows([[rel] for kind, _, rel, _ in rows if kind == 'transcribed'])
    captioned = [(vid, *row) for kind, vid, row, _ in rows if kind == 'captioned']
    with open(wv_csv, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(WEBVID_COLUMNS)
        w.writerows([[vid, cap, page] for vid, cap, page, _ in captioned])
    # WebVid's own CSV (what the `webvid` TFDS builder reads): videoid, contentUrl, duration (ISO 8601), page_dir, name
    webvid_csv = os.path.join(root, f'results_2M_{split}.csv')
    with open(webvid_csv, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['videoid', 'contentUrl', 'duration', 'page_dir', 'name'])
        w.writerows([[vid, f'synthetic://webvid/{vid}.mp4', f'PT{seconds:.3f}S', page, cap]
                     for vid, cap, page, seconds in captioned])
    with open(labels_path, 'w') as f:
        json.dump({vid: labels for _, vid, _, labels in rows}, f)
    return {'split': split, 'root': root, 'subset': subset, 'fps': fps, 'codec': codec,
            'num_transcribed': num_transcribed, 'num_captioned': num_captioned,
            'yttemporal_csv': yt_csv, 'webvid_csv': wv_csv, 'results_2M_csv': webvid_csv, 'labels': labels_path}


def progress_printer(label: str, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A `write_split` progress callback printing ``label: done/total videos (rate/s)`` on one updating line,
    at most twice a second (and always at the end)."""
    stream = stream or sys.stderr
    t0 = time.perf_counter()
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done == total or now - last > 0.5:
            last = now
            rate = done / max(now - t0, 1e-9)
            end = '\n' if done == total else ''
            print(f'\r{label}: {done}/{total} videos ({rate:.1f}/s)', end=end, file=stream, flush=True)
    return report


def write_video_file(video: SyntheticVideo, path: str, fps: float = 8.0, codec: str | None = None,
                     seconds: float | None = None) -> str:
    """Write ``video`` (its first ``seconds`` only, if given) to ``path`` in the container of its extension."""
    times = file_frame_times(video.duration if seconds is None else min(seconds, video.duration), fps)
    encode_video(path, video.render(times), fps, codec)
    return path


__all__ += ['write_video_file']
