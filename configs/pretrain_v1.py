"""TVTS v1 pretraining with the published recipe (docs/published_recipe.md, "TVTS v1"), in its two published stages
and in the published order (v1/README.md:50-62): first YT-Temporal from MAE + DistilBERT weights, then CC3M + WebVid-2M
from that checkpoint. The same trainer, data path, evaluators and export as TVTSv2 (configs/pretrain.py).

    # the published init: MAE ImageNet-1K ViT-B/16 video tower + distilbert-base-uncased text tower (docs/convert.md)
    python -m tvts.convert v1_init --mae mae_pretrain_vit_base.pth --distilbert distilbert-base-uncased/ \\
        --variant v1-B/16 --out gs://BUCKET/weights/v1_init

    # stage 1: YT-Temporal, 20 epochs (steps = 20 x examples / 768), lr 1e-4, x0.1 after epochs 12 and 16
    python -m tvts.train --config configs/pretrain_v1.py:stage=yttemporal,data=tfds,steps=STEPS \\
        --config.data.tfds_data_dir=/data/tfds --config.data.vocab_path=distilbert-base-uncased/vocab.txt \\
        --config.init=gs://BUCKET/weights/v1_init --workdir gs://BUCKET/tvts_v1/yt

    # stage 2: CC3M + WebVid-2M captions, 12 epochs at lr 1e-4, from stage 1's checkpoint
    python -m tvts.train --config configs/pretrain_v1.py:stage=ccweb,data=tfds,steps=STEPS \\
        --config.data.tfds_data_dir=/data/tfds --config.data.vocab_path=distilbert-base-uncased/vocab.txt \\
        --config.init=gs://BUCKET/tvts_v1/yt/checkpoints --workdir gs://BUCKET/tvts_v1/ccweb

Arguments after ':' (comma-separated key=value): stage (yttemporal | ccweb), variant (v1-B/16, v1-tiny), data
(synthetic | tfds), steps (iterations; the published stages count epochs, so pass epochs x dataset size / global
batch), eval. Any field can then be overridden with --config.FIELD=VALUE; the config is locked. A published variant
needs `--config.init` (a `tvts.convert v1_init` directory or a run's checkpoints/, or `random` on purpose).

Published facts used here (docs/published_recipe.md, "TVTS v1"): 16 frames (8 tubes) and 75% of each tube masked for
YT-Temporal, 4 frames (2 tubes) unmasked for WebVid; contrastive NormSoftmaxLoss (temperature 0.05, both directions
summed) + sorting x 2; AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-6 (transformers' placement), no weight decay, one
group for every parameter; milestones 12 and 16 of 20 epochs (x0.1) for YT-Temporal, none reached in the 12 CC3M +
WebVid epochs; 24 videos per GPU (YT-Temporal), 48 + 48 (CC3M, WebVid), on 32 GPUs; WordPiece at most 50 tokens.

Stage 2 reads two sources, one update on each per iteration: CC3M images (the `images` source, the `cc3m` builder;
one frame repeated to one tube, v1/configs/dist-cc-web-pt.json:37, v1/base/base_dataset.py:168-169) and WebVid at 4
frames (:59), the model at 16 frames (:9).
"""
import ml_collections

from tvts.config import base_config, parse_arg

STAGES = ("yttemporal", "ccweb")
GPUS = 32  # 4 nodes of 8 V100 (v1/README.md:48; "n_gpu": 8 in both configs)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, stage="yttemporal", variant="v1-B/16", data="synthetic", steps=-1, eval=True)
    if args.stage not in STAGES:
        raise ValueError(f"stage={args.stage!r}: use {' or '.join(STAGES)}")
    c = base_config(args)
    if args.steps > 0:
        c.total_steps = args.steps

    c.data.tokenizer = "wordpiece"
    c.data.context_length = 50  # the official tokenizer call's max_length (v1/trainer/trainer.py:130-131)
    c.optim.groups = {"new": 1e-4}  # every parameter, one group (tvts.state.V1_PUBLISHED_RULES)
    c.optim.weight_decay = 0.0
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-6
    c.model.num_frames = 16  # the model's frames in both stages (v1/configs/dist-yt-pt.json:9, dist-cc-web-pt.json:9)
    if args.stage == "yttemporal":  # 4 clips x 4 frames (v1/configs/dist-yt-pt.json:38)
        c.model.mask_ratio = 0.75  # per tube (v1/data_loader/YTTemporal_dataset.py:68)
        c.data.sources = ("transcribed",)
        c.data.transcribed_batch = 24 * GPUS
        c.optim.schedule = "step"
        c.optim.decay_at = (12 / 20, 16 / 20)  # --schedule 12 16 of 20 epochs
    else:
        c.data.num_frames.captioned = 4  # WebVid's own (v1/configs/dist-cc-web-pt.json:59): 2 tubes
        c.model.captioned_mask_ratio = 0.0  # v1/base/base_dataset.py:129
        c.data.sources = ("images", "captioned")  # the official loader list's order (CC3M, then WebVid)
        c.data.images_batch = 48 * GPUS  # v1/configs/dist-cc-web-pt.json:29
        c.data.captioned_batch = 48 * GPUS  # :50
        c.optim.schedule = "constant"  # the first milestone (12) is reached only after the 12th, last epoch
    c.data.source_start = {k: 0.0 for k in c.data.sources}

    heldout = dict(type="synthetic_heldout", every=5000, num_videos=256, num_probe_train=768, batch=64)
    c.evals = {"heldout": heldout} if args.data == "synthetic" and args.eval else {}
    c.lock()
    return c
