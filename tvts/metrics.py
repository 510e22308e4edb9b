"""Where metrics go: TensorBoard event files, the console, a JSON-lines log and PNG plots.

Only process 0 writes (`enabled=False` elsewhere makes every call a no-op).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Mapping

SUMMARY_KEYS = ("loss", "contrastive_loss", "sort_loss", "sort_accuracy", "clips_per_sec")


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self._tb = self._log = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._log = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def text(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled or not values:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, float(v), step)
        self._log.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        self._log.flush()

    @staticmethod
    def summary_line(values: Mapping[str, float]) -> str:
        parts = []
        for key in SUMMARY_KEYS:
            for name, v in values.items():
                if name.split("/")[-1] == key:
                    prefix = name.split("/")[0][:4] + ":" if "/" in name else ""
                    parts.append(f"{prefix}{key.replace('_accuracy', '_acc')}={v:.3g}")
        return " ".join(parts)

    def plot_history(self, history: Mapping[str, list]) -> None:
        if self.enabled and history:
            from tvts.evaluators.plots import plot_training_curves

            keep = {k: v for k, v in history.items() if k.split("/")[-1] in SUMMARY_KEYS}
            plot_training_curves(keep, os.path.join(self.workdir, "training_curves.png"))

    def report(self, values: Mapping[str, float]) -> None:
        if self.enabled:
            self.report_to_console(values)

    @staticmethod
    def report_to_console(values: Mapping[str, float]) -> None:
        width = max((len(k) for k in values), default=0)
        print("\n".join(["", "final evaluation:"] + [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(values.items())]),
              flush=True)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._log.close()
