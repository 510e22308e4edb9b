"""Run a config's evaluators on a checkpoint, outside training.

    python -m tvts.evaluate --config configs/pretrain.py --workdir workdirs/demo [--step N]

Restores the newest (or given) checkpoint of `workdir` onto the config's mesh and prints the metrics
of every entry of `config.evals` (as at the end of training), writing them to `eval_<step>.json`.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import json
import os

import jax


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, float]:
    from tvts.checkpoint import Checkpointer, with_shardings
    from tvts.evaluators.common import make_evaluators
    from tvts.metrics import MetricWriter
    from tvts.train import make_setup

    setup = make_setup(config)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    state, _ = ckpt.restore(step, with_shardings(setup.abstract_state, setup.state_sharding))
    ckpt.close()
    is_main = jax.process_index() == 0
    metrics: dict[str, float] = {}
    for ev in make_evaluators(config, setup, workdir if is_main else None):
        metrics.update(ev.run(state["params"], final=True))
    if is_main:
        MetricWriter.report_to_console(metrics)
        with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
            json.dump(metrics, f, indent=1, sort_keys=True)
    return metrics


def main(argv):
    del argv
    from absl import flags, logging

    from tvts import distributed

    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    distributed.initialize()
    evaluate(f.config, f.workdir, f.step)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file the checkpoint was trained with.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
