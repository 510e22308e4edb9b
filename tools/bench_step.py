"""Train-step time of config variants, measured in one process (ratios are what to quote).

    python tools/bench_step.py [--variant tiny] [--steps 20] [--out step_times.json]

Cases: the default step; text embeddings frozen too (no backward pass through the frozen text
blocks at all); tube-mask ratios 0 / 0.5 / 0.75 (compute falls with the number of kept patches);
transcripts padded to the full context length instead of `data.transcript_length`.
Each case compiles once, runs `--warmup` steps, then times `--steps` steps; the cases are run in
interleaved rounds so that machine noise hits them alike. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from tvts import sharding, train
from tvts.config import apply_overrides, load_config
from tvts.data.pipeline import make_sources

CASES = {
    "default (mask 0.5)": {},
    "freeze_text_embeddings": {"optim.freeze_text_embeddings": True},
    "mask 0.0": {"model.mask_ratio": 0.0},
    "mask 0.75": {"model.mask_ratio": 0.75},
    "transcripts at context": {"data.transcript_length": -1},
}


def make_config(variant: str, overrides: dict):
    config = load_config(f"configs/pretrain.py:variant={variant},eval=False")
    # the published groups (the switches below act on them), every group training from step 0
    published = {"optim.rules": (), "optim.group_start": {}}
    return apply_overrides(config, {"model.mask_ratio": 0.5, **published, **overrides})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="step_times.json")
    args = parser.parse_args()

    runs = {}
    for name, overrides in CASES.items():
        config = make_config(args.variant, overrides)
        setup = train.make_setup(config)
        state = train.init_state(setup, jax.random.key(0))
        step = train.make_train_step(setup, "transcribed")
        batch = sharding.global_batch(make_sources(config.data, setup.model.variant.video.image_size,
                                                   config.model.num_frames)["transcribed"].batch(0), setup.mesh)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            state, metrics = step(state, batch, jax.random.key(1))
        jax.block_until_ready(metrics)
        print(f"{name}: compiled and warmed up in {time.perf_counter() - t0:.1f}s", flush=True)
        runs[name] = {"step": step, "state": state, "batch": batch, "times": []}

    for r in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run["state"], metrics = run["step"](run["state"], run["batch"], jax.random.key(1))
            jax.block_until_ready(metrics)
            run["times"].append((time.perf_counter() - t0) / args.steps)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = statistics.median(runs["default (mask 0.5)"]["times"])
    results = {}
    print(f"\n{'case':<26}{'median step (ms)':>18}{'vs default':>12}")
    for name, run in runs.items():
        med = statistics.median(run["times"])
        results[name] = {"median_step_s": med, "all_rounds_s": run["times"], "ratio_to_default": med / base}
        print(f"{name:<26}{1000 * med:>18.1f}{med / base:>12.2f}")
    with open(args.out, "w") as f:
        json.dump({"variant": args.variant, "steps_per_round": args.steps, "devices": jax.device_count(),
                   "cases": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
