"""Parameter rules -> learning-rate groups, frozen parameters, weight-decay mask, optimizer.

A rule is (regex, group): the first rule whose regex `re.search`es a parameter's path
('video/blocks/time_attn/qkv/kernel') decides its group; group None means frozen. Every
parameter must match some rule and every rule must match some parameter, or `assign_groups`
raises with the names. Frozen parameters are split off before differentiation: they get no
gradient, no update and no optimizer state.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import optax

Rule = tuple[str, str | None]
FROZEN = None

# The published weight-decay exclusion over OUR parameter paths (use with `decays`, i.e. re.search): the official
# code skips decay for names containing 'bias', 'LayerNorm', 'ln_' or 'norm' (v2/train_dist_TVTSv2_ViT_B_16.py:67).
# Those are exactly the biases and the LayerNorm weights (every LayerNorm here is `.../norm/{scale,bias}`); token,
# position, temporal and class embeddings, `proj`, `text_projection`, the patch conv and the sort head's type
# embedding ARE decayed. The path -> official-name table is in tests/test_optim.py; docs/published_recipe.md.
PUBLISHED_NO_DECAY = r"/(bias|norm/scale)$"


def path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def param_names(params: Any) -> list[str]:
    return ["/".join(k) for k in traverse_util.flatten_dict(params)]


def published_rules(temporal_embedding_group: str = "clip", freeze_text_embeddings: bool = False,
                    has_frozen_text_blocks: bool = True) -> list[Rule]:
    """The published groups: new parameters ('new', 1e-4), CLIP-initialised ones ('clip', 1e-7), frozen text blocks.

    temporal_embedding_group: the official code puts the (new) temporal embedding in the 'clip' group; keep 'clip'
        to reproduce it, 'new' to fix it.
    freeze_text_embeddings: also freeze the text token/position embeddings, so no backward pass runs through the
        frozen text blocks at all.
    """
    rules: list[Rule] = []
    if has_frozen_text_blocks:
        rules.append((r"^text/frozen_blocks/", FROZEN))
    rules += [
        (r"^text/(token_embedding|positional_embedding)$", FROZEN if freeze_text_embeddings else "clip"),
        (r"^video/blocks/(time_attn|ln_3)/", "new"),
        (r"^sort_head/", "new"),
        (r"^video/temporal_embedding$", temporal_embedding_group),
        (r"^(video|text)/", "clip"),
    ]
    return rules


def assign_groups(params: Any, rules: Sequence[Rule], groups: Mapping[str, Any]) -> Any:
    """Tree like `params` holding each parameter's group name (or None = frozen)."""
    compiled = []
    for regex, group in rules:
        if group is not None and group not in groups:
            raise ValueError(f"rule {regex!r} names group {group!r}, which has no learning rate; "
                             f"groups: {sorted(groups)}")
        try:
            compiled.append((re.compile(regex), group))
        except re.error as e:
            raise ValueError(f"rule {regex!r} is not a valid regex: {e}") from None
    used = [False] * len(compiled)
    unmatched = []

    def group_of(name: str):
        for i, (pattern, group) in enumerate(compiled):
            if pattern.search(name):
                used[i] = True
                return group
        unmatched.append(name)
        return None

    flat = traverse_util.flatten_dict(params)
    labels = {k: group_of("/".join(k)) for k in flat}
    if unmatched:
        raise ValueError(f"{len(unmatched)} parameters match no optimizer rule: {unmatched[:20]}")
    idle = [rules[i][0] for i, u in enumerate(used) if not u]
    if idle:
        raise ValueError(f"optimizer rules match no parameter: {idle}")
    return traverse_util.unflatten_dict(labels)


def partition(params: Any, labels: Any) -> tuple[Any, Any]:
    """Split into (trainable, frozen) nested dicts by the group labels."""
    flat, flat_labels = traverse_util.flatten_dict(params), traverse_util.flatten_dict(labels)
    trainable = {k: v for k, v in flat.items() if flat_labels[k] is not None}
    frozen = {k: v for k, v in flat.items() if flat_labels[k] is None}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def without_groups(labels: Any, groups: frozenset[str]) -> Any:
    """`labels` with the parameters of `groups` marked frozen (None)."""
    flat = traverse_util.flatten_dict(labels)
    return traverse_util.unflatten_dict({k: None if g in groups else g for k, g in flat.items()})


def merge(trainable: Any, frozen: Any) -> Any:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(trainable),
                                         **traverse_util.flatten_dict(frozen)})


def make_schedule(base_lr: float, kind: str, total_steps: int, warmup_steps: int = 0,
                  decay_at: Sequence[float] = (0.6, 0.8), decay_factor: float = 0.1,
                  start_step: int = 0) -> optax.Schedule:
    """'step': the published x0.1 at fractions of training (epochs 6 and 8 of 10); 'warmup_cosine'; 'constant'.

    start_step > 0: the learning rate is 0 before it, and the schedule runs over the remaining steps.
    """
    if start_step:
        rest = make_schedule(base_lr, kind, max(total_steps - start_step, 1), warmup_steps, decay_at, decay_factor)
        return optax.join_schedules([optax.constant_schedule(0.0), rest], [start_step])
    if kind == "step":
        boundaries = {max(1, int(f * total_steps)): decay_factor for f in decay_at}
        sched = optax.piecewise_constant_schedule(base_lr, boundaries)
    elif kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, base_lr, max(warmup_steps, 1),
                                                  max(total_steps, warmup_steps + 1))
    elif kind == "constant":
        sched = optax.constant_schedule(base_lr)
    else:
        raise ValueError(f"unknown schedule {kind!r}; use 'step', 'warmup_cosine' or 'constant'")
    if warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), sched], [warmup_steps])
    return sched


def decays(name: str, no_decay: str) -> bool:
    return re.search(no_decay, name) is None


def scale_by_transformers_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's direction as `transformers.AdamW` computes it (the published optimizer, docs/published_recipe.md):
    eps is added to sqrt(v) before the bias correction, m / bc1 * sqrt(bc2) / (sqrt(v) + eps), where optax adds it
    after, m_hat / (sqrt(v_hat) + eps). At b2 = 0.999 the published eps 1e-6 then acts as 3e-5 on the first update.
    optax has no switch for this, hence written here; the state is optax's ScaleByAdamState, so checkpoints are
    interchangeable."""

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        step = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        direction = jax.tree.map(lambda m, v: step * m / (jnp.sqrt(v) + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def adamw(learning_rate: optax.Schedule, cfg: Any, mask) -> optax.GradientTransformation:
    """AdamW with eps placed as `cfg.eps_placement` says: 'transformers' (published) or 'optax'. Weight decay is
    decoupled (lr x weight_decay x p) in both; transformers decays the already-updated p, a second-order difference
    (lr^2 x weight_decay x direction) left out here."""
    if cfg.eps_placement == "optax":
        return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=mask)
    if cfg.eps_placement != "transformers":
        raise ValueError(f"config.optim.eps_placement={cfg.eps_placement!r}: use 'transformers' or 'optax'")
    return optax.chain(scale_by_transformers_adam(cfg.b1, cfg.b2, cfg.eps),
                       optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.scale_by_learning_rate(learning_rate))


def held(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`'s state, kept as it is: zero updates, and `inner` is not run (its step count does not advance)."""
    return optax.GradientTransformation(inner.init, lambda updates, state, params=None: (
        jax.tree.map(jnp.zeros_like, updates), state))


def make_optimizer(cfg: Any, labels: Any, total_updates: int, group_starts: Mapping[str, int] | None = None,
                   waiting: frozenset[str] = frozenset()
                   ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """AdamW per learning-rate group over the trainable parameters only.

    cfg: the config's `optim` block (groups, schedule, warmup_steps, decay_at, decay_factor, b1, b2, eps,
         weight_decay, no_decay). labels: `assign_groups` output. group_starts: the update at which a group starts
         (`Curriculum.group_start_updates`; absent groups start at 0).

    A group starts as if its optimizer were created then: until it starts the train step passes it in `waiting`,
    which holds its state (no update, no weight decay, no step counted); from its start its AdamW counts its own
    steps and its schedule runs over the updates that remain. Returns the transformation and each group's learning
    rate by global update (0 before the group's start), for logging.
    """
    trainable_labels, _ = partition(labels, labels)
    present = sorted(set(jax.tree.leaves(trainable_labels)))
    start = {g: (group_starts or {}).get(g, 0) for g in present}
    schedule = functools.partial(make_schedule, kind=cfg.schedule, warmup_steps=cfg.warmup_steps,
                                 decay_at=cfg.decay_at, decay_factor=cfg.decay_factor)
    own = {g: schedule(cfg.groups[g], total_steps=max(total_updates - start[g], 1)) for g in present}
    schedules = {g: schedule(cfg.groups[g], total_steps=total_updates, start_step=start[g]) for g in present}

    def wd_mask(params):
        return jax.tree_util.tree_map_with_path(lambda p, _: decays(path_str(p), cfg.no_decay), params)

    transforms = {g: adamw(own[g], cfg, wd_mask) for g in present}
    transforms = {g: held(t) if g in waiting else t for g, t in transforms.items()}
    return optax.multi_transform(transforms, trainable_labels), schedules
