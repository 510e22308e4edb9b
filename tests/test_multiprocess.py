"""Two real JAX processes on localhost (4 CPU devices each) train, checkpoint and resume together."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pair(workdir: Path, steps: int) -> str:
    command = [sys.executable, str(REPO / "launch" / "local.py"), "--num_processes", "2", "--devices_per_process", "4",
               "--", sys.executable, "-m", "tvts.train", "--config", "configs/pretrain.py:eval=False",
               "--workdir", str(workdir), f"--config.total_steps={steps}", "--config.log_every=1",
               "--config.checkpoint_every=2", "--config.model.num_frames=4", "--config.data.transcribed_batch=8",
               "--config.data.sources=('transcribed',)",
               "--config.data.source_start.transcribed=0.0", "--config.data.context_length=16",
               "--config.optim.schedule=constant", "--config.optim.warmup_steps=0"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    first = run_pair(tmp_path, steps=2)
    assert "[p0] process 0/2 | local devices 4 (cpu) | global devices 8" in first
    assert "[p1]" in first and "process 1/2" not in first  # only process 0 logs
    assert (tmp_path / "checkpoints" / "2").is_dir()

    second = run_pair(tmp_path, steps=3)
    assert "resumed from" in second and "at iteration 2" in second
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once, by process 0
    assert all(0 < r["transcribed/loss"] < 20 for r in rows)
    assert (tmp_path / "checkpoints" / "3").is_dir()
