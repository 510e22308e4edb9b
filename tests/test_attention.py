"""The attention implementations (config.model.attention, tvts.models.layers.attend): each against an independent
NumPy softmax attention, and whole tiny models giving the same outputs whichever runs."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import tiny_config

from tvts.models import tvts_v1
from tvts.models.layers import ATTENTION_CHOICES, ATTENTION_IMPLEMENTATIONS, attend
from tvts.models.tvts_v1 import TVTSv1
from tvts.models.tvtsv2 import TVTSv2, init_params
from tvts.models.variants import decode_variant
from tvts.state import build_model


def np_attention(q, k, v, mask=None):
    """q [..., Lq, H, Dh], k/v [..., Lk, H, Dh], mask broadcastable to [..., H, Lq, Lk]; float64."""
    logits = np.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("...hqk,...khd->...qhd", w, v)


def _operands(batch, lq, lk, rng, heads=3, head_dim=4):
    q = rng.standard_normal((*batch, lq, heads, head_dim))
    k, v = (rng.standard_normal((*batch, lk, heads, head_dim)) for _ in range(2))
    return q, k, v


def _case(name, rng):
    """(q, k, v, mask) shaped as one of the model's attentions."""
    if name == "cls":  # the divided attention's CLS query over the whole clip; no mask
        return *_operands((2,), 1, 7, rng), None
    if name == "causal":  # the CLIP text tower
        return *_operands((2,), 6, 6, rng), np.tril(np.ones((6, 6), bool))
    if name == "padding":  # DistilBERT: padded keys masked, [B, 1 (heads), 1 (queries), L]
        mask = np.ones((2, 1, 1, 6), bool)
        mask[0, ..., 4:] = False
        return *_operands((2,), 6, 6, rng), mask
    if name == "groups":  # divided attention: [B, groups, members, H, Dh] queries, the CLS key/value prepended
        return *_operands((2, 3), 4, 5, rng), None
    # groups with a mask of their own per group, head and query (key 0, the CLS, always kept)
    mask = rng.random((2, 3, 3, 4, 5)) < 0.6
    mask[..., 0] = True
    return *_operands((2, 3), 4, 5, rng), mask


@pytest.mark.parametrize("case", ["cls", "causal", "padding", "groups", "groups_masked"])
@pytest.mark.parametrize("implementation", ATTENTION_IMPLEMENTATIONS)
def test_every_implementation_matches_numpy_softmax_attention(implementation, case):
    q, k, v, mask = _case(case, np.random.default_rng(0))
    got = attend(*(np.float32(a) for a in (q, k, v)), mask, implementation)
    np.testing.assert_allclose(np.asarray(got), np_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def np_attention_grads(q, k, v, mask, g):
    """Gradients of sum(attention(q, k, v) * g) with respect to q, k and v, by hand in float64."""
    scale = 1 / np.sqrt(q.shape[-1])
    logits = np.einsum("...qhd,...khd->...hqk", q, k) * scale
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    dw = np.einsum("...qhd,...khd->...hqk", g, v)
    dlogits = w * (dw - (dw * w).sum(-1, keepdims=True))  # the softmax's Jacobian-vector product
    dq = np.einsum("...hqk,...khd->...qhd", dlogits, k) * scale
    dk = np.einsum("...hqk,...qhd->...khd", dlogits, q) * scale
    dv = np.einsum("...hqk,...qhd->...khd", w, g)
    return dq, dk, dv


@pytest.mark.parametrize("case", ["cls", "causal", "groups_masked"])
@pytest.mark.parametrize("implementation", ATTENTION_IMPLEMENTATIONS)
def test_every_implementation_has_the_gradients_of_softmax_attention(implementation, case):
    """The backward pass too, which the train step runs through each implementation's own graph."""
    rng = np.random.default_rng(1)
    q, k, v, mask = _case(case, rng)
    g = rng.standard_normal(q.shape)
    loss = lambda q, k, v: (attend(q, k, v, mask, implementation) * np.float32(g)).sum()
    got = jax.grad(loss, argnums=(0, 1, 2))(*(np.float32(a) for a in (q, k, v)))
    for name, got_, want in zip("qkv", got, np_attention_grads(q, k, v, mask, g)):
        np.testing.assert_allclose(np.asarray(got_), want, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_an_unknown_implementation_is_named():
    q = np.zeros((1, 2, 1, 4), np.float32)
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        attend(q, q, q, implementation="flash")


def test_auto_is_the_measured_default_and_an_explicit_choice_holds_in_every_program():
    """config.model.attention reaches the model; 'auto': heads-major in the video tower, in training and in the
    forward-only programs."""
    for choice in ATTENTION_CHOICES:
        model = build_model(tiny_config(**{"model.attention": choice}))
        assert model.attention == choice
        trained, forward = model.video_attention, model.for_inference().video_attention
        want = "einsum_heads_major" if choice == "auto" else choice
        assert (trained, forward) == (want, want)
    assert build_model(tiny_config(variant="v1-tiny", **{"model.attention": "dot_product"})).attention == "dot_product"


def _same_outputs(model, params, inputs):
    """Every output of `model` with each attention implementation, against the token-major einsum's."""
    run = lambda m: jax.device_get(jax.jit(lambda p: m.apply({"params": p}, *inputs))(params))
    want = run(model.clone(attention="einsum"))
    for implementation in ("einsum_heads_major", "dot_product"):
        got = run(model.clone(attention=implementation))
        assert got.keys() == want.keys() == {"video_tokens", "video_emb", "text_emb", "sort_logits"}
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{implementation}: {key}")


def _dot_product_calls(monkeypatch, model, params, inputs):
    """(q, k, mask) shapes of the jax.nn.dot_product_attention calls in `model`'s forward with attention
    'dot_product' (traced, not run)."""
    calls, dot_product_attention = set(), jax.nn.dot_product_attention

    def recording(q, k, v, mask=None, **kwargs):
        calls.add((q.shape, k.shape, None if mask is None else mask.shape))
        return dot_product_attention(q, k, v, mask=mask, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    jax.eval_shape(lambda p: model.clone(attention="dot_product").apply({"params": p}, *inputs), params)
    return calls


def test_a_tiny_tvtsv2_gives_the_same_outputs_with_every_implementation(monkeypatch):
    """Video (divided space and time attention, tube-masked), text (causal) and sort head (unmasked)."""
    variant = decode_variant("tiny")
    model = TVTSv2(variant)
    params = jax.jit(lambda rng: nn.unbox(init_params(model, rng)))(jax.random.key(0))
    video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    keep = np.sort(np.random.default_rng(2).permutation(variant.video.num_patches)[:8])[None].repeat(2, 0)
    texts = jax.random.randint(jax.random.key(3), (2, 4, 10), 1, 1000)
    _same_outputs(model, params, (video, keep, texts))
    # every tower's attention takes the 'dot_product' route, as [B, L, H, Dh] operands with [B, H, Lq, Lk] masks
    assert _dot_product_calls(monkeypatch, model, params, (video, keep, texts)) == {
        ((2, 1, 8, 8), (2, 33, 8, 8), None),  # the CLS query over the clip (4 frames x 8 kept patches + CLS)
        ((8, 8, 8, 8), (8, 9, 8, 8), None),  # space: 2 videos x 4 frames, each the CLS and 8 patches
        ((16, 4, 8, 8), (16, 5, 8, 8), None),  # time: 2 videos x 8 positions, each the CLS and 4 frames
        ((8, 10, 4, 16), (8, 10, 4, 16), (1, 1, 10, 10)),  # text: 2 x 4 transcripts; the causal mask, unbroadcast
        ((2, 37, 4, 16), (2, 37, 4, 16), None),  # the sort head: 33 video tokens and 4 transcripts
    }


def test_a_tiny_tvts_v1_gives_the_same_outputs_with_every_implementation(monkeypatch):
    """Joint space-time attention, DistilBERT (padded keys masked) and the sort head."""
    variant = decode_variant("v1-tiny")
    model = TVTSv1(variant)
    params = jax.jit(lambda rng: nn.unbox(tvts_v1.init_params(model, rng)))(jax.random.key(0))
    video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    texts = np.random.default_rng(3).integers(1, variant.text.vocab_size, (2, 4, 10)).astype(np.int32)
    texts[:, :, 7:] = variant.text.pad_token_id
    _same_outputs(model, params, (video, None, texts))
    assert _dot_product_calls(monkeypatch, model, params, (video, None, texts)) == {
        ((2, 33, 8, 8), (2, 33, 8, 8), None),  # video: the CLS and 2 tubes x 16 patches
        ((8, 10, 4, 16), (8, 10, 4, 16), (8, 1, 1, 10)),  # DistilBERT: each transcript's padded keys masked
        ((2, 37, 4, 16), (2, 37, 4, 16), None),  # the sort head
    }
