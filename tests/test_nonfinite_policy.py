"""The non-finite policy (config.nonfinite): a non-finite loss or gradient skips its update and leaves the state bit
for bit as it was; 'skip' tolerates max_skipped such updates, one more stops the run; 'stop' stops at the first.

NaNs are injected at chosen updates by wrapping `Objective.loss` (inside the jitted step): a batch whose video is all
zeros (the synthetic corpus never draws one) gets its loss multiplied by NaN, so loss and gradient are non-finite.
"""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, batch_for, one_device_env, one_device_setup, tiny_config

from tvts import sharding, train
from tvts.objective import Objective
from tvts.state import init_state
from tvts.step import make_train_step


def poisoned_loss(original):
    def loss(self, params, model, batch, keep):
        total, metrics = original(self, params, model, batch, keep)
        factor = jnp.where(jnp.all(batch["video"] == 0), jnp.nan, 1.0)
        return total * factor, {**metrics, "loss": metrics["loss"] * factor}

    return loss


def poison(batch: dict) -> dict:
    return {**batch, "video": np.zeros_like(batch["video"])}


def host_copy(tree):
    """A numpy copy that outlives the donated device buffers."""
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def assert_trees_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_skip_keeps_the_state_bit_for_bit_and_stops_after_max_skipped(monkeypatch):
    monkeypatch.setattr(Objective, "loss", poisoned_loss(Objective.loss))
    config = tiny_config(total_steps=6, **{"nonfinite.policy": "skip", "nonfinite.max_skipped": 2})
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    step = make_train_step(setup, "transcribed")
    bad = {1, 3, 4}
    skipped = []
    for update in range(6):
        batch = batch_for(config, iteration=update)
        before = host_copy(state)
        state, metrics = step(state, sharding.global_batch(poison(batch) if update in bad else batch, setup.mesh),
                              jax.random.key(1), update=update)
        after = host_copy(state)
        assert int(after["step"]) == update + 1  # counts every update, skipped or not
        if update in bad:
            assert not np.isfinite(float(metrics["loss"]))
            assert_trees_equal(after["params"], before["params"])
            assert_trees_equal(after["opt_state"], before["opt_state"])
        else:
            assert np.isfinite(float(metrics["loss"]))
            assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(after["params"]),
                                                      jax.tree.leaves(before["params"])))
        assert int(after["nonfinite_step"]) == (1 if update >= 1 else -1)  # the first skipped update
        if update < 4:  # the host policy, as the loop applies it: two skips are allowed
            skipped.append(train.check_nonfinite(setup, state, latest_checkpoint=None))
        else:  # the third stops the run, naming the first update skipped and the count
            with pytest.raises(FloatingPointError, match=r"at update 1 \(iteration 1\) \(3 skipped, "
                                                         r"config.nonfinite.max_skipped=2\)"):
                train.check_nonfinite(setup, state, latest_checkpoint=4)
            break
    assert skipped == [0, 1, 1, 2]

    # 'stop' stops at the first: the same state (first skip at update 1) under the stop policy
    stop = dataclasses.replace(setup, config=tiny_config(total_steps=6))
    assert stop.config.nonfinite.policy == "stop"
    with pytest.raises(FloatingPointError, match=r"at update 1 \(iteration 1\).*Last good checkpoint: iteration 4"):
        train.check_nonfinite(stop, state, latest_checkpoint=4)


def test_stop_policy_stops_at_the_first_nonfinite_update(monkeypatch):
    monkeypatch.setattr(Objective, "loss", poisoned_loss(Objective.loss))
    config = tiny_config(total_steps=4)  # policy 'stop' is the default
    setup = one_device_setup(config)
    state = init_state(setup, jax.random.key(0))
    step = make_train_step(setup, "transcribed")
    state, _ = step(state, sharding.global_batch(batch_for(config, iteration=0), setup.mesh), jax.random.key(1),
                    update=0)
    assert train.check_nonfinite(setup, state, None) == 0
    state, _ = step(state, sharding.global_batch(poison(batch_for(config, iteration=1)), setup.mesh),
                    jax.random.key(1), update=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at update 1 \(iteration 1\)"):
        train.check_nonfinite(setup, state, None)


# ----------------------------------------------------------------------------------------------
# The whole loop: a subprocess (one CPU device) whose data source poisons chosen iterations
# ----------------------------------------------------------------------------------------------
DRIVER = """
import json, sys
import jax.numpy as jnp
import numpy as np
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from tvts.data import pipeline
from tvts.objective import Objective
from tvts.train import train_and_evaluate

bad = set(json.loads(sys.argv[3]))
original_loss, original_sources = Objective.loss, pipeline.make_sources

def loss(self, params, model, batch, keep):
    total, metrics = original_loss(self, params, model, batch, keep)
    factor = jnp.where(jnp.all(batch["video"] == 0), jnp.nan, 1.0)
    return total * factor, {{**metrics, "loss": metrics["loss"] * factor}}

def make_sources(*args, **kwargs):
    sources = original_sources(*args, **kwargs)
    for source in sources.values():
        def batch(i, clean=source.batch):
            b = clean(i)
            return {{**b, "video": np.zeros_like(b["video"])}} if i in bad else b
        source.batch = batch
    return sources

Objective.loss, pipeline.make_sources = loss, make_sources
train_and_evaluate(tiny_config(**json.loads(sys.argv[2])), sys.argv[1])
"""


@pytest.mark.slow
def test_the_loop_logs_skipped_updates_and_stops_at_the_third(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(REPO / "tests")))
    env = one_device_env()
    overrides = {"total_steps": 8, "checkpoint_every": 1, "nonfinite.policy": "skip", "nonfinite.max_skipped": 2}
    workdir = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(driver), str(workdir), json.dumps(overrides), json.dumps([1, 3, 5])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert ("FloatingPointError: non-finite loss or gradient at update 1 (iteration 1) (3 skipped, "
            "config.nonfinite.max_skipped=2)") in proc.stderr, proc.stderr[-3000:]
    assert "Last good checkpoint: iteration 5" in proc.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # the run went on past two skipped updates, logging them, and stopped at the third before logging it
    assert [(r["step"], r["nonfinite_skipped"]) for r in records] == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert [np.isfinite(r["transcribed/loss"]) for r in records] == [True, False, True, False, True]
    # no checkpoint after the check that stopped the run
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())[-1] == 5
