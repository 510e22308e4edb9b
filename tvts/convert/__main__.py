"""python -m tvts.convert {openai_clip,open_clip,tvtsv2} CHECKPOINT --variant B/16 --out DIR
   python -m tvts.convert to_tvtsv2 DIR --out FILE.safetensors

The first form converts a released checkpoint into a params-only checkpoint directory (the leaves the source has;
the run's init supplies the rest) for `python -m tvts.train ... --config.init=DIR`. The second writes a parameter
directory (a converted one, or a run's `checkpoints/` folder) back as the official TVTSv2 state dict.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

from tvts.convert import SOURCES, source_module
from tvts.models.variants import VARIANT_NAMES, Variant, decode_variant

log = logging.getLogger("tvts.convert")


def variant_with(name: str, text_num_frozen: int | None) -> Variant:
    variant = decode_variant(name)
    if text_num_frozen is not None and text_num_frozen >= 0:
        if text_num_frozen > variant.text.depth:
            raise SystemExit(f"--text_num_frozen={text_num_frozen} exceeds the text tower's "
                             f"{variant.text.depth} blocks")
        variant = dataclasses.replace(variant, text=dataclasses.replace(variant.text, num_frozen=text_num_frozen))
    return variant


def convert_command(args) -> None:
    from tvts.checkpoint import save_params
    from tvts.convert.io import load_state_dict

    variant = variant_with(args.variant, args.text_num_frozen)
    start = time.perf_counter()
    state_dict = load_state_dict(args.checkpoint)
    conversion = source_module(args.source).convert(state_dict, variant, source=os.path.basename(args.checkpoint))
    del state_dict
    converted = time.perf_counter()
    metadata = {
        "source": args.source, "checkpoint": os.path.abspath(args.checkpoint), "variant": variant.name,
        "text_num_frozen": variant.text.num_frozen,
        "conversion": f"python -m tvts.convert {args.source} --variant {variant.name} "
                      f"--text_num_frozen {variant.text.num_frozen}",
        "initialised": conversion.initialised, "dropped": conversion.dropped, "resampled": conversion.resampled,
        "source_dtypes": conversion.source_dtypes,
    }
    save_params(args.out, conversion.params, metadata)
    log.info("wrote %s (convert %.1f s, save %.1f s)", args.out, converted - start, time.perf_counter() - converted)


def to_tvtsv2_command(args) -> None:
    from tvts.checkpoint import read_meta, read_params
    from tvts.convert import tvtsv2
    from tvts.convert.io import write_safetensors

    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"--out {args.out}: write a .safetensors file")
    meta = read_meta(args.directory)
    name = args.variant or meta.get("variant") or _run_variant(args.directory)
    if not name:
        raise SystemExit(f"{args.directory} does not say its variant: pass --variant")
    params = read_params(args.directory)
    frozen = params.get("text", {}).get("frozen_blocks")
    num_frozen = next(iter(_leaves(frozen))).shape[0] if frozen else 0
    variant = variant_with(name, num_frozen)
    tensors = tvtsv2.from_params(params, variant, contiguous=False)
    write_safetensors(args.out, tensors, {"format": "pt", "tvts_variant": variant.name})
    log.info("wrote %d tensors to %s", len(tensors), args.out)


def _run_variant(directory: str) -> str | None:
    """The variant of the run whose `checkpoints/` folder `directory` is (its workdir's config.json), if any."""
    path = os.path.join(os.path.dirname(os.path.abspath(directory)), "config.json")
    try:
        with open(path) as f:
            return json.load(f)["model"]["variant"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _leaves(tree):
    for value in tree.values():
        yield from (_leaves(value) if isinstance(value, dict) else [value])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tvts.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for source in SOURCES:
        p = sub.add_parser(source, help=f"{source} checkpoint -> params directory for --config.init")
        p.add_argument("checkpoint", help=".safetensors, or .pt/.pth/.bin (needs torch: the 'convert' extra)")
        p.add_argument("--variant", required=True, choices=VARIANT_NAMES)
        p.add_argument("--out", required=True, help="a new directory")
        p.add_argument("--text_num_frozen", type=int, default=None,
                       help="frozen text blocks, as the run's config.model.text_num_frozen (default: the variant's)")
        p.set_defaults(run=convert_command, source=source)
    p = sub.add_parser("to_tvtsv2", help="params directory -> the official TVTSv2 state dict (.safetensors)")
    p.add_argument("directory", help="a converted directory, or a run's checkpoints/ folder (its newest step)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=VARIANT_NAMES, default=None,
                   help="default: the directory's metadata, or the run's config.json beside checkpoints/")
    p.set_defaults(run=to_tvtsv2_command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
