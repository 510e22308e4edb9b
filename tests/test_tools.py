"""The tools package: every tool imports as a module with a `main`, and the recipe a tool studies for a variant."""
import importlib

import pytest

from tools.common import recipe_config
from tvts.config import validate
from tvts.models.layers import ATTENTION_IMPLEMENTATIONS

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


def test_bench_case_grid_is_every_combination_of_the_listed_values():
    import types

    from tools.bench import case_grid

    args = types.SimpleNamespace(attention="program", remat="none,full", unroll_layers="no,yes")
    assert case_grid(args) == [
        (", remat none, scanned", {"model.remat": "none", "model.unroll_layers": False}),
        (", remat none, unrolled", {"model.remat": "none", "model.unroll_layers": True}),
        (", remat full, scanned", {"model.remat": "full", "model.unroll_layers": False}),
        (", remat full, unrolled", {"model.remat": "full", "model.unroll_layers": True})]
    assert case_grid(types.SimpleNamespace(attention="program", remat="", unroll_layers="")) == [("", {})]
    for flag, value in (("remat", "none,nothing"), ("unroll_layers", "yes,yes"), ("unroll_layers", "true")):
        bad = types.SimpleNamespace(**{"attention": "program", "remat": "", "unroll_layers": "", flag: value})
        with pytest.raises(ValueError, match=f"--{flag} {value}: use distinct values of"):
            case_grid(bad)


def test_bench_builds_each_attention_implementation_with_the_same_outputs():
    """tools.bench --attention einsum,einsum_heads_major,dot_product: the extraction case of each implementation (the
    A/B of docs/benchmarks.md) is built on a model running it, and all embed the same frames alike."""
    import types

    import jax
    import numpy as np

    from tools.bench import ExtractCase, attention_cases, case_grid

    assert attention_cases("all") == attention_cases("einsum,einsum_heads_major,dot_product")
    # 'program': the recipe config's own choice ('auto'; tests/test_attention.py follows it into the models)
    assert attention_cases("program") == (None,)
    with pytest.raises(ValueError, match="--attention einsum,flash: use 'program', 'all' or distinct names"):
        attention_cases("einsum,flash")
    args = types.SimpleNamespace(variant="tiny", frames=4, dtype="float32", mesh="data=-1", batch=jax.device_count(),
                                 warmup=1, attention="all", remat="", unroll_layers="")
    grid = case_grid(args)
    assert [overrides for _, overrides in grid] == [{"model.attention": a} for a in ATTENTION_IMPLEMENTATIONS]
    cases = {overrides["model.attention"]: ExtractCase(args, overrides) for _, overrides in grid}
    assert {k: c.encoders.model.video_attention for k, c in cases.items()} == {k: k for k in cases}
    want, *others = (np.asarray(c.encoders._video(c.params, c.frames)[1]) for c in cases.values())  # every token
    for got in others:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
