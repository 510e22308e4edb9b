"""The TVTSv2 model against independent NumPy references and the published recipe's facts."""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvts.models.layers import ATTENTION_IMPLEMENTATIONS, LayerNorm
from tvts.models.text import eot_pool
from tvts.models.tvtsv2 import (
    TVTSv2,
    abstract_params,
    count_params,
    init_params,
    init_time_attention,
    merge_loaded,
    without_time_attention,
)
from tvts.models.variants import VARIANT_NAMES, decode_variant
from tvts.models.video_vit import PatchEmbed, SpaceTimeBlock, VideoEncoder, gather_kept_patches

TINY = decode_variant("tiny")


@pytest.fixture(scope="module")
def tiny():
    """The tiny model and its random parameters (initialised once, jitted)."""
    model = TVTSv2(TINY)
    return model, jax.jit(lambda rng: nn.unbox(init_params(model, rng)))(jax.random.key(0))


# ---------------------------------------------------------------- NumPy reference of a divided block
def np_ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["norm"]["scale"] + p["norm"]["bias"]


def np_softmax_attention(q, k, v):  # q [Lq, H, Dh], k/v [Lk, H, Dh]
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", w, v)


def np_divided_attention(x, p, T, over):
    """Loop over every query token and build its key set by hand (CLS: all tokens; patch: CLS + its group)."""
    L = x.shape[0]
    N = (L - 1) // T
    qkv = np.einsum("ld,dthk->lthk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    out = np.zeros_like(q)
    for i in range(L):
        if i == 0:
            keys = list(range(L))
        else:
            t, n = divmod(i - 1, N)
            group = [1 + t * N + m for m in range(N)] if over == "space" else [1 + s * N + n for s in range(T)]
            keys = [0] + group
        out[i] = np_softmax_attention(q[i:i + 1], k[keys], v[keys])[0]
    return np.einsum("lhk,hkd->ld", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_block(x, p, T, act=lambda z: z * 0.5 * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))):
    t = np_divided_attention(np_ln(x, p["ln_3"]), p["time_attn"], T, "time")
    s = np_divided_attention(np_ln(x + t, p["ln_1"]), p["attn"], T, "space")
    x = x + s
    h = np_ln(x, p["ln_2"]) @ p["mlp"]["fc"]["kernel"] + p["mlp"]["fc"]["bias"]
    return x + act(h) @ p["mlp"]["proj"]["kernel"] + p["mlp"]["proj"]["bias"]


def _block_params(T, width=32, heads=4, seed=0, attention="einsum"):
    block = SpaceTimeBlock(heads, 4 * width, "gelu", T, attention=attention)
    x = jax.random.normal(jax.random.key(seed), (2, 1 + T * 6, width))
    params = nn.unbox(block.init(jax.random.key(seed + 1), x)["params"])
    # randomise everything (LayerNorm affine too) so the reference is exercised fully
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 2), len(leaves))
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) + (l == 1) for k, l in zip(keys, leaves)])
    return block, x, params


@pytest.mark.parametrize("attention", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize("T", [1, 3])
def test_space_time_block_matches_numpy_reference(T, attention):
    """Every attention implementation (layers.attend) on the divided attention's grouped operands."""
    block, x, params = _block_params(T, attention=attention)
    got = np.asarray(jax.jit(lambda p, x: block.apply({"params": p}, x)[0])(params, x))
    want = np.stack([np_block(np.asarray(xi, np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), params), T)
                     for xi in x])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("scheme", ["learnable", "published"])
def test_fresh_time_attention_is_a_no_op(scheme):
    """A block whose time attention was just initialised computes the space-only block (t = 0)."""
    T = 3
    block, x, params = _block_params(T, seed=5)
    fresh = init_time_attention({"video": {"blocks": params}}, scheme)["video"]["blocks"]
    got = block.apply({"params": fresh}, x)[0]
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), fresh)
    no_time = []
    for xi in np.asarray(x, np.float64):  # the reference block without the time branch
        s = np_divided_attention(np_ln(xi, p64["ln_1"]), p64["attn"], T, "space")
        y = xi + s
        h = np_ln(y, p64["ln_2"]) @ p64["mlp"]["fc"]["kernel"] + p64["mlp"]["fc"]["bias"]
        gelu = h * 0.5 * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
        no_time.append(y + gelu @ p64["mlp"]["proj"]["kernel"] + p64["mlp"]["proj"]["bias"])
    np.testing.assert_allclose(np.asarray(got), np.stack(no_time), rtol=2e-4, atol=2e-4)


def test_time_attention_switched_off_is_the_space_only_tower(tiny):
    """Off means the time branch adds nothing: qkv then cannot matter, and the tower equals its no-op init."""
    model, params = tiny
    rng = np.random.default_rng(0)
    trained = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), params)  # a moved model
    video = jax.random.normal(jax.random.key(3), (2, 6, 32, 32, 3))
    encode = jax.jit(lambda p: model.apply({"params": p}, video, None, method=TVTSv2.encode_video))
    off = without_time_attention(trained)
    other_qkv = jax.tree.map(lambda a: a, off)
    other_qkv["video"]["blocks"]["time_attn"]["qkv"] = jax.tree.map(lambda a: -3.0 * a,
                                                                     off["video"]["blocks"]["time_attn"]["qkv"])
    np.testing.assert_array_equal(encode(off), encode(other_qkv))
    np.testing.assert_allclose(encode(off), encode(init_time_attention(trained, "learnable")), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(encode(off) - encode(trained)).max()) > 1e-2        # it did something before
    assert float(jnp.abs(trained["video"]["blocks"]["time_attn"]["out"]["kernel"]).max()) > 0  # input untouched


def _time_attention_grads(scheme):
    model = TVTSv2(TINY)
    params = nn.unbox(init_params(model, jax.random.key(0), scheme))
    video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    texts = jnp.ones((2, 4, 8), jnp.int32)

    def loss(p):
        out = model.apply({"params": p}, video, None, texts)
        return jnp.sum(out["video_tokens"] ** 2) + jnp.sum(out["sort_logits"])

    g = jax.grad(loss)(params)["video"]["blocks"]
    return g["time_attn"], g["attn"]


def test_default_time_attention_learns():
    time_g, space_g = _time_attention_grads("learnable")
    assert float(jnp.abs(time_g["out"]["kernel"]).max()) > 1e-3
    # once the projection moves, qkv gets gradient too; at init the projection is the path
    assert float(jnp.abs(space_g["qkv"]["kernel"]).max()) > 1e-3


def test_published_time_attention_is_dead():
    """docs/published_recipe.md: the all-ones projection adds the same value to every channel, ln_1 removes it."""
    time_g, space_g = _time_attention_grads("published")
    space_scale = float(jnp.abs(space_g["qkv"]["kernel"]).max())
    assert float(jnp.abs(time_g["qkv"]["kernel"]).max()) < 1e-4 * space_scale
    assert float(jnp.abs(time_g["out"]["kernel"]).max()) == 0.0


# ---------------------------------------------------------------- published initialisations and LayerNorm
def _temporal_embedding(video_cfg, temporal_init_std, seed=0):
    encoder = VideoEncoder(video_cfg, 64, "gelu", temporal_init_std=temporal_init_std)
    video = jnp.zeros((1, 2, video_cfg.image_size, video_cfg.image_size, 3))
    init = jax.jit(lambda rng: nn.unbox(encoder.init(rng, video)["params"])["temporal_embedding"])
    return np.asarray(init(jax.random.key(seed)), np.float64)


def test_temporal_embedding_starts_as_published_normal_width_to_the_minus_half():
    """Official: `temporal_embedding = scale * randn(num_frames, width)`, scale = width ** -0.5, as CLIP's class and
    position embeddings. A one-block tower of width 768 (B/32, B/16) keeps the init cheap to materialise."""
    b16 = decode_variant("B/16").video
    video_cfg = dataclasses.replace(b16, depth=1, mlp_dim=64, patch_size=8, image_size=16)
    assert video_cfg.width == 768 and video_cfg.max_frames == 12
    temporal = _temporal_embedding(video_cfg, -1.0)  # the default
    assert temporal.shape == (12, 768)
    # 9216 draws: the sample std of N(0, s) is within 3% of s with overwhelming probability (its sd is s / 136)
    np.testing.assert_allclose(temporal.std(), 768**-0.5, rtol=0.03)
    assert abs(temporal.mean()) < 3 * 768**-0.5 / np.sqrt(temporal.size)
    assert TVTSv2(TINY).temporal_init_std < 0 and VideoEncoder(b16, 512, "quick_gelu").temporal_init_std < 0


def test_temporal_init_std_switch():
    tiny = _temporal_embedding(TINY.video, -1.0)
    np.testing.assert_allclose(tiny.std(), 64**-0.5, rtol=0.1)  # 768 draws
    np.testing.assert_allclose(_temporal_embedding(TINY.video, 1.0).std(), 1.0, rtol=0.1)  # the tiny demo's value
    assert not _temporal_embedding(TINY.video, 0.0).any()  # 0: zeros


def _type_embedding(sort_type_init_std):
    model = TVTSv2(TINY, sort_type_init_std=sort_type_init_std)
    return np.asarray(jax.jit(lambda rng: nn.unbox(init_params(model, rng))["sort_head"]["type_embedding"])(
        jax.random.key(0)))


def test_sort_head_type_embedding_starts_at_zeros_as_published():
    """Official: `type_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))`; the tiny demo passes 0.02."""
    assert TVTSv2(TINY).sort_type_init_std == 0.0
    zeros = _type_embedding(0.0)
    assert zeros.shape == (2, TINY.sort_head.width) and not zeros.any()
    normal = _type_embedding(0.02)
    assert 0.01 < normal.std() < 0.03 and abs(normal.mean()) < 0.01


def test_layer_norm_variance_is_two_pass_like_pytorch():
    """A small spread on a large mean: one-pass E[x^2] - E[x]^2 in float32 loses it (x^2 ~ 1e8, float32 spacing 8
    there, the variance is 1); PyTorch and the two-pass mean((x - mean x)^2) keep it."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(4, 256))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    layer = LayerNorm()
    params = layer.init(jax.random.key(0), x)
    np.testing.assert_allclose(np.asarray(layer.apply(params, x)), want, atol=5e-3)
    one_pass = nn.LayerNorm(epsilon=1e-5, use_fast_variance=True)
    bad = np.asarray(one_pass.apply(one_pass.init(jax.random.key(0), x), x))
    assert np.abs(bad - want).max() > 1.0  # the test would catch the one-pass variance


# ---------------------------------------------------------------- shapes, masking, pooling
def test_forward_shapes_with_and_without_mask(tiny):
    model, params = tiny
    video = jnp.zeros((3, 12, 32, 32, 3))
    keep = jnp.tile(jnp.arange(5)[None], (3, 1))
    texts = jnp.ones((3, 4, 16), jnp.int32)
    out = jax.jit(model.apply)({"params": params}, video, keep, texts)
    assert out["video_tokens"].shape == (3, 1 + 12 * 5, TINY.joint_dim)
    assert out["video_emb"].shape == (3, TINY.joint_dim)
    assert out["text_emb"].shape == (3, 4, TINY.joint_dim)
    assert out["sort_logits"].shape == (3, 4, 4)
    full = model.apply({"params": params}, video, None, texts[:, :1])
    assert full["video_tokens"].shape == (3, 1 + 12 * 16, TINY.joint_dim)
    assert "sort_logits" not in full  # a caption batch has nothing to sort
    image = model.apply({"params": params}, video[:, :1], None, method=TVTSv2.encode_video)  # T = 1
    assert image.shape == (3, 17, TINY.joint_dim)


def test_tube_mask_keeps_the_same_positions_in_every_frame():
    B, T, P, D = 2, 4, 9, 3
    patches = jnp.arange(B * T * P * D, dtype=jnp.float32).reshape(B, T, P, D)
    keep = jnp.array([[0, 4, 7], [1, 2, 8]])
    got = np.asarray(gather_kept_patches(patches, keep))
    assert got.shape == (B, T, 3, D)
    for b in range(B):
        for t in range(T):
            np.testing.assert_array_equal(got[b, t], np.asarray(patches)[b, t, np.asarray(keep[b])])


@pytest.mark.parametrize("keep", [None, [[0, 5, 11], [2, 3, 15]]])
def test_patch_embedding_is_clip_conv1_on_the_kept_patches(keep):
    """A stride-p, bias-free convolution with a [p, p, C, width] kernel, looped by hand, then the kept patches."""
    p, width = 4, 5
    video = np.random.default_rng(0).standard_normal((2, 3, 16, 16, 3)).astype(np.float32)
    embed = PatchEmbed(width, p)
    keep = None if keep is None else jnp.array(keep)
    params = embed.init(jax.random.key(0), video, keep)
    kernel = np.asarray(nn.unbox(params)["params"]["kernel"])
    assert kernel.shape == (p, p, 3, width)
    want = np.zeros((2, 3, 16, width), np.float32)
    for row in range(4):
        for col in range(4):
            window = video[:, :, row * p:(row + 1) * p, col * p:(col + 1) * p]  # [B, T, p, p, C]
            want[:, :, row * 4 + col] = np.einsum("btijc,ijcd->btd", window, kernel)
    if keep is not None:
        want = np.stack([want[b][:, np.asarray(keep[b])] for b in range(2)])
    np.testing.assert_allclose(embed.apply(params, video, keep), want, rtol=1e-5, atol=1e-5)


def test_masking_drops_tokens_before_the_blocks(tiny):
    """Masked-out patches must not influence the output: perturbing them changes nothing."""
    model, params = tiny
    video = jax.random.normal(jax.random.key(3), (1, 2, 32, 32, 3))
    keep = jnp.array([[0, 5]])  # patches (row 0, col 0) and (row 1, col 1) of the 4x4 grid
    poked = video.at[:, :, 24:, 24:].add(5.0)  # patch 15, not kept
    a = model.apply({"params": params}, video, keep, method=TVTSv2.encode_video)
    b = model.apply({"params": params}, poked, keep, method=TVTSv2.encode_video)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = model.apply({"params": params}, video.at[:, :, :8, :8].add(5.0), keep, method=TVTSv2.encode_video)
    assert float(jnp.abs(a - c).max()) > 1e-3


def test_eot_pooling_takes_the_highest_token_position():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    tokens = jnp.array([[49406, 320, 49407, 0, 0], [49406, 320, 1125, 539, 49407]])
    np.testing.assert_array_equal(eot_pool(x, tokens), np.stack([x[0, 2], x[1, 4]]))


def test_text_encoder_is_causal(tiny):
    """A token only sees earlier tokens: changing text after EOT leaves the embedding unchanged."""
    model, params = tiny
    a = jnp.array([[49406, 320, 1125, 49407, 0, 0]])
    b = a.at[0, 4:].set(jnp.array([77, 88]))
    ea = model.apply({"params": params}, a, method=TVTSv2.encode_text)
    eb = model.apply({"params": params}, b, method=TVTSv2.encode_text)
    np.testing.assert_allclose(ea, eb, atol=1e-6)


def test_padding_after_eot_can_be_trimmed(tiny):
    """What `data.transcript_length` relies on: a shorter sequence holding the EOT embeds the same."""
    model, params = tiny
    padded = jnp.array([[49406, 320, 1125, 49407, 0, 0, 0, 0], [49406, 320, 1125, 539, 1000, 49407, 0, 0]])
    full = model.apply({"params": params}, padded, method=TVTSv2.encode_text)
    trimmed = model.apply({"params": params}, padded[:, :6], method=TVTSv2.encode_text)
    np.testing.assert_allclose(full, trimmed, rtol=1e-5, atol=1e-6)


def test_sort_head_is_permutation_equivariant_in_transcripts(tiny):
    """No positional embedding on transcripts: permuting them permutes the logits' rows."""
    model, params = tiny
    tokens = jax.random.normal(jax.random.key(1), (2, 7, TINY.joint_dim))
    trans = jax.random.normal(jax.random.key(2), (2, 4, TINY.joint_dim))
    perm = jnp.array([2, 0, 3, 1])
    a = model.apply({"params": params}, tokens, trans, method=TVTSv2.sort)
    b = model.apply({"params": params}, tokens, trans[:, perm], method=TVTSv2.sort)
    np.testing.assert_allclose(a[:, perm], b, rtol=1e-5, atol=1e-5)


def test_compute_dtype_keeps_float32_params_and_outputs(tiny):
    _, params = tiny
    model = TVTSv2(TINY, dtype=jnp.bfloat16)
    assert {l.dtype for l in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = model.apply({"params": params}, jnp.zeros((1, 2, 32, 32, 3)), None, jnp.ones((1, 4, 8), jnp.int32))
    assert out["video_emb"].dtype == jnp.float32 and out["sort_logits"].dtype == jnp.float32
    ref = TVTSv2(TINY).apply({"params": params}, jnp.zeros((1, 2, 32, 32, 3)), None, jnp.ones((1, 4, 8), jnp.int32))
    np.testing.assert_allclose(out["video_emb"], ref["video_emb"], rtol=0.1, atol=0.1)


# ---------------------------------------------------------------- variants and abstract parameter counts
def _expected_counts(v):
    """Hand formula from the architecture description."""
    def block(w, mlp):  # qkv + out + 2 LN + MLP
        return (w * 3 * w + 3 * w) + (w * w + w) + 2 * 2 * w + (w * mlp + mlp + mlp * w + w)

    vid = v.video
    video = (3 * vid.patch_size**2 * vid.width + (vid.num_patches + 1) * vid.width + vid.max_frames * vid.width
             + vid.width + 4 * vid.width + vid.width * v.joint_dim
             + vid.depth * (block(vid.width, vid.mlp_dim) + (vid.width * 3 * vid.width + 3 * vid.width)
                            + (vid.width * vid.width + vid.width) + 2 * vid.width))
    t = v.text
    text = (t.vocab_size * t.width + t.context_length * t.width + t.depth * block(t.width, 4 * t.width) + 2 * t.width
            + t.width * v.joint_dim)
    s = v.sort_head
    sort = 2 * s.width + s.depth * block(s.width, 4 * s.width) + 2 * s.width + s.width * s.num_clips + s.num_clips
    return video, text, sort


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_abstract_parameter_counts(name):
    v = decode_variant(name)
    tree = abstract_params(v)
    video, text, sort = _expected_counts(v)
    assert count_params(tree["video"]) == video
    assert count_params(tree["text"]) == text
    assert count_params(tree["sort_head"]) == sort


def test_published_sizes():
    h14 = abstract_params(decode_variant("H/14"))
    assert count_params(h14) >= 1.0e9
    assert 0.83e9 < count_params(h14["video"]) < 0.85e9  # 632M image ViT + ~210M time attention
    assert 0.35e9 < count_params(h14["text"]) < 0.36e9
    assert count_params(abstract_params(decode_variant("G/14"))) > count_params(h14)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'B/8'.*known variants"):
        decode_variant("B/8")


def test_variant_table_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        decode_variant("B/16").joint_dim = 7


def test_too_many_frames_is_a_clear_error():
    model = TVTSv2(TINY)
    with pytest.raises(ValueError, match="13 frames exceed the temporal embedding's 12 rows"):
        model.init(jax.random.key(0), jnp.zeros((1, 13, 32, 32, 3)), None, jnp.ones((1, 4, 8), jnp.int32))


# ---------------------------------------------------------------- what the sort head reads (variants.SORT_TOKENS)
def test_sort_tokens_as_published():
    """B/32, B/16 (and L/14, tiny): every token after ln_post; H/14 (and g/14, G/14, OpenCLIP towers): the patch
    tokens without ln_post (docs/published_recipe.md, "Sort head")."""
    assert {n: decode_variant(n).sort_tokens for n in VARIANT_NAMES} == {
        "tiny": "all", "B/32": "all", "B/16": "all", "L/14": "all", "H/14": "patches", "g/14": "patches",
        "G/14": "patches"}
    with pytest.raises(ValueError, match="sort_tokens 'cls'"):
        dataclasses.replace(TINY, sort_tokens="cls")


def test_patches_variant_skips_ln_post_on_patch_tokens_and_the_cls(tiny):
    _, params = tiny
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda a: a, params)
    ln_post = params["video"]["ln_post"]["norm"]
    ln_post["scale"] = jnp.asarray(1 + 0.5 * rng.standard_normal(ln_post["scale"].shape), jnp.float32)
    ln_post["bias"] = jnp.asarray(0.5 * rng.standard_normal(ln_post["bias"].shape), jnp.float32)
    video = jax.random.normal(jax.random.key(7), (1, 2, 32, 32, 3))
    texts = jnp.ones((1, 4, 8), jnp.int32)
    models = {s: TVTSv2(dataclasses.replace(TINY, sort_tokens=s)) for s in ("all", "patches")}
    out = {s: m.apply({"params": params}, video, None, texts) for s, m in models.items()}
    np.testing.assert_allclose(out["all"]["video_emb"], out["patches"]["video_emb"], rtol=1e-6, atol=1e-6)  # ln_post-ed
    assert out["patches"]["video_tokens"].shape == out["all"]["video_tokens"].shape

    # the patch tokens skip ln_post: they do not change when ln_post's parameters become the identity
    identity = jax.tree.map(lambda a: a, params)
    identity["video"]["ln_post"]["norm"] = {"scale": jnp.ones_like(ln_post["scale"]),
                                            "bias": jnp.zeros_like(ln_post["bias"])}
    patches = out["patches"]["video_tokens"][:, 1:]
    assert float(jnp.abs(patches - out["all"]["video_tokens"][:, 1:]).max()) > 1e-2
    plain = models["patches"].apply({"params": identity}, video, None, method=TVTSv2.encode_video)[:, 1:]
    np.testing.assert_array_equal(patches, plain)  # ln_post's parameters do not reach the patch tokens
    sorted_ = models["patches"].apply({"params": params}, patches, out["patches"]["text_emb"], method=TVTSv2.sort)
    np.testing.assert_allclose(out["patches"]["sort_logits"], sorted_, rtol=1e-6, atol=1e-6)  # CLS not read
    sorted_all = models["all"].apply({"params": params}, out["all"]["video_tokens"], out["all"]["text_emb"],
                                     method=TVTSv2.sort)
    np.testing.assert_allclose(out["all"]["sort_logits"], sorted_all, rtol=1e-6, atol=1e-6)  # CLS read


# ---------------------------------------------------------------- converted (partial) parameters over an init
def test_merge_loaded_puts_loaded_leaves_over_the_init_and_reinitialises_time_attention(tiny):
    _, base = tiny
    rng = np.random.default_rng(1)
    loaded = {"video": {"blocks": {"attn": jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape),
                                                                              jnp.float32),
                                                        base["video"]["blocks"]["attn"])}},
              "text": {"ln_final": {"norm": {"scale": jnp.full((64,), 3.0)}}}}
    merged = merge_loaded(base, loaded, "learnable")
    blocks = merged["video"]["blocks"]
    np.testing.assert_array_equal(blocks["attn"]["qkv"]["kernel"], loaded["video"]["blocks"]["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(blocks["time_attn"]["qkv"]["kernel"], blocks["attn"]["qkv"]["kernel"])
    assert not np.any(blocks["time_attn"]["out"]["kernel"])
    np.testing.assert_array_equal(merged["text"]["ln_final"]["norm"]["scale"], 3.0)
    np.testing.assert_array_equal(merged["text"]["ln_final"]["norm"]["bias"], base["text"]["ln_final"]["norm"]["bias"])
    np.testing.assert_array_equal(merged["sort_head"]["classifier"]["kernel"],
                                  base["sort_head"]["classifier"]["kernel"])
    # a loaded time attention (a TVTSv2 checkpoint) is kept as it is
    trained = {"video": {"blocks": {"attn": loaded["video"]["blocks"]["attn"],
                                    "time_attn": base["video"]["blocks"]["attn"]}}}
    kept = merge_loaded(base, trained, "learnable")["video"]["blocks"]["time_attn"]
    np.testing.assert_array_equal(kept["out"]["kernel"], base["video"]["blocks"]["attn"]["out"]["kernel"])
    with pytest.raises(ValueError, match="the model has no video/extra"):
        merge_loaded(base, {"video": {"extra": jnp.zeros(2)}})


def test_unrolled_layers_are_the_same_model_without_the_loop(tiny):
    """model.unroll_layers: the same parameters (same init, same tree), outputs and gradients; no while loop left
    in the compiled program, where the scanned model has one."""
    model, params = tiny
    unrolled = TVTSv2(TINY, unroll_layers=True)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), params,
                        jax.jit(lambda rng: nn.unbox(init_params(unrolled, rng)))(jax.random.key(0)))
    assert jax.tree.all(same)
    video = jax.random.normal(jax.random.key(3), (2, 12, 32, 32, 3))
    texts = jax.random.randint(jax.random.key(4), (2, 1, 32), 1, 100)

    def loss(m):
        def f(p):
            out = m.apply({"params": p}, video, None, texts)
            return jnp.sum(out["video_emb"][:, None] * out["text_emb"])
        return jax.jit(jax.value_and_grad(f))

    compiled = {m.unroll_layers: loss(m).lower(params).compile() for m in (model, unrolled)}
    (a, ga), (b, gb) = compiled[False](params), compiled[True](params)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # the same arithmetic fused differently: float32 rounding apart
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * np.abs(y).max()), ga, gb)
    assert " while(" in compiled[False].as_text() and " while(" not in compiled[True].as_text()


def test_the_inference_model_gives_the_training_model_outputs(tiny):
    """for_inference (no remat: what evaluation and export compile) changes no output."""
    model, params = tiny
    trained = model.clone(remat="full")
    video = jax.random.normal(jax.random.key(3), (2, 4, 32, 32, 3))
    tokens = jax.random.randint(jax.random.key(4), (3, 32), 1, 100)
    inference = trained.for_inference()
    assert (inference.remat, inference.video_attention) == ("none", "einsum_heads_major")
    for method, x in ((TVTSv2.encode_video, video), (TVTSv2.encode_text, tokens)):
        want = trained.apply({"params": params}, x, method=method)
        got = inference.apply({"params": params}, x, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
