"""PNG plots of evaluation results.

Uses Matplotlib's object-oriented API with the Agg canvas directly (no ``pyplot``): no GUI
backend, no global figure state, safe in headless and multi-threaded processes, and the
process-wide backend selection of other code is left alone.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path) -> None:
    """Writes through etils.epath, so a plot can go to gs:// as well as to a local folder."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format='png', dpi=100)
    path.write_bytes(buffer.getvalue())


def plot_recall_curves(curves: Mapping[str, np.ndarray], path: str, title: str = '', *,
                       ks: Sequence[int] | None = None) -> None:
    """R@K (percent) against K, one line per entry of ``curves``, saved as PNG.

    Args:
      curves: name -> ``R@K`` values, e.g. from :func:`tvts.evaluators.retrieval.recall_at_k_curve`.
      path: output file (parent directories are created).
      title: figure title.
      ks: the K of each value; default ``1 .. len(curve)`` (the ``recall_at_k_curve`` default).
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64).reshape(-1)
        x = np.arange(1, curve.size + 1) if ks is None else np.asarray(list(ks))
        if x.shape != curve.shape:
            raise ValueError(f'{name}: {curve.size} values for {x.size} K values')
        ax.plot(x, curve, label=str(name))
    ax.set_xlabel('K')
    ax.set_ylabel('R@K (%)')
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc='lower right')
    else:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_training_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str) -> None:
    """One subplot per metric (value against step), saved as PNG.

    Args:
      history: metric name -> ``[(step, value), ...]`` (any order; sorted by step here).
      path: output file (parent directories are created).
    """
    names = list(history)
    n = max(1, len(names))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    if not names:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = sorted((int(s), float(v)) for s, v in history[name])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker='.' if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
        ax.set_title(str(name), fontsize=10)
        ax.set_xlabel('step')
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
