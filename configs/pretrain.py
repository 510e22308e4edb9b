"""TVTSv2 pretraining with the published recipe (docs/published_recipe.md): contrastive + transcript sorting on
transcribed and captioned videos, CLIP-initialised towers.

    python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/tvts/b16 \\
        --config.init=CONVERTED_CLIP_DIR --config.mesh.fsdp=8 --config.data.transcribed_batch=768

A published variant needs `--config.init`: a directory of converted CLIP weights, or `random` to train from random
weights on purpose. Arguments after ':' (comma-separated key=value): variant (B/32, B/16, H/14, ...), data,
steps, eval. Any field can then be overridden with --config.FIELD=VALUE; the config is locked, so a mistyped
field fails at once. The tiny synthetic demo is configs/demo.py.
"""
import ml_collections

from tvts.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="B/16", data="synthetic", steps=-1, eval=True)
    c = base_config(args)
    if args.steps > 0:
        c.total_steps = args.steps
    heldout = dict(type="synthetic_heldout", every=5000, num_videos=256, num_probe_train=768, batch=64)
    c.evals = {"heldout": heldout} if args.data == "synthetic" and args.eval else {}
    c.lock()
    return c
