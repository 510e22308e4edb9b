"""The tools package: every tool imports as a module with a `main`, and the recipe a tool studies for a variant."""
import importlib

import pytest

from tools.common import recipe_config
from tvts.config import validate

TOOLS = ("model_summary", "plan_memory", "bench_step", "bench_convert", "make_corpus", "synthetic_benchmarks",
         "research.learnability", "research.diagnose_embeddings")


@pytest.mark.parametrize("name", TOOLS)
def test_tool_imports_as_a_module(name):
    module = importlib.import_module(f"tools.{name}")
    assert callable(module.main) and module.__doc__


def test_tiny_studies_the_demo_recipe():
    config = recipe_config("tiny")
    assert config.model.variant == "tiny" and dict(config.optim.group_start) == {"text": 0.7}
    assert not config.evals  # tools never run the evaluators


def test_a_published_variant_starts_from_random_weights():
    config = recipe_config("B/16")
    assert config.model.variant == "B/16" and config.init == "random"
    validate(config)  # no converted CLIP weights needed


def test_a_v1_variant_studies_the_v1_recipe_and_is_summarised():
    from tools.model_summary import summarize

    config = recipe_config("v1-B/16")
    assert config.model.variant == "v1-B/16" and config.init == "random" and config.model.num_frames == 16
    validate(config)  # no converted MAE / DistilBERT weights needed
    _, by_tower, by_group = summarize("v1-B/16")  # abstract: nothing allocated
    # the towers' sizes by hand: DistilBERT-base 66,362,880 + ReLU-Linear(768, 256) 196,864 = 66,559,744
    assert by_tower["text"] == 66_362_880 + 768 * 256 + 256
    assert dict(by_group) == {"new": sum(by_tower.values())}  # one published group


def test_bench_builds_each_attention_layout_with_the_same_outputs():
    """tools.bench --attention both: the extraction case in each layout (the A/B of docs/benchmarks.md) is built on
    a model with that layout, and both embed the same frames alike."""
    import types

    import jax
    import numpy as np

    from tools.bench import LAYOUTS, ExtractCase

    args = types.SimpleNamespace(variant="tiny", frames=4, dtype="float32", mesh="data=-1", batch=jax.device_count(),
                                 warmup=1)
    cases = {layout: ExtractCase(args, heads_major) for layout, heads_major in LAYOUTS["both"]}
    assert {k: c.encoders.model.heads_major_attention for k, c in cases.items()} == {"token-major": False,
                                                                                    "heads-major": True}
    token, heads = (np.asarray(c.encoders._video(c.params, c.frames)[1]) for c in cases.values())  # every token
    np.testing.assert_allclose(heads, token, rtol=1e-5, atol=1e-5)
    assert ExtractCase(args).encoders.model.heads_major_attention  # 'program': the evaluation encoders' own
