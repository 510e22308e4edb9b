"""Export a TVTSv2's (or a TVTS v1's) video and text encoders as a frozen backbone (docs/backbone.md):

    python -m tvts.export --workdir workdirs/demo --out workdirs/demo/backbone [--step N]
    python -m tvts.export --init CONVERTED_DIR --variant B/16 --out DIR [--num_frames 12 --normalization imagenet]

Either from a run (its config.json and its newest, or given, checkpoint) or from a params-only checkpoint directory
(the weight converters' output, the same directory `--config.init` takes) with the variant and spec given as flags.
Writes into --out:

    backbone.json        format, variant (its fields), preprocessing spec, dtypes, embedding dim, the programs' files
                         and input/output signatures, jax version, platforms, where the parameters came from
    params.safetensors   the video and text towers' parameters ('/'-joined names: video/blocks/attn/qkv/kernel, ...),
                         float32 or (--dtype bfloat16) bfloat16; no optimizer state, no sort head
    video.stablehlo        params, uint8 [b, T, H, W, 3] -> float32 [b, E]            (projected CLS)
    video_tokens.stablehlo params, uint8 [b, T, H, W, 3] -> float32 [b, 1 + T*N, E]   (every projected token)
    image.stablehlo        params, uint8 [b, H, W, 3]    -> float32 [b, E]            (each frame as a 1-frame clip)
    text.stablehlo         params, int32 [b, L]          -> float32 [b, E]            (projected EOT token)
    vocab.txt            TVTS v1 only: the WordPiece vocabulary (the spec's vocab_path then reads 'vocab.txt')

A TVTS v1 model (variants 'v1-...') exports the same four programs: its tokens are [b, 1 + tubes*N, E] (tubes = T / 2;
one frame is one tube), its text embedding the projected first ([CLS]) token of DistilBERT.

Each .stablehlo file is a serialized `jax.export.Exported` with a symbolic batch dimension `b`, lowered for
--platforms (default cpu, cuda and tpu). The programs take the parameters as an argument (a dict keyed by the
safetensors names of their tower) instead of closing over them: the programs stay a few hundred KB for any variant,
the weights are stored once, and a bfloat16 copy needs no second export. Pixel normalisation runs inside the video
programs; the parameters are cast to float32 inside, and the model computes in its compute dtype (the run's
config.model.dtype, or --compute_dtype).

`tvts.backbone.load(DIR)` runs them with JAX alone.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from tvts import backbone as backbone_lib
from tvts.models.inputs import NORMALIZATIONS, PreprocessSpec, normalize
from tvts.models.tvts_v1 import TVTSv1
from tvts.models.tvtsv2 import TVTSv2
from tvts.models.variants import V1Variant, Variant, is_v1

VOCAB_FILE = "vocab.txt"  # a WordPiece backbone's vocabulary, beside backbone.json

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
PARAM_DTYPES = ("float32", "bfloat16")
TOWERS = ("video", "text")
FUNCTIONS = ("video", "video_tokens", "image", "text")  # all exported; tvts.backbone.load can pick a subset


# -----------------------------------------------------------------------------------------------------------------
# Parameters
# -----------------------------------------------------------------------------------------------------------------
def _to_numpy(x) -> np.ndarray:
    """One parameter as host numpy; a sharded array spanning processes is gathered (every process must call)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def backbone_params(params: Any, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The video and text towers of a TVTSv2 parameter tree (the sort head dropped) as flat host arrays
    {'video/.../kernel': array} in `dtype`."""
    if dtype not in PARAM_DTYPES:
        raise ValueError(f"parameter dtype {dtype!r}; use one of {', '.join(PARAM_DTYPES)}")
    missing = [t for t in TOWERS if t not in params]
    if missing:
        raise ValueError(f"the parameters have no {' or '.join(missing)} tower (top level: {sorted(params)})")
    flat = backbone_lib.flatten({t: nn.unbox(params[t]) for t in TOWERS})
    return {k: _to_numpy(v).astype(jnp.dtype(dtype)) for k, v in flat.items()}


# -----------------------------------------------------------------------------------------------------------------
# Programs
# -----------------------------------------------------------------------------------------------------------------
def program_functions(model: TVTSv2 | TVTSv1, spec: PreprocessSpec) -> dict[str, tuple[str, Any]]:
    """name -> (tower, fn(flat tower params, input)). The flat params (any float dtype) are cast to float32 and
    nested; the model then computes in its own dtype. These are also the Flax reference the tests compare with."""
    family = type(model)  # TVTSv2 or TVTSv1: the same encode_video / encode_text

    def tree(flat):
        return backbone_lib.unflatten({k: v.astype(jnp.float32) for k, v in flat.items()})

    def tokens(flat, frames):
        video = normalize(frames, spec.normalization)
        return model.apply({"params": tree(flat)}, video, None, method=family.encode_video)

    def video(flat, frames):
        return tokens(flat, frames)[:, 0]

    def image(flat, frames):
        return tokens(flat, frames[:, None])[:, 0]

    def text(flat, ids):
        return model.apply({"params": tree(flat)}, ids, method=family.encode_text)

    return {"video": ("video", video), "video_tokens": ("video", tokens), "image": ("video", image),
            "text": ("text", text)}


def program_inputs(spec: PreprocessSpec, batch: Any) -> dict[str, jax.ShapeDtypeStruct]:
    t, s = spec.num_frames, spec.image_size
    return {"video": jax.ShapeDtypeStruct((batch, t, s, s, 3), jnp.uint8),
            "video_tokens": jax.ShapeDtypeStruct((batch, t, s, s, 3), jnp.uint8),
            "image": jax.ShapeDtypeStruct((batch, s, s, 3), jnp.uint8),
            "text": jax.ShapeDtypeStruct((batch, spec.context_length), jnp.int32)}


def _signature(aval) -> dict[str, Any]:
    return {"dtype": str(aval.dtype), "shape": [d if isinstance(d, int) else str(d) for d in aval.shape]}


def _write_bytes(path, data: bytes) -> None:
    if backbone_lib._is_local(path):
        tmp = f"{path}.partial"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        backbone_lib._path(path).write_bytes(data)


def export_backbone(out_dir, model: TVTSv2 | TVTSv1, params: Any, spec: PreprocessSpec, *, param_dtype: str = "float32",
                    platforms: Sequence[str] = DEFAULT_PLATFORMS, source: dict[str, Any] | None = None,
                    functions: Sequence[str] = FUNCTIONS) -> dict[str, Any]:
    """Writes the backbone of `model` with `params` (a TVTSv2 tree; the sort head, if present, is dropped) into
    `out_dir` and returns its backbone.json contents. backbone.json is written last: a directory without it is an
    interrupted export. Multi-process: every process calls (sharded parameters are gathered), process 0 writes."""
    start = time.perf_counter()
    variant: Variant | V1Variant = model.variant
    model = model.for_inference()  # the same forward values, simpler and faster programs
    if spec.image_size != variant.video.image_size:
        raise ValueError(f"spec image_size {spec.image_size} != the variant's {variant.video.image_size}")
    if not 1 <= spec.num_frames <= variant.video.max_frames:
        raise ValueError(f"spec num_frames {spec.num_frames} outside [1, {variant.video.max_frames}]")
    if spec.context_length > variant.text.context_length:
        raise ValueError(f"spec context_length {spec.context_length} > the text tower's {variant.text.context_length}")
    if is_v1(variant) and spec.num_frames != 1 and spec.num_frames % variant.video.tubelet_size:
        raise ValueError(f"spec num_frames {spec.num_frames} do not fill whole tubelets of "
                         f"{variant.video.tubelet_size} frames")
    if spec.tokenizer == "wordpiece" and not spec.vocab_path:
        raise ValueError("a WordPiece spec needs its vocab_path (the vocab.txt the backbone ships)")
    flat = backbone_params(params, param_dtype)
    if jax.process_index() != 0:
        return {}

    local = backbone_lib._is_local(out_dir)
    if local:
        os.makedirs(out_dir, exist_ok=True)
    else:
        backbone_lib._path(out_dir).mkdir(parents=True, exist_ok=True)
    info_path = backbone_lib._join(out_dir, backbone_lib.INFO_FILE)
    if local and os.path.exists(info_path):
        os.remove(info_path)  # the directory is incomplete until the new backbone.json lands

    if spec.tokenizer == "wordpiece":  # the vocabulary travels with the backbone; the spec then names it relatively
        vocab = backbone_lib._path(spec.vocab_path)
        data = vocab.read_bytes() if not isinstance(vocab, str) else open(vocab, "rb").read()
        _write_bytes(backbone_lib._join(out_dir, VOCAB_FILE), data)
        spec = dataclasses.replace(spec, vocab_path=VOCAB_FILE)

    params_bytes = backbone_lib.write_safetensors(
        backbone_lib._join(out_dir, backbone_lib.PARAMS_FILE), flat,
        {"format": backbone_lib.FORMAT, "variant": variant.name, "dtype": param_dtype})

    (batch,) = jax_export.symbolic_shape("b")
    fns, inputs = program_functions(model, spec), program_inputs(spec, batch)
    programs: dict[str, Any] = {}
    exported = None
    for name in functions:
        tower, fn = fns[name]
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items() if k.startswith(tower + "/")}
        exported = jax_export.export(jax.jit(fn), platforms=tuple(platforms))(abstract, inputs[name])
        data = bytes(exported.serialize())
        file = f"{name}.stablehlo"
        _write_bytes(backbone_lib._join(out_dir, file), data)
        programs[name] = {"file": file, "params": f"{tower}/*", "input": _signature(exported.in_avals[-1]),
                          "output": _signature(exported.out_avals[0]), "bytes": len(data)}

    import jaxlib

    info = {
        "format": backbone_lib.FORMAT,
        "format_version": backbone_lib.FORMAT_VERSION,
        "variant": {**dataclasses.asdict(variant), "family": "tvts_v1" if is_v1(variant) else "tvtsv2"},
        "spec": spec.to_dict(),
        "embed_dim": variant.joint_dim,
        "param_dtype": param_dtype,
        "compute_dtype": jnp.dtype(model.dtype).name,
        "params_file": backbone_lib.PARAMS_FILE,
        "params_bytes": params_bytes,
        "num_params": int(sum(v.size for v in flat.values())),
        "functions": programs,
        "platforms": list(platforms),
        "calling_convention_version": exported.calling_convention_version if exported else None,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "source": source or {},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "export_seconds": round(time.perf_counter() - start, 2),
    }
    _write_bytes(info_path, (json.dumps(info, indent=1) + "\n").encode())
    return info


# -----------------------------------------------------------------------------------------------------------------
# Where the parameters come from
# -----------------------------------------------------------------------------------------------------------------
def _restore_towers(directory, abstract_params: Any, shardings: Any, step: int | None = None) -> dict[str, Any]:
    """The video and text towers of a checkpoint directory, via tvts.checkpoint.restore_params onto the whole
    model's abstract params (a stored sort head is read too, and dropped); every tower leaf must be there."""
    from tvts.checkpoint import restore_params, with_shardings

    target = with_shardings(abstract_params, shardings)
    restored = restore_params(directory, target, step)
    want = backbone_lib.flatten({t: abstract_params[t] for t in TOWERS})
    have = backbone_lib.flatten({t: restored.get(t, {}) for t in TOWERS})
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{directory} lacks {len(missing)} parameters of the video/text towers, so it is not a "
                         f"complete model (converted pretrained weights lack what the model adds to them: TVTSv2's "
                         f"time attention, TVTS v1's projections and temporal embedding; train from them first): "
                         f"{', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    return {t: restored[t] for t in TOWERS}


def from_workdir(workdir, step: int | None = None):
    """(model, tower params, spec, source) of a run: its config.json, the newest (or given) checkpoint, on one
    device."""
    from etils import epath

    from tvts import sharding
    from tvts.checkpoint import Checkpointer
    from tvts.evaluate import run_config
    from tvts.state import make_setup

    config = run_config(workdir)
    setup = make_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        raise FileNotFoundError(f"{directory} does not exist: no checkpoint to export")
    if step is None:
        ckpt = Checkpointer(directory)
        step = ckpt.latest_step()
        ckpt.close()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
    params = _restore_towers(directory, setup.abstract_state["params"], setup.params_sharding, step)
    source = {"workdir": str(workdir), "step": int(step), "config_variant": config.model.variant}
    return setup.model, params, setup.spec, source


def init_variant(init_dir) -> str | None:
    """The variant a params-only directory's metadata names, if it names one."""
    try:
        from tvts.checkpoint import read_meta

        meta = read_meta(init_dir)
    except (ImportError, FileNotFoundError, KeyError, ValueError):
        return None
    name = meta.get("variant")
    return name if isinstance(name, str) else None


def from_init(init_dir, variant_name: str | None = None, *, num_frames: int = 12, normalization: str = "imagenet",
              context_length: int = 0, compute_dtype: str = "float32", text_num_frozen: int = -1,
              vocab_path: str = ""):
    """(model, tower params, spec, source) of a params-only checkpoint directory (what `--config.init` takes: the
    weight converters' output, or another run's checkpoints/), restored onto the variant's abstract params with
    tvts.checkpoint.restore_params. The variant comes from the directory's metadata when it records one; the spec
    is given (such a directory does not store it; a TVTS v1 variant needs the WordPiece `vocab_path`)."""
    import ml_collections

    from tvts import config as config_lib
    from tvts.models.tvtsv2 import abstract_params

    variant_name = variant_name or init_variant(init_dir)
    if not variant_name:
        raise ValueError(f"{init_dir} does not record its variant: pass --variant")
    variant = config_lib.model_variant(ml_collections.ConfigDict(dict(variant=variant_name,
                                                                       text_num_frozen=text_num_frozen)))
    if is_v1(variant) and not vocab_path:
        raise ValueError(f"{variant.name} tokenizes with WordPiece: pass --vocab (its DistilBERT's vocab.txt)")
    if is_v1(variant):
        from tvts.models.tvts_v1 import abstract_params as v1_abstract_params

        model, abstract = TVTSv1(variant, jnp.dtype(compute_dtype)), nn.unbox(v1_abstract_params(variant))
    else:
        model, abstract = TVTSv2(variant, jnp.dtype(compute_dtype)), nn.unbox(abstract_params(variant))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = _restore_towers(init_dir, abstract, jax.tree.map(lambda _: one, abstract))
    spec = PreprocessSpec(num_frames=num_frames, image_size=variant.video.image_size, normalization=normalization,
                          context_length=context_length or variant.text.context_length,
                          tokenizer="wordpiece" if is_v1(variant) else "clip_bpe",
                          vocab_path=os.path.abspath(vocab_path) if is_v1(variant) else "")
    return model, params, spec, {"init": str(init_dir)}


def export_run(setup, params: Any, out_dir, *, workdir=None, step: int | None = None, param_dtype: str = "float32",
               platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict[str, Any]:
    """The trainer's hook: export a live run's (possibly sharded) parameters, e.g. at the end of training. Every
    process calls it; process 0 writes."""
    source = {"workdir": None if workdir is None else str(workdir), "step": step,
              "config_variant": setup.config.model.variant}
    return export_backbone(out_dir, setup.model, params, setup.spec, param_dtype=param_dtype, platforms=platforms,
                           source={k: v for k, v in source.items() if v is not None})


# -----------------------------------------------------------------------------------------------------------------
# Program
# -----------------------------------------------------------------------------------------------------------------
def describe(info: dict[str, Any], out_dir) -> str:
    mb = lambda n: f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"
    programs = ", ".join(f"{k} {mb(v['bytes'])}" for k, v in info["functions"].items())
    return (f"wrote {out_dir}: {info['variant']['name']} (E={info['embed_dim']}), {info['num_params']:,} parameters "
            f"in {info['param_dtype']} ({mb(info['params_bytes'])}); programs for {'/'.join(info['platforms'])}: "
            f"{programs}; spec {info['spec']}; {info['export_seconds']} s")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tvts.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a training run's workdir (config.json + checkpoints/)")
    src.add_argument("--init", help="a params-only checkpoint directory (converted weights)")
    p.add_argument("--out", required=True, help="the backbone directory to write")
    p.add_argument("--step", type=int, default=None, help="--workdir: checkpoint step (default: newest)")
    p.add_argument("--dtype", default="float32", choices=PARAM_DTYPES, help="stored parameter dtype")
    p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS), help="lowering platforms, comma-separated")
    g = p.add_argument_group("--init only (a converted directory carries no config)")
    g.add_argument("--variant", help="variant name (tiny, B/32, B/16, L/14, H/14, g/14, G/14, v1-B/16, v1-tiny); "
                   "default: the one the directory's metadata records")
    g.add_argument("--vocab", default="", help="TVTS v1: the WordPiece vocab.txt (copied into the backbone)")
    g.add_argument("--num_frames", type=int, default=12)
    g.add_argument("--normalization", default="imagenet", choices=sorted(NORMALIZATIONS))
    g.add_argument("--context_length", type=int, default=0, help="0: the text tower's")
    g.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    g.add_argument("--text_num_frozen", type=int, default=-1, help="-1: the variant's (only the tree layout)")
    args = p.parse_args(argv)

    try:
        if args.init:
            model, params, spec, source = from_init(args.init, args.variant, num_frames=args.num_frames,
                                                    normalization=args.normalization,
                                                    context_length=args.context_length,
                                                    compute_dtype=args.compute_dtype,
                                                    text_num_frozen=args.text_num_frozen, vocab_path=args.vocab)
        else:
            model, params, spec, source = from_workdir(args.workdir, args.step)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"tvts.export: {err}") from None
    platforms = tuple(x.strip() for x in args.platforms.split(",") if x.strip())
    info = export_backbone(args.out, model, params, spec, param_dtype=args.dtype, platforms=platforms,
                           source=source)
    if info:
        print(describe(info, args.out))
    return info


if __name__ == "__main__":
    main()
