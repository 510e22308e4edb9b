"""TVTS v1 weights: the official v1 names both ways, MAE's inflated patch kernel, DistilBERT against transformers'
DistilBertModel, the WordPiece tokenizer against transformers' pure-Python BertTokenizer, and the command line.

The official v1 state dict is written here by hand from the official module definitions (docs/published_recipe.md,
"TVTS v1"), not from tvts.convert's rules. Torch-only cases skip when the 'convert' extra is absent.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvts.convert import distilbert, mae, tvts_v1
from tvts.convert.__main__ import main as cli
from tvts.convert.io import load_state_dict, write_safetensors
from tvts.convert.names import flatten
from tvts.data.wordpiece import WordPieceTokenizer
from tvts.models.distilbert import DistilBertEncoder
from tvts.models.tvts_v1 import TubeletEmbed
from tvts.models.variants import decode_variant

TINY = decode_variant("v1-tiny")
RTOL = 1e-4


def vit_state_dict(v, add, prefix="", tubelet=True, temporal=True):
    """timm/MAE-style ViT names (v1/model/video_encoder.py:127-146): own Parameters first, then modules."""
    c = v.video
    add(f"{prefix}cls_token", 1, 1, c.width)
    add(f"{prefix}pos_embed", 1, c.num_patches + 1, c.width)
    if temporal:
        add(f"{prefix}temporal_embed", 1, c.max_tubes, c.width)
    patch = (c.tubelet_size, c.patch_size, c.patch_size) if tubelet else (c.patch_size, c.patch_size)
    add(f"{prefix}patch_embed.proj.weight", c.width, 3, *patch)
    add(f"{prefix}patch_embed.proj.bias", c.width)
    for i in range(c.depth):  # Block: norm1, attn (qkv, proj), norm2, mlp (fc1, fc2)
        b = f"{prefix}blocks.{i}"
        add(f"{b}.norm1.weight", c.width)
        add(f"{b}.norm1.bias", c.width)
        add(f"{b}.attn.qkv.weight", 3 * c.width, c.width)
        add(f"{b}.attn.qkv.bias", 3 * c.width)
        add(f"{b}.attn.proj.weight", c.width, c.width)
        add(f"{b}.attn.proj.bias", c.width)
        add(f"{b}.norm2.weight", c.width)
        add(f"{b}.norm2.bias", c.width)
        add(f"{b}.mlp.fc1.weight", c.mlp_dim, c.width)
        add(f"{b}.mlp.fc1.bias", c.mlp_dim)
        add(f"{b}.mlp.fc2.weight", c.width, c.mlp_dim)
        add(f"{b}.mlp.fc2.bias", c.width)
    add(f"{prefix}norm.weight", c.width)
    add(f"{prefix}norm.bias", c.width)


def official_v1_state_dict(v, seed=0, sort_head=True) -> dict[str, np.ndarray]:
    """Exactly the official TVTS names and shapes in the official order (v1/model/model_dist_TVTS.py:33-83:
    text_model, video_model, txt_proj, vid_proj, pred_model)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)

    t, e = v.text, v.joint_dim
    add("text_model.embeddings.word_embeddings.weight", t.vocab_size, t.width)
    add("text_model.embeddings.position_embeddings.weight", t.max_positions, t.width)
    add("text_model.embeddings.LayerNorm.weight", t.width)
    add("text_model.embeddings.LayerNorm.bias", t.width)
    for i in range(t.depth):  # TransformerBlock: attention (q_lin, k_lin, v_lin, out_lin), sa_layer_norm, ffn, ...
        b = f"text_model.transformer.layer.{i}"
        for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
            add(f"{b}.attention.{lin}.weight", t.width, t.width)
            add(f"{b}.attention.{lin}.bias", t.width)
        add(f"{b}.sa_layer_norm.weight", t.width)
        add(f"{b}.sa_layer_norm.bias", t.width)
        add(f"{b}.ffn.lin1.weight", t.mlp_dim, t.width)
        add(f"{b}.ffn.lin1.bias", t.mlp_dim)
        add(f"{b}.ffn.lin2.weight", t.width, t.mlp_dim)
        add(f"{b}.ffn.lin2.bias", t.width)
        add(f"{b}.output_layer_norm.weight", t.width)
        add(f"{b}.output_layer_norm.bias", t.width)
    vit_state_dict(v, add, "video_model.")
    add("txt_proj.1.weight", e, t.width)  # Sequential(ReLU, Linear)
    add("txt_proj.1.bias", e)
    add("vid_proj.0.weight", e, v.video.width)
    add("vid_proj.0.bias", e)
    if sort_head:  # SortTransformer (v1/model/sort_transformer.py:101-113)
        s = v.sort_head.width
        add("pred_model.type_embed", 1, 2, s)
        for i in range(2):
            b = f"pred_model.blocks.{i}"
            add(f"{b}.norm1.weight", s)
            add(f"{b}.norm1.bias", s)
            add(f"{b}.attn.qkv.weight", 3 * s, s)
            add(f"{b}.attn.qkv.bias", 3 * s)
            add(f"{b}.attn.proj.weight", s, s)
            add(f"{b}.attn.proj.bias", s)
            add(f"{b}.norm2.weight", s)
            add(f"{b}.norm2.bias", s)
            add(f"{b}.mlp.fc1.weight", 4 * s, s)
            add(f"{b}.mlp.fc1.bias", 4 * s)
            add(f"{b}.mlp.fc2.weight", s, 4 * s)
            add(f"{b}.mlp.fc2.bias", s)
        add("pred_model.norm.weight", s)
        add("pred_model.norm.bias", s)
        add("pred_model.head.weight", 4, s)
        add("pred_model.head.bias", 4)
    return sd


def mae_state_dict(v, seed=1, decoder=True) -> dict[str, np.ndarray]:
    """MAE's encoder names with a 2D patch kernel, and (as in its pretraining model) a decoder beside it."""
    rng = np.random.default_rng(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)

    vit_state_dict(v, add, tubelet=False, temporal=False)
    if decoder:
        add("mask_token", 1, 1, 16)
        add("decoder_embed.weight", 16, v.video.width)
    return sd


# ------------------------------------------------------------------------------------ official v1 names
def test_official_v1_names_convert_fully_and_back_exactly():
    sd = official_v1_state_dict(TINY)
    conversion = tvts_v1.convert(sd, TINY)
    assert conversion.initialised == [] and conversion.dropped == {}
    assert sum(x.size for x in flatten(conversion.params).values()) == sum(x.size for x in sd.values())
    back = tvts_v1.from_params(conversion.params, TINY)
    assert list(back) == list(sd)  # exactly the official names, in the official order
    for name in sd:
        assert back[name].dtype == np.float32 and back[name].shape == sd[name].shape, name
        np.testing.assert_array_equal(back[name], sd[name], err_msg=name)

    p = conversion.params  # the layouts, spelled out
    q = sd["text_model.transformer.layer.1.attention.q_lin.weight"]  # [H*Dh, D] -> [D, H, Dh]
    np.testing.assert_array_equal(p["text"]["blocks"]["attn"]["q"]["kernel"][1, :, 2, 3], q[2 * 16 + 3])
    conv = sd["video_model.patch_embed.proj.weight"]  # [W, C, t, p, p] -> [t, p, p, C, W]
    np.testing.assert_array_equal(p["video"]["patch_embed"]["kernel"][1, 2, 3, 0], conv[:, 0, 1, 2, 3])
    np.testing.assert_array_equal(p["video"]["cls_token"], sd["video_model.cls_token"][0, 0])
    np.testing.assert_array_equal(p["video"]["temporal_embedding"], sd["video_model.temporal_embed"][0])
    np.testing.assert_array_equal(p["text"]["proj"]["kernel"], sd["txt_proj.1.weight"].T)
    np.testing.assert_array_equal(p["video"]["proj"]["kernel"], sd["vid_proj.0.weight"].T)


def test_checkpoint_without_sort_head_and_with_position_ids():
    sd = official_v1_state_dict(TINY, sort_head=False)
    sd["text_model.embeddings.position_ids"] = np.arange(TINY.text.max_positions)[None]
    conversion = tvts_v1.convert(sd, TINY)
    assert conversion.initialised == ["sort_head"]
    assert list(conversion.dropped) == ["text_model.embeddings.position_ids"]
    del sd["text_model.embeddings.position_ids"]
    assert list(tvts_v1.from_params(conversion.params, TINY)) == list(sd)


def test_unknown_and_missing_tensors_are_named():
    sd = official_v1_state_dict(TINY)
    sd["video_model.head.weight"] = np.zeros((3, 64), np.float32)
    with pytest.raises(ValueError, match=r"1 tensors have no place in TVTS v1 variant v1-tiny.*video_model\.head"):
        tvts_v1.convert(sd, TINY)
    del sd["video_model.head.weight"], sd["vid_proj.0.bias"]
    with pytest.raises(ValueError, match=r"1 tensors that variant v1-tiny needs are missing: vid_proj\.0\.bias"):
        tvts_v1.convert(sd, TINY)
    with pytest.raises(ValueError, match="not a TVTS v1 variant"):
        tvts_v1.convert(sd, "tiny")


# ------------------------------------------------------------------------------------ MAE
def test_inflated_mae_kernel_reproduces_the_2d_patch_embedding_on_a_static_video():
    """The official init repeats the 2D kernel over the tubelet's 2 frames without dividing by 2
    (v1/model/model_dist_TVTS.py:57-58): on a static video each tube embeds to 2 x (2D projection) + bias."""
    sd = mae_state_dict(TINY)
    conversion = mae.convert(sd, TINY)
    assert conversion.initialised == ["sort_head", "text", "video/proj", "video/temporal_embedding"]
    assert sorted(conversion.dropped) == ["decoder_embed.weight", "mask_token"]
    kernel2d, bias = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]  # [W, 3, p, p], [W]
    np.testing.assert_array_equal(conversion.params["video"]["pos_embedding"], sd["pos_embed"][0])

    rng = np.random.default_rng(3)
    frame = rng.standard_normal((32, 32, 3)).astype(np.float32)
    static = np.broadcast_to(frame, (1, 4, 32, 32, 3))  # 2 tubes of the same frame
    embed = TubeletEmbed(TINY.video.width, TINY.video.patch_size, TINY.video.tubelet_size)
    got = np.asarray(embed.apply({"params": conversion.params["video"]["patch_embed"]}, static))  # [1, 2, 16, W]
    patches = frame.reshape(4, 8, 4, 8, 3).transpose(0, 2, 4, 1, 3).reshape(16, 3, 8, 8)  # row-major, as Conv2d
    projection_2d = np.einsum("ncij,wcij->nw", patches.astype(np.float64), kernel2d)  # the 2D conv without bias
    for tube in range(2):
        np.testing.assert_allclose(got[0, tube], 2 * projection_2d + bias, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------ DistilBERT and WordPiece
def _hf_distilbert(tmp_path, v, safetensors: bool):
    torch = pytest.importorskip("torch", reason="the parity tests need torch: pip install -e '.[convert]'")
    transformers = pytest.importorskip("transformers", reason="the parity tests need transformers")
    t = v.text
    config = transformers.DistilBertConfig(
        vocab_size=t.vocab_size, dim=t.width, n_layers=t.depth, n_heads=t.heads, hidden_dim=t.mlp_dim,
        max_position_embeddings=t.max_positions, pad_token_id=t.pad_token_id, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = transformers.DistilBertForMaskedLM(config).eval()  # the Hub's layout: distilbert.* plus an MLM head
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter random, LayerNorm affine included, so a swapped mapping shows
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1.0 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else 0.05 * noise)
    folder = tmp_path / "distilbert"
    folder.mkdir()
    tensors = {k: x.detach().numpy().copy() for k, x in model.state_dict().items()}
    if safetensors:
        write_safetensors(folder / "model.safetensors", tensors)
    else:
        torch.save({k: torch.from_numpy(x) for k, x in tensors.items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(config.to_json_string())
    return model.distilbert, folder


def test_distilbert_tower_matches_transformers(tmp_path):
    """distilbert-base's widths (768, 12 heads, 3072), 2 layers, 1000 words, 64 positions; rows of several lengths
    padded with the padding id, against DistilBertModel with the matching attention mask."""
    b16 = decode_variant("v1-B/16")
    v = dataclasses.replace(b16, name="v1-B/16 (2 text layers)", video=dataclasses.replace(b16.video, depth=1),
                            text=dataclasses.replace(b16.text, depth=2, vocab_size=1000, max_positions=64))
    reference, folder = _hf_distilbert(tmp_path, v, safetensors=True)
    conversion = distilbert.convert_file(str(folder), v)
    assert "text/proj" in conversion.initialised and "text/word_embeddings" in conversion.loaded
    assert sorted(conversion.dropped) == sorted(k for k in load_state_dict(folder / "model.safetensors")
                                                if k.startswith("vocab_"))

    import torch

    rng = np.random.default_rng(0)
    lengths = [3, 17, 50]
    tokens = np.zeros((len(lengths), 50), np.int64)
    for row, n in enumerate(lengths):  # [CLS] words [SEP], then padding 0
        tokens[row, 0], tokens[row, n - 1] = 101, 102
        tokens[row, 1:n - 1] = rng.integers(103, 1000, n - 2)
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(tokens),
                         attention_mask=torch.from_numpy((tokens != 0).astype(np.int64))).last_hidden_state[:, 0]
    encoder = DistilBertEncoder(v.text, v.joint_dim)
    params = dict(conversion.params["text"])
    params["proj"] = {"kernel": np.zeros((768, 256), np.float32), "bias": np.zeros(256, np.float32)}
    got, _ = jax.jit(lambda p, t: encoder.apply({"params": p}, t))(params, jnp.asarray(tokens, jnp.int32))
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want.numpy())) / np.max(np.abs(want.numpy())))
    print(f"DistilBERT (768 wide, 2 layers) first-token features: max relative error {err:.2e}")
    assert err <= RTOL


def test_distilbert_files_and_config(tmp_path):
    _, folder = _hf_distilbert(tmp_path, TINY, safetensors=False)  # pytorch_model.bin
    conversion = distilbert.convert_file(str(folder / "pytorch_model.bin"), TINY)  # a file: config.json beside it
    assert conversion.initialised == ["sort_head", "text/proj", "video"]
    config = json.loads((folder / "config.json").read_text())
    config["activation"] = "relu"
    wrong = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, heads=8))
    with pytest.raises(ValueError, match=r"n_heads is 4, variant v1-tiny needs 8; activation is 'relu', variant "
                                         r"v1-tiny needs 'gelu'"):
        distilbert.check_config(config, wrong)


def test_wordpiece_matches_bert_tokenizer(tmp_path):
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy",
                                 reason="the reference is transformers' pure-Python BertTokenizer")
    words = ["the", "red", "circle", "moves", "left", "square", "cafe", "run", "##s", "##ning", "un", "##der", "##a",
             "a", ",", ".", "!", "'", "s", "中", "[MASK]"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]) + "\n")
    texts = ["The red circle moves left.", "Café runs, UNDERA square!", "runner's unknownword",
             "中文 circle", "  spaced\tout\nlines  ", "", " ".join(["the red"] * 40)]
    ours = WordPieceTokenizer(vocab)(texts)
    reference = legacy.BertTokenizerLegacy(str(vocab), do_lower_case=True)
    want = reference(texts, padding="max_length", truncation=True, max_length=50)["input_ids"]
    np.testing.assert_array_equal(ours, np.asarray(want, np.int32))
    assert ours.shape == (7, 50) and ours[-1, -1] == 3  # truncated at 50 tokens, [SEP] kept last
    assert WordPieceTokenizer(vocab)(texts, context_length=8).shape == (7, 8)


# ------------------------------------------------------------------------------------ command line
def test_v1_init_and_official_round_trip_commands(tmp_path):
    from tvts.checkpoint import read_meta, read_params

    torch = pytest.importorskip("torch", reason="MAE's .pth needs torch: pip install -e '.[convert]'")
    torch.save({"model": {k: torch.from_numpy(x) for k, x in mae_state_dict(TINY).items()}}, tmp_path / "mae.pth")
    _, folder = _hf_distilbert(tmp_path, TINY, safetensors=True)
    text_sd = load_state_dict(folder / "model.safetensors")

    cli(["v1_init", "--mae", str(tmp_path / "mae.pth"), "--distilbert", str(folder), "--variant", "v1-tiny",
         "--out", str(tmp_path / "init")])
    meta = read_meta(tmp_path / "init")
    assert meta["initialised"] == ["sort_head", "text/proj", "video/proj", "video/temporal_embedding"]
    assert meta["variant"] == "v1-tiny" and "mask_token" in meta["dropped"]
    loaded = read_params(tmp_path / "init")
    np.testing.assert_array_equal(loaded["text"]["blocks"]["mlp"]["fc"]["kernel"][1],
                                  text_sd["distilbert.transformer.layer.1.ffn.lin1.weight"].T)
    with pytest.raises(SystemExit, match="vid_proj.0.weight"):  # not a whole model
        cli(["to_tvts_v1", str(tmp_path / "init"), "--out", str(tmp_path / "x.safetensors")])

    official = official_v1_state_dict(TINY)
    write_safetensors(tmp_path / "official.safetensors", official)
    cli(["tvts_v1", str(tmp_path / "official.safetensors"), "--variant", "v1-tiny", "--out", str(tmp_path / "dir")])
    cli(["to_tvts_v1", str(tmp_path / "dir"), "--out", str(tmp_path / "back.safetensors")])
    back = load_state_dict(tmp_path / "back.safetensors")
    assert list(back) == list(official)
    for name in official:
        np.testing.assert_array_equal(back[name], official[name])
