"""Weight converters: released checkpoints -> this codebase's parameter tree, and back to the official TVTSv2 names.

One module per source, each with `to_params(state_dict, variant)` (and `convert`, which also says what was loaded,
dropped and left to the run's init):

    tvts.convert.openai_clip   OpenAI CLIP ViT-B/32, B/16, L/14 (TorchScript .pt or state dicts)
    tvts.convert.open_clip     OpenCLIP ViT-H/14, g/14, bigG/14
    tvts.convert.tvtsv2        the official TVTSv2 checkpoints; also `from_params(params, variant)`

`tvts.convert.io.load_state_dict(path)` reads .safetensors (no torch) and .pt/.pth/.bin (torch, the `convert` extra).
The command line (`python -m tvts.convert --help`) writes a params-only checkpoint directory for `--config.init=DIR`
(`tvts.checkpoint.save_params`). See docs/convert.md.
"""
SOURCES = ("openai_clip", "open_clip", "tvtsv2")


def source_module(name: str):
    """The converter module of a source name."""
    import importlib

    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return importlib.import_module(f"tvts.convert.{name}")
