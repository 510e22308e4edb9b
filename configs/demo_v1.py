"""The tiny TVTS v1 demo: `v1-tiny` trained from random weights on the built-in synthetic corpus (2 CPU cores, about
5 minutes), ending with held-out figures beside the TVTSv2 demo's (docs/tiny_recipe_v1.md):

    python -m tvts.train --config configs/demo_v1.py --workdir workdirs/demo_v1

Arguments after ':' (comma-separated key=value): data, steps, eval (False: no evaluators). Any field can then be
overridden with --config.FIELD=VALUE; the config is locked, so a mistyped field fails at once.

The same trainer, curriculum, data path, evaluators and export as configs/demo.py; what differs is the model family
(joint space-time attention over 2-frame tubelets, a DistilBERT text tower read with WordPiece ids from a vocabulary
of the corpus's words, masking per tube) and a shorter schedule. The recipe departs from the published v1 one where a
model trained from random weights in minutes needs it, as the TVTSv2 demo does (docs/tiny_recipe.md): a warmup-cosine
schedule, higher learning rates, captions alone for the first quarter, the text tower trained from 70% on.
"""
import ml_collections

from tvts.config import base_config, parse_arg

# the text tower trains only from 70% of training ('text' in group_start), as in the TVTSv2 demo (configs/demo.py)
TINY_V1_RULES = (
    (r"^text/", "text"),
    (r"^(video|sort_head)/", "new"),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="v1-tiny", data="synthetic", steps=-1, eval=True)
    c = base_config(args)
    c.init = "random"
    c.total_steps = args.steps if args.steps > 0 else 500  # iterations
    c.log_every = 50
    c.checkpoint_every = 400

    c.model.dtype = "float32"
    c.model.remat = "none"
    # 4 clips x 2 frames = 4 tubes, one per clip (published: 4 x 4 = 8 tubes); half the tokens of 16 frames, for time
    c.model.num_frames = 8
    c.model.temporal_init_std = 1.0  # a random-init tower needs a strong tube code from the start
    c.model.sort_type_init_std = 0.02

    c.data.tokenizer = "wordpiece"  # data.vocab_path '': the synthetic corpus's own WordPiece vocabulary
    c.data.source_start = dict(transcribed=0.25, captioned=0.0)
    c.data.transcribed_batch = 32
    c.data.captioned_batch = 64
    c.data.context_length = 32
    c.data.transcript_length = 16

    c.loss.contrastive_reduction = "mean"
    c.loss.transcribed_contrastive_start = 0.7

    c.optim.groups = {"new": 2e-3, "text": 1e-3}
    c.optim.rules = TINY_V1_RULES
    c.optim.group_start = {"text": 0.7}
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.b2 = 0.98
    c.optim.eps_placement = "optax"
    c.optim.weight_decay = 0.0  # as published for v1
    c.optim.no_decay = r"(bias|scale|embedding|cls_token)$"

    c.eval_references = ("init",) if args.eval else ()  # v1 has no time attention to switch off
    heldout = dict(type="synthetic_heldout", every=0, num_videos=256, num_probe_train=768, batch=64)
    c.evals = {"heldout": heldout} if args.data == "synthetic" and args.eval else {}
    c.export_backbone = "backbone"  # workdirs/demo_v1/backbone: tvts.backbone.load, python -m tvts.extract
    c.lock()
    return c
