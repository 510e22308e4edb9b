"""Evaluator types by the name a config entry gives in `type`."""
from __future__ import annotations

from typing import Any

from tvts.evaluators.benchmarks import EVALUATORS as BENCHMARK_EVALUATORS
from tvts.evaluators.common import Evaluator
from tvts.evaluators.synthetic_heldout import SyntheticHeldout
from tvts.models.inputs import PreprocessSpec

EVALUATORS: dict[str, type[Evaluator]] = {
    "synthetic_heldout": SyntheticHeldout,
    **BENCHMARK_EVALUATORS,  # msrvtt_retrieval, ucf101_zeroshot, ... (tvts/evaluators/benchmarks.py)
}


def check_entries(evals_cfg: Any, process_count: int = 1) -> None:
    """Fail on an unknown evaluator type, or a benchmark evaluator in a multi-process run (they run on one process),
    naming the entry: before training starts, not at its end (called by the trainer with jax.process_count())."""
    for name, entry in evals_cfg.items():
        if process_count > 1 and entry.get("type") in BENCHMARK_EVALUATORS:
            raise ValueError(f"config.evals.{name}.type={entry.get('type')!r}: the benchmark evaluators run on one "
                             f"process and this run has {process_count}; drop the entry and evaluate the exported "
                             f"backbone afterwards (python -m tvts.evaluate --backbone ... --task "
                             f"{entry.get('type')})")
        if entry.get("type") not in EVALUATORS:
            builtin = sorted(k for k in EVALUATORS if k not in BENCHMARK_EVALUATORS)
            raise ValueError(f"config.evals.{name}.type={entry.get('type')!r}: known evaluators {builtin} and the "
                             f"benchmarks {sorted(BENCHMARK_EVALUATORS)} (tvts/evaluators/benchmarks.py)")


def make_evaluators(evals_cfg: Any, data_cfg: Any, spec: PreprocessSpec, output_dir: Any = None) -> list[Evaluator]:
    import jax

    check_entries(evals_cfg, jax.process_count())
    return [EVALUATORS[entry.type](name, entry, data_cfg, spec, output_dir) for name, entry in evals_cfg.items()]


def run_final(evaluators: list[Evaluator], encoders, references: dict, labels: dict[str, str]
              ) -> tuple[dict[str, float], dict[str, str]]:
    """Every evaluator's final figures, with the references beside them; and the report's column labels (the
    references' and those the evaluators add, e.g. chance)."""
    metrics: dict[str, float] = {}
    for ev in evaluators:
        metrics.update(ev.run(encoders, final=True, references=references))
    return metrics, {**labels, **reference_labels(evaluators)}


def reference_labels(evaluators: list[Evaluator]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ev in evaluators:
        out.update(ev.REFERENCE_LABELS)
    return out
