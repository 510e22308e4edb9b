#!/usr/bin/env python3
"""Runs N copies of a command on localhost as one multi-process JAX job (CPU).

    python launch/local.py --num_processes 2 --devices_per_process 4 -- \
        python -m tvts.train --config configs/pretrain.py:variant=tiny --workdir /tmp/run

Each copy gets TVTS_COORDINATOR_ADDRESS=127.0.0.1:PORT, TVTS_NUM_PROCESSES=N, TVTS_PROCESS_ID=i and
(with --devices_per_process) TVTS_LOCAL_DEVICE_COUNT plus a matching XLA_FLAGS device count;
`tvts.distributed.initialize()` in the command picks these up. Output lines are prefixed `[p<i>]`.
The launcher waits for all copies, exits with the first non-zero exit code (128+signal for a copy
killed by a signal), and stops the other copies as soon as one fails or on Ctrl-C / SIGTERM.
Standard library only, so it runs without the project installed.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port that is free right now (the coordinator binds it on all interfaces)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def child_env(base: dict[str, str], *, port: int, num_processes: int, process_id: int,
              devices_per_process: int | None, platform: str) -> dict[str, str]:
  """The environment of copy ``process_id``."""
  env = dict(base)
  env.update({
      "TVTS_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "TVTS_NUM_PROCESSES": str(num_processes),
      "TVTS_PROCESS_ID": str(process_id),
      "PYTHONUNBUFFERED": "1",  # Lines appear as they are printed, not at exit.
  })
  if devices_per_process is not None:
    env["TVTS_LOCAL_DEVICE_COUNT"] = str(devices_per_process)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG + "=")]
    env["XLA_FLAGS"] = " ".join(flags + [f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
  else:
    env.pop("TVTS_LOCAL_DEVICE_COUNT", None)
  if platform:
    env["JAX_PLATFORMS"] = platform
  # gRPC to the coordinator must not go through an HTTP proxy (a classic multi-process hang). Only
  # touched when a proxy is configured: JAX warns about any *_proxy variable, no_proxy included.
  if any(k.lower() in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy") for k in env):
    for key in ("no_proxy", "NO_PROXY"):
      entries = [e for e in env.get(key, "").split(",") if e]
      env[key] = ",".join(entries + [h for h in ("127.0.0.1", "localhost") if h not in entries])
  return env


class _Printer:
  """Copies one child's output to our stdout, line by line, with a prefix."""

  def __init__(self, prefix: str, stream, lock: threading.Lock):
    self._thread = threading.Thread(target=self._pump, args=(prefix.encode(), stream, lock), daemon=True)
    self._thread.start()

  @staticmethod
  def _pump(prefix: bytes, stream, lock: threading.Lock) -> None:
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
      if not line.endswith(b"\n"):
        line += b"\n"
      with lock:
        out.write(prefix + line)
        out.flush()
    stream.close()

  def join(self, timeout: float) -> None:
    self._thread.join(timeout)


def _exit_code(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
  """SIGTERM each running child's process group, then SIGKILL whatever outlives ``grace`` s."""
  def signal_all(sig):
    for p in procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass
  signal_all(signal.SIGTERM)
  deadline = time.monotonic() + grace
  while time.monotonic() < deadline and any(p.poll() is None for p in procs):
    time.sleep(0.05)
  signal_all(signal.SIGKILL)
  for p in procs:
    p.wait()


class _Interrupted(Exception):
  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def launch(command: list[str], *, num_processes: int, devices_per_process: int | None = None,
           port: int = 0, platform: str = "cpu", kill_grace: float = 5.0) -> int:
  """Runs ``num_processes`` copies of ``command``; returns the exit code for the launcher."""
  port = port or free_port()
  lock = threading.Lock()
  procs: list[subprocess.Popen] = []
  printers: list[_Printer] = []

  def on_signal(signum, frame):
    raise _Interrupted(signum)
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    print(f"[launch] {num_processes} processes, coordinator 127.0.0.1:{port}, "
          f"devices per process: {devices_per_process or 'default'}: {' '.join(command)}", flush=True)
    for i in range(num_processes):
      env = child_env(dict(os.environ), port=port, num_processes=num_processes, process_id=i,
                      devices_per_process=devices_per_process, platform=platform)
      # Own session: Ctrl-C reaches only the launcher, which then stops each child's whole tree.
      p = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(p)
      printers.append(_Printer(f"[p{i}] ", p.stdout, lock))

    first_failure: int | None = None
    while first_failure is None and any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        if p.poll() is not None and p.returncode != 0:
          first_failure = _exit_code(p.returncode)
          print(f"[launch] process {i} exited with code {p.returncode}; stopping the others.",
                file=sys.stderr, flush=True)
          break
      else:
        time.sleep(0.05)
    if first_failure is None:  # All exited: the first non-zero code in process order, if any.
      codes = [_exit_code(p.returncode) for p in procs]
      first_failure = next((c for c in codes if c != 0), 0)
    _stop(procs, kill_grace)
    return first_failure
  except _Interrupted as e:
    print(f"[launch] received {signal.Signals(e.signum).name}; stopping all processes.",
          file=sys.stderr, flush=True)
    _stop(procs, kill_grace)
    return 128 + e.signum
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)
    for pr in printers:
      pr.join(timeout=5.0)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if "--" in argv:
    split = argv.index("--")
    flags, command = argv[:split], argv[split + 1:]
  else:
    flags, command = argv, []
  parser = argparse.ArgumentParser(
      prog="launch/local.py", usage="%(prog)s [flags] -- COMMAND [ARGS ...]",
      description="Run N copies of COMMAND on localhost as one multi-process JAX job, with the "
                  "TVTS_* environment set for tvts.distributed.initialize().",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2, help="Number of processes to start.")
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="Simulated CPU devices per process (TVTS_LOCAL_DEVICE_COUNT and XLA_FLAGS "
                           "--xla_force_host_platform_device_count). Default: leave unset.")
  parser.add_argument("--port", type=int, default=0, help="Coordinator port; 0 picks a free port.")
  parser.add_argument("--platform", default="cpu",
                      help="JAX_PLATFORMS for the children; empty string keeps the inherited value.")
  parser.add_argument("--kill_grace", type=float, default=5.0,
                      help="Seconds between SIGTERM and SIGKILL when stopping children.")
  args = parser.parse_args(flags)
  if not command:
    parser.error("missing command: put it after '--'")
  if args.num_processes < 1:
    parser.error("--num_processes must be >= 1")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error("--devices_per_process must be >= 1")
  return args, command


def main(argv: list[str] | None = None) -> int:
  args, command = parse_args(sys.argv[1:] if argv is None else argv)
  return launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                port=args.port, platform=args.platform, kill_grace=args.kill_grace)


if __name__ == "__main__":
  sys.exit(main())
