"""The train plan: model, optimizer and curriculum from the config, the abstract state and its shardings, and the
state itself (random, or from given parameters), created directly sharded.

Shapes before memory: `make_setup` allocates nothing; `init_state` creates the state with its target shardings.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tvts import config as config_lib
from tvts import optim, sharding
from tvts.curriculum import Curriculum
from tvts.encoders import ModelEncoders
from tvts.models import tvts_v1
from tvts.models.inputs import PreprocessSpec
from tvts.models.tvts_v1 import TVTSv1, random_tube_keep
from tvts.models.tvtsv2 import TVTSv2, init_params, merge_loaded, without_time_attention
from tvts.models.variants import is_v1

# TVTS v1 trains every parameter with one AdamW at the published learning rate (docs/published_recipe.md, "TVTS v1",
# "Optimisation and stages"): one rule, the base config's 1e-4 group ('new').
V1_PUBLISHED_RULES = ((r"^(video|text|sort_head)/", "new"),)


@dataclasses.dataclass
class Setup:
    """Everything derived from the config before any array is allocated."""

    config: Any
    model: TVTSv2 | TVTSv1
    mesh: jax.sharding.Mesh
    rules: tuple
    curriculum: Curriculum
    labels: Any  # parameter -> group name or None (frozen)
    tx: optax.GradientTransformation  # every group started; each phase's step builds its own (same state)
    schedules: dict[str, optax.Schedule]  # learning rate by update, for logging
    abstract_state: Any
    state_sharding: Any
    mask_ratio: float  # of transcribed videos (mask_ratios: per source)
    spec: PreprocessSpec
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)  # programs built once per setup
    mask_ratios: dict[str, float] = dataclasses.field(default_factory=dict)  # source -> its training mask ratio

    @property
    def per_tube_mask(self) -> bool:
        """TVTS v1 masks each temporal tube on its own (keep [B, tubes, n_keep]); TVTSv2 one set per video."""
        return isinstance(self.model, TVTSv1)

    def random_tube_keep(self, rng: jax.Array, video_shape: tuple[int, ...], ratio: float) -> jax.Array | None:
        """TVTS v1's training mask for video [B, T, H, W, 3]: [B, tubes, n_keep] (1 frame = one tube); None at 0."""
        video = self.model.variant.video
        tubes = max(video_shape[1] // video.tubelet_size, 1)
        return random_tube_keep(rng, video_shape[0], tubes, video.num_patches, ratio)

    @property
    def params_sharding(self):
        return self.state_sharding["params"]

    @property
    def group_starts(self) -> dict[str, int]:
        return self.curriculum.group_start_updates(self.schedules.keys())

    def optimizer(self, waiting: frozenset[str] = frozenset()) -> optax.GradientTransformation:
        """The optimizer of a phase in which `waiting` groups have not started (their state is held)."""
        return optim.make_optimizer(self.config.optim, self.labels, self.curriculum.total_updates,
                                    self.group_starts, waiting)[0]

    def learning_rates(self, update: int) -> dict[str, float]:
        return {f"lr/{g}": float(s(update)) for g, s in self.schedules.items()}


def build_model(config) -> TVTSv2 | TVTSv1:
    """TVTSv2, or TVTSv1 for a 'v1-' variant. temporal_init_std -1 means the family's published init: TVTSv2's
    N(0, width^-0.5), TVTS v1's zeros."""
    m = config.model
    variant = config_lib.model_variant(m)
    if is_v1(variant):
        temporal = 0.0 if m.temporal_init_std < 0 else m.temporal_init_std
        return TVTSv1(variant, jnp.dtype(m.dtype), m.remat, temporal, m.sort_type_init_std,
                      config_lib.attention_choice(config), config_lib.unroll_layers(config))
    return TVTSv2(variant, jnp.dtype(m.dtype), m.remat, m.temporal_init_std, m.sort_type_init_std,
                  config_lib.attention_choice(config), config_lib.unroll_layers(config))


def model_init(model: TVTSv2 | TVTSv1, rng: jax.Array, time_init: str = "learnable") -> Any:
    """Boxed random parameters of either family (`time_init` applies to TVTSv2's time attention only)."""
    if isinstance(model, TVTSv1):
        return tvts_v1.init_params(model, rng)
    return init_params(model, rng, time_init)


def preprocess_spec(config) -> PreprocessSpec:
    from tvts.data.texts import data_tokenizer

    tokenizer, vocab_path = data_tokenizer(config.data)
    return PreprocessSpec(num_frames=config.model.num_frames,
                          image_size=config_lib.model_variant(config.model).video.image_size,
                          normalization=config.data.normalization, context_length=config.data.context_length,
                          tokenizer=tokenizer, vocab_path=vocab_path)


def optimizer_rules(config) -> list:
    variant = config_lib.model_variant(config.model)
    if config.optim.rules:
        return [tuple(r) for r in config.optim.rules]
    if is_v1(variant):
        return list(V1_PUBLISHED_RULES)
    return optim.published_rules(config.optim.temporal_embedding_group, config.optim.freeze_text_embeddings,
                                 has_frozen_text_blocks=variant.text.num_frozen > 0)


def make_setup(config, mesh: jax.sharding.Mesh | None = None) -> Setup:
    config_lib.validate(config)
    model = build_model(config)
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    rules = sharding.logical_rules(config.sharding_rules, config_lib.sequence_parallel(config), mesh.shape["tensor"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(functools.partial(model_init, model, time_init=config.model.time_init),
                               jax.random.key(0))
    params_sharding = sharding.param_shardings(boxed, mesh, rules)
    abstract_params = nn.unbox(boxed)
    sharding.check_replication(abstract_params, params_sharding, mesh, config.max_replicated_fraction)
    labels = optim.assign_groups(abstract_params, optimizer_rules(config), config.optim.groups)
    curriculum = Curriculum.from_config(config)
    groups = sorted({g for g in jax.tree.leaves(labels) if g is not None})
    tx, schedules = optim.make_optimizer(config.optim, labels, curriculum.total_updates,
                                         curriculum.group_start_updates(groups))
    abstract_state = jax.eval_shape(functools.partial(new_state, tx=tx, labels=labels), abstract_params)
    state_sharding = sharding.state_shardings(abstract_state, params_sharding, mesh)
    state_sharding["params"] = params_sharding
    return Setup(config, model, mesh, rules, curriculum, labels, tx, schedules, abstract_state, state_sharding,
                 config_lib.mask_ratio(config), preprocess_spec(config),
                 mask_ratios={kind: config_lib.mask_ratio(config, kind) for kind in config.data.sources})


def new_state(params, *, tx, labels) -> dict[str, Any]:
    """step: updates done. nonfinite_step: the first update skipped for a non-finite loss or gradient (-1: none);
    nonfinite_count: how many were skipped."""
    trainable, _ = optim.partition(params, labels)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(trainable),
            "nonfinite_step": jnp.full((), -1, jnp.int32), "nonfinite_count": jnp.zeros((), jnp.int32)}


# The random init runs once, and at full optimisation XLA:CPU took 7.9 s to compile its ~15k lines of RNG code
# for the tiny model (1.9 s at level 0). Level 0 changes float rounding only: values agree to 5e-7. The option is
# XLA:CPU's; other backends compile the init with their defaults.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def random_init(setup: Setup, rng: jax.Array) -> Any:
    """Random parameters, created directly with their shardings (compiled once per setup)."""
    if "random_init" not in setup.compiled:
        def create(rng):
            return nn.unbox(model_init(setup.model, rng, setup.config.model.time_init))

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


def converted_params(setup: Setup, rng: jax.Array, loaded: Any) -> Any:
    """Converted weights (`tvts.convert`, a subset of the tree) over the run's random init: what the source lacks
    (time attention, ln_3, temporal embedding, sort head) is initialised as the config says, the time attention from
    the loaded space attention (`merge_loaded`)."""
    # TVTS v1 has no time attention to initialise from the loaded space attention
    time_init = None if isinstance(setup.model, TVTSv1) else setup.config.model.time_init
    merge = functools.partial(merge_loaded, time_init=time_init)
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        return jax.jit(merge, out_shardings=setup.params_sharding, donate_argnums=0)(random_init(setup, rng), loaded)


def run_rngs(config) -> tuple[jax.Array, jax.Array]:
    """(init_rng, step_rng) of a run: the random init is reproducible from the config alone."""
    return tuple(jax.random.split(jax.random.key(config.seed)))


def random_params(setup: Setup) -> Any:
    """The run's random initial parameters (for comparing a trained model with its starting point)."""
    return random_init(setup, run_rngs(setup.config)[0])


def make_encoders(setup: Setup, params: Any) -> ModelEncoders:
    """The frozen model's encoders (mask ratio 0, as in every published evaluation) for evaluators."""
    if "encoders" not in setup.compiled:
        setup.compiled["encoders"] = ModelEncoders(setup.model.for_inference(), setup.mesh, setup.rules,
                                                   setup.params_sharding, setup.spec)
    return setup.compiled["encoders"].with_params(params)


# Parameter sets the final evaluation can report beside the trained ones (config.eval_references).
REFERENCE_PARAMS = {
    "no_time_attn": lambda setup, params: without_time_attention(params),
    "init": lambda setup, params: random_params(setup),
}


def reference_params(setup: Setup, params: Any) -> dict[str, Any]:
    return {name: REFERENCE_PARAMS[name](setup, params) for name in setup.config.eval_references}


def evaluation_encoders(setup: Setup, params: Any) -> tuple[ModelEncoders, dict[str, ModelEncoders], dict[str, str]]:
    """For a final evaluation: the model's encoders, those of `config.eval_references` (one compilation for all)
    and the references' report labels."""
    encoders = make_encoders(setup, params)
    references = {k: encoders.with_params(p) for k, p in reference_params(setup, params).items()}
    return encoders, references, {k: config_lib.EVAL_REFERENCES[k] for k in references}
