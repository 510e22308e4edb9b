"""Run a config's evaluators on a checkpoint, outside training.

    python -m tvts.evaluate --workdir workdirs/demo [--step N] [--config configs/demo.py]
    python -m tvts.evaluate (--backbone BACKBONE_DIR | --workdir RUN [--step N]) --task TASK --data_dir TFDS_DIR \
        --out RESULTS_DIR [--split S] [--templates single|ensemble|'t1 {}|t2 {}'] [--class_names OVERRIDES.json] \
        [--clips 1] [--crops 1|3] [--probe lbfgs|sgd] [--batch_size 16]

The second form runs one downstream benchmark (tvts/evaluators/benchmarks.py, docs/evaluation.md) with an
exported backbone, or a training run's newest (or given) checkpoint, on a built TFDS dataset and writes
RESULTS_DIR/<task>.{json,md,png}.

Without --config, the run's own `config.json` (written by the trainer) is used. Restores the newest (or given)
checkpoint of `workdir` onto the config's mesh and prints the metrics of every entry of `config.evals` (as at the
end of training, with `config.eval_references` beside them), writing them to `eval_<step>.json`.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import json

import jax
import ml_collections
from etils import epath


def run_config(workdir) -> ml_collections.ConfigDict:
    """The config a run was launched with (its workdir's config.json), locked."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass --config (the config the checkpoint was trained with)")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    config.lock()
    return config


def restore(config, workdir, step: int | None = None):
    """(config, setup, step, state) of a run's newest (or given) checkpoint, on the config's mesh."""
    from tvts.checkpoint import Checkpointer, with_shardings
    from tvts.state import make_setup

    workdir = epath.Path(workdir)
    config = run_config(workdir) if config is None else config
    setup = make_setup(config)
    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    state, _ = ckpt.restore(step, with_shardings(setup.abstract_state, setup.state_sharding))
    ckpt.close()
    return config, setup, step, state


def evaluate(config, workdir, step: int | None = None) -> dict[str, float]:
    from tvts.evaluators.registry import make_evaluators, run_final
    from tvts.metric_writer import MetricWriter
    from tvts.state import evaluation_encoders

    workdir = epath.Path(workdir)
    config, setup, step, state = restore(config, workdir, step)
    is_main = jax.process_index() == 0
    evaluators = make_evaluators(config.evals, config.data, setup.spec, workdir if is_main else None)
    metrics, columns = run_final(evaluators, *evaluation_encoders(setup, state["params"]))
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=False)
    writer.report(metrics, columns)
    writer.write_json(f"eval_{step}.json", metrics)
    writer.close()
    return metrics


def main(argv):
    from absl import app, flags, logging

    from tvts import distributed

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    if f.backbone or f.task:
        import sys

        from tvts.evaluators.benchmarks import Options, main_benchmark, report_benchmark

        missing = [n for n in ("task", "data_dir", "out") if not getattr(f, n)]
        if not (f.backbone or f.workdir):
            missing.append("backbone (or --workdir)")
        if missing:
            raise app.UsageError(f"benchmark mode needs --{', --'.join(missing)}")
        opts = Options(split=f.split, batch=f.batch_size, workers=f.workers, templates=f.templates,
                       class_names=f.class_names, clips=f.clips, crops=f.crops, probe=f.probe)
        command = " ".join(["python -m tvts.evaluate", *sys.argv[1:]])
        if f.backbone:
            main_benchmark(f.backbone, f.task, f.data_dir, f.out, opts, command)
        else:
            from tvts.state import evaluation_encoders

            distributed.initialize()
            _, setup, step, state = restore(f.config, f.workdir, f.step)
            report_benchmark(evaluation_encoders(setup, state["params"])[0], f.task, f.data_dir, f.out, opts,
                             command, workdir=str(f.workdir), step=int(step))
        return
    del argv
    if not f.workdir:
        raise app.UsageError("pass --workdir (or --backbone/--task/--data_dir/--out)")
    distributed.initialize()
    evaluate(f.config, f.workdir, f.step)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file the checkpoint was trained with (default: the "
                                    "run's config.json).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
    flags.DEFINE_string("backbone", None, "Benchmark mode: an exported backbone directory (tvts.export).")
    flags.DEFINE_string("task", None, "Benchmark mode: {msrvtt,didemo,lsmdc}_retrieval, "
                        "{ucf101,hmdb51,kinetics400}_{zeroshot,linear}, {ucf101,hmdb51}_v2v, ssv2_mc.")
    flags.DEFINE_string("data_dir", None, "Benchmark mode: the TFDS data_dir the datasets were built into.")
    flags.DEFINE_string("out", None, "Benchmark mode: results folder (<task>.json/.md/.png, cache/).")
    flags.DEFINE_string("split", None, "Retrieval: TFDS split (default test); ucf101/hmdb51: 1, 2 or 3 "
                        "(default 1); Kinetics-400 is tested on val, SSv2 on validation.")
    flags.DEFINE_string("templates", None, "Zero-shot prompts: single ('a person {}', default), ensemble, or "
                        "templates joined by '|'.")
    flags.DEFINE_string("class_names", None, "Zero-shot: JSON file {class: phrase} overriding the readable names.")
    flags.DEFINE_integer("clips", 1, "Benchmark mode: clips per video (views averaged; published: 1).")
    flags.DEFINE_integer("crops", 1, "Benchmark mode: 1 (centre) or 3 crops per clip (views averaged).")
    flags.DEFINE_enum("probe", "lbfgs", ["lbfgs", "sgd"], "Linear probe: L-BFGS logistic regression with l2 chosen "
                      "on a validation split (CLIP's protocol) or a linear head trained by SGD (TVTS v1's).")
    flags.DEFINE_integer("batch_size", 16, "Benchmark mode: videos per encoder call.")
    flags.DEFINE_integer("workers", 2, "Benchmark mode: decoding threads.")
    app.run(main)
