"""Worker for tests/test_distributed.py, run under launch/local.py (one copy per process).

Modes:
  sum   initialise from the TVTS_* env, check the device/process counts, build a global [4*R, C]
        array from per-process data on a 1-axis mesh over all devices, and print
        `RESULT <sum> <weighted sum>` computed by a jitted cross-device reduction, and
        `CACHE <dir>`, the persistent compilation cache it uses (JAX reads JAX_COMPILATION_CACHE_DIR,
        which tests/conftest.py sets for the test process and so for every child).
  fail  process 1 exits with code 3 as soon as process 0 has written its pid (so the test checks a process
        that was running when it was stopped); the others print their pid and then block in
        initialize() waiting for process 1 (so the launcher has to kill them).
  sleep print the pid, then sleep (for the Ctrl-C test).
"""
import argparse
import os
import sys
import time

ROWS_PER_DEVICE, COLS = 3, 5


def local_data(process_id: int, local_devices: int):
  """This process's rows: distinct per process, so the global sum needs both processes."""
  import numpy as np
  rows = ROWS_PER_DEVICE * local_devices
  return (np.arange(rows * COLS, dtype=np.int32).reshape(rows, COLS) * (process_id + 1)
          + 100 * process_id)


def run_sum(expect_processes: int, expect_devices: int) -> None:
  from tvts import distributed
  distributed.initialize()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  print("DESCRIBE", distributed.describe(), flush=True)
  print("CACHE", jax.config.jax_compilation_cache_dir, flush=True)
  assert jax.process_count() == expect_processes, jax.process_count()
  assert jax.device_count() == expect_devices, jax.device_count()
  assert distributed.is_main_process() == (jax.process_index() == 0)

  # jax.devices() is ordered by process, so process p owns the p-th block of rows.
  mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  local = local_data(jax.process_index(), jax.local_device_count())
  global_shape = (local.shape[0] * jax.process_count(), COLS)
  x = jax.make_array_from_process_local_data(sharding, local, global_shape)

  @jax.jit
  def reduce(x):
    rows = jnp.arange(x.shape[0], dtype=x.dtype)[:, None]
    return jnp.sum(x), jnp.sum(x * rows)
  total, weighted = jax.jit(reduce, out_shardings=NamedSharding(mesh, P()))(x)
  print("RESULT", int(total.addressable_data(0)), int(weighted.addressable_data(0)), flush=True)


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=["sum", "fail", "sleep"], default="sum")
  parser.add_argument("--expect_processes", type=int, default=2)
  parser.add_argument("--expect_devices", type=int, default=4)
  parser.add_argument("--pid_dir", default=None)
  args = parser.parse_args()
  process_id = int(os.environ["TVTS_PROCESS_ID"])
  if args.pid_dir:  # written whole or not at all: the test reads it after the launcher has stopped us
    path = os.path.join(args.pid_dir, f"p{process_id}.pid")
    with open(path + ".partial", "w") as f:
      f.write(str(os.getpid()))
    os.replace(path + ".partial", path)
  if args.mode == "sum":
    run_sum(args.expect_processes, args.expect_devices)
  elif args.mode == "fail":
    if process_id == 1:
      deadline = time.monotonic() + 30
      while args.pid_dir and not os.path.exists(os.path.join(args.pid_dir, "p0.pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
      print("failing on purpose", flush=True)
      return 3
    print("READY", flush=True)
    from tvts import distributed
    distributed.initialize()  # Blocks: process 1 never connects.
    print("UNREACHABLE", flush=True)
  else:
    print("READY", flush=True)
    time.sleep(600)
  return 0


if __name__ == "__main__":
  sys.exit(main())
