"""Held-out figures on the built-in synthetic corpus: sorting, retrieval and linear probes.

- sorting accuracy on `num_videos` held-out transcribed videos (chance 1/num_clips);
- text->video and video->text retrieval over `num_videos` held-out captioned videos (chance R@1 = 1/N);
- linear probes on the frozen video embedding (projected CLS) for an appearance label ('has_circle') and a
  label only readable from frame order ('has_leftward'), trained on `num_probe_train` 'val' videos and
  tested on the `num_videos` 'test' videos;
- with `compare_with_init`, the same figures for the run's random initial parameters, prefixed 'init/';
- with `compare_without_time_attention`, the same figures for the trained parameters with the time attention
  switched off (`without_time_attention`), prefixed 'no_time_attn/': what the model owes to it;
- the chance level of each figure, prefixed 'chance/' (probes: the test labels' majority-class rate).
All at mask ratio 0 with deterministic frame times, as in the published evaluations.
"""
from __future__ import annotations

import os

import numpy as np

from tvts.data.pipeline import synthetic_config, text_length
from tvts.data.synthetic import SyntheticCorpus
from tvts.data.tokenizer import get_tokenizer
from tvts.evaluators.common import Evaluator, FrozenEncoders
from tvts.evaluators.linear_probe import linear_probe
from tvts.evaluators.retrieval import chance_metrics, recall_at_k_curve, text_video_retrieval

PROBE_LABELS = ("has_circle", "has_leftward")


class SyntheticHeldout(Evaluator):
    def __init__(self, name, cfg, setup, output_dir=None):
        super().__init__(name, cfg, setup, output_dir)
        import jax

        config = setup.config
        corpus_cfg = synthetic_config(config.data, setup.model.variant.video.image_size, config.model.num_frames)
        self.test = SyntheticCorpus(corpus_cfg, split="test")
        self.val = SyntheticCorpus(corpus_cfg, split="val")
        self.context_length = config.data.context_length
        self.transcript_length = text_length(config.data, "transcribed")
        self.tokenizer = get_tokenizer(self.context_length)
        self.encoders = FrozenEncoders(setup.model, setup.mesh, setup.rules, setup.params_sharding)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self._init_metrics = None

    def _chunks(self, n: int):
        """Global index chunks of `batch`, and this process's part of each."""
        batch = self.cfg.batch
        for start in range(0, n, batch):
            idx = np.arange(start, min(start + batch, n))
            if len(idx) % self.process_count:
                raise ValueError(f"{self.name}: chunk of {len(idx)} videos does not split over "
                                 f"{self.process_count} processes; choose num_videos and batch divisible by it")
            per = len(idx) // self.process_count
            yield idx[self.process_index * per:(self.process_index + 1) * per]

    def _tokens(self, texts: list[str], length: int | None = None) -> np.ndarray:
        return self.tokenizer(texts, length or self.context_length)

    # Every figure for several parameter sets at once: each chunk of held-out videos is rendered once and
    # encoded by every set (the final report compares trained, time attention off and random init).
    def _sorting_and_test_features(self, param_sets: dict, n: int) -> tuple[dict, dict]:
        """Sorting accuracy and video embeddings of the n 'test' transcribed videos (one pass per set)."""
        correct = {k: 0 for k in param_sets}
        feats = {k: [] for k in param_sets}
        total = 0
        for idx in self._chunks(n):
            raw = self.test.transcribed_batch(idx, train=False)
            length = self.transcript_length
            texts = self._tokens([t for v in raw["transcripts"] for t in v], length).reshape(len(idx), -1, length)
            for k, params in param_sets.items():
                logits, video_emb = self.encoders.sort_logits_and_video_embedding(params, raw["frames"], texts)
                pred = logits.argmax(-1)
                correct[k] += int((pred == np.arange(pred.shape[1])).sum())
                feats[k].append(video_emb)
            total += pred.size
        return {k: c / total for k, c in correct.items()}, {k: np.concatenate(f) for k, f in feats.items()}

    def _video_features(self, param_sets: dict, corpus: SyntheticCorpus, n: int) -> dict:
        feats = {k: [] for k in param_sets}
        for idx in self._chunks(n):
            frames = corpus.transcribed_batch(idx, train=False)["frames"]
            for k, params in param_sets.items():
                feats[k].append(self.encoders.video_embedding(params, frames))
        return {k: np.concatenate(f) for k, f in feats.items()}

    def _probe_labels(self, corpus: SyntheticCorpus, n: int) -> dict:
        """Labels of every process's videos, in global order."""
        labels = corpus.transcribed_batch(np.arange(n), train=False, render=False)["labels"]
        return {k: np.asarray(labels[k]) for k in PROBE_LABELS}

    def _retrieval(self, param_sets: dict, n: int) -> dict:
        video, text = {k: [] for k in param_sets}, {k: [] for k in param_sets}
        for idx in self._chunks(n):
            raw = self.test.captioned_batch(idx, train=False)
            tokens = self._tokens(raw["captions"])
            for k, params in param_sets.items():
                video[k].append(self.encoders.video_embedding(params, raw["frames"]))
                text[k].append(self.encoders.text_embedding(params, tokens))
        norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        out = {}
        for k in param_sets:
            v, t = np.concatenate(video[k]), np.concatenate(text[k])
            out[k] = (text_video_retrieval(t, v), recall_at_k_curve(norm(t) @ norm(v).T))
        return out

    def _evaluate(self, param_sets: dict) -> dict[str, tuple[dict[str, float], np.ndarray]]:
        """{name: params} -> {name: (figures, t2v recall@K curve)}."""
        n = self.cfg.num_videos
        sort_accuracy, test_x = self._sorting_and_test_features(param_sets, n)
        retrieval = self._retrieval(param_sets, n)
        train_x = self._video_features(param_sets, self.val, self.cfg.num_probe_train)
        train_y, test_y = self._probe_labels(self.val, self.cfg.num_probe_train), self._probe_labels(self.test, n)
        results = {}
        for k in param_sets:
            metrics, curve = retrieval[k]
            out = {"sort_accuracy": sort_accuracy[k], **metrics}
            for label in PROBE_LABELS:
                out[f"probe_{label}"] = linear_probe(train_x[k], train_y[label], test_x[k], test_y[label])["accuracy"]
            results[k] = (out, curve)
        return results

    def chance(self) -> dict[str, float]:
        n = self.cfg.num_videos
        out = {"sort_accuracy": 1.0 / self.test.config.num_clips}
        for direction in ("t2v", "v2t"):
            out.update({f"{direction}/{k}": v for k, v in chance_metrics(n).items()})
        labels = self._probe_labels(self.test, n)
        for label in PROBE_LABELS:
            out[f"probe_{label}"] = 100.0 * np.bincount(labels[label]).max() / n
        return out

    def compute(self, params, final: bool) -> dict[str, float]:
        param_sets = {"trained": params}
        if final and self.cfg.get("compare_without_time_attention", False):
            from tvts.models.tvtsv2 import without_time_attention

            param_sets["no_time_attn"] = without_time_attention(params)
        if final and self.cfg.compare_with_init:
            from tvts.train import random_params

            param_sets["init"] = random_params(self.setup)
        results = self._evaluate(param_sets)
        out = dict(results["trained"][0])
        for k, (figures, _) in results.items():
            if k != "trained":
                out.update({f"{k}/{name}": v for name, v in figures.items()})
        if final:
            out.update({f"chance/{k}": v for k, v in self.chance().items()})
        if final and self.output_dir:
            from tvts.evaluators.plots import plot_recall_curves

            curves = {"trained": results["trained"][1]}
            if "init" in results:
                curves["random init"] = results["init"][1]
            plot_recall_curves(curves, os.path.join(self.output_dir, f"{self.name}_t2v_recall.png"),
                               title=f"text->video recall@K, {self.cfg.num_videos} held-out synthetic videos")
        return out
