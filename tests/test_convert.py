"""tvts.convert: the official TVTSv2 names both ways, the bookkeeping (every tensor used or named in an error,
every parameter not loaded listed), the file formats, the command line, and a converted directory as config.init.

The official state dicts here are written from the official module definitions by hand (docs/published_recipe.md,
"Parameter names"), not from tvts.convert's rules. Torch-only cases skip when the 'convert' extra is absent.
"""
from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import one_device_setup, tiny_config
from tvts.checkpoint import read_meta, restore_params, with_shardings
from tvts.convert import open_clip, openai_clip, tvtsv2
from tvts.convert.__main__ import main as cli
from tvts.convert.io import load_state_dict, write_safetensors
from tvts.convert.names import flatten
from tvts.models.tvtsv2 import TVTSv2, init_params
from tvts.models.variants import decode_variant

TINY = decode_variant("tiny")
# B-shaped (B/16's widths, heads, patch and vocabulary) at 2 blocks per tower, 1 frozen text block
B_SMALL = dataclasses.replace(
    decode_variant("B/16"), name="B/16 (2 blocks)",
    video=dataclasses.replace(decode_variant("B/16").video, depth=2),
    text=dataclasses.replace(decode_variant("B/16").text, depth=2, num_frozen=1))


def official_state_dict(v, seed=0, sort_head=True, dtype=np.float32) -> dict[str, np.ndarray]:
    """Exactly the official TVTSv2 names and shapes, in the official B state dict's order (top-level Parameters
    first, then modules as registered: v2/model/model_dist_TVTSv2_ViT_B_16.py:21-48,
    v2/model/video_encoder_ViT_B_16.py:94-167, v2/model/sort_transformer.py:66-113)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = (rng.standard_normal(shape) * 0.5).astype(dtype)

    def ln(name, d):
        add(f"{name}.weight", d)
        add(f"{name}.bias", d)

    t, w, e = v.text.width, v.video.width, v.joint_dim
    add("text_positional_embedding", v.text.context_length, t)
    add("text_projection", t, e)
    for i in range(v.text.depth):  # CLIP's ResidualAttentionBlock: attn (nn.MultiheadAttention), ln_1, mlp, ln_2
        b = f"text_model.resblocks.{i}"
        add(f"{b}.attn.in_proj_weight", 3 * t, t)
        add(f"{b}.attn.in_proj_bias", 3 * t)
        add(f"{b}.attn.out_proj.weight", t, t)
        add(f"{b}.attn.out_proj.bias", t)
        ln(f"{b}.ln_1", t)
        add(f"{b}.mlp.c_fc.weight", 4 * t, t)
        add(f"{b}.mlp.c_fc.bias", 4 * t)
        add(f"{b}.mlp.c_proj.weight", t, 4 * t)
        add(f"{b}.mlp.c_proj.bias", t)
        ln(f"{b}.ln_2", t)
    add("text_token_embedding.weight", v.text.vocab_size, t)
    ln("text_ln_final", t)
    add("video_model.class_embedding", w)
    add("video_model.positional_embedding", v.video.num_patches + 1, w)
    add("video_model.proj", w, e)
    add("video_model.temporal_embedding", 12, w)
    add("video_model.conv1.weight", w, 3, v.video.patch_size, v.video.patch_size)
    ln("video_model.ln_pre", w)
    for i in range(v.video.depth):  # attn, timeattn (VarAttention: qkv, proj), ln_3, ln_1, mlp, ln_2
        b = f"video_model.transformer.resblocks.{i}"
        for a in ("attn", "timeattn"):
            add(f"{b}.{a}.qkv.weight", 3 * w, w)
            add(f"{b}.{a}.qkv.bias", 3 * w)
            add(f"{b}.{a}.proj.weight", w, w)
            add(f"{b}.{a}.proj.bias", w)
        ln(f"{b}.ln_3", w)
        ln(f"{b}.ln_1", w)
        add(f"{b}.mlp.c_fc.weight", v.video.mlp_dim, w)
        add(f"{b}.mlp.c_fc.bias", v.video.mlp_dim)
        add(f"{b}.mlp.c_proj.weight", w, v.video.mlp_dim)
        add(f"{b}.mlp.c_proj.bias", w)
        ln(f"{b}.ln_2", w)
    ln("video_model.ln_post", w)
    if sort_head:
        add("pred_model.type_embed", 1, 2, e)
        for i in range(2):  # AttnBlock: norm1, attn (qkv, proj), norm2, mlp (fc1, fc2)
            b = f"pred_model.blocks.{i}"
            ln(f"{b}.norm1", e)
            add(f"{b}.attn.qkv.weight", 3 * e, e)
            add(f"{b}.attn.qkv.bias", 3 * e)
            add(f"{b}.attn.proj.weight", e, e)
            add(f"{b}.attn.proj.bias", e)
            ln(f"{b}.norm2", e)
            add(f"{b}.mlp.fc1.weight", 4 * e, e)
            add(f"{b}.mlp.fc1.bias", 4 * e)
            add(f"{b}.mlp.fc2.weight", e, 4 * e)
            add(f"{b}.mlp.fc2.bias", e)
        ln("pred_model.norm", e)
        add("pred_model.head.weight", 4, e)
        add("pred_model.head.bias", 4)
    return sd


def clip_state_dict(v, seed=0, dtype=np.float32) -> dict[str, np.ndarray]:
    """OpenAI CLIP's names (also OpenCLIP's) for a variant's towers, from the official TVTSv2 names' CLIP parts."""
    sd = official_state_dict(v, seed, sort_head=False, dtype=dtype)
    out = {}
    for name, x in sd.items():
        if ".timeattn." in name or ".ln_3." in name or name == "video_model.temporal_embedding":
            continue
        name = (name.replace("video_model.transformer", "visual.transformer").replace(".attn.qkv.", ".attn.in_proj_")
                .replace(".attn.proj.", ".attn.out_proj.") if name.startswith("video_model.transformer") else name)
        name = name.replace("video_model.", "visual.").replace("text_model.", "transformer.")
        name = {"text_token_embedding.weight": "token_embedding.weight", "text_positional_embedding":
                "positional_embedding"}.get(name, name).replace("text_ln_final", "ln_final")
        out[name.replace("in_proj_weight", "in_proj_weight")] = x
    out["logit_scale"] = np.array(4.6, dtype)
    return out


# ------------------------------------------------------------------------------------- official TVTSv2 names

@pytest.mark.parametrize("variant", [B_SMALL, TINY], ids=["B-shaped", "tiny"])
def test_official_names_convert_fully_and_back_exactly(variant):
    sd = official_state_dict(variant)
    conversion = tvtsv2.convert(sd, variant)
    assert conversion.initialised == [] and conversion.dropped == {}
    n_params = sum(int(np.prod(x.shape)) for x in flatten(conversion.params).values())
    assert n_params == sum(x.size for x in sd.values())
    back = tvtsv2.from_params(conversion.params, variant)
    assert list(back) == list(sd)  # exactly the official names, in the official order
    for name in sd:
        assert back[name].dtype == np.float32 and back[name].shape == sd[name].shape, name
        np.testing.assert_array_equal(back[name], sd[name], err_msg=name)


def test_converted_official_params_run_in_the_model():
    params = jax.tree.map(jnp.asarray, tvtsv2.to_params(official_state_dict(TINY), TINY))
    out = TVTSv2(TINY).apply({"params": params}, jnp.ones((1, 2, 32, 32, 3)), None, jnp.ones((1, 4, 8), jnp.int32))
    assert out["sort_logits"].shape == (1, 4, 4) and np.isfinite(out["sort_logits"]).all()


def test_text_split_follows_num_frozen():
    sd = official_state_dict(B_SMALL)
    for num_frozen in (0, 1, 2):
        v = dataclasses.replace(B_SMALL, text=dataclasses.replace(B_SMALL.text, num_frozen=num_frozen))
        text = tvtsv2.to_params(sd, v)["text"]
        stacks = {k: text[k]["mlp"]["fc"]["kernel"].shape[0] for k in ("frozen_blocks", "tuned_blocks") if k in text}
        assert stacks == {k: n for k, n in (("frozen_blocks", num_frozen), ("tuned_blocks", 2 - num_frozen)) if n}
        np.testing.assert_array_equal(
            (text["frozen_blocks"] if num_frozen else text["tuned_blocks"])["mlp"]["fc"]["kernel"][0],
            sd["text_model.resblocks.0.mlp.c_fc.weight"].T)


def test_released_checkpoint_without_sort_head(caplog):
    sd = official_state_dict(TINY, sort_head=False)
    with caplog.at_level(logging.INFO, "tvts.convert"):
        conversion = tvtsv2.convert(sd, TINY)
    assert conversion.initialised == ["sort_head"] and "sort_head" not in conversion.params
    lines = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("not loaded, initialised as the run's config says: sort_head")
    assert list(tvtsv2.from_params(conversion.params, TINY)) == list(sd)


def test_every_unknown_tensor_is_named_in_one_error():
    sd = official_state_dict(TINY)
    sd["video_model.extra"] = np.zeros(3, np.float32)
    sd["video_model.transformer.resblocks.2.ln_1.weight"] = np.zeros(64, np.float32)  # tiny has 2 blocks
    with pytest.raises(ValueError, match=r"2 tensors have no place in TVTSv2 variant tiny.*video_model\.extra, "
                                         r"video_model\.transformer\.resblocks\.2\.ln_1\.weight"):
        tvtsv2.convert(sd, TINY)


def test_missing_tensors_and_a_partial_sort_head_are_errors():
    sd = official_state_dict(TINY)
    del sd["video_model.ln_pre.bias"], sd["text_projection"]
    with pytest.raises(ValueError, match=r"2 tensors that variant tiny needs are missing: text_projection, "
                                         r"video_model\.ln_pre\.bias"):
        tvtsv2.convert(sd, TINY)
    sd = official_state_dict(TINY)
    del sd["pred_model.head.bias"]
    with pytest.raises(ValueError, match=r"the sort head \(pred_model\.\*\) is incomplete: 1 tensors missing: "
                                         r"pred_model\.head\.bias"):
        tvtsv2.convert(sd, TINY)


def test_shape_mismatch_names_the_tensor_and_both_shapes():
    sd = official_state_dict(TINY)
    sd["video_model.proj"] = np.zeros((64, 32), np.float32)
    with pytest.raises(ValueError, match=r"video_model\.proj has shape \(64, 32\), variant tiny needs \(64, 64\)"):
        tvtsv2.convert(sd, TINY)


def test_ddp_prefix_is_removed():
    sd = {f"module.{k}": x for k, x in official_state_dict(TINY).items()}
    assert tvtsv2.convert(sd, TINY).initialised == []


# ------------------------------------------------------------------------------------------------ CLIP names

def test_clip_towers_go_to_the_encoders_and_the_rest_is_listed():
    sd = clip_state_dict(B_SMALL)
    conversion = openai_clip.convert(sd, B_SMALL)
    assert conversion.initialised == ["sort_head", "video/blocks/ln_3", "video/blocks/time_attn",
                                      "video/temporal_embedding"]
    assert list(conversion.dropped) == ["logit_scale"]
    p = conversion.params
    # the layouts, spelled out: Linear [out, in] -> [in, out]; fused qkv [3D, D] -> [D, 3, H, Dh]; conv -> HWIO
    w = sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    np.testing.assert_array_equal(p["video"]["blocks"]["attn"]["qkv"]["kernel"][1, :, 2, 3],
                                  w[2 * 768 + 3 * 64:2 * 768 + 4 * 64].T)
    np.testing.assert_array_equal(p["video"]["blocks"]["attn"]["out"]["kernel"][0, 5, 7],
                                  sd["visual.transformer.resblocks.0.attn.out_proj.weight"][:, 5 * 64 + 7])
    np.testing.assert_array_equal(p["video"]["patch_embed"]["kernel"][2, 3, 1],
                                  sd["visual.conv1.weight"][:, 1, 2, 3])
    np.testing.assert_array_equal(p["text"]["tuned_blocks"]["mlp"]["proj"]["kernel"][0],
                                  sd["transformer.resblocks.1.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(p["text"]["frozen_blocks"]["ln_2"]["norm"]["scale"][0],
                                  sd["transformer.resblocks.0.ln_2.weight"])


def test_position_embedding_is_resampled_to_the_variant_grid(caplog):
    sd = clip_state_dict(B_SMALL)
    grid = np.arange(14 * 14, dtype=np.float32).reshape(14, 14)
    sd["visual.positional_embedding"] = np.concatenate(
        [np.full((1, 768), -1.0, np.float32), np.repeat(grid.reshape(-1, 1), 768, axis=1)])
    v = dataclasses.replace(B_SMALL, video=dataclasses.replace(B_SMALL.video, image_size=160))  # grid 10
    with caplog.at_level(logging.INFO, "tvts.convert"):
        pos = openai_clip.to_params(sd, v)["video"]["pos_embedding"]
    assert pos.shape == (101, 768) and (pos[0] == -1).all()
    patches = pos[1:, 0].reshape(10, 10)
    assert np.all(np.diff(patches, axis=0) > 0) and np.all(np.diff(patches, axis=1) > 0)  # the grid's order kept
    assert any("visual.positional_embedding (197, 768) -> (101, 768)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- file formats

def test_safetensors_fp16_is_read_lazily_and_upcast(tmp_path):
    sd = official_state_dict(TINY, dtype=np.float16)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, sd)
    loaded = load_state_dict(path)
    assert list(loaded) == list(sd) and loaded.dtype("video_model.proj") == "F16"
    assert loaded.shape("video_model.conv1.weight") == (64, 3, 8, 8)
    assert loaded["video_model.proj"].dtype == np.float32
    back = tvtsv2.from_params(tvtsv2.to_params(loaded, TINY), TINY)
    for name in sd:
        np.testing.assert_array_equal(back[name], sd[name].astype(np.float32))


def test_safetensors_files_agree_with_the_reference_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the cross-check needs the safetensors "
                                            "package (the 'convert' extra)")
    import ml_dtypes

    sd = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.ones((1, 2, 3), np.float32),
          "c": np.arange(3, dtype=np.int64)}
    safetensors_numpy.save_file(sd, str(tmp_path / "ref.safetensors"))
    ours = load_state_dict(tmp_path / "ref.safetensors")
    for k in sd:
        np.testing.assert_array_equal(ours[k], sd[k])
    write_safetensors(tmp_path / "ours.safetensors", sd, {"format": "pt"})
    ref = safetensors_numpy.load_file(str(tmp_path / "ours.safetensors"))
    for k in sd:
        np.testing.assert_array_equal(ref[k], sd[k])
    write_safetensors(tmp_path / "bf16.safetensors", {"d": np.array([1.5, -2.0], ml_dtypes.bfloat16)})
    assert load_state_dict(tmp_path / "bf16.safetensors")["d"].tolist() == [1.5, -2.0]


RAN = []


def _side_effect():
    RAN.append(True)


class _TrainerConfig:
    """Stands for the object the official trainer pickles beside the state dict; unpickling it would run code."""

    def __reduce__(self):
        return (_side_effect, ())


def test_torch_files(tmp_path):
    torch = pytest.importorskip("torch", reason="reading .pt/.pth/.bin needs torch: pip install -e '.[convert]'")
    sd = official_state_dict(TINY)
    tensors = {k: torch.from_numpy(x).half() for k, x in sd.items()}

    torch.save(tensors, tmp_path / "plain.bin")
    # the official trainer's layout: {'arch', 'epoch', 'state_dict' (DDP names), 'optimizer', 'config': an object}
    torch.save({"arch": "TVTSv2", "epoch": 10, "state_dict": {f"module.{k}": x for k, x in tensors.items()},
                "config": _TrainerConfig()}, tmp_path / "trainer.pth")
    torch.save({"state_dict": tensors}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("plain.bin", "trainer.pth", "legacy.pt"):
        loaded = load_state_dict(tmp_path / name)
        assert list(loaded) == list(sd), name
        back = tvtsv2.from_params(tvtsv2.to_params(loaded, TINY), TINY)
        np.testing.assert_array_equal(back["video_model.proj"], sd["video_model.proj"].astype(np.float16)
                                      .astype(np.float32))
    assert RAN == []  # the pickled object's code never ran: an inert stub stood in for it


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive_as_openai_ships_it(tmp_path):
    torch = pytest.importorskip("torch", reason="reading TorchScript archives needs torch (the 'convert' extra)")

    class Tower(torch.nn.Module):  # a scriptable module whose state dict carries CLIP names
        def __init__(self, sd):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.proj = torch.nn.Parameter(torch.from_numpy(sd["visual.proj"]).half())
            self.logit_scale = torch.nn.Parameter(torch.tensor(4.6))
            self.register_buffer("input_resolution", torch.tensor(224))

        def forward(self, x):
            return x @ self.visual.proj.float()

    sd = clip_state_dict(B_SMALL)
    torch.jit.script(Tower(sd)).save(str(tmp_path / "ViT-B-16.pt"))
    loaded = load_state_dict(tmp_path / "ViT-B-16.pt")
    assert sorted(loaded) == ["input_resolution", "logit_scale", "visual.proj"]
    np.testing.assert_array_equal(loaded["visual.proj"], sd["visual.proj"].astype(np.float16).astype(np.float32))


# ----------------------------------------------------------------------------- command line and config.init

def test_convert_command_then_init_a_run_from_it(tmp_path):
    """open_clip names (the tiny variant is GELU) -> DIR -> restore_params + the run's random init, as the trainer
    does with --config.init=DIR: converted leaves over the init, the time attention re-initialised from them."""
    sd = clip_state_dict(TINY, dtype=np.float16)
    write_safetensors(tmp_path / "clip.safetensors", sd)
    cli(["open_clip", str(tmp_path / "clip.safetensors"), "--variant", "tiny", "--out", str(tmp_path / "dir")])
    meta = read_meta(tmp_path / "dir")
    assert meta["initialised"] == ["sort_head", "video/blocks/ln_3", "video/blocks/time_attn",
                                   "video/temporal_embedding"]
    assert meta["variant"] == "tiny" and meta["text_num_frozen"] == 1

    from tvts.state import converted_params, init_state, random_init, run_rngs

    config = tiny_config()
    setup = one_device_setup(config)
    target = with_shardings(setup.abstract_state, setup.state_sharding)
    loaded = restore_params(str(tmp_path / "dir"), target["params"])
    assert "sort_head" not in loaded and "time_attn" not in loaded["video"]["blocks"]
    init_rng, _ = run_rngs(config)
    random = jax.tree.map(np.asarray, random_init(setup, init_rng))
    params = converted_params(setup, init_rng, loaded)
    state = init_state(setup, init_rng, params)
    p = state["params"]
    np.testing.assert_array_equal(p["video"]["blocks"]["mlp"]["fc"]["kernel"][1],
                                  sd["visual.transformer.resblocks.1.mlp.c_fc.weight"].astype(np.float32).T)
    np.testing.assert_array_equal(p["text"]["token_embedding"], sd["token_embedding.weight"].astype(np.float32))
    # 'learnable': the time attention's qkv is the converted space attention's, its output projection zero
    np.testing.assert_array_equal(p["video"]["blocks"]["time_attn"]["qkv"]["kernel"],
                                  p["video"]["blocks"]["attn"]["qkv"]["kernel"])
    assert not np.any(p["video"]["blocks"]["time_attn"]["out"]["kernel"])
    np.testing.assert_array_equal(p["sort_head"]["block_0"]["attn"]["qkv"]["kernel"],
                                  random["sort_head"]["block_0"]["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(p["video"]["temporal_embedding"], random["video"]["temporal_embedding"])

    with pytest.raises(SystemExit, match="video_model.temporal_embedding"):  # CLIP has no time attention etc.
        cli(["to_tvtsv2", str(tmp_path / "dir"), "--out", str(tmp_path / "x.safetensors")])

    # the trainer does the same with --config.init=DIR: its first checkpoint's params are one update away from these
    from tvts.checkpoint import Checkpointer
    from tvts.train import train_and_evaluate

    workdir = tmp_path / "run"
    train_and_evaluate(tiny_config(init=str(tmp_path / "dir"), total_steps=1, checkpoint_every=1), workdir)
    ckpt = Checkpointer(workdir / "checkpoints")
    trained, _ = ckpt.restore(1, target)
    ckpt.close()
    frozen = trained["params"]["text"]["frozen_blocks"]  # frozen: exactly the converted values after an update
    np.testing.assert_array_equal(frozen["mlp"]["fc"]["kernel"], p["text"]["frozen_blocks"]["mlp"]["fc"]["kernel"])


def test_tvtsv2_command_round_trip(tmp_path):
    sd = official_state_dict(TINY)
    write_safetensors(tmp_path / "official.safetensors", sd)
    cli(["tvtsv2", str(tmp_path / "official.safetensors"), "--variant", "tiny", "--out", str(tmp_path / "dir")])
    cli(["to_tvtsv2", str(tmp_path / "dir"), "--out", str(tmp_path / "back.safetensors")])
    back = load_state_dict(tmp_path / "back.safetensors")
    assert list(back) == list(sd)
    for name in sd:
        np.testing.assert_array_equal(back[name], sd[name])
    with pytest.raises(SystemExit, match="already holds a checkpoint"):
        cli(["tvtsv2", str(tmp_path / "official.safetensors"), "--variant", "tiny", "--out", str(tmp_path / "dir")])


def test_restore_names_a_mismatched_split(tmp_path):
    write_safetensors(tmp_path / "official.safetensors", official_state_dict(TINY))
    cli(["tvtsv2", str(tmp_path / "official.safetensors"), "--variant", "tiny", "--out", str(tmp_path / "dir"),
         "--text_num_frozen", "2"])
    model = TVTSv2(TINY)  # num_frozen 1
    abstract = jax.eval_shape(lambda r: nn.unbox(init_params(model, r)), jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    with pytest.raises(ValueError, match=r"converted with python -m tvts.convert tvtsv2 --variant tiny "
                                         r"--text_num_frozen 2\): shape mismatch: "
                                         r"text/frozen_blocks/attn/out/bias stored \(2, 64\), model \(1, 64\)"):
        restore_params(str(tmp_path / "dir"), abstract)


def test_open_clip_and_openai_rules_agree():
    assert open_clip.rules(B_SMALL) == openai_clip.rules(B_SMALL)


def test_bench_tool_writes_a_complete_synthetic_checkpoint(tmp_path):
    from tools.bench_convert import synthetic_file

    counts = synthetic_file(str(tmp_path / "s.safetensors"), "tiny", "tvtsv2", "float16")
    conversion = tvtsv2.convert(load_state_dict(tmp_path / "s.safetensors"), TINY)
    assert conversion.initialised == [] and counts["tensors"] == len(official_state_dict(TINY))
