"""Multi-process initialisation and the local launcher (the TPU pod launcher: tests/test_tpu_pod.py).

- Settings parsing: partial settings name the missing variable.
- Two real JAX processes on localhost (2 x 2 CPU devices) via launch/local.py compute a cross-process
  sum that is checked against NumPy; a failing child / Ctrl-C stop the other children.
Every subprocess has a timeout, so a hang fails the test instead of stalling the suite.
"""
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import _dist_worker as worker  # tests/ is on sys.path, as for helpers
import numpy as np
import pytest
from helpers import finish_launcher

from launch import local  # the repo root is on sys.path (pytest.ini's pythonpath)
from tvts import distributed

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "launch" / "local.py"
WORKER = REPO / "tests" / "_dist_worker.py"
TIMEOUT = 120
TVTS_VARS = (distributed.ENV_COORDINATOR_ADDRESS, distributed.ENV_NUM_PROCESSES,
             distributed.ENV_PROCESS_ID, distributed.ENV_LOCAL_DEVICE_COUNT)


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in TVTS_VARS}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _start(args: list[str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
  return finish_launcher(proc, timeout, grace=15)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


# ---------------------------------------------------------------------------------------------------
# (a) settings from arguments and environment
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, missing", [
    ({"TVTS_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, ["TVTS_NUM_PROCESSES", "TVTS_PROCESS_ID"]),
    ({"TVTS_COORDINATOR_ADDRESS": "127.0.0.1:1234", "TVTS_NUM_PROCESSES": "2"}, ["TVTS_PROCESS_ID"]),
    ({"TVTS_NUM_PROCESSES": "2", "TVTS_PROCESS_ID": "1"}, ["TVTS_COORDINATOR_ADDRESS"]),
    ({"TVTS_PROCESS_ID": "0"}, ["TVTS_COORDINATOR_ADDRESS", "TVTS_NUM_PROCESSES"]),
])
def test_partial_settings_name_missing_variable(env, missing):
  with pytest.raises(ValueError) as e:
    distributed.resolve_settings(env=env)
  for name in missing:
    assert name in str(e.value)
  for name in set(TVTS_VARS) - set(missing) - set(env):
    assert f"missing {name}" not in str(e.value)


def test_partial_settings_from_arguments_and_initialize(monkeypatch):
  for var in TVTS_VARS:
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(ValueError, match="TVTS_PROCESS_ID"):
    distributed.resolve_settings(coordinator_address="10.0.0.1:8476", num_processes=4)
  monkeypatch.setenv("TVTS_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  with pytest.raises(ValueError, match="TVTS_NUM_PROCESSES.*TVTS_PROCESS_ID"):
    distributed.initialize()  # Fails before touching jax.distributed.


@pytest.mark.parametrize("env, match", [
    ({"TVTS_COORDINATOR_ADDRESS": "h:1", "TVTS_NUM_PROCESSES": "two", "TVTS_PROCESS_ID": "0"},
     "TVTS_NUM_PROCESSES must be an integer"),
    ({"TVTS_COORDINATOR_ADDRESS": "h:1", "TVTS_NUM_PROCESSES": "2", "TVTS_PROCESS_ID": "2"},
     r"TVTS_PROCESS_ID must be in \[0, 2\)"),
    ({"TVTS_COORDINATOR_ADDRESS": "no-port", "TVTS_NUM_PROCESSES": "2", "TVTS_PROCESS_ID": "0"},
     "host:port"),
    ({"TVTS_LOCAL_DEVICE_COUNT": "0"}, "TVTS_LOCAL_DEVICE_COUNT must be >= 1"),
])
def test_invalid_settings(env, match):
  with pytest.raises(ValueError, match=match):
    distributed.resolve_settings(env=env)


def test_settings_resolution():
  full = {"TVTS_COORDINATOR_ADDRESS": "127.0.0.1:1234", "TVTS_NUM_PROCESSES": "2",
          "TVTS_PROCESS_ID": "1", "TVTS_LOCAL_DEVICE_COUNT": "4"}
  assert distributed.resolve_settings(env=full) == distributed.Settings("explicit", "127.0.0.1:1234", 2, 1, 4)
  # Arguments override the environment, field by field.
  assert distributed.resolve_settings(process_id=0, local_device_count=2, env=full) == \
      distributed.Settings("explicit", "127.0.0.1:1234", 2, 0, 2)
  assert distributed.resolve_settings(env={}).mode == "single"
  assert distributed.resolve_settings(env={"TVTS_NUM_PROCESSES": "1"}).mode == "single"
  assert distributed.resolve_settings(env={"TVTS_LOCAL_DEVICE_COUNT": "3"}) == \
      distributed.Settings("single", local_device_count=3)
  assert distributed.resolve_settings(env={"TPU_WORKER_HOSTNAMES": "a,b"}).mode == "tpu"
  assert distributed.resolve_settings(env={"TPU_ACCELERATOR_TYPE": "v5p-256"}).mode == "tpu"


def test_xla_flag_rewrite():
  assert distributed.set_xla_device_count_flag("", 2) == "--xla_force_host_platform_device_count=2"
  assert distributed.set_xla_device_count_flag(
      "--xla_foo=1 --xla_force_host_platform_device_count=8", 4) == \
      "--xla_foo=1 --xla_force_host_platform_device_count=4"


def test_device_count_after_backend_start(monkeypatch):
  """In this (already initialised, 8-device) process a different count is a clear error."""
  import jax
  for var in TVTS_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "_initialized_with", None)
  have = len(jax.local_devices(backend="cpu"))
  with pytest.raises(RuntimeError, match=f"TVTS_LOCAL_DEVICE_COUNT={have + 1}.*already initialised "
                                         f"with {have}"):
    distributed.initialize(local_device_count=have + 1)
  distributed.initialize(local_device_count=have)  # Matching count: fine, single process: no-op.
  distributed.initialize()  # Repeated call: no-op.
  assert jax.process_count() == 1 and distributed.is_main_process()
  assert distributed.describe() == f"process 0/1 | local devices {have} (cpu) | global devices {have}"


def test_local_child_env():
  env = local.child_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1",
                         "TVTS_LOCAL_DEVICE_COUNT": "8"}, port=1234, num_processes=3, process_id=2,
                        devices_per_process=2, platform="cpu")
  assert env["TVTS_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
  assert (env["TVTS_NUM_PROCESSES"], env["TVTS_PROCESS_ID"], env["TVTS_LOCAL_DEVICE_COUNT"]) == ("3", "2", "2")
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
  assert env["JAX_PLATFORMS"] == "cpu"
  env = local.child_env({"TVTS_LOCAL_DEVICE_COUNT": "8", "https_proxy": "http://proxy:3128"}, port=1,
                        num_processes=1, process_id=0, devices_per_process=None, platform="")
  assert "TVTS_LOCAL_DEVICE_COUNT" not in env and "JAX_PLATFORMS" not in env
  assert "127.0.0.1" in env["no_proxy"].split(",")


# ---------------------------------------------------------------------------------------------------
# (b) a real 2-process job on localhost
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_cross_process_sum():
  rc, out, err = _finish(_start([str(LOCAL), "--num_processes", "2", "--devices_per_process", "2", "--",
                                 sys.executable, str(WORKER), "--mode", "sum", "--expect_processes", "2",
                                 "--expect_devices", "4"]))
  assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
  data = np.concatenate([worker.local_data(p, 2) for p in range(2)]).astype(np.int64)
  total, weighted = data.sum(), (data * np.arange(len(data))[:, None]).sum()
  for p in range(2):
    assert f"[p{p}] RESULT {total} {weighted}" in out.splitlines(), out
    assert f"[p{p}] DESCRIBE process {p}/2 | local devices 2 (cpu) | global devices 4" in out.splitlines()
    # the children compile into the tests' persistent cache (tests/conftest.py passes it through the environment)
    assert f"[p{p}] CACHE {os.environ['JAX_COMPILATION_CACHE_DIR']}" in out.splitlines()


# ---------------------------------------------------------------------------------------------------
# (c) failures and Ctrl-C stop every child
# ---------------------------------------------------------------------------------------------------
def test_failing_child_stops_the_others(tmp_path):
  start = time.monotonic()
  rc, out, err = _finish(_start([str(LOCAL), "--num_processes", "2", "--devices_per_process", "2", "--",
                                 sys.executable, str(WORKER), "--mode", "fail", "--pid_dir",
                                 str(tmp_path)]))
  assert rc == 3, f"stdout:\n{out}\nstderr:\n{err}"
  assert time.monotonic() - start < 60  # Process 0 would wait minutes for process 1 in initialize().
  assert "[p1] failing on purpose" in out and "UNREACHABLE" not in out
  assert "process 1 exited with code 3" in err
  assert not _alive(int((tmp_path / "p0.pid").read_text()))


def test_ctrl_c_stops_all_children(tmp_path):
  proc = _start([str(LOCAL), "--num_processes", "2", "--", sys.executable, str(WORKER), "--mode", "sleep",
                 "--pid_dir", str(tmp_path)])
  # Raw reads on the pipe: select() on the buffered text stream misses a line that arrived in the same
  # read as the previous one (it sits in Python's buffer, not in the pipe).
  fd, seen, deadline = proc.stdout.fileno(), "", time.monotonic() + TIMEOUT
  while seen.count("READY") < 2 and time.monotonic() < deadline:
    if select.select([fd], [], [], 1.0)[0]:
      chunk = os.read(fd, 4096)
      if not chunk:
        break
      seen += chunk.decode()
  assert seen.count("READY") == 2, seen
  proc.send_signal(signal.SIGINT)
  rc, out, err = _finish(proc, timeout=60)
  assert rc == 128 + signal.SIGINT, err
  assert "received SIGINT" in err
  for p in range(2):
    assert not _alive(int((tmp_path / f"p{p}.pid").read_text()))


def test_local_launcher_needs_a_command():
  proc = subprocess.run([sys.executable, str(LOCAL), "--num_processes", "2"], capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "missing command" in proc.stderr
