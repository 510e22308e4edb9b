"""Parameter rules, learning-rate groups, frozen parameters and schedules."""
import re

import flax.linen as nn
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tvts import optim
from tvts.config import load_config
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


# Our parameter path -> the official parameter name (TencentARC/TVTS v2; docs/published_recipe.md, "Parameter
# names"). Stacked layers have no index in our paths; 'N' stands for it (resblocks.N, blocks.N). Patterns fullmatch.
OFFICIAL_NAMES = [
    # video tower: v2/model/video_encoder_ViT_{B_16,B_32,H_14}.py, attribute `video_model`
    (r"video/patch_embed/kernel", "video_model.conv1.weight"),
    (r"video/cls_token", "video_model.class_embedding"),
    (r"video/pos_embedding", "video_model.positional_embedding"),
    (r"video/temporal_embedding", "video_model.temporal_embedding"),
    (r"video/(ln_pre|ln_post)/norm/scale", r"video_model.\1.weight"),
    (r"video/(ln_pre|ln_post)/norm/bias", r"video_model.\1.bias"),
    (r"video/proj", "video_model.proj"),
    (r"video/blocks/attn/qkv/kernel", "video_model.transformer.resblocks.N.attn.qkv.weight"),
    (r"video/blocks/attn/qkv/bias", "video_model.transformer.resblocks.N.attn.qkv.bias"),
    (r"video/blocks/attn/out/kernel", "video_model.transformer.resblocks.N.attn.proj.weight"),
    (r"video/blocks/attn/out/bias", "video_model.transformer.resblocks.N.attn.proj.bias"),
    (r"video/blocks/time_attn/qkv/kernel", "video_model.transformer.resblocks.N.timeattn.qkv.weight"),
    (r"video/blocks/time_attn/qkv/bias", "video_model.transformer.resblocks.N.timeattn.qkv.bias"),
    (r"video/blocks/time_attn/out/kernel", "video_model.transformer.resblocks.N.timeattn.proj.weight"),
    (r"video/blocks/time_attn/out/bias", "video_model.transformer.resblocks.N.timeattn.proj.bias"),
    (r"video/blocks/(ln_[123])/norm/scale", r"video_model.transformer.resblocks.N.\1.weight"),
    (r"video/blocks/(ln_[123])/norm/bias", r"video_model.transformer.resblocks.N.\1.bias"),
    (r"video/blocks/mlp/fc/(kernel|bias)", "video_model.transformer.resblocks.N.mlp.c_fc.{}"),
    (r"video/blocks/mlp/proj/(kernel|bias)", "video_model.transformer.resblocks.N.mlp.c_proj.{}"),
    # text tower: CLIP's (v2/CLIP/clip/model.py; v2/OpenCLIP/transformer.py for H/14), attributes text_*
    (r"text/token_embedding", "text_token_embedding.weight"),
    (r"text/positional_embedding", "text_positional_embedding"),
    (r"text/(frozen|tuned)_blocks/attn/qkv/kernel", "text_model.resblocks.N.attn.in_proj_weight"),
    (r"text/(frozen|tuned)_blocks/attn/qkv/bias", "text_model.resblocks.N.attn.in_proj_bias"),
    (r"text/(frozen|tuned)_blocks/attn/out/(kernel|bias)", "text_model.resblocks.N.attn.out_proj.{}"),
    (r"text/(frozen|tuned)_blocks/(ln_[12])/norm/(scale|bias)", r"text_model.resblocks.N.\2.{}"),
    (r"text/(frozen|tuned)_blocks/mlp/fc/(kernel|bias)", "text_model.resblocks.N.mlp.c_fc.{}"),
    (r"text/(frozen|tuned)_blocks/mlp/proj/(kernel|bias)", "text_model.resblocks.N.mlp.c_proj.{}"),
    (r"text/ln_final/norm/(scale|bias)", "text_ln_final.{}"),
    (r"text/text_projection", "text_projection"),
    # sort head: v2/model/sort_transformer.py (SortTransformer / AttnBlock), attribute `pred_model`
    (r"sort_head/type_embedding", "pred_model.type_embed"),
    (r"sort_head/block_(\d+)/ln_1/norm/(scale|bias)", r"pred_model.blocks.\1.norm1.{}"),
    (r"sort_head/block_(\d+)/ln_2/norm/(scale|bias)", r"pred_model.blocks.\1.norm2.{}"),
    (r"sort_head/block_(\d+)/attn/qkv/(kernel|bias)", r"pred_model.blocks.\1.attn.qkv.{}"),
    (r"sort_head/block_(\d+)/attn/out/(kernel|bias)", r"pred_model.blocks.\1.attn.proj.{}"),
    (r"sort_head/block_(\d+)/mlp/fc/(kernel|bias)", r"pred_model.blocks.\1.mlp.fc1.{}"),
    (r"sort_head/block_(\d+)/mlp/proj/(kernel|bias)", r"pred_model.blocks.\1.mlp.fc2.{}"),
    (r"sort_head/ln/norm/(scale|bias)", "pred_model.norm.{}"),
    (r"sort_head/classifier/(kernel|bias)", "pred_model.head.{}"),
]
TORCH_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def official_name(path: str) -> str:
    hits = [(m, name) for pattern, name in OFFICIAL_NAMES if (m := re.fullmatch(pattern, path))]
    assert len(hits) == 1, f"{path}: {len(hits)} rows of OFFICIAL_NAMES match"
    m, name = hits[0]
    name = m.expand(name)
    return name.format(TORCH_SUFFIX[path.rsplit("/", 1)[1]]) if "{}" in name else name


def official_decays(name: str) -> bool:
    """v2/train_dist_TVTSv2_ViT_B_16.py:67 and :78: no decay if any of these occurs in the parameter's name."""
    return not any(nd in name for nd in ["bias", "LayerNorm", "ln_", "norm"])


def test_official_name_table_examples():
    assert (official_name("video/blocks/time_attn/out/kernel")
            == "video_model.transformer.resblocks.N.timeattn.proj.weight")
    assert official_name("text/tuned_blocks/ln_2/norm/scale") == "text_model.resblocks.N.ln_2.weight"
    assert official_name("text/frozen_blocks/attn/out/bias") == "text_model.resblocks.N.attn.out_proj.bias"
    assert official_name("sort_head/block_1/ln_2/norm/bias") == "pred_model.blocks.1.norm2.bias"
    assert official_name("sort_head/block_0/mlp/proj/kernel") == "pred_model.blocks.0.mlp.fc2.weight"
    assert official_name("sort_head/ln/norm/scale") == "pred_model.norm.weight"
    assert official_name("video/ln_post/norm/bias") == "video_model.ln_post.bias"


def _published_no_decay():
    """The config's published no_decay (configs/pretrain.py sets optim.PUBLISHED_NO_DECAY for CLIP variants)."""
    return load_config("configs/pretrain.py:variant=B/16").optim.no_decay


@pytest.mark.parametrize("variant", ["tiny", "B/16"])
@pytest.mark.parametrize("source", ["constant", "config"])
def test_weight_decay_mask_is_the_official_rule(variant, source):
    """Every parameter is decayed exactly when the official rule decays its official name."""
    no_decay = optim.PUBLISHED_NO_DECAY if source == "constant" else _published_no_decay()
    names = optim.param_names(nn.unbox(abstract_params(decode_variant(variant))))
    wrong = [(n, official_name(n)) for n in names if optim.decays(n, no_decay) != official_decays(official_name(n))]
    assert not wrong, wrong
    decayed = {n for n in names if optim.decays(n, no_decay)}
    # what the old rule '(bias|scale|embedding|cls_token)$' left out, the published one decays
    for name in ["video/pos_embedding", "video/temporal_embedding", "video/cls_token", "video/proj",
                 "video/patch_embed/kernel", "text/token_embedding", "text/positional_embedding",
                 "text/text_projection", "sort_head/type_embedding", "sort_head/classifier/kernel"]:
        assert name in decayed, name
    for name in ["video/blocks/ln_3/norm/scale", "sort_head/block_0/ln_1/norm/scale", "sort_head/ln/norm/bias",
                 "text/ln_final/norm/scale", "video/blocks/time_attn/qkv/bias"]:
        assert name not in decayed, name


def test_decays_applies_a_regex():
    no_decay = r"(bias|scale|embedding|cls_token)$"
    assert optim.decays("video/blocks/attn/qkv/kernel", no_decay)
    for name in ["video/blocks/attn/qkv/bias", "video/ln_pre/norm/scale", "video/temporal_embedding"]:
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


def _transformers_adamw_numpy(p, grads, lr, b1, b2, eps, wd):
    """transformers.AdamW (v4.10, the version the official code pins), its update written out in NumPy:
    denom = sqrt(v) + eps; p -= lr * sqrt(bc2) / bc1 * m / denom; then p -= lr * wd * p."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        p = p - lr * wd * p
    return p


def test_the_published_adamw_places_eps_as_transformers_does():
    from tvts.config import base_config, parse_arg

    cfg = base_config(parse_arg(None, variant="tiny", data="synthetic")).optim
    assert (cfg.b1, cfg.b2, cfg.eps, cfg.eps_placement) == (0.9, 0.999, 1e-6, "transformers")
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(64,)).astype(np.float64)
    # gradients small enough that eps matters: optax's placement gives a visibly different trajectory
    grads = [1e-6 * rng.normal(size=(64,)) for _ in range(5)]
    lr, wd = 1e-2, 0.05
    expected = _transformers_adamw_numpy(p0, grads, lr, cfg.b1, cfg.b2, cfg.eps, wd)

    with jax.enable_x64(True):
        def run(tx):
            params = jnp.asarray(p0)
            state = tx.init(params)
            for g in grads:
                updates, state = tx.update(jnp.asarray(g), state, params)
                params = optax.apply_updates(params, updates)
            return np.asarray(params)

        mask = lambda params: jax.tree.map(lambda _: True, params)
        ours = run(optim.adamw(optax.constant_schedule(lr), cfg, mask))
        with cfg.unlocked():
            cfg.eps_placement = "optax"
        plain = run(optim.adamw(optax.constant_schedule(lr), cfg, mask))
    # transformers decays the already-updated p: a second-order difference, lr^2 * wd * |direction| ~ 5e-6 per step
    np.testing.assert_allclose(ours, expected, atol=5e-5, rtol=0)
    assert np.abs(plain - expected).max() > 1e-3
