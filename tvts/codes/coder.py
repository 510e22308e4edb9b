"""A trained coder: what a codes directory holds, and the interface every method implements.

A codes directory (written by `python -m tvts.codes.train`) holds
    codes.json   method, bits, kind ('binary': Hamming ranking; 'quantizer': ADC), metric, feature width, the
                 method's options, the training file, item count, seed and training time
    params.npz   the arrays that encode: hyperplanes, rotations, codebooks, network parameters ('params/...')
Codes are never stored for the training set: evaluation encodes the database it is given.
"""
from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvts.codes.features import Features

BITS = (16, 32, 64, 128)
CODEWORDS = 256  # every quantiser: 256 codewords per codebook, so one byte per codebook and M = bits / 8


@dataclass
class Coder:
    method: str
    bits: int
    kind: str  # 'binary' | 'quantizer'
    dim: int  # the feature width it was trained on
    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None  # quantizers: 'l2' | 'ip'

    @property
    def bytes_per_item(self) -> int:
        return self.bits // 8

    @property
    def codebooks(self) -> np.ndarray:
        return self.arrays["codebooks"]

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        meta = {"method": self.method, "bits": self.bits, "kind": self.kind, "metric": self.metric, "dim": self.dim,
                "bytes_per_item": self.bytes_per_item, **self.info}
        with open(os.path.join(directory, "params.npz.partial"), "wb") as f:
            np.savez(f, **self.arrays)
        os.replace(os.path.join(directory, "params.npz.partial"), os.path.join(directory, "params.npz"))
        with open(os.path.join(directory, "codes.json"), "w") as f:
            json.dump(meta, f, indent=1, default=_json_default)

    @classmethod
    def load(cls, directory: str) -> Coder:
        path = os.path.join(directory, "codes.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: not a codes directory (write one with "
                                    f"python -m tvts.codes.train)")
        with open(path) as f:
            meta = json.load(f)
        with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        core = {k: meta.pop(k) for k in ("method", "bits", "kind", "dim", "metric")}
        meta.pop("bytes_per_item", None)
        return cls(arrays=arrays, info=meta, **core)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class Method(abc.ABC):
    """One way of making codes. Subclasses set the class attributes and implement fit / encode / query."""

    name: str = ""
    kind: str = "binary"  # or 'quantizer'
    metric: str | None = None
    learned: bool = False
    cross_view: bool = False  # trained on text and video (its text queries are meaningful)
    text_queries: bool = False  # can encode the file's texts as queries (text and video share one space)
    defaults: dict[str, Any] = {}

    @abc.abstractmethod
    def check(self, feats: Features, bits: int) -> None:
        """Raises FeatureFileError (naming the file) when `feats` cannot train this method at `bits`."""

    @abc.abstractmethod
    def fit(self, feats: Features, bits: int, seed: int, options: dict[str, Any], progress: bool
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays that encode, training facts for codes.json)."""

    @abc.abstractmethod
    def encode(self, coder: Coder, feats: Features) -> np.ndarray:
        """Binary: uint8 packed bits [N, bits / 8]; quantizer: uint8 codeword ids [N, M]."""

    def query(self, coder: Coder, feats: Features, side: str) -> np.ndarray:
        """Binary: packed codes as `encode`; quantizer: float32 query vectors for ADC. side='text' encodes the
        file's texts (cross-view retrieval)."""
        if side == "text":
            raise ValueError(f"{self.name} does not encode texts")
        return self.encode(coder, feats)
