"""The TVTS v1 model against NumPy references written from the official code (docs/published_recipe.md, "TVTS v1"),
and its variant rows' parameter counts against hand formulas (abstract init: nothing of v1-B/16 is allocated)."""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvts.models.inputs import num_kept
from tvts.models.tvts_v1 import TubeletEmbed, TVTSv1, abstract_params, gather_kept_per_tube, random_tube_keep
from tvts.models.tvtsv2 import count_params
from tvts.models.variants import VARIANT_NAMES, decode_variant
from tvts.models.variants_v1 import V1_VARIANT_NAMES, V1Variant

TINY = decode_variant("v1-tiny")
B16 = decode_variant("v1-B/16")


def random_params(variant, seed=0):
    """Every leaf random (LayerNorm scales around 1), from the abstract shapes: no init program is compiled."""
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(abstract_params(variant))
    return jax.tree_util.tree_map_with_path(
        lambda path, a: (1.0 + 0.1 * rng.standard_normal(a.shape) if str(path[-1].key) == "scale"
                         else 0.1 * rng.standard_normal(a.shape)).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def tiny_params():
    return random_params(TINY)


# ------------------------------------------------------------------------------------ NumPy references
def np_ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["norm"]["scale"] + p["norm"]["bias"]


def np_gelu(x):
    return x * 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def np_attention(x, p, heads):  # timm's Attention: fused qkv Linear, softmax(q k^T * Dh^-0.5) v, proj
    L, D = x.shape
    qkv = (x @ p["qkv"]["kernel"].reshape(D, -1) + p["qkv"]["bias"].reshape(-1)).reshape(L, 3, heads, D // heads)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(D // heads)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", w, v).reshape(L, D)
    return out @ p["out"]["kernel"].reshape(D, D) + p["out"]["bias"]


def np_conv3d_tokens(video, kernel, bias):
    """Conv3d with stride = kernel over video [T, H, W, C], flattened as the official PatchEmbed does
    (`proj(x).flatten(2).transpose(1, 2)`: tube-major, then rows, then columns). kernel [t, p, p, C, D]."""
    t, p = kernel.shape[0], kernel.shape[1]
    T, H, W, _ = video.shape
    out = []
    for tube in range(T // t):
        for row in range(H // p):
            for col in range(W // p):
                block = video[tube * t:(tube + 1) * t, row * p:(row + 1) * p, col * p:(col + 1) * p]
                out.append(np.einsum("ijkc,ijkcd->d", block, kernel) + bias)
    return np.stack(out)


def np_video_tower(video, keep, p, v: V1Variant):
    """The official VisionTransformer.forward_features (v1/model/video_encoder.py:178-217) for one video, then
    vid_proj on every token. video [T, H, W, 3], keep [tubes, n_keep] or None."""
    c = v.video
    x = np_conv3d_tokens(video, p["patch_embed"]["kernel"], p["patch_embed"]["bias"])  # [tubes * P, D]
    tubes = video.shape[0] // c.tubelet_size
    pos = np.concatenate([p["pos_embedding"][:1], np.tile(p["pos_embedding"][1:], (tubes, 1))
                          + np.repeat(p["temporal_embedding"][:tubes], c.num_patches, axis=0)])
    x = np.concatenate([p["cls_token"][None], x]) + pos
    patches = x[1:].reshape(tubes, c.num_patches, -1)
    if keep is not None:  # x_patch[arange(B * n_temp)[:, None], keep_ind] (:205-208)
        patches = patches[np.arange(tubes)[:, None], keep]
    x = np.concatenate([x[:1], patches.reshape(-1, x.shape[-1])])
    blocks = p["blocks"]
    for i in range(c.depth):
        b = jax.tree.map(lambda a, i=i: a[i], blocks)
        x = x + np_attention(np_ln(x, b["ln_1"], 1e-6), b["attn"], c.heads)
        h = np_ln(x, b["ln_2"], 1e-6) @ b["mlp"]["fc"]["kernel"] + b["mlp"]["fc"]["bias"]
        x = x + np_gelu(h) @ b["mlp"]["proj"]["kernel"] + b["mlp"]["proj"]["bias"]
    x = np_ln(x, p["norm"], 1e-6)
    return x, x @ p["proj"]["kernel"] + p["proj"]["bias"]


# ------------------------------------------------------------------------------------ variant rows
def _expected_counts(v: V1Variant):
    def block(w, mlp):  # qkv (fused or not) + out + 2 LN + MLP
        return (w * 3 * w + 3 * w) + (w * w + w) + 2 * 2 * w + (w * mlp + mlp + mlp * w + w)

    c, t, s = v.video, v.text, v.sort_head
    video = (c.tubelet_size * c.patch_size**2 * 3 * c.width + c.width  # Conv3d with bias
             + c.width + (c.num_patches + 1) * c.width + c.max_tubes * c.width  # cls, pos, temporal
             + c.depth * block(c.width, c.mlp_dim) + 2 * c.width + c.width * v.joint_dim + v.joint_dim)
    text = ((t.vocab_size + t.max_positions) * t.width + 2 * t.width + t.depth * block(t.width, t.mlp_dim)
            + t.width * v.joint_dim + v.joint_dim)
    sort = 2 * s.width + s.depth * block(s.width, 4 * s.width) + 2 * s.width + s.width * s.num_clips + s.num_clips
    return {"video": video, "text": text, "sort_head": sort}


@pytest.mark.parametrize("name", V1_VARIANT_NAMES)
def test_abstract_parameter_counts(name):
    v = decode_variant(name)
    tree = abstract_params(v)
    assert {k: count_params(tree[k]) for k in tree} == _expected_counts(v)


def test_published_sizes():
    """ViT-B/16 (85.8M as an image model) + a second frame in the patch kernel + temporal embedding + vid_proj;
    distilbert-base (66.4M) + txt_proj; the sort head at 768."""
    tree = abstract_params(B16)
    assert count_params(tree["video"]) == 85_798_656 + 768 * 3 * 16 * 16 + 8 * 768 + 768 * 256 + 256 == 86_591_488
    assert count_params(tree["text"]) == 66_362_880 + 768 * 256 + 256
    assert count_params(tree["sort_head"]) == 14_181_892
    assert (B16.video.width, B16.video.depth, B16.video.heads, B16.video.patch_size, B16.video.tubelet_size,
            B16.num_frames, B16.video.max_tubes) == (768, 12, 12, 16, 2, 16, 8)
    assert (B16.text.depth, B16.text.width, B16.text.heads, B16.text.context_length) == (6, 768, 12, 50)
    assert (B16.joint_dim, B16.mask_ratio, B16.sort_head.width, B16.sort_head.heads) == (256, 0.75, 768, 12)


def test_variant_table():
    assert not set(V1_VARIANT_NAMES) & set(VARIANT_NAMES)  # the TVTSv2 names (what TVTSv2 builds) are unchanged
    assert all(isinstance(decode_variant(n), V1Variant) for n in V1_VARIANT_NAMES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        B16.joint_dim = 7
    with pytest.raises(ValueError, match="three widths must agree"):
        dataclasses.replace(B16, sort_head=dataclasses.replace(B16.sort_head, width=256))
    with pytest.raises(ValueError, match="unknown variant 'v1-L/14'; known v1 variants: v1-B/16, v1-tiny"):
        decode_variant("v1-L/14")


# ------------------------------------------------------------------------------------ masking per tube
def test_each_tube_keeps_its_own_positions():
    keep = np.asarray(random_tube_keep(jax.random.key(0), 3, 8, 196, 0.75))
    assert keep.shape == (3, 8, 49) and num_kept(196, 0.75) == 49  # int(196 * (1 - 0.75)), as the loader computes
    for video in keep:
        for tube in video:
            assert np.all(np.diff(tube) > 0) and tube.min() >= 0 and tube.max() < 196  # distinct positions, sorted
        assert len({tuple(t) for t in video}) == 8  # every tube its own set
    assert len({tuple(v[0]) for v in keep}) == 3  # and every video
    assert random_tube_keep(jax.random.key(0), 3, 8, 196, 0.0) is None
    patches = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    keep = np.array([[[0, 4], [1, 2], [3, 4]], [[2, 3], [0, 1], [1, 4]]])
    want = patches.reshape(6, 5, 4)[np.arange(6)[:, None], keep.reshape(6, 2)].reshape(2, 3, 2, 4)  # official indexing
    np.testing.assert_array_equal(gather_kept_per_tube(jnp.asarray(patches), jnp.asarray(keep)), want)


def test_compute_falls_with_the_mask_ratio():
    """Model FLOPs of the v1-B/16 video tower (XLA's estimate of the lowered program; nothing compiled)."""
    model = TVTSv1(B16)
    params = nn.unbox(abstract_params(B16))
    flops = {}
    for ratio in (0.0, 0.5, 0.75):
        n = num_kept(196, ratio)
        keep = None if ratio == 0 else jax.ShapeDtypeStruct((1, 8, n), jnp.int32)
        lowered = jax.jit(lambda p, x, k: model.apply({"params": p}, x, k, method=TVTSv1.encode_video)).lower(
            params, jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32), keep)
        flops[ratio] = lowered.cost_analysis()["flops"]
    assert flops[0.0] > 1.8 * flops[0.5] > 1.3 * 1.8 * flops[0.75]
    assert flops[0.75] < 0.35 * flops[0.0]


# ------------------------------------------------------------------------------------ the towers
def test_tubelet_embedding_matches_numpy_conv3d():
    rng = np.random.default_rng(1)
    video = rng.standard_normal((2, 4, 16, 24, 3)).astype(np.float32)
    embed = TubeletEmbed(width=5, patch_size=8, tubelet_size=2)
    params = {"kernel": rng.standard_normal((2, 8, 8, 3, 5)).astype(np.float32),
              "bias": rng.standard_normal(5).astype(np.float32)}
    got = np.asarray(jax.jit(lambda p, x: embed.apply({"params": p}, x))(params, video))
    assert got.shape == (2, 2, 6, 5)  # 2 tubes of 2 x 3 patches
    for b in range(2):
        want = np_conv3d_tokens(video[b].astype(np.float64), params["kernel"], params["bias"])
        np.testing.assert_allclose(got[b].reshape(-1, 5), want, rtol=1e-5, atol=1e-5)


def test_model_against_the_official_computation(tiny_params):
    """One jitted program: the whole model with per-tube masking, its pieces, and an image (T = 1)."""
    model = TVTSv1(TINY)
    rng = np.random.default_rng(2)
    video = rng.standard_normal((2, 16, 32, 32, 3)).astype(np.float32)
    keep = random_tube_keep(jax.random.key(3), 2, 8, TINY.video.num_patches, TINY.mask_ratio)
    texts = rng.integers(1, TINY.text.vocab_size, (2, 4, 12)).astype(np.int32)
    texts[:, :, 9:] = TINY.text.pad_token_id

    @jax.jit
    def run(p, video, keep, texts):
        out = model.apply({"params": p}, video, keep, texts)
        features = model.apply({"params": p}, video, keep, method=TVTSv1.video_features)
        text_features = model.apply({"params": p}, texts, method=TVTSv1.text_features)
        sort = model.apply({"params": p}, features, text_features, method=TVTSv1.sort)
        image = model.apply({"params": p}, video[:, :1], None, method=TVTSv1.encode_video)
        # how the sort logits move with the text tower: not at all (its features enter with gradients stopped)
        logits_of_text = lambda text: model.apply({"params": {**p, "text": text}}, video, keep, texts)["sort_logits"]
        _, text_tangent = jax.jvp(logits_of_text, (p["text"],), (jax.tree.map(jnp.ones_like, p["text"]),))
        return out, features, text_features, sort, image, text_tangent

    out, features, text_features, sort, image, text_tangent = jax.device_get(run(tiny_params, video, keep, texts))
    assert not np.any(text_tangent)
    n = num_kept(16, TINY.mask_ratio)
    assert out["video_tokens"].shape == (2, 1 + 8 * n, 64) and features.shape == (2, 1 + 8 * n, 64)
    assert out["text_emb"].shape == (2, 4, 64) and text_features.shape == (2, 4, 64)
    assert out["sort_logits"].shape == (2, 4, 4)

    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), tiny_params)
    for b in range(2):
        want_features, want_tokens = np_video_tower(video[b].astype(np.float64), np.asarray(keep[b]), p64["video"],
                                                    TINY)
        np.testing.assert_allclose(features[b], want_features, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(out["video_tokens"][b], want_tokens, rtol=2e-4, atol=2e-4)
        # an image is one tubelet of the frame twice (the official image loader: base_dataset.py:168-169)
        _, want_image = np_video_tower(np.repeat(video[b, :1], 2, axis=0).astype(np.float64), None, p64["video"],
                                       TINY)
        np.testing.assert_allclose(image[b], want_image, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(out["video_emb"], out["video_tokens"][:, 0])
    # text: txt_proj = Linear(ReLU(first token)); the sort head reads the unprojected features of both towers
    proj = p64["text"]["proj"]
    np.testing.assert_allclose(out["text_emb"], np.maximum(text_features, 0) @ proj["kernel"] + proj["bias"],
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out["sort_logits"], sort, rtol=1e-5, atol=1e-5)


def test_frames_that_do_not_fill_tubes_are_an_error(tiny_params):
    model = TVTSv1(TINY)
    with pytest.raises(ValueError, match="3 frames do not fill whole tubelets of 2 frames"):
        jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, 3, 32, 32, 3)), None,
                                             method=TVTSv1.encode_video), tiny_params)
    with pytest.raises(ValueError, match="18 frames make 9 tubes; the temporal embedding has 8 rows"):
        jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, 18, 32, 32, 3)), None,
                                             method=TVTSv1.encode_video), tiny_params)
    with pytest.raises(ValueError, match=r"keep indices \(1, 4, 8\): expected \[1, 8 tubes, n_keep\]"):
        jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, 16, 32, 32, 3)),
                                             jnp.zeros((1, 4, 8), jnp.int32), method=TVTSv1.encode_video),
                       tiny_params)
