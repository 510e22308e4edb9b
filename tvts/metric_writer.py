"""Where metrics go: TensorBoard event files, the console, a JSON-lines log and PNG plots.

Only process 0 writes (`enabled=False` elsewhere makes every call a no-op).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Mapping

SUMMARY_KEYS = ("loss", "contrastive_loss", "sort_loss", "sort_accuracy", "clips_per_sec")
# Evaluators report the same metric for other references as 'NAME/<reference>/metric' next to 'NAME/metric'.
REFERENCES = {"no_time_attn": "time attn off", "init": "random init", "chance": "chance / base"}


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
        print(format_report(values), flush=True)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._log.close()


def format_report(values: Mapping[str, float]) -> str:
    """The final metrics as a table: one row per metric, its references ('NAME/init/m', 'NAME/chance/m') beside it."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/")
        column = parts[1] if len(parts) > 2 and parts[1] in REFERENCES else ""
        metric = "/".join(parts[:1] + parts[2:]) if column else key
        rows.setdefault(metric, {})[column] = value
    columns = [""] + [c for c in REFERENCES if any(c in r for r in rows.values())]
    headers = {"": "trained", **REFERENCES}
    width = max([len(m) for m in rows] + [len("final evaluation")])
    lines = ["", f"{'final evaluation':<{width}}" + "".join(f"  {headers[c]:>14}" for c in columns)]
    for metric in sorted(rows):
        cells = (f"{rows[metric][c]:.4f}" if c in rows[metric] else "" for c in columns)
        lines.append(f"{metric:<{width}}" + "".join(f"  {cell:>14}" for cell in cells))
    return "\n".join(lines)
