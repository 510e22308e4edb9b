"""Measure the two stored forms a video dataset can take: the encoded file bytes (decoded at load time) against
frames decoded once at a fixed rate and the training resolution (raw uint8 or JPEG).

    python -m tvts.data.builders.stored_form [--seconds 30] [--fps 30] [--width 640 --height 360] [--crf 23]
                                             [--samples 20] [--frame_fps 2] [--size 224]

The source is a natural photo (matplotlib's ``grace_hopper.jpg``) panned and zoomed with sensor-like noise,
encoded with libx264 (``--crf``, keyframe every 5 s): closer to real footage than the synthetic corpus, whose
flat shapes compress 50-100x better. One load = the 12 frames of one 4-clip window (4 x 4 s clips + 3 x 1 s gaps
= 19 s; frames at the segment midpoints), resized to ``--size`` squared: from the bytes, a seek to the window's
keyframe and a sequential decode to its end; from stored frames, the 12 nearest stored frames (raw: a copy;
JPEG: 12 decodes). Results go to stdout as a table (docs/data.md quotes them).
"""
from __future__ import annotations

import argparse
import io
import os
import time

import av
import numpy as np

__all__ = ['make_source', 'measure', 'main']


def _photo() -> np.ndarray:
    import matplotlib
    from PIL import Image
    path = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    return np.asarray(Image.open(path).convert('RGB'))


def make_source(seconds: float, fps: int, width: int, height: int, crf: int, seed: int = 0) -> bytes:
    """An H.264 mp4 (bytes) of a slow pan/zoom over a photo with per-frame noise."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(_photo())
    pw, ph = photo.size
    n = int(seconds * fps)
    buf = io.BytesIO()
    with av.open(buf, 'w', format='mp4') as c:
        s = c.add_stream('libx264', rate=fps)
        s.width, s.height, s.pix_fmt = width, height, 'yuv420p'
        s.options = {'crf': str(crf), 'preset': 'veryfast', 'g': str(5 * fps), 'threads': '1'}
        for i in range(n):
            t = i / max(n - 1, 1)
            zoom = 0.55 + 0.35 * (0.5 + 0.5 * np.sin(2 * np.pi * t * 1.5))
            cw, ch = pw * zoom, pw * zoom * height / width
            ch = min(ch, ph)
            x0 = (pw - cw) * (0.5 + 0.5 * np.sin(2 * np.pi * t * 2.3))
            y0 = (ph - ch) * (0.5 + 0.5 * np.cos(2 * np.pi * t * 1.7))
            frame = np.asarray(photo.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)),
                               np.float32)
            frame += rng.normal(0, 3.0, frame.shape)
            f = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format='rgb24')
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _window_times(duration: float, rng: np.random.Generator) -> np.ndarray:
    span = 4 * 4 + 3
    start = rng.uniform(0, max(duration - span, 0))
    edges = np.linspace(start, start + span, 13)
    return 0.5 * (edges[:-1] + edges[1:])


def _frames_from_bytes(data: bytes, times: np.ndarray, size: int) -> np.ndarray:
    out = []
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.thread_type = 'AUTO'
        tb = float(s.time_base)
        c.seek(int(times[0] / tb), stream=s, backward=True, any_frame=False)
        k = 0
        for frame in c.decode(s):
            t = frame.pts * tb
            while k < len(times) and t + 0.5 / float(s.average_rate) >= times[k]:
                out.append(frame.reformat(width=size, height=size, format='rgb24').to_ndarray())
                k += 1
            if k == len(times):
                break
    return np.stack(out)


def measure(data: bytes, samples: int, frame_fps: float, size: int, seed: int = 0) -> dict[str, float]:
    from PIL import Image
    rng = np.random.default_rng(seed)
    res: dict[str, float] = {'bytes_size': len(data)}
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        duration = float(s.duration * s.time_base)
        res['duration'], res['fps'], res['width'], res['height'] = duration, float(s.average_rate), s.width, s.height
        t0 = time.perf_counter()
        n = sum(1 for _ in c.decode(s))
        res['decode_fps'] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(samples):
        _frames_from_bytes(data, _window_times(duration, rng), size)
    res['bytes_ms_per_sample'] = 1000 * (time.perf_counter() - t0) / samples

    # frames decoded once at frame_fps, resized to size x size: the build-time cost and the stored sizes
    t0 = time.perf_counter()
    frames, times = [], []
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        tb, next_t = float(s.time_base), 0.0
        for frame in c.decode(s):
            if frame.pts * tb + 1e-6 >= next_t:
                frames.append(frame.reformat(width=size, height=size, format='rgb24').to_ndarray())
                times.append(frame.pts * tb)
                next_t += 1.0 / frame_fps
    res['frames_decode_s'] = time.perf_counter() - t0
    frames_arr = np.stack(frames)
    res['raw_size'] = frames_arr.nbytes
    t0 = time.perf_counter()
    jpegs = []
    for f in frames:
        b = io.BytesIO()
        Image.fromarray(f).save(b, format='JPEG', quality=90)
        jpegs.append(b.getvalue())
    res['jpeg_encode_s'] = time.perf_counter() - t0
    res['jpeg_size'] = sum(len(j) for j in jpegs)
    times_arr = np.asarray(times)
    t0 = time.perf_counter()
    for _ in range(samples):
        idx = np.abs(times_arr[None] - _window_times(duration, rng)[:, None]).argmin(1)
        np.stack([frames_arr[i] for i in idx])
    res['raw_ms_per_sample'] = 1000 * (time.perf_counter() - t0) / samples
    t0 = time.perf_counter()
    for _ in range(samples):
        idx = np.abs(times_arr[None] - _window_times(duration, rng)[:, None]).argmin(1)
        np.stack([np.asarray(Image.open(io.BytesIO(jpegs[i])).convert('RGB')) for i in idx])
    res['jpeg_ms_per_sample'] = 1000 * (time.perf_counter() - t0) / samples
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog='python -m tvts.data.builders.stored_form', description=__doc__.split('\n')[0])
    p.add_argument('--seconds', type=float, default=30.0)
    p.add_argument('--fps', type=int, default=30)
    p.add_argument('--width', type=int, default=640)
    p.add_argument('--height', type=int, default=360)
    p.add_argument('--crf', type=int, default=23)
    p.add_argument('--samples', type=int, default=20)
    p.add_argument('--frame_fps', type=float, default=2.0)
    p.add_argument('--size', type=int, default=224)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = make_source(args.seconds, args.fps, args.width, args.height, args.crf)
    print(f'source: {args.width}x{args.height} {args.fps} fps {args.seconds:g} s, CRF {args.crf}: '
          f'{len(data) / 2**20:.2f} MiB (made in {time.perf_counter() - t0:.1f} s)')
    r = measure(data, args.samples, args.frame_fps, args.size)
    mib = 2**20
    print(f"full decode: {r['decode_fps']:.0f} frames/s ({r['decode_fps'] / r['fps']:.1f}x real time), one core")
    print(f"{'stored form':38s} {'size / video':>13s} {'per 30 s':>10s} {'build cost':>12s} {'ms / sample':>12s}")
    per30 = 30.0 / r['duration']
    print(f"{'encoded bytes (decode at load)':38s} {r['bytes_size'] / mib:10.2f} MiB "
          f"{r['bytes_size'] / mib * per30:7.2f} MiB"
          f" {'read only':>12s} {r['bytes_ms_per_sample']:12.1f}")
    print(f"{f'frames {args.frame_fps:g} fps {args.size}px raw uint8':38s} {r['raw_size'] / mib:10.2f} MiB "
          f"{r['raw_size'] / mib * per30:7.2f} MiB {r['frames_decode_s']:10.2f} s {r['raw_ms_per_sample']:12.2f}")
    print(f"{f'frames {args.frame_fps:g} fps {args.size}px JPEG q90':38s} {r['jpeg_size'] / mib:10.2f} MiB "
          f"{r['jpeg_size'] / mib * per30:7.2f} MiB {r['frames_decode_s'] + r['jpeg_encode_s']:10.2f} s "
          f"{r['jpeg_ms_per_sample']:12.2f}")
    return r


if __name__ == '__main__':
    main()
