"""Held-out figures on the built-in synthetic corpus: sorting, retrieval and linear probes.

- sorting accuracy on `num_videos` held-out transcribed videos (chance 1/num_clips);
- text->video and video->text retrieval over `num_videos` held-out captioned videos (chance R@1 = 1/N);
- linear probes on the frozen video embedding (projected CLS) for an appearance label ('has_circle') and a
  label only readable from frame order ('has_leftward'), trained on `num_probe_train` 'val' videos and
  tested on the `num_videos` 'test' videos;
- the same figures for every reference encoder it is given (the trainer passes the random initialisation and
  the model with its time attention switched off), prefixed '<reference>/';
- the chance level of each figure, prefixed 'chance/' (probes: the test labels' majority-class rate).
All at mask ratio 0 with deterministic frame times, as in the published evaluations. Sorting needs the sort head,
which only a full model's encoders have (`ModelEncoders`); with a backbone's encoders it is left out.
"""
from __future__ import annotations

import numpy as np
from etils import epath

from tvts.data.pipeline import synthetic_config
from tvts.data.synthetic import SyntheticCorpus
from tvts.data.texts import text_length
from tvts.data.tokenizer import tokenizer_for_spec
from tvts.evaluators.common import Evaluator
from tvts.evaluators.linear_probe import linear_probe
from tvts.evaluators.retrieval import chance_metrics, recall_at_k_curve, text_video_retrieval

PROBE_LABELS = ("has_circle", "has_leftward")


class SyntheticHeldout(Evaluator):
    REFERENCE_LABELS = {"chance": "chance / base"}

    def __init__(self, name, cfg, data_cfg, spec, output_dir=None):
        super().__init__(name, cfg, data_cfg, spec, output_dir)
        import jax

        corpus_cfg = synthetic_config(data_cfg, spec.image_size, spec.num_frames)
        self.test = SyntheticCorpus(corpus_cfg, split="test")
        self.val = SyntheticCorpus(corpus_cfg, split="val")
        self.context_length = data_cfg.context_length
        self.transcript_length = text_length(data_cfg, "transcribed")
        self.tokenizer = tokenizer_for_spec(spec, getattr(spec, "directory", None))  # CLIP BPE or WordPiece
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

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

    # Every figure for several encoders at once: each chunk of held-out videos is rendered once and encoded by
    # each (the final report compares trained, time attention off and random init).
    def _sorting_and_test_features(self, encoders: dict, n: int) -> tuple[dict, dict]:
        """Sorting accuracy (encoders with a sort head) and video embeddings of the n 'test' transcribed videos."""
        correct = {k: 0 for k in encoders}
        feats = {k: [] for k in encoders}
        total = 0
        for idx in self._chunks(n):
            raw = self.test.transcribed_batch(idx, train=False)
            length = self.transcript_length
            texts = self._tokens([t for v in raw["transcripts"] for t in v], length).reshape(len(idx), -1, length)
            for k, enc in encoders.items():
                if hasattr(enc, "sort_logits_and_video_embedding"):
                    logits, video_emb = enc.sort_logits_and_video_embedding(raw["frames"], texts)
                    pred = logits.argmax(-1)
                    correct[k] += int((pred == np.arange(pred.shape[1])).sum())
                else:
                    correct[k] = None
                    video_emb = enc.encode_video(raw["frames"])
                feats[k].append(video_emb)
            total += len(idx) * texts.shape[1]
        accuracy = {k: None if c is None else c / total for k, c in correct.items()}
        return accuracy, {k: np.concatenate(f) for k, f in feats.items()}

    def _video_features(self, encoders: dict, corpus: SyntheticCorpus, n: int) -> dict:
        feats = {k: [] for k in encoders}
        for idx in self._chunks(n):
            frames = corpus.transcribed_batch(idx, train=False)["frames"]
            for k, enc in encoders.items():
                feats[k].append(enc.encode_video(frames))
        return {k: np.concatenate(f) for k, f in feats.items()}

    def _probe_labels(self, corpus: SyntheticCorpus, n: int) -> dict:
        """Labels of every process's videos, in global order."""
        labels = corpus.transcribed_batch(np.arange(n), train=False, render=False)["labels"]
        return {k: np.asarray(labels[k]) for k in PROBE_LABELS}

    def _retrieval(self, encoders: dict, n: int) -> dict:
        video, text = {k: [] for k in encoders}, {k: [] for k in encoders}
        for idx in self._chunks(n):
            raw = self.test.captioned_batch(idx, train=False)
            tokens = self._tokens(raw["captions"])
            for k, enc in encoders.items():
                video[k].append(enc.encode_video(raw["frames"]))
                text[k].append(enc.encode_text(tokens))
        norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        out = {}
        for k in encoders:
            v, t = np.concatenate(video[k]), np.concatenate(text[k])
            out[k] = (text_video_retrieval(t, v), recall_at_k_curve(norm(t) @ norm(v).T))
        return out

    def _evaluate(self, encoders: dict) -> dict[str, tuple[dict[str, float], np.ndarray]]:
        """{name: encoders} -> {name: (figures, t2v recall@K curve)}."""
        n = self.cfg.num_videos
        sort_accuracy, test_x = self._sorting_and_test_features(encoders, n)
        retrieval = self._retrieval(encoders, n)
        train_x = self._video_features(encoders, self.val, self.cfg.num_probe_train)
        train_y, test_y = self._probe_labels(self.val, self.cfg.num_probe_train), self._probe_labels(self.test, n)
        results = {}
        for k in encoders:
            metrics, curve = retrieval[k]
            out = dict(metrics) if sort_accuracy[k] is None else {"sort_accuracy": sort_accuracy[k], **metrics}
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

    def compute(self, encoders, final: bool, references: dict) -> dict[str, float]:
        results = self._evaluate({"trained": encoders, **references})
        out = dict(results["trained"][0])
        for k, (figures, _) in results.items():
            if k != "trained":
                out.update({f"{k}/{name}": v for name, v in figures.items()})
        if final:
            out.update({f"chance/{k}": v for k, v in self.chance().items()})
        if final and self.output_dir is not None:
            from tvts.plots import plot_recall_curves

            curves = {"trained": results["trained"][1]}
            if "init" in results:
                curves["random init"] = results["init"][1]
            plot_recall_curves(curves, epath.Path(self.output_dir) / f"{self.name}_t2v_recall.png",
                               title=f"text->video recall@K, {self.cfg.num_videos} held-out synthetic videos")
        return out
