"""The interface evaluators use: a model's video and text encoders plus its preprocessing spec.

Evaluators see `Encoders`, never the trainer: the trainer builds `ModelEncoders` from (model, params, mesh), and
an exported backbone provides the same three methods. Inputs are this process's slices of a global batch
(numpy); outputs are the whole global batch (numpy, float32).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tvts import sharding
from tvts.models.inputs import PreprocessSpec, normalize
from tvts.models.tvts_v1 import TVTSv1
from tvts.models.tvtsv2 import TVTSv2


class Encoders(Protocol):
    spec: PreprocessSpec

    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [b, T, H, W, 3] at the spec's frames and resolution -> projected CLS [B, E] (not normalised)."""

    def video_tokens(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [b, T, H, W, 3] -> every projected token [B, 1 + T*N, E], CLS first."""

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        """int32 [b, L] (the spec's tokenizer) -> [B, E] (not normalised)."""


class ModelEncoders:
    """Encoders of a TVTSv2 or TVTS v1 model on a mesh, unmasked. `with_params` binds other parameters to the same
    compiled programs, so a trained model and its references (random init, time attention off) share one compilation.
    Also gives the sort head's logits, which only the full model (not an exported backbone) has."""

    def __init__(self, model: TVTSv2 | TVTSv1, mesh: jax.sharding.Mesh, rules, params_sharding: Any,
                 spec: PreprocessSpec, params: Any = None):
        self.model, self.mesh, self.rules, self.spec, self.params = model, mesh, rules, spec, params
        self.params_sharding = params_sharding
        replicated = NamedSharding(mesh, P())
        prepare = lambda frames: normalize(frames, spec.normalization)
        family = type(model)  # both families have encode_video / encode_text with the same signatures

        def video(params, frames):
            tokens = model.apply({"params": params}, prepare(frames), None, method=family.encode_video)
            return tokens[:, 0], tokens

        def text(params, tokens):
            return model.apply({"params": params}, tokens, method=family.encode_text)

        def sort(params, frames, texts):
            out = model.apply({"params": params}, prepare(frames), None, texts)
            return out["sort_logits"], out["video_emb"]

        batch = lambda ndim: sharding.batch_sharding(mesh, ndim)
        self._video = jax.jit(video, in_shardings=(params_sharding, batch(5)), out_shardings=(replicated, replicated))
        self._text = jax.jit(text, in_shardings=(params_sharding, batch(2)), out_shardings=replicated)
        self._sort = jax.jit(sort, in_shardings=(params_sharding, batch(5), batch(3)), out_shardings=replicated)

    def with_params(self, params: Any) -> ModelEncoders:
        bound = object.__new__(ModelEncoders)
        bound.__dict__.update(self.__dict__, params=params)
        return bound

    def _call(self, fn: Callable, *arrays: np.ndarray):
        if self.params is None:
            raise ValueError("ModelEncoders has no parameters; bind them with with_params(params)")
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            glob = [jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, a.ndim), a)
                    for a in arrays]
            return jax.device_get(fn(self.params, *glob))

    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        return self._call(self._video, frames)[0]

    def video_tokens(self, frames: np.ndarray) -> np.ndarray:
        return self._call(self._video, frames)[1]

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self._call(self._text, tokens)

    def sort_logits_and_video_embedding(self, frames: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames [b, T, H, W, 3], texts [b, n, L] -> sort logits [B, n, n] and the video embedding [B, E], from one
        pass of the video tower."""
        return self._call(self._sort, frames, texts)
