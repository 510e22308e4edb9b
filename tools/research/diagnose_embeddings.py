"""What a checkpoint's embeddings hold, measured on the synthetic corpus (the figures behind docs/tiny_recipe.md's
analysis of the demo).

    python -m tools.research.diagnose_embeddings --workdir workdirs/demo [--init | --step N] [--config FILE]

- Text: for held-out transcripts, the mean cosine between a transcript's embedding and the embedding of the
  same transcript with its shape, colour or motion word replaced by another value of that attribute. A text
  tower that ignores an attribute gives 1.0 for it.
- Video: linear probes for has_<shape|colour|motion> labels and the first event's shape, colour and motion,
  next to the majority-class base rate of the test videos: on the video embedding (projected CLS,
  `probe_<label>`) and on the mean of the projected patch tokens (`probe_pooled_<label>`).

The run's config is its workdir's config.json (written by the trainer) unless `--config` names one. `--init`
diagnoses the run's random initial parameters instead of the newest checkpoint; `--step N` the checkpoint of
iteration N. Prints JSON and writes it to <workdir>/diagnosis[_init|_stepN].json.
"""
from __future__ import annotations

if __name__ == "__main__":  # a program, not an import: move to mimalloc before JAX loads (tvts/allocator.py)
    from tvts.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from tvts.data.synthetic import COLOURS, MOTIONS, SHAPES

if TYPE_CHECKING:  # JAX loads only when a diagnosis runs
    from tvts.encoders import Encoders

ATTRIBUTE_WORDS = {"shape": SHAPES, "colour": COLOURS, "motion": MOTIONS}
PROBE_LABELS = ("has_circle", "has_red", "has_leftward", "has_upward", "first_shape", "first_colour",
                "first_motion")


def swap_attribute(transcript: str, attribute: str, rng: np.random.Generator) -> str:
    """The transcript with its one word naming `attribute` replaced by another value of it."""
    words = transcript.split()
    vocabulary = ATTRIBUTE_WORDS[attribute]
    hits = [i for i, w in enumerate(words) if w in vocabulary]
    if len(hits) != 1:
        raise ValueError(f"transcript {transcript!r} names {len(hits)} {attribute} words, expected 1")
    i = hits[0]
    others = [w for w in vocabulary if w != words[i]]
    words[i] = others[rng.integers(len(others))]
    return " ".join(words)


def majority_rate(labels: np.ndarray) -> float:
    return 100.0 * np.bincount(labels).max() / len(labels)


def text_swap_cosines(encoders: Encoders, tokenizer: Callable[[list[str], int], np.ndarray], context_length: int,
                      transcripts: list[str], seed: int = 0) -> dict[str, float]:
    """Mean cosine between each transcript's embedding and that of the transcript with one attribute word swapped."""
    rng = np.random.default_rng(seed)

    def embed(texts: list[str]) -> np.ndarray:
        e = encoders.encode_text(tokenizer(texts, context_length))
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    base = embed(transcripts)
    out = {}
    for attribute in ATTRIBUTE_WORDS:
        swapped = embed([swap_attribute(t, attribute, rng) for t in transcripts])
        out[f"text_cosine_after_{attribute}_swap"] = float(np.mean(np.sum(base * swapped, axis=-1)))
    return out


def diagnose(config: Any, workdir: str, init: bool = False, num_videos: int = 256, num_probe_train: int = 768,
             batch: int = 64, step: int | None = None) -> dict[str, float]:
    from tvts.checkpoint import restore_params, with_shardings
    from tvts.data.pipeline import synthetic_config
    from tvts.data.synthetic import SyntheticCorpus
    from tvts.data.tokenizer import get_tokenizer
    from tvts.evaluators.linear_probe import linear_probe
    from tvts.state import make_encoders, make_setup, random_params

    setup = make_setup(config)
    if init:
        params = random_params(setup)
    else:
        abstract = with_shardings(setup.abstract_state, setup.state_sharding)["params"]
        params = restore_params(epath.Path(workdir) / "checkpoints", abstract, step)
    encoders = make_encoders(setup, params)
    corpus_cfg = synthetic_config(config.data, setup.spec.image_size, setup.spec.num_frames)
    val, test = SyntheticCorpus(corpus_cfg, "val"), SyntheticCorpus(corpus_cfg, "test")
    context_length = setup.spec.context_length

    transcripts = [t for v in test.transcribed_batch(range(num_videos // 4), render=False)["transcripts"] for t in v]
    out = text_swap_cosines(encoders, get_tokenizer(context_length), context_length, transcripts)

    def features(corpus: SyntheticCorpus, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({'': CLS [n, E], 'pooled_': mean of the patch tokens [n, E]}, labels)."""
        tokens = [encoders.video_tokens(corpus.transcribed_batch(range(s, min(s + batch, n)), train=False)["frames"])
                  for s in range(0, n, batch)]
        feats = {"": np.concatenate([t[:, 0] for t in tokens]),
                 "pooled_": np.concatenate([t[:, 1:].mean(1) for t in tokens])}
        return feats, corpus.transcribed_batch(range(n), render=False)["labels"]

    train_x, train_y = features(val, num_probe_train)
    test_x, test_y = features(test, num_videos)
    for label in PROBE_LABELS:
        for kind in train_x:
            out[f"probe_{kind}{label}"] = float(linear_probe(train_x[kind], train_y[label], test_x[kind],
                                                             test_y[label])["accuracy"])
        out[f"base_{label}"] = majority_rate(test_y[label])
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    from tvts.config import load_config
    from tvts.evaluate import run_config

    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config", default=None,
                        help="config file[:args] of the run (default: the run's own <workdir>/config.json)")
    parser.add_argument("--init", action="store_true", help="diagnose the random initial parameters")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint of this iteration (default: newest)")
    parser.add_argument("--num_videos", type=int, default=256)
    args = parser.parse_args(argv)
    if args.init and args.step is not None:
        parser.error("--init and --step exclude each other")
    config = run_config(args.workdir) if args.config is None else load_config(args.config)
    result = diagnose(config, args.workdir, args.init, args.num_videos, step=args.step)
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    suffix = "_init" if args.init else f"_step{args.step}" if args.step is not None else ""
    (epath.Path(args.workdir) / f"diagnosis{suffix}.json").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
