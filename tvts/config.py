"""Config helpers: `get_config(arg)` argument parsing, the fields every config shares, validation before anything
is allocated.

Configs are ml_collections ConfigDicts, locked by the config files so that a mistyped override
(`--config.optim.lerning_rate=...`) fails at once. `validate` checks values against the model
variant and the devices before any array exists.
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Any

import ml_collections
from etils import epath

from tvts.curriculum import DEFAULT_SOURCES, SOURCES
from tvts.models.inputs import NORMALIZATIONS
from tvts.models.layers import ATTENTION_CHOICES
from tvts.models.variants import ALL_VARIANT_NAMES, V1Variant, Variant, decode_variant, is_v1
from tvts.optim import PUBLISHED_NO_DECAY
from tvts.sharding import DEFAULT_RULES

DATA_NAMES = ("synthetic", "tfds")  # built-in corpus; prepared TFDS datasets (tvts/data/loader.py)
NONFINITE_POLICIES = ("stop", "skip")
TOKENIZERS = ("clip_bpe", "wordpiece")  # CLIP's BPE (TVTSv2's text towers), BERT's WordPiece (TVTS v1's DistilBERT)
# Parameter sets the trainer can report beside the trained model in its final evaluation, with their labels.
EVAL_REFERENCES = {"no_time_attn": "time attn off", "init": "random init"}


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """'variant=B/16,runlocal=True' -> ConfigDict over `defaults`; unknown keys are errors.

    Values are parsed as Python literals when they are ('True', '0.5', '8'), else kept as strings ('B/16').
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key] = value
    return ml_collections.ConfigDict(out)


def base_config(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The fields every config has, at the published recipe's values where it has one (docs/published_recipe.md);
    the config files (configs/demo.py, configs/pretrain.py) set the rest and lock it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000  # iterations (see tvts/curriculum.py for iterations, updates and checkpoint steps)
    c.log_every = 100  # iterations
    c.checkpoint_every = 2000  # iterations
    c.keep_checkpoints = 3
    c.resume = ""  # another run's checkpoint directory to continue from
    # where parameters start: a converted checkpoint directory, or 'random'; a variant that starts from CLIP
    # weights refuses '' so that a published run never trains from random weights by accident
    c.init = ""
    c.model = dict(
        variant=args.variant,
        dtype="bfloat16",  # compute dtype; params stay float32
        remat="full",
        # the attention implementation (tvts.models.layers.ATTENTION_IMPLEMENTATIONS), in training and forward-only
        # programs alike; 'auto': heads-major in TVTSv2's video tower, token-major einsum elsewhere (the fastest
        # measured on XLA:CPU; docs/benchmarks.md, "Attention layout")
        attention="auto",
        # the layer stacks as straight-line code instead of a loop (same parameters; tvts.models.layers.layer_stack):
        # on XLA:CPU faster for tiny (the loop's copies of saved activations took a fifth of its step), slower at B/16
        unroll_layers=False,
        time_init="learnable",  # or 'published' (qkv 0, out 1: cannot learn in exact arithmetic)
        temporal_init_std=-1.0,  # -1: width**-0.5 as published; 0: zeros
        sort_type_init_std=0.0,  # the sort head's type embedding: zeros as published
        text_num_frozen=-1,  # -1: the variant's (9 of 12 for B, 18 of 24 for H)
        mask_ratio=-1.0,  # -1: the variant's published ratio (of transcribed videos)
        # of captioned videos; -1: the variant's published one (TVTSv2: mask_ratio, as published; TVTS v1: 0)
        captioned_mask_ratio=-1.0,
        num_frames=12,
    )
    c.data = dict(
        name=args.data,
        sources=DEFAULT_SOURCES,  # one update on each per iteration, in this order (also: 'images')
        source_start=dict(transcribed=0.0, captioned=0.0, images=0.0),  # fraction of the iterations before it starts
        transcribed_batch=24 * 8,  # global batch per source
        captioned_batch=24 * 8,
        images_batch=24 * 8,
        # frames per sample of each source; -1: model.num_frames (TVTS v1's stage 2: WebVid at 4, CC3M images at 1)
        num_frames=dict(transcribed=-1, captioned=-1, images=1),
        context_length=77,
        # the text tower's: 'clip_bpe' for TVTSv2, 'wordpiece' for TVTS v1 (tvts.data.tokenizer.text_tokenizer)
        tokenizer="clip_bpe",
        # WordPiece only: the vocab.txt of the text tower (e.g. distilbert-base-uncased's); '' with data='synthetic':
        # a vocabulary of the synthetic corpus's words, built on first use (tvts.data.synthetic.wordpiece_vocab_path)
        vocab_path="",
        transcript_length=-1,  # tokens per transcript (-1: context_length)
        normalization="imagenet",  # or 'clip' (tvts.models.inputs.NORMALIZATIONS)
        # fields of tvts.data.synthetic.SyntheticConfig (the corpus of data='synthetic')
        synthetic=dict(seed=0, second_change_prob=1.0, negative_group_size=4, radius=(0.26, 0.3), travel=0.4),
        # --- data='tfds' (tvts/data/loader.py, docs/data_loader.md) ---
        tfds_data_dir="",  # where `python -m tvts.data.build` wrote yttemporal / webvid
        max_bad_fraction=0.05,  # stop once more than this fraction of the examples read were skipped as bad
        num_workers=-1,  # decoding worker processes per training process (-1: CPU cores - 1, at most 32; 0: none)
    )
    c.loss = dict(
        temperature=0.05,
        contrastive_reduction="sum",  # of the two directions; 'sum' as published, or 'mean'
        sort_weight=2.0,
        transcribed_contrastive_weight=1.0,
        transcribed_contrastive_start=0.0,  # fraction of training before the term joins on transcribed batches
    )
    c.optim = dict(
        groups={"new": 1e-4, "clip": 1e-7},
        rules=(),  # empty: tvts.optim.published_rules(temporal_embedding_group, freeze_text_embeddings)
        group_start={},  # fraction of training before a group starts (held until then)
        temporal_embedding_group="clip",  # the published quirk; 'new' gives it the new-parameter lr
        freeze_text_embeddings=False,
        schedule="step",
        warmup_steps=0,
        decay_at=(0.6, 0.8),  # 'step': x decay_factor at these fractions (epochs 6 and 8 of 10)
        decay_factor=0.1,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        eps_placement="transformers",  # eps joins sqrt(v) before the bias correction, as transformers.AdamW
        weight_decay=0.05,
        no_decay=PUBLISHED_NO_DECAY,
    )
    c.grad_accum_steps = 1
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = [list(r) for r in DEFAULT_RULES]
    # split the residual stream's tokens over mesh.tensor (> 1) too, not only the heads and mlp units
    # (tvts.sharding.logical_rules; docs/memory_plans.md, "Reading")
    c.sequence_parallel = False
    c.max_replicated_fraction = 0.05
    # a non-finite loss or gradient skips its update; 'stop' ends the run at once, 'skip' allows max_skipped
    # such updates (the same batch replays on a relaunch, so a persistent one still stops the run)
    c.nonfinite = dict(policy="stop", max_skipped=0)
    c.eval_references = ()  # keys of EVAL_REFERENCES reported beside the trained model at the end
    c.evals = {}
    c.export_backbone = ""  # a workdir subfolder the backbone is exported to after training ('': none)
    return c


def model_variant(model_cfg: Any) -> Variant | V1Variant:
    """The variant named by `config.model` (TVTSv2 or TVTS v1), with the config's overrides applied (a new frozen
    value)."""
    if model_cfg.variant not in ALL_VARIANT_NAMES:
        raise ValueError(f"config.model.variant: unknown variant {model_cfg.variant!r}; "
                         f"known variants: {', '.join(ALL_VARIANT_NAMES)}")
    variant = decode_variant(model_cfg.variant)
    if model_cfg.text_num_frozen >= 0:
        if is_v1(variant):
            raise ValueError(f"config.model.text_num_frozen={model_cfg.text_num_frozen}: the TVTS v1 text tower "
                             f"(DistilBERT) is trained whole as published; freeze parameters with config.optim.rules "
                             f"instead (leave text_num_frozen at -1)")
        if model_cfg.text_num_frozen > variant.text.depth:
            raise ValueError(f"config.model.text_num_frozen={model_cfg.text_num_frozen} exceeds the text tower's "
                             f"{variant.text.depth} blocks")
        variant = dataclasses.replace(variant, text=dataclasses.replace(variant.text,
                                                                        num_frozen=model_cfg.text_num_frozen))
    return variant


def mask_ratio(config: Any, kind: str = "transcribed") -> float:
    """The training mask ratio of a source ('transcribed', 'captioned' or 'images', which takes the captioned
    videos'): the config's, or (-1) the variant's published one."""
    variant = model_variant(config.model)
    if kind in ("captioned", "images"):
        ratio = config.model.get("captioned_mask_ratio", -1.0)  # absent from configs saved before it existed
        if ratio >= 0:
            return ratio
        if is_v1(variant):
            return variant.captioned_mask_ratio
    return variant.mask_ratio if config.model.mask_ratio < 0 else config.model.mask_ratio


def source_frames(config: Any, kind: str) -> int:
    """Frames per sample of source `kind`: config.data.num_frames[kind], or (-1, or absent from configs saved
    before the field existed) config.model.num_frames."""
    frames = int(config.data.get("num_frames", {}).get(kind, -1))
    return config.model.num_frames if frames == -1 else frames


def tokenizer_name(config: Any) -> str:
    """config.data.tokenizer ('clip_bpe' in configs saved before the field existed)."""
    return config.data.get("tokenizer", "") or "clip_bpe"


def attention_choice(config: Any) -> str:
    """config.model.attention ('auto' in configs saved before the field existed)."""
    return config.model.get("attention", "auto")


def unroll_layers(config: Any) -> bool:
    """config.model.unroll_layers (False in configs saved before the field existed)."""
    return bool(config.model.get("unroll_layers", False))


def sequence_parallel(config: Any) -> bool:
    """config.sequence_parallel (False in configs saved before the field existed)."""
    return bool(config.get("sequence_parallel", False))


def validate(config: Any, num_devices: int | None = None, process_count: int | None = None) -> None:
    """Fail with a message naming the field before anything is allocated.

    With `num_devices` / `process_count` (the trainer passes them) the batch sizes are checked against the mesh.
    """
    variant = model_variant(config.model)
    for kind, field in (("transcribed", "mask_ratio"), ("captioned", "captioned_mask_ratio")):
        ratio = mask_ratio(config, kind)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"config.model.{field}={ratio} must be in [0, 1): a ratio of 1 drops every patch")
        if int(variant.video.num_patches * (1 - ratio)) < 1:
            raise ValueError(f"config.model.{field}={ratio} keeps no patch of {variant.video.num_patches}")
    if not 1 <= config.model.num_frames <= variant.video.max_frames:
        raise ValueError(f"config.model.num_frames={config.model.num_frames}: the temporal embedding holds "
                         f"{variant.video.max_frames} frames")
    for kind, frames in config.data.get("num_frames", {}).items():
        if kind not in SOURCES:
            raise ValueError(f"config.data.num_frames.{kind}: unknown source; use {', '.join(SOURCES)}")
        if frames != -1 and not 1 <= frames <= variant.video.max_frames:
            raise ValueError(f"config.data.num_frames.{kind}={frames}: must be in [1, {variant.video.max_frames}] "
                             f"(the temporal embedding's frames), or -1 (model.num_frames)")
    if is_v1(variant):
        _validate_v1(config, variant)
    tokenizer = tokenizer_name(config)
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"config.data.tokenizer={tokenizer!r}: known {', '.join(TOKENIZERS)}")
    wanted = "wordpiece" if is_v1(variant) else "clip_bpe"
    if tokenizer != wanted:
        raise ValueError(f"config.data.tokenizer={tokenizer!r} does not match the text tower of {variant.name} "
                         f"({'DistilBERT' if is_v1(variant) else 'CLIP'}): set --config.data.tokenizer={wanted}")
    vocab_path = config.data.get("vocab_path", "")
    if tokenizer == "wordpiece" and not vocab_path and config.data.name != "synthetic":
        raise ValueError("config.data.vocab_path is empty: the WordPiece tokenizer needs the text tower's vocab.txt "
                         "(e.g. the distilbert-base-uncased directory's, the one `python -m tvts.convert v1_init "
                         "--distilbert DIR` read); only data='synthetic' builds its own")
    if vocab_path and not epath.Path(vocab_path).exists():
        raise FileNotFoundError(f"config.data.vocab_path={vocab_path!r} does not exist")
    if attention_choice(config) not in ATTENTION_CHOICES:
        raise ValueError(f"config.model.attention={attention_choice(config)!r}: use one of "
                         f"{', '.join(map(repr, ATTENTION_CHOICES))}")
    if config.model.time_init not in ("learnable", "published"):
        raise ValueError(f"config.model.time_init={config.model.time_init!r}: use 'learnable' or 'published'")
    _validate_init(config, variant)
    if config.data.name not in DATA_NAMES:
        raise ValueError(f"config.data.name={config.data.name!r}: known data {', '.join(DATA_NAMES)}")
    if config.data.name == "tfds":  # --- data='tfds' (tvts/data/loader.py) ---
        _validate_tfds(config)
    if not 0.0 <= config.data.max_bad_fraction <= 1.0:
        raise ValueError(f"config.data.max_bad_fraction={config.data.max_bad_fraction} must be a fraction in [0, 1]")
    if config.data.num_workers < -1:
        raise ValueError(f"config.data.num_workers={config.data.num_workers} must be >= 0 (or -1: automatic)")
    if config.data.normalization not in NORMALIZATIONS:
        raise ValueError(f"config.data.normalization={config.data.normalization!r}: known {sorted(NORMALIZATIONS)}")
    if config.data.context_length > variant.text.context_length:
        raise ValueError(f"config.data.context_length={config.data.context_length} exceeds the text tower's "
                         f"{variant.text.context_length}")
    if not (config.data.transcript_length == -1 or 1 <= config.data.transcript_length <= config.data.context_length):
        raise ValueError(f"config.data.transcript_length={config.data.transcript_length} must be in "
                         f"[1, context_length={config.data.context_length}] (or -1: context_length)")
    for source in config.data.sources:
        if source not in SOURCES:
            raise ValueError(f"config.data.sources: unknown source {source!r}; use {', '.join(SOURCES)}")
        _validate_batch(config, f"data.{source}_batch", config.data[f"{source}_batch"], num_devices, process_count)
    for name, fraction in config.data.source_start.items():
        if name not in SOURCES:
            raise ValueError(f"config.data.source_start.{name}: unknown source; use {', '.join(SOURCES)}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"config.data.source_start.{name}={fraction} must be a fraction of training in [0, 1)")
    if all(config.data.source_start.get(k, 0.0) > 0 for k in config.data.sources):
        raise ValueError(f"config.data.source_start={dict(config.data.source_start)}: some source of "
                         f"data.sources={tuple(config.data.sources)} must start at 0, or the first iterations "
                         f"would take no update (e.g. --config.data.source_start.{config.data.sources[0]}=0)")
    _validate_sequence_parallel(config, num_devices)
    for name in ("log_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps"):
        if config[name] <= 0:
            raise ValueError(f"config.{name}={config[name]} must be positive")
    if config.loss.contrastive_reduction not in ("sum", "mean"):
        raise ValueError(f"config.loss.contrastive_reduction={config.loss.contrastive_reduction!r}: "
                         "use 'sum' (published) or 'mean'")
    if config.nonfinite.policy not in NONFINITE_POLICIES:
        raise ValueError(f"config.nonfinite.policy={config.nonfinite.policy!r}: use {' or '.join(NONFINITE_POLICIES)}")
    if config.nonfinite.max_skipped < 0:
        raise ValueError(f"config.nonfinite.max_skipped={config.nonfinite.max_skipped} must be >= 0")
    for ref in config.eval_references:
        if ref not in EVAL_REFERENCES:
            raise ValueError(f"config.eval_references: unknown reference {ref!r}; known {sorted(EVAL_REFERENCES)}")
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be positive")
    for name in ("sort_weight", "transcribed_contrastive_weight"):
        if getattr(config.loss, name) < 0:
            raise ValueError(f"config.loss.{name}={getattr(config.loss, name)} must be >= 0")
    if not 0.0 <= config.loss.transcribed_contrastive_start < 1.0:
        raise ValueError(f"config.loss.transcribed_contrastive_start={config.loss.transcribed_contrastive_start} "
                         "must be a fraction of training in [0, 1)")
    for name, lr in config.optim.groups.items():
        if lr < 0:
            raise ValueError(f"config.optim.groups.{name}={lr} must be >= 0")
    if config.optim.rules and (config.optim.freeze_text_embeddings or config.optim.temporal_embedding_group != "clip"):
        raise ValueError("config.optim.freeze_text_embeddings / temporal_embedding_group switch the published rules; "
                         "config.optim.rules is set, so write the switch into those rules instead")
    for name, fraction in config.optim.group_start.items():
        if name not in config.optim.groups:
            raise ValueError(f"config.optim.group_start.{name}: no such group; groups: {sorted(config.optim.groups)}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"config.optim.group_start.{name}={fraction} must be a fraction of training in [0, 1)")


def validate_data(config: Any) -> None:
    """What reading the data needs beyond `validate` (the trainer calls both; plans and benchmarks that read no data
    call `validate` alone): the synthetic corpus splits each video source's frames over its 4 clips."""
    if config.data.name == "synthetic":
        from tvts.data.pipeline import synthetic_config

        for kind in set(config.data.sources) - {"images"}:  # a synthetic image is one frame, repeated
            synthetic_config(config.data, model_variant(config.model).video.image_size, source_frames(config, kind))


def _validate_v1(config: Any, variant: V1Variant) -> None:
    """What only the TVTS v1 family needs: whole 2-frame tubelets, no time attention to switch off."""
    tubelet = variant.video.tubelet_size
    for field, frames in [("model.num_frames", config.model.num_frames)] + [
            (f"data.num_frames.{kind}", source_frames(config, kind)) for kind in config.data.sources]:
        if frames != 1 and frames % tubelet:
            raise ValueError(f"config.{field}={frames}: {variant.name} embeds tubelets of {tubelet} frames, so the "
                             f"frames must fill whole tubelets (a multiple of {tubelet}), or be 1 (an image, repeated "
                             f"to one tubelet)")
    if "no_time_attn" in config.eval_references:
        raise ValueError(f"config.eval_references: 'no_time_attn' switches off TVTSv2's time attention; {variant.name} "
                         f"(TVTS v1) attends jointly over space and time and has none to switch off. Use ('init',) "
                         f"or ()")


def _validate_tfds(config: Any) -> None:
    from tvts.data.loader import TEXTS_PER_VIDEO

    if not config.data.tfds_data_dir:
        raise ValueError("config.data.name='tfds' reads prepared datasets: set --config.data.tfds_data_dir=DIR "
                         "(the --data_dir of `python -m tvts.data.build`)")
    if not epath.Path(config.data.tfds_data_dir).exists():
        raise FileNotFoundError(f"config.data.tfds_data_dir={config.data.tfds_data_dir!r} does not exist")
    clips = TEXTS_PER_VIDEO["transcribed"]
    frames = source_frames(config, "transcribed")
    field = "model.num_frames" if frames == config.model.num_frames else "data.num_frames.transcribed"
    if "transcribed" in config.data.sources and frames % clips:
        raise ValueError(f"config.{field}={frames}: transcribed videos need a multiple of {clips} (frames per clip x "
                         f"{clips} clips)")


def _validate_init(config: Any, variant: Variant) -> None:
    for name in ("resume", "init"):
        path = config[name]
        if path and path != "random" and not epath.Path(path).exists():
            raise FileNotFoundError(f"config.{name}={path!r} does not exist")
    if config.resume == "random":
        raise ValueError("config.resume='random': resume takes a checkpoint directory; for random weights use "
                         "config.init='random'")
    if variant.init != "random" and not config.init and is_v1(variant):
        raise ValueError(
            f"config.init is empty, and variant {variant.name} starts from MAE and DistilBERT weights "
            f"({variant.init}). Convert them to a params directory with `python -m tvts.convert v1_init --mae "
            f"mae_pretrain_vit_base.pth --distilbert DISTILBERT_DIR --variant {variant.name} --out DIR` "
            f"(docs/convert.md, 'TVTS v1'), and pass --config.init=DIR, or pass --config.init=random to train from "
            f"random weights on purpose.")
    if variant.init != "random" and not config.init:
        raise ValueError(
            f"config.init is empty, and variant {variant.name} starts from pretrained CLIP weights "
            f"({variant.init}). Convert them to a params directory, e.g. `python -m tvts.convert "
            f"{variant.init.split(':')[0]} CHECKPOINT --variant {variant.name} --out DIR` (docs/convert.md), and pass "
            f"--config.init=DIR, or pass --config.init=random to train from random weights on purpose.")


def _validate_batch(config: Any, field: str, batch: int, num_devices: int | None, process_count: int | None) -> None:
    if batch <= 0:
        raise ValueError(f"config.{field}={batch} must be positive")
    if num_devices is not None:
        data_parallel = _data_parallel_size(config, num_devices)
        if batch % (data_parallel * config.grad_accum_steps):
            raise ValueError(f"config.{field}={batch} must be divisible by the data-parallel mesh size "
                             f"{data_parallel} (mesh.data x mesh.fsdp) x grad_accum_steps={config.grad_accum_steps}")
    if process_count is not None and batch % process_count:
        raise ValueError(f"config.{field}={batch} must be divisible by the process count {process_count}")


def _validate_sequence_parallel(config: Any, num_devices: int | None) -> None:
    from tvts.sharding import MESH_AXES, logical_rules, mesh_shape

    tensor = int(config.mesh.get("tensor", 1))
    if tensor == -1:
        if num_devices is None:
            return  # make_setup checks the rules against the mesh it makes
        tensor = dict(zip(MESH_AXES, mesh_shape(dict(config.mesh), num_devices)))["tensor"]
    logical_rules(config.sharding_rules, sequence_parallel(config), tensor)


def _data_parallel_size(config: Any, num_devices: int) -> int:
    from tvts.sharding import MESH_AXES, mesh_shape

    shape = dict(zip(MESH_AXES, mesh_shape(dict(config.mesh), num_devices)))
    return shape["data"] * shape["fsdp"]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/pretrain.py:variant=tiny' -> the locked config (what --config does on the command line)."""
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted fields ({"optim.eps": 1.0}) in place; a field the config does not have raises."""
    with config.unlocked():
        for key, value in overrides.items():
            node = config
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            if last not in node:
                raise KeyError(f"config has no field {key!r}")
            node[last] = value
    return config
