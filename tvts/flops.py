"""Analytic FLOPs of one TVTSv2 train step: the model FLOPs of model FLOPs utilisation (MFU).

Matmuls and attention only (the MFU convention): layer norms, softmax, GELU, the loss's elementwise work and
the token-embedding gather are left out, and so is recomputation. Trained parts cost 3x their forward
(forward + input and weight gradients); the frozen text blocks 2x (they pass activation gradients on to the
trained token embedding); the patch embedding 2x (its input, the video, needs no gradient).
`model_flops_with_remat` adds one whole recomputed forward of the rematerialised stacks, an upper bound:
XLA skips recomputing outputs that no gradient needs.

MFU = model_flops / (step seconds x devices x peak FLOP/s per device). `tools.plan_memory` checks these counts
against the dot and convolution FLOPs of the compiled step.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from tvts import config as config_lib
from tvts.data.texts import text_length
from tvts.models.inputs import num_kept
from tvts.models.variants import Variant, is_v1


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The sizes the FLOPs of one update depend on, besides the variant."""

    batch: int  # clips per update (global)
    frames: int
    kept_patches: int  # per frame, after the tube mask
    num_texts: int  # per clip: the sort head's transcripts, or one caption
    text_length: int  # tokens per text

    @property
    def video_tokens(self) -> int:
        return 1 + self.frames * self.kept_patches  # CLS + the kept patches of every frame


def step_shape(config: Any, source: str) -> StepShape:
    """The shape of one update on `source` ('transcribed' or 'captioned') under `config`."""
    variant = config_lib.model_variant(config.model)
    return StepShape(batch=int(config.data[f"{source}_batch"]), frames=config_lib.source_frames(config, source),
                     kept_patches=num_kept(variant.video.num_patches, config_lib.mask_ratio(config, source)),
                     num_texts=variant.sort_head.num_clips if source == "transcribed" else 1,
                     text_length=int(text_length(config.data, source)))


def analytic_flops(variant: Variant, batch: int, frames: int, n_keep: int, num_texts: int, text_len: int,
                   remat: str) -> dict[str, float]:
    """Global FLOPs of one train step (all devices together; the multipliers are the module docstring's):
    {'model_flops', 'model_flops_with_remat', 'forward_flops'}. `n_keep`: patches kept per frame."""
    v, t, s = variant.video, variant.text, variant.sort_head
    d, e = v.width, variant.joint_dim
    length = 1 + frames * n_keep
    block_params = 4 * d * d + 4 * d * d + 2 * d * v.mlp_dim  # time qkv+out, space qkv+out, mlp
    video_block = 2 * length * block_params
    # q.k and attention.v, 2 * d FLOPs each per (query, key) pair; patch queries see their group and the CLS,
    # the CLS query sees every token
    video_block += 4 * d * (n_keep * frames * (frames + 1) + length)  # time attention (+ CLS row)
    video_block += 4 * d * (frames * n_keep * (n_keep + 1) + length)  # space attention (+ CLS row)
    video_blocks = batch * v.depth * video_block
    patch = batch * 2 * frames * n_keep * v.patch_size**2 * 3 * d  # only the kept patches are embedded
    video_proj = batch * 2 * length * d * e
    text_block = 2 * text_len * 12 * t.width**2 + 4 * t.width * text_len**2  # qkv+out 4w^2, mlp 8w^2; attention
    n_text = batch * num_texts
    text_frozen = n_text * t.num_frozen * text_block
    text_tuned = n_text * (t.depth - t.num_frozen) * text_block + n_text * 2 * t.width * e  # + EOT projection
    sort = 0.0
    if num_texts > 1:  # the sort head runs on transcribed batches: video tokens then the transcripts
        ls = length + num_texts
        sort = batch * s.depth * (2 * ls * 12 * s.width**2 + 4 * s.width * ls**2)
    contrastive = 2 * batch * batch * e
    model = 3 * (video_blocks + video_proj + text_tuned + sort + contrastive) + 2 * (text_frozen + patch)
    recompute = (video_blocks + text_frozen + text_tuned) if remat != "none" else 0.0
    return {"model_flops": float(model), "model_flops_with_remat": float(model + recompute),
            "forward_flops": float(video_blocks + patch + video_proj + text_frozen + text_tuned + sort + contrastive)}


def analytic_flops_v1(variant, batch: int, frames: int, n_keep: int, num_texts: int, text_len: int,
                      remat: str) -> dict[str, float]:
    """`analytic_flops` for TVTS v1 (`tvts.models.variants_v1`): joint space-time attention over the kept patches of
    every tube, a DistilBERT text tower trained whole, the video projection on the CLS only, a sort head as wide as
    the towers. `frames` // tubelet_size tubes (an image is one tube); `n_keep`: patches kept per tube."""
    v, t, s = variant.video, variant.text, variant.sort_head
    d, e = v.width, variant.joint_dim
    tubes = max(frames // v.tubelet_size, 1)
    length = 1 + tubes * n_keep
    video_blocks = batch * v.depth * (2 * length * (4 * d * d + 2 * d * v.mlp_dim) + 4 * d * length**2)
    patch = batch * 2 * tubes * v.num_patches * v.tubelet_size * v.patch_size**2 * 3 * d
    video_proj = batch * 2 * d * e
    n_text = batch * num_texts
    text = n_text * t.depth * (2 * text_len * (4 * t.width**2 + 2 * t.width * t.mlp_dim) + 4 * t.width * text_len**2)
    text += n_text * 2 * t.width * e
    sort = 0.0
    if num_texts > 1:
        ls = length + num_texts
        sort = batch * s.depth * (2 * ls * 12 * s.width**2 + 4 * s.width * ls**2)
    contrastive = 2 * batch * batch * e
    model = 3 * (video_blocks + video_proj + text + sort + contrastive) + 2 * patch
    recompute = (video_blocks + text) if remat != "none" else 0.0
    return {"model_flops": float(model), "model_flops_with_remat": float(model + recompute),
            "forward_flops": float(video_blocks + patch + video_proj + text + sort + contrastive)}


def step_flops(config: Any, source: str) -> dict[str, float]:
    """`analytic_flops` of one update on `source` under `config` (global, all devices together)."""
    shape = step_shape(config, source)
    variant = config_lib.model_variant(config.model)
    count = analytic_flops_v1 if is_v1(variant) else analytic_flops
    return count(variant, shape.batch, shape.frames, shape.kept_patches, shape.num_texts, shape.text_length,
                 config.model.remat)


# Dense bf16 peak per chip by `device_kind` (Cloud TPU documentation: v4 275, v5e 197, v5p 459, v6e 918 TFLOP/s).
TPU_PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
                  "TPU v6 lite": 918e12, "TPU v6e": 918e12}


def matmul_ceiling(n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the best of `repeats` float32 [n, n] x [n, n] products on the default device: on CPU the machine's
    ceiling (XLA:CPU runs one product on all cores), the peak that CPU model FLOPs utilisation is quoted against."""
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.key(0)))
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@functools.cache
def peak_flops() -> tuple[float, str]:
    """(FLOP/s of all devices together, where the figure comes from): a TPU's published per-chip peak times the
    device count, or this machine's measured float32 matmul ceiling on CPU (measured once per process)."""
    import jax

    kind = jax.devices()[0].device_kind
    if kind in TPU_PEAK_FLOPS:
        return TPU_PEAK_FLOPS[kind] * jax.device_count(), f"{jax.device_count()} x {kind} bf16 peak"
    if jax.default_backend() == "cpu":
        return matmul_ceiling(), "measured float32 matmul ceiling"
    return float("nan"), f"no peak known for {kind}"
