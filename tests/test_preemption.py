"""Preemption: SIGTERM saves a checkpoint at the next iteration and exits cleanly; `kill -9` at any moment (even
during an asynchronous orbax save) loses at most the iterations since the newest *complete* checkpoint. Either way a
relaunch continues with exactly the losses of an uninterrupted run.

Each run is a subprocess (one CPU device, the repo's persistent compilation cache) training tests/helpers.tiny_config
for TOTAL iterations. The moments of the signals are drawn from a seeded RNG, so a failure reproduces.
"""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp
import pytest
from helpers import REPO, one_device_env

pytestmark = pytest.mark.slow

TOTAL = 10  # iterations of every run here (the same curriculum and schedule for all, so losses compare)
TIMING_KEYS = ("clips_per_sec", "step_time", "mfu")
TMP_MARK = ".orbax-checkpoint-tmp"

DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from tvts.train import train_and_evaluate
train_and_evaluate(tiny_config(**json.loads(sys.argv[2])), sys.argv[1])
"""


def subprocess_env() -> dict:
    return one_device_env(PYTHONUNBUFFERED="1")


class Run:
    """One launch of the trainer on `workdir`; its stderr goes to workdir/../<name>.err."""

    def __init__(self, tmp: Path, workdir: Path, name: str, **overrides):
        driver = tmp / "driver.py"
        driver.write_text(DRIVER.format(tests=str(REPO / "tests")))
        self.err_path = tmp / f"{name}.err"
        self.metrics = workdir / "metrics.jsonl"
        self.lines_before = len(self.metrics.read_text().splitlines()) if self.metrics.exists() else 0
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(driver), str(workdir), json.dumps({"total_steps": TOTAL, **overrides})],
                cwd=tmp, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def logged_steps(self) -> list[int]:
        """Iterations this launch has logged so far."""
        if not self.metrics.exists():
            return []
        return [r["step"] for r in parse_metrics(self.metrics.read_text().splitlines()[self.lines_before:])]

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(s >= step for s in self.logged_steps()):
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (code {self.proc.returncode}) before iteration {step}:\n"
                                     f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"no iteration {step} after {timeout} s:\n{self.stderr[-3000:]}")
            time.sleep(0.02)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)
        assert self.proc.returncode == -signal.SIGKILL


def parse_metrics(lines) -> list[dict]:
    """The complete JSON lines (a line torn by kill -9 is left out)."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def resumed_at(stderr: str) -> int:
    lines = [line for line in stderr.splitlines() if line.startswith("resumed from ")]
    assert len(lines) == 1, stderr[-3000:]
    return int(lines[0].rsplit(" ", 1)[1])


def checkpoint_steps(workdir: Path) -> tuple[list[int], list[str]]:
    """(finalized checkpoint steps, names of unfinished checkpoint directories) in workdir/checkpoints."""
    root = workdir / "checkpoints"
    final, partial = [], []
    for d in (root.iterdir() if root.exists() else ()):
        if d.name.isdigit() and ocp.step.is_path_finalized(d):
            final.append(int(d.name))
        elif d.name.isdigit() or TMP_MARK in d.name:
            partial.append(d.name)
    return sorted(final), sorted(partial)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """An uninterrupted run: its metrics by iteration."""
    tmp = tmp_path_factory.mktemp("reference")
    run = Run(tmp, tmp / "work", "reference", checkpoint_every=TOTAL)
    assert run.wait() == 0, run.stderr[-3000:]
    records = parse_metrics(run.metrics.read_text().splitlines())
    assert [r["step"] for r in records] == list(range(1, TOTAL + 1))
    return {r["step"]: without_timing(r) for r in records}


def assert_same_as_reference(workdir: Path, reference: dict[int, dict]) -> list[int]:
    """Every line of the workdir's metrics.jsonl, whichever launch wrote it, equals the uninterrupted run's."""
    records = parse_metrics((workdir / "metrics.jsonl").read_text().splitlines())
    for r in records:
        assert without_timing(r) == reference[r["step"]], r["step"]
    return [r["step"] for r in records]


def test_sigterm_saves_at_the_iteration_it_stops_and_resumes_to_the_same_losses(tmp_path, reference):
    rng = random.Random(20261205)
    k = rng.randint(2, TOTAL - 5)
    workdir = tmp_path / "work"
    run = Run(tmp_path, workdir, "first", checkpoint_every=3)
    run.wait_for_step(k)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr[-3000:]
    stops = [line for line in run.stderr.splitlines() if line.startswith("SIGTERM: saved a checkpoint at iteration")]
    assert len(stops) == 1, run.stderr[-3000:]
    stopped = int(stops[0].split("iteration ")[1].split()[0])
    assert k <= stopped < TOTAL
    assert max(run.logged_steps()) == stopped
    final, partial = checkpoint_steps(workdir)
    assert final[-1] == stopped and not partial, (final, partial)
    assert not (workdir / "final_metrics.json").exists()  # a preempted run does not evaluate

    again = Run(tmp_path, workdir, "second", checkpoint_every=3)
    assert again.wait() == 0, again.stderr[-3000:]
    assert resumed_at(again.stderr) == stopped
    assert again.logged_steps() == list(range(stopped + 1, TOTAL + 1))
    assert sorted(set(assert_same_as_reference(workdir, reference))) == list(range(1, TOTAL + 1))
    assert (workdir / "final_metrics.json").exists()


def test_kill9_at_random_moments_resumes_from_the_newest_complete_checkpoint(tmp_path, reference):
    """Saves at every iteration (asynchronous in orbax: arrays are written in the background into a tmp directory
    that is renamed when complete). A kill lands while such a save is in flight (again if the save completed before
    the signal did), then one at a random moment; each relaunch must resume from the newest finalized step, never
    from the partial one, and the last one runs to the end."""
    rng = random.Random(7)
    workdir = tmp_path / "work"
    ckpts = workdir / "checkpoints"
    moments = ["during a save"] * 3 + ["random"]
    launch, caught = 0, False
    while moments:
        moment = moments.pop(0)
        run = Run(tmp_path, workdir, f"launch{launch}", checkpoint_every=1)
        expected = checkpoint_steps(workdir)[0][-1] if launch else None
        run.wait_for_step((expected or 0) + 1 if launch else rng.randint(2, 4))
        if launch:
            assert resumed_at(run.stderr) == expected  # the newest finalized step, never a partial one
        launch += 1
        if moment == "during a save":  # once a checkpoint is complete: the moment the next save's tmp dir appears
            deadline = time.monotonic() + 120
            while not checkpoint_steps(workdir)[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            while not any(TMP_MARK in p.name for p in ckpts.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 1.0))  # a few iterations at most: the run must not end first
        assert run.proc.poll() is None, f"the run ended before the kill:\n{run.stderr[-3000:]}"
        run.kill9()
        final, partial = checkpoint_steps(workdir)
        assert final, "no complete checkpoint yet"
        if moment == "during a save" and partial:  # caught one: a partial checkpoint is on disk
            caught, moments = True, [m for m in moments if m != "during a save"]
    assert caught, "no kill landed during a save (no partial checkpoint directory was ever left behind)"

    expected = checkpoint_steps(workdir)[0][-1]
    last = Run(tmp_path, workdir, "last", checkpoint_every=1)
    assert last.wait() == 0, last.stderr[-3000:]
    assert resumed_at(last.stderr) == expected
    assert last.logged_steps() == list(range(expected + 1, TOTAL + 1))
    assert sorted(set(assert_same_as_reference(workdir, reference))) == list(range(1, TOTAL + 1))
    final, partial = checkpoint_steps(workdir)
    assert final[-1] == TOTAL and not partial, (final, partial)  # orbax cleared the killed saves' tmp directories
