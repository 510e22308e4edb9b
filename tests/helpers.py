"""Shared test helpers: a tiny config built from the config's own defaults, setups and batches.

Tests build their own tiny config here instead of unlocking and undoing the demo's.
"""
from __future__ import annotations

import jax
import ml_collections

from tvts import sharding
from tvts.config import apply_overrides, base_config, model_variant, parse_arg
from tvts.data.pipeline import make_sources
from tvts.state import make_setup

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def tiny_config(*, variant: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """The `tiny` variant (or `variant`, e.g. 'v1-tiny') from random weights, small and fast: 4 frames of 32 px,
    batches of 8, the transcribed source only, no evaluators, a constant learning rate and every group and loss term
    on from the first update. `overrides`: dotted fields, e.g.
    tiny_config(total_steps=4, **{"optim.group_start": {"text": 0.5}})."""
    c = base_config(parse_arg(None, variant=variant, data="synthetic"))
    c.init = "random"
    c.total_steps = 4
    c.log_every = 1
    c.checkpoint_every = 2
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.model.num_frames = 4
    c.data.sources = ("transcribed",)
    c.data.transcribed_batch = 8
    c.data.captioned_batch = 8
    c.data.context_length = 16
    c.optim.groups = {"new": 1e-3, "clip": 1e-3}
    c.optim.schedule = "constant"
    c.lock()
    return apply_overrides(c, overrides)


def one_device_setup(config):
    """The train plan on a 1-device mesh (the first device): step-level tests compile fastest there."""
    return make_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


def batch_for(config, kind: str = "transcribed", iteration: int = 0):
    """The trainer's (whole, one-process) batch of `kind` at `iteration`: numpy video uint8 [B, T, H, W, 3] and
    texts int32 [B, n, L]. `kind` must be one of config.data.sources."""
    image_size = model_variant(config.model).video.image_size
    return make_sources(config.data, image_size, config.model.num_frames)[kind].batch(iteration)


def finish_launcher(proc, timeout: float, grace: float = 30) -> tuple[int, str, str]:
    """Waits for a launcher started with start_new_session=True; on timeout SIGTERMs it (launch/local.py stops its
    children on SIGTERM), then kills its process group, and fails the test with its output."""
    import os
    import signal
    import subprocess

    import pytest

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return proc.returncode, out, err


def one_device_env(**extra: str) -> dict[str, str]:
    """This environment for a child process with one CPU device: the suite's other XLA flags and compilation cache
    (tests/conftest.py) kept."""
    import os

    from tvts.distributed import set_xla_device_count_flag

    return {**os.environ, "XLA_FLAGS": set_xla_device_count_flag(os.environ.get("XLA_FLAGS", ""), 1),
            "JAX_PLATFORMS": "cpu", **extra}
