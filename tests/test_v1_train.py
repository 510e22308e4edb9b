"""TVTS v1 through the shared trainer, config, data path and export: its config is validated, the synthetic corpus is
tokenised with WordPiece (against a hand tokenisation), a tiny v1 run trains sharded on the 8 simulated devices of
conftest.py and resumes bit for bit, the step's mask is drawn per tube, and the exported backbone gives the Flax
model's embeddings and tokenises with the vocab.txt it ships.

One module fixture trains (and resumes) once; the other tests read it or compile nothing."""
from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from tvts import backbone as backbone_lib
from tvts import config as config_lib
from tvts import export, train
from tvts.checkpoint import Checkpointer, with_shardings
from tvts.config import apply_overrides, base_config, parse_arg
from tvts.data.pipeline import make_sources, synthetic_config
from tvts.data.synthetic import SyntheticCorpus, corpus_words, write_wordpiece_vocab
from tvts.data.tokenizer import tokenizer_for_spec
from tvts.evaluators.benchmarks import encode_texts
from tvts.models.inputs import normalize
from tvts.models.tvts_v1 import TVTSv1
from tvts.state import make_setup, optimizer_rules

CONTEXT = 16


def v1_config(vocab_path: str = "", **overrides):
    """`v1-tiny` as helpers.tiny_config makes `tiny` (4 frames, i.e. 2 tubes), with WordPiece from `vocab_path`, one
    parameter group and no weight decay, as v1 publishes."""
    return tiny_config(variant="v1-tiny", **{"data.context_length": CONTEXT, "data.tokenizer": "wordpiece",
                                             "data.vocab_path": vocab_path, "optim.groups": {"new": 1e-3},
                                             "optim.weight_decay": 0.0, **overrides})


def reference_wordpiece(text: str, vocab: dict[str, int], length: int) -> list[int]:
    """By hand: lowercase, split on whitespace and around punctuation, one vocabulary id per word (every corpus word
    is a whole entry), [CLS] ... [SEP] cut to `length`, [PAD]-padded."""
    ids = [vocab[w] for w in re.findall(r"\w+|[^\w\s]", text.lower())][:length - 2]
    row = [vocab["[CLS]"], *ids, vocab["[SEP]"]]
    return row + [vocab["[PAD]"]] * (length - len(row))


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_wordpiece_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


# ------------------------------------------------------------------------------------------ config (no compilation)
def test_v1_config_is_validated_and_takes_the_published_v1_rules(vocab):
    config = v1_config(vocab)
    config_lib.validate(config, num_devices=8)
    # per-source mask ratios: the variant's per-tube ratio for transcribed videos, 0 for captioned ones (published)
    assert config_lib.mask_ratio(config, "transcribed") == 0.5 and config_lib.mask_ratio(config, "captioned") == 0.0
    v2 = apply_overrides(base_config(parse_arg(None, variant="tiny", data="synthetic")), {"init": "random"})
    assert config_lib.mask_ratio(v2, "captioned") == config_lib.mask_ratio(v2, "transcribed") == 0.5
    assert optimizer_rules(config) == [(r"^(video|text|sort_head)/", "new")]  # everything at the one published lr
    bad = {
        "model.num_frames": (3, "whole tubelets"), "model.text_num_frozen": (0, "trained whole"),
        "data.context_length": (77, "exceeds the text tower's 50"), "eval_references": (("no_time_attn",), "none to"),
        "data.tokenizer": ("clip_bpe", "does not match"), "data.vocab_path": ("/nonexistent/vocab.txt", "not exist"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            config_lib.validate(apply_overrides(v1_config(vocab), {field: value}))
    config_lib.validate(apply_overrides(v1_config(vocab), {"model.num_frames": 1}))  # an image: one tube
    with pytest.raises(ValueError, match="temporal embedding holds 16"):
        config_lib.validate(apply_overrides(v1_config(vocab), {"model.num_frames": 18}))
    with pytest.raises(ValueError, match="v1_init"):
        config_lib.validate(apply_overrides(v1_config(vocab), {"model.variant": "v1-B/16", "init": "",
                                                                "data.context_length": 50}))


def test_the_synthetic_corpus_is_tokenised_with_wordpiece_as_by_hand(vocab):
    ids = {t: i for i, t in enumerate(open(vocab, encoding="utf-8").read().split("\n")) if t}
    assert set(corpus_words()) <= set(ids) and len(ids) <= 1024  # fits v1-tiny's 1024 rows
    config = v1_config(vocab, **{"data.sources": ("transcribed", "captioned")})
    sources = make_sources(config.data, 32, 4)
    corpus = SyntheticCorpus(synthetic_config(config.data, 32, 4), split="train")
    transcribed, captioned = sources["transcribed"].batch(0), sources["captioned"].batch(0)
    raw_t = corpus.transcribed_batch(np.arange(8), train=True, render=False)
    raw_c = corpus.captioned_batch(np.arange(8), train=True, render=False)
    want_t = [[reference_wordpiece(t, ids, CONTEXT) for t in video] for video in raw_t["transcripts"]]
    want_c = [[reference_wordpiece(c, ids, CONTEXT)] for c in raw_c["captions"]]
    np.testing.assert_array_equal(transcribed["texts"], np.asarray(want_t, np.int32))
    np.testing.assert_array_equal(captioned["texts"], np.asarray(want_c, np.int32))
    assert ids["[UNK]"] not in transcribed["texts"] and ids["[UNK]"] not in captioned["texts"]


# ------------------------------------------------------------------------------------------ training, resume, export
@pytest.fixture(scope="module")
def trained(tmp_path_factory, vocab):
    """A 4-iteration v1-tiny run on the 8 simulated devices, parameters split over 'fsdp' (checkpoints at 2 and 4), on
    transcribed videos and captioned images (one frame, repeated to one tube: TVTS v1's CC3M), and the same run
    resumed from its checkpoint at iteration 2 in another workdir."""
    config = v1_config(vocab, **{"mesh.data": 1, "mesh.fsdp": 8, "data.sources": ("transcribed", "images"),
                                 "data.images_batch": 8})
    root = tmp_path_factory.mktemp("v1_run")
    straight, resumed = root / "straight", root / "resumed"
    train.train_and_evaluate(config, str(straight))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    train.train_and_evaluate(config, str(resumed))
    setup = make_setup(config)  # the trainer's plan: 8 devices, parameters split over 'fsdp'
    states = {(w.name, i): restore(setup, w, i) for w, i in ((straight, 2), (straight, 4), (resumed, 4))}
    return config, setup, straight, resumed, states


def restore(setup, workdir, iteration):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    state, _ = ckpt.restore(iteration, with_shardings(setup.abstract_state, setup.state_sharding))
    ckpt.close()
    return jax.device_get(state)


@pytest.mark.slow
def test_a_tiny_v1_run_trains_sharded_and_resumes_bit_for_bit(trained):
    config, setup, straight, resumed, states = trained
    assert setup.mesh.devices.size == 8 and isinstance(setup.model, TVTSv1)
    assert not setup.params_sharding["video"]["blocks"]["mlp"]["fc"]["kernel"].is_fully_replicated
    a, b = states["straight", 4], states["resumed", 4]
    assert int(a["step"]) == 8 and int(a["nonfinite_count"]) == 0  # two sources: two updates per iteration
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(b), jax.tree.leaves(a)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    moved = [np.abs(x - y).max() for x, y in zip(jax.tree.leaves(a["params"]),
                                                 jax.tree.leaves(states["straight", 2]["params"]))]
    assert min(moved) > 0  # every parameter trains: one group, no frozen DistilBERT block
    rows = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r[f"{k}/loss"]) for r in rows for k in ("transcribed", "images"))
    resumed_rows = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    for k in ("transcribed/loss", "images/loss"):
        assert [r[k] for r in resumed_rows] == [r[k] for r in rows[2:]]

    # the step's mask: per tube, [B, tubes, n_keep], each tube its own positions (tubes = frames / 2)
    keep = np.asarray(setup.random_tube_keep(jax.random.key(3), (8, 4, 32, 32, 3), setup.mask_ratios["transcribed"]))
    assert keep.shape == (8, 2, 8) and setup.mask_ratios == {"transcribed": 0.5, "images": 0.0}
    assert all(len(np.unique(k)) == 8 for video in keep for k in video)
    assert sum(set(video[0]) != set(video[1]) for video in keep) == 8


@pytest.mark.slow
def test_an_exported_v1_backbone_gives_the_flax_embeddings_and_tokenizes_with_its_vocab(trained, tmp_path, vocab):
    _, setup, _, _, states = trained
    params = states["straight", 4]["params"]  # host arrays
    out = str(tmp_path / "backbone")
    info = export.export_backbone(out, setup.model, params, setup.spec, platforms=("cpu",),
                                  functions=("video_tokens", "text"))
    assert info["variant"]["family"] == "tvts_v1" and info["spec"]["tokenizer"] == "wordpiece"
    assert info["spec"]["vocab_path"] == "vocab.txt" and open(os.path.join(out, "vocab.txt")).read() == \
        open(vocab).read()
    bb = backbone_lib.load(out)
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    tokens = setup.model.apply({"params": params}, normalize(frames), None, method=TVTSv1.encode_video)
    np.testing.assert_allclose(bb.video_tokens(frames), tokens, rtol=1e-5, atol=1e-5)
    assert bb.video_tokens(frames).shape == (3, 1 + 2 * 16, 64)  # CLS + 2 tubes x 16 positions
    texts = ["a red circle moves left", "then the blue square goes up", ""]
    ids = {t: i for i, t in enumerate(open(vocab, encoding="utf-8").read().split("\n")) if t}
    want_ids = np.asarray([reference_wordpiece(t, ids, CONTEXT) for t in texts], np.int32)
    np.testing.assert_array_equal(bb.tokenize(texts), want_ids)
    want = setup.model.apply({"params": params}, jnp.asarray(want_ids), method=TVTSv1.encode_text)
    np.testing.assert_allclose(bb.encode_text(texts), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encode_texts(bb, texts, batch=4), want, rtol=1e-5, atol=1e-5)  # the evaluators' path
    np.testing.assert_array_equal(tokenizer_for_spec(bb.spec, out)(texts), want_ids)
