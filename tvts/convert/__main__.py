"""python -m tvts.convert {openai_clip,open_clip,tvtsv2} CHECKPOINT --variant B/16 --out DIR
   python -m tvts.convert to_tvtsv2 DIR --out FILE.safetensors

The first form converts a released checkpoint into a params-only checkpoint directory (the leaves the source has;
the run's init supplies the rest) for `python -m tvts.train ... --config.init=DIR`. The second writes a parameter
directory (a converted one, or a run's `checkpoints/` folder) back as the official TVTSv2 state dict.

TVTS v1 (variants v1-B/16, v1-tiny; docs/convert.md, "TVTS v1"):

   python -m tvts.convert {mae,distilbert,tvts_v1} CHECKPOINT --variant v1-B/16 --out DIR
   python -m tvts.convert v1_init --mae mae_pretrain_vit_base.pth --distilbert distilbert-base-uncased/ \
       --variant v1-B/16 --out DIR
   python -m tvts.convert to_tvts_v1 DIR --out FILE.safetensors

`distilbert` reads a Hugging Face model directory (or its weights file with config.json beside it); `v1_init` writes
the published v1 init (MAE video tower and DistilBERT text tower) as one directory.
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
from tvts.models.variants_v1 import V1_VARIANT_NAMES

log = logging.getLogger("tvts.convert")

V1_SOURCES = ("mae", "distilbert", "tvts_v1")  # converters of the TVTS v1 family (variants V1_VARIANT_NAMES)


def variant_with(name: str, text_num_frozen: int | None) -> Variant:
    variant = decode_variant(name)
    if text_num_frozen is not None and text_num_frozen >= 0:
        if text_num_frozen > variant.text.depth:
            raise SystemExit(f"--text_num_frozen={text_num_frozen} exceeds the text tower's "
                             f"{variant.text.depth} blocks")
        variant = dataclasses.replace(variant, text=dataclasses.replace(variant.text, num_frozen=text_num_frozen))
    return variant


def convert_command(args) -> None:
    from tvts.convert.io import load_state_dict

    variant = variant_with(args.variant, args.text_num_frozen)
    start = time.perf_counter()
    state_dict = load_state_dict(args.checkpoint)
    conversion = source_module(args.source).convert(state_dict, variant, source=os.path.basename(args.checkpoint))
    del state_dict
    save_conversion(args, conversion, os.path.abspath(args.checkpoint),
                    f"python -m tvts.convert {args.source} --variant {variant.name} "
                    f"--text_num_frozen {variant.text.num_frozen}", start,
                    text_num_frozen=variant.text.num_frozen)


def to_tvtsv2_command(args) -> None:
    from tvts.checkpoint import read_params
    from tvts.convert import tvtsv2
    from tvts.convert.io import write_safetensors

    name = directory_variant(args)
    params = read_params(args.directory)
    frozen = params.get("text", {}).get("frozen_blocks")
    num_frozen = next(iter(_leaves(frozen))).shape[0] if frozen else 0
    variant = variant_with(name, num_frozen)
    tensors = tvtsv2.from_params(params, variant, contiguous=False)
    write_safetensors(args.out, tensors, {"format": "pt", "tvts_variant": variant.name})
    log.info("wrote %d tensors to %s", len(tensors), args.out)


def save_conversion(args, conversion, checkpoint: str, command: str, start: float, **extra) -> None:
    """The converted params and what made them (source, checkpoint, the command, what was initialised) in args.out."""
    from tvts.checkpoint import save_params

    converted = time.perf_counter()
    metadata = {
        "source": args.source, "checkpoint": checkpoint, "variant": conversion.variant.name, **extra,
        "conversion": command,
        "initialised": conversion.initialised, "dropped": conversion.dropped, "resampled": conversion.resampled,
        "source_dtypes": conversion.source_dtypes,
    }
    save_params(args.out, conversion.params, metadata)
    log.info("wrote %s (convert %.1f s, save %.1f s)", args.out, converted - start, time.perf_counter() - converted)


def directory_variant(args) -> str:
    """The variant a params directory was written for: --variant, else its metadata, else its run's config."""
    from tvts.checkpoint import read_meta

    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"--out {args.out}: write a .safetensors file")
    name = args.variant or read_meta(args.directory).get("variant") or _run_variant(args.directory)
    if not name:
        raise SystemExit(f"{args.directory} does not say its variant: pass --variant")
    return name


def convert_v1_command(args) -> None:
    import importlib

    start = time.perf_counter()
    conversion = importlib.import_module(f"tvts.convert.{args.source}").convert_file(args.checkpoint, args.variant)
    save_conversion(args, conversion, os.path.abspath(args.checkpoint),
                    f"python -m tvts.convert {args.source} --variant {conversion.variant.name}", start)


def v1_init_command(args) -> None:
    from tvts.convert import tvts_v1

    start = time.perf_counter()
    conversion = tvts_v1.published_init_files(args.mae, args.distilbert, args.variant)
    save_conversion(args, conversion, f"{os.path.abspath(args.mae)} + {os.path.abspath(args.distilbert)}",
                    f"python -m tvts.convert v1_init --variant {conversion.variant.name}", start)


def to_tvts_v1_command(args) -> None:
    from tvts.checkpoint import read_params
    from tvts.convert import tvts_v1
    from tvts.convert.io import write_safetensors

    name = directory_variant(args)
    tensors = tvts_v1.from_params(read_params(args.directory), name, contiguous=False)
    write_safetensors(args.out, tensors, {"format": "pt", "tvts_variant": name})
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
    for source in V1_SOURCES:
        p = sub.add_parser(source, help=f"{source} checkpoint -> TVTS v1 params directory for --config.init")
        p.add_argument("checkpoint", help="distilbert: a Hugging Face model directory (or its weights file with "
                                          "config.json beside it); others: .safetensors or .pth (torch)")
        p.add_argument("--variant", required=True, choices=V1_VARIANT_NAMES)
        p.add_argument("--out", required=True, help="a new directory")
        p.set_defaults(run=convert_v1_command, source=source)
    p = sub.add_parser("v1_init", help="MAE + DistilBERT -> the published TVTS v1 init, one params directory")
    p.add_argument("--mae", required=True, help="MAE's mae_pretrain_vit_base.pth ({'model': ...}) or .safetensors")
    p.add_argument("--distilbert", required=True, help="a Hugging Face DistilBERT directory (weights + config.json)")
    p.add_argument("--variant", required=True, choices=V1_VARIANT_NAMES)
    p.add_argument("--out", required=True, help="a new directory")
    p.set_defaults(run=v1_init_command, source="v1_init")
    p = sub.add_parser("to_tvts_v1", help="TVTS v1 params directory -> the official v1 state dict (.safetensors)")
    p.add_argument("directory", help="a converted directory, or a v1 run's checkpoints/ folder (its newest step)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=V1_VARIANT_NAMES, default=None,
                   help="default: the directory's metadata, or the run's config.json beside checkpoints/")
    p.set_defaults(run=to_tvts_v1_command)
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
