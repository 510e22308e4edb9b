"""The demo's held-out evaluator and the final report: chance levels, the 'time attention off' reference and the
trained / reference / chance table."""
import re

import jax
import ml_collections
import numpy as np
from helpers import one_device_setup, tiny_config

from tvts.config import EVAL_REFERENCES
from tvts.data.synthetic import SyntheticCorpus
from tvts.evaluators.synthetic_heldout import PROBE_LABELS, SyntheticHeldout
from tvts.metric_writer import format_report
from tvts.state import make_encoders, random_params, reference_params


def test_report_puts_references_beside_the_metric():
    references = {**EVAL_REFERENCES, **SyntheticHeldout.REFERENCE_LABELS}
    assert references == {"no_time_attn": "time attn off", "init": "random init", "chance": "chance / base"}
    text = format_report({"heldout/sort_accuracy": 0.9, "heldout/init/sort_accuracy": 0.25,
                          "heldout/chance/sort_accuracy": 0.25, "heldout/t2v/R@1": 50.0,
                          "heldout/no_time_attn/t2v/R@1": 12.5, "heldout/chance/t2v/R@1": 0.4,
                          "other/loss": 1.5}, references)
    lines = text.strip().splitlines()
    # columns in the references' order, each present because some metric has it
    assert lines[0].split() == ["final", "evaluation", "trained", "time", "attn", "off", "random", "init",
                                "chance", "/", "base"]
    columns = [lines[0].index(label) + len(label) for label in ("trained", "time attn off", "random init",
                                                                "chance / base")]
    rows = {}
    for line in lines[1:]:
        # a cell is right-aligned under its header: find each number's column by where it ends
        name, *cells = re.finditer(r"\S+", line)
        rows[name.group()] = {columns.index(cell.end()): cell.group() for cell in cells}
    assert rows == {"heldout/sort_accuracy": {0: "0.9000", 2: "0.2500", 3: "0.2500"},
                    "heldout/t2v/R@1": {0: "50.0000", 1: "12.5000", 3: "0.4000"},
                    "other/loss": {0: "1.5000"}}
    # a reference no metric has takes no column
    assert format_report({"x/a": 1.0}, references).strip().splitlines()[0].split() == ["final", "evaluation",
                                                                                       "trained"]


def with_time_attention_out(params, kernel, bias):
    """`params` (host arrays) with every block's time-attention output projection replaced: a new tree."""
    blocks = params["video"]["blocks"]
    time_attn = {**blocks["time_attn"], "out": {"kernel": kernel, "bias": bias}}
    return {**params, "video": {**params["video"], "blocks": {**blocks, "time_attn": time_attn}}}


def test_heldout_figures_their_chance_levels_and_the_time_attention_off_reference():
    config = tiny_config(**{"eval_references": ("no_time_attn",)})
    setup = one_device_setup(config)
    cfg = ml_collections.ConfigDict(dict(type="synthetic_heldout", every=0, num_videos=16, num_probe_train=32,
                                         batch=8))
    evaluator = SyntheticHeldout("heldout", cfg, config.data, setup.spec)

    # Random parameters have a zero time-attention output projection (the model starts as its image model), so
    # switching it off would change nothing: give it random weights first.
    params = jax.device_get(random_params(setup))
    out_kernel = params["video"]["blocks"]["time_attn"]["out"]["kernel"]
    assert not out_kernel.any()
    perturbed = with_time_attention_out(params, np.random.default_rng(0).normal(0, 0.5, out_kernel.shape).astype(
        np.float32), params["video"]["blocks"]["time_attn"]["out"]["bias"])
    encoders = make_encoders(setup, perturbed)
    references = {k: encoders.with_params(p) for k, p in reference_params(setup, perturbed).items()}
    assert list(references) == ["no_time_attn"]
    out = evaluator.run(encoders, final=True, references=references)

    # 'time attention off' = the same parameters with the output projection built here as zeros
    off = with_time_attention_out(perturbed, np.zeros_like(out_kernel),
                                  np.zeros_like(params["video"]["blocks"]["time_attn"]["out"]["bias"]))
    off_figures = evaluator.run(encoders.with_params(off))
    figures = sorted(k.removeprefix("heldout/") for k in off_figures)
    assert {"sort_accuracy", "t2v/R@1", "v2t/R@1", "t2v/MnR", "probe_has_circle", "probe_has_leftward"} <= set(
        figures)
    assert {k: out[f"heldout/no_time_attn/{k}"] for k in figures} == {k: off_figures[f"heldout/{k}"]
                                                                      for k in figures}
    # switching it off changes what the video tower computes and nothing of the text tower
    frames = evaluator.test.transcribed_batch(np.arange(8), train=False)["frames"]
    tokens = evaluator._tokens(evaluator.test.captioned_batch(np.arange(8), train=False)["captions"])
    video_on, video_off = encoders.encode_video(frames), encoders.with_params(off).encode_video(frames)
    assert np.abs(video_on - video_off).max() > 1e-2 * np.abs(video_off).max()
    np.testing.assert_array_equal(encoders.encode_text(tokens), encoders.with_params(off).encode_text(tokens))
    # ... so the video figures differ (mean ranks are averages of 16 ranks: any change of ranking shows)
    assert out["heldout/t2v/MnR"] != out["heldout/no_time_attn/t2v/MnR"]
    assert out["heldout/v2t/MnR"] != out["heldout/no_time_attn/v2t/MnR"]

    # chance levels, computed here from the corpus video by video
    assert out["heldout/chance/sort_accuracy"] == 0.25  # 4 clips: 1 in 4 positions
    assert out["heldout/chance/t2v/R@1"] == 100.0 / 16 and out["heldout/chance/v2t/R@10"] == 1000.0 / 16
    assert out["heldout/chance/t2v/MdR"] == 8.5 and out["heldout/chance/v2t/MnR"] == 8.5
    test = SyntheticCorpus(evaluator.test.config, "test")  # labels video by video, not through the batch path
    for label in PROBE_LABELS:
        values = np.array([test.video(i).labels[label] for i in range(16)])
        assert 0 < values.mean() < 1  # both classes present: the probe's chance level is a real majority rate
        assert out[f"heldout/chance/probe_{label}"] == 100.0 * max(values.mean(), 1 - values.mean())
        assert 0.0 <= out[f"heldout/probe_{label}"] <= 100.0
    assert 0.0 <= out["heldout/sort_accuracy"] <= 1.0

    # periodic (non-final) runs give the figures alone, and the same ones: they are deterministic
    again = evaluator.run(encoders)
    assert again == {k: v for k, v in out.items() if k.split("/")[1] not in ("chance", "no_time_attn")}
