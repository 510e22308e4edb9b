"""Stop cleanly on SIGTERM (a Spot / preemptible VM's notice, `launch/tpu_pod.py stop`): the trainer saves a
checkpoint at the next iteration boundary and exits, and a relaunch resumes from it.

Multi-process runs must agree on the iteration at which they save, so there JAX's preemption sync manager (started
by `jax.distributed.initialize`, which takes SIGTERM itself) decides; a single process catches SIGTERM here.
"""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionNotice:
    """`reached(iteration)`: True once SIGTERM has arrived (on any process of a multi-process run), at the same
    iteration on every process. Call it at every iteration, from the first one on."""

    def __init__(self):
        self._received = threading.Event()
        self._previous = None
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        self._received.set()

    def reached(self, iteration: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(iteration)
        return self._received.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
