"""Parameter counts of a TVTSv2 variant, by tower and by optimizer group, without allocating anything.

    python -m tools.model_summary --variant H/14 [--freeze_text_embeddings] [--temporal_embedding_group new]

The last line is `total_params <integer>`.
"""
from __future__ import annotations

import argparse
import math
from collections import Counter

import flax.linen as nn
import flax.traverse_util as traverse_util

from tvts import optim
from tvts.models.tvtsv2 import abstract_params
from tvts.models.variants import VARIANT_NAMES, decode_variant

GROUP_NAMES = {"new": "new (time attention, ln_3, sort head)", "clip": "CLIP-initialised (tuned)", None: "frozen"}


def summarize(variant: str, freeze_text_embeddings: bool = False, temporal_embedding_group: str = "clip"):
    v = decode_variant(variant)
    params = nn.unbox(abstract_params(v))
    rules = optim.published_rules(temporal_embedding_group, freeze_text_embeddings, v.text.num_frozen > 0)
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
    parser.add_argument("--variant", default="H/14", choices=VARIANT_NAMES)
    parser.add_argument("--freeze_text_embeddings", action="store_true")
    parser.add_argument("--temporal_embedding_group", default="clip", choices=("clip", "new"))
    args = parser.parse_args()
    v, by_tower, by_group = summarize(args.variant, args.freeze_text_embeddings, args.temporal_embedding_group)
    total = sum(by_tower.values())
    print(f"TVTSv2 {v.name}: video {v.video.width}x{v.video.depth} (patch {v.video.patch_size}), "
          f"text {v.text.width}x{v.text.depth} ({v.text.num_frozen} frozen), joint {v.joint_dim}, init {v.init}")
    print("by tower:")
    for tower in ("video", "text", "sort_head"):
        print(f"  {tower:<44}{by_tower[tower]:>15,}")
    print("by group:")
    for group in (None, "clip", "new"):
        print(f"  {GROUP_NAMES[group]:<44}{by_group[group]:>15,}")
    print(f"total_params {total}")


if __name__ == "__main__":
    main()
