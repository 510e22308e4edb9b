"""The tools package: every tool imports as a module with a `main`, and the recipe a tool studies for a variant."""
import importlib

import pytest

from tools.common import recipe_config
from tvts.config import validate

TOOLS = ("model_summary", "plan_memory", "bench_step", "bench_convert", "make_corpus", "research.learnability",
         "research.diagnose_embeddings")


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
