"""Model FLOPs utilisation of the train step and of feature extraction, against this machine's measured ceiling.

    python -m tools.bench step    [--variant B/16] [--frames 12] [--mask 0.5] [--batch 2] [--dtype float32]
                                  [--mesh data=-1] [--source transcribed] [--remat full] [--context_length N]
    python -m tools.bench extract [--variant B/16] [--frames 12] [--batch 2] [--dtype float32]
    python -m tools.bench masks   [--variant B/16] [--ratios 0,0.5,0.7,0.9] ...
        common: [--steps 2] [--warmup 1] [--rounds 3] [--peak cpu|TPU_v4|TPU_v5e|TPU_v5p|TPU_v6e] [--out F.json]
                [--attention program|all|IMPL[,IMPL...]]   IMPL: einsum, einsum_heads_major, dot_product
                [--remat POLICY[,POLICY...]] [--unroll_layers no|yes|no,yes]

What a case reports
- step time: median over rounds of the mean of `--steps` synchronised steps, after `--warmup` steps;
- model FLOPs: the analytic matmul + attention count (`tvts.flops`, the MFU convention: no recomputation), and
  `compiled_flops`, the dot and convolution FLOPs of the compiled program with its loops' trip counts
  (`tools.plan_memory.hlo_summary`; it includes remat recomputation, so it is >= the model FLOPs when remat is on);
- achieved FLOP/s = model FLOPs / step time, and MFU = achieved / peak.

The peak: on CPU (`--peak cpu`, the default here) the float32 matmul ceiling of this machine, a [n, n] x [n, n]
product timed in the same rounds as the cases, so that machine noise hits both alike; the figure to quote is the
ratio. On a named TPU generation, its per-chip bf16 peak times the device count.

`--attention`: the attention implementation (config.model.attention, tvts.models.layers.attend). `program` (the
default) times each program as the recipe's config builds it ('auto': heads-major in the TVTSv2 video tower,
token-major einsum in the other towers). A comma-separated list of implementations
builds every case once per implementation, set in every tower of both programs, and interleaves them; `all` lists
the three. `--attention einsum,einsum_heads_major` is the A/B of docs/benchmarks.md.

`--remat` (config.model.remat: none, full, dots, dots_no_batch) and `--unroll_layers` (config.model.unroll_layers)
take comma-separated lists the same way: the cases are every combination of the listed values, interleaved
(`--remat none,full --unroll_layers no,yes` builds four of each). Left empty, the recipe's own. Forward-only
programs (`extract`) never rematerialise, so `--remat` does not change them.

The published variants run from random weights (the tools never need converted CLIP weights) with the published
parameter groups, every group and loss term on (`tools.bench_step.make_config`).
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from tools.bench_step import make_config
from tools.common import in_round_order
from tools.plan_memory import hlo_summary
from tvts import config as config_lib
from tvts import sharding
from tvts.data.pipeline import make_sources
from tvts.flops import TPU_PEAK_FLOPS, analytic_flops, matmul_ceiling, step_flops
from tvts.models.layers import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES
from tvts.state import init_state, make_setup
from tvts.step import make_train_step

NAMED_PEAKS = {"TPU_v4": "TPU v4", "TPU_v5e": "TPU v5e", "TPU_v5p": "TPU v5p", "TPU_v6e": "TPU v6e"}
CEILING_N = 3072  # large enough that the product runs at the BLAS kernel's speed on a few cores


class StepCase:
    """A compiled train step with its state and one batch; `time(n)` runs n synchronised steps (seconds per step)."""

    def __init__(self, args, mask: float, case: dict | None = None):
        """case: this case's own config overrides (`case_grid`)."""
        overrides = {"model.mask_ratio": mask, "model.num_frames": args.frames, "model.dtype": args.dtype,
                     f"data.{args.source}_batch": args.batch, **mesh_overrides(args.mesh), **(case or {})}
        if args.context_length:
            overrides["data.context_length"] = args.context_length
        self.config = make_config(args.variant, overrides)
        config_lib.validate(self.config, jax.device_count(), jax.process_count())
        setup = make_setup(self.config)
        self.state = init_state(setup, jax.random.key(0))
        self.step = make_train_step(setup, args.source)
        sources = make_sources(self.config.data, setup.spec.image_size, setup.spec.num_frames)
        self.batch = sharding.global_batch(sources[args.source].batch(0), setup.mesh)
        self.update = setup.curriculum.total_updates - 1  # every group and term on
        self.model_flops = step_flops(self.config, args.source)["model_flops"]
        self.time(max(args.warmup, 1))  # the first step compiles the program whose HLO is counted
        compiled = self.step.compiled[self.step.jitted_for(self.update)]
        self.compiled_flops = hlo_summary(compiled.as_text())["hlo_flops"]

    def time(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, _ = self.step(self.state, self.batch, jax.random.key(1), update=self.update)
        jax.block_until_ready(self.state)
        return (time.perf_counter() - t0) / max(steps, 1)


class ExtractCase:
    """The unmasked video tower's forward (the exported backbone's `encode_video` program) on one batch."""

    def __init__(self, args, case: dict | None = None):
        from tvts.state import make_encoders

        self.config = make_config(args.variant, {"model.mask_ratio": 0.0, "model.num_frames": args.frames,
                                                 "model.dtype": args.dtype, **mesh_overrides(args.mesh),
                                                 **(case or {})})
        setup = make_setup(self.config)
        params = init_state(setup, jax.random.key(0))["params"]
        self.encoders = make_encoders(setup, params)  # the evaluation encoders' own model (for_inference)
        spec = setup.spec
        frames = np.random.default_rng(0).integers(0, 256, (args.batch, spec.num_frames, spec.image_size,
                                                            spec.image_size, 3), dtype=np.uint8)
        self.frames = jax.device_put(frames, sharding.batch_sharding(setup.mesh, 5))
        variant = config_lib.model_variant(self.config.model)
        self.model_flops = analytic_flops(variant, args.batch, spec.num_frames, variant.video.num_patches, 0, 0,
                                          "none")["forward_flops"]
        with jax.set_mesh(setup.mesh):
            compiled = self.encoders._video.lower(params, self.frames).compile()
        self.compiled_flops = hlo_summary(compiled.as_text())["hlo_flops"]
        self.params = params
        self.time(args.warmup)

    def time(self, steps: int) -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(steps):
            out = self.encoders._video(self.params, self.frames)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / max(steps, 1)


def attention_cases(text: str) -> tuple[str | None, ...]:
    """--attention -> one attention implementation per case; None: the recipe config's own ('program')."""
    if text == "program":
        return (None,)
    if text == "all":
        return ATTENTION_IMPLEMENTATIONS
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in ATTENTION_IMPLEMENTATIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"--attention {text}: use 'program', 'all' or distinct names of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}, comma-separated")
    return names


def list_values(flag: str, text: str, known: dict[str, object]) -> tuple:
    """A comma-separated flag -> the values it names (each of `known`'s), or (None,) for '' (the recipe's own)."""
    if not text:
        return (None,)
    names = tuple(name.strip() for name in text.split(","))
    if any(name not in known for name in names) or len(set(names)) != len(names):
        raise ValueError(f"--{flag} {text}: use distinct values of {', '.join(known)}, comma-separated")
    return tuple(known[name] for name in names)


def case_grid(args) -> list[tuple[str, dict]]:
    """(name suffix, config overrides) of every case: each combination of the --attention, --remat and
    --unroll_layers values; a flag left to the recipe adds nothing to the names or the overrides."""
    axes = [
        ("model.attention", lambda v: v, attention_cases(args.attention)),
        ("model.remat", lambda v: f"remat {v}", list_values("remat", args.remat, {p: p for p in REMAT_POLICIES})),
        ("model.unroll_layers", lambda v: "unrolled" if v else "scanned",
         list_values("unroll_layers", args.unroll_layers, {"no": False, "yes": True})),
    ]
    grid = [("", {})]
    for field, label, values in axes:
        grid = [(suffix + ("" if value is None else f", {label(value)}"),
                 {**overrides, **({} if value is None else {field: value})})
                for suffix, overrides in grid for value in values]
    return grid


def mesh_overrides(text: str) -> dict[str, int]:
    """'data=2,fsdp=4' -> config overrides of those mesh axes (the others stay 1, or -1 for data)."""
    return {f"mesh.{k.strip()}": int(v) for k, v in (item.split("=") for item in text.split(","))}


def peak_flops(args, ceiling: float | None) -> float:
    return ceiling if args.peak == "cpu" else TPU_PEAK_FLOPS[NAMED_PEAKS[args.peak]] * jax.device_count()


def measure(cases: dict[str, object], args, log: Callable[[str], None]) -> dict:
    """Interleaved rounds: each case, then the ceiling; medians and MFU per case. Odd rounds run the cases in
    reverse order, so that no case always runs first after the ceiling's product or last before it."""
    cpu = args.peak == "cpu"
    times = {name: [] for name in cases}
    ceilings = []
    for r in range(args.rounds):
        for name, case in in_round_order(cases, r):
            times[name].append(case.time(args.steps))
        if cpu:
            ceilings.append(matmul_ceiling(CEILING_N))
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1000 * t[-1]:.0f} ms" for n, t in times.items())
            + (f", ceiling {ceilings[-1] / 1e9:.0f} GFLOP/s" if ceilings else ""))
    peak = peak_flops(args, statistics.median(ceilings) if ceilings else None)
    out = {}
    for name, case in cases.items():
        t = statistics.median(times[name])
        out[name] = {"median_step_s": t, "all_rounds_s": times[name], "clips_per_s": args.batch / t,
                     "model_flops": case.model_flops, "compiled_flops": case.compiled_flops,
                     "compiled_over_model": case.compiled_flops / case.model_flops,
                     "achieved_flops_per_s": case.model_flops / t, "mfu": case.model_flops / t / peak}
    return {"peak_flops_per_s": peak, "peak": args.peak, "ceiling_rounds_flops_per_s": ceilings, "cases": out}


def table(result: dict) -> str:
    rows = [f"{'case':<36}{'step (ms)':>11}{'clips/s':>9}{'model GFLOP':>13}{'compiled/model':>16}"
            f"{'GFLOP/s':>9}{'MFU':>8}"]
    for name, c in result["cases"].items():
        rows.append(f"{name:<36}{1000 * c['median_step_s']:>11.1f}{c['clips_per_s']:>9.2f}"
                    f"{c['model_flops'] / 1e9:>13.1f}{c['compiled_over_model']:>16.2f}"
                    f"{c['achieved_flops_per_s'] / 1e9:>9.1f}{c['mfu']:>8.1%}")
    rows.append(f"peak ({result['peak']}): {result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "extract", "masks"))
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--mask", type=float, default=0.5)
    parser.add_argument("--ratios", default="0,0.5,0.7,0.9")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mesh", default="data=-1", help="e.g. data=-1 or data=2,fsdp=4")
    parser.add_argument("--source", default="transcribed", choices=("transcribed", "captioned"))
    parser.add_argument("--remat", default="",
                        help="'': the recipe's (full for published variants); or policies, comma-separated: "
                             + ", ".join(REMAT_POLICIES))
    parser.add_argument("--unroll_layers", default="", help="'': the recipe's; or no, yes, or no,yes")
    parser.add_argument("--context_length", type=int, default=0, help="0: the recipe's")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak", default="cpu", choices=("cpu", *NAMED_PEAKS))
    parser.add_argument("--out", default="")
    parser.add_argument("--attention", default="program",
                        help="'program', 'all', or attention implementations, comma-separated (see above): "
                             + ", ".join(ATTENTION_IMPLEMENTATIONS))
    args = parser.parse_args(argv)
    try:
        grid = case_grid(args)
    except ValueError as e:
        parser.error(str(e))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    cases = {}
    for suffix, case in grid:
        if args.what == "step":
            cases[f"step mask {args.mask}{suffix}"] = StepCase(args, args.mask, case)
        elif args.what == "extract":
            cases[f"extract (mask 0){suffix}"] = ExtractCase(args, case)
        else:
            cases.update({f"step mask {r}{suffix}": StepCase(args, float(r), case) for r in args.ratios.split(",")})
    log(f"compiled and warmed up {len(cases)} case(s) in {time.perf_counter() - t0:.0f} s")
    result = measure(cases, args, log)
    if args.what == "masks":
        base = next(iter(result["cases"].values()))["median_step_s"]
        for c in result["cases"].values():
            c["step_time_over_first"] = c["median_step_s"] / base
    result["settings"] = {k: v for k, v in vars(args).items()}
    result["host"] = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "devices": jax.device_count(), "platform": jax.default_backend(), "jax": jax.__version__}
    print(table(result))
    if args.what == "masks":
        print("step time / first ratio's: " + ", ".join(f"{n}: {c['step_time_over_first']:.2f}"
                                                        for n, c in result["cases"].items()))
    print(f"peak host RSS {result['host']['peak_rss_bytes'] / 2**30:.2f} GiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
