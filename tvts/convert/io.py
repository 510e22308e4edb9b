"""Source checkpoints as lazy `name -> float32 numpy array` mappings, and a streaming .safetensors writer.

- `.safetensors`: read here, without torch and without mapping the file: each tensor is read with one positioned
  read when it is asked for, so converting holds the output plus one source tensor (the page cache is not the
  process's memory). F16, BF16 (through ml_dtypes, which jax brings) and the other safetensors dtypes.
- `.pt` / `.pth` / `.bin`: torch (the optional `convert` extra). OpenAI's TorchScript archives are loaded with
  `torch.jit.load`; other files with `torch.load(mmap=True)`, first with `weights_only=True`, then, for checkpoints
  that pickle other objects beside the tensors (the official TVTSv2 trainer saves its `config` object), with an
  unpickler that rebuilds tensors and standard containers only and leaves every other object an inert stub: no
  code from the file runs.
- A `{'state_dict': ...}` wrapper (or MAE's `{'model': ...}`) is unwrapped and a DDP `module.` prefix (on every key)
  is removed.
- Floating tensors come back as float32 (fp16 and bf16 are upcast); integer tensors as they are.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


_ML_FLOATS = tuple(np.dtype(d) for d in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2))


def is_float(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype in _ML_FLOATS


def upcast(x: np.ndarray) -> np.ndarray:
    """Floating arrays as float32 (the array itself when already float32); others unchanged."""
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if is_float(x.dtype) else x


class StateDict(Mapping):
    """A read-only, lazy state dict: `sd[name]` reads that tensor (as float32 if floating) when asked;
    `sd.shape(name)` and `sd.dtype(name)` read nothing."""

    def __init__(self, entries: dict[str, tuple[tuple[int, ...], str, Callable[[], np.ndarray]]], source: str):
        self._entries = entries  # name -> (shape, source dtype name, reader)
        self.source = source

    def __getitem__(self, name: str) -> np.ndarray:
        return upcast(self._entries[name][2]())

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][0]

    def dtype(self, name: str) -> str:
        return self._entries[name][1]

    def renamed(self, fn: Callable[[str], str]) -> StateDict:
        return StateDict({fn(k): v for k, v in self._entries.items()}, self.source)


def shape_of(state_dict: Mapping[str, Any], name: str) -> tuple[int, ...]:
    """A tensor's shape without reading it where the mapping allows."""
    return tuple(state_dict.shape(name)) if isinstance(state_dict, StateDict) else tuple(np.shape(state_dict[name]))


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """A checkpoint file as a lazy StateDict (see the module docstring for the formats)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path}")
    if path.endswith(".safetensors"):
        sd = read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        sd = read_torch(path)
    else:
        raise ValueError(f"{path}: unknown checkpoint format; use .safetensors, or .pt/.pth/.bin/.ckpt (torch)")
    return strip_ddp_prefix(sd)


def strip_ddp_prefix(sd: Any) -> Any:
    """Without DDP's `module.` prefix when every key has it (a StateDict or a plain dict)."""
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        strip = len("module.")
        return sd.renamed(lambda k: k[strip:]) if isinstance(sd, StateDict) else {k[strip:]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------------------------------- safetensors

def read_safetensors(path: str) -> StateDict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    start = 8 + size
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know")
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name}: {end - begin} bytes for shape {shape} of {info['dtype']}")

        def read(begin=begin, end=end, dtype=dtype, shape=shape):
            out = np.empty(shape, dtype)
            with open(path, "rb") as f:
                f.seek(start + begin)
                if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != end - begin:
                    raise ValueError(f"{path}: truncated file")
            return out

        entries[name] = (shape, info["dtype"], read)
    return StateDict(entries, path)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes tensors one at a time (each made contiguous on its own), in the order given."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, x in tensors.items():
        dtype = np.dtype(x.dtype)
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name}: dtype {dtype} cannot be written to safetensors")
        nbytes = int(np.prod(x.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(x.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as the reference writer does
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for x in tensors.values():
            f.write(memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8)))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------- torch

def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading .pt/.pth/.bin checkpoints needs torch: pip install -e '.[convert]' "
                          "(or convert the file to .safetensors elsewhere)") from None
    return torch


def is_torchscript(path: str) -> bool:
    """TorchScript archives (OpenAI's CLIP .pt files) carry code/ beside the data; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/")[1:2] == ["code"] for n in z.namelist())


class _Opaque:
    """Stands for any pickled object that is not a tensor or a standard container: nothing of it runs."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()


def _stub_pickle_module():
    torch = _torch()
    allowed = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
               ("builtins", "slice"), ("builtins", "complex"), ("torch", "Size"), ("torch", "device")}
    allowed_modules = {"torch._utils", "torch._tensor"}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module in allowed_modules and name.startswith("_rebuild"):
                return super().find_class(module, name)
            if (module, name) in allowed:
                return super().find_class(module, name)
            if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
                return super().find_class(module, name)
            return _Opaque

    class Module:  # what torch.load expects of a pickle_module
        pass

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    Module.__name__ = "tvts_stub_pickle"
    return Module


def read_torch(path: str) -> StateDict:
    torch = _torch()
    if is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, and still reads these
            warnings.simplefilter("ignore", DeprecationWarning)
            obj = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be memory-mapped
        try:
            obj = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        except pickle.UnpicklingError:
            obj = torch.load(path, map_location="cpu", mmap=mmap, weights_only=False,
                             pickle_module=_stub_pickle_module())
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # MAE's checkpoints (`mae_pretrain_vit_base.pth`: {'model': ...})
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    entries = {}
    for name, t in obj.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")

        def read(t=t):
            if t.dtype == torch.bfloat16:
                return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return t.detach().numpy()

        entries[name] = (tuple(t.shape), str(t.dtype).removeprefix("torch."), read)
    return StateDict(entries, path)
