"""Command-line tools, run from the repository root as modules (`python -m tools.NAME --help`):

- `model_summary`: parameter counts of a variant, by tower and optimizer group, without allocating anything;
- `plan_memory`: per-device memory, FLOPs and collectives of the train step on a simulated TPU-pod mesh;
- `bench_step`: train-step time of config variants, measured in one run;
- `make_corpus`: the synthetic corpus written as YT-Temporal / WebVid files.

`tools.research` holds the diagnostics behind docs/tiny_recipe.md.
"""
