"""Evaluate trained codes: queries against a coded database.

    python -m tvts.codes.evaluate --codes CODES_DIR [CODES_DIR ...] --queries QUERY.npz --database DB.npz
        --out RESULTS_DIR [--ap_norm retrieved|min|ssvh] [--ties index|pessimistic]

A CODES_DIR may also be a folder of codes directories (every sub-folder with a codes.json is evaluated). Each coder
encodes the database, then the queries; binary codes are ranked by Hamming distance, quantisers by ADC (the query
stays a float vector). Metrics (definitions, AP normalisation and tie rule: tvts/codes/metrics.py):
  * mAP@K for K in 5, 20, 100, 1000 and the whole database, and precision@K, when both files have labels;
  * text-to-video R@1/5/10/50 when the query file has texts, the coder can encode texts (hcq and the baselines) and
    both files hold the same number of items: text i of the query file describes item i of the database;
  * bytes per item; milliseconds per query to encode it and to search (distances plus ranking), and per database
    item to encode it.
When the query and database files are the same file, each query's own item is left out of its video ranking.
The float features (cosine similarity of the vectors as given) are evaluated the same way, as the reference row.
RESULTS_DIR gets results.json, results.md (tables: method x bits) and map_vs_bits.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from tvts.codes import features, methods, metrics
from tvts.codes.coder import Coder


def find_codes(paths: Sequence[str]) -> list[str]:
    """Codes directories: each path itself, or its sub-folders holding codes.json (sorted)."""
    out = []
    for path in paths:
        if os.path.exists(os.path.join(path, "codes.json")):
            out.append(path)
            continue
        subs = sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.exists(os.path.join(path, d,
                                                                                                    "codes.json")))
        if not subs:
            raise SystemExit(f"error: {path} holds no codes.json, nor do its sub-folders")
        out += subs
    return out


def _video_task(queries: features.Features, database: features.Features, same: bool):
    """(relevance [Q, N] or None, rows whose own item to leave out)."""
    if queries.labels is None or database.labels is None:
        return None
    if queries.labels.ndim != database.labels.ndim:
        raise queries.fail(f"labels of shape {queries.labels.shape} cannot be compared with {database.path}'s "
                           f"{database.labels.shape}")
    rel = metrics.relevance(queries.labels, database.labels)
    if same:
        np.fill_diagonal(rel, False)
    return rel


def _scores(dist: np.ndarray, rel: np.ndarray, same: bool, ap_norm: str, ties: str) -> dict[str, float]:
    if same:
        dist = dist.copy()
        np.fill_diagonal(dist, np.inf)
    return metrics.ranking_metrics(dist, rel, metrics.MAP_KS, ap_norm, ties)


def distances(coder: Coder, query_codes: np.ndarray, database_codes: np.ndarray) -> np.ndarray:
    if coder.kind == "binary":
        return metrics.hamming_distances(query_codes, database_codes, coder.bits)
    return metrics.adc_distances(query_codes, database_codes, coder.codebooks, coder.metric)


def evaluate_coder(coder: Coder, queries: features.Features, database: features.Features, *,
                   ap_norm: str = "retrieved", ties: str = "index") -> dict:
    features.check_compatible(coder.dim, queries, "query")
    features.check_compatible(coder.dim, database, "database")
    same = os.path.abspath(queries.path) == os.path.abspath(database.path)
    out = {"method": coder.method, "bits": coder.bits, "kind": coder.kind, "bytes_per_item": coder.bytes_per_item,
           "train_seconds": coder.info.get("seconds"), "train_items": coder.info.get("train_items")}
    methods.database_codes(coder, database)  # compiles the learned encoders: the timings below are after compilation
    start = time.perf_counter()
    db_codes = methods.database_codes(coder, database)
    out["database_encode_ms_per_item"] = 1e3 * (time.perf_counter() - start) / len(database)
    rel = _video_task(queries, database, same)
    if rel is not None:
        methods.queries(coder, queries, "video")
        start = time.perf_counter()
        q = methods.queries(coder, queries, "video")
        out["encode_ms_per_query"] = 1e3 * (time.perf_counter() - start) / len(queries)
        start = time.perf_counter()
        dist = distances(coder, q, db_codes)
        metrics.rank_order(dist)
        out["search_ms_per_query"] = 1e3 * (time.perf_counter() - start) / len(queries)
        out.update(_scores(dist, rel, same, ap_norm, ties))
    if queries.texts is not None and methods.impl(coder).text_queries and len(queries) == len(database):
        methods.queries(coder, queries, "text")
        start = time.perf_counter()
        t = methods.queries(coder, queries, "text")
        out["t2v_encode_ms_per_query"] = 1e3 * (time.perf_counter() - start) / len(queries)
        out.update({f"t2v/{k}": v for k, v in metrics.recall_metrics(distances(coder, t, db_codes), ties=ties).items()})
    return out


def evaluate_float(queries: features.Features, database: features.Features, *, ap_norm: str = "retrieved",
                   ties: str = "index") -> dict:
    """The same figures for the float features as given (cosine similarity), the reference codes aim for."""
    same = os.path.abspath(queries.path) == os.path.abspath(database.path)
    out = {"method": "float", "bits": 32 * database.dim, "kind": "float", "bytes_per_item": 4 * database.dim}
    rel = _video_task(queries, database, same)
    if rel is not None:
        start = time.perf_counter()
        dist = metrics.cosine_distances(queries.vectors, database.vectors)
        metrics.rank_order(dist)
        out["search_ms_per_query"] = 1e3 * (time.perf_counter() - start) / len(queries)
        out.update(_scores(dist, rel, same, ap_norm, ties))
        out["chance/mAP@all"] = float(rel.mean(1).mean())  # a random ranking's expected AP is about the base rate
    if queries.texts is not None and len(queries) == len(database):
        dist = metrics.cosine_distances(queries.texts, database.vectors)
        out.update({f"t2v/{k}": v for k, v in metrics.recall_metrics(dist, ties=ties).items()})
    return out


def evaluate(codes_dirs: Sequence[str], queries_path: str, database_path: str, out_dir: str | None, *,
             ap_norm: str = "retrieved", ties: str = "index", title: str = "") -> dict:
    from tvts.codes import report

    queries = features.load(queries_path)
    database = queries if os.path.abspath(database_path) == os.path.abspath(queries_path) else \
        features.load(database_path)
    rows = [evaluate_float(queries, database, ap_norm=ap_norm, ties=ties)]
    for directory in codes_dirs:
        coder = Coder.load(directory)
        rows.append({"codes": directory, **evaluate_coder(coder, queries, database, ap_norm=ap_norm, ties=ties)})
    result = {"queries": queries_path, "database": database_path, "num_queries": len(queries),
              "num_database": len(database), "ap_norm": ap_norm, "ties": ties, "rows": rows}
    if out_dir:
        report.write(result, out_dir, title=title)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tvts.codes.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", required=True, nargs="+", help="codes directories, or folders of them")
    p.add_argument("--queries", required=True, help="query feature file (.npz)")
    p.add_argument("--database", required=True, help="database feature file (.npz)")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--ap_norm", default="retrieved", choices=metrics.AP_NORMS,
                   help="AP@K normaliser: relevant retrieved in the top K (default), min(K, relevant), or K (SSVH)")
    p.add_argument("--ties", default="index", choices=metrics.TIES, help="tie rule of the rankings")
    p.add_argument("--title", default="", help="heading of results.md")
    args = p.parse_args(argv)
    try:
        result = evaluate(find_codes(args.codes), args.queries, args.database, args.out, ap_norm=args.ap_norm,
                          ties=args.ties, title=args.title)
    except features.FeatureFileError as err:
        raise SystemExit(f"error: {err}") from None
    print(open(os.path.join(args.out, "results.md")).read())
    print(f"wrote {args.out}/results.json, results.md, map_vs_bits.png", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
