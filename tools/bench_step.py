"""Train-step time of config variants, measured in one run (ratios are what to quote).

    python -m tools.bench_step [--variant tiny] [--source transcribed|captioned] [--steps 20] [--rounds 3]
        [--out step_times.json]

The config is the variant's recipe: configs/demo.py for tiny, configs/pretrain.py (from random weights) for a
published variant. Cases: the default step; text embeddings frozen too (no backward pass through the frozen text
blocks at all); tube-mask ratios 0 / 0.5 / 0.75 (compute falls with the number of kept patches); transcripts
padded to the full context length instead of `data.transcript_length`; the default step fed as the trainer feeds
it, a new batch per step made by the synthetic corpus in a background thread beside the step (its CPU time shares the
cores with the step's); and the default step on the system allocator instead of mimalloc (tvts/allocator.py), timed
in a worker process started with TVTS_ALLOCATOR=system.
These use the published parameter groups, all training from the first update. For a recipe with delayed groups
(tiny's text tower, `optim.group_start`), also its own rules at its first update (the delayed groups held: no
backward pass through them) and at its last. Each case compiles once, runs `--warmup` steps, then times `--steps`
steps; the cases are run in interleaved rounds so that machine noise hits them alike. Prints a table and writes
JSON.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax

from tools.common import in_round_order, recipe_config
from tvts import allocator, sharding
from tvts.config import apply_overrides
from tvts.data.pipeline import Prefetcher, make_sources
from tvts.state import init_state, make_setup
from tvts.step import make_train_step

DEFAULT = "default (mask 0.5)"
CASES = {
    DEFAULT: {},
    "freeze_text_embeddings": {"optim.freeze_text_embeddings": True},
    "mask 0.0": {"model.mask_ratio": 0.0},
    "mask 0.75": {"model.mask_ratio": 0.75},
    "transcripts at context": {"data.transcript_length": -1},
}
SYSTEM_ALLOCATOR = "system allocator (glibc malloc)"
BATCHES_BESIDE = "batches made beside (as in training)"
# The variant's own recipe (its rules and optim.group_start), timed at its first and last update: before and
# after its delayed groups start (tvts.curriculum.Curriculum.phase). Only for recipes with delayed groups (tiny).
RECIPE_CASES = {"recipe, delayed groups held (update 0)": 0, "recipe, every group started (last update)": -1}


def make_config(variant: str, overrides: dict, recipe: bool = False):
    config = recipe_config(variant)
    # the published groups (the switches below act on them) and losses, every group and term from update 0
    published = {} if recipe else {"optim.rules": (), "optim.group_start": {},
                                   "loss.transcribed_contrastive_start": 0.0}
    return apply_overrides(config, {"model.mask_ratio": 0.5, **published, **overrides})


class InProcess:
    """One case's compiled step, state and batch; `time(n)` runs n steps and returns seconds per step."""

    def __init__(self, variant: str, overrides: dict, warmup: int, source: str = "transcribed",
                 recipe: bool = False, update: int = 0, batches_beside: bool = False):
        config = make_config(variant, overrides, recipe)
        setup = make_setup(config)
        self.state = init_state(setup, jax.random.key(0))
        self.step = make_train_step(setup, source)
        sources = make_sources(config.data, setup.model.variant.video.image_size, config.model.num_frames)
        # batches_beside: each step takes the next batch of a Prefetcher, as tvts.train's loop does; otherwise every
        # step takes the same batch
        self.batches = iter(Prefetcher(sources[source].batch, 1)) if batches_beside else None
        self.batch = None if batches_beside else sharding.global_batch(sources[source].batch(0), setup.mesh)
        self.mesh = setup.mesh
        self.update = update if update >= 0 else setup.curriculum.total_updates + update
        self.time(warmup)

    def time(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = self.batch if self.batches is None else sharding.global_batch(next(self.batches)[1], self.mesh)
            self.state, _ = self.step(self.state, batch, jax.random.key(1), update=self.update)
            self.update += 1
        jax.block_until_ready(self.state)  # the last step done (also with --warmup 0)
        return (time.perf_counter() - t0) / max(steps, 1)


class SystemAllocatorWorker:
    """The default case in a child process on the system allocator, driven line by line over a pipe."""

    def __init__(self, variant: str, warmup: int, source: str):
        env = {**os.environ, allocator.OPT_OUT: "system"}
        env.pop("LD_PRELOAD", None)
        # this module in a fresh interpreter, started in the repository root where `tools` is importable
        self.proc = subprocess.Popen([sys.executable, "-m", __spec__.name, "--worker", "--variant", variant,
                                      "--warmup", str(warmup), "--source", source], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        if self._read() != "ready":
            raise RuntimeError("the system-allocator worker did not start")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the system-allocator worker exited with {self.proc.wait()}")
        return line.strip()

    def time(self, steps: int) -> float:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def worker(args):
    """--worker: compile the default case, then answer each line N on stdin with seconds per step of N steps."""
    run = InProcess(args.variant, {}, args.warmup, args.source)
    print("ready", flush=True)
    for line in sys.stdin:
        print(run.time(int(line)), flush=True)


def main():
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", default="transcribed", choices=("transcribed", "captioned"))
    parser.add_argument("--out", default="step_times.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    runs = {}
    for name, overrides in CASES.items():
        t0 = time.perf_counter()
        runs[name] = InProcess(args.variant, overrides, args.warmup, args.source)
        print(f"{name}: compiled and warmed up in {time.perf_counter() - t0:.1f}s", flush=True)
    runs[BATCHES_BESIDE] = InProcess(args.variant, {}, args.warmup, args.source, batches_beside=True)
    if make_config(args.variant, {}, recipe=True).optim.group_start:
        for name, update in RECIPE_CASES.items():
            runs[name] = InProcess(args.variant, {}, args.warmup, args.source, recipe=True, update=update)
    if allocator.mimalloc_loaded():
        runs[SYSTEM_ALLOCATOR] = SystemAllocatorWorker(args.variant, args.warmup, args.source)
    else:
        print("mimalloc is not loaded here: no system-allocator comparison", flush=True)

    times = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in in_round_order(runs, r):
            times[name].append(run.time(args.steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    if SYSTEM_ALLOCATOR in runs:
        runs[SYSTEM_ALLOCATOR].close()

    base = statistics.median(times[DEFAULT])
    results = {}
    print(f"\n{'case':<44}{'median step (ms)':>18}{'vs default':>12}")
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_step_s": med, "all_rounds_s": ts, "ratio_to_default": med / base}
        print(f"{name:<44}{1000 * med:>18.1f}{med / base:>12.2f}")
    with open(args.out, "w") as f:
        json.dump({"variant": args.variant, "source": args.source, "steps_per_round": args.steps,
                   "devices": jax.device_count(), "allocator": "mimalloc" if allocator.mimalloc_loaded() else "system",
                   "cases": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
