"""Downstream benchmarks (tvts/evaluators/benchmarks.py, `python -m tvts.evaluate --backbone ... --task ...`):
every task runs end to end on the built fixtures with a tiny exported backbone and writes its JSON / Markdown /
plot with item counts and chance levels; planted embeddings give 100% on zero-shot, linear and v2v; the new
metric pieces (class-name phrasing, midpoint frames, multi-positive ranks with ties, v2v chance) match
hand-computed values; an unreadable video is counted as a miss."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tvts.evaluators import benchmarks as bm  # noqa: E402


# --------------------------------------------------------------------------------------------------------------
# Hand-computed pieces
# --------------------------------------------------------------------------------------------------------------
def test_class_name_phrasing_and_overrides(tmp_path):
    assert bm.phrase("ApplyEyeMakeup") == "apply eye makeup"
    assert bm.phrase("brush_hair") == "brush hair"
    assert bm.phrase("YoYo") == "yo yo"
    assert bm.phrase("HandstandPushups") == "handstand pushups"
    assert bm.phrase("TVShow") == "tv show"
    assert bm.phrase("fall_floor") == "fall floor"
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"YoYo": "playing with a yo-yo"}))
    assert bm.class_phrases(["YoYo", "Archery"], str(path)) == ["playing with a yo-yo", "archery"]
    with pytest.raises(ValueError):
        bm.class_phrases(["YoYo"], {"Nope": "x"})


def test_midpoint_indices():
    # 24 frames, 12 segments of 2: [0,1] -> 0, [2,3] -> 2, ...
    assert bm.midpoint_indices(24, 12).tolist() == list(range(0, 24, 2))
    # 10 frames, 4 segments: edges linspace(0, 10, 5).astype(int) = 0 2 5 7 10 -> (0+1)//2 (2+4)//2 (5+6)//2 (7+9)//2
    assert bm.midpoint_indices(10, 4).tolist() == [0, 3, 5, 8]
    # fewer frames than samples: repeats, within range
    assert bm.midpoint_indices(3, 4).tolist() == [0, 0, 1, 2]
    assert bm.midpoint_indices(1, 3).tolist() == [0, 0, 0]


def test_eval_resize_is_short_side_then_centre_crop():
    frame = np.zeros((60, 120, 3), np.uint8)
    frame[:, 40:80] = 255        # a centre band
    out = bm.eval_resize(frame, 32)   # short side 38 (round(32 * 268 / 224)), long 76, crop 32 at x = 22
    assert out.shape == (32, 32, 3)
    # the 40 px band scales to ~25 px of the 76 px row, centred: columns ~3..28 of the crop are white
    assert out[:, 8:24].min() == 255
    assert out[:, 0].max() < 128 and out[:, 31].max() < 128


def test_multi_positive_ranks_with_ties():
    sim = np.array([[0.9, 0.5, 0.5, 0.1],
                    [0.2, 0.7, 0.7, 0.7],
                    [0.3, 0.2, 0.1, 0.0],
                    [np.nan, 0.1, 0.2, 0.3]])
    pos = np.array([[False, True, False, False],   # best positive 0.5 tied with negative 0.5, below 0.9 -> 3
                    [False, True, True, False],    # best 0.7, one negative tied -> 2
                    [False, False, False, False],  # no positive -> N + 1
                    [True, False, False, False]])  # NaN positive -> N + 1
    assert bm.multi_target_ranks(sim, pos).tolist() == [3, 2, 5, 5]


def test_v2v_recall_and_chance_by_hand():
    # gallery labels 0 0 1 1 1, queries of class 0 and 1; embeddings on a circle
    g = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], float)
    q = np.array([[0, 1], [1, 0.05]], float)
    ranks = bm.v2v_ranks(q, [0, 1], g, [0, 0, 1, 1, 1])
    # query 0 (class 0) at (0,1): nearest class-0 is (0.9,0.1) (cos 0.11); class-1 items above it: (0,1), (0.1,0.9)
    # query 1 (class 1) at ~(1,0): the class-1 best is (0.1,0.9) cos ~0.16; class-0 items above: 2 -> rank 3
    assert ranks.tolist() == [3, 3]
    chance = bm.v2v_chance([0, 1], [0, 0, 1, 1, 1], ks=(1, 2))
    # R@1: (2/5 + 3/5) / 2 = 50; R@2: class 0: 1 - C(3,2)/C(5,2) = 0.7, class 1: 1 - C(2,2)/C(5,2) = 0.9 -> 80
    assert chance == pytest.approx({"R@1": 50.0, "R@2": 80.0})


def test_multiple_choice_by_hand():
    video = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [np.nan, np.nan]])
    options = np.array([[1, 0], [0, 1], [-1, 0],          # video 0, 3 options: answer 0 best -> right
                        [1, 0], [0, 1],                   # video 1, 2 options: answer 0 -> wrong
                        [1, 0], [0, 1],                   # video 2: both options tie at cos 0.71 -> wrong
                        [1, 0], [0, 1]], float)           # video 3 unreadable -> wrong
    res = bm.multiple_choice_result(video, options, [3, 2, 2, 2], np.array([0, 0, 1, 0]))
    assert res["metrics"]["accuracy"] == pytest.approx(25.0)
    assert res["chance"]["accuracy"] == pytest.approx(100 * (1 / 3 + 3 / 2) / 4)


def test_multi_view_sampling_by_hand():
    # 20 frames, 2 clips of 10, 2 frames each: edges 0 5 10 -> midpoints 2 7; second clip + 10
    assert bm.clip_midpoints(20, 2, 2).tolist() == [[2, 7], [12, 17]]
    assert bm.clip_midpoints(24, 12, 1).tolist() == [bm.midpoint_indices(24, 12).tolist()]
    frame = np.zeros((60, 120, 3), np.uint8)
    frame[:, :, 0] = np.arange(120, dtype=np.uint8)[None, :]    # red = column
    crops = bm.eval_crops(frame, 32, 3)     # resized to 38 x 76: crops at x = 0, 22, 44
    assert [c.shape for c in crops] == [(32, 32, 3)] * 3
    np.testing.assert_array_equal(crops[1], bm.eval_resize(frame, 32))
    lefts = [int(c[16, 0, 0]) for c in crops]
    assert lefts[0] < 3 and abs(lefts[1] - 22 * 120 / 76) < 3 and abs(lefts[2] - 44 * 120 / 76) < 3


def test_views_are_embedded_and_averaged(built):
    """clips x crops views: each view's frames are the one-view frames of its part of the video, and the video's
    embedding is the normalised mean of its normalised view embeddings."""
    from tvts.data.video_io import sample_frames
    from tvts.evaluators.classification import average_views

    data_dir, _ = built
    src, _ = bm.open_split(data_dir, "hmdb51", "split1", "test")
    data = bytes(src[0]["video"])
    views = bm.load_frames(data, 3, 16, clips=2, crops=3)
    assert views.shape == (6, 3, 16, 16, 3)
    n, _, frames = sample_frames(data, lambda n: np.arange(n), lambda f: f)
    idx = bm.clip_midpoints(n, 3, 2)
    for c in range(2):
        for k in range(3):
            want = np.stack([bm.eval_crops(frames[int(i)], 16, 3)[k] for i in idx[c]])
            np.testing.assert_array_equal(views[3 * c + k], want)

    class MeanColour:
        spec = type("S", (), {"num_frames": 3, "image_size": 16})()

        def encode_video(self, x):
            return x.reshape(x.shape[0], -1, 3).mean(axis=1).astype(np.float32) + 1.0

    emb, failed = bm.encode_videos(MeanColour(), lambda i: src[i], 1, batch=2, workers=1, clips=2, crops=3)
    per_view = views.reshape(6, -1, 3).mean(axis=1) + 1.0
    np.testing.assert_allclose(emb[0], average_views(per_view), rtol=1e-5)
    assert failed == []


def test_retrieval_result_with_several_captions_and_a_failed_video():
    video = np.eye(3)
    video[2] = np.nan                               # an unreadable video
    text = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 0, 1.0]])
    res = bm.retrieval_result(text, np.array([0, 0, 1, 2]), video)
    m = res["metrics"]
    assert m["t2v/R@1"] == pytest.approx(75.0)      # the text of the failed video misses
    assert m["t2v/MnR"] == pytest.approx((1 + 1 + 1 + 3) / 4)
    assert m["v2t/R@1"] == pytest.approx(100 * 2 / 3)
    assert res["chance"]["t2v/R@1"] == pytest.approx(100 / 3)
    assert res["chance"]["v2t/R@1"] == pytest.approx(100 / 4)


# --------------------------------------------------------------------------------------------------------------
# End to end on the fixtures
# --------------------------------------------------------------------------------------------------------------
DATASETS = ("msrvtt", "didemo", "lsmdc", "ucf101", "hmdb51", "kinetics400", "ssv2")
CONFIGS = {"ucf101": ["split1"], "hmdb51": ["split1"], "ssv2": ["mc"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tvts.data import build as build_cli
    from tvts.data import fixtures

    root = tmp_path_factory.mktemp("bench")
    data_dir = str(root / "tfds")
    truth = {}
    for name in DATASETS:
        manual = str(root / "manual" / name)
        truth[name] = fixtures.write(name, manual)
        for config in CONFIGS.get(name, [None]):
            build_cli.build(name, manual, data_dir, config, verbose=False)
    return data_dir, truth


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run's setup and parameters, exported as a backbone."""
    from tests.helpers import one_device_setup, tiny_config
    from tests.test_export import perturbed_params
    from tvts import export

    setup = one_device_setup(tiny_config())
    params = perturbed_params(setup)
    out = str(tmp_path_factory.mktemp("backbone"))
    export.export_run(setup, params, out, workdir="WORKDIR", step=1)
    return setup, params, out


@pytest.fixture(scope="module")
def backbone_dir(tiny_run):
    return tiny_run[2]


def test_workdir_mode_gives_the_backbones_figures(built, tiny_run, tmp_path):
    """`python -m tvts.evaluate --workdir RUN --task ...` (the checkpoint's Flax model, on the run's mesh of 8
    devices: batch 8) scores as the backbone
    exported from the same parameters (StableHLO)."""
    from tests.test_export import make_run_workdir
    from tvts import backbone as backbone_lib
    from tvts import evaluate
    from tvts.state import evaluation_encoders

    setup, params, directory = tiny_run
    workdir = str(tmp_path / "run")
    make_run_workdir(workdir, setup.config, setup, params)
    _, run_setup, step, state = evaluate.restore(None, workdir)
    assert step == 3
    encoders = evaluation_encoders(run_setup, state["params"])[0]
    data_dir, _ = built
    for task in ("msrvtt_retrieval", "hmdb51_zeroshot"):
        got = bm.report_benchmark(encoders, task, data_dir, str(tmp_path / "res"), bm.Options(batch=8), "x",
                                  workdir=workdir, step=step)
        want = bm.run_task(task, backbone_lib.load(directory), data_dir, bm.Options(batch=8))
        assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-6), task
    assert json.load(open(tmp_path / "res" / "hmdb51_zeroshot.json"))["workdir"] == workdir


def _check_outputs(out, task, res):
    for ext in ("json", "md", "png"):
        assert os.path.getsize(os.path.join(out, f"{task}.{ext}")) > 0
    data = json.loads(open(os.path.join(out, f"{task}.json")).read())
    assert data["task"] == task and data["num_failed"] == 0 and data["command"].startswith("python -m")
    assert data["num_items"] == res["num_items"]
    assert set(data["chance"]) >= {k for k in data["metrics"] if k in data["chance"]}
    return data


@pytest.mark.parametrize("task,n,chance", [
    ("msrvtt_retrieval", 2, {"t2v/R@1": 50.0, "v2t/R@1": 50.0, "t2v/MdR": 1.5}),
    ("didemo_retrieval", 2, {"t2v/R@1": 50.0, "v2t/R@5": 100.0}),
    ("lsmdc_retrieval", 2, {"t2v/R@1": 50.0, "v2t/R@1": 100 / 3}),  # clip 0 has two captions: 3 texts
])
def test_retrieval_tasks_end_to_end(built, backbone_dir, tmp_path, task, n, chance):
    from tvts import backbone as backbone_lib

    data_dir, truth = built
    out = str(tmp_path / "results")
    res = bm.main_benchmark(backbone_dir, task, data_dir, out, bm.Options(batch=4), "python -m tvts.evaluate x")
    assert res["num_items"] == n == len(truth[task.split("_")[0]]["test"])
    data = _check_outputs(out, task, res)
    for k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR"):
        assert f"t2v/{k}" in data["metrics"] and f"v2t/{k}" in data["metrics"]
    assert data["chance"] == pytest.approx({**data["chance"], **chance})
    assert data["spec"]["num_frames"] == backbone_lib.load(backbone_dir).spec.num_frames
    assert os.listdir(os.path.join(out, "cache"))  # features cached


@pytest.mark.parametrize("task", ["ucf101_zeroshot", "hmdb51_zeroshot", "ucf101_linear", "hmdb51_linear",
                                  "ucf101_v2v", "hmdb51_v2v"])
def test_classification_tasks_end_to_end(built, backbone_dir, tmp_path, task):
    data_dir, truth = built
    dataset = task.split("_")[0]
    out = str(tmp_path / "results")
    res = bm.main_benchmark(backbone_dir, task, data_dir, out, bm.Options(batch=4), "python -m tvts.evaluate x")
    n_test = len(truth[dataset]["split1"]["test"])
    assert res["num_items"] == n_test
    data = _check_outputs(out, task, res)
    classes = 101 if dataset == "ucf101" else 51
    if task.endswith("v2v"):
        assert set(data["metrics"]) == {"R@1", "R@5", "R@10", "R@20", "MdR", "MnR"}
        assert data["num_gallery"] == len(truth[dataset]["split1"]["train"])
        assert data["metrics"]["R@20"] == 100.0       # the gallery is smaller than 20
        assert data["chance"]["R@20"] == pytest.approx(100.0)
    else:
        assert set(data["metrics"]) == {"top1", "top5"}
        assert data["chance"]["top1"] == pytest.approx(100 / classes)
        assert data["chance"]["top5"] == pytest.approx(500 / classes)
        assert len(data["per_class"]) == len({v["label"] for v in truth[dataset]["split1"]["test"].values()})
    if task == "ucf101_zeroshot":
        assert data["templates"] == ["a person {}"]
        assert data["class_phrases"]["ApplyEyeMakeup"] == "apply eye makeup"


@pytest.mark.parametrize("task", ["kinetics400_zeroshot", "ssv2_mc"])   # *_linear: ucf101/hmdb51's path
def test_kinetics_and_ssv2_tasks_end_to_end(built, backbone_dir, tmp_path, task):
    data_dir, truth = built
    out = str(tmp_path / "results")
    res = bm.main_benchmark(backbone_dir, task, data_dir, out, bm.Options(batch=4, clips=2, crops=3),
                            "python -m tvts.evaluate x")
    data = _check_outputs(out, task, res)
    assert data["views"] == {"clips": 2, "crops": 3}
    if task == "ssv2_mc":
        mc = truth["ssv2"]["mc"]["validation"]
        assert data["split"] == "mc/validation" and res["num_items"] == len(mc)
        assert data["chance"]["accuracy"] == pytest.approx(100 * np.mean([1 / len(v["options"])
                                                                            for v in mc.values()]))
        assert set(data["metrics"]) == {"accuracy"}
    else:   # tested on val, as published; 400 classes
        assert data["split"] == "val" and res["num_items"] == len(truth["kinetics400"]["val"])
        assert data["chance"]["top1"] == pytest.approx(100 / 400)
        if task == "kinetics400_zeroshot":
            assert data["class_phrases"]["hurling (sport)"] == "hurling (sport)"


# --------------------------------------------------------------------------------------------------------------
# Planted embeddings: a fake Encoders whose video embedding encodes the class
# --------------------------------------------------------------------------------------------------------------
class Planted:
    """A fake Encoders: a text embedding is the one-hot of the class whose phrase it holds; video embeddings are
    planted by replacing encode_videos (one-hot of each item's true class, found from its file bytes)."""

    def __init__(self, spec, phrases):
        self.spec, self.phrases, self.dim = spec, phrases, len(phrases) + 1

    def encode_text(self, tokens):
        from tvts.data.tokenizer import get_tokenizer

        tok = get_tokenizer(self.spec.context_length)
        out = np.zeros((tokens.shape[0], self.dim), np.float32)
        for k, row in enumerate(tokens):
            text = tok.decode(row.tolist())
            # (CLIP's BPE decodes "(sport)" as "( sport )": compare without spaces)
            hits = [c for c, p in enumerate(self.phrases) if text.replace(" ", "") == f"a person {p}".replace(" ", "")]
            out[k, hits[0] if hits else -1] = 1.0
        return out


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51", "kinetics400"])
def test_planted_embeddings_score_100(built, monkeypatch, dataset):
    from types import SimpleNamespace

    data_dir, _ = built
    config = "split1" if dataset != "kinetics400" else None
    _, info = bm.open_split(data_dir, dataset, config, "train")
    phrases = bm.class_phrases(list(info.features["label"].names))
    label_of = {}
    for split in ("train", "val" if dataset == "kinetics400" else "test"):
        src, _ = bm.open_split(data_dir, dataset, config, split)
        for i in range(len(src)):
            label_of[bytes(src[i]["video"])] = int(src[i]["label"])
    enc = Planted(SimpleNamespace(num_frames=2, image_size=8, context_length=16), phrases)

    def encode_videos(encoders, examples, n, **kw):
        emb = np.zeros((n, encoders.dim), np.float32)
        for i in range(n):
            emb[i, label_of[bytes(examples(i)["video"])]] = 1.0
        return emb, []

    monkeypatch.setattr(bm, "encode_videos", encode_videos)
    kinds = ("zeroshot",) if dataset == "kinetics400" else ("zeroshot", "linear", "v2v")   # k400: 400-class probe
    for kind in kinds:
        res = bm.run_task(f"{dataset}_{kind}", enc, data_dir, bm.Options(batch=4))
        key = "R@1" if kind == "v2v" else "top1"
        assert res["metrics"][key] == 100.0, (kind, res["metrics"])
    if dataset == "hmdb51":  # TVTS v1's probe: a linear head trained by SGD (no l2 search)
        res = bm.run_task("hmdb51_linear", enc, data_dir, bm.Options(batch=4, probe="sgd"))
        assert res["metrics"]["top1"] == 100.0 and res["solver"] == "sgd" and res["l2"] is None
        assert res["num_failed"] == 0


def test_an_unreadable_video_is_counted_as_a_miss(built, monkeypatch):
    data_dir, _ = built
    real = bm.load_frames
    calls = []

    def flaky(data, t, s, clips=1, crops=1):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("corrupt")
        return real(data, t, s, clips, crops)

    monkeypatch.setattr(bm, "load_frames", flaky)

    class Const:
        spec = type("S", (), {"num_frames": 2, "image_size": 16, "context_length": 16})()

        def encode_video(self, frames):
            return np.ones((frames.shape[0], 3), np.float32)

        def encode_text(self, tokens):
            return np.ones((tokens.shape[0], 3), np.float32)

    res = bm.run_task("msrvtt_retrieval", Const(), data_dir, bm.Options(batch=4, workers=1))
    assert res["num_items"] == 2 and res["num_failed"] == 1 and "corrupt" in res["failed"][0][1]
    # the failed video's text ranks last (2), the other text ties with its video: pessimistic rank 1 (the failed
    # one is never retrieved)
    assert res["metrics"]["t2v/R@1"] == 50.0


def test_planted_multiple_choice_scores_100(built, monkeypatch):
    """A video embedding planted at its right option's text embedding answers every question."""
    from types import SimpleNamespace

    from tvts.data.tokenizer import get_tokenizer

    data_dir, truth = built
    def norm(text):  # CLIP's BPE lower-cases and re-spaces what it decodes
        return text.replace(" ", "").lower()

    texts = sorted({norm(o) for v in truth["ssv2"]["mc"]["validation"].values() for o in v["options"]})
    spec = SimpleNamespace(num_frames=2, image_size=8, context_length=32)
    tok = get_tokenizer(spec.context_length)

    class Texts:
        def __init__(self):
            self.spec = spec

        def encode_text(self, tokens):
            decoded = [norm(tok.decode(r.tolist())) for r in tokens]   # '' for a batch's padding rows
            return np.eye(len(texts) + 1, dtype=np.float32)[[texts.index(t) if t else -1 for t in decoded]]

    src, _ = bm.open_split(data_dir, "ssv2", "mc", "validation")
    right = {bytes(src[i]["video"]): texts.index(norm(bm._s(src[i]["options"][int(src[i]["answer"])])))
             for i in range(len(src))}
    monkeypatch.setattr(bm, "encode_videos", lambda enc, examples, n, **kw: (
        np.eye(len(texts) + 1, dtype=np.float32)[[right[bytes(examples(i)["video"])] for i in range(n)]], []))
    res = bm.run_task("ssv2_mc", Texts(), data_dir, bm.Options(batch=4))
    assert res["metrics"]["accuracy"] == 100.0 and res["chance"]["accuracy"] < 50


def test_benchmark_types_are_registered_evaluators(built, backbone_dir):
    import ml_collections

    from tvts import backbone as backbone_lib
    from tvts.evaluators.registry import EVALUATORS, make_evaluators

    assert {"msrvtt_retrieval", "ucf101_zeroshot", "hmdb51_linear", "ucf101_v2v"} <= set(EVALUATORS)
    data_dir, _ = built
    bb = backbone_lib.load(backbone_dir)
    cfg = ml_collections.ConfigDict({"zs": dict(type="hmdb51_zeroshot", every=0, data_dir=data_dir, split=1,
                                                batch=4)})
    (ev,) = make_evaluators(cfg, None, bb.spec)
    got = ev.run(bb, final=True, references={"again": bb})
    assert got["zs/num_items"] == 3 and got["zs/chance/top1"] == pytest.approx(100 / 51)
    assert got["zs/top1"] == got["zs/again/top1"]


def test_topk_with_ties_and_an_unreadable_row():
    logits = np.array([[3.0, 1.0, 2.0],
                       [2.0, 2.0, 0.0],          # true class 0 tied with class 1: not top-1, top-2
                       [np.nan, np.nan, np.nan]])  # unreadable video
    metrics, rank = bm.topk_from_logits(logits, np.array([0, 0, 1]), ks=(1, 2))
    assert rank.tolist() == [1, 2, 4]
    assert metrics == pytest.approx({"top1": 100 / 3, "top2": 200 / 3})


def test_features_are_cached_per_backbone_and_split(built, backbone_dir, tmp_path, monkeypatch):
    from tvts import backbone as backbone_lib

    data_dir, _ = built
    bb = backbone_lib.load(backbone_dir)
    opts = bm.Options(batch=4, cache_dir=str(tmp_path / "cache"))
    first = bm.run_task("hmdb51_linear", bb, data_dir, opts)
    assert len(os.listdir(tmp_path / "cache")) == 2          # train and test of split1
    monkeypatch.setattr(bm, "load_frames", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = bm.run_task("hmdb51_v2v", bb, data_dir, opts)     # same splits: read from the cache
    assert again["num_failed"] == 0 and first["num_items"] == again["num_items"]
    ens = bm.run_task("hmdb51_zeroshot", bb, data_dir, bm.Options(batch=4, cache_dir=opts.cache_dir,
                                                                  templates="ensemble"))
    assert ens["templates"] == list(bm.ENSEMBLE_TEMPLATES) and ens["num_failed"] == 0
