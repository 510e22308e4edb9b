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

    def _video_features(self, params, corpus: SyntheticCorpus, n: int) -> tuple[np.ndarray, dict]:
        feats, labels = [], {k: [] for k in PROBE_LABELS}
        for idx in self._chunks(n):
            raw = corpus.transcribed_batch(idx, train=False)
            feats.append(self.encoders.video_embedding(params, raw["frames"]))
        for k in PROBE_LABELS:  # labels of every process's videos, in global order
            labels[k] = np.asarray(corpus.transcribed_batch(np.arange(n), train=False, render=False)["labels"][k])
        return np.concatenate(feats), labels

    def _sorting_accuracy(self, params, n: int) -> float:
        correct = total = 0
        for idx in self._chunks(n):
            raw = self.test.transcribed_batch(idx, train=False)
            length = self.transcript_length
            texts = self._tokens([t for v in raw["transcripts"] for t in v], length).reshape(len(idx), -1, length)
            logits = self.encoders.sort_logits(params, raw["frames"], texts)
            pred = logits.argmax(-1)
            correct += int((pred == np.arange(pred.shape[1])).sum())
            total += pred.size
        return correct / total

    def _retrieval(self, params, n: int) -> tuple[dict, np.ndarray]:
        video, text = [], []
        for idx in self._chunks(n):
            raw = self.test.captioned_batch(idx, train=False)
            video.append(self.encoders.video_embedding(params, raw["frames"]))
            text.append(self.encoders.text_embedding(params, self._tokens(raw["captions"])))
        video, text = np.concatenate(video), np.concatenate(text)
        metrics = text_video_retrieval(text, video)
        norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        return metrics, recall_at_k_curve(norm(text) @ norm(video).T)

    def _evaluate(self, params) -> tuple[dict[str, float], np.ndarray]:
        n = self.cfg.num_videos
        out = {"sort_accuracy": self._sorting_accuracy(params, n)}
        retrieval, curve = self._retrieval(params, n)
        out.update({k: v for k, v in retrieval.items()})
        train_x, train_y = self._video_features(params, self.val, self.cfg.num_probe_train)
        test_x, test_y = self._video_features(params, self.test, n)
        for label in PROBE_LABELS:
            out[f"probe_{label}"] = linear_probe(train_x, train_y[label], test_x, test_y[label])["accuracy"]
        return out, curve

    def chance(self) -> dict[str, float]:
        n = self.cfg.num_videos
        out = {"sort_accuracy": 1.0 / self.test.config.num_clips}
        for direction in ("t2v", "v2t"):
            out.update({f"{direction}/{k}": v for k, v in chance_metrics(n).items()})
        labels = self.test.transcribed_batch(np.arange(n), train=False, render=False)["labels"]
        for label in PROBE_LABELS:
            out[f"probe_{label}"] = 100.0 * np.bincount(labels[label]).max() / n
        return out

    def compute(self, params, final: bool) -> dict[str, float]:
        out, curve = self._evaluate(params)
        if final:
            out.update({f"chance/{k}": v for k, v in self.chance().items()})
        curves = {"trained": curve}
        if final and self.cfg.get("compare_without_time_attention", False):
            from tvts.models.tvtsv2 import without_time_attention

            ablated, _ = self._evaluate(without_time_attention(params))
            out.update({f"no_time_attn/{k}": v for k, v in ablated.items()})
        if final and self.cfg.compare_with_init:
            from tvts.train import random_params

            init, init_curve = self._evaluate(random_params(self.setup))
            out.update({f"init/{k}": v for k, v in init.items()})
            curves["random init"] = init_curve
        if final and self.output_dir:
            from tvts.evaluators.plots import plot_recall_curves

            plot_recall_curves(curves, os.path.join(self.output_dir, f"{self.name}_t2v_recall.png"),
                               title=f"text->video recall@K, {self.cfg.num_videos} held-out synthetic videos")
        return out
