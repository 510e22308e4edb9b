"""Loader throughput: decode + sample + augment (+ tokenise) clips/s per worker process, against train step times.

    python -m tools.bench_loader [--file_size 336] [--fps 30] [--videos 6] [--samples 12] [--image_sizes 224,32]
        [--workers 1,2] [--steps tiny,B/16] [--b16_batch 2] [--out tools/benchmarks/loader_336px_30fps.json]

1. Files: the synthetic corpus written in the YT-Temporal and WebVid layouts (`tools.make_corpus`: H.264 mp4,
   square frames of ``--file_size`` px at ``--fps``, 19-29 s transcribed and 15-23 s captioned videos), read back
   into records with the fields of the TFDS builders (docs/data_loader.md).
2. Per worker: `tvts.data.loader.ExampleMaker` (what one grain worker runs per example: read, window, decode
   only the window, resize + crop to ``image_size``, tokenise) called in this process over ``--samples`` positions,
   12 frames per clip; clips/s per kind and image size. The synthetic renders are flat and compress to ~50 kbit/s;
   a textured file (a noisy panning texture, ~500 kbit/s, closer to real footage) is timed as well.
3. Scaling: a `FileSource` with 1, 2, ... grain worker processes (``--workers``), clips/s once started.
4. Train steps (``--steps``): tiny (configs/demo.py: 32 px, its batches) and B/16 (configs/pretrain.py from random
   weights, mask 0.5, 224 px, ``--b16_batch`` clips) timed with tools.bench_step, and the workers that keep each
   fed: clips consumed per second / clips per second of one worker, per source, summed over the iteration's two
   updates.

Writes JSON (``--out``) and prints a table. The machine's load average is recorded: CPU is shared.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tvts.data import loader as L
from tvts.data.metadata import read_webvid_csv, read_yttemporal_csv
from tvts.data.sampling import SamplingConfig
from tvts.data.transcripts import clean_subtitles

NUM_FRAMES = 12


def write_files(root: str, videos: int, file_size: int, fps: float) -> dict:
    from tvts.data.synthetic import SyntheticConfig
    from tvts.data.synthetic_files import write_split

    return write_split(root, 'val', videos, videos, SyntheticConfig(image_size=file_size), fps=fps,
                       workers=min(2, os.cpu_count() or 1))


def read_records(root: str) -> dict[str, list[dict]]:
    """The written corpus as the builders' records: yttemporal {id, video, format, duration, words, times}, webvid
    {id, video, format, duration, caption}."""
    videos = Path(root) / 'videos'
    transcribed = []
    for rel in read_yttemporal_csv(str(Path(root) / 'meta_data' / 'yttemporal_val.csv')):
        subset, _, name = rel.split('/')
        ann = json.loads((videos / subset / 'annotations' / (Path(name).stem + '.json')).read_text())
        words = clean_subtitles(ann['subtitles'])
        transcribed.append({'id': Path(name).stem, 'video': (videos / rel).read_bytes(), 'format': 'mp4',
                            'duration': np.float32(ann['info']['duration']),
                            'words': [w['word'] for w in words],
                            'times': np.array([w['time'] for w in words], np.float32)})
    captioned = []
    for row in read_webvid_csv(str(Path(root) / 'meta_data' / 'webvid_val.csv')):
        path = videos / row['page_dir'] / (row['videoid'] + '.mp4')
        import av

        with av.open(str(path)) as c:
            duration = float(c.duration / 1e6)
        captioned.append({'id': row['videoid'], 'video': path.read_bytes(), 'format': 'mp4',
                          'duration': np.float32(duration), 'caption': row['name']})
    return {'transcribed': transcribed, 'captioned': captioned}


def textured_records(file_size: int, fps: float, seconds: float = 24.0) -> dict[str, list[dict]]:
    """One video whose bitrate is closer to real footage than the flat synthetic renders: a random texture panning
    1 px per frame plus noise, H.264 CRF 23; as a transcribed record (a word every 0.3 s) and a captioned one."""
    from tvts.data.video_io import encode_mp4

    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    scene = rng.integers(0, 256, (file_size + n, file_size + n // 2 + 1, 3), dtype=np.uint8)
    frames = np.stack([scene[k:k + file_size, k // 2:k // 2 + file_size] for k in range(n)])
    frames = np.clip(frames.astype(np.int16) + rng.integers(-6, 7, frames.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'textured.mp4')
        encode_mp4(path, frames, fps, crf=23)
        data = Path(path).read_bytes()
    words = [(f'w{k}', 0.15 + 0.3 * k) for k in range(int(seconds / 0.3))]
    common = {'id': 'textured', 'video': data, 'format': 'mp4', 'duration': np.float32(seconds)}
    return {'transcribed': [{**common, 'words': [w for w, _ in words],
                             'times': np.array([t for _, t in words], np.float32)}],
            'captioned': [{**common, 'caption': 'a panning texture'}]}


def per_worker(kind: str, records: list[dict], image_size: int, samples: int) -> dict:
    """Clips/s of one worker: ExampleMaker in this process, over `samples` positions (after one warm-up)."""
    sampling = SamplingConfig(image_size=image_size, num_frames=NUM_FRAMES,
                              num_clips=4 if kind == 'transcribed' else 1)
    maker = L.ExampleMaker(kind, records, 0, samples, samples, 0, sampling, 77)
    maker(samples)  # warm-up: tokenizer, codec
    t0 = time.perf_counter()
    for slot in range(samples):
        out = maker(slot)
    dt = time.perf_counter() - t0
    assert out['video'].shape == (NUM_FRAMES, image_size, image_size, 3)
    return {'clips_per_s': samples / dt, 'ms_per_clip': 1000 * dt / samples, 'samples': samples}


def with_workers(kind: str, records: list[dict], image_size: int, workers: int, batches: int) -> dict:
    """Clips/s of a FileSource with `workers` grain processes, after its first batch (start-up excluded)."""
    sampling = SamplingConfig(image_size=image_size, num_frames=NUM_FRAMES,
                              num_clips=4 if kind == 'transcribed' else 1)
    batch = 2 * workers
    source = L.FileSource(kind, records, batch, 77, sampling, num_workers=workers, max_bad_fraction=1.0)
    try:
        t0 = time.perf_counter()
        source.batch(0)
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(1, batches + 1):
            source.batch(i)
        dt = time.perf_counter() - t0
    finally:
        source.close()
    return {'clips_per_s': batches * batch / dt, 'startup_s': started, 'batch': batch, 'batches': batches}


def step_times(variant: str, b16_batch: int, steps: int) -> dict:
    """Seconds per train step of each source at the recipe's batches (tiny) or `b16_batch` clips (others)."""
    import jax

    from tools.bench_step import InProcess, make_config

    out = {}
    for kind in ('transcribed', 'captioned'):
        overrides = {} if variant == 'tiny' else {f'data.{kind}_batch': b16_batch}
        config = make_config(variant, overrides, recipe=variant == 'tiny')
        t0 = time.perf_counter()
        run = InProcess(variant, overrides, 1, kind, recipe=variant == 'tiny', update=-1 if variant == 'tiny' else 0)
        compile_s = time.perf_counter() - t0
        times = [run.time(steps) for _ in range(3)]
        batch = config.data[f'{kind}_batch']
        out[kind] = {'step_s': statistics.median(times), 'all_s': times, 'batch': batch,
                     'image_size': run.batch['video'].shape[2], 'frames': run.batch['video'].shape[1],
                     'compile_and_warmup_s': compile_s, 'devices': jax.device_count()}
        del run
    return out


def workers_to_feed(steps: dict, rates: dict) -> float:
    """Worker processes that keep an iteration (one update per source) fed: sum over sources of clips / (clips/s
    of one worker), divided by the iteration's time."""
    iteration_s = sum(s['step_s'] for s in steps.values())
    decode_s = sum(s['batch'] / rates[kind] for kind, s in steps.items())
    return decode_s / iteration_s


def main(argv=None):
    p = argparse.ArgumentParser(prog=f'python -m {__spec__.name}', description=__doc__.split('\n')[0])
    p.add_argument('--root', default='', help='an existing corpus from an earlier run (default: a temp dir)')
    p.add_argument('--file_size', type=int, default=336, help='frame size of the files (px, square)')
    p.add_argument('--fps', type=float, default=30.0)
    p.add_argument('--videos', type=int, default=6, help='videos per kind')
    p.add_argument('--samples', type=int, default=12, help='clips timed per kind and image size')
    p.add_argument('--image_sizes', default='224,32')
    p.add_argument('--workers', default='1,2', help='grain worker counts to time (empty: none)')
    p.add_argument('--batches', type=int, default=4, help='batches timed per worker count')
    p.add_argument('--steps', default='tiny,B/16', help='variants whose train step is timed (empty: none)')
    p.add_argument('--step_count', type=int, default=3, help='steps per timing round')
    p.add_argument('--b16_batch', type=int, default=2)
    p.add_argument('--out', default='')
    args = p.parse_args(argv)
    out_path = args.out or f'tools/benchmarks/loader_{args.file_size}px_{args.fps:g}fps.json'

    result = {'config': vars(args), 'cpu_count': os.cpu_count(), 'load_average_start': os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        if not args.root:
            t0 = time.perf_counter()
            write_files(root, args.videos, args.file_size, args.fps)
            print(f'wrote {2 * args.videos} videos ({args.file_size} px, {args.fps:g} fps) in '
                  f'{time.perf_counter() - t0:.1f} s', flush=True)
        records = read_records(root)
    result['files'] = {kind: {'videos': len(r), 'mean_duration_s': float(np.mean([x['duration'] for x in r])),
                              'mean_bytes': float(np.mean([len(x['video']) for x in r]))}
                       for kind, r in records.items()}

    sizes = [int(s) for s in args.image_sizes.split(',') if s]
    result['per_worker'] = {}
    for size in sizes:
        for kind, recs in records.items():
            r = per_worker(kind, recs, size, args.samples)
            result['per_worker'][f'{kind}@{size}'] = r
            print(f'one worker, {kind:<11} {size:>3} px: {r["clips_per_s"]:6.2f} clips/s '
                  f'({r["ms_per_clip"]:.0f} ms/clip)', flush=True)

    textured = textured_records(args.file_size, args.fps)
    result['textured_file'] = {'bytes': len(textured['captioned'][0]['video']), 'seconds': 24.0,
                               'kbit_per_s': len(textured['captioned'][0]['video']) * 8 / 24.0 / 1000}
    for kind, recs in textured.items():
        r = per_worker(kind, recs, sizes[0], max(4, args.samples // 2))
        result['per_worker'][f'{kind}@{sizes[0]}/textured'] = r
        print(f'one worker, {kind:<11} {sizes[0]:>3} px, textured file '
              f'({result["textured_file"]["kbit_per_s"]:.0f} kbit/s): {r["clips_per_s"]:6.2f} clips/s '
              f'({r["ms_per_clip"]:.0f} ms/clip)', flush=True)

    result['with_workers'] = {}
    for w in [int(x) for x in args.workers.split(',') if x]:
        for kind, recs in records.items():
            r = with_workers(kind, recs, sizes[0], w, args.batches)
            result['with_workers'][f'{kind}@{sizes[0]}/{w}'] = r
            print(f'{w} grain workers, {kind:<11} {sizes[0]} px: {r["clips_per_s"]:6.2f} clips/s '
                  f'(start-up {r["startup_s"]:.1f} s)', flush=True)

    result['steps'], result['workers_to_feed'] = {}, {}
    for variant in [v for v in args.steps.split(',') if v]:
        steps = step_times(variant, args.b16_batch, args.step_count)
        size = next(iter(steps.values()))['image_size']
        key = size if size in sizes else sizes[0]
        rates = {kind: result['per_worker'][f'{kind}@{key}']['clips_per_s'] for kind in steps}
        need = workers_to_feed(steps, rates)
        result['steps'][variant] = steps
        result['workers_to_feed'][variant] = {'workers': need, 'whole_workers': math.ceil(need - 1e-9),
                                              'loader_image_size': key}
        for kind, s in steps.items():
            print(f'{variant} {kind} step: {1000 * s["step_s"]:.0f} ms for {s["batch"]} clips '
                  f'({s["batch"] / s["step_s"]:.1f} clips/s)', flush=True)
        print(f'{variant}: {need:.2f} workers keep it fed (loader at {key} px)', flush=True)

    result['load_average_end'] = os.getloadavg()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1, default=float))
    print(f'wrote {out_path}')
    return result


if __name__ == '__main__':
    main()
