"""Video files: encode frames to mp4 and decode them back (PyAV), with the frame-time convention of the corpus.

A file at ``fps`` holds frame ``i`` at pts ``i / fps`` for ``i < ceil(duration * fps)``. Files are H.264
(libx264, yuv420p, CRF 12) by default, MPEG-4 Part 2 when asked or when libx264 is missing.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable

import av
import numpy as np

__all__ = ['default_codec', 'file_frame_times', 'encode_mp4', 'decode_mp4', 'CONTAINER_CODECS', 'encode_video',
           'count_frames', 'decode_frames', 'sample_frames']


def default_codec() -> str:
    return 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'


def file_frame_times(duration: float, fps: float) -> np.ndarray:
    """Times of the frames stored in a file: ``i / fps`` for ``i < ceil(duration * fps)``."""
    n = int(np.ceil(duration * fps - 1e-9))  # float error in duration * fps (32.000000001) adds no frame
    return np.arange(n, dtype=np.float64) / fps


def encode_mp4(path: str, frames: np.ndarray, fps: float, codec: str | None = None, crf: int = 12) -> None:
    """Write uint8 frames [N, H, W, 3] (H, W even) to an mp4 at constant ``fps``."""
    _encode(path, frames, fps, codec or default_codec(), crf)


def decode_mp4(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a video file: uint8 [N, H, W, 3] and their times [N] (seconds)."""
    frames, times = [], []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format='rgb24'))
            times.append(float(frame.pts * frame.time_base) if frame.pts is not None else np.nan)
    return np.stack(frames), np.asarray(times)


CONTAINER_CODECS = {'.avi': 'mpeg4', '.webm': 'libvpx', '.mkv': None, '.mov': None, '.mp4': None, '.m4v': None}


def encode_video(path: str, frames: np.ndarray, fps: float, codec: str | None = None) -> None:
    """Write uint8 frames [N, H, W, 3] (H, W even) at constant ``fps`` to the container its extension names:
    .mp4 / .mov / .m4v / .mkv hold H.264 (``default_codec()``), .avi MPEG-4 Part 2, .webm VP8."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in CONTAINER_CODECS:
        raise ValueError(f'{path}: no codec chosen for {ext!r} files (known: {sorted(CONTAINER_CODECS)})')
    _encode(path, frames, fps, codec or CONTAINER_CODECS[ext] or default_codec())


def _encode(path: str, frames: np.ndarray, fps: float, codec: str, crf: int = 12) -> None:
    frames = np.asarray(frames, np.uint8)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f'{path}: frame size {h}x{w} must be even for yuv420p')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    ext = os.path.splitext(path)[1]
    tmp = path + '.tmp' + ext
    with av.open(tmp, 'w') as container:
        rate = int(fps) if float(fps).is_integer() else fps
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        if codec == 'libx264':
            stream.options = {'crf': str(crf), 'preset': 'veryfast', 'threads': '1'}
        elif codec == 'libvpx':
            stream.options = {'threads': '1', 'deadline': 'realtime', 'cpu-used': '8'}
            stream.bit_rate = 1_000_000
        else:
            stream.bit_rate = 2_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)  # a crashed run never leaves a truncated file under the final name


def _open(source):
    """A path, or a file's bytes (as datasets store them)."""
    return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)


def count_frames(source) -> int:
    """Frames of the first video stream of a path or bytes: the container's count, else its packets (demuxed,
    not decoded)."""
    with _open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def decode_frames(source, indices, convert: Callable[[np.ndarray], np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
    """({index: convert(rgb frame)} for the wanted frame `indices`, frames decoded). Decodes from the start up to the
    last index wanted, converting only the wanted frames."""
    wanted = {int(i) for i in np.ravel(indices)}
    last = max(wanted)
    out: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            decoded = i + 1
            if i in wanted:
                out[i] = convert(frame.to_ndarray(format="rgb24"))
            if i >= last:
                break
    return out, decoded


def sample_frames(source, choose: Callable[[int], np.ndarray], convert: Callable[[np.ndarray], np.ndarray]
                  ) -> tuple[int, np.ndarray, dict[int, np.ndarray]]:
    """(frame count, chosen indices, {index: converted frame}) for the indices `choose(frame count)` picks. A
    container count above the frames that actually decode is corrected once: the indices are chosen again over
    the frames decoded. Raises on an unreadable file."""
    n = count_frames(source)
    for _ in range(2):
        if n <= 0:
            raise ValueError("no decodable video frames")
        chosen = choose(n)
        frames, decoded = decode_frames(source, chosen, convert)
        if len(frames) == len({int(i) for i in np.ravel(chosen)}):
            return n, chosen, frames
        n = decoded
    raise ValueError(f"the frame count changed between two decodes ({n})")
