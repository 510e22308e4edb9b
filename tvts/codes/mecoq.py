"""MeCoQ (Wang et al., "Contrastive Quantization with Code Memory for Unsupervised Image Retrieval", AAAI 2022,
arXiv 2109.05205) on frozen features, implemented as the paper describes it.

An encoder (here a 2-layer MLP on the frozen vector: the paper trains a CNN's last layers on images) gives z, split
into M = bits / 8 sub-vectors; each is soft-quantised: p_mk = softmax_k(alpha cos(z_m, c_mk)), reconstruction
z^_m = sum_k p_mk c_mk (unit codewords). Losses:
  * the debiased contrastive loss between the soft-quantised reconstructions of two views of each item;
  * code memory: the soft codes p of the last `memory` views are kept and, at every step, decoded again with the
    *current* codebooks to serve as extra negatives (codes, unlike stored features, drift only as far as the
    codebooks do); switched on after `memory_start` of training, once the codebooks have settled;
  * codeword diversity: the mean cosine similarity between codewords of the same codebook, minimised (without it
    the contrastive loss lets all items collapse onto a few codewords).
Views (the paper's are image augmentations) must be views of what is encoded, the item vector. `views="frames"`:
two random halves of the item's frames, each averaged, plus Gaussian noise (`noise`) and feature dropout
(`dropout`); `views="vector"`: the item vector with noise and dropout. `views="auto"` (the default) takes frames only
when the item vectors are the means of the file's per-frame features (cosine >= 0.99 on average), as in a file
whose `embeddings` are [N, T, D]. A tvts.extract file's whole-clip vector is not: its per-frame features encode each
frame alone and miss the motion the clip embedding holds, and training on their halves would code a different
vector from the one encoded (measured on the demo backbone's features: docs/codes.md).

Where the released code (github.com/gimpong/AAAI22-MeCoQ) differs, as reported in the issue this implementation
follows: its codebooks never receive a gradient (they stay at their initial values), and its contrastive loss has a
broadcasting error. Here the codebooks are parameters trained by every loss above, and the debiased loss is
tvts.codes.nn.debiased_contrastive, checked against its formula in the tests.

Codebooks start from k-means (faiss) on the initial head's unit sub-vectors, and with `refit` (the default) are
fitted again by k-means to the trained head's outputs: trained by soft assignment alone, most codewords fall out of
use and the hard codes lose ranking quality (tvts.codes.nn.kmeans_codebooks; figures in docs/codes.md).

Retrieval: the query's unit z against the database's hard codes (argmax_k of the cosine) by ADC with inner products.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tvts.codes import nn as cnn
from tvts.codes.baselines import centres, prepared, unit
from tvts.codes.coder import CODEWORDS, Method
from tvts.codes.features import Features


class Encoder(nn.Module):
    """MLP [.., D] -> [.., dim]: the trainable head on the frozen features."""

    dim: int
    hidden: int = 512

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.dim)(nn.gelu(nn.Dense(self.hidden)(nn.LayerNorm()(x))))


class QuantizedEncoder(nn.Module):
    dim: int
    books: int
    hidden: int = 512

    def setup(self):
        self.encoder = Encoder(self.dim, self.hidden)
        self.codebooks = self.param("codebooks", nn.initializers.normal(1.0),
                                    (self.books, CODEWORDS, self.dim // self.books))

    def __call__(self, x):
        return self.encoder(x)


def view_pairs(x: np.ndarray, frames: np.ndarray | None, idx: np.ndarray, rng: np.random.Generator, noise: float,
               dropout: float) -> tuple[np.ndarray, np.ndarray]:
    """Two views per item: means of two random halves of its frames (or the vector itself), plus noise and
    feature dropout."""
    def one():
        if frames is None:
            v = x[idx]
        else:
            t = frames.shape[1]
            keep = rng.random((len(idx), t)) < 0.5
            keep[np.arange(len(idx)), rng.integers(0, t, len(idx))] = True
            v = (frames[idx] * keep[..., None]).sum(1) / keep.sum(1, keepdims=True)
        v = v + noise * rng.standard_normal(v.shape).astype(np.float32)
        if dropout:
            v = v * (rng.random(v.shape) >= dropout) / (1 - dropout)
        return v.astype(np.float32)

    return one(), one()


def frame_mean_agreement(vectors: np.ndarray, unit_frames: np.ndarray) -> float:
    """Mean cosine between each item vector [N, D] and the mean of its unit per-frame features [N, T, D]."""
    return float(np.mean(np.sum(unit(vectors) * unit(unit_frames.mean(1)), -1)))


class MeCoQ(Method):
    name = "mecoq"
    kind = "quantizer"
    metric = "ip"
    learned = True
    defaults = {"steps": 800, "batch": 256, "lr": 1e-3, "dim": 128, "alpha": 10.0, "temperature": 0.2,
                "tau_plus": 0.05, "memory": 1024, "memory_start": 0.2, "diversity_weight": 1.0, "noise": 0.02,
                "dropout": 0.1, "views": "auto", "refit": True}
    VIEWS = ("auto", "frames", "vector")

    def check(self, feats, bits):
        feats.require_items(self.name, CODEWORDS, f"k-means with {CODEWORDS} codewords per codebook")

    def view_frames(self, feats: Features, views: str) -> np.ndarray | None:
        """The per-frame features the views are drawn from, or None for views of the vector."""
        if views not in self.VIEWS:
            raise ValueError(f"mecoq: views={views!r} is not one of {self.VIEWS}")
        if views == "vector" or feats.sequence is None:
            if views == "frames":
                feats.require_sequence(self.name)
            return None
        frames = unit(feats.sequence)
        return None if views == "auto" and frame_mean_agreement(feats.vectors, frames) < 0.99 else frames

    def fit(self, feats, bits, seed, options, progress):
        arrays = centres(feats)
        x = prepared(arrays, feats, "video")
        frames = self.view_frames(feats, options["views"])
        frames = None if frames is None else frames - arrays["mean"]
        m, n = bits // 8, len(x)
        if options["dim"] % m:
            raise ValueError(f"mecoq: dim={options['dim']} does not split into {m} codebooks")
        net = QuantizedEncoder(options["dim"], m)
        batch = min(options["batch"], n)
        params = net.init(jax.random.key(seed), x[:2])["params"]
        def codebooks_by_kmeans(params):
            return cnn.with_kmeans_codebooks(params, cnn.batch_apply(lambda v: net.apply({"params": params}, v), x),
                                             seed)

        params = codebooks_by_kmeans(params)
        memory = {"codes": jnp.zeros((options["memory"], m, CODEWORDS)), "next": jnp.zeros((), jnp.int32)}
        start = int(options["memory_start"] * options["steps"])

        def sample(rng):
            idx = rng.choice(n, batch, replace=False)
            a, b = view_pairs(x, frames, idx, rng, options["noise"], options["dropout"])
            return {"a": a, "b": b}

        def loss_fn(params, state, data, step, key):
            books = params["codebooks"]
            za, zb = (net.apply({"params": params}, data[v]) for v in ("a", "b"))
            qa, pa = cnn.soft_quantize(za, books, options["alpha"])
            qb, _ = cnn.soft_quantize(zb, books, options["alpha"])
            negatives = cnn.decode_soft(state["codes"], books)  # the memory's codes, decoded with today's codebooks
            use_memory = (step >= start).astype(jnp.float32)
            con = cnn.debiased_contrastive(qa, qb, options["temperature"], options["tau_plus"], negatives, use_memory)
            div = cnn.codeword_diversity(books)
            size = state["codes"].shape[0]
            rows = (state["next"] + jnp.arange(batch)) % size
            state = {"codes": state["codes"].at[rows].set(jax.lax.stop_gradient(pa)),
                     "next": (state["next"] + batch) % size}
            return con + options["diversity_weight"] * div, (state, {"contrastive": con, "diversity": div})

        params, _, history = cnn.fit(loss_fn, params, memory, sample, steps=options["steps"], lr=options["lr"],
                                     seed=seed, desc=f"mecoq {bits} bits", progress=progress)
        if options["refit"]:
            params = codebooks_by_kmeans(params)
        books = np.asarray(cnn.l2n(params["codebooks"]))
        return {**arrays, "codebooks": books, **cnn.flatten_params(params)}, {
            "views_from": "vector" if frames is None else feats.sequence_key, **history}

    def _embed(self, coder, x: np.ndarray) -> np.ndarray:
        net = QuantizedEncoder(coder.info["options"]["dim"], coder.bits // 8)
        params = cnn.unflatten_params(coder.arrays)
        return cnn.batch_apply(lambda v: cnn.l2n(net.apply({"params": params}, v)), x)

    def encode(self, coder, feats: Features) -> np.ndarray:
        z = self._embed(coder, prepared(coder.arrays, feats, "video"))
        return np.asarray(cnn.hard_codes(z, coder.codebooks))

    def query(self, coder, feats: Features, side: str) -> np.ndarray:
        if side == "text":
            raise ValueError("mecoq codes videos only; text queries need a cross-view method (hcq)")
        return self._embed(coder, prepared(coder.arrays, feats, "video"))
