"""The evaluator contract, shared by the trainer and standalone evaluation.

A config entry `config.evals.NAME = dict(type=..., every=N, ...)` builds `REGISTRY[type](NAME, entry, setup)`.
An evaluator has `due(step, total_steps)` and `run(params, final=False) -> {f'{NAME}/metric': value}`.
`every=0` runs only at the end of training.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tvts import sharding
from tvts.models.tvtsv2 import TVTSv2


class FrozenEncoders:
    """Jitted, mesh-aware encoders of a frozen model (no masking, as in every published evaluation).

    Inputs are this process's numpy slices; outputs are full (replicated) numpy arrays.
    """

    def __init__(self, model: TVTSv2, mesh: jax.sharding.Mesh, rules, params_sharding: Any):
        from tvts.train import preprocess_video

        self.mesh, self.rules = mesh, rules
        replicated = NamedSharding(mesh, P())

        def video(params, frames):
            tokens = model.apply({"params": params}, preprocess_video(frames), None, method=TVTSv2.encode_video)
            return tokens[:, 0], tokens

        def text(params, tokens):
            return model.apply({"params": params}, tokens, method=TVTSv2.encode_text)

        def sort(params, frames, texts):
            out = model.apply({"params": params}, preprocess_video(frames), None, texts)
            return out["sort_logits"], out["video_emb"]

        self._video = jax.jit(video, in_shardings=(params_sharding, sharding.batch_sharding(mesh, 5)),
                              out_shardings=(replicated, replicated))
        self._text = jax.jit(text, in_shardings=(params_sharding, sharding.batch_sharding(mesh, 2)),
                             out_shardings=replicated)
        self._sort = jax.jit(sort, in_shardings=(params_sharding, sharding.batch_sharding(mesh, 5),
                                                 sharding.batch_sharding(mesh, 3)), out_shardings=replicated)

    def _call(self, fn: Callable, params, *arrays: np.ndarray):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            glob = [jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, a.ndim), a)
                    for a in arrays]
            return jax.device_get(fn(params, *glob))

    def video_embedding(self, params, frames: np.ndarray) -> np.ndarray:
        """uint8 [b, T, H, W, 3] -> projected CLS [B_global, E]."""
        return self._call(self._video, params, frames)[0]

    def video_tokens(self, params, frames: np.ndarray) -> np.ndarray:
        """uint8 [b, T, H, W, 3] -> all projected tokens [B_global, 1 + T*N, E] (CLS first)."""
        return self._call(self._video, params, frames)[1]

    def text_embedding(self, params, tokens: np.ndarray) -> np.ndarray:
        """int32 [b, L] -> [B_global, E]."""
        return self._call(self._text, params, tokens)

    def sort_logits_and_video_embedding(self, params, frames: np.ndarray, texts: np.ndarray
                                        ) -> tuple[np.ndarray, np.ndarray]:
        """frames [b, T, H, W, 3], texts [b, n, L] -> sort logits [B_global, n, n] and the video embedding
        [B_global, E], from one pass of the video tower."""
        return self._call(self._sort, params, frames, texts)


class Evaluator:
    """Base: scheduling and naming. Subclasses implement `compute(params, final) -> dict`."""

    def __init__(self, name: str, cfg: Any, setup: Any, output_dir: str | None = None):
        self.name, self.cfg, self.setup, self.output_dir = name, cfg, setup, output_dir
        self.every = int(cfg.get("every", 0))

    def due(self, step: int, total_steps: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step != total_steps

    def run(self, params, final: bool = False) -> dict[str, float]:
        return {f"{self.name}/{k}": float(v) for k, v in self.compute(params, final).items()}

    def compute(self, params, final: bool) -> dict[str, float]:
        raise NotImplementedError


def registry() -> dict[str, type[Evaluator]]:
    from tvts.evaluators.synthetic_heldout import SyntheticHeldout

    return {"synthetic_heldout": SyntheticHeldout}


def make_evaluators(config: Any, setup: Any, output_dir: str | None = None) -> list[Evaluator]:
    known = registry()
    out = []
    for name, entry in config.evals.items():
        if entry.type not in known:
            raise ValueError(f"config.evals.{name}.type={entry.type!r}: known evaluators {sorted(known)}")
        out.append(known[entry.type](name, entry, setup, output_dir))
    return out
