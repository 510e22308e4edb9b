"""Per-device memory, FLOPs and collectives of the real TVTSv2 train step on a simulated TPU-pod mesh.

    python -m tools.plan_memory --variant H/14 --devices 256 --mesh data=16,fsdp=16,tensor=1 \
        --global_batch 1024 --frames 12 --mask_ratio 0.7 --remat full [--dtype bfloat16] [--grad_accum 1] \
        [--source transcribed|captioned] [--context_length 77] [--sequence_parallel] \
        [--out tools/memory_plans/h14_256.json] [--fast_compile] [--xla_option NAME=VALUE ...] [--dump_hlo FILE]

The trainer's own jitted step (`tvts.step.make_train_step`) is lowered and compiled for `--devices` simulated
CPU devices (`--xla_force_host_platform_device_count`, set by this tool before jax is imported) with every
argument abstract (`jax.ShapeDtypeStruct` carrying the trainer's shardings): no parameter is ever allocated.
The config is the variant's recipe (tiny: configs/demo.py; published variants: configs/pretrain.py) with the
settings above, at its last update (every parameter group and loss term on).

Where the numbers come from
- params / optimizer / other state: per-device shard shapes of the trainer's shardings (`sharding.shard_shape`),
  exact for any backend.
- argument / output / alias / temp / generated code: the compiled executable's `memory_analysis()`. This is
  XLA:CPU's buffer assignment of the SPMD-partitioned per-device program; XLA:TPU fuses and schedules differently
  (and overlaps collectives, which needs extra buffers), so read temp as an estimate, not a TPU measurement.
  total = argument + output - alias + temp + generated code (the state is donated, so outputs alias arguments).
- FLOPs per device: `cost_analysis()['flops']` as XLA reports it, which counts a while-loop body ONCE (the scanned
  layer stacks run `depth` times); `hlo_flops` re-counts dot and convolution FLOPs from the compiled HLO with the
  loops' known trip counts (this is the executed matmul work, including remat recomputation); `model_flops` is the
  analytic matmul + attention count of the architecture (`tvts.flops`: forward x3 for trained parts, x2 where only
  activation gradients flow, no recomputation), the MFU convention; `model_flops_with_remat` adds one whole
  recomputed forward of the rematerialised stacks (an upper bound: XLA skips recomputing outputs no gradient needs);
  `crude_6NT_global` is 6 x trained parameters x (video + text tokens) per clip, for comparison only (it charges
  every token to every parameter and counts the token-embedding gather as a matmul).
- collectives: counted in the compiled HLO text by kind; `count`/`bytes` are static occurrences, `executed_*` multiply
  by the trip counts of the enclosing loops. Bytes are the per-device size of each collective's result buffer (for
  all-gather the gathered array, for reduce-scatter the scattered shard). XLA:CPU has no reduce-scatter pass:
  gradient reductions that TPU turns into reduce-scatter show up here as all-reduce.

fits: the total against nominal HBM per chip (v5e 16 GiB, v4 32 GiB, v5p 95 GiB); keep a margin for the runtime's
reserve and for XLA:TPU's own buffer choices. Progress (setup, lowering, compiling with elapsed seconds and host RSS)
goes to stderr, the report to stdout.

JSON keys (`--out`): status ('ok' | 'failed'), stage (where it failed), error, settings, params, per_device_bytes,
memory_analysis, flops, collectives (as SPMD-partitioned: the dtypes a TPU moves), collectives_cpu_compiled (after
XLA:CPU's passes, which move bfloat16 collectives in float32), roofline (estimated step time and MFU per TPU
generation), fits, timing, host, notes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GiB = 1024**3
HBM_GIB = {"TPU v5e (16 GiB)": 16, "TPU v4 (32 GiB)": 32, "TPU v5p (95 GiB)": 95}
# Per chip, from the Cloud TPU system-architecture pages: dense bf16 peak FLOP/s and inter-chip interconnect
# bandwidth in bytes/s (v4 2,400 Gbps, v5e 1,600 Gbps, v5p 4,800 Gbps, v6e 3,584 Gbps).
TPU_GENERATIONS = {"TPU v4": (275e12, 2400e9 / 8), "TPU v5e": (197e12, 1600e9 / 8), "TPU v5p": (459e12, 4800e9 / 8),
                   "TPU v6e": (918e12, 3584e9 / 8)}
# Bytes a device sends per byte of a collective's result buffer, ring algorithms over a large group: an all-gather
# receives its result once, an all-reduce is a reduce-scatter plus an all-gather (twice), a reduce-scatter sends
# the group's partial shards (about group size x its result: charged as an all-reduce of the whole, 2x, since only
# the result shard is in the HLO), all-to-all and permutes their buffer once.
COLLECTIVE_TRAFFIC = {"all-gather": 1.0, "all-reduce": 2.0, "reduce-scatter": 2.0, "all-to-all": 1.0,
                      "collective-permute": 1.0}
COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "token": 0}
# XLA options that only lower LLVM's effort: same HLO, buffer assignment and cost analysis, about half the compile.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ----------------------------------------------------------------------------------------------
# Simulated devices (before jax is imported)
# ----------------------------------------------------------------------------------------------
def set_device_count(n: int) -> None:
    """Make jax (not yet imported) see `n` CPU devices."""
    if "jax" in sys.modules:
        import jax

        if jax.device_count() != n:
            raise RuntimeError(f"jax is already imported with {jax.device_count()} devices; {n} were asked for")
        return
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


# ----------------------------------------------------------------------------------------------
# Host measurements and progress
# ----------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Ticker:
    """Prints '<what>... Ns elapsed, host RSS x GiB' every `every` seconds until stopped."""

    def __init__(self, what: str, log: Callable[[str], None], every: float = 30.0):
        self.what, self.log, self.every = what, log, every
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.log(f"  {self.what}... {time.perf_counter() - self.start:.0f}s elapsed, "
                     f"host RSS {rss_bytes() / GiB:.2f} GiB")

    def __enter__(self):
        self.log(f"{self.what}...")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.start
        self.log(f"  {self.what} {'failed' if exc[0] else 'done'} in {self.seconds:.1f}s "
                 f"(host RSS {rss_bytes() / GiB:.2f} GiB, peak {peak_rss_bytes() / GiB:.2f} GiB)")


# ----------------------------------------------------------------------------------------------
# Compiled HLO text: computations, call graph with loop trip counts, collectives, dot/conv FLOPs
# ----------------------------------------------------------------------------------------------
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%([^\s(]+)\s*\((.*)\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(r"\b(body|calls|to_apply|condition)=%([^\s,)}]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _nbytes(type_text: str) -> int:
    return int(sum(DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for dt, dims in _SHAPE.findall(type_text)))


def _dims(type_text: str) -> list[int] | None:
    m = _SHAPE.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else None


def parse_hlo(text: str) -> tuple[dict[str, dict], str | None]:
    """Computations of an HLO module text: {name: {flops, collectives: {kind: [count, bytes]}, calls: [(name, x)]}}."""
    comps: dict[str, dict] = {}
    entry = None
    cur = None
    shapes: dict[str, list[int]] = {}
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            cur = {"flops": 0.0, "collectives": {}, "calls": [], "constants": []}
            comps[h.group(2)] = cur
            entry = h.group(2) if h.group(1) else entry
            shapes = {}
            for pm in re.finditer(r"([\w.\-]+):\s*([a-z][a-z0-9]*\[[\d,]*\])", h.group(3)):
                shapes[pm.group(1)] = _dims(pm.group(2))
            continue
        if cur is None:
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, type_text, op, rest = m.groups()
        dims = _dims(type_text) if not type_text.startswith("(") else None
        if dims is not None:
            shapes[name] = dims
        base = op[:-6] if op.endswith("-start") else op
        if base in COLLECTIVE_KINDS and not op.endswith("-done"):
            c = cur["collectives"].setdefault(base, [0, 0])
            c[0] += 1
            # an async '-start' returns (operands, result): count the result, the last shape
            last = (_SHAPE.findall(type_text) or [("f32", "0")])[-1]
            shapes_text = type_text if op == base else f"{last[0]}[{last[1]}]"
            c[1] += _nbytes(shapes_text)
        elif op == "dot" and dims is not None:
            operands = re.findall(r"%([^\s,)]+)", rest.split(")")[0])
            lhs = shapes.get(operands[0]) if operands else None
            cm = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
            if lhs is not None and cm:
                k = math.prod(lhs[int(i)] for i in cm.group(1).split(",") if i)
                cur["flops"] += 2.0 * math.prod(dims) * k
        elif op == "convolution" and dims is not None:
            operands = re.findall(r"%([^\s,)]+)", rest.split(")")[0])
            rhs = shapes.get(operands[1]) if len(operands) > 1 else None
            lm = re.search(r"dim_labels=[^_]+_([^-]+)->", rest)
            if rhs is not None and lm and "o" in lm.group(1):
                groups = re.search(r"feature_group_count=(\d+)", rest)
                per_out = math.prod(rhs) / rhs[lm.group(1).index("o")]
                cur["flops"] += 2.0 * math.prod(dims) * per_out / (int(groups.group(1)) if groups else 1) * 1.0
        if op == "constant" and type_text == "s32[]":
            cur["constants"].append(int(re.match(r"\s*(-?\d+)", rest).group(1)))
        trip = _TRIP.search(rest)
        calls = dict(_CALLS.findall(rest))
        for kind, callee in calls.items():
            if kind == "body":
                # before XLA's loop analysis (a module as partitioned) a scan's count is the bound its condition
                # compares the counter with; resolved once every computation is read
                cur["calls"].append((callee, int(trip.group(1)) if trip else ("condition", calls.get("condition"))))
            elif kind in ("calls", "condition"):
                cur["calls"].append((callee, 1))
        for _, callees in _CALL_LISTS.findall(rest):
            cur["calls"] += [(c.strip().lstrip("%"), 1) for c in callees.split(",") if c.strip()]
    for comp in comps.values():
        comp["calls"] = [(callee, times if isinstance(times, int) else
                          max(comps.get(times[1], {}).get("constants") or [1])) for callee, times in comp["calls"]]
    return comps, entry


def hlo_summary(text: str) -> dict[str, Any]:
    """Collectives by kind (static and executed counts/bytes) and executed dot+conv FLOPs of a compiled module."""
    comps, entry = parse_hlo(text)
    memo: dict[str, tuple[float, dict]] = {}

    def inclusive(name: str, depth: int = 0) -> tuple[float, dict]:
        if name in memo:
            return memo[name]
        comp = comps.get(name)
        if comp is None or depth > 200:
            return 0.0, {}
        flops, coll = comp["flops"], {k: list(v) for k, v in comp["collectives"].items()}
        for callee, times in comp["calls"]:
            f, c = inclusive(callee, depth + 1)
            flops += times * f
            for k, (n, b) in c.items():
                acc = coll.setdefault(k, [0, 0])
                acc[0] += times * n
                acc[1] += times * b
        memo[name] = (flops, coll)
        return memo[name]

    flops, executed = inclusive(entry) if entry else (0.0, {})
    static = {}
    for comp in comps.values():
        for k, (n, b) in comp["collectives"].items():
            acc = static.setdefault(k, [0, 0])
            acc[0] += n
            acc[1] += b
    collectives = {k: {"count": static.get(k, [0, 0])[0], "bytes": static.get(k, [0, 0])[1],
                       "executed_count": executed.get(k, [0, 0])[0], "executed_bytes": executed.get(k, [0, 0])[1]}
                   for k in COLLECTIVE_KINDS}
    loops = [int(n) for n in _TRIP.findall(text)]
    return {"collectives": collectives, "hlo_flops": flops, "while_trip_counts": sorted(loops, reverse=True)}


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def roofline(flops: dict[str, float], collectives: dict[str, dict]) -> dict[str, dict]:
    """Estimated step time and model FLOPs utilisation per TPU generation, bounded by full and by no overlap of
    compute and collectives (see the note in `plan`)."""
    traffic = sum(COLLECTIVE_TRAFFIC[k] * c["executed_bytes"] for k, c in collectives.items())
    out = {}
    for name, (peak, ici) in TPU_GENERATIONS.items():
        compute, comm = flops["hlo_flops_per_device"] / peak, traffic / ici
        overlapped, serial = max(compute, comm), compute + comm
        out[name] = {"compute_s": compute, "collectives_s": comm, "step_s_overlapped": overlapped,
                     "step_s_serial": serial, "mfu_overlapped": flops["model_flops_per_device"] / peak / overlapped,
                     "mfu_serial": flops["model_flops_per_device"] / peak / serial}
    return out


def partitioned_dump_options(directory: str) -> dict[str, Any]:
    """Compiler options that write the step's module as the SPMD partitioner left it, before XLA:CPU's own passes
    (which upcast bfloat16 collectives to float32: a TPU moves them in bfloat16)."""
    return {"xla_dump_to": directory, "xla_dump_hlo_pass_re": "spmd-partitioning",
            "xla_dump_hlo_module_re": ".*train_step.*"}


@contextlib.contextmanager
def uncached():
    """No persistent compilation cache: a program loaded from it skips the partitioner, whose output we read.

    JAX decides once per process whether the cache is used, at the first compile, so the setting alone changes
    nothing in a process that has compiled before (a test worker): reset_cache makes it decide again, on entry and
    on exit. The cache key leaves out the dump options, so a hit would otherwise be possible for any program
    compiled before with the cache on."""
    import jax
    from jax.experimental.compilation_cache.compilation_cache import reset_cache

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        reset_cache()


def read_partitioned(directory: str) -> str | None:
    found = sorted(Path(directory).glob("*train_step*after_spmd-partitioning*.txt"))
    return found[-1].read_text() if found else None


def parse_mesh(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        out[k.strip()] = int(v)
    return out


def build_config(variant: str, mesh: dict[str, int], global_batch: int, frames: int = 12,
                 mask_ratio: float | None = None, remat: str = "full", dtype: str = "bfloat16", grad_accum: int = 1,
                 source: str = "transcribed", context_length: int | None = None, sequence_parallel: bool = False):
    """The recipe of `variant` (`tools.common.recipe_config`) with these overrides (what `--config.X=...` would
    do)."""
    from tools.common import recipe_config

    config = recipe_config(variant)
    with config.unlocked():
        config.model.dtype = dtype
        config.model.remat = remat
        config.model.num_frames = frames
        if mask_ratio is not None:
            config.model.mask_ratio = float(mask_ratio)
        config.mesh = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
        config.sequence_parallel = sequence_parallel
        config.data[f"{source}_batch"] = global_batch
        config.data.sources = (source,)
        config.data.source_start = {"transcribed": 0.0, "captioned": 0.0}  # the one planned step from update 0
        if context_length is not None:
            config.data.context_length = context_length
        config.grad_accum_steps = grad_accum
    return config


def divisibility_hints(variant, mesh: dict[str, int]) -> list[str]:
    """Model dimensions that a mesh axis does not divide (under the default rules such dimensions stay replicated)."""
    v, t, h = variant.video, variant.text, variant.sort_head
    dims = {"fsdp": {"video width ('embed')": v.width, "text width ('embed')": t.width},
            "tensor": {"video mlp ('mlp')": v.mlp_dim, "text mlp ('mlp')": t.mlp_dim, "video heads": v.heads,
                       "text heads": t.heads, "sort head heads": h.heads, "vocabulary": t.vocab_size}}
    return [f"{name} = {size} is not divisible by {axis} = {mesh[axis]}"
            for axis, named in dims.items() if mesh.get(axis, 1) > 1 for name, size in named.items()
            if size % mesh[axis]]


def _tree_bytes(abstract, shardings) -> tuple[int, int]:
    """(global bytes, per-device bytes) of a tree of abstract arrays and their shardings."""
    import jax
    import numpy as np

    total = per_device = 0
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        item = np.dtype(a.dtype).itemsize
        total += math.prod(a.shape) * item
        per_device += math.prod(s.shard_shape(a.shape)) * item
    return total, per_device


def plan(config, source: str = "transcribed", log: Callable[[str], None] = print,
         compiler_options: dict | None = None, keep_hlo: bool = False) -> dict[str, Any]:
    """Lower and compile the trainer's step for `config` on the current (simulated) devices; never allocates params.

    Returns the result dict (see the module docstring for its keys). On failure status is 'failed', `stage` says
    where ('setup', 'lower', 'compile') and `error` why; whatever was measured before stays in the dict.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import traverse_util

    from tvts import config as config_lib
    from tvts import flops, sharding
    from tvts.checkpoint import with_shardings
    from tvts.state import make_setup
    from tvts.step import make_train_step

    variant = config_lib.model_variant(config.model)
    shape = flops.step_shape(config, source)
    batch_size, frames, n_keep = shape.batch, shape.frames, shape.kept_patches
    num_texts, text_len = shape.num_texts, shape.text_length
    ratio = config_lib.mask_ratio(config)
    result: dict[str, Any] = {
        "status": "failed", "stage": "setup", "error": None,
        "settings": {"variant": variant.name, "devices": jax.device_count(), "mesh": dict(config.mesh),
                     "global_batch": batch_size, "frames": frames, "mask_ratio": ratio, "kept_patches": n_keep,
                     "video_tokens": shape.video_tokens, "texts_per_clip": num_texts, "context_length": text_len,
                     "remat": config.model.remat, "dtype": config.model.dtype,
                     "grad_accum": int(config.grad_accum_steps), "source": source,
                     "sequence_parallel": config_lib.sequence_parallel(config)},
        "params": {}, "per_device_bytes": {}, "memory_analysis": {}, "flops": {}, "collectives": {}, "fits": {},
        "timing": {}, "host": {}, "notes": [],
    }
    t0 = time.perf_counter()

    def finish():
        result["host"] = {"peak_rss_bytes": peak_rss_bytes(), "rss_bytes": rss_bytes()}
        result["timing"]["total_s"] = round(time.perf_counter() - t0, 2)
        return result

    # --- Setup: mesh, abstract state and its shardings (the trainer's own code). ---
    try:
        with Ticker("setup (mesh, abstract state, shardings)", log) as tk:
            setup = make_setup(config)
        result["timing"]["setup_s"] = round(tk.seconds, 2)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        result["error"] = f"{type(e).__name__}: {e}"
        result["notes"] += divisibility_hints(variant, dict(config.mesh))
        return finish()
    mesh = setup.mesh
    result["settings"]["mesh"] = dict(mesh.shape)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    result["settings"]["clips_per_batch_shard"] = batch_size / batch_shards  # per device unless tensor > 1

    params, params_sh = setup.abstract_state["params"], setup.state_sharding["params"]
    flat_p, flat_s = traverse_util.flatten_dict(params), traverse_util.flatten_dict(params_sh)
    flat_l = traverse_util.flatten_dict(setup.labels)

    def nbytes(shape, dtype):
        return math.prod(shape) * np.dtype(dtype).itemsize

    n_total = sum(math.prod(p.shape) for p in flat_p.values())
    n_trained = sum(math.prod(p.shape) for k, p in flat_p.items() if flat_l[k] is not None)
    trained_dev = sum(nbytes(flat_s[k].shard_shape(p.shape), p.dtype) for k, p in flat_p.items()
                      if flat_l[k] is not None)
    p_total, p_dev = _tree_bytes(params, params_sh)
    o_total, o_dev = _tree_bytes(setup.abstract_state["opt_state"], setup.state_sharding["opt_state"])
    rest = [k for k in setup.abstract_state if k not in ("params", "opt_state")]
    _, other_dev = _tree_bytes([setup.abstract_state[k] for k in rest], [setup.state_sharding[k] for k in rest])
    replicated = sorted((nbytes(p.shape, p.dtype), "/".join(k)) for k, p in flat_p.items()
                        if flat_s[k].is_fully_replicated)[::-1]
    result["params"] = {
        "count": n_total, "trained": n_trained, "frozen": n_total - n_trained, "bytes": p_total,
        "optimizer_bytes": o_total, "replicated_fraction": sharding.replicated_fraction(params, params_sh),
        "largest_replicated": [{"name": n, "bytes": b} for b, n in replicated[:5]],
    }
    result["per_device_bytes"] = {"params": p_dev, "trained_params": trained_dev, "optimizer": o_dev,
                                  "other_state": other_dev, "state": p_dev + o_dev + other_dev}

    # --- Abstract arguments. ---
    img = variant.video.image_size
    if batch_size % batch_shards:
        result["stage"] = "lower"
        result["error"] = (f"global batch {batch_size} is not divisible by data x fsdp = {batch_shards} "
                           f"(the batch dimension is sharded over both)")
        return finish()
    state = with_shardings(setup.abstract_state, setup.state_sharding)
    batch = {"video": jax.ShapeDtypeStruct((batch_size, frames, img, img, 3), jnp.uint8,
                                           sharding=sharding.batch_sharding(mesh, 5)),
             "texts": jax.ShapeDtypeStruct((batch_size, num_texts, text_len), jnp.int32,
                                           sharding=sharding.batch_sharding(mesh, 3))}
    _, b_dev = _tree_bytes(batch, {k: v.sharding for k, v in batch.items()})
    result["per_device_bytes"]["batch"] = b_dev
    rng = jax.eval_shape(lambda: jax.random.key(0))

    # --- Lower and compile the trainer's jitted step. ---
    try:
        result["stage"] = "lower"
        step = make_train_step(setup, source)
        with jax.set_mesh(mesh), nn.logical_axis_rules(setup.rules):
            with Ticker("lowering", log) as tk:
                # the last update's program: every parameter group and loss term on
                lowered = step.jitted_for(setup.curriculum.total_updates - 1).lower(state, batch, rng)
            result["timing"]["lower_s"] = round(tk.seconds, 2)
            result["stage"] = "compile"
            with Ticker("compiling", log) as tk, tempfile.TemporaryDirectory() as dump, uncached():
                compiled = lowered.compile({**(compiler_options or {}), **partitioned_dump_options(dump)})
                partitioned = read_partitioned(dump)
            result["timing"]["compile_s"] = round(tk.seconds, 2)
        result["host"]["peak_rss_after_compile_bytes"] = peak_rss_bytes()
    except Exception as e:  # noqa: BLE001
        result["error"] = f"{type(e).__name__}: {e}"
        return finish()

    # --- Measurements of the compiled per-device program. ---
    ma = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes", "peak_memory_in_bytes")
    result["memory_analysis"] = {f: int(getattr(ma, f, 0) or 0) for f in fields}
    m = result["memory_analysis"]
    total = (m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"]
             + m["temp_size_in_bytes"] + m["generated_code_size_in_bytes"])
    result["per_device_bytes"].update(argument=m["argument_size_in_bytes"], output=m["output_size_in_bytes"],
                                      alias=m["alias_size_in_bytes"], temp=m["temp_size_in_bytes"],
                                      generated_code=m["generated_code_size_in_bytes"], total=total)
    result["fits"] = {name: {"hbm_bytes": gib * GiB, "fits": total <= gib * GiB,
                             "headroom_bytes": gib * GiB - total} for name, gib in HBM_GIB.items()}

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    summary = hlo_summary(text)
    result["collectives_cpu_compiled"] = summary["collectives"]
    if partitioned is not None:
        result["collectives"] = hlo_summary(partitioned)["collectives"]
        result["notes"].append("collectives as SPMD-partitioned (dtypes as a TPU compiles them); "
                               "collectives_cpu_compiled: after XLA:CPU's passes, which move bfloat16 collectives "
                               "in float32")
    else:  # the executable came from a compilation cache: no partitioning pass ran
        result["collectives"] = summary["collectives"]
        result["notes"].append("collectives from the XLA:CPU program (bfloat16 collectives appear as float32): the "
                               "compiled program came from a cache, so its partitioned module was not seen")
    n_dev = jax.device_count()
    analytic = flops.step_flops(config, source)
    result["flops"] = {
        "xla_cost_analysis_per_device": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
        "hlo_flops_per_device": summary["hlo_flops"],
        "model_flops_per_device": analytic["model_flops"] / n_dev,
        "model_flops_with_remat_per_device": analytic["model_flops_with_remat"] / n_dev,
        "model_flops_global": analytic["model_flops"],
        "crude_6NT_global": 6.0 * n_trained * batch_size * (shape.video_tokens + num_texts * text_len),
        "while_trip_counts": summary["while_trip_counts"],
    }
    result["roofline"] = roofline(result["flops"], result["collectives"])
    result["notes"].append("roofline: compute = executed HLO FLOPs per device / peak; collectives = executed bytes x "
                           "traffic factor / ICI bandwidth; the step takes max(compute, collectives) if XLA overlaps "
                           "them fully, their sum if not; XLA:CPU has no reduce-scatter, so gradient all-reduces "
                           "(2x traffic) stand in for TPU's reduce-scatters")
    result["notes"].append("temp/argument/output from XLA:CPU buffer assignment of the per-device SPMD program: "
                           "an estimate of TPU memory, not a TPU measurement")
    result["notes"].append("xla_cost_analysis counts each while-loop body once; hlo_flops applies the trip counts")
    result["notes"].append("XLA:CPU may keep bfloat16 values in float32 (xla_allow_excess_precision), e.g. a float32 "
                           "copy of a scanned stack's saved bfloat16 activations; TPU keeps them in bfloat16")
    if keep_hlo:
        result["hlo_text"] = text
    result["status"], result["stage"] = "ok", "done"
    return finish()


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def _b(n: float) -> str:
    return f"{n / GiB:9.3f} GiB" if abs(n) >= 0.1 * GiB else f"{n / 2**20:9.1f} MiB"


def _n(x: float) -> str:
    return f"{x / 1e9:.3f}B" if x >= 1e9 else f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}K"


def _f(x: float) -> str:
    return f"{x:.3e}"


def format_report(r: dict[str, Any]) -> str:
    s = r["settings"]
    mesh = ",".join(f"{k}={v}" for k, v in s["mesh"].items())
    lines = [f"== {s['variant']} | {s['devices']} devices | mesh {mesh} | global batch {s['global_batch']} "
             f"({s.get('clips_per_batch_shard', '?')} per data x fsdp shard) | {s['frames']} frames | "
             f"mask {s['mask_ratio']} "
             f"({s['kept_patches']} patches kept, {s['video_tokens']} video tokens) | {s['source']} "
             f"({s['texts_per_clip']}x{s['context_length']} text tokens) | remat {s['remat']} | {s['dtype']} | "
             f"grad_accum {s['grad_accum']}" + (" | sequence parallel" if s.get("sequence_parallel") else "")]
    if r["params"]:
        p = r["params"]
        lines.append(f"params {_n(p['count'])} ({_n(p['trained'])} trained, {_n(p['frozen'])} frozen), "
                     f"{_b(p['bytes']).strip()}; replicated fraction {p['replicated_fraction']:.2%}")
    if r["status"] != "ok":
        lines.append(f"FAILED at {r['stage']}: {r['error']}")
        lines += [f"  hint: {n}" for n in r["notes"]]
    d = r["per_device_bytes"]
    rows = [("parameters (shard shapes)", "params"), ("  of which trained", "trained_params"),
            ("optimizer state (Adam mu+nu)", "optimizer"), ("other state (step counters)", "other_state"),
            ("batch (uint8 video + int32 texts)", "batch"), ("XLA arguments", "argument"),
            ("XLA outputs", "output"), ("XLA outputs aliased to arguments", "alias"),
            ("XLA temporaries (activations etc.)", "temp"), ("XLA generated code", "generated_code"),
            ("TOTAL per device", "total")]
    lines.append("per-device bytes")
    lines += [f"  {label:<36}{_b(d[k])}" for label, k in rows if k in d]
    if r["fits"]:
        lines.append("fits: " + ";  ".join(f"{name}: {'YES' if v['fits'] else 'NO'} "
                                          f"({'+' if v['headroom_bytes'] >= 0 else '-'}"
                                          f"{_b(abs(v['headroom_bytes'])).strip()})" for name, v in r["fits"].items()))
    if r["flops"]:
        f = r["flops"]
        lines.append(f"FLOPs per device per step: model {_f(f['model_flops_per_device'])} | model+remat "
                     f"{_f(f['model_flops_with_remat_per_device'])} | compiled HLO dots/convs x trip counts "
                     f"{_f(f['hlo_flops_per_device'])} | XLA cost_analysis (loop bodies once) "
                     f"{_f(f['xla_cost_analysis_per_device'])}")
        lines.append(f"  global model FLOPs {_f(f['model_flops_global'])} (crude 6*N_trained*(video+text tokens): "
                     f"{_f(f['crude_6NT_global'])}); loop trip counts {f['while_trip_counts']}")
    if r["collectives"]:
        lines.append(f"  {'collective':<20}{'static':>8}{'bytes':>14}{'executed':>10}{'bytes':>14}")
        for k, c in r["collectives"].items():
            lines.append(f"  {k:<20}{c['count']:>8}{_b(c['bytes']):>14}{c['executed_count']:>10}"
                         f"{_b(c['executed_bytes']):>14}")
    if r.get("roofline"):
        lines.append("roofline per step (compute | collectives -> step with full / no overlap, MFU):")
        for name, e in r["roofline"].items():
            lines.append(f"  {name:<8} {1e3 * e['compute_s']:8.1f} ms | {1e3 * e['collectives_s']:8.1f} ms -> "
                         f"{1e3 * e['step_s_overlapped']:8.1f} / {1e3 * e['step_s_serial']:8.1f} ms, MFU "
                         f"{e['mfu_overlapped']:.0%} / {e['mfu_serial']:.0%}")
    t, h = r["timing"], r["host"]
    lines.append(f"time: setup {t.get('setup_s', '-')}s, lower {t.get('lower_s', '-')}s, compile "
                 f"{t.get('compile_s', '-')}s; host peak RSS {h.get('peak_rss_bytes', 0) / GiB:.2f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--devices", type=int, required=True, help="simulated CPU devices (e.g. 256, 512)")
    ap.add_argument("--mesh", default="fsdp=-1", help="data=..,fsdp=..,tensor=.. (-1 fills)")
    ap.add_argument("--global_batch", type=int, required=True, help="clips per update (global)")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--mask_ratio", type=float, default=None, help="default: the variant's published ratio")
    ap.add_argument("--remat", default="full", choices=("none", "full", "dots", "dots_no_batch"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--source", default="transcribed", choices=("transcribed", "captioned"))
    ap.add_argument("--context_length", type=int, default=None)
    ap.add_argument("--sequence_parallel", action="store_true",
                    help="split the residual stream's tokens over the tensor axis too (config.sequence_parallel)")
    ap.add_argument("--fast_compile", action="store_true",
                    help=f"LLVM at -O0 ({FAST_COMPILE}): same HLO and buffer assignment, faster compile")
    ap.add_argument("--xla_option", action="append", default=[], metavar="NAME=VALUE",
                    help="extra XLA compiler option (repeatable), e.g. xla_allow_excess_precision=false")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--dump_hlo", default=None, help="write the compiled HLO text here")
    args = ap.parse_args(argv)

    set_device_count(args.devices)  # before jax is imported (below, via tvts)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    config = build_config(args.variant, parse_mesh(args.mesh), args.global_batch, args.frames, args.mask_ratio,
                          args.remat, args.dtype, args.grad_accum, args.source, args.context_length,
                          args.sequence_parallel)
    options = dict(FAST_COMPILE) if args.fast_compile else {}
    for item in args.xla_option:
        name, _, value = item.partition("=")
        options[name] = {"true": True, "false": False}.get(value.lower(), value)
    result = plan(config, args.source, log=log, compiler_options=options, keep_hlo=bool(args.dump_hlo))
    result["settings"]["compiler_options"] = {k: str(v) for k, v in options.items()}
    result["settings"]["fast_compile"] = args.fast_compile
    result["settings"]["command"] = "python -m tools.plan_memory " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.dump_hlo and "hlo_text" in result:
        with open(args.dump_hlo, "w") as f:
            f.write(result.pop("hlo_text"))
    print(format_report(result), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.out}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
