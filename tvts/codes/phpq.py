"""PHPQ (Zeng et al., "Pyramid Hybrid Pooling Quantization for Efficient Fine-Grained Image Retrieval", arXiv
2109.05206) on frozen features, from the paper's description: it has no public code, so the choices below are this
implementation's.

Pyramid hybrid pooling: the backbone's features from several depths (levels), each pooled over its positions by
average pooling and by max pooling (the two concatenated: average keeps the overall content, max the strongest local
detail), projected to a common width and summed; an MLP gives the embedding z. Learnable quantiser with partial
attention: each of the M = bits / 8 sub-vectors of z attends (softmax of alpha x cosine) over only the `top`
best-matching codewords of its codebook, not all 256, and the attention-weighted codewords are its soft
reconstruction; encoding keeps the best codeword. Supervision: class labels, through cosine classifiers (scale 16) on
the soft reconstruction and on z (softmax cross-entropy for [N] labels, sigmoid for multi-hot), plus the
quantisation error ||unit(z) - unit(reconstruction)||^2.

What had to be chosen (the paper leaves it open or ties it to a CNN):
  * levels: the file's `depth_<i>` arrays (shallowest first) and the per-frame features (or the item vector) as the
    deepest level. A tvts.extract file has no intermediate depths (the exported backbone gives only its final,
    projected outputs), so there the levels are the per-frame, per-clip and whole-video features: a pyramid over
    time, not depth. Positions pooled: frames (or tokens) instead of a CNN's spatial cells.
  * `top` = 16 of 256 codewords attended; alpha = 10; embedding width 128; the classifier scale 16; the
    quantisation-error weight 0.1; 500 steps of AdamW.
  * Codebooks start from k-means on the initial embedding's unit sub-vectors and, with `refit` (the default), are
    fitted again by k-means to the trained embedding. Measured on the demo backbone's features at 32 bits, the
    codebooks trained by soft assignment alone keep 9 to 18 of their 256 codewords in use, and their hard codes
    rank below the float embedding they quantise; a larger quantisation weight made that worse (docs/codes.md).
  * The paper's fine-grained image backbone is trained end to end; here only the pooling head and quantiser learn.

Retrieval: unit(z) of the query against the database's codes by ADC with inner products.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvts.codes import nn as cnn
from tvts.codes.baselines import unit
from tvts.codes.coder import CODEWORDS, Method
from tvts.codes.features import Features


def levels_of(feats: Features) -> list[np.ndarray]:
    """The pyramid's inputs: depth_0, depth_1, ... then the per-frame features (or the vector as one position);
    without depth arrays, every per-frame / per-clip / per-token array of the file and then the item vector."""
    if feats.depths:
        return [*feats.depths, feats.sequence if feats.sequence is not None else feats.vectors[:, None]]
    return [*feats.sequences.values(), feats.vectors[:, None]]


class PyramidHybridPooling(nn.Module):
    dim: int
    hidden: int = 256

    @nn.compact
    def __call__(self, *levels):
        parts = [nn.Dense(self.hidden)(nn.LayerNorm()(jnp.concatenate([x.mean(1), x.max(1)], -1))) for x in levels]
        return nn.Dense(self.dim)(nn.gelu(sum(parts)))


class PHPQNet(nn.Module):
    dim: int
    books: int
    classes: int

    def setup(self):
        self.pool = PyramidHybridPooling(self.dim)
        self.codebooks = self.param("codebooks", nn.initializers.normal(1.0),
                                    (self.books, CODEWORDS, self.dim // self.books))
        self.prototypes = self.param("prototypes", nn.initializers.normal(1.0), (self.classes, self.dim))

    def __call__(self, *levels):
        return self.pool(*levels)

    def embed(self, *levels):
        return cnn.l2n(self.pool(*levels))


class PHPQ(Method):
    name = "phpq"
    kind = "quantizer"
    metric = "ip"
    learned = True
    defaults = {"steps": 500, "batch": 256, "lr": 1e-3, "dim": 128, "top": 16, "alpha": 10.0, "scale": 16.0,
                "quantization_weight": 0.1, "refit": True}

    def check(self, feats, bits):
        feats.require_labels(self.name)
        feats.require_items(self.name, CODEWORDS, f"k-means with {CODEWORDS} codewords per codebook")

    def fit(self, feats, bits, seed, options, progress):
        labels = feats.require_labels(self.name)
        multi = labels.ndim == 2
        classes = labels.shape[1] if multi else int(labels.max()) + 1
        means = [unit(x).reshape(-1, x.shape[-1]).mean(0) for x in levels_of(feats)]
        levels = [unit(x) - m for x, m in zip(levels_of(feats), means)]
        m = bits // 8
        if options["dim"] % m:
            raise ValueError(f"phpq: dim={options['dim']} does not split into {m} codebooks")
        net = PHPQNet(options["dim"], m, classes)
        n = len(labels)
        batch = min(options["batch"], n)
        params = net.init(jax.random.key(seed), *(x[:2] for x in levels))["params"]
        def codebooks_by_kmeans(params):
            z = cnn.batch_apply(lambda *xs: net.apply({"params": params}, *xs), *levels)
            return cnn.with_kmeans_codebooks(params, z, seed)

        params = codebooks_by_kmeans(params)

        def sample(rng):
            idx = rng.choice(n, batch, replace=False)
            return {"levels": [x[idx] for x in levels], "labels": labels[idx]}

        def classify(z, protos, y):
            logits = options["scale"] * cnn.l2n(z) @ cnn.l2n(protos).T
            if multi:
                return optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32)).mean()
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def loss_fn(params, state, d, step, key):
            z = net.apply({"params": params}, *d["levels"])
            q, _ = cnn.soft_quantize(z, params["codebooks"], options["alpha"], top=options["top"])
            cls_q = classify(q, params["prototypes"], d["labels"])
            cls_z = classify(z, params["prototypes"], d["labels"])
            quant = jnp.sum((cnn.l2n(z) - cnn.l2n(q)) ** 2, -1).mean()
            return cls_q + cls_z + options["quantization_weight"] * quant, (state, {"class_q": cls_q, "class_z": cls_z,
                                                                                    "quantization": quant})

        params, _, history = cnn.fit(loss_fn, params, None, sample, steps=options["steps"], lr=options["lr"],
                                     seed=seed, desc=f"phpq {bits} bits", progress=progress)
        arrays = {f"level_mean_{i}": mean for i, mean in enumerate(means)}
        if options["refit"]:
            params = codebooks_by_kmeans(params)
        books = np.asarray(cnn.l2n(params["codebooks"]))
        shapes = [list(x.shape[1:]) for x in levels]
        return {**arrays, "codebooks": books, **cnn.flatten_params(params)}, {"classes": classes,
                                                                               "level_shapes": shapes, **history}

    def _embed(self, coder, feats: Features) -> np.ndarray:
        levels = levels_of(feats)
        shapes = coder.info["level_shapes"]
        if [x.shape[-1] for x in levels] != [s[-1] for s in shapes]:
            raise feats.fail(f"phpq codes were trained on levels of widths {[s[-1] for s in shapes]} (depth_<i>, "
                             f"then per-frame features); this file's are {[x.shape[-1] for x in levels]}")
        levels = [unit(x) - coder.arrays[f"level_mean_{i}"] for i, x in enumerate(levels)]
        net = PHPQNet(coder.info["options"]["dim"], coder.bits // 8, coder.info["classes"])
        params = cnn.unflatten_params(coder.arrays)
        return cnn.batch_apply(lambda *xs: net.apply({"params": params}, *xs, method=PHPQNet.embed), *levels)

    def encode(self, coder, feats: Features) -> np.ndarray:
        return np.asarray(cnn.hard_codes(self._embed(coder, feats), coder.codebooks))

    def query(self, coder, feats: Features, side: str) -> np.ndarray:
        if side == "text":
            raise ValueError("phpq codes videos only; text queries need a cross-view method (hcq)")
        return self._embed(coder, feats)
