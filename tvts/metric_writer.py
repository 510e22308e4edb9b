"""Where metrics go: TensorBoard event files, the console, a JSON-lines log and PNG plots.

Every file is written through `etils.epath`, so a workdir can be `gs://bucket/run` as well as a local folder.
Only process 0 writes (`enabled=False` elsewhere makes every call a no-op).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from etils import epath

SUMMARY_KEYS = ("loss", "contrastive_loss", "sort_loss", "sort_accuracy", "clips_per_sec", "mfu")


class _EpathRecordFiles:
    """tensorboardX opens its event files with `open()` unless a factory is registered for the path's scheme;
    this one routes them through epath (tensorboardX's own gs:// writer rewrites the whole file on every flush)."""

    def open(self, path: str):
        return epath.Path(path).open("wb")

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _is_local(path: str) -> bool:
    return "://" not in str(path)


class MetricWriter:
    def __init__(self, workdir, enabled: bool = True, tensorboard: bool = True):
        self.workdir, self.enabled = epath.Path(workdir), enabled
        self._tb = self._log = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter, record_writer

                logdir = str(self.workdir / "tensorboard")
                if not _is_local(logdir):
                    record_writer.register_writer_factory(logdir.split(":")[0], _EpathRecordFiles())
                self._tb = SummaryWriter(logdir)
            log = self.workdir / "metrics.jsonl"
            # a launch killed mid-write (kill -9) can leave a torn last line: start on a line of our own
            tail = log.read_bytes()[-1:] if log.exists() else b""
            torn = tail not in (b"", b"\n")
            self._log = log.open("a")
            if torn:
                self._log.write("\n")

    def text(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled or not values:
            return
        if self._tb is not None:
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
            from tvts.plots import plot_training_curves

            keep = {k: v for k, v in history.items() if k.split("/")[-1] in SUMMARY_KEYS}
            plot_training_curves(keep, self.workdir / "training_curves.png")

    def write_json(self, name: str, values: Mapping) -> None:
        if self.enabled:
            (self.workdir / name).write_text(json.dumps(values, indent=1, sort_keys=True))

    def report(self, values: Mapping[str, float], references: Mapping[str, str]) -> None:
        if self.enabled:
            print(format_report(values, references), flush=True)

    def close(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.close()
            self._log.close()


def format_report(values: Mapping[str, float], references: Mapping[str, str]) -> str:
    """Final metrics as a table: one row per metric, with the same metric for other references
    ('NAME/<reference>/metric', the reference a key of `references`, whose value labels its column) beside it."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key.split("/")
        column = parts[1] if len(parts) > 2 and parts[1] in references else ""
        metric = "/".join(parts[:1] + parts[2:]) if column else key
        rows.setdefault(metric, {})[column] = value
    columns = [""] + [c for c in references if any(c in r for r in rows.values())]
    headers = {"": "trained", **references}
    width = max([len(m) for m in rows] + [len("final evaluation")])
    lines = ["", f"{'final evaluation':<{width}}" + "".join(f"  {headers[c]:>14}" for c in columns)]
    for metric in sorted(rows):
        cells = (f"{rows[metric][c]:.4f}" if c in rows[metric] else "" for c in columns)
        lines.append(f"{metric:<{width}}" + "".join(f"  {cell:>14}" for cell in cells))
    return "\n".join(lines)
