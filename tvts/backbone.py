"""A frozen TVTSv2 backbone exported by `python -m tvts.export`, run with JAX alone.

    from tvts import backbone
    bb = backbone.load("workdirs/demo/backbone")
    bb.encode_video(frames)                  # uint8 [B, T, H, W, 3] at the spec's frames and size -> float32 [B, E]
    bb.encode_text(["a person dancing"])     # strings (or int32 token arrays) -> float32 [B, E]
    bb.spec                                  # the preprocessing spec, a dict (also readable as bb.spec.num_frames)

The artefact (docs/backbone.md) is a directory with `backbone.json` (variant, spec, dtypes, the functions' files and
signatures), `params.safetensors` (the video and text towers' parameters, '/'-joined names) and one serialized
`jax.export` program (StableHLO) per function. The programs take the parameters as their first argument, so this
module needs neither Flax nor the model code: it imports jax, numpy and, for strings only, the spec's tokenizer
(tvts.data.tokenizer: CLIP's BPE, pure Python; or, for a TVTS v1 backbone, WordPiece from the `tokenizers` library
with the backbone's own vocab.txt). The safetensors file is read and written here with numpy (the format is a
length, a JSON header and raw little-endian bytes), so the `safetensors` package is not needed either.

`Backbone` implements the evaluators' `Encoders` protocol (tvts/encoders.py): encode_video, video_tokens and
encode_text, whose protocol form takes int32 token arrays; encode_text also takes strings, and encode_tokens
takes token arrays only. Embeddings are the projected CLS token (video) and the projected EOT token (text), not
normalised, as the Flax model's.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from tvts.trees import flatten, unflatten

__all__ = ["FORMAT", "FORMAT_VERSION", "INFO_FILE", "PARAMS_FILE", "Backbone", "Spec", "load", "read_safetensors",
           "write_safetensors", "flatten", "unflatten"]

FORMAT = "tvts.backbone"
FORMAT_VERSION = 1
INFO_FILE = "backbone.json"
PARAMS_FILE = "params.safetensors"

# ---------------------------------------------------------------------------------------------------------------
# safetensors, in numpy: u64 little-endian header length, the JSON header, then the tensors' bytes back to back.
# ---------------------------------------------------------------------------------------------------------------
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a JAX dependency

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def write_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Writes `tensors` (name -> array) in the safetensors format (names sorted); returns the file size in bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = "bfloat16" if a.dtype.name == "bfloat16" else a.dtype.name
        if dtype not in _ST_NAMES:
            raise ValueError(f"{name}: dtype {a.dtype} has no safetensors code")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False) if a.dtype.byteorder == ">" else a
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with _open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
    return 8 + len(raw) + offset


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> array, metadata) of a safetensors file. Local files are memory-mapped (read-only)."""
    if _is_local(path):
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        with _open(path, "rb") as f:
            buf = np.frombuffer(f.read(), np.uint8)
    (size,) = struct.unpack("<Q", bytes(buf[:8]))
    header = json.loads(bytes(buf[8:8 + size]).decode())
    metadata = header.pop("__metadata__", None) or {}
    data = buf[8 + size:]
    out = {}
    for name, h in header.items():
        dtype = _np_dtype(_ST_DTYPES[h["dtype"]])
        begin, end = h["data_offsets"]
        out[name] = data[begin:end].view(dtype).reshape(h["shape"])
    return out, metadata


def _is_local(path) -> bool:
    return "://" not in str(path)


def _path(path):
    if _is_local(path):
        return os.fspath(path)
    from etils import epath  # remote folders (gs://) only

    return epath.Path(path)


def _open(path, mode):
    p = _path(path)
    return open(p, mode) if isinstance(p, str) else p.open(mode)


def _join(directory, name):
    return os.path.join(directory, name) if _is_local(directory) else _path(directory) / name


# ---------------------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------------------
class Spec(dict):
    """The preprocessing spec as a dict (the fields of tvts.models.inputs.PreprocessSpec: num_frames, image_size,
    normalization, tokenizer, context_length), also readable as attributes (`spec.num_frames`), as evaluators
    read a PreprocessSpec. `PreprocessSpec.from_dict(spec)` gives the dataclass."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


class Backbone:
    """The video and text encoders of an exported TVTSv2 (see `load`).

    Every call takes a whole batch as numpy (any batch size: the programs have a symbolic batch dimension; each
    new size compiles once) and returns float32 numpy. Inputs are checked against the spec.
    """

    def __init__(self, directory, info: dict[str, Any], params: Mapping[str, jax.Array],
                 programs: Mapping[str, Any]):
        self.directory, self.info = directory, info
        self.spec = Spec(info["spec"])
        self.variant: dict[str, Any] = info["variant"]
        self.embed_dim: int = int(info["embed_dim"])
        self._params = {
            tower: {k: v for k, v in params.items() if k.startswith(tower + "/")} for tower in ("video", "text")}
        self.programs = dict(programs)  # name -> jax.export.Exported
        self._calls = {k: jax.jit(e.call) for k, e in self.programs.items()}  # compiled once per batch size
        self._tokenizer = None

    def __repr__(self):
        return (f"Backbone({self.directory!r}: {self.variant['name']}, E={self.embed_dim}, "
                f"spec={dict(self.spec)}, params {self.info['param_dtype']})")

    # -- video ---------------------------------------------------------------------------------------------------
    def _run(self, name: str, params: str, x: np.ndarray, out_tail: tuple[int, ...]) -> np.ndarray:
        if name not in self._calls:
            raise ValueError(f"this backbone has no {name!r} program (loaded: {', '.join(self._calls)})")
        if x.shape[0] == 0:
            return np.zeros((0, *out_tail), np.float32)
        return np.asarray(self._calls[name](self._params[params], x))

    def _frames(self, frames, shape: tuple[int, ...], what: str) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise TypeError(f"{what}: frames must be uint8 RGB (0-255), got {frames.dtype}")
        if frames.ndim != len(shape) + 1 or frames.shape[1:] != shape:
            raise ValueError(f"{what}: frames of shape {frames.shape}, expected [B, {', '.join(map(str, shape))}] "
                             f"(the spec: {self.spec.num_frames} frames of {self.spec.image_size}x"
                             f"{self.spec.image_size} RGB)")
        return frames

    def encode_video(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] (T = spec.num_frames, H = W = spec.image_size, RGB) -> float32 [B, E]: the
        projected CLS token, not normalised. Pixel normalisation happens inside."""
        s = self.spec
        frames = self._frames(frames, (s.num_frames, s.image_size, s.image_size, 3), "encode_video")
        return self._run("video", "video", frames, (self.embed_dim,))

    def video_tokens(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> every projected token float32 [B, 1 + T*N, E], CLS first (N patches per frame);
        a TVTS v1 backbone: [B, 1 + tubes*N, E] (tubes = T / tubelet_size, at least 1)."""
        s = self.spec
        frames = self._frames(frames, (s.num_frames, s.image_size, s.image_size, 3), "video_tokens")
        n = (s.image_size // self.variant["video"]["patch_size"]) ** 2
        return self._run("video_tokens", "video", frames, (1 + self.token_groups * n, self.embed_dim))

    @property
    def token_groups(self) -> int:
        """Groups of patch tokens per clip: frames (TVTSv2) or tubes (TVTS v1)."""
        return max(self.spec.num_frames // self.variant["video"].get("tubelet_size", 1), 1)

    def frames_in_context(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> float32 [B, G, E]: each frame's projected patch tokens from the whole-clip pass,
        averaged (G = T; a TVTS v1 backbone: per tube). Unlike encode_frames these have seen the other frames
        through the time attention, so they hold the motion a single frame cannot show."""
        return self.frame_means(self.video_tokens(frames))

    def frame_means(self, tokens: np.ndarray) -> np.ndarray:
        """video_tokens' output [B, 1 + G*N, E] -> each group's patch tokens averaged [B, G, E] (CLS dropped)."""
        patches = tokens[:, 1:]
        b, n_tokens, e = patches.shape
        return patches.reshape(b, self.token_groups, n_tokens // self.token_groups, e).mean(2)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float32 [B, E]: each frame encoded alone, as a one-frame clip (temporal embedding
        row 0; the time attention sees that frame only). Per-frame features for tools that pool over time."""
        s = self.spec
        frames = self._frames(frames, (s.image_size, s.image_size, 3), "encode_frames")
        return self._run("image", "video", frames, (self.embed_dim,))

    # -- text ----------------------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings -> int32 [B, context_length] with the spec's tokenizer (CLIP BPE, or WordPiece with the
        backbone's vocab.txt)."""
        if self._tokenizer is None:
            from tvts.data.tokenizer import tokenizer_for_spec

            self._tokenizer = tokenizer_for_spec(self.spec, self.directory)
        return self._tokenizer([texts] if isinstance(texts, str) else list(texts))

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int [B, L] token ids (L <= context_length; shorter rows are zero-padded, which leaves the causal text
        tower's output unchanged, and TVTS v1's DistilBERT masks id 0, [PAD]) -> float32 [B, E]: the projected EOT
        token (TVTS v1: the projected first token), not normalised."""
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"encode_tokens: token ids must be integers, got {tokens.dtype}")
        ctx = self.spec.context_length
        if tokens.ndim != 2 or tokens.shape[1] > ctx:
            raise ValueError(f"encode_tokens: tokens of shape {tokens.shape}, expected [B, L] with L <= {ctx}")
        if tokens.shape[1] < ctx:
            tokens = np.pad(tokens, ((0, 0), (0, ctx - tokens.shape[1])))
        return self._run("text", "text", tokens.astype(np.int32), (self.embed_dim,))

    def encode_text(self, texts: str | Sequence[str] | np.ndarray) -> np.ndarray:
        """Strings (a str or a sequence of them) or int token arrays [B, L] -> float32 [B, E]. The Encoders
        protocol passes token arrays; people pass strings."""
        if isinstance(texts, np.ndarray) and texts.dtype.kind in "US":
            texts = texts.tolist()
        if isinstance(texts, str) or (isinstance(texts, Sequence) and len(texts) and isinstance(texts[0], str)):
            return self.encode_tokens(self.tokenize(texts))
        if isinstance(texts, Sequence) and not len(texts):
            return np.zeros((0, self.embed_dim), np.float32)
        return self.encode_tokens(texts)


def read_info(directory) -> dict[str, Any]:
    path = _join(directory, INFO_FILE)
    try:
        with _open(path, "r") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: not a backbone directory (write one with "
                                f"python -m tvts.export)") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {info['format_version']} is newer than this reader's "
                         f"{FORMAT_VERSION}; update tvts")
    return info


def load(directory, device: jax.Device | None = None, functions: Sequence[str] | None = None) -> Backbone:
    """Loads a backbone directory written by `python -m tvts.export`: parameters onto `device` (default: JAX's
    first device), and the serialized programs (`functions`: a subset of names, default all)."""
    from jax import export as jax_export  # deserialisation needs the `flatbuffers` package

    info = read_info(directory)
    device = device if device is not None else jax.devices()[0]
    flat, _ = read_safetensors(_join(directory, info["params_file"]))
    params = {k: jax.device_put(v, device) for k, v in flat.items()}
    programs = {}
    for name, fn in info["functions"].items():
        if functions is not None and name not in functions:
            continue
        with _open(_join(directory, fn["file"]), "rb") as f:
            programs[name] = jax_export.deserialize(bytearray(f.read()))
    return Backbone(str(directory), info, params, programs)
