"""Results of tvts.codes.evaluate as results.json, results.md (method x bits tables) and map_vs_bits.png."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

TABLE_KEYS = ("mAP@all", "mAP@100", "mAP@20", "P@100", "t2v/R@1", "t2v/R@5", "t2v/R@10")
ORDER = ("conmh", "mecoq", "hcq", "phpq", "lsh", "itq", "pq", "opq")


def _methods(rows: Sequence[dict]) -> list[str]:
    names = {r["method"] for r in rows if r["kind"] != "float"}
    return [m for m in ORDER if m in names] + sorted(names - set(ORDER))


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[dict], key: str, digits: int = 3) -> str | None:
    """A Markdown table of `key`: one row per method, one column per bits, the float reference last."""
    coded = [r for r in rows if r["kind"] != "float" and key in r]
    if not coded:
        return None
    bits = sorted({r["bits"] for r in coded})
    lines = [f"| {key} | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---:|" * len(bits)]
    for method in _methods(coded):
        by_bits = {r["bits"]: r[key] for r in coded if r["method"] == method}
        lines.append(f"| {method} | " + " | ".join(_fmt(by_bits.get(b), digits) for b in bits) + " |")
    for r in rows:
        if r["kind"] == "float" and key in r:
            lines.append(f"| float features ({r['bytes_per_item']} bytes) | "
                         + " | ".join(_fmt(r[key], digits) for _ in bits) + " |")
        if r["kind"] == "float" and f"chance/{key}" in r:
            lines.append("| chance (random ranking) | " + " | ".join(_fmt(r[f"chance/{key}"], digits) for _ in bits)
                         + " |")
    return "\n".join(lines)


def timing_table(rows: Sequence[dict]) -> str:
    coded = [r for r in rows if r["kind"] != "float"]
    lines = ["| method | bits | bytes / item | train s | encode ms / query | search ms / query | "
             "encode ms / db item |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method in _methods(coded):
        for r in sorted((r for r in coded if r["method"] == method), key=lambda r: r["bits"]):
            lines.append(f"| {method} | {r['bits']} | {r['bytes_per_item']} | {_fmt(r.get('train_seconds'), 1)} | "
                         f"{_fmt(r.get('encode_ms_per_query'), 4)} | {_fmt(r.get('search_ms_per_query'), 3)} | "
                         f"{_fmt(r.get('database_encode_ms_per_item'), 4)} |")
    return "\n".join(lines)


def markdown(result: dict, title: str = "") -> str:
    rows = result["rows"]
    head = [f"## {title}" if title else "## Compact codes",
            f"{result['num_queries']} queries ({result['queries']}) against {result['num_database']} items "
            f"({result['database']}); AP normalisation '{result['ap_norm']}', ties '{result['ties']}' "
            "(tvts/codes/metrics.py)."]
    tables = [t for key in TABLE_KEYS if (t := table(rows, key, 1 if key.startswith("t2v") else 3))]
    return "\n\n".join(head + tables + ["Timing (this machine, wall clock):", timing_table(rows)]) + "\n"


def plot(result: dict, path: str, key: str = "mAP@all", title: str = "") -> bool:
    """mAP against bits, one line per method, the float features as a dashed line. False if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    coded = [r for r in rows if r["kind"] != "float" and key in r]
    if not coded:
        return False
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for method in _methods(coded):
        points = sorted((r["bits"], r[key]) for r in coded if r["method"] == method)
        ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=method)
    for r in rows:
        if r["kind"] == "float" and key in r:
            ax.axhline(r[key], color="black", linestyle="--", linewidth=1, label="float features")
        if r["kind"] == "float" and f"chance/{key}" in r:
            ax.axhline(r[f"chance/{key}"], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    bits = sorted({r["bits"] for r in coded})
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.set_xlabel("bits per item")
    ax.set_ylabel(key)
    ax.set_title(title or f"{result['num_queries']} queries, {result['num_database']} items", fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return True


def write(result: dict, out_dir: str, title: str = "") -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(result, title))
    plot(result, os.path.join(out_dir, "map_vs_bits.png"), title=title)
