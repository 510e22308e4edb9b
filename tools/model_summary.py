"""Parameter counts of a variant (TVTSv2 or TVTS v1), by tower and by optimizer group, without allocating anything.

    python -m tools.model_summary --variant H/14 [--freeze_text_embeddings] [--temporal_embedding_group new]
    python -m tools.model_summary --variant v1-B/16      # TVTS v1: one published group for every parameter

The last line is `total_params <integer>`.
"""
from __future__ import annotations

import argparse
import math
from collections import Counter

import flax.linen as nn
import flax.traverse_util as traverse_util

from tvts import optim
from tvts.models import tvts_v1, tvtsv2
from tvts.models.variants import ALL_VARIANT_NAMES, decode_variant, is_v1

GROUP_NAMES = {"new": "new (time attention, ln_3, sort head)", "clip": "CLIP-initialised (tuned)", None: "frozen"}


def summarize(variant: str, freeze_text_embeddings: bool = False, temporal_embedding_group: str = "clip"):
    from tvts.state import V1_PUBLISHED_RULES

    v = decode_variant(variant)
    params = nn.unbox((tvts_v1 if is_v1(v) else tvtsv2).abstract_params(v))
    rules = V1_PUBLISHED_RULES if is_v1(v) else optim.published_rules(temporal_embedding_group,
                                                                      freeze_text_embeddings, v.text.num_frozen > 0)
    labels = traverse_util.flatten_dict(optim.assign_groups(params, rules, {"new": 1.0, "clip": 1.0}))
    by_tower, by_group = Counter(), Counter()
    for path, leaf in traverse_util.flatten_dict(params).items():
        n = math.prod(leaf.shape)
        by_tower[path[0]] += n
        by_group[labels[path]] += n
    return v, by_tower, by_group


def main():
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="H/14", choices=ALL_VARIANT_NAMES)
    parser.add_argument("--freeze_text_embeddings", action="store_true")
    parser.add_argument("--temporal_embedding_group", default="clip", choices=("clip", "new"))
    args = parser.parse_args()
    v, by_tower, by_group = summarize(args.variant, args.freeze_text_embeddings, args.temporal_embedding_group)
    total = sum(by_tower.values())
    family = "TVTS v1" if is_v1(v) else "TVTSv2"
    frozen = getattr(v.text, "num_frozen", 0)
    print(f"{family} {v.name}: video {v.video.width}x{v.video.depth} (patch {v.video.patch_size}), "
          f"text {v.text.width}x{v.text.depth} ({frozen} frozen), joint {v.joint_dim}, init {v.init}")
    print("by tower:")
    for tower in ("video", "text", "sort_head"):
        print(f"  {tower:<44}{by_tower[tower]:>15,}")
    print("by group:")
    if is_v1(v):  # the published recipe trains every parameter at one learning rate
        print(f"  {'one group (every parameter)':<44}{by_group['new']:>15,}")
    for group in () if is_v1(v) else (None, "clip", "new"):
        print(f"  {GROUP_NAMES[group]:<44}{by_group[group]:>15,}")
    print(f"total_params {total}")


if __name__ == "__main__":
    main()
