"""Two real JAX processes on localhost (4 CPU devices each) train, checkpoint and resume together, and compute what one
process with the same 8 devices and the same global batch computes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import finish_launcher

from tvts import train
from tvts.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/demo.py:eval=False"
# The demo, small: one source, one phase (every group and term from the first update), a constant learning rate.
OVERRIDES = {"log_every": 1, "checkpoint_every": 2, "model.num_frames": 4, "data.transcribed_batch": 8,
             "data.sources": ("transcribed",), "data.source_start.transcribed": 0.0, "data.context_length": 16,
             "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.group_start.text": 0.0,
             "loss.transcribed_contrastive_start": 0.0}
RUN_TIMEOUT = 240  # per launch (about 30 s each here): two launches stay inside pytest.ini's 600 s per test
LOSSES = ("transcribed/loss", "transcribed/contrastive_loss", "transcribed/sort_loss", "transcribed/grad_norm")


def run_pair(workdir: Path, steps: int) -> str:
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    command = [sys.executable, str(REPO / "launch" / "local.py"), "--num_processes", "2", "--devices_per_process", "4",
               "--", sys.executable, "-m", "tvts.train", "--config", CONFIG, "--workdir", str(workdir),
               f"--config.total_steps={steps}", *flags]
    # the children inherit JAX_COMPILATION_CACHE_DIR (tests/conftest.py): they share the tests' compilation cache
    assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    returncode, out, err = finish_launcher(proc, RUN_TIMEOUT)
    assert returncode == 0, out[-3000:] + err[-3000:]
    return out + err


def rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
    pair, single = tmp_path / "pair", tmp_path / "single"
    first = run_pair(pair, steps=2)
    assert "[p0] process 0/2 | local devices 4 (cpu) | global devices 8" in first
    assert "[p1]" in first and "process 1/2" not in first  # only process 0 logs
    assert (pair / "checkpoints" / "2").is_dir()

    second = run_pair(pair, steps=3)
    assert f"[p0] resumed from {pair / 'checkpoints'} at iteration 2" in second
    got = rows(pair)
    assert [r["step"] for r in got] == [1, 2, 3]  # written once, by process 0
    assert (pair / "checkpoints" / "3").is_dir()

    # The same run in this process: one process, the same 8 devices, the same global batch of 8.
    config = apply_overrides(load_config(CONFIG), {**OVERRIDES, "total_steps": 3})
    train.train_and_evaluate(config, str(single))
    want = rows(single)
    assert [r["step"] for r in want] == [1, 2, 3]
    for g, w in zip(got, want):
        assert {k: g[k] for k in LOSSES} == pytest.approx({k: w[k] for k in LOSSES}, rel=1e-5), g["step"]
    assert got[2]["transcribed/loss"] != got[0]["transcribed/loss"]  # it trained: the losses are not one value
