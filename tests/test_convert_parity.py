"""Converted weights against PyTorch reference models (transformers' CLIP classes, random weights, float32).

The references' state dicts are renamed to OpenAI CLIP's names by a mapping written here, independently of
tvts.convert, then converted with the OpenAI (B-shaped, QuickGELU) or OpenCLIP (H-shaped, GELU) converter. The text
encoder must give the reference's projected EOT embedding, and the video encoder on a single frame (T=1: the time
attention is a no-op, the temporal embedding is set to zeros) the reference's projected CLS embedding, to a relative
error (max |ours - ref| / max |ref|) of at most 1e-4. Towers are at reduced depth, at their real widths.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need torch: pip install -e '.[convert]'")
transformers = pytest.importorskip("transformers", reason="the parity tests need transformers: the 'convert' extra")

from tvts.convert import open_clip, openai_clip  # noqa: E402
from tvts.models.tvtsv2 import TVTSv2, init_params, merge_loaded  # noqa: E402
from tvts.models.variants import SortHeadConfig, TextTower, Variant, VideoTower  # noqa: E402

RTOL = 1e-4
VOCAB = 1000
DEPTH = 2


def shaped(kind: str) -> Variant:
    """B/16-shaped (QuickGELU; video 768 wide, 12 heads, patch 16; text 512, 8 heads) or H/14-shaped (GELU; video
    1280, 16 heads, patch 14; text 1024, 16 heads) towers with DEPTH blocks each and a small vocabulary."""
    if kind == "B/16":
        video = VideoTower(width=768, depth=DEPTH, heads=12, mlp_dim=3072, patch_size=16, image_size=224)
        text = TextTower(width=512, depth=DEPTH, heads=8, num_frozen=1, vocab_size=VOCAB)
        return Variant("B/16-shaped", video, text, SortHeadConfig(512, 8), 512, "quick_gelu", 0.5, "openai:test")
    video = VideoTower(width=1280, depth=DEPTH, heads=16, mlp_dim=5120, patch_size=14, image_size=224)
    text = TextTower(width=1024, depth=DEPTH, heads=16, num_frozen=1, vocab_size=VOCAB)
    return Variant("H/14-shaped", video, text, SortHeadConfig(1024, 16), 1024, "gelu", 0.7, "open_clip:test",
                   sort_tokens="patches")


def reference_models(variant: Variant):
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    v, t = variant.video, variant.text
    torch.manual_seed(0)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim, num_hidden_layers=t.depth,
        num_attention_heads=t.heads, max_position_embeddings=t.context_length, hidden_act=variant.act,
        projection_dim=variant.joint_dim, layer_norm_eps=1e-5, attention_dropout=0.0,
        bos_token_id=VOCAB - 2, eos_token_id=2, pad_token_id=0)).eval()  # eos 2: pool at argmax(ids), as CLIP does
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth, num_attention_heads=v.heads,
        image_size=v.image_size, patch_size=v.patch_size, hidden_act=variant.act, projection_dim=variant.joint_dim,
        layer_norm_eps=1e-5, attention_dropout=0.0)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter random, LayerNorm affine included, so a swapped mapping shows
        for model in (text, vision):
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=generator)
                p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.02 * noise)
    return text, vision


def openai_names(text, vision) -> dict[str, np.ndarray]:
    """transformers' CLIP state dicts -> OpenAI CLIP's names and layouts (written independently of tvts.convert)."""
    t = {k: x.detach().numpy() for k, x in text.state_dict().items()}
    v = {k: x.detach().numpy() for k, x in vision.state_dict().items()}
    out = {}

    def blocks(src, prefix, dst):
        n = 0
        while f"{prefix}.{n}.layer_norm1.weight" in src:
            s, d = f"{prefix}.{n}", f"{dst}.{n}"
            out[f"{d}.attn.in_proj_weight"] = np.concatenate([src[f"{s}.self_attn.{x}_proj.weight"] for x in "qkv"])
            out[f"{d}.attn.in_proj_bias"] = np.concatenate([src[f"{s}.self_attn.{x}_proj.bias"] for x in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for w in ("weight", "bias"):
                    out[f"{d}.{ours}.{w}"] = src[f"{s}.{theirs}.{w}"]
            n += 1

    out["token_embedding.weight"] = t["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = t["text_model.embeddings.position_embedding.weight"]
    blocks(t, "text_model.encoder.layers", "transformer.resblocks")
    for w in ("weight", "bias"):
        out[f"ln_final.{w}"] = t[f"text_model.final_layer_norm.{w}"]
        out[f"visual.ln_pre.{w}"] = v[f"vision_model.pre_layrnorm.{w}"]
        out[f"visual.ln_post.{w}"] = v[f"vision_model.post_layernorm.{w}"]
    out["text_projection"] = t["text_projection.weight"].T
    out["visual.conv1.weight"] = v["vision_model.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = v["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = v["vision_model.embeddings.position_embedding.weight"]
    blocks(v, "vision_model.encoder.layers", "visual.transformer.resblocks")
    out["visual.proj"] = v["visual_projection.weight"].T
    out["logit_scale"] = np.array(np.log(1 / 0.07), np.float32)
    return out


def rel_err(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("kind", ["B/16", "H/14"])
def test_converted_towers_match_pytorch_reference(kind):
    variant = shaped(kind)
    text_ref, vision_ref = reference_models(variant)
    converter = openai_clip if kind == "B/16" else open_clip
    conversion = converter.convert(openai_names(text_ref, vision_ref), variant)
    assert conversion.initialised == ["sort_head", "video/blocks/ln_3", "video/blocks/time_attn",
                                      "video/temporal_embedding"]
    assert conversion.dropped == {"logit_scale": openai_clip.DROPPED["logit_scale"]}

    model = TVTSv2(variant)
    params = merge_loaded(nn.unbox(jax.jit(lambda r: init_params(model, r))(jax.random.key(0))),
                          jax.tree.map(jnp.asarray, conversion.params), "learnable")
    # a single image: no temporal code (the converted tower then computes as the image model it came from)
    params["video"]["temporal_embedding"] = jnp.zeros_like(params["video"]["temporal_embedding"])

    rng = np.random.default_rng(0)
    lengths = [5, 17, 77]
    tokens = np.zeros((len(lengths), 77), np.int64)
    for row, n in enumerate(lengths):  # SOT, words, EOT (the highest id), padding 0
        tokens[row, 0] = VOCAB - 2
        tokens[row, 1:n - 1] = rng.integers(1, VOCAB - 2, n - 2)
        tokens[row, n - 1] = VOCAB - 1
    images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)

    with torch.no_grad():
        text_want = text_ref(input_ids=torch.from_numpy(tokens)).text_embeds.numpy()
        image_want = vision_ref(pixel_values=torch.from_numpy(images)).image_embeds.numpy()
    text_got = jax.jit(lambda p, t: model.apply({"params": p}, t, method=TVTSv2.encode_text))(
        params, jnp.asarray(tokens, jnp.int32))
    video = jnp.asarray(images.transpose(0, 2, 3, 1))[:, None]  # [B, T=1, H, W, 3]
    tokens_out = jax.jit(lambda p, v: model.apply({"params": p}, v, None, method=TVTSv2.encode_video))(params, video)

    errors = {"text": rel_err(text_got, text_want), "image": rel_err(tokens_out[:, 0], image_want)}
    print(f"{kind}-shaped max relative error: {errors}")
    assert max(errors.values()) <= RTOL, errors

    # the patch tokens: projected without ln_post for H/14 as published ('patches'), after it for B ('all')
    with torch.no_grad():
        hidden = vision_ref(pixel_values=torch.from_numpy(images)).last_hidden_state[:, 1:]
        if variant.sort_tokens == "all":
            hidden = vision_ref.vision_model.post_layernorm(hidden)
        patches_want = vision_ref.visual_projection(hidden).numpy()
    patches_err = rel_err(tokens_out[:, 1:], patches_want)
    print(f"{kind}-shaped patch tokens ({variant.sort_tokens}) max relative error: {patches_err:.2e}")
    assert patches_err <= RTOL


def test_openai_converter_refuses_a_gelu_variant():
    with pytest.raises(ValueError, match="QuickGELU"):
        openai_clip.convert({}, shaped("H/14"))


def test_sort_head_reads_the_published_tokens():
    """B-style: the sort head reads every token (CLS included); H-style: the patch tokens only."""
    for kind, expected_offset in (("B/16", 0), ("H/14", 1)):
        variant = dataclasses.replace(shaped(kind), video=dataclasses.replace(shaped(kind).video, image_size=32,
                                                                              patch_size=16))
        model = TVTSv2(variant)
        tokens = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
        got = model.bind({}).sort_input(tokens)
        np.testing.assert_array_equal(got, tokens[:, expected_offset:])
