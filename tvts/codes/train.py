"""Train compact codes on a feature file:

    python -m tvts.codes.train --method {conmh,mecoq,hcq,phpq,lsh,itq,pq,opq} --bits {16,32,64,128}
        --features TRAIN.npz --out CODES_DIR [--seed 0] [--steps N] [--set key=value ...] [--quiet]

The feature file is checked first (tvts/codes/features.py): a wrong key, NaNs, mismatched widths or too few items
for the codebooks stop the run with a message naming the file, before any training. CODES_DIR gets codes.json and
params.npz (tvts/codes/coder.py); `python -m tvts.codes.evaluate --codes CODES_DIR ...` uses them.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence

from tvts.codes import features, methods
from tvts.codes.coder import BITS, Coder


def parse_sets(pairs: Sequence[str]) -> dict:
    """['steps=100', 'lr=3e-4'] -> {'steps': 100, 'lr': 0.0003} (values as Python literals, else strings)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> Coder:
    p = argparse.ArgumentParser(prog="python -m tvts.codes.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=list(methods.METHODS))
    p.add_argument("--bits", required=True, type=int, choices=BITS)
    p.add_argument("--features", required=True, help="training feature file (.npz)")
    p.add_argument("--out", required=True, help="codes directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps of a learned method (its default if unset)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other method options")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    options = parse_sets(args.set)
    if args.steps is not None:
        if not methods.METHODS[args.method].learned:
            raise SystemExit(f"--steps: {args.method} is not trained by gradient steps")
        options["steps"] = args.steps
    try:
        feats = features.load(args.features)
        trained = methods.train(args.method, args.bits, feats, seed=args.seed, progress=not args.quiet, **options)
    except features.FeatureFileError as err:
        raise SystemExit(f"error: {err}") from None
    trained.save(args.out)
    print(f"wrote {args.out}: {args.method} at {args.bits} bits ({trained.bytes_per_item} bytes per item), trained on "
          f"{len(feats)} items in {trained.info['seconds']:.1f} s", file=sys.stderr)
    return trained


if __name__ == "__main__":
    main()
