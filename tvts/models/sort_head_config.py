"""The sort head's row of the variant tables, shared by both families (`tvts.models.variants` for TVTSv2,
`tvts.models.variants_v1` for TVTS v1): its own module so that neither table imports the other's."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SortHeadConfig:
    width: int
    heads: int
    depth: int = 2
    num_clips: int = 4
