"""Test set-up: 8 simulated CPU devices, so mesh code paths run on this machine, and one compilation cache shared
by this process and the processes tests start (multi-process runs, the trainer as a program)."""
import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
DEVICES = 8

# Must happen before jax is imported anywhere in the test process. An existing XLA_FLAGS (say, a dump flag) keeps
# its flags and gains the device count; an explicit device count in it is respected (the report header shows it).
_flags = os.environ.get("XLA_FLAGS", "")
if DEVICE_COUNT_FLAG not in _flags:
    _flags = f"{_flags} {DEVICE_COUNT_FLAG}={DEVICES}".strip()
# The suite's time is mostly XLA:CPU compiling many small programs once each. Less LLVM effort leaves the HLO (the
# programs' arithmetic) as it is and compiles about 40% faster here; the tests' programs run too briefly to miss the
# optimisation. Child processes inherit the flags, so runs that tests compare are built alike.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
for _flag in FAST_COMPILE_FLAGS:
    if _flag.split("=")[0] not in _flags:
        _flags = f"{_flags} {_flag}"
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same tiny train step; a persistent cache turns repeats into loads. Through the environment,
# so that child processes (launch/local.py's copies, `python -m tvts.train`) read and fill the same cache.
CACHE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402  (after the environment above)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_report_header(config):
    count = len(jax.devices())
    note = "" if count == DEVICES else (f" (the mesh tests need {DEVICES}: XLA_FLAGS={os.environ['XLA_FLAGS']!r} "
                                        f"sets another count)")
    return f"jax {jax.__version__}: {count} {jax.default_backend()} devices{note}; compilation cache " \
           f"{os.environ['JAX_COMPILATION_CACHE_DIR']}"
