"""The TVTSv2 trainer: one file, read top to bottom.

    python -m tvts.train --config configs/pretrain.py[:variant=tiny,...] --workdir DIR [--config.total_steps=...]

Order of work: validate the config (before any allocation) -> mesh -> abstract state and its
shardings -> state (resumed from the newest checkpoint in the workdir, else `config.resume`,
else `config.init`, else random, created directly sharded) -> loop (one update per configured
source per iteration) with metrics, evaluation and checkpoints -> final evaluation.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import bisect
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvts import config as config_lib
from tvts import losses, optim, sharding
from tvts.accumulate import accumulated_grads
from tvts.models.tvtsv2 import TVTSv2, init_params

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def preprocess_video(video: jax.Array) -> jax.Array:
    """uint8 [..., H, W, 3] -> float32 normalised with ImageNet mean/std (as published)."""
    return (video.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def num_kept(num_patches: int, ratio: float) -> int:
    return int(num_patches * (1.0 - ratio))


def random_keep(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> jax.Array | None:
    """Tube mask: per video, `num_kept` random patch positions (sorted), the same in every frame. None at ratio 0."""
    if ratio == 0.0:
        return None
    order = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
    return jnp.sort(order[:, :num_kept(num_patches, ratio)], axis=1)


# ----------------------------------------------------------------------------------------------
# Model, optimizer and the shape of the state
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    """Everything derived from the config before any array is allocated."""

    config: Any
    model: TVTSv2
    mesh: jax.sharding.Mesh
    rules: tuple
    labels: Any  # parameter -> group name or None (frozen)
    tx: optax.GradientTransformation  # every group started; each phase's step builds its own (same state)
    schedules: dict[str, optax.Schedule]
    abstract_state: Any
    state_sharding: Any
    mask_ratio: float
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)  # programs built once per setup

    @property
    def params_sharding(self):
        return self.state_sharding["params"]


def optimizer_rules(config) -> list:
    variant = config_lib.model_variant(config.model)
    if config.optim.rules:
        return [tuple(r) for r in config.optim.rules]
    return optim.published_rules(config.optim.temporal_embedding_group, config.optim.freeze_text_embeddings,
                                 has_frozen_text_blocks=variant.text.num_frozen > 0)


def source_start_iterations(config) -> dict[str, int]:
    """The iteration from which each source takes its update (`data.source_start`, a fraction of the iterations)."""
    return {k: int(config.data.source_start.get(k, 0.0) * config.total_steps) for k in config.data.sources}


def active_sources(config, iteration: int) -> tuple[str, ...]:
    """The sources that take an update at `iteration`, in their update order."""
    starts = source_start_iterations(config)
    return tuple(k for k in config.data.sources if iteration >= starts[k])


def update_index(config, iteration: int, kind: str | None = None) -> int:
    """The global index of `iteration`'s first update, or of its `kind` update. Every iteration takes one update per
    source that has started, so the index counts the updates of all iterations before."""
    before = sum(max(iteration - start, 0) for start in source_start_iterations(config).values())
    return before if kind is None else before + active_sources(config, iteration).index(kind)


def iteration_of_update(config, update: int) -> int:
    return bisect.bisect_right(range(config.total_steps + 1), update, key=lambda i: update_index(config, i)) - 1


def start_update(config, fraction: float) -> int:
    """The first update of the iteration at `fraction` of training (group_start, transcribed_contrastive_start)."""
    return update_index(config, int(fraction * config.total_steps))


def total_updates(config) -> int:
    return update_index(config, config.total_steps)


def make_setup(config, mesh: jax.sharding.Mesh | None = None) -> Setup:
    config_lib.validate(config)
    variant = config_lib.model_variant(config.model)
    model = TVTSv2(variant, jnp.dtype(config.model.dtype), config.model.remat, config.model.temporal_init_std)
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding_rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(functools.partial(init_params, model, time_init=config.model.time_init),
                               jax.random.key(0))
    params_sharding = sharding.param_shardings(boxed, mesh, rules)
    abstract_params = nn.unbox(boxed)
    sharding.check_replication(abstract_params, params_sharding, mesh, config.max_replicated_fraction)
    labels = optim.assign_groups(abstract_params, optimizer_rules(config), config.optim.groups)
    tx, schedules = optim.make_optimizer(config.optim, labels, total_updates(config),
                                         start_update=functools.partial(start_update, config))
    abstract_state = jax.eval_shape(functools.partial(new_state, tx=tx, labels=labels), abstract_params)
    state_sharding = sharding.state_shardings(abstract_state, params_sharding, mesh)
    state_sharding["params"] = params_sharding
    return Setup(config, model, mesh, rules, labels, tx, schedules, abstract_state, state_sharding,
                 config_lib.mask_ratio(config))


def new_state(params, *, tx, labels) -> dict[str, Any]:
    trainable, _ = optim.partition(params, labels)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(trainable),
            "nonfinite_step": jnp.full((), -1, jnp.int32)}


# The random init runs once, and at full optimisation XLA:CPU took 7.9 s to compile its ~15k lines of RNG code
# for the tiny model (1.9 s at level 0). Level 0 changes float rounding only: values agree to 5e-7. The option is
# XLA:CPU's; other backends compile the init with their defaults.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def random_init(setup: Setup, rng: jax.Array) -> Any:
    """Random parameters, created directly with their shardings (compiled once per setup)."""
    if "random_init" not in setup.compiled:
        def create(rng):
            return nn.unbox(init_params(setup.model, rng, setup.config.model.time_init))

        with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
            options = CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
            setup.compiled["random_init"] = jax.jit(create, out_shardings=setup.params_sharding).lower(
                rng).compile(compiler_options=options)
    return setup.compiled["random_init"](rng)


def init_state(setup: Setup, rng: jax.Array, params: Any = None) -> dict[str, Any]:
    """Random (or given) params and fresh optimizer state, created directly with the target shardings."""
    donate = params is None  # fresh random params become the state's own buffers
    params = random_init(setup, rng) if params is None else params
    create = functools.partial(new_state, tx=setup.tx, labels=setup.labels)
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        return jax.jit(create, out_shardings=setup.state_sharding, donate_argnums=0 if donate else ())(params)


def run_rngs(config) -> tuple[jax.Array, jax.Array]:
    """(init_rng, step_rng) of a run: the random init is reproducible from the config alone."""
    return tuple(jax.random.split(jax.random.key(config.seed)))


def random_params(setup: Setup) -> Any:
    """The run's random initial parameters (for comparing a trained model with its starting point)."""
    return random_init(setup, run_rngs(setup.config)[0])


# ----------------------------------------------------------------------------------------------
# The train step
# ----------------------------------------------------------------------------------------------
def compute_losses(params, model: TVTSv2, batch, keep, loss_cfg, transcribed_weight: float | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """batch: video uint8 [B, T, H, W, 3], texts int32 [B, n, L]; n > 1 adds the sorting loss.

    transcribed_weight: the contrastive term's weight on a transcribed batch (default
    loss_cfg.transcribed_contrastive_weight; the train step passes 0 before loss_cfg.transcribed_contrastive_start).
    A Python number: at 0 the term is left out of the loss, so its backward pass is not compiled.
    """
    if transcribed_weight is None:
        transcribed_weight = loss_cfg.transcribed_contrastive_weight
    out = model.apply({"params": params}, preprocess_video(batch["video"]), keep, batch["texts"])
    text = losses.transcript_text_embedding(out["text_emb"])
    contrastive, metrics = losses.contrastive_loss(out["video_emb"], text, loss_cfg.temperature)
    metrics["contrastive_loss"] = contrastive
    total = contrastive
    if "sort_logits" in out:
        sort_loss, sort_acc = losses.sorting_loss(out["sort_logits"])
        total = loss_cfg.sort_weight * sort_loss
        if transcribed_weight:
            total = total + transcribed_weight * contrastive
        metrics.update(sort_loss=sort_loss, sort_accuracy=sort_acc)
    metrics["loss"] = total
    return total, metrics


@dataclasses.dataclass(frozen=True)
class Phase:
    """What changes during training, as seen by one update: the groups that have not started yet
    (`optim.group_start`) and the weight of the contrastive term on transcribed batches (1 on captioned ones,
    which have no other term)."""

    waiting: frozenset[str]
    transcribed_weight: float


def phase_of(setup: Setup, update: int, kind: str = "transcribed") -> Phase:
    cfg = setup.config
    starts = optim.group_start_updates(cfg.optim, setup.schedules.keys(), functools.partial(start_update, cfg))
    contrastive_start = start_update(cfg, cfg.loss.transcribed_contrastive_start)
    weight = 1.0
    if kind == "transcribed":
        weight = cfg.loss.transcribed_contrastive_weight if update >= contrastive_start else 0.0
    return Phase(frozenset(g for g, start in starts.items() if update < start), weight)


def make_train_step(setup: Setup, kind: str) -> Callable:
    """(state, batch, rng, update=None) -> (state, metrics) for one source; the state is donated.

    Each phase of training (`Phase`) has its own compiled program, chosen by the update's index (`update`; read
    from the state when not given, which waits for the previous update). A group that has not started yet
    (`optim.group_start`) is held like a frozen one: no backward pass runs through it and its optimizer state is
    kept as it is (`optim.make_optimizer`). A non-finite loss or gradient skips the update and records the step in
    state['nonfinite_step'], so the state (and any checkpoint of it) is never poisoned; the host loop stops on it.
    """
    model, cfg = setup.model, setup.config
    patches = model.variant.video.num_patches
    grad_accum = cfg.grad_accum_steps
    batch_sharding = {"video": sharding.batch_sharding(setup.mesh, 5), "texts": sharding.batch_sharding(setup.mesh, 3)}
    programs: dict[Phase, Callable] = {}

    def build(phase: Phase) -> Callable:
        differentiated = optim.without_groups(setup.labels, phase.waiting)
        tx, _ = optim.make_optimizer(cfg.optim, setup.labels, total_updates(cfg), phase.waiting,
                                     functools.partial(start_update, cfg))

        def step(state, batch, rng):
            rng = jax.random.fold_in(rng, state["step"])
            keep = random_keep(rng, batch["video"].shape[0], patches, setup.mask_ratio)
            trainable, frozen = optim.partition(state["params"], setup.labels)
            active, waiting = optim.partition(trainable, differentiated)
            fixed = optim.merge(waiting, frozen)  # no gradient this phase

            def loss_fn(active):
                return compute_losses(optim.merge(active, fixed), model, batch, keep, cfg.loss,
                                      phase.transcribed_weight)

            if grad_accum > 1:
                (_, metrics), grads = accumulated_grads(active, fixed, model, batch, keep, cfg.loss, grad_accum,
                                                        phase.transcribed_weight)
            else:
                (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(active)
            grads = optim.merge(grads, jax.tree.map(jnp.zeros_like, waiting))
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state["opt_state"], trainable)
            new = {"step": state["step"] + 1,
                   "params": optim.merge(optax.apply_updates(trainable, updates), frozen),
                   "opt_state": opt_state, "nonfinite_step": state["nonfinite_step"]}
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            new["step"] = state["step"] + 1
            new["nonfinite_step"] = jnp.where(finite | (state["nonfinite_step"] >= 0), state["nonfinite_step"],
                                              state["step"])
            metrics["grad_norm"] = grad_norm
            return new, metrics

        step.__name__ = f"train_step_{kind}"  # names the compiled program in profiles and HLO dumps
        return jax.jit(step, in_shardings=(setup.state_sharding, batch_sharding, None),
                       out_shardings=(setup.state_sharding, None), donate_argnums=0)

    def jitted_for(update: int) -> Callable:
        phase = phase_of(setup, update, kind)
        if phase not in programs:
            programs[phase] = build(phase)
        return programs[phase]

    def run(state, batch, rng, update: int | None = None):
        program = jitted_for(int(state["step"]) if update is None else update)
        with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
            return program(state, batch, rng)

    run.jitted_for = jitted_for
    return run


def learning_rates(setup: Setup, update: int) -> dict[str, float]:
    return {f"lr/{g}": float(s(update)) for g, s in setup.schedules.items()}


# ----------------------------------------------------------------------------------------------
# Main loop
# ----------------------------------------------------------------------------------------------
def record_config(config, workdir: str) -> list[str]:
    """Writes the launch's full config to workdir/config.json and returns the fields that changed since the
    previous launch in this workdir. That launch's config is kept as config.<k>.json (k = 1, 2, ...), so a run
    resumed with other values (more steps, say) still shows what each segment ran with."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json_best_effort(sort_keys=True))
    changed = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        flat_old, flat_new = (traverse_util.flatten_dict(c, sep=".") for c in (old, new))
        changed = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
        if not changed:
            return []
        k = 1
        while os.path.exists(os.path.join(workdir, f"config.{k}.json")):
            k += 1
        os.replace(path, os.path.join(workdir, f"config.{k}.json"))
    with open(path, "w") as f:
        json.dump(new, f, indent=1, sort_keys=True)
    return changed


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training in `workdir`; returns the final evaluation metrics."""
    from tqdm import tqdm

    from tvts import distributed
    from tvts.checkpoint import Checkpointer, restore_params, with_shardings
    from tvts.data.pipeline import Prefetcher, make_sources
    from tvts.evaluators.common import make_evaluators
    from tvts.metrics import MetricWriter

    config_lib.validate(config)
    setup = make_setup(config)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writer = MetricWriter(workdir, enabled=is_main)
    writer.text(f"{distributed.describe()}\nmesh {dict(setup.mesh.shape)}, mask ratio {setup.mask_ratio}")
    if is_main:
        changed = record_config(config, workdir)
        if changed:
            writer.text(f"config differs from this workdir's previous launch in {', '.join(changed)}")

    # --- State: newest checkpoint in workdir, then config.resume, then config.init, then scratch. ---
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    target = with_shardings(setup.abstract_state, setup.state_sharding)
    init_rng, step_rng = run_rngs(config)
    start_iteration = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(ckpt.latest_step(), target)
        start_iteration = int(meta["iteration"])
        writer.text(f"resumed from {ckpt.directory} at iteration {start_iteration}")
    elif config.resume:
        other = Checkpointer(config.resume)
        state, meta = other.restore(other.latest_step(), target)
        other.close()
        start_iteration = int(meta["iteration"])
        writer.text(f"resumed from {config.resume} at iteration {start_iteration}")
    elif config.init:
        params = restore_params(config.init, target["params"])
        state = init_state(setup, init_rng, params)
        writer.text(f"initialised parameters from {config.init}")
    else:
        state = init_state(setup, init_rng)

    # --- Data, steps, evaluators. ---
    variant = setup.model.variant
    sources = make_sources(config.data, variant.video.image_size, config.model.num_frames,
                           jax.process_index(), jax.process_count())
    steps = {kind: make_train_step(setup, kind) for kind in sources}

    def load(iteration):  # a source that has not started yet takes no update, so its batch is not made
        return {kind: sources[kind].batch(iteration) for kind in active_sources(config, iteration)}

    evaluators = make_evaluators(config, setup, workdir if is_main else None)
    batches = Prefetcher(load, start_iteration)
    history: dict[str, list] = {}
    bar = tqdm(total=config.total_steps, initial=start_iteration, disable=not is_main, desc="train",
               dynamic_ncols=True)
    last_log, clips_since_log = time.perf_counter(), 0
    iterations_since_log = 0
    try:
        for iteration, local in batches:
            if iteration >= config.total_steps:
                break
            metrics = {}
            first = update_index(config, iteration)
            for position, kind in enumerate(local):
                state, m = steps[kind](state, sharding.global_batch(local[kind], setup.mesh), step_rng,
                                       update=first + position)
                metrics.update({f"{kind}/{k}": v for k, v in m.items()})
                clips_since_log += config.data[f"{kind}_batch"]
            done = iteration + 1
            iterations_since_log += 1
            bar.update(1)
            is_log = done % config.log_every == 0 or done == config.total_steps
            is_ckpt = done % config.checkpoint_every == 0 or done == config.total_steps
            if is_log or is_ckpt:
                bad = int(state["nonfinite_step"])
                if bad >= 0:
                    raise FloatingPointError(f"non-finite loss or gradient at update {bad} (iteration "
                                             f"{iteration_of_update(config, bad)}); that update was skipped and no checkpoint "
                                             f"was written after it. Last good checkpoint: {ckpt.latest_step()}")
            if is_log:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - last_log
                scalars.update(learning_rates(setup, int(state["step"])))
                scalars["clips_per_sec"] = clips_since_log / elapsed
                scalars["step_time"] = elapsed / iterations_since_log
                last_log, clips_since_log, iterations_since_log = time.perf_counter(), 0, 0
                writer.scalars(done, scalars)
                for k, v in scalars.items():
                    history.setdefault(k, []).append((done, v))
                bar.set_postfix_str(writer.summary_line(scalars))
            for ev in evaluators:
                if ev.due(done, config.total_steps):
                    writer.scalars(done, ev.run(state["params"]))
            if is_ckpt:
                ckpt.save(done, state, {"iteration": done})
    finally:
        batches.close()
        bar.close()
        ckpt.wait()
        ckpt.close()

    final = {}
    for ev in evaluators:
        final.update(ev.run(state["params"], final=True))
    writer.scalars(config.total_steps, final)
    if is_main:
        writer.plot_history(history)
        writer.report(final)
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=1, sort_keys=True)
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

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:variant=tiny",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go (resumes from it).")
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process CPU/GPU runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
