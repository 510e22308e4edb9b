"""Build one dataset (TFDS, ArrayRecord) from its manual directory.

    python -m tvts.data.build NAME --manual_dir DIR --data_dir OUT [--config split2] [--check quick|full]
                                   [--workers N] [--overwrite]

NAME: yttemporal, webvid, msrvtt, didemo, lsmdc, ucf101, hmdb51, kinetics400, ssv2 (ucf101 / hmdb51 build split1,
split2 and split3, ssv2 builds labels and mc, unless --config names one). Writes OUT/NAME[/CONFIG]/1.0.0/
(ArrayRecord shards, dataset_info.json, skipped.json) and prints, at the end, each split's examples and the skipped
samples counted by reason. Read the
result with ``tfds.data_source(NAME, split=..., data_dir=OUT)`` after ``import tvts.data.builders``, or
``tfds.builder_from_directory(OUT/NAME/1.0.0).as_data_source(split)`` without it.

The same builders work with TFDS's own command, ``tfds build NAME --imports tvts.data.builders --manual_dir DIR
--data_dir OUT`` (or ``tfds build tvts/data/builders/NAME.py ...``). The ``tfds`` executable of TFDS 4.9 imports
TensorFlow when it starts; without TensorFlow, ``python -m tvts.data.build tfds ARGS...`` runs TFDS's build
command (tensorflow_datasets/scripts/cli/build.py) with the same ARGS.

Exit status: 0 built (or already built), 2 the manual directory is missing or malformed (the message names what
is missing), 1 any other error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

__all__ = ['main', 'build', 'run_tfds_build']


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def build(name: str, manual_dir: str, data_dir: str, config: str | None = None, *, check: str = 'quick',
          workers: int = 1, overwrite: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Build ``name`` (one config) and return a report: path, split sizes, skipped counts, seconds, bytes."""
    import tensorflow_datasets as tfds

    from tvts.data.builders import BUILDERS, ManualDirError

    if name not in BUILDERS:
        raise ValueError(f'unknown dataset {name!r}; known: {", ".join(BUILDERS)}')
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        state = 'is empty' if os.path.isdir(manual_dir) else 'does not exist'
        raise ManualDirError(f'{name}: the manual directory {manual_dir} {state}.\n'
                             f'{BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS}')
    kwargs = {'config': config} if config else {}
    builder = BUILDERS[name](data_dir=data_dir, check=check, workers=workers, verbose=verbose, **kwargs)
    path = os.fspath(builder.data_path)
    t0 = time.perf_counter()
    if builder.is_prepared() and overwrite:
        shutil.rmtree(path)
        builder = BUILDERS[name](data_dir=data_dir, check=check, workers=workers, verbose=verbose, **kwargs)
    reused = builder.is_prepared()
    if not reused:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    seconds = time.perf_counter() - t0
    info = tfds.builder_from_directory(path).info
    skipped_path = os.path.join(path, 'skipped.json')
    skipped = json.load(open(skipped_path)) if os.path.exists(skipped_path) else []
    counts: dict[str, dict[str, int]] = {}
    for r in skipped:
        counts.setdefault(r['split'], {}).setdefault(r['reason'], 0)
        counts[r['split']][r['reason']] += 1
    return {'name': name, 'config': builder.builder_config.name if builder.builder_config else None,
            'path': path, 'reused': reused, 'seconds': seconds, 'bytes': _size(path),
            'splits': {s: info.splits[s].num_examples for s in info.splits},
            'skipped': counts, 'skipped_json': skipped_path}


def _print_report(r: dict[str, Any]) -> None:
    label = r['name'] + (f"/{r['config']}" if r['config'] else '')
    what = 'already built (use --overwrite to rebuild)' if r['reused'] else f"built in {r['seconds']:.1f} s"
    print(f"[build] {label}: {what} -> {r['path']} ({r['bytes'] / 2**20:.2f} MiB)")
    for split, n in r['splits'].items():
        c = r['skipped'].get(split, {})
        detail = ', '.join(f'{reason}: {k}' for reason, k in sorted(c.items()))
        print(f"[build]   {split}: {n} examples, {sum(c.values())} skipped" + (f' ({detail})' if detail else ''))
    extra = {s: c for s, c in r['skipped'].items() if s not in r['splits']}
    for split, c in extra.items():
        print(f"[build]   {split}: skipped {sum(c.values())} ({c})")
    print(f"[build]   skipped samples listed in {r['skipped_json']}")


def run_tfds_build(argv: list[str]) -> None:
    """TFDS's ``tfds build`` command (its own argument parser and code), without the ``tfds`` executable."""
    from tensorflow_datasets.scripts.cli import build as tfds_build
    from tensorflow_datasets.scripts.cli import cli_utils

    args = cli_utils.make_flags_parser(tfds_build.Args, description='tfds build')(['tfds build', *argv])
    args.execute()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['tfds']:
        run_tfds_build(argv[1:])
        return []
    from tvts.data.builders import BUILDERS, ManualDirError

    p = argparse.ArgumentParser(prog='python -m tvts.data.build', description=__doc__.split('\n')[0])
    p.add_argument('name', choices=sorted(BUILDERS))
    p.add_argument('--manual_dir', required=True, help='the dataset in its distributed layout')
    p.add_argument('--data_dir', required=True, help='where TFDS datasets are written (OUT/NAME/...)')
    p.add_argument('--config', default=None, help='builder config (ucf101, hmdb51: split1, split2, split3; '
                                                  'ssv2: labels, mc; default all)')
    p.add_argument('--check', default='quick', choices=('quick', 'full'),
                   help='video check: quick = demux all packets, decode first frame and last GOP; '
                        'full = decode every frame')
    p.add_argument('--workers', type=int, default=1, help='threads reading and checking videos')
    p.add_argument('--overwrite', action='store_true', help='delete an existing build of this version first')
    args = p.parse_args(argv)

    cls = BUILDERS[args.name]
    configs = [args.config] if args.config else ([c.name for c in cls.BUILDER_CONFIGS] or [None])
    if args.config and args.config not in [c.name for c in cls.BUILDER_CONFIGS]:
        p.error(f'{args.name} has no config {args.config!r}'
                + (f' (configs: {", ".join(c.name for c in cls.BUILDER_CONFIGS)})' if cls.BUILDER_CONFIGS
                   else ' (it has no configs)'))
    reports = []
    try:
        for config in configs:
            r = build(args.name, args.manual_dir, args.data_dir, config, check=args.check, workers=args.workers,
                      overwrite=args.overwrite)
            _print_report(r)
            reports.append(r)
    except ManualDirError as e:
        print(f'[build] error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
    return reports


if __name__ == '__main__':
    main()
