"""What is on at each point of training: sources, parameter groups and loss terms, with named counters.

Three counters, three numbers:
- **iteration**: one pass of the loop, `0 <= iteration < total_iterations` (`config.total_steps`). Data is
  a function of the iteration, and checkpoints are labelled by the iterations done (the **checkpoint step**).
- **update**: one optimizer update, the state's `step`. Each iteration takes one update per source that has
  started (`data.source_start`), so updates outnumber iterations once both sources run.
Fractions in the config (`data.source_start`, `optim.group_start`, `loss.transcribed_contrastive_start`) are
fractions of the iterations; groups and the contrastive term are switched at the first update of that iteration,
so they stay at their fraction of training however many sources run.
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Mapping
from typing import Any

SOURCES = ("transcribed", "captioned", "images")  # images: captioned images, one frame (TVTS v1's CC3M)
DEFAULT_SOURCES = ("transcribed", "captioned")


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one update sees: the groups that have not started yet (held: no gradient, optimizer state kept) and
    the weight of the contrastive term on transcribed batches (0: left out; captioned batches have no other
    term and always weigh it 1)."""

    waiting: frozenset[str]
    transcribed_weight: float


@dataclasses.dataclass(frozen=True)
class Curriculum:
    total_iterations: int
    sources: tuple[str, ...]  # update order within an iteration
    source_start_fraction: Mapping[str, float]
    group_start_fraction: Mapping[str, float]
    contrastive_start_fraction: float  # the transcribed contrastive term's
    transcribed_contrastive_weight: float

    @classmethod
    def from_config(cls, config: Any) -> Curriculum:
        return cls(total_iterations=config.total_steps, sources=tuple(config.data.sources),
                   source_start_fraction=dict(config.data.source_start),
                   group_start_fraction=dict(config.optim.group_start),
                   contrastive_start_fraction=config.loss.transcribed_contrastive_start,
                   transcribed_contrastive_weight=config.loss.transcribed_contrastive_weight)

    # --- iterations ---
    def iteration_at(self, fraction: float) -> int:
        return int(fraction * self.total_iterations)

    def source_start_iterations(self) -> dict[str, int]:
        """The iteration from which each source takes its update."""
        return {k: self.iteration_at(self.source_start_fraction.get(k, 0.0)) for k in self.sources}

    def active_sources(self, iteration: int) -> tuple[str, ...]:
        """The sources that take an update at `iteration`, in their update order."""
        starts = self.source_start_iterations()
        return tuple(k for k in self.sources if iteration >= starts[k])

    # --- updates ---
    def update_index(self, iteration: int, kind: str | None = None) -> int:
        """The index of `iteration`'s first update, or of its `kind` update: the updates of all iterations before."""
        before = sum(max(iteration - start, 0) for start in self.source_start_iterations().values())
        return before if kind is None else before + self.active_sources(iteration).index(kind)

    @property
    def total_updates(self) -> int:
        return self.update_index(self.total_iterations)

    def iteration_of_update(self, update: int) -> int:
        return bisect.bisect_right(range(self.total_iterations + 1), update, key=self.update_index) - 1

    def start_update(self, fraction: float) -> int:
        """The first update of the iteration at `fraction` of training."""
        return self.update_index(self.iteration_at(fraction))

    def group_start_updates(self, groups) -> dict[str, int]:
        """The update at which each of `groups` starts (0: at once)."""
        return {g: self.start_update(self.group_start_fraction.get(g, 0.0)) for g in groups}

    def phase(self, update: int, kind: str, groups) -> Phase:
        waiting = frozenset(g for g, start in self.group_start_updates(groups).items() if update < start)
        weight = 1.0
        if kind == "transcribed":
            on = update >= self.start_update(self.contrastive_start_fraction)
            weight = self.transcribed_contrastive_weight if on else 0.0
        return Phase(waiting, weight)
