"""Multi-process initialisation and the launchers.

- The TPU pod launcher is only dry-run (its argument lists are asserted); the remote shell commands
  it builds are also executed locally with bash, with $HOME pointed at a temporary directory.
- Settings parsing: partial settings name the missing variable.
- Two real JAX processes on localhost (2 x 2 CPU devices) via launch/local.py compute a cross-process
  sum that is checked against NumPy; a failing child / Ctrl-C stop the other children.
Every subprocess has a timeout, so a hang fails the test instead of stalling the suite.
"""
import importlib.util
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tvts import distributed

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "launch" / "local.py"
POD = REPO / "launch" / "tpu_pod.py"
WORKER = REPO / "tests" / "_dist_worker.py"
TIMEOUT = 120
TVTS_VARS = (distributed.ENV_COORDINATOR_ADDRESS, distributed.ENV_NUM_PROCESSES,
             distributed.ENV_PROCESS_ID, distributed.ENV_LOCAL_DEVICE_COUNT)


def _load(path: Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_pod = _load(POD, "tvts_launch_tpu_pod")
local = _load(LOCAL, "tvts_launch_local")
worker = _load(WORKER, "tvts_dist_worker")


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in TVTS_VARS}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _start(args: list[str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
  """Waits for the launcher; on timeout SIGTERMs it (it stops its children), then kills it."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    try:
      out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      out, err = proc.communicate()
    pytest.fail(f"timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
  return proc.returncode, out, err


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


# ---------------------------------------------------------------------------------------------------
# (a) TPU pod launcher: dry runs
# ---------------------------------------------------------------------------------------------------
GC = ["gcloud", "compute", "tpus", "tpu-vm"]
LOC = ["--zone=us-east5-a", "--project=my-proj"]
COMMON = ["--name", "pod", "--zone", "us-east5-a", "--project", "my-proj"]


def _dry_run(argv: list[str]) -> list[list[str]]:
  # --dry_run right after the subcommand: anything after '--' belongs to the remote command.
  proc = subprocess.run([sys.executable, str(POD), argv[0], "--dry_run", *argv[1:]], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _remote(cmd: list[str]) -> str:
  (flag,) = [a for a in cmd if a.startswith("--command=")]
  return flag[len("--command="):]


@pytest.mark.parametrize("accelerator, flags, version, extra", [
    ("v5p-256", ["--spot"], "v2-alpha-tpuv5", ["--spot"]),
    ("v4-512", ["--reserved"], "tpu-ubuntu2204-base", ["--reserved"]),
    ("v5litepod-256", ["--version", "my-runtime", "--internal_ips"], "my-runtime", ["--internal-ips"]),
])
def test_pod_create(accelerator, flags, version, extra):
  cmds = _dry_run(["create", *COMMON, "--accelerator_type", accelerator, *flags])
  assert cmds == [GC + ["create", "pod", *LOC, f"--accelerator-type={accelerator}", f"--version={version}",
                        *extra]]


def test_pod_create_rejects_spot_and_reserved():
  proc = subprocess.run([sys.executable, str(POD), "create", *COMMON, "--accelerator_type", "v4-8",
                         "--spot", "--reserved", "--dry_run"], capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "mutually exclusive" in proc.stderr


def test_pod_setup_copy():
  cmds = _dry_run(["setup", *COMMON, "--local_dir", "/src/tvts"])
  assert len(cmds) == 3
  tar, scp, ssh = cmds
  assert tar[:2] == ["tar", "-czf"] and tar[-3:] == ["-C", "/src/tvts", "."]
  assert "--exclude=.git" in tar
  tarball = tar[2]
  assert scp == GC + ["scp", tarball, "pod:tvts-src.tar.gz", *LOC, "--worker=all"]
  assert ssh[:-1] == GC + ["ssh", "pod", *LOC, "--worker=all"]
  remote = _remote(ssh)
  assert 'tar -xzf "$HOME"/tvts-src.tar.gz -C "$HOME"/tvts' in remote
  assert "python3 -m pip install --upgrade 'jax[tpu]>=0.10,<0.11' -e \"$HOME\"/tvts" in remote


def test_pod_setup_git():
  (ssh,) = _dry_run(["setup", *COMMON, "--source", "git", "--repo_url", "https://example.com/tvts.git",
                     "--ref", "v0.1.0", "--internal_ip"])
  assert ssh[:-1] == GC + ["ssh", "pod", *LOC, "--worker=all", "--internal-ip"]
  remote = _remote(ssh)
  assert 'git clone https://example.com/tvts.git "$HOME"/tvts' in remote
  assert 'git -C "$HOME"/tvts fetch --tags origin v0.1.0' in remote
  assert "checkout --detach FETCH_HEAD" in remote and "-e \"$HOME\"/tvts" in remote


def test_pod_run_logs_stop_ssh_delete():
  train = ["python3", "-m", "tvts.train", "--config", "configs/pretrain.py:variant=B/16", "--workdir",
           "gs://bucket/run1"]
  (run,) = _dry_run(["run", *COMMON, "--env", "FOO=a b", "--", *train])
  assert run[:-1] == GC + ["ssh", "pod", *LOC, "--worker=all"]
  remote = _remote(run)
  assert remote.startswith('mkdir -p "$HOME"/tvts_logs && tmux new-session -d -s tvts bash -c ')
  # The tmux job, unquoted once, holds the command and its per-worker log file.
  job = shlex.split(remote.split(" bash -c ", 1)[1])[0]
  assert f"cd \"$HOME\"/tvts && export FOO='a b' && {shlex.join(train)};" in job
  assert '> "$HOME"/tvts_logs/tvts.$(hostname).log 2>&1' in job
  assert "TVTS_" not in remote  # JAX autodetects the pod: no coordinator env on TPU.

  (logs,) = _dry_run(["logs", *COMMON, "--worker", "3", "--follow"])
  assert logs == GC + ["ssh", "pod", *LOC, "--worker=3",
                       '--command=tail -n 100 -F "$HOME"/tvts_logs/tvts.$(hostname).log']
  (stop,) = _dry_run(["stop", *COMMON])
  assert stop[:-1] == GC + ["ssh", "pod", *LOC, "--worker=all"]
  assert _remote(stop).startswith("tmux kill-session -t tvts")
  assert _dry_run(["ssh", *COMMON, "--worker", "2"]) == [GC + ["ssh", "pod", *LOC, "--worker=2"]]
  assert _dry_run(["ssh", *COMMON, "--", "nproc"]) == [GC + ["ssh", "pod", *LOC, "--worker=0",
                                                             "--command=nproc"]]
  assert _dry_run(["delete", *COMMON, "--yes"]) == [GC + ["delete", "pod", *LOC, "--quiet"]]


def test_pod_defaults_from_env_and_missing_name():
  env = _env() | {"TVTS_TPU_NAME": "envpod", "TVTS_TPU_ZONE": "europe-west4-a"}
  env.pop("TVTS_TPU_PROJECT", None)
  out = subprocess.run([sys.executable, str(POD), "delete", "--dry_run"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert shlex.split(out.stdout) == GC + ["delete", "envpod", "--zone=europe-west4-a"]
  env.pop("TVTS_TPU_NAME")
  out = subprocess.run([sys.executable, str(POD), "delete", "--dry_run"], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and "--name is required" in out.stderr


@pytest.mark.parametrize("mode", ["foreground", "nohup"])
def test_pod_run_remote_command_executes(tmp_path, mode):
  """The remote shell string really runs (bash, $HOME = tmp): quoting, env, log file, exit code."""
  (tmp_path / "tvts").mkdir()
  (run,) = tpu_pod.build_commands(
      ["run", *COMMON, "--mode", mode, "--env", "MSG=it's a b", "--",
       sys.executable, "-c", "import os; print('msg=' + os.environ['MSG'])"])
  env = _env() | {"HOME": str(tmp_path)}
  proc = subprocess.run(["bash", "-c", _remote(run)], env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  (log,) = (tmp_path / "tvts_logs").glob("tvts.*.log")
  deadline = time.monotonic() + 60
  while mode == "nohup" and "exit code" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert "msg=it's a b" in log.read_text()
  if mode == "nohup":
    assert "[tvts] exit code 0" in log.read_text()
    assert not list((tmp_path / "tvts_logs").glob("*.pid"))  # Removed when the job ended.
  else:
    assert "msg=it's a b" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# (b) settings from arguments and environment
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
# (c) a real 2-process job on localhost
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# (d) failures and Ctrl-C stop every child
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
