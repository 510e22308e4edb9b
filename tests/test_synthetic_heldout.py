"""The demo's held-out evaluator and the final report: chance levels and the trained / init / chance table."""
import ml_collections
import numpy as np

from tvts import train
from tvts.config import load_config
from tvts.data.synthetic import SyntheticCorpus
from tvts.evaluators.synthetic_heldout import PROBE_LABELS, SyntheticHeldout
from tvts.metrics import REFERENCES, format_report


def test_report_puts_references_beside_the_metric():
    text = format_report({"heldout/sort_accuracy": 0.9, "heldout/init/sort_accuracy": 0.25,
                          "heldout/chance/sort_accuracy": 0.25, "heldout/t2v/R@1": 50.0,
                          "heldout/chance/t2v/R@1": 0.4, "other/loss": 1.5})
    lines = text.strip().splitlines()
    assert lines[0].split() == ["final", "evaluation", "trained", "random", "init", "chance", "/", "base"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {"heldout/sort_accuracy": ["0.9000", "0.2500", "0.2500"],
                    "heldout/t2v/R@1": ["50.0000", "0.4000"], "other/loss": ["1.5000"]}


def test_heldout_figures_and_their_chance_levels():
    config = load_config("configs/pretrain.py")
    with config.unlocked():
        config.model.num_frames = 4
        config.data.context_length = 16
        config.data.transcript_length = -1
        config.evals = ml_collections.ConfigDict()
    setup = train.make_setup(config)
    cfg = ml_collections.ConfigDict(dict(type="synthetic_heldout", every=0, num_videos=16, num_probe_train=32,
                                         batch=8, compare_with_init=False, compare_without_time_attention=True))
    evaluator = SyntheticHeldout("heldout", cfg, setup)
    params = train.random_params(setup)
    out = evaluator.run(params, final=True)

    assert 0.0 <= out["heldout/sort_accuracy"] <= 1.0
    assert out["heldout/chance/sort_accuracy"] == 0.25
    assert out["heldout/chance/t2v/R@1"] == 100.0 / 16 and out["heldout/chance/v2t/R@10"] == 1000.0 / 16
    assert out["heldout/chance/t2v/MdR"] == 8.5
    test = SyntheticCorpus(evaluator.test.config, "test")  # labels video by video, not through the batch path
    for label in PROBE_LABELS:
        values = np.array([test.video(i).labels[label] for i in range(16)])
        assert out[f"heldout/chance/probe_{label}"] == 100.0 * max(values.mean(), 1 - values.mean())
        assert 0.0 <= out[f"heldout/probe_{label}"] <= 100.0
    # random params: the time attention is the no-op init, so switching it off changes nothing
    for key in ("sort_accuracy", "t2v/R@1", "probe_has_leftward"):
        assert out[f"heldout/no_time_attn/{key}"] == out[f"heldout/{key}"]
    # periodic (non-final) runs give the figures alone, and the same ones: they are deterministic
    again = evaluator.run(params)
    assert again == {k: v for k, v in out.items() if k.split("/")[1] not in REFERENCES}
