"""Parameter rules, learning-rate groups, frozen parameters and schedules."""
import flax.linen as nn
import flax.traverse_util as traverse_util
import jax
import numpy as np
import pytest

from tvts import optim
from tvts.models.tvtsv2 import abstract_params
from tvts.models.variants import decode_variant

GROUPS = {"new": 1e-4, "clip": 1e-7}


def _labels(variant="B/16", **kw):
    params = nn.unbox(abstract_params(decode_variant(variant)))
    return params, traverse_util.flatten_dict(optim.assign_groups(params, optim.published_rules(**kw), GROUPS), sep="/")


def test_every_parameter_lands_in_its_published_group():
    params, labels = _labels()
    expect = {
        "video/blocks/time_attn/qkv/kernel": "new", "video/blocks/time_attn/out/bias": "new",
        "video/blocks/ln_3/norm/scale": "new", "sort_head/block_0/attn/qkv/kernel": "new",
        "sort_head/type_embedding": "new", "sort_head/classifier/kernel": "new",
        "video/blocks/attn/qkv/kernel": "clip", "video/blocks/ln_1/norm/scale": "clip",
        "video/patch_embed/kernel": "clip", "video/pos_embedding": "clip", "video/cls_token": "clip",
        "video/proj": "clip", "video/temporal_embedding": "clip",  # the published quirk
        "text/token_embedding": "clip", "text/positional_embedding": "clip", "text/ln_final/norm/scale": "clip",
        "text/text_projection": "clip", "text/tuned_blocks/mlp/fc/kernel": "clip",
        "text/frozen_blocks/mlp/fc/kernel": None, "text/frozen_blocks/attn/qkv/bias": None,
    }
    for name, group in expect.items():
        assert labels[name] == group, name
    assert set(labels.values()) == {"new", "clip", None}
    # 9 of 12 text blocks frozen, 3 tuned (stacked along the leading 'layers' axis)
    assert params["text"]["frozen_blocks"]["mlp"]["fc"]["kernel"].shape[0] == 9
    assert params["text"]["tuned_blocks"]["mlp"]["fc"]["kernel"].shape[0] == 3
    # every 'new' parameter is a time attention, ln_3 or sort-head parameter
    assert all(n.startswith(("video/blocks/time_attn", "video/blocks/ln_3", "sort_head/"))
               for n, g in labels.items() if g == "new")


def test_switches_move_temporal_embedding_and_freeze_text_embeddings():
    _, labels = _labels(temporal_embedding_group="new", freeze_text_embeddings=True)
    assert labels["video/temporal_embedding"] == "new"
    assert labels["text/token_embedding"] is None and labels["text/positional_embedding"] is None
    assert labels["text/tuned_blocks/attn/qkv/kernel"] == "clip"


def test_h14_freezes_18_of_24_text_blocks():
    params, labels = _labels("H/14")
    assert params["text"]["frozen_blocks"]["attn"]["qkv"]["kernel"].shape[0] == 18
    assert params["text"]["tuned_blocks"]["attn"]["qkv"]["kernel"].shape[0] == 6


def test_unmatched_parameters_are_named():
    params = nn.unbox(abstract_params(decode_variant("tiny")))
    with pytest.raises(ValueError, match=r"match no optimizer rule.*sort_head/"):
        optim.assign_groups(params, [(r"^(video|text)/", "clip")], GROUPS)


def test_a_rule_matching_nothing_is_an_error():
    params = nn.unbox(abstract_params(decode_variant("tiny")))
    with pytest.raises(ValueError, match=r"match no parameter: \['\^vision/'\]"):
        optim.assign_groups(params, [(r"^vision/", "new"), (r".*", "clip")], GROUPS)


def test_a_rule_naming_an_unknown_group_is_an_error():
    params = nn.unbox(abstract_params(decode_variant("tiny")))
    with pytest.raises(ValueError, match="group 'fast'"):
        optim.assign_groups(params, [(r".*", "fast")], GROUPS)


def test_weight_decay_skips_biases_norms_and_embeddings():
    no_decay = r"(bias|scale|embedding|cls_token)$"
    assert optim.decays("video/blocks/attn/qkv/kernel", no_decay)
    assert optim.decays("video/proj", no_decay)
    for name in ["video/blocks/attn/qkv/bias", "video/ln_pre/norm/scale", "video/pos_embedding",
                 "video/temporal_embedding", "text/token_embedding", "video/cls_token"]:
        assert not optim.decays(name, no_decay), name


def test_step_schedule_decays_at_60_and_80_percent():
    sched = optim.make_schedule(1e-4, "step", total_steps=100)
    np.testing.assert_allclose([float(sched(s)) for s in (0, 59, 60, 79, 80, 99)],
                               [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rtol=1e-6)


def test_warmup_cosine_schedule():
    sched = optim.make_schedule(1.0, "warmup_cosine", total_steps=110, warmup_steps=10)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(60)), 0.5, rtol=1e-5)  # half-way down the cosine
    assert float(sched(110)) < 1e-6


def test_delayed_group_schedule_starts_at_zero_then_runs_over_the_rest():
    sched = optim.make_schedule(1.0, "warmup_cosine", total_steps=130, warmup_steps=10, start_step=20)
    assert [float(sched(s)) for s in (0, 19, 20)] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(float(sched(25)), 0.5, rtol=1e-6)       # warmup restarts at the start step
    np.testing.assert_allclose(float(sched(30)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(80)), 0.5, rtol=1e-5)       # cosine over the remaining 110
    assert float(sched(130)) < 1e-6


def test_partition_and_merge_round_trip():
    tree = {"a": {"x": 1, "y": 2}, "b": 3}
    labels = {"a": {"x": "new", "y": None}, "b": "clip"}
    trainable, frozen = optim.partition(tree, labels)
    assert trainable == {"a": {"x": 1}, "b": 3} and frozen == {"a": {"y": 2}}
    assert optim.merge(trainable, frozen) == tree
