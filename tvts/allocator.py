"""Run a tvts program on mimalloc instead of glibc malloc (Linux), by re-executing it once with LD_PRELOAD.

Why: XLA:CPU allocates each step's temporaries (213 MB for the tiny transcribed step) with malloc and frees
them after the step. glibc serves blocks that large with fresh mmap()s, so every step page-faults all of them
in again: 52k minor faults per step, a third of its CPU time spent in the kernel. mimalloc keeps freed
segments for reuse; the same step then takes ~300 faults, and glibc makes it 1.33x slower (`tools/bench_step.py`).

The library comes from the `cmeel-mimalloc` wheel (MIT), an install requirement on Linux. Programs
(`python -m tvts.train`, `python -m tvts.evaluate`, the benchmark tools) call `reexec_with_mimalloc()`
before importing JAX. It returns at once when mimalloc is already loaded, when `TVTS_ALLOCATOR=system`,
off Linux, or when the library is missing, so a program always runs, at worst on the system allocator.
A library that imports tvts is never re-executed: only programs call this.

Only XLA:CPU was measured: on a host with accelerators (TPU or GPU devices, TPU VM environment variables, or
`JAX_PLATFORMS` naming no CPU) the host allocator is left alone unless `TVTS_ALLOCATOR=mimalloc` asks for it.
"""
from __future__ import annotations

import glob
import os
import sys

LIBRARY = "libmimalloc.so"
OPT_OUT = "TVTS_ALLOCATOR"  # 'system': keep the system allocator; 'mimalloc': use it on accelerator hosts too
_MARK = "_TVTS_REEXECUTED"  # set in the re-executed process: never a second exec, even if the preload failed


def mimalloc_library() -> str | None:
    """Path of the mimalloc shared library installed by cmeel-mimalloc, or None."""
    for entry in sys.path:
        for path in sorted(glob.glob(os.path.join(entry or ".", "cmeel.prefix", "lib", LIBRARY + "*"))):
            if os.path.isfile(path):
                return path
    return None


def mimalloc_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return any(LIBRARY in line for line in f)
    except OSError:
        return False


# TPU VMs (tvts.distributed.TPU_ENV_MARKERS, repeated here: this module must not import jax) and device files of
# TPUs (/dev/accel*, /dev/vfio on v5e and later), NVIDIA and AMD GPUs.
ACCELERATOR_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def accelerator_host(env=None, device_globs=ACCELERATOR_DEVICES) -> bool:
    """True where JAX would run on an accelerator (so not on XLA:CPU, the only backend mimalloc was measured on)."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms:
        return "cpu" not in platforms.split(",")[0]  # the first listed platform is the default backend
    return any(env.get(k) for k in ACCELERATOR_ENV) or any(glob.glob(g) for g in device_globs)


def wanted(env=None, device_globs=ACCELERATOR_DEVICES) -> bool:
    """Whether this program should run on mimalloc: on CPU hosts unless opted out, elsewhere only if opted in."""
    env = os.environ if env is None else env
    choice = env.get(OPT_OUT, "")
    if choice in ("system", "mimalloc"):
        return choice == "mimalloc"
    return not accelerator_host(env, device_globs)


def reexec_with_mimalloc() -> None:
    """Replace this process by itself under mimalloc: same pid, command line and environment, plus LD_PRELOAD."""
    if not sys.platform.startswith("linux") or not wanted() or _MARK in os.environ or mimalloc_loaded():
        return
    library = mimalloc_library()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [library, env.get("LD_PRELOAD")]))
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options and `-m module`, which sys.argv has lost.
    os.execve(sys.executable, sys.orig_argv, env)
