"""Conversion time and peak memory on a synthetic checkpoint of a variant's real size.

    python -m tools.bench_convert --variant H/14 --source open_clip [--dtype float16] [--workdir DIR]
        [--back] [--out convert_H14.json]

Writes a .safetensors file with the source's names and the variant's shapes (random values, `--dtype`, one tensor
at a time), then converts it in a fresh process exactly as `python -m tvts.convert` does (`tvts.convert.io.
load_state_dict`, the source's `convert`, `tvts.checkpoint.save_params`), recording the wall time and the process's
peak resident memory (getrusage ru_maxrss) after the imports, after converting and after saving. With `--back`
(tvtsv2 only) it also times `to_tvtsv2` (the directory back to an official .safetensors). Prints and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synthetic_file(path: str, variant: str, source: str, dtype: str, seed: int = 0) -> dict:
    """The source's every tensor for `variant`, random, written one at a time; returns counts."""
    from tvts.convert import source_module
    from tvts.convert.io import _DTYPE_NAMES
    from tvts.convert.names import resolve_variant, source_shape, target_shapes

    v = resolve_variant(variant)
    shapes = target_shapes(v)
    specs = {}
    for r in source_module(source).rules(v):
        leaf = shapes[r.target] if r.layer is None else shapes[r.target][1:]
        specs[r.source] = source_shape(r.layout, leaf)
    if source != "tvtsv2":
        specs["logit_scale"] = ()
    dt = np.dtype(dtype)
    header, offset = {}, 0
    for name, shape in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _DTYPE_NAMES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for shape in specs.values():
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dt).tobytes())
    return {"tensors": len(specs), "values": int(sum(np.prod(s, dtype=np.int64) for s in specs.values())),
            "file_bytes": os.path.getsize(path)}


def child(args) -> None:
    """Runs in a fresh process: the conversion as the command line does it, with timings and peak memory."""
    import logging

    from tvts.checkpoint import save_params
    from tvts.convert import source_module
    from tvts.convert.io import load_state_dict
    from tvts.convert.names import flatten, resolve_variant, target_shapes

    logging.basicConfig(level=logging.WARNING)
    variant = resolve_variant(args.variant)
    target_shapes(variant)  # the model's shapes, as every conversion computes them (jax and flax loaded)
    out = {"peak_after_imports": peak_bytes()}
    start = time.perf_counter()
    conversion = source_module(args.source).convert(load_state_dict(args.file), variant)
    out["convert_s"] = time.perf_counter() - start
    out["peak_after_convert"] = peak_bytes()
    out["output_bytes"] = int(sum(x.nbytes for x in flatten(conversion.params).values()))
    out["initialised"] = conversion.initialised
    start = time.perf_counter()
    save_params(args.dir, conversion.params, {"variant": variant.name, "source": args.source})
    out["save_s"] = time.perf_counter() - start
    out["peak_after_save"] = peak_bytes()
    print(json.dumps(out))


def child_back(args) -> None:
    from tvts.convert.__main__ import main

    base = peak_bytes()
    start = time.perf_counter()
    main(["to_tvtsv2", args.dir, "--out", args.file])
    print(json.dumps({"to_tvtsv2_s": time.perf_counter() - start, "peak_before": base, "peak": peak_bytes()}))


def run_child(*argv: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.run([sys.executable, "-m", "tools.bench_convert", *argv], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"the conversion failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="H/14")
    parser.add_argument("--source", default="open_clip", choices=("openai_clip", "open_clip", "tvtsv2"))
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--workdir", default=None, help="where the synthetic file and the output go (default: a "
                                                        "temporary folder, removed afterwards)")
    parser.add_argument("--back", action="store_true", help="also time to_tvtsv2 (tvtsv2 only)")
    parser.add_argument("--out", default=None, help="JSON file")
    parser.add_argument("--child", choices=("convert", "back"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "convert":
        return child(args)
    if args.child == "back":
        return child_back(args)

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_convert_")
    os.makedirs(workdir, exist_ok=True)
    src, out_dir = os.path.join(workdir, "source.safetensors"), os.path.join(workdir, "params")
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        start = time.perf_counter()
        result = {"variant": args.variant, "source": args.source, "dtype": args.dtype,
                  **synthetic_file(src, args.variant, args.source, args.dtype)}
        result["write_synthetic_s"] = time.perf_counter() - start
        result.update(run_child("--child", "convert", "--variant", args.variant, "--source", args.source,
                                "--file", src, "--dir", out_dir))
        result["peak_over_output"] = (result["peak_after_save"] - result["peak_after_imports"]) / result[
            "output_bytes"]
        if args.back and args.source == "tvtsv2":
            back = os.path.join(workdir, "back.safetensors")
            result.update(run_child("--child", "back", "--variant", args.variant, "--file", back, "--dir", out_dir))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
