"""The evaluator contract, shared by the trainer and standalone evaluation.

A config entry `config.evals.NAME = dict(type=..., every=N, ...)` builds an evaluator from the registry
(`tvts.evaluators.registry`). An evaluator has `due(iteration, total_iterations)` and
`run(encoders, final=False, references={}) -> {f'{NAME}/metric': value}`: it sees encoders (`tvts.encoders`),
never the trainer. `references` are other encoders to report beside the main ones (for example the random
initialisation), as `NAME/<reference>/metric`. `every=0` runs only at the end of training.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tvts.encoders import Encoders
from tvts.models.inputs import PreprocessSpec


class Evaluator:
    """Base: scheduling and naming. Subclasses implement `compute(encoders, final, references) -> dict`."""

    # Columns of the final report this evaluator adds beside the references it is given: {key: label}.
    REFERENCE_LABELS: Mapping[str, str] = {}

    def __init__(self, name: str, cfg: Any, data_cfg: Any, spec: PreprocessSpec, output_dir: Any = None):
        self.name, self.cfg, self.data_cfg, self.spec, self.output_dir = name, cfg, data_cfg, spec, output_dir
        self.every = int(cfg.get("every", 0))

    def due(self, iteration: int, total_iterations: int) -> bool:
        return self.every > 0 and iteration % self.every == 0 and iteration != total_iterations

    def run(self, encoders: Encoders, final: bool = False,
            references: Mapping[str, Encoders] | None = None) -> dict[str, float]:
        values = self.compute(encoders, final, dict(references or {}))
        return {f"{self.name}/{k}": float(v) for k, v in values.items()}

    def compute(self, encoders: Encoders, final: bool, references: dict[str, Encoders]) -> dict[str, float]:
        raise NotImplementedError
