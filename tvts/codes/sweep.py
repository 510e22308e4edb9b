"""Every method at every bit budget on one set of feature files, evaluated: the tables of docs/codes.md.

    python -m tvts.codes.sweep --out DIR [--features FEATURES_DIR] [--methods conmh mecoq ...] [--bits 16 32 64 128]
        [--seed 0] [--set method.key=value ...]

Without --features it first writes the synthetic feature files (tvts/codes/synthetic.py, seed --seed) to
DIR/features. FEATURES_DIR must hold train.npz, query.npz and database.npz. Then, for each method and bits, it
trains DIR/codes/<method>_<bits> (an existing codes directory is kept: an interrupted sweep resumes) and evaluates:
    DIR/video/          query.npz against database.npz (mAP@K, P@K; labels needed)
    DIR/text_to_video/  query.npz's texts against its own videos (R@K; hcq and the baselines, when it has texts)
each with results.json, results.md and map_vs_bits.png, and DIR/summary.md with both.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tvts.codes import evaluate, features, synthetic
from tvts.codes import methods as registry
from tvts.codes.coder import BITS


def run(out: str, *, features_dir: str | None = None, methods: Sequence[str] | None = None,
        bits: Sequence[int] = BITS, seed: int = 0, options: dict[str, dict] | None = None,
        progress: bool = True) -> dict[str, dict]:
    methods = list(methods or registry.METHODS)
    options = options or {}
    if features_dir is None:
        features_dir = os.path.join(out, "features")
        if not all(os.path.exists(os.path.join(features_dir, f"{s}.npz")) for s in ("train", "query", "database")):
            print(f"writing synthetic features to {features_dir}", file=sys.stderr)
            synthetic.write(features_dir, seed=seed)
    paths = {s: os.path.join(features_dir, f"{s}.npz") for s in ("train", "query", "database")}
    train = features.load(paths["train"])
    runs, skipped = [], []
    for method in methods:  # every input check before the first training; a pair the features cannot train is skipped
        for b in bits:
            try:
                registry.METHODS[method].check(train, b)
                runs.append((method, b))
            except features.FeatureFileError as err:
                skipped.append(f"{method} at {b} bits: {err}")
                print(f"skipped {skipped[-1]}", file=sys.stderr)
    dirs = []
    for method, b in runs:
        directory = os.path.join(out, "codes", f"{method}_{b}")
        dirs.append(directory)
        if os.path.exists(os.path.join(directory, "codes.json")):
            continue
        trained = registry.train(method, b, train, seed=seed, progress=progress, **options.get(method, {}))
        trained.save(directory)
        print(f"{method} {b} bits: trained in {trained.info['seconds']:.1f} s", file=sys.stderr)
    results = {"video": evaluate.evaluate(dirs, paths["query"], paths["database"], os.path.join(out, "video"),
                                          title="Video to video (labels)")}
    if features.load(paths["query"]).texts is not None:
        text_dirs = [d for d in dirs if registry.METHODS[os.path.basename(d).rsplit("_", 1)[0]].text_queries]
        results["text_to_video"] = evaluate.evaluate(text_dirs, paths["query"], paths["query"],
                                                     os.path.join(out, "text_to_video"), title="Text to video")
    with open(os.path.join(out, "summary.md"), "w") as f:
        for name in results:
            f.write(open(os.path.join(out, name, "results.md")).read() + "\n")
        if skipped:
            f.write("Not trained (the features cannot train them):\n\n" + "".join(f"- {s}\n" for s in skipped))
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    from tvts.codes.train import parse_sets

    p = argparse.ArgumentParser(prog="python -m tvts.codes.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--features", default=None, help="folder with train.npz, query.npz, database.npz "
                   "(default: synthetic features written to OUT/features)")
    p.add_argument("--methods", nargs="+", default=list(registry.METHODS), choices=list(registry.METHODS))
    p.add_argument("--bits", nargs="+", type=int, default=list(BITS), choices=BITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE", help="method options, e.g. "
                   "conmh.steps=300")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    options: dict[str, dict] = {}
    for key, value in parse_sets(args.set).items():
        method, _, name = key.partition(".")
        options.setdefault(method, {})[name] = value
    try:
        results = run(args.out, features_dir=args.features, methods=args.methods, bits=args.bits, seed=args.seed,
                      options=options, progress=not args.quiet)
    except features.FeatureFileError as err:
        raise SystemExit(f"error: {err}") from None
    print(open(os.path.join(args.out, "summary.md")).read())
    return results


if __name__ == "__main__":
    main()
