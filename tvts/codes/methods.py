"""Every method by name (`--method`): learned ones first, then the baselines; training a coder and using one."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from tvts.codes.baselines import BASELINES
from tvts.codes.coder import Coder, Method
from tvts.codes.conmh import ConMH
from tvts.codes.features import Features
from tvts.codes.hcq import HCQ
from tvts.codes.mecoq import MeCoQ
from tvts.codes.phpq import PHPQ

METHODS: dict[str, Method] = {"conmh": ConMH(), "mecoq": MeCoQ(), "hcq": HCQ(), "phpq": PHPQ(), **BASELINES}


def impl(coder: Coder) -> Method:
    return METHODS[coder.method]


def database_codes(coder: Coder, feats: Features) -> np.ndarray:
    """Binary: uint8 packed bits [N, bits / 8]; quantizer: uint8 codeword ids [N, M]."""
    return impl(coder).encode(coder, feats)


def queries(coder: Coder, feats: Features, side: str = "video") -> np.ndarray:
    """Binary: packed codes as database_codes; quantizer: float32 query vectors for ADC. side='text' encodes the
    file's texts (cross-view retrieval)."""
    return impl(coder).query(coder, feats, side)


def train(method: str, bits: int, feats: Features, *, seed: int = 0, progress: bool = True,
          **options: Any) -> Coder:
    """Trains `method` at `bits` on `feats`; every input check runs before any training."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if bits % 8 or bits <= 0:
        raise ValueError(f"bits={bits} must be a positive multiple of 8 (one byte per codebook)")
    impl = METHODS[method]
    unknown = set(options) - set(impl.defaults)
    if unknown:
        raise ValueError(f"{method} has no option(s) {sorted(unknown)}; its options: {sorted(impl.defaults)}")
    opts = {**impl.defaults, **{k: v for k, v in options.items() if v is not None}}
    impl.check(feats, bits)
    start = time.perf_counter()
    arrays, info = impl.fit(feats, bits, seed, opts, progress)
    seconds = time.perf_counter() - start
    info = {"options": opts, "seed": seed, "train_file": feats.path, "train_items": len(feats),
            "seconds": round(seconds, 3), **info}
    return Coder(method, bits, impl.kind, feats.dim, arrays, info, impl.metric)
