"""The train step and the loop: frozen and delayed groups, phases, resume, the non-finite guard, the run's record.

Step-level tests run on one device (tests/helpers.py); the trainer (`train_and_evaluate`) runs on the 8 simulated
devices of conftest.py and is marked slow.
"""
import json
import math
import os
import shutil

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import batch_for, one_device_setup, tiny_config

from tvts import optim, sharding, train
from tvts.checkpoint import Checkpointer, with_shardings
from tvts.data.pipeline import make_sources
from tvts.models.inputs import random_keep
from tvts.objective import Objective
from tvts.state import init_state, make_setup, optimizer_rules
from tvts.step import make_train_step


def group_leaves(tree, labels, group):
    """The leaves of `tree` whose label is `group`, as a nested dict with their full paths."""
    flat, flat_labels = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(labels)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if flat_labels[k] == group})


def assert_trees_equal(got, want, what=""):
    """Every leaf bit for bit, with the same tree structure."""
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(jax.device_get(got))
    want_leaves, want_def = jax.tree_util.tree_flatten(jax.device_get(want))
    assert got_def == want_def, what
    for (path, a), b in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(a, b, err_msg=f"{what} {jax.tree_util.keystr(path)}")


def metric_rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# The step (one device)
# ----------------------------------------------------------------------------------------------
def test_frozen_blocks_are_bit_identical_and_hold_no_optimizer_state():
    config = tiny_config()
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    before = jax.device_get(state["params"])
    step = make_train_step(setup, "transcribed")
    state, metrics = step(state, sharding.global_batch(batch_for(config), setup.mesh), jax.random.key(1))
    after = jax.device_get(state["params"])
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 1
    assert_trees_equal(after["text"]["frozen_blocks"], before["text"]["frozen_blocks"], "frozen")
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


def test_a_delayed_group_is_held_until_its_start_then_starts_as_a_fresh_adamw():
    # one source: update = iteration; the 'new' group (time attention, ln_3, sort head) starts at update 2
    config = tiny_config(**{"total_steps": 4, "optim.group_start": {"new": 0.5}})
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    step = make_train_step(setup, "transcribed")
    batch = sharding.global_batch(batch_for(config), setup.mesh)
    initial = jax.device_get(state)
    for update in range(2):
        state, _ = step(state, batch, jax.random.key(7), update=update)
    held = jax.device_get(state)
    new_moments = lambda s: [x for p, x in jax.tree_util.tree_leaves_with_path(s["opt_state"])
                             if "inner_states['new']" in jax.tree_util.keystr(p)]  # optax.multi_transform's
    assert len(new_moments(initial)) > 2
    assert_trees_equal(group_leaves(held["params"], setup.labels, "new"),
                       group_leaves(initial["params"], setup.labels, "new"), "held params")
    for a, b in zip(new_moments(held), new_moments(initial)):  # moments and step count untouched
        np.testing.assert_array_equal(a, b)
    clip_moved = [np.abs(a - b).max() for a, b in zip(
        jax.tree.leaves(group_leaves(held["params"], setup.labels, "clip")),
        jax.tree.leaves(group_leaves(initial["params"], setup.labels, "clip")))]
    assert max(clip_moved) > 0

    # Update 2, the group's first: the first step of a fresh AdamW, written out in NumPy, gives the same
    # parameters: m = (1 - b1) g and v = (1 - b2) g^2 bias-corrected give g / (|g| + eps'), where eps' = eps when
    # eps is added after the bias correction (optax) and eps / sqrt(1 - b2) when before (transformers.AdamW).
    keep = random_keep(jax.random.fold_in(jax.random.key(7), 2), batch["video"].shape[0],
                       setup.model.variant.video.num_patches, setup.mask_ratio)
    objective = Objective.from_config(config, 1.0)
    grads = jax.jit(jax.grad(lambda p: objective.loss(p, setup.model, batch, keep)[0]))(held["params"])
    o = config.optim
    eps = o.eps if o.get("eps_placement", "optax") == "optax" else o.eps / math.sqrt(1 - o.b2)
    lr = o.groups["new"]
    want = jax.tree_util.tree_map_with_path(
        lambda path, p, g: p - lr * (g / (np.abs(g) + eps) + o.weight_decay * optim.decays(optim.path_str(path),
                                                                                            o.no_decay) * p),
        group_leaves(held["params"], setup.labels, "new"), jax.device_get(group_leaves(grads, setup.labels, "new")))
    state, _ = step(state, batch, jax.random.key(7), update=2)
    got = group_leaves(jax.device_get(state["params"]), setup.labels, "new")
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        # a first AdamW step moves each weight by about lr (a warm one, whose step count had run on while the group
        # waited, by about 0.64 lr after 2 held updates): 1% of lr tells them apart
        np.testing.assert_allclose(g, w, rtol=0, atol=0.01 * lr, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_a_waiting_group_costs_what_a_frozen_one_does():
    """Before its start a group gets no backward pass: the program's FLOPs are those of a run that freezes it by
    rule."""
    config = tiny_config(**{"total_steps": 4, "optim.group_start": {"new": 0.5}})
    setup = one_device_setup(config)
    frozen_rules = tuple((regex, None if group == "new" else group) for regex, group in optimizer_rules(config))
    frozen = one_device_setup(tiny_config(**{"optim.rules": frozen_rules}))
    assert not group_leaves(frozen.labels, frozen.labels, "new")
    batch = sharding.global_batch(batch_for(config), setup.mesh)

    def flops(s, update):
        state = init_state(s, jax.random.key(0))
        program = make_train_step(s, "transcribed").jitted_for(update)
        with jax.set_mesh(s.mesh):
            cost = program.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    waiting, started, by_rule = flops(setup, 0), flops(setup, 3), flops(frozen, 0)
    assert waiting < 0.95 * started
    assert abs(waiting - by_rule) <= 0.02 * by_rule


def test_transcribed_contrastive_term_joins_at_its_start():
    config = tiny_config(**{"total_steps": 4, "loss.transcribed_contrastive_start": 0.5})
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    step = make_train_step(setup, "transcribed")
    batch = sharding.global_batch(batch_for(config), setup.mesh)
    for i in range(4):
        state, m = step(state, batch, jax.random.key(i))  # update read from the state
        weight = 1.0 if i >= 2 else 0.0  # update 2 = int(0.5 * 4)
        want = weight * float(m["contrastive_loss"]) + config.loss.sort_weight * float(m["sort_loss"])
        np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-6, err_msg=f"update {i}")
        # the contrastive figure itself is there in both phases: the published two directions, summed
        np.testing.assert_allclose(float(m["contrastive_loss"]),
                                   float(m["contrastive_v2t"]) + float(m["contrastive_t2v"]), rtol=1e-6)


def test_transcribed_contrastive_weight_scales_only_the_transcribed_contrastive_term():
    setup = one_device_setup(tiny_config())
    params = init_state(setup, jax.random.key(0))["params"]
    batch = batch_for(setup.config)
    captioned = {"video": batch["video"], "texts": batch["texts"][:, :1]}
    keep = random_keep(jax.random.key(3), 8, setup.model.variant.video.num_patches, 0.5)
    for weight in (1.0, 0.25, 0.0):
        objective = Objective.from_config(setup.config, weight)
        loss = jax.jit(lambda p, b, objective=objective: objective.loss(p, setup.model, b, keep))
        total, m = loss(params, batch)
        want = weight * float(m["contrastive_loss"]) + setup.config.loss.sort_weight * float(m["sort_loss"])
        np.testing.assert_allclose(float(total), want, rtol=1e-6)
        total, m = loss(params, captioned)
        assert "sort_loss" not in m
        np.testing.assert_allclose(float(total), float(m["contrastive_loss"]), rtol=1e-6)


def poison_gradient(monkeypatch):
    """The objective gains 0 * sum(sqrt(w - w)) for a trainable w: its value is 0 (the loss stays finite), its
    gradient 0 * inf = NaN: only the backward pass is non-finite."""
    real = Objective.loss

    def loss(self, params, model, batch, keep):
        total, metrics = real(self, params, model, batch, keep)
        w = params["video"]["blocks"]["time_attn"]["out"]["kernel"]
        total = total + 0.0 * jnp.sum(jnp.sqrt(w - w))
        return total, {**metrics, "loss": total}

    monkeypatch.setattr(Objective, "loss", loss)


def test_a_finite_loss_with_a_nan_gradient_skips_the_update_and_leaves_the_state_bit_identical(monkeypatch):
    poison_gradient(monkeypatch)
    config = tiny_config()
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    before = jax.device_get(state)  # the step donates its input state
    step = make_train_step(setup, "transcribed")
    batch = sharding.global_batch(batch_for(config), setup.mesh)
    state, m = step(state, batch, jax.random.key(1), update=0)
    assert np.isfinite(float(m["loss"])) and np.isnan(float(m["grad_norm"]))
    after = jax.device_get(state)
    assert_trees_equal(after["params"], before["params"], "params")
    assert_trees_equal(after["opt_state"], before["opt_state"], "opt_state")  # Adam's count did not advance either
    assert (int(after["step"]), int(after["nonfinite_step"]), int(after["nonfinite_count"])) == (1, 0, 1)
    state, _ = step(state, batch, jax.random.key(1), update=1)
    # the first skipped update is kept, each one counted
    assert (int(state["step"]), int(state["nonfinite_step"]), int(state["nonfinite_count"])) == (2, 0, 2)
    assert_trees_equal(state["params"], before["params"], "params after two skips")
    # the host's policy ('stop') names the first one
    with pytest.raises(FloatingPointError, match=r"at update 0 \(iteration 0\).*Last good checkpoint: iteration 4"):
        train.check_nonfinite(setup, state, 4)
    assert train.check_nonfinite(setup, jax.device_get(before), None) == 0


# ----------------------------------------------------------------------------------------------
# The loop (8 devices)
# ----------------------------------------------------------------------------------------------
# Both sources, the transcribed one from iteration 1; the 'new' group and the transcribed contrastive term from
# iteration 3. Updates by iteration: 0: C0 | 1: T1 C2 | 2: T3 C4 | 3: T5 C6 | 4: T7 C8 | 5: T9 C10 (11 in all);
# the group starts at update 5, the schedule (warmup 2, cosine) runs over 11 updates.
RESUME_RUN = {"total_steps": 6, "checkpoint_every": 1, "keep_checkpoints": 6,
              "data.sources": ("transcribed", "captioned"), "data.source_start": {"transcribed": 0.2, "captioned": 0.0},
              "optim.group_start": {"new": 0.5}, "loss.transcribed_contrastive_start": 0.5,
              "optim.schedule": "warmup_cosine", "optim.warmup_steps": 2}
UPDATES_DONE = {1: 1, 2: 3, 3: 5, 4: 7, 5: 9, 6: 11}  # after each iteration, counted by hand from the table above


def warmup_cosine(base, update, warmup, total):
    """optax.warmup_cosine_decay_schedule(0, base, warmup, total) written out."""
    if update < warmup:
        return base * update / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (update - warmup) / (total - warmup)))


def expected_learning_rates(config, update):
    base = config.optim.groups
    new = 0.0 if update < 5 else warmup_cosine(base["new"], update - 5, 2, 11 - 5)  # its own schedule from 5
    return {"lr/clip": warmup_cosine(base["clip"], update, 2, 11), "lr/new": new}


def restore(setup, workdir, iteration):
    """The checkpoint of `iteration` in `workdir`, read with the library's Checkpointer onto one device."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    state, meta = ckpt.restore(iteration, with_shardings(setup.abstract_state, setup.state_sharding))
    ckpt.close()
    assert meta == {"iteration": iteration}
    return jax.device_get(state)


@pytest.mark.slow
def test_resumed_run_gives_the_same_state_as_an_uninterrupted_one(tmp_path, capsys):
    config = tiny_config(**RESUME_RUN)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_and_evaluate(config, str(straight))
    assert "resumed from" not in capsys.readouterr().err
    rows = metric_rows(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # the transcribed source takes no update at iteration 0; captioned takes one at every iteration
    assert [any(k.startswith("transcribed/") for k in r) for r in rows] == [False] + [True] * 5
    assert all("captioned/loss" in r for r in rows)
    # learning rates are logged at the state's update count (2 updates per iteration from iteration 1)
    for r in rows:
        want = expected_learning_rates(config, UPDATES_DONE[r["step"]])
        assert {k: r[k] for k in want} == pytest.approx(want, rel=1e-5, abs=1e-9), r["step"]
    # the contrastive term is left out of transcribed losses before update 5 (iteration 3) and in after it
    for r in rows[1:]:
        weight = 1.0 if r["step"] >= 4 else 0.0
        assert r["transcribed/loss"] == pytest.approx(weight * r["transcribed/contrastive_loss"]
                                                      + config.loss.sort_weight * r["transcribed/sort_loss"],
                                                      rel=1e-5), r["step"]

    # The interrupted run: its workdir holds the checkpoint at iteration 2 and nothing else (a run killed after
    # writing it). The same command resumes there.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    train.train_and_evaluate(config, str(resumed))
    err = capsys.readouterr().err
    assert f"resumed from {(resumed / 'checkpoints').resolve()} at iteration 2" in err
    resumed_rows = metric_rows(resumed)
    assert [r["step"] for r in resumed_rows] == [3, 4, 5, 6]  # only the iterations after the checkpoint
    for got, want in zip(resumed_rows, rows[2:]):
        for key in ("transcribed/loss", "captioned/loss", "transcribed/sort_loss", "lr/new", "lr/clip"):
            assert got[key] == want[key], f"{key} at {got['step']}"

    setup = one_device_setup(config)
    final_straight, final_resumed = (restore(setup, w, config.total_steps) for w in (straight, resumed))
    assert int(final_straight["step"]) == 11 and int(final_straight["nonfinite_count"]) == 0
    assert_trees_equal(final_resumed, final_straight, "resumed vs straight")

    # The loop chose each update's phase by the right update index: each group's optimizer counts the updates it
    # took, so after each iteration 'clip' has counted every update and 'new' those from update 5 on (hand counts
    # above). An index counted as the iteration, or off by one, starts 'new' an iteration late or early.
    def counts(state, group):
        return {int(x) for p, x in jax.tree_util.tree_leaves_with_path(state["opt_state"])
                if f"inner_states['{group}']" in jax.tree_util.keystr(p) and jax.tree_util.keystr(p).endswith("count")}

    by_iteration = {k: restore(setup, straight, k) for k in range(1, 7)}
    assert {k: (counts(s, "clip"), counts(s, "new")) for k, s in by_iteration.items()} == {
        k: ({UPDATES_DONE[k]}, {max(UPDATES_DONE[k] - 5, 0)}) for k in range(1, 7)}
    # held until then: the 'new' group's parameters after iteration 2 are the trainer's random init, bit for bit
    new = lambda state: group_leaves(state["params"], setup.labels, "new")
    initial = jax.device_get(init_state(make_setup(config), train.run_rngs(config)[0]))  # on the trainer's mesh
    assert_trees_equal(new(by_iteration[3]), new(initial), "'new' group after iteration 2")
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(new(by_iteration[4])), jax.tree.leaves(new(initial)))]
    assert max(moved) > 0


@pytest.mark.slow
def test_nonfinite_loss_at_the_first_update_stops_the_run_before_its_checkpoint(tmp_path):
    config = tiny_config(total_steps=4, checkpoint_every=1, **{"loss.sort_weight": float("nan")})
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at update 0 \(iteration 0\).*"
                                                 r"Last good checkpoint: iteration None"):
        train.train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == []
    assert metric_rows(tmp_path) == []


@pytest.mark.slow
def test_a_nonfinite_loss_between_checks_stops_the_run_at_the_next_check_naming_its_update(tmp_path, monkeypatch):
    """log_every=3 and no checkpoint before the end: a NaN loss at update 1 is found at the check after iteration 3,
    which stops the run there (3 updates run, nothing logged, no checkpoint) and names update 1."""
    import tvts.data.pipeline
    import tvts.step

    real_sources, real_step, real_loss = tvts.data.pipeline.make_sources, tvts.step.make_train_step, Objective.loss
    updates = []

    def sources(*args, **kwargs):  # iteration 1's clips are black frames
        out = real_sources(*args, **kwargs)
        real_batch = out["transcribed"].batch
        out["transcribed"].batch = lambda i: ({**real_batch(i), "video": np.zeros_like(real_batch(i)["video"])}
                                              if i == 1 else real_batch(i))
        return out

    def loss(self, params, model, batch, keep):  # ... on which the loss is NaN (its gradient stays finite)
        total, metrics = real_loss(self, params, model, batch, keep)
        total = total + jnp.where(jnp.all(batch["video"] == 0), jnp.nan, 0.0)
        return total, {**metrics, "loss": total}

    def make_step(setup, kind):
        run = real_step(setup, kind)

        def counted(state, batch, rng, update=None):
            updates.append(update)
            return run(state, batch, rng, update)

        return counted

    monkeypatch.setattr(tvts.data.pipeline, "make_sources", sources)
    monkeypatch.setattr(tvts.step, "make_train_step", make_step)
    monkeypatch.setattr(Objective, "loss", loss)
    config = tiny_config(total_steps=6, log_every=3, checkpoint_every=6)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at update 1 \(iteration 1\).*"
                                                 r"Last good checkpoint: iteration None"):
        train.train_and_evaluate(config, str(tmp_path))
    assert updates == [0, 1, 2]
    assert os.listdir(tmp_path / "checkpoints") == []
    assert metric_rows(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# The run's record and the data it reads
# ----------------------------------------------------------------------------------------------
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
    changed = tiny_config(total_steps=1, **{"optim.eps": 1.0})
    assert train.record_config(changed, str(tmp_path)) == ["optim.eps", "total_steps"]
    assert sorted(os.listdir(tmp_path)) == ["config.1.json", "config.2.json", "config.json"]


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
