"""Multi-process (multi-host) initialisation of JAX.

Call :func:`initialize` once, first thing in a program, before any JAX computation or device query:

    from tvts import distributed
    distributed.initialize()          # settings from arguments, else TVTS_* env, else TPU autodetect
    logging.info(distributed.describe())

Where the settings come from, in order:

1. Explicit arguments (each argument overrides its environment variable).
2. Environment variables, as set by ``launch/local.py``:
   ``TVTS_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``TVTS_NUM_PROCESSES``,
   ``TVTS_PROCESS_ID`` (``0 .. N-1``) and, for simulated CPU devices, ``TVTS_LOCAL_DEVICE_COUNT``.
3. On a Cloud TPU VM (nothing of 1-2 set, a TPU found): ``jax.distributed.initialize()`` with no
   arguments; JAX reads the worker list and this worker's id from the TPU metadata.
4. Otherwise a single process: nothing to do.

Setting some but not all of coordinator address, process count and process id is an error naming the
missing variable, rather than a hang waiting for peers that were never told where to connect.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping

import jax

ENV_COORDINATOR_ADDRESS = "TVTS_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "TVTS_NUM_PROCESSES"
ENV_PROCESS_ID = "TVTS_PROCESS_ID"
ENV_LOCAL_DEVICE_COUNT = "TVTS_LOCAL_DEVICE_COUNT"

# Any of these in the environment means "this is a Cloud TPU VM / TPU pod worker".
TPU_ENV_MARKERS = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Resolved settings. ``mode`` is 'explicit' (coordinator given), 'tpu' (autodetect) or 'single'."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_count: int | None = None


# ---------------------------------------------------------------------------------------------------
# Settings resolution (pure: no JAX calls, so it is testable in any process)
# ---------------------------------------------------------------------------------------------------
def _int_from(value: int | str | None, what: str) -> int | None:
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be an integer, got {value!r}") from None


def tpu_environment_detected(env: Mapping[str, str] | None = None) -> bool:
  """True on a Cloud TPU VM: TPU env variables present, or TPU chips on the PCI bus.

  Does not start a JAX backend and makes no network calls.
  """
  env = os.environ if env is None else env
  if any(env.get(k) for k in TPU_ENV_MARKERS):
    return True
  if env is not os.environ:  # An explicit env (tests) means: judge from it alone.
    return False
  try:  # Private but side-effect free: scans /sys/bus/pci for Google TPU device ids.
    from jax._src import hardware_utils
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pragma: no cover - layout of jax internals changed
    return False


def resolve_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_device_count: int | None = None,
                     env: Mapping[str, str] | None = None) -> Settings:
  """Merges arguments with ``TVTS_*`` environment variables and validates them.

  Raises:
    ValueError: partial settings (message names the missing variables), non-integers, out of range.
  """
  env = os.environ if env is None else env
  address = coordinator_address or env.get(ENV_COORDINATOR_ADDRESS) or None
  n = _int_from(num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES),
                f"num_processes / {ENV_NUM_PROCESSES}")
  pid = _int_from(process_id if process_id is not None else env.get(ENV_PROCESS_ID),
                  f"process_id / {ENV_PROCESS_ID}")
  ldc = _int_from(local_device_count if local_device_count is not None
                  else env.get(ENV_LOCAL_DEVICE_COUNT), f"local_device_count / {ENV_LOCAL_DEVICE_COUNT}")
  if ldc is not None and ldc < 1:
    raise ValueError(f"local_device_count / {ENV_LOCAL_DEVICE_COUNT} must be >= 1, got {ldc}")

  given = {"coordinator": address is not None, "n": n is not None, "pid": pid is not None}
  if not any(given.values()):
    mode = "tpu" if tpu_environment_detected(env if env is not os.environ else None) else "single"
    return Settings(mode, local_device_count=ldc)

  # A lone process count of 1 (optionally with process id 0) is a single process, not a cluster.
  if not given["coordinator"] and n == 1 and pid in (None, 0):
    return Settings("single", num_processes=1, process_id=0, local_device_count=ldc)

  names = {"coordinator": f"{ENV_COORDINATOR_ADDRESS} (coordinator_address=)",
           "n": f"{ENV_NUM_PROCESSES} (num_processes=)",
           "pid": f"{ENV_PROCESS_ID} (process_id=)"}
  missing = [names[k] for k, v in given.items() if not v]
  if missing:
    present = [names[k] for k, v in given.items() if v]
    raise ValueError(
        f"Incomplete multi-process settings: {', '.join(present)} set but missing "
        f"{', '.join(missing)}. Set all three (launch/local.py does), or none of them for a single "
        "process / TPU autodetection.")
  if not re.fullmatch(r"\[?[^\s\]]+\]?:\d+", address):
    raise ValueError(f"{ENV_COORDINATOR_ADDRESS} must be 'host:port', got {address!r}")
  if n < 1:
    raise ValueError(f"{ENV_NUM_PROCESSES} must be >= 1, got {n}")
  if not 0 <= pid < n:
    raise ValueError(f"{ENV_PROCESS_ID} must be in [0, {n}), got {pid}")
  return Settings("explicit", address, n, pid, ldc)


# ---------------------------------------------------------------------------------------------------
# Process-wide effects
# ---------------------------------------------------------------------------------------------------
def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except Exception:  # pragma: no cover - jax internals changed; assume the safe answer
    return False


def set_xla_device_count_flag(xla_flags: str, count: int) -> str:
  """Returns ``xla_flags`` with ``--xla_force_host_platform_device_count`` set to ``count``."""
  flags = [f for f in xla_flags.split() if not f.startswith(_DEVICE_COUNT_FLAG + "=")]
  return " ".join(flags + [f"{_DEVICE_COUNT_FLAG}={count}"])


def _set_local_cpu_device_count(count: int) -> None:
  """Simulated CPU devices for this process. Must happen before the JAX backend starts."""
  if _backends_initialized():
    try:
      have = len(jax.local_devices(backend="cpu"))
    except RuntimeError:
      have = None
    if have != count:
      raise RuntimeError(
          f"{ENV_LOCAL_DEVICE_COUNT}={count} requested, but the JAX CPU backend is already "
          f"initialised with {have} local devices. Call tvts.distributed.initialize() before any JAX "
          "computation or device query (jax.devices(), jax.device_put, ...).")
    return
  os.environ["XLA_FLAGS"] = set_xla_device_count_flag(os.environ.get("XLA_FLAGS", ""), count)
  # The config option takes precedence over the XLA flag (and works even if XLA already parsed
  # XLA_FLAGS in this process).
  jax.config.update("jax_num_cpu_devices", count)


def _ensure_cpu_collectives() -> None:
  """Cross-process CPU collectives need an implementation; jax 0.10 defaults to gloo."""
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


_initialized_with: Settings | None = None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_count: int | None = None) -> None:
  """Initialises ``jax.distributed`` once per process (see module docstring for the sources).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index, ``0 <= process_id < num_processes``.
    local_device_count: simulated CPU devices for this process (CPU only; sets
      ``--xla_force_host_platform_device_count`` / ``jax_num_cpu_devices``).

  Raises:
    ValueError: incomplete or invalid settings (message names the variable).
    RuntimeError: the JAX backend already started with another device count, or
      ``jax.distributed`` was already initialised with different settings.
  """
  global _initialized_with
  settings = resolve_settings(coordinator_address, num_processes, process_id, local_device_count)
  if _initialized_with is not None:  # Repeated calls (e.g. trainer run twice in one process).
    topology = lambda s: (s.mode, s.coordinator_address, s.num_processes, s.process_id)
    if topology(settings) != topology(_initialized_with):
      raise RuntimeError(f"tvts.distributed.initialize() already called with {_initialized_with}; "
                         f"cannot re-initialise with {settings}.")
    if settings.local_device_count is not None:
      _set_local_cpu_device_count(settings.local_device_count)  # Checks it matches.
    return

  if settings.local_device_count is not None:
    _set_local_cpu_device_count(settings.local_device_count)

  if jax.distributed.is_initialized():
    log.info("jax.distributed already initialised elsewhere; leaving it as is.")
  elif settings.mode == "explicit":
    _ensure_cpu_collectives()
    log.info("jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
             settings.coordinator_address, settings.num_processes, settings.process_id)
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id)
  elif settings.mode == "tpu":
    log.info("TPU environment detected: jax.distributed.initialize() with autodetection.")
    jax.distributed.initialize()
  _initialized_with = settings


def barrier(name: str, timeout_s: float = 1800.0) -> None:
  """Waits until every process reaches `name` (unique per call site and occurrence); no-op in one process.

  Goes through the coordination service, not a device collective: on CPU the first collective of a device group
  sets up a Gloo context whose peers must arrive within 30 s, so processes that compiled a program at different
  speeds (a compilation-cache hit on one, a miss on the other) must meet here before the program first runs.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the client jax.distributed.initialize() made; no public API

  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError(f"barrier {name!r}: {jax.process_count()} processes but no jax.distributed client")
  client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))


def is_main_process() -> bool:
  """True on process 0 (the one that logs, writes summaries and exports)."""
  return jax.process_index() == 0


def describe() -> str:
  """One line for logs, e.g. 'process 0/2 | local devices 4 (cpu) | global devices 8'."""
  local = jax.local_devices()
  platform = local[0].platform if local else "none"
  return (f"process {jax.process_index()}/{jax.process_count()} | local devices {len(local)} "
          f"({platform}) | global devices {jax.device_count()}")
