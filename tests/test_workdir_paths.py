"""Workdirs anywhere: the files the trainer and evaluate write and read go through etils.epath, so `--workdir
gs://bucket/run` works; and a bad config is refused before anything is allocated or created, naming its field.

A gs:// workdir is simulated with etils.epath.testing.mock_epath: every epath call on `gs://bucket/...` is rewritten to
a temp folder. Orbax writes array data through tensorstore and asks google.cloud.storage about the bucket, neither of
which goes through epath, so a whole training run on a mocked gs:// cannot be tested here: the checkpoint manager is
tested on a local path, and for gs:// only that the path reaches orbax untouched (no os.path.abspath / resolve, which
would turn `gs://bucket/run` into `<cwd>/gs:/bucket/run`).
"""
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from etils.epath import testing as epath_testing
from helpers import tiny_config
from tensorboardX import record_writer
from tensorboardX.proto.event_pb2 import Event

from tvts import checkpoint, evaluate, train
from tvts import config as config_lib
from tvts.metric_writer import MetricWriter
from tvts.plots import plot_recall_curves

MOCKED = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rename", "replace", "rmtree",
          "stat", "walk")


class FakeBucket:
    """Maps gs://bucket/... onto `root`/bucket/... for every epath call; `touched` lists the gs:// paths used."""

    def __init__(self, root):
        self.root, self.touched = root, set()

    def local(self, path):
        path = os.fspath(path)
        if path.startswith("gs://"):
            self.touched.add(path)
            return os.path.join(str(self.root), path[len("gs://"):])
        return path

    def _mapped(self, original, path, *args, **kwargs):
        args = tuple(self.local(a) if isinstance(a, (str, os.PathLike)) else a for a in args)
        return original(self.local(path), *args, **kwargs)

    def _open(self, original, path, mode):
        local = self.local(path)
        if os.fspath(path).startswith("gs://") and any(c in mode for c in "wax"):  # GCS has no folders to create
            os.makedirs(os.path.dirname(local), exist_ok=True)
        return original(local, mode)

    def mock(self):
        return epath_testing.mock_epath(**{name: self._mapped for name in MOCKED}, open=self._open)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A fake gs:// bucket under tmp_path/gcs, with an empty current directory that must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # MetricWriter registers its epath writer for gs:// event files with tensorboardX: undone after the test
    monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", record_writer.REGISTERED_FACTORIES["gs"])
    fake = FakeBucket(tmp_path / "gcs")
    with fake.mock():
        yield fake
    assert os.listdir(cwd) == [], "something was written under the current directory"


def event_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file (TFRecord: length, crc, Event proto, crc)."""
    data, out, at = path.read_bytes(), {}, 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_record_config_and_evaluate_read_it_through_epath(bucket):
    run = "gs://bucket/run"
    assert train.record_config(tiny_config(), run) == []
    assert train.record_config(tiny_config(total_steps=7), run) == ["total_steps"]
    folder = bucket.root / "bucket" / "run"
    assert sorted(p.name for p in folder.iterdir()) == ["config.1.json", "config.json"]
    assert json.loads((folder / "config.1.json").read_text())["total_steps"] == 4
    config = evaluate.run_config(run)
    assert config.total_steps == 7 and config.data.transcribed_batch == 8
    with pytest.raises(FileNotFoundError, match="gs://bucket/elsewhere/config.json"):
        evaluate.run_config("gs://bucket/elsewhere")


def test_metric_writer_files_go_to_the_bucket(bucket):
    writer = MetricWriter("gs://bucket/run")
    writer.scalars(1, {"transcribed/loss": 2.5, "clips_per_sec": 10.0})
    writer.scalars(2, {"transcribed/loss": 2.0, "clips_per_sec": 11.0})
    writer.plot_history({"transcribed/loss": [(1, 2.5), (2, 2.0)]})
    writer.write_json("final_metrics.json", {"heldout/t2v_r1": 0.5})
    writer.close()
    plot_recall_curves({"trained": np.array([10.0, 30.0, 60.0])}, epath.Path("gs://bucket/run") / "heldout.png")

    folder = bucket.root / "bucket" / "run"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["transcribed/loss"]) for r in records] == [(1, 2.5), (2, 2.0)]
    assert json.loads((folder / "final_metrics.json").read_text()) == {"heldout/t2v_r1": 0.5}
    for png in ("training_curves.png", "heldout.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (events,) = (folder / "tensorboard").iterdir()  # through the epath factory, not tensorboardX's own gs:// writer
    assert events.name.startswith("events.out.tfevents.")
    assert event_scalars(events)["transcribed/loss"] == [(1, 2.5), (2, 2.0)]
    assert {p for p in bucket.touched if p.startswith("gs://bucket/run/tensorboard/events.")}

    # a relaunch after a kill -9 that tore the last line starts on a line of its own
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "transcr')
    writer = MetricWriter("gs://bucket/run", tensorboard=False)
    writer.scalars(3, {"transcribed/loss": 1.5})
    writer.close()
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert lines[-2] == '{"step": 3, "transcr' and json.loads(lines[-1]) == {"step": 3, "transcribed/loss": 1.5}


def test_checkpointer_keeps_a_gs_directory_as_it_is(bucket, monkeypatch):
    seen = []

    class RecordingManager:  # orbax itself would ask google.cloud.storage about the bucket
        def __init__(self, directory, options=None, item_names=None):
            seen.append(directory)

    real_abspath = os.path.abspath

    def abspath(path):
        assert "gs:" not in os.fspath(path), f"os.path.abspath({path!r})"
        return real_abspath(path)

    monkeypatch.setattr(ocp, "CheckpointManager", RecordingManager)
    monkeypatch.setattr(os.path, "abspath", abspath)
    ckpt = checkpoint.Checkpointer(epath.Path("gs://bucket/run") / "checkpoints")
    assert str(ckpt.directory) == "gs://bucket/run/checkpoints"
    assert [str(d) for d in seen] == ["gs://bucket/run/checkpoints"]


def test_checkpointer_on_a_local_path_saves_restores_and_resolves_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(8.0), "step": jnp.asarray(3, jnp.int32)}
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)
    ckpt = checkpoint.Checkpointer("run/checkpoints", keep=2)
    assert str(ckpt.directory) == str(tmp_path / "run" / "checkpoints")  # orbax wants it absolute
    for step in (1, 2, 3):
        ckpt.save(step, state, {"iteration": step})
    ckpt.wait()
    ckpt.close()
    again = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")  # a relaunch
    assert again.latest_step() == 3
    assert ocp.step.is_path_finalized(again.directory / "3")
    assert sorted(p.name for p in again.directory.iterdir()) == ["2", "3"]  # keep=2
    restored, meta = again.restore(3, checkpoint.with_shardings(jax.eval_shape(lambda: state), shardings))
    again.close()
    assert meta == {"iteration": 3}
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))


# ----------------------------------------------------------------------------------------------
# A bad config fails before anything is allocated or created, naming the field
# ----------------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown data": ({"data.name": "webvid"}, ValueError, "config.data.name='webvid'"),
    "log_every 0": ({"log_every": 0}, ValueError, "config.log_every=0 must be positive"),
    "checkpoint_every 0": ({"checkpoint_every": 0}, ValueError, "config.checkpoint_every=0 must be positive"),
    "batch vs mesh": ({"data.transcribed_batch": 12}, ValueError,
                      "config.data.transcribed_batch=12 must be divisible by the data-parallel mesh size 8"),
    "batch vs grad_accum": ({"data.transcribed_batch": 8, "mesh.data": 4, "mesh.fsdp": 2, "grad_accum_steps": 3},
                            ValueError, "config.data.transcribed_batch=8 must be divisible by the data-parallel mesh "
                                        "size 8 (mesh.data x mesh.fsdp) x grad_accum_steps=3"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_bad_config_fails_before_anything_is_allocated(name, tmp_path, monkeypatch):
    overrides, error, message = BAD_CONFIGS[name]
    monkeypatch.chdir(tmp_path)
    config = tiny_config(**overrides)
    live = len(jax.live_arrays())
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.train_and_evaluate(config, tmp_path / "work")
    assert len(jax.live_arrays()) <= live
    assert os.listdir(tmp_path) == []  # not even the workdir


def test_a_batch_not_divisible_by_the_process_count_is_named():
    with pytest.raises(ValueError, match="config.data.transcribed_batch=8 must be divisible by the process count 3"):
        config_lib.validate(tiny_config(), num_devices=8, process_count=3)


@pytest.mark.parametrize("field", ["resume", "init"])
def test_a_missing_resume_or_init_path_is_named_and_not_created(field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "such" / "run"
    with pytest.raises(FileNotFoundError, match=f"config.{field}='{missing}' does not exist"):
        train.train_and_evaluate(tiny_config(**{field: str(missing)}), tmp_path / "work")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field", ["resume", "init"])
def test_resume_and_init_paths_on_gs_are_checked_through_epath(field, bucket):
    with pytest.raises(FileNotFoundError, match=f"config.{field}='gs://bucket/old' does not exist"):
        config_lib.validate(tiny_config(**{field: "gs://bucket/old"}))
    assert "gs://bucket/old" in bucket.touched and not (bucket.root / "bucket" / "old").exists()
    (bucket.root / "bucket" / "old").mkdir(parents=True)
    config_lib.validate(tiny_config(**{field: "gs://bucket/old"}))  # there: accepted
