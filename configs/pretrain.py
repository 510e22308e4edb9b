"""TVTSv2 pretraining: contrastive + transcript sorting on transcribed and captioned videos.

The built-in demo (tiny variant, synthetic corpus, 2 CPU cores, about 10 minutes):
    python -m tvts.train --config configs/pretrain.py --workdir workdirs/demo

A published variant with the published recipe (data, lr groups, step decay):
    python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/tvts/b16 \
        --config.mesh.fsdp=8 --config.data.transcribed_batch=768

Arguments after ':' (comma-separated key=value): variant, data, steps, eval (False: no evaluators). Any field can then be
overridden with --config.FIELD=VALUE; the config is locked, so a mistyped field fails at once.
"""
from tvts.config import parse_arg
from tvts.sharding import DEFAULT_RULES

import ml_collections

# The tiny demo trains both towers from random weights. Tuned from the start, its text tower collapses
# onto colour, the one attribute the young video tower already shares with it: swapping a transcript's
# shape or motion word then leaves its embedding at cosine 1.000, swapping its colour moves it to -0.29
# (tools/diagnose_embeddings.py). The sort head sees transcripts with gradients stopped, so it can no
# longer learn shape or motion. The tiny text tower therefore keeps its random, word-preserving features
# for the first 70% of training ('text' in `group_start`) while the sort head and the video tower learn
# against them, and is tuned for retrieval after that. Against that random text tower the mean of a
# video's transcript embeddings and its caption's embedding are unrelated targets, and with both
# contrastive terms on, the video tower learned direction for one seed in three; the transcribed
# contrastive term therefore joins when the text tower is tuned (`transcribed_contrastive_start`), and
# captioned batches are 64 for more negatives (README, "How the tiny recipe got there"). Transcribed batches
# join at 25% of the iterations (`source_start`): with both sources from the first iteration, the sorting
# loss pulled the young video tower away from the captions and 2 seeds in 5 did not learn direction; with
# the head start 2 in 7 do not (README, "Seeds"). CLIP variants start from a pretrained text tower and use
# the published rules, losses and sources.
TINY_RULES = (
    (r"^text/frozen_blocks/", None),
    (r"^text/", "text"),
    (r"^video/blocks/(time_attn|ln_3)/", "new"),
    (r"^sort_head/", "new"),
    (r"^video/", "clip"),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny", data="synthetic", steps=-1, eval=True)
    tiny = args.variant == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = args.steps if args.steps > 0 else (1600 if tiny else 100_000)  # iterations
    c.log_every = 50 if tiny else 100
    c.checkpoint_every = 400 if tiny else 2000
    c.keep_checkpoints = 3
    c.resume = ""  # another run's checkpoint directory to continue from
    c.init = ""  # another run's checkpoint directory to take parameters from

    c.model = dict(
        variant=args.variant,
        dtype="float32" if tiny else "bfloat16",  # compute dtype; params stay float32
        remat="none" if tiny else "full",
        time_init="learnable",  # or 'published' (qkv 0, out 1: cannot learn in exact arithmetic)
        temporal_init_std=1.0 if tiny else 0.0,  # 0: published zeros; random-init models need a frame code
        text_num_frozen=-1,  # -1: the variant's (9 of 12 for B, 18 of 24 for H)
        mask_ratio=-1.0,  # -1: the variant's published ratio
        num_frames=12,
    )
    c.data = dict(
        name=args.data,
        sources=("transcribed", "captioned"),  # one update on each per iteration, as published
        # fraction of the iterations before a source takes its update (until then its batches are not even made).
        # tiny: captions alone for the first 25%, so the sorting loss does not pull the young video tower away
        # from the captioned contrastive loss (README, "Seeds"); published: both sources from the start
        source_start=dict(transcribed=0.25 if tiny else 0.0, captioned=0.0),
        transcribed_batch=32 if tiny else 24 * 8,  # global batch per source
        captioned_batch=64 if tiny else 24 * 8,
        context_length=32 if tiny else 77,
        transcript_length=16 if tiny else -1,  # tokens per transcript (-1: context_length); tiny ones hold <= 16
        # fields of tvts.data.synthetic.SyntheticConfig (the corpus of data='synthetic')
        synthetic=dict(seed=0, second_change_prob=1.0, negative_group_size=4, radius=(0.26, 0.3), travel=0.4),
    )
    c.loss = dict(
        temperature=0.05,
        sort_weight=2.0,
        transcribed_contrastive_weight=1.0,
        # fraction of training before the contrastive term joins on transcribed batches (weight 0 until then)
        transcribed_contrastive_start=0.7 if tiny else 0.0,
    )
    c.optim = dict(
        groups={"new": 2e-3, "clip": 2e-3, "text": 1e-3} if tiny else {"new": 1e-4, "clip": 1e-7},
        # empty: tvts.optim.published_rules(temporal_embedding_group, freeze_text_embeddings)
        rules=TINY_RULES if tiny else (),
        group_start={"text": 0.7} if tiny else {},  # fraction of training before a group starts (held until then)
        # switches of the published rules (rules=()):
        temporal_embedding_group="clip",  # the published quirk; 'new' gives it the new-parameter lr
        freeze_text_embeddings=False,
        schedule="warmup_cosine" if tiny else "step",
        warmup_steps=100 if tiny else 0,
        decay_at=(0.6, 0.8),  # 'step': x decay_factor at these fractions (epochs 6 and 8 of 10)
        decay_factor=0.1,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.05,
        no_decay=r"(bias|scale|embedding|cls_token)$",
    )
    c.grad_accum_steps = 1
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = [list(r) for r in DEFAULT_RULES]
    c.max_replicated_fraction = 0.05

    heldout = dict(type="synthetic_heldout", every=0 if tiny else 5000, num_videos=256, num_probe_train=768,
                   batch=64, compare_with_init=tiny, compare_without_time_attention=tiny)
    c.evals = {"heldout": heldout} if args.data == "synthetic" and args.eval else {}
    c.lock()
    return c
