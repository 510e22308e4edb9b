"""The TVTSv2 trainer: the loop, read top to bottom.

    python -m tvts.train --config configs/demo.py --workdir workdirs/demo
    python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/run --config.init=DIR

Order of work: validate the config (before any allocation) -> the train plan (`tvts.state`: mesh, abstract state,
shardings) -> state (resumed from the newest checkpoint in the workdir, else `config.resume`, else `config.init`,
else random, created directly sharded) -> loop (one update per started source per iteration, `tvts.curriculum`)
with metrics, evaluation and checkpoints -> final evaluation. SIGTERM saves a checkpoint at the next iteration and
exits; running the same command again resumes.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import json
import time

import jax
from etils import epath
from flax import traverse_util

from tvts import config as config_lib
from tvts import sharding
from tvts.state import Setup, converted_params, evaluation_encoders, init_state, make_encoders, make_setup, run_rngs


# ----------------------------------------------------------------------------------------------
# The run's record
# ----------------------------------------------------------------------------------------------
def record_config(config, workdir) -> list[str]:
    """Writes the launch's full config to workdir/config.json and returns the fields that changed since the
    previous launch in this workdir. That launch's config is kept as config.<k>.json (k = 1, 2, ...), so a run
    resumed with other values (more steps, say) still shows what each segment ran with."""
    workdir = epath.Path(workdir)
    path = workdir / "config.json"
    new = json.loads(config.to_json_best_effort(sort_keys=True))
    changed = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:  # torn by a kill during a launch before atomic writes
            old = {}
        flat_old, flat_new = (traverse_util.flatten_dict(c, sep=".") for c in (old, new))
        changed = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
        if not changed:
            return []
        k = 1
        while (workdir / f"config.{k}.json").exists():
            k += 1
        path.rename(workdir / f"config.{k}.json")
    partial = workdir / "config.json.partial"  # a kill mid-write must not leave a torn config.json
    partial.write_text(json.dumps(new, indent=1, sort_keys=True))
    partial.replace(path)
    return changed


def check_nonfinite(setup: Setup, state, latest_checkpoint: int | None) -> int:
    """Applies `config.nonfinite` to the updates the step skipped; returns how many were skipped."""
    policy = setup.config.nonfinite
    first, count = int(state["nonfinite_step"]), int(state["nonfinite_count"])
    if first >= 0 and (policy.policy == "stop" or count > policy.max_skipped):
        allowed = "" if policy.policy == "stop" else f" ({count} skipped, config.nonfinite.max_skipped=" \
                                                     f"{policy.max_skipped})"
        raise FloatingPointError(
            f"non-finite loss or gradient at update {first} (iteration "
            f"{setup.curriculum.iteration_of_update(first)}){allowed}; skipped updates leave the state unchanged and "
            f"no checkpoint was written after this check. Last good checkpoint: iteration {latest_checkpoint}")
    return count


# ----------------------------------------------------------------------------------------------
# Main loop
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(config, workdir) -> dict[str, float]:
    """Runs (or resumes) training in `workdir`; returns the final evaluation metrics ({} when preempted)."""
    from tqdm import tqdm

    from tvts import distributed
    from tvts.checkpoint import Checkpointer, restore_params, with_shardings
    from tvts.data.loader import DataCounters
    from tvts.data.pipeline import Prefetcher, make_sources
    from tvts.evaluators.registry import check_entries, make_evaluators, run_final
    from tvts.flops import peak_flops, step_flops
    from tvts.metric_writer import MetricWriter
    from tvts.preemption import PreemptionNotice

    config_lib.validate(config, jax.device_count(), jax.process_count())
    config_lib.validate_data(config)
    check_entries(config.evals, jax.process_count())
    setup = make_setup(config)
    curriculum = setup.curriculum
    workdir = epath.Path(workdir)
    is_main = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=is_main)
    writer.text(f"{distributed.describe()}\nmesh {dict(setup.mesh.shape)}, mask ratio {setup.mask_ratio}")
    if is_main:
        changed = record_config(config, workdir)
        if changed:
            writer.text(f"config differs from this workdir's previous launch in {', '.join(changed)}")

    # --- State: newest checkpoint in workdir, then config.resume, then config.init, then scratch. ---
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    target = with_shardings(setup.abstract_state, setup.state_sharding)
    init_rng, step_rng = run_rngs(config)
    start_iteration, meta = 0, {}
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(ckpt.latest_step(), target)
        start_iteration = int(meta["iteration"])
        writer.text(f"resumed from {ckpt.directory} at iteration {start_iteration}")
    elif config.resume:
        other = Checkpointer(config.resume)
        if other.latest_step() is None:
            raise FileNotFoundError(f"config.resume={config.resume!r} holds no checkpoint")
        state, meta = other.restore(other.latest_step(), target)
        other.close()
        start_iteration = int(meta["iteration"])
        writer.text(f"resumed from {config.resume} at iteration {start_iteration}")
    elif config.init and config.init != "random":
        loaded = restore_params(config.init, target["params"])
        state = init_state(setup, init_rng, converted_params(setup, init_rng, loaded))
        writer.text(f"initialised parameters from {config.init}")
    else:
        state = init_state(setup, init_rng)

    # --- Data, steps, evaluators. ---
    from tvts.step import make_train_step

    frames = {kind: config_lib.source_frames(config, kind) for kind in config.data.sources}
    sources = make_sources(config.data, setup.spec.image_size, frames, jax.process_index(), jax.process_count(),
                           seed=config.seed)
    # --- data counters (tvts/data/loader.py): skipped / re-drawn examples per source, kept in checkpoints ---
    data_counters = DataCounters(sources, jax.process_index(), jax.process_count())
    data_counters.restore(meta)
    steps = {kind: make_train_step(setup, kind) for kind in sources}

    def load(iteration):  # a source that has not started yet takes no update, so its batch is not made
        return {kind: sources[kind].batch(iteration) for kind in curriculum.active_sources(iteration)}

    evaluators = make_evaluators(config.evals, config.data, setup.spec, workdir if is_main else None)
    batches = Prefetcher(load, start_iteration)
    preemption = PreemptionNotice()
    history: dict[str, list] = {}
    bar = tqdm(total=config.total_steps, initial=start_iteration, disable=not is_main, desc="train",
               dynamic_ncols=True)
    # model FLOPs utilisation (tvts/flops.py): the analytic FLOPs of the updates since the last log over their time
    update_flops = {kind: step_flops(config, kind)["model_flops"] for kind in sources}
    peak, peak_name = peak_flops()
    writer.text(f"model FLOPs utilisation against {peak / 1e9:,.0f} GFLOP/s ({peak_name})")
    last_log, clips_since_log, iterations_since_log, flops_since_log = time.perf_counter(), 0, 0, 0.0
    preempted_at = None
    try:
        for iteration, local in batches:
            if iteration >= config.total_steps:
                break
            metrics = {}
            first = curriculum.update_index(iteration)
            for position, kind in enumerate(local):
                state, m = steps[kind](state, sharding.global_batch(local[kind], setup.mesh), step_rng,
                                       update=first + position)
                metrics.update({f"{kind}/{k}": v for k, v in m.items()})
                clips_since_log += config.data[f"{kind}_batch"]
                flops_since_log += update_flops[kind]
            done = iteration + 1
            iterations_since_log += 1
            bar.update(1)
            preempted = preemption.reached(done)
            is_log = done % config.log_every == 0 or done == config.total_steps
            is_ckpt = done % config.checkpoint_every == 0 or done == config.total_steps or preempted
            if is_log or is_ckpt:
                skipped = check_nonfinite(setup, state, ckpt.latest_step())
            if is_log:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - last_log
                scalars.update(setup.learning_rates(int(state["step"])))
                scalars["clips_per_sec"] = clips_since_log / elapsed
                scalars["step_time"] = elapsed / iterations_since_log
                scalars["mfu"] = flops_since_log / elapsed / peak
                scalars["nonfinite_skipped"] = skipped
                scalars.update(data_counters.scalars(done))  # data/<source>/skipped/<reason>, cumulative
                last_log, clips_since_log, iterations_since_log, flops_since_log = time.perf_counter(), 0, 0, 0.0
                writer.scalars(done, scalars)
                for k, v in scalars.items():
                    history.setdefault(k, []).append((done, v))
                bar.set_postfix_str(writer.summary_line(scalars))
                if (line := data_counters.report(scalars)) is not None:
                    writer.text(line)
            for ev in evaluators:
                if ev.due(done, config.total_steps):
                    writer.scalars(done, ev.run(make_encoders(setup, state["params"])))
            if is_ckpt:
                ckpt.save(done, state, {"iteration": done, **data_counters.meta(done)})
            if preempted and done < config.total_steps:
                preempted_at = done
                break
    finally:
        preemption.close()
        batches.close()
        for source in sources.values():  # grain worker processes of file sources
            getattr(source, "close", lambda: None)()
        bar.close()
        ckpt.wait()
        ckpt.close()

    if preempted_at is not None:
        writer.text(f"SIGTERM: saved a checkpoint at iteration {preempted_at} in {ckpt.directory} and stopped; "
                    f"run the same command again to resume")
        writer.close()
        return {}

    final, columns = run_final(evaluators, *evaluation_encoders(setup, state["params"]))
    writer.scalars(config.total_steps, final)
    if is_main:
        writer.plot_history(history)
        writer.report(final, columns)
        writer.write_json("final_metrics.json", final)
    if config.export_backbone:  # every process takes part (gathers sharded params); process 0 writes
        from tvts.export import describe, export_run

        out = str(workdir / config.export_backbone)
        info = export_run(setup, state["params"], out, workdir=str(workdir), step=config.total_steps)
        if is_main:
            writer.text(describe(info, out))
    writer.close()
    return final


def main(argv):
    del argv
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO

    from tvts import distributed

    flags_ = flags.FLAGS
    distributed.initialize(flags_.coordinator_address or None, flags_.num_processes, flags_.process_id)
    train_and_evaluate(flags_.config, flags_.workdir)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py or "
                                    "configs/pretrain.py:variant=B/16", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go (resumes from it); any "
                        "etils.epath path, e.g. gs://bucket/run.")
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process CPU/GPU runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
