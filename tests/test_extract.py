"""Feature extraction (tvts.extract): a folder's readable videos are embedded exactly as the backbone embeds frames
sampled the published way (np.linspace(0, n - 1, T).astype(int), resized to the spec); per-clip and per-frame
embeddings; unreadable files and missing paths are listed in `failed` with a reason and never stop the run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers import one_device_setup, tiny_config
from tvts import backbone as backbone_lib
from tvts import export, extract
from tvts.data.video_io import decode_mp4, encode_mp4
from tvts.state import random_params


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """The tiny model's backbone (random init; 4 frames of 32 px), CPU programs only."""
    setup = one_device_setup(tiny_config())
    out = str(tmp_path_factory.mktemp("backbone"))
    export.export_run(setup, random_params(setup), out, platforms=("cpu",))
    return out


def moving_square(n, h, w, seed):
    """n frames [h, w, 3]: a bright square crossing a noisy background (so frames and videos differ)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 80, (n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        x = int(i * (w - 12) / max(n - 1, 1))
        video[i, h // 3:h // 3 + 12, x:x + 12] = (255, 200 - 10 * seed, 40)
    return video


def reference(path, indices, size, resize="stretch"):
    """Frames `indices` of a file decoded independently of tvts.extract (all frames, tvts.data.video_io)."""
    frames, _ = decode_mp4(path)
    idx = np.asarray(indices)
    return np.stack([extract.resize_frame(frames[i], size, resize) for i in idx.ravel()]).reshape(
        *idx.shape, size, size, 3)


def test_extraction_over_a_folder_with_good_corrupt_and_empty_files(backbone_dir, tmp_path):
    root = tmp_path / "videos"
    encode_mp4(str(root / "a.mp4"), moving_square(20, 48, 64, 0), fps=8)
    encode_mp4(str(root / "sub" / "b.mov.tmp.mp4"), moving_square(9, 40, 40, 1), fps=8)
    os.replace(root / "sub" / "b.mov.tmp.mp4", root / "sub" / "b.MOV")  # extensions match in any case
    encode_mp4(str(root / "sub" / "c.mp4"), moving_square(16, 32, 32, 2), fps=8)
    data = (root / "sub" / "c.mp4").read_bytes()
    (root / "sub" / "c.mp4").write_bytes(data[:len(data) // 2])  # truncated: its index (moov) is lost
    (root / "zero.mkv").write_bytes(b"")
    (root / "notes.txt").write_text("not a video")
    missing = str(tmp_path / "nowhere")
    out = str(tmp_path / "features" / "f.npz")

    extract.main(["--backbone", backbone_dir, "--out", out, "--clips", "2", "--per_frame", "--batch_size", "3",
                  "--workers", "2", "--quiet", str(root), missing])
    f = np.load(out, allow_pickle=False)
    assert list(f["paths"]) == ["a.mp4", os.path.join("sub", "b.MOV")]
    assert list(f["roots"]) == [str(root)] * 2
    failed = dict(f["failed"].tolist())
    assert sorted(failed) == sorted([missing, os.path.join("sub", "c.mp4"), "zero.mkv"])
    assert failed[missing] == "no such file or directory"
    assert all(len(reason) > 10 for reason in failed.values()), failed
    meta = json.loads(str(f["meta"]))
    assert meta["videos"] == 2 and meta["failed"] == 3 and meta["clips_encoded"] == 2 * 3
    assert meta["frames_encoded"] == 2 * 2 * 4

    bb = backbone_lib.load(backbone_dir)
    assert list(f["num_frames"]) == [20, 9]
    np.testing.assert_array_equal(f["frame_indices"], [np.linspace(0, 19, 4).astype(int),
                                                       np.linspace(0, 8, 4).astype(int)])
    np.testing.assert_array_equal(f["clip_frame_indices"][0], [[0, 3, 6, 9], [10, 13, 16, 19]])
    files = [str(root / "a.mp4"), str(root / "sub" / "b.MOV")]
    whole = np.stack([reference(p, i, 32) for p, i in zip(files, f["frame_indices"])])
    clips = np.stack([reference(p, i, 32) for p, i in zip(files, f["clip_frame_indices"])])
    assert f["embeddings"].shape == (2, 64) and f["embeddings"].dtype == np.float32
    np.testing.assert_allclose(f["embeddings"], bb.encode_video(whole), rtol=1e-5, atol=1e-5)
    assert np.abs(f["embeddings"][0] - f["embeddings"][1]).max() > 1e-3
    assert f["clip_embeddings"].shape == (2, 2, 64)
    np.testing.assert_allclose(f["clip_embeddings"], bb.encode_video(clips.reshape(4, 4, 32, 32, 3)).reshape(
        2, 2, 64), rtol=1e-5, atol=1e-5)
    assert f["frame_embeddings"].shape == (2, 8, 64)
    np.testing.assert_allclose(f["frame_embeddings"], bb.encode_frames(clips.reshape(16, 32, 32, 3)).reshape(
        2, 8, 64), rtol=1e-5, atol=1e-5)


def test_a_file_argument_is_recorded_as_given_and_crop_resizes(backbone_dir, tmp_path):
    path = str(tmp_path / "wide.mp4")
    encode_mp4(path, moving_square(6, 32, 64, 3), fps=8)
    arrays = extract.extract(backbone_lib.load(backbone_dir), [path], resize="crop", progress=False)
    assert list(arrays["paths"]) == [path] and list(arrays["roots"]) == [""] and arrays["failed"].shape == (0, 2)
    assert set(arrays) == {"paths", "roots", "embeddings", "num_frames", "frame_indices", "failed", "meta"}
    want = backbone_lib.load(backbone_dir).encode_video(reference(path, arrays["frame_indices"], 32, "crop"))
    np.testing.assert_allclose(arrays["embeddings"], want, rtol=1e-5, atol=1e-5)


def test_sampling_and_resizing():
    for n in (1, 5, 12, 20, 301):
        np.testing.assert_array_equal(extract.sample_indices(n, 12), np.linspace(0, n - 1, 12).astype(int))
    np.testing.assert_array_equal(extract.clip_indices(20, 4, 2), [[0, 3, 6, 9], [10, 13, 16, 19]])
    np.testing.assert_array_equal(extract.clip_indices(3, 2, 3), [[0, 0], [1, 1], [2, 2]])
    assert extract.clip_indices(100, 12, 4).max() == 99 and (np.diff(extract.clip_indices(100, 12, 4).ravel()) >= 0
                                                               ).all()
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 16:64] = 255  # a white band wider than the centre square of a 2:1 frame
    assert extract.resize_frame(image, 16, "stretch").shape == (16, 16, 3)
    crop = extract.resize_frame(image, 16, "crop")
    assert crop.shape == (16, 16, 3) and crop.min() == 255  # short side to 16, then the centre square: white
    with pytest.raises(ValueError, match="resize"):
        extract.resize_frame(image, 16, "squash")


def test_per_frame_in_context_are_the_clip_pass_tokens_and_see_the_other_frames(backbone_dir, tmp_path):
    """--per_frame context: each frame's vector is the mean of its patch tokens from the whole-clip pass, so changing
    one frame moves every frame's vector; --per_frame alone moves only the changed frame's."""
    path = str(tmp_path / "v.mp4")
    encode_mp4(path, moving_square(12, 32, 32, 4), fps=8)
    bb = backbone_lib.load(backbone_dir)
    arrays = extract.extract(bb, [path], per_frame="context", progress=False)
    frames = reference(path, arrays["frame_indices"], 32)
    tokens = bb.video_tokens(frames)[:, 1:].reshape(1, 4, 16, 64)  # tiny: 4 frames of 4 x 4 patches
    assert arrays["frame_embeddings"].shape == (1, 4, 64)
    np.testing.assert_allclose(arrays["frame_embeddings"], tokens.mean(2), rtol=1e-5, atol=1e-5)
    assert json.loads(str(arrays["meta"]))["per_frame"] == "context"

    changed = frames.copy()
    changed[0, 0] = 255 - changed[0, 0]
    moved = np.abs(bb.frames_in_context(changed) - bb.frames_in_context(frames)).max(-1)[0]
    assert (moved > 1e-4).all(), moved
    alone = np.abs(bb.encode_frames(changed[0]) - bb.encode_frames(frames[0])).max(-1)
    assert alone[0] > 1e-4 and (alone[1:] < 1e-6).all(), alone
    with pytest.raises(ValueError, match="per_frame='both'"):
        extract.extract(bb, [path], per_frame="both", progress=False)
