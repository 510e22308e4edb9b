"""The exported backbone (tvts.export, tvts.backbone): the StableHLO programs give the Flax model's embeddings for
any batch size, the artefact holds what docs/backbone.md says (towers only, the spec, signatures), export from a
run's workdir and from a params-only directory, bfloat16 parameters, the evaluators run on it, and `tvts.backbone`
imports neither Flax nor the model, trainer or config code."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import REPO, one_device_setup, tiny_config
from tvts import backbone as backbone_lib
from tvts import export
from tvts.checkpoint import Checkpointer
from tvts.data.tokenizer import get_tokenizer
from tvts.models.inputs import normalize
from tvts.models.tvtsv2 import TVTSv2
from tvts.state import make_encoders, random_params

FORBIDDEN = ("flax", "tvts.models", "tvts.train", "tvts.config", "tvts.state", "tvts.evaluate", "optax", "orbax")
TEXTS = ["a person dancing", "a red circle moves left", "", "a green square then a blue triangle moves up"]


def perturbed_params(setup):
    """Random tiny parameters with an active time attention (a random init's output projection is 0), on host."""
    params = jax.device_get(random_params(setup))
    blocks = params["video"]["blocks"]
    kernel = np.random.default_rng(0).normal(0, 0.5, blocks["time_attn"]["out"]["kernel"].shape).astype(np.float32)
    time_attn = {**blocks["time_attn"], "out": {**blocks["time_attn"]["out"], "kernel": kernel}}
    return {**params, "video": {**params["video"], "blocks": {**blocks, "time_attn": time_attn}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run's setup (4 frames of 32 px, context 16) and parameters, and their backbone exported through the
    trainer's hook (export_run)."""
    config = tiny_config()
    setup = one_device_setup(config)
    params = perturbed_params(setup)
    out = tmp_path_factory.mktemp("backbone")
    info = export.export_run(setup, params, str(out), workdir="WORKDIR", step=7)
    return setup, params, str(out), info


def frames(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 4, 32, 32, 3), dtype=np.uint8)


def test_stablehlo_gives_the_flax_embeddings_for_two_batch_sizes(run):
    setup, params, directory, _ = run
    bb = backbone_lib.load(directory)
    flax = make_encoders(setup, params)
    tok = get_tokenizer(16)
    for batch in (2, 5):  # one symbolic batch dimension serves both
        x = frames(batch, seed=batch)
        got, want = bb.encode_video(x), flax.encode_video(x)
        assert got.shape == (batch, 64) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bb.video_tokens(x), flax.video_tokens(x), rtol=1e-5, atol=1e-5)
        texts = (TEXTS * 2)[:batch + 1]
        want_text = flax.encode_text(tok(texts))
        np.testing.assert_allclose(bb.encode_text(texts), want_text, rtol=1e-5, atol=1e-5)  # strings
        np.testing.assert_allclose(bb.encode_text(tok(texts)), want_text, rtol=1e-5, atol=1e-5)  # tokens
        ids = tok(texts)
        short = ids[:, :int(ids.argmax(1).max()) + 1]  # cut after the longest text's EOT: zero-padded again inside
        assert short.shape[1] < 16
        np.testing.assert_allclose(bb.encode_tokens(short), want_text, rtol=1e-5, atol=1e-5)
    # each frame alone: the model on a one-frame clip
    x = frames(3)[:, 1]
    one = setup.model.apply({"params": params}, normalize(x[:, None]), None, method=TVTSv2.encode_video)[:, 0]
    np.testing.assert_allclose(bb.encode_frames(x), one, rtol=1e-5, atol=1e-5)
    assert bb.encode_video(frames(1)[:0]).shape == (0, 64)
    with pytest.raises(ValueError, match="expected"):
        bb.encode_video(np.zeros((1, 3, 32, 32, 3), np.uint8))  # 3 frames; the spec says 4
    with pytest.raises(TypeError, match="uint8"):
        bb.encode_video(frames(1).astype(np.float32))


def test_the_artefact_holds_the_towers_the_spec_and_the_signatures(run):
    setup, params, directory, info = run
    assert sorted(os.listdir(directory)) == ["backbone.json", "image.stablehlo", "params.safetensors",
                                             "text.stablehlo", "video.stablehlo", "video_tokens.stablehlo"]
    assert json.loads(open(os.path.join(directory, "backbone.json")).read()) == info
    assert info["variant"]["name"] == "tiny" and info["variant"]["video"]["patch_size"] == 8
    assert info["spec"] == {"num_frames": 4, "image_size": 32, "normalization": "imagenet", "tokenizer": "clip_bpe",
                            "context_length": 16}
    assert info["embed_dim"] == 64 and info["param_dtype"] == "float32" and info["jax_version"] == jax.__version__
    assert info["source"] == {"workdir": "WORKDIR", "step": 7, "config_variant": "tiny"}
    fns = info["functions"]
    assert fns["video"]["input"] == {"dtype": "uint8", "shape": ["b", 4, 32, 32, 3]}
    assert fns["video"]["output"] == {"dtype": "float32", "shape": ["b", 64]}
    assert fns["video_tokens"]["output"]["shape"] == ["b", 1 + 4 * 16, 64]
    assert fns["image"]["input"]["shape"] == ["b", 32, 32, 3]
    assert fns["text"]["input"] == {"dtype": "int32", "shape": ["b", 16]}

    stored, meta = backbone_lib.read_safetensors(os.path.join(directory, "params.safetensors"))
    assert meta["variant"] == "tiny"
    want = backbone_lib.flatten({"video": params["video"], "text": params["text"]})
    assert sorted(stored) == sorted(want)  # no sort head, nothing else
    for name, value in want.items():
        np.testing.assert_array_equal(stored[name], value)
    assert info["num_params"] == sum(v.size for v in want.values())
    # the file is standard safetensors
    st = pytest.importorskip("safetensors.numpy")
    other = st.load_file(os.path.join(directory, "params.safetensors"))
    assert sorted(other) == sorted(stored)
    for name in stored:
        np.testing.assert_array_equal(other[name], stored[name])

    bb = backbone_lib.load(directory)
    assert bb.spec == info["spec"] and bb.spec.num_frames == 4 and isinstance(bb.spec, dict)
    from tvts.models.inputs import PreprocessSpec

    assert PreprocessSpec.from_dict(bb.spec) == setup.spec


def make_run_workdir(workdir, config, setup, params, step=3):
    """A run's workdir as the trainer leaves it: config.json and a checkpoint of the whole train state."""
    from tvts.state import init_state, run_rngs
    from tvts.train import record_config

    os.makedirs(workdir, exist_ok=True)
    record_config(config, workdir)
    state = init_state(setup, run_rngs(config)[0], jax.device_put(params, setup.params_sharding))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(step, state, {"iteration": step})
    ckpt.wait()
    ckpt.close()


def test_export_from_a_workdir_and_from_a_params_only_directory(run, tmp_path):
    setup, params, directory, _ = run
    workdir = str(tmp_path / "run")
    make_run_workdir(workdir, setup.config, setup, params)
    info = export.main(["--workdir", workdir, "--out", str(tmp_path / "bb"), "--platforms", "cpu"])
    assert info["source"] == {"workdir": workdir, "step": 3, "config_variant": "tiny"}
    assert info["platforms"] == ["cpu"]
    a, _ = backbone_lib.read_safetensors(os.path.join(directory, "params.safetensors"))
    b, _ = backbone_lib.read_safetensors(str(tmp_path / "bb" / "params.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

    # a params-only directory (the weight converters' format, what --config.init takes)
    from tvts import checkpoint

    init_dir = str(tmp_path / "converted")
    if hasattr(checkpoint, "save_params"):
        checkpoint.save_params(init_dir, params, {"variant": "tiny"})
        variant = []  # the directory's metadata names it
    else:
        ckpt = Checkpointer(init_dir)
        ckpt.save(0, {"params": params}, {})
        ckpt.wait()
        ckpt.close()
        variant = ["--variant", "tiny"]
    info = export.main(["--init", init_dir, *variant, "--num_frames", "4", "--context_length", "16",
                        "--out", str(tmp_path / "bb_init"), "--platforms", "cpu", "--dtype", "bfloat16"])
    assert info["spec"] == dict(setup.spec.to_dict()) and info["source"] == {"init": init_dir}
    c, _ = backbone_lib.read_safetensors(str(tmp_path / "bb_init" / "params.safetensors"))
    assert {str(v.dtype) for v in c.values()} == {"bfloat16"}
    assert all(np.array_equal(c[k], a[k].astype(c[k].dtype)) for k in a)
    # bfloat16 parameters: embeddings within bfloat16's rounding of the float32 ones
    x = frames(2)
    full, half = backbone_lib.load(directory), backbone_lib.load(str(tmp_path / "bb_init"))
    ref = full.encode_video(x)
    assert np.abs(half.encode_video(x) - ref).max() < 0.05 * np.abs(ref).max()
    assert os.path.getsize(tmp_path / "bb_init" / "params.safetensors") < 0.51 * os.path.getsize(
        tmp_path / "bb" / "params.safetensors")


def test_the_evaluators_run_on_the_backbone(run):
    from tvts.evaluators.synthetic_heldout import SyntheticHeldout

    setup, params, directory, _ = run
    cfg = ml_collections.ConfigDict(dict(type="synthetic_heldout", every=0, num_videos=16, num_probe_train=32,
                                         batch=8))
    evaluator = SyntheticHeldout("heldout", cfg, setup.config.data, backbone_lib.load(directory).spec)
    got = evaluator.run(backbone_lib.load(directory))
    want = evaluator.run(make_encoders(setup, params))
    assert "heldout/sort_accuracy" not in got  # a backbone has no sort head
    assert {k: v for k, v in want.items() if k != "heldout/sort_accuracy"} == pytest.approx(got, abs=1e-4)


@pytest.mark.slow  # starts a Python process (about 3 s)
def test_backbone_imports_neither_flax_nor_the_model_trainer_or_config(run):
    directory = run[2]
    code = (f"import sys, numpy as np; import tvts.backbone as b; bb = b.load({directory!r}); "
            "bb.encode_video(np.zeros((1, 4, 32, 32, 3), np.uint8)); bb.encode_text(['a person dancing']); "
            f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
