"""Write the synthetic corpus as real files (YT-Temporal + WebVid layouts) for one split.

    python -m tools.make_corpus --root /tmp/synth --split train --num_transcribed 1000 \
        --num_captioned 1000 [--image_size 32] [--subset NAME] [--seed 0] [--fps 8] [--workers 2]

Writes videos/<subset>/{data,annotations}/ (transcribed), videos/webvid_<split>_NNNNN/ (captioned),
meta_data/{yttemporal,webvid}_<split>.csv, results_2M_<split>.csv (WebVid's own CSV) and
meta_data/labels_<split>.json, so `python -m tvts.data.build yttemporal|webvid` reads them; see
tvts/data/synthetic_files.py for the layout.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from tvts.data import synthetic_files
from tvts.data.synthetic import SPLITS, SyntheticConfig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=f'python -m {__spec__.name}', description=__doc__.split('\n')[0])
    p.add_argument('--root', required=True, help='output directory')
    p.add_argument('--split', default='train', choices=SPLITS)
    p.add_argument('--num_transcribed', type=int, default=0)
    p.add_argument('--num_captioned', type=int, default=0)
    p.add_argument('--image_size', type=int, default=32)
    p.add_argument('--subset', default=None, help='YT-Temporal subset folder (default synthetic_<split>)')
    p.add_argument('--seed', type=int, default=0, help='base seed of the corpus')
    p.add_argument('--fps', type=float, default=None, help='frame rate of the files (default 8)')
    p.add_argument('--codec', default=None, choices=[None, 'libx264', 'mpeg4'])
    p.add_argument('--workers', type=int, default=1)
    args = p.parse_args(argv)
    if args.num_transcribed < 0 or args.num_captioned < 0:
        p.error('counts must be >= 0')
    if args.image_size % 2:
        p.error('--image_size must be even (yuv420p)')

    config = SyntheticConfig(image_size=args.image_size, seed=args.seed)
    t0 = time.perf_counter()
    summary = synthetic_files.write_split(
        args.root, args.split, args.num_transcribed, args.num_captioned, config,
        subset=args.subset, fps=args.fps, codec=args.codec, workers=args.workers,
        progress=synthetic_files.progress_printer(f'[make_corpus] {args.split}'))
    dt = time.perf_counter() - t0
    print(f"[make_corpus] split={args.split}: wrote {summary['num_transcribed']} transcribed "
          f"(YT-Temporal, subset {summary['subset']}) and {summary['num_captioned']} captioned "
          f"(WebVid) videos to {args.root} in {dt:.1f} s "
          f"({summary['codec']}, {summary['fps']:g} fps, {args.image_size} px)")
    for key in ('yttemporal_csv', 'webvid_csv', 'results_2M_csv', 'labels'):
        print(f'[make_corpus]   {key}: {summary[key]}')
    return summary


if __name__ == '__main__':
    main()
