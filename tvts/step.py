"""The jitted train step: one update on one source's global batch, one compiled program per curriculum phase."""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tvts import distributed, optim, sharding
from tvts.accumulate import accumulated_grads
from tvts.curriculum import Phase
from tvts.models.inputs import random_keep
from tvts.objective import Objective
from tvts.state import Setup


def make_train_step(setup: Setup, kind: str) -> Callable:
    """(state, batch, rng, update=None) -> (state, metrics) for one source; the state is donated.

    Each phase of training (`curriculum.Phase`) has its own compiled program, chosen by the update's index
    (`update`; read from the state when not given, which waits for the previous update). A group that has not
    started yet (`optim.group_start`) is held like a frozen one: no backward pass runs through it and its optimizer
    state is kept as it is. A non-finite loss or gradient skips the update: the state is left as it was (but for
    `step`), the first such update is recorded in `nonfinite_step` and each is counted in `nonfinite_count`, so no
    checkpoint ever holds a poisoned state; the host loop applies the config's non-finite policy.
    """
    model, cfg = setup.model, setup.config
    patches = model.variant.video.num_patches
    grad_accum = cfg.grad_accum_steps
    batch_sharding = {"video": sharding.batch_sharding(setup.mesh, 5), "texts": sharding.batch_sharding(setup.mesh, 3)}
    groups = setup.schedules.keys()
    programs: dict[Phase, Callable] = {}

    def build(phase: Phase) -> Callable:
        differentiated = optim.without_groups(setup.labels, phase.waiting)
        tx = setup.optimizer(phase.waiting)
        objective = Objective.from_config(cfg, phase.transcribed_weight)

        def step(state, batch, rng):
            rng = jax.random.fold_in(rng, state["step"])
            ratio = setup.mask_ratios.get(kind, setup.mask_ratio)  # per source (TVTS v1: captioned unmasked)
            keep = (setup.random_tube_keep(rng, batch["video"].shape, ratio) if setup.per_tube_mask  # TVTS v1
                    else random_keep(rng, batch["video"].shape[0], patches, ratio))
            trainable, frozen = optim.partition(state["params"], setup.labels)
            active, waiting = optim.partition(trainable, differentiated)
            fixed = optim.merge(waiting, frozen)  # no gradient this phase

            if grad_accum > 1:
                (_, metrics), grads = accumulated_grads(objective, active, fixed, model, batch, keep, grad_accum)
            else:
                (_, metrics), grads = jax.value_and_grad(
                    lambda a: objective.loss(optim.merge(a, fixed), model, batch, keep), has_aux=True)(active)
            grads = optim.merge(grads, jax.tree.map(jnp.zeros_like, waiting))
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state["opt_state"], trainable)
            new = {**state, "params": optim.merge(optax.apply_updates(trainable, updates), frozen),
                   "opt_state": opt_state}
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            new["step"] = state["step"] + 1
            first_bad = ~finite & (state["nonfinite_step"] < 0)
            new["nonfinite_step"] = jnp.where(first_bad, state["step"], state["nonfinite_step"])
            new["nonfinite_count"] = state["nonfinite_count"] + (~finite).astype(jnp.int32)
            metrics["grad_norm"] = grad_norm
            return new, metrics

        step.__name__ = f"train_step_{kind}"  # names the compiled program in profiles and HLO dumps
        return jax.jit(step, in_shardings=(setup.state_sharding, batch_sharding, None),
                       out_shardings=(setup.state_sharding, None), donate_argnums=0)

    def jitted_for(update: int) -> Callable:
        phase = setup.curriculum.phase(update, kind, groups)
        if phase not in programs:
            programs[phase] = build(phase)
        return programs[phase]

    compiled: dict[Callable, Callable] = {}

    def run(state, batch, rng, update: int | None = None):
        program = jitted_for(int(state["step"]) if update is None else update)
        with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
            if program not in compiled:  # compiled ahead, then every process meets before it first runs
                compiled[program] = program.lower(state, batch, rng).compile()
                distributed.barrier(f"compiled train_step_{kind} #{len(compiled)}")
            return compiled[program](state, batch, rng)

    run.jitted_for = jitted_for
    run.compiled = compiled  # jitted program -> its compiled executable (tools.bench reads their HLO)
    return run
