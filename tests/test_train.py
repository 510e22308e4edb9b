"""The trainer: frozen parameters, resume, NaN guard, config validation."""
import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from tvts import optim, sharding, train
from tvts.config import apply_overrides, load_config, parse_arg, validate
from tvts.data.pipeline import make_sources


def tiny_config(**overrides):
    """Small and fast: 4 frames, batch 8, transcribed source only, no evaluators, every term and lr from step 0."""
    c = load_config("configs/pretrain.py")
    with c.unlocked():
        c.model.num_frames = 4
        c.data.transcribed_batch = 8
        c.data.captioned_batch = 8
        c.data.sources = ("transcribed",)
        c.data.source_start = ml_collections.ConfigDict(dict(transcribed=0.0, captioned=0.0))
        c.data.context_length = 16
        c.optim.schedule = "constant"
        c.optim.warmup_steps = 0
        c.optim.group_start = ml_collections.ConfigDict()
        c.loss.transcribed_contrastive_start = 0.0
        c.evals = ml_collections.ConfigDict()
        c.log_every = 1
    return apply_overrides(c, overrides)


def one_device_setup(config):
    return train.make_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


def batch_for(config, iteration=0):
    src = make_sources(config.data, 32, config.model.num_frames)["transcribed"]
    return src.batch(iteration)


def test_frozen_blocks_are_bit_identical_and_hold_no_optimizer_state():
    config = tiny_config()
    setup = one_device_setup(config)
    state = train.init_state(setup, jax.random.key(0))
    before = jax.device_get(state["params"])
    step = train.make_train_step(setup, "transcribed")
    state, metrics = step(state, sharding.global_batch(batch_for(config), setup.mesh), jax.random.key(1))
    after = jax.device_get(state["params"])
    assert np.isfinite(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves(before["text"]["frozen_blocks"]), jax.tree.leaves(after["text"]["frozen_blocks"])):
        np.testing.assert_array_equal(a, b)
    for name in ("tuned_blocks", "token_embedding"):
        moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(before["text"][name]),
                                                     jax.tree.leaves(after["text"][name]))]
        assert max(moved) > 0, name
    assert np.abs(before["video"]["blocks"]["time_attn"]["out"]["kernel"]
                  - after["video"]["blocks"]["time_attn"]["out"]["kernel"]).max() > 0
    # optimizer state: no leaf under a frozen path
    paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["opt_state"])]
    assert not [p for p in paths if "frozen_blocks" in p]
    assert [p for p in paths if "tuned_blocks" in p]
    n_frozen = sum(x.size for x in jax.tree.leaves(before["text"]["frozen_blocks"]))
    n_total = sum(x.size for x in jax.tree.leaves(before))
    n_moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
    assert n_moments == 2 * (n_total - n_frozen)  # Adam mu + nu for the trainable parameters only


def delayed_text_setup(total_steps=4, text_start=0.5):
    config = tiny_config(total_steps=total_steps)
    with config.unlocked():
        config.optim.group_start = {"text": text_start}
    return one_device_setup(config)


def test_a_delayed_group_is_held_until_its_start_then_starts_as_a_fresh_adamw():
    setup = delayed_text_setup()  # the text group starts at update int(0.5 * 4) = 2
    config = setup.config
    state = train.init_state(setup, jax.random.key(0))
    step = train.make_train_step(setup, "transcribed")
    batch = sharding.global_batch(batch_for(config), setup.mesh)
    initial = jax.device_get(state)
    for update in range(2):
        state, _ = step(state, batch, jax.random.key(update), update=update)
    held = jax.device_get(state)
    text_moments = lambda s: [x for p, x in jax.tree_util.tree_leaves_with_path(s["opt_state"])
                              if "'text'" in jax.tree_util.keystr(p)]
    for a, b in zip(jax.tree.leaves(initial["params"]["text"]), jax.tree.leaves(held["params"]["text"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(text_moments(initial), text_moments(held)):  # moments and step count untouched
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(initial["params"]["video"]),
                                                   jax.tree.leaves(held["params"]["video"]))) > 0

    # Update 2, the group's first: an AdamW created now, fed this update's gradient, gives the same parameters.
    group = {"text": {k: v for k, v in held["params"]["text"].items() if k != "frozen_blocks"}}
    keep = train.random_keep(jax.random.fold_in(jax.random.key(2), 2), batch["video"].shape[0],
                             setup.model.variant.video.num_patches, setup.mask_ratio)
    grads = jax.grad(lambda p: train.compute_losses(p, setup.model, batch, keep, config.loss)[0])(held["params"])
    o = config.optim
    decay_mask = jax.tree_util.tree_map_with_path(lambda p, _: optim.decays(optim.path_str(p), o.no_decay), group)
    fresh = optax.adamw(o.groups["text"], b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
    group_grads = {"text": {k: grads["text"][k] for k in group["text"]}}
    updates, _ = fresh.update(group_grads, fresh.init(group), group)
    want = optax.apply_updates(group, updates)
    state, _ = step(state, batch, jax.random.key(2), update=2)
    got = jax.device_get(state["params"])
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(
            {"text": {k: got["text"][k] for k in group["text"]}})):
        # a first AdamW step moves each weight by about lr; 1% of lr tells a fresh start from a warm one
        np.testing.assert_allclose(g, w, rtol=0, atol=0.01 * o.groups["text"], err_msg=jax.tree_util.keystr(path))


def test_phases_follow_the_group_starts_and_the_contrastive_start():
    setup = delayed_text_setup(total_steps=10)
    with setup.config.unlocked():
        setup.config.loss.transcribed_contrastive_start = 0.3
    phases = [train.phase_of(setup, u) for u in range(10)]
    assert [p.waiting for p in phases] == [frozenset({"text"})] * 5 + [frozenset()] * 5
    assert [p.transcribed_weight for p in phases] == [0.0] * 3 + [1.0] * 7


def test_a_waiting_group_costs_what_a_frozen_one_does():
    """Before its start a group gets no backward pass: the program's FLOPs are those of a run that freezes it by rule."""
    setup = delayed_text_setup()
    frozen_rules = [(r"^text/", None)] + [r for r in train.optimizer_rules(setup.config) if not r[0].startswith("^text")]
    frozen = one_device_setup(tiny_config(**{"optim.rules": tuple(frozen_rules)}))
    batch = sharding.global_batch(batch_for(setup.config), setup.mesh)

    def flops(s, update):
        state = train.init_state(s, jax.random.key(0))
        program = train.make_train_step(s, "transcribed").jitted_for(update)
        cost = program.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    waiting, started, by_rule = flops(setup, 0), flops(setup, 3), flops(frozen, 0)
    assert waiting < 0.95 * started
    assert abs(waiting - by_rule) <= 0.02 * by_rule


def test_transcribed_contrastive_term_joins_at_its_start():
    config = tiny_config(**{"total_steps": 4, "loss.transcribed_contrastive_start": 0.5})
    setup = one_device_setup(config)
    state = train.init_state(setup, jax.random.key(0))
    step = train.make_train_step(setup, "transcribed")
    batch = sharding.global_batch(batch_for(config), setup.mesh)
    for i in range(4):
        state, m = step(state, batch, jax.random.key(i))
        weight = 1.0 if i >= 2 else 0.0  # update 2 = int(0.5 * 4)
        want = weight * float(m["contrastive_loss"]) + config.loss.sort_weight * float(m["sort_loss"])
        np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-6, err_msg=f"update {i}")


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def test_a_late_source_takes_no_update_until_its_start():
    config = tiny_config(**{"total_steps": 10, "data.sources": ("transcribed", "captioned"),
                            "data.source_start": {"transcribed": 0.3, "captioned": 0.0}, "optim.group_start": {"text": 0.5}})
    # iterations 0-2: one captioned update each (updates 0-2); from iteration 3: transcribed, then captioned
    assert [train.active_sources(config, i) for i in (0, 2, 3)] == [("captioned",), ("captioned",),
                                                                    ("transcribed", "captioned")]
    assert [train.update_index(config, i) for i in (0, 3, 4, 10)] == [0, 3, 5, 17]
    assert (train.update_index(config, 3, "transcribed"), train.update_index(config, 3, "captioned")) == (3, 4)
    assert train.total_updates(config) == 17
    assert [train.iteration_of_update(config, u) for u in (0, 2, 3, 4, 5, 16)] == [0, 2, 3, 3, 4, 9]
    setup = one_device_setup(config)
    # the text group starts at iteration 5 = update 3 + 2 * 2
    assert [train.phase_of(setup, u).waiting for u in (6, 7)] == [frozenset({"text"}), frozenset()]


def test_the_tiny_demo_gives_captions_a_head_start_and_published_variants_do_not():
    demo, published = load_config("configs/pretrain.py"), load_config("configs/pretrain.py:variant=B/16")
    assert [train.active_sources(demo, i) for i in (0, 399, 400)] == [("captioned",), ("captioned",),
                                                                      ("transcribed", "captioned")]
    assert train.total_updates(demo) == 1600 + 1200
    assert train.active_sources(published, 0) == ("transcribed", "captioned")


def test_the_trainer_skips_a_late_source_and_counts_its_updates(tmp_path):
    config = tiny_config(**{"total_steps": 4, "data.sources": ("transcribed", "captioned"),
                            "data.source_start": {"transcribed": 0.5, "captioned": 0.0},
                            "optim.schedule": "warmup_cosine"})
    train.train_and_evaluate(config, str(tmp_path))
    rows = _metrics(tmp_path)
    assert [any(k.startswith("transcribed/") for k in rows[i]) for i in (1, 2, 3, 4)] == [False, False, True, True]
    assert all("captioned/loss" in rows[i] for i in (1, 2, 3, 4))
    # the learning rates logged after the third iteration are read at the state's update count, 1 + 1 + 2 = 4 of
    # 6 updates: 1 warmup update, then 3 of the 5 cosine ones (counting 2 updates per iteration would give 6: lr 0)
    schedules = one_device_setup(config).schedules
    assert {g: rows[3][f"lr/{g}"] for g in schedules} == pytest.approx(
        {g: 0.5 * (1 + np.cos(np.pi * 3 / 5)) * config.optim.groups[g] for g in schedules}, rel=1e-5)


def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path):
    config = tiny_config(total_steps=4, checkpoint_every=2)
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    # the "killed" run: stops after the checkpoint at iteration 2, then a new process resumes in the same workdir
    train.train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), str(tmp_path / "resumed"))
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    for step in (3, 4):
        for key in ("transcribed/loss", "transcribed/sort_loss", "transcribed/contrastive_loss"):
            np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-6, err_msg=f"{key}@{step}")
    assert straight[3]["transcribed/loss"] != straight[1]["transcribed/loss"]


def test_each_launch_records_its_config_and_a_changed_one_keeps_the_previous(tmp_path):
    short, long = tiny_config(total_steps=1), tiny_config(total_steps=2)
    assert train.record_config(short, str(tmp_path)) == []
    assert train.record_config(short, str(tmp_path)) == []  # same config: nothing new kept
    assert train.record_config(long, str(tmp_path)) == ["total_steps"]
    with open(tmp_path / "config.json") as f:
        recorded = json.load(f)
    with open(tmp_path / "config.1.json") as f:
        previous = json.load(f)
    assert (recorded["total_steps"], previous["total_steps"]) == (2, 1)
    assert recorded["optim"]["groups"] == dict(long.optim.groups) and recorded["seed"] == long.seed
    assert sorted(os.listdir(tmp_path)) == ["config.1.json", "config.json"]


def test_nonfinite_loss_stops_the_run_naming_the_step_and_skips_the_checkpoint(tmp_path):
    config = tiny_config(total_steps=4, checkpoint_every=1, **{"loss.sort_weight": float("nan")})
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at update 0"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_transcribed_contrastive_weight_scales_only_the_transcribed_contrastive_term():
    setup = one_device_setup(tiny_config())
    params = train.init_state(setup, jax.random.key(0))["params"]
    batch = batch_for(setup.config)
    captioned = {"video": batch["video"], "texts": batch["texts"][:, :1]}
    keep = train.random_keep(jax.random.key(3), 8, 16, 0.5)
    for weight in (1.0, 0.25, 0.0):
        cfg = tiny_config(**{"loss.transcribed_contrastive_weight": weight}).loss
        total, m = train.compute_losses(params, setup.model, batch, keep, cfg)
        want = weight * float(m["contrastive_loss"]) + cfg.sort_weight * float(m["sort_loss"])
        np.testing.assert_allclose(float(total), want, rtol=1e-6)
        total, m = train.compute_losses(params, setup.model, captioned, keep, cfg)
        np.testing.assert_allclose(float(total), float(m["contrastive_loss"]), rtol=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("model.mask_ratio", 1.0, r"mask_ratio=1.0 must be in \[0, 1\)"),
    ("model.num_frames", 13, "temporal embedding holds 12 frames"),
    ("model.variant", "B/8", "unknown variant 'B/8'"),
    ("model.time_init", "ones", "time_init='ones'"),
    ("data.context_length", 78, "exceeds the text tower's 32"),
    ("data.transcript_length", 17, r"transcript_length=17 must be in \[1, context_length=16\]"),
    ("data.transcript_length", -2, r"transcript_length=-2 must be in"),
    ("optim.group_start", {"txt": 0.5}, "group_start.txt: no such group"),
    ("optim.freeze_text_embeddings", True, "config.optim.rules is set"),
    ("optim.group_start", {"text": 1.0}, "group_start.text=1.0 must be a fraction"),
    ("loss.transcribed_contrastive_weight", -1.0, r"transcribed_contrastive_weight=-1.0 must be >= 0"),
    ("loss.transcribed_contrastive_start", 1.0, r"transcribed_contrastive_start=1.0 must be a fraction"),
    ("data.source_start", {"transcribed": 1.0}, r"source_start.transcribed=1.0 must be a fraction"),
    ("data.source_start", {"captioned": 0.2, "transcript": 0.0}, "source_start.transcript: unknown source"),
    ("data.source_start", {"transcribed": 0.5, "captioned": 0.0},  # one source here
     r"some source of data.sources=\('transcribed',\) must start at 0"),
])
def test_bad_config_values_fail_before_allocation(field, value, message):
    config = tiny_config(**{field: value})
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_a_rule_that_matches_nothing_fails_at_setup():
    config = tiny_config(**{"optim.rules": ((r"^vision/", "new"), (r".*", "clip"))})
    with pytest.raises(ValueError, match="match no parameter"):
        one_device_setup(config)


def test_mistyped_overrides_fail():
    config = load_config("configs/pretrain.py")
    with pytest.raises(AttributeError, match="lerning_rate"):
        config.optim.lerning_rate = 1.0
    with pytest.raises(ValueError, match="unknown config argument 'variantt'"):
        parse_arg("variantt=B/16", variant="tiny")
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("configs/pretrain.py:variant=B/17") and validate(load_config("configs/pretrain.py:variant=B/17"))


def test_batches_are_a_function_of_the_iteration_and_split_over_processes():
    config = tiny_config()
    whole = make_sources(config.data, 32, 4)["transcribed"]
    halves = [make_sources(config.data, 32, 4, process_index=p, process_count=2)["transcribed"] for p in (0, 1)]
    a, b = whole.batch(5), whole.batch(5)
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(np.concatenate([h.batch(5)["video"] for h in halves]), a["video"])
    np.testing.assert_array_equal(np.concatenate([h.batch(5)["texts"] for h in halves]), a["texts"])
    assert not np.array_equal(whole.batch(6)["video"], a["video"])
    assert a["video"].shape == (8, 4, 32, 32, 3) and a["texts"].shape == (8, 4, 16)


def test_transcripts_take_their_own_length_and_keep_their_eot():
    config = tiny_config(**{"data.sources": ("transcribed", "captioned")})
    full = make_sources(config.data, 32, 4)
    short = make_sources(tiny_config(**{"data.sources": ("transcribed", "captioned"),
                                        "data.transcript_length": 12}).data, 32, 4)
    a, b = full["transcribed"].batch(3)["texts"], short["transcribed"].batch(3)["texts"]
    assert a.shape == (8, 4, 16) and b.shape == (8, 4, 12)
    eot = 49407
    fits = (a[..., 12:] == 0).all(-1)  # transcripts of <= 12 tokens are unchanged, longer ones end with EOT
    assert fits.any() and (~fits).any()
    np.testing.assert_array_equal(b[fits], a[..., :12][fits])
    assert (b[~fits][:, -1] == eot).all()
    assert short["captioned"].batch(3)["texts"].shape == (8, 1, 16)
