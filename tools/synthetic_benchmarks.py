"""Every downstream benchmark on the synthetic corpus: each dataset's files written in its distributed layout
(tvts/data/fixtures.py), built with its TFDS builder, and every task run with one backbone, beside chance.

    python -m tools.synthetic_benchmarks --backbone workdirs/demo/backbone --root /tmp/synth_bench \
        [--out /tmp/synth_bench/results] [--json tools/benchmarks/synthetic_benchmarks_demo.json]

Retrieval sets hold held-out captioned videos with their captions. In the classification sets a class is an
event sequence (`fixtures.EventClasses`: every video of the class shows the same 4 events, each rendered anew),
named after a real class of the dataset and described, for zero-shot, by a caption of its sequence (a class-name
override, template '{}'); zero-shot still ranks every class of the dataset (101, 51, 400), the others under their
real names. SSv2 multiple choice asks for the right order: the options are the sequence's caption and 4 captions of
re-orderings of it. The synthetic corpus's words are all the demo model knows, so this checks the whole path
(files, builders, sampling, backbone, metrics), not the published figures.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from tvts.data import build as build_cli
from tvts.data import fixtures

CLASSIFICATION = {  # dataset: (classes, fixture arguments, configs to build)
    'ucf101': (4, dict(clips_per_group=4), ['split1']),
    'hmdb51': (3, dict(per_class=16), ['split1']),
    'kinetics400': (8, dict(sizes={'train': 6, 'val': 4}), [None]),
    'ssv2': (6, dict(sizes={'train': 1, 'validation': 6}), ['mc']),
}
RETRIEVAL = {
    'msrvtt': dict(num_train=4, num_test=64),
    'didemo': dict(sizes={'train': 2, 'val': 1, 'test': 64}),
    'lsmdc': dict(sizes={'train': 2, 'val': 1, 'test': 64}),
}
TASKS = ('msrvtt_retrieval', 'didemo_retrieval', 'lsmdc_retrieval', 'ucf101_zeroshot', 'hmdb51_zeroshot',
         'kinetics400_zeroshot', 'ssv2_mc', 'ucf101_linear', 'hmdb51_linear', 'kinetics400_linear', 'ucf101_v2v',
         'hmdb51_v2v')
HEADLINE = {'retrieval': 't2v/R@1', 'zeroshot': 'top1', 'linear': 'top1', 'v2v': 'R@1', 'mc': 'accuracy'}


def _class_names(dataset: str, n: int) -> list[str]:
    """The real class names the fixture's class slots carry."""
    if dataset == 'ucf101':
        return [c for c, _ in fixtures.UCF_CLASSES][:n]
    if dataset == 'hmdb51':
        return list(fixtures.HMDB_CLASSES)[:n]
    if dataset == 'kinetics400':
        from tvts.data.builders.kinetics400 import CLASSES
        return list(CLASSES[:n])
    from tvts.data.builders.ssv2 import CLASSES
    return list(CLASSES[:n])


def write_and_build(root: str) -> dict[str, dict[str, str]]:
    """Writes and builds every benchmark under root (manual/, tfds/); returns the zero-shot class-name overrides
    {dataset: {class: caption}}."""
    data_dir = os.path.join(root, 'tfds')
    overrides: dict[str, dict[str, str]] = {}
    for name, kwargs in RETRIEVAL.items():
        manual = os.path.join(root, 'manual', name)
        fixtures.write(name, manual, **kwargs)
        build_cli.build(name, manual, data_dir, verbose=False)
    for name, (n, kwargs, configs) in CLASSIFICATION.items():
        manual = os.path.join(root, 'manual', name)
        classes = fixtures.EventClasses(n)
        names = _class_names(name, n)
        if name in ('kinetics400', 'ssv2'):
            kwargs = dict(kwargs, classes=tuple(names))
        if name == 'ssv2':
            kwargs['options'] = classes.options
        fixtures.write(name, manual, videos=classes, **kwargs)
        for config in configs:
            build_cli.build(name, manual, data_dir, config, verbose=False)
        overrides[name] = {c: classes.phrase(k) for k, c in enumerate(names)}
    return overrides


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog='python -m tools.synthetic_benchmarks', description=__doc__.split('\n')[0])
    p.add_argument('--backbone', required=True, help='an exported backbone (python -m tvts.export)')
    p.add_argument('--root', required=True, help='where the manual directories and TFDS datasets are written')
    p.add_argument('--out', default=None, help='results folder (default ROOT/results)')
    p.add_argument('--json', default=None, help='also write the summary here')
    p.add_argument('--tasks', default=','.join(TASKS))
    args = p.parse_args(argv)

    from tvts import backbone as backbone_lib
    from tvts.evaluators import benchmarks as bm

    out = args.out or os.path.join(args.root, 'results')
    t0 = time.perf_counter()
    if os.path.isdir(os.path.join(args.root, 'tfds')):
        with open(os.path.join(args.root, 'overrides.json')) as f:
            overrides = json.load(f)
    else:
        overrides = write_and_build(args.root)
        with open(os.path.join(args.root, 'overrides.json'), 'w') as f:
            json.dump(overrides, f, indent=1)
    print(f'[synthetic_benchmarks] datasets ready in {time.perf_counter() - t0:.1f} s', flush=True)
    bb = backbone_lib.load(args.backbone)
    rows = []
    for task in args.tasks.split(','):
        kind, dataset = bm.TASKS[task]
        opts = bm.Options(batch=16, cache_dir=os.path.join(out, 'cache'), templates='{}',
                          class_names=overrides.get(dataset))
        t = time.perf_counter()
        res = bm.report_benchmark(bb, task, os.path.join(args.root, 'tfds'), out, opts,
                                  f'python -m tools.synthetic_benchmarks --tasks {task}',
                                  backbone=os.path.abspath(args.backbone))
        key = HEADLINE[kind]
        rows.append({'task': task, 'metric': key, 'value': res['metrics'][key], 'chance': res['chance'][key],
                     'num_items': res['num_items'], 'num_failed': res['num_failed'],
                     'seconds': round(time.perf_counter() - t, 1)})
    table = ['| task | metric | value | chance | items |', '| --- | --- | ---: | ---: | ---: |']
    table += [f"| `{r['task']}` | {r['metric']} | {r['value']:.1f} | {r['chance']:.1f} | {r['num_items']} |"
              for r in rows]
    print('\n'.join(table))
    summary = {'backbone': os.path.abspath(args.backbone), 'rows': rows,
               'seconds': round(time.perf_counter() - t0, 1)}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == '__main__':
    main()
