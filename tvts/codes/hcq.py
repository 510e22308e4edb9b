"""HCQ (Wang et al., "Hybrid Contrastive Quantization for Efficient Cross-View Video Retrieval", WWW 2022,
arXiv 2202.03384) on frozen text and video features.

Each modality has a tower giving 1 + G embeddings (levels): a coarse one from the item's global vector (the video
embedding, the caption embedding) and G fine-grained ones from its tokens (frames or patch tokens; words or phrases)
by learned-cluster pooling: G learned centres attend over the tokens (softmax over tokens of the scaled dot
product), and each centre's attention-weighted mean of the tokens goes through a shared projection. Every level is
L2-normalised and product-quantised with codebooks shared by text and video (one set of M_l codebooks of 256
codewords per level; bits / 8 = levels x M_l). Training minimises two asymmetric contrastive losses over the
batch: text embeddings against the soft-quantised video embeddings, and video embeddings against the soft-quantised
text embeddings (similarity = mean over levels of the cosine; InfoNCE in both directions of each matrix).

Retrieval (text to video): the text's float level embeddings against the videos' codes by ADC with inner products,
which sums the levels' similarities. Videos can also be queried by videos (their float level embeddings).

Choices here: G = 3 fine levels (fewer when bits / 8 < 4: 16 bits give 1 coarse + 1 fine level of one codebook
each), level width 64, separate towers (no weights shared between text and video except the codebooks),
soft-assignment scale 10, temperature 0.07; 600 steps of AdamW. HCQ's paper builds the fine levels from a
pre-trained backbone's token features, as here.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tvts.codes import nn as cnn
from tvts.codes.baselines import centres, unit
from tvts.codes.coder import CODEWORDS, Method
from tvts.codes.features import Features


class Tower(nn.Module):
    """(coarse [B, D], tokens [B, L, D]) -> [B, levels, width] unit level embeddings."""

    levels: int
    width: int = 64
    hidden: int = 256

    @nn.compact
    def __call__(self, coarse, tokens):
        c = nn.Dense(self.width)(nn.gelu(nn.Dense(self.hidden)(nn.LayerNorm()(coarse))))
        out = [c[:, None]]
        fine = self.levels - 1
        if fine:
            keys = nn.Dense(self.hidden)(nn.LayerNorm()(tokens))  # [B, L, H]
            centre = self.param("centres", nn.initializers.normal(1.0), (fine, self.hidden))
            attn = jax.nn.softmax(jnp.einsum("blh,gh->bgl", keys, centre) / np.sqrt(self.hidden), axis=-1)
            pooled = jnp.einsum("bgl,bld->bgd", attn, tokens)
            out.append(nn.Dense(self.width)(nn.gelu(nn.Dense(self.hidden)(nn.LayerNorm()(pooled)))))
        return cnn.l2n(jnp.concatenate(out, axis=1))


class HCQNet(nn.Module):
    levels: int
    books_per_level: int
    width: int = 64

    def setup(self):
        self.video = Tower(self.levels, self.width)
        self.text = Tower(self.levels, self.width)
        self.codebooks = self.param("codebooks", nn.initializers.normal(1.0),
                                    (self.levels * self.books_per_level, CODEWORDS,
                                     self.width // self.books_per_level))

    def __call__(self, video_coarse, video_tokens, text_coarse, text_tokens):
        return self.video(video_coarse, video_tokens), self.text(text_coarse, text_tokens)

    def embed_video(self, coarse, tokens):
        return self.video(coarse, tokens).reshape(coarse.shape[0], -1)

    def embed_text(self, coarse, tokens):
        return self.text(coarse, tokens).reshape(coarse.shape[0], -1)


def layout(bits: int, fine: int) -> tuple[int, int]:
    """(levels, codebooks per level) for `bits` (bits / 8 codebooks in all)."""
    books = bits // 8
    levels = max(lv for lv in range(1, min(1 + fine, books) + 1) if books % lv == 0)
    return levels, books // levels


class HCQ(Method):
    name = "hcq"
    kind = "quantizer"
    metric = "ip"
    learned = True
    cross_view = True
    text_queries = True
    defaults = {"steps": 600, "batch": 256, "lr": 1e-3, "fine": 3, "width": 64, "alpha": 10.0, "temperature": 0.07}

    def check(self, feats, bits):
        feats.require_texts(self.name)
        if feats.tokens is None and feats.sequence is None:
            feats.require_sequence(self.name)  # raises: HCQ's fine levels need video tokens or frames
        feats.require_items(self.name, 8, "a batch of contrastive negatives")

    def _net(self, coder_or_bits, options) -> HCQNet:
        bits = coder_or_bits if isinstance(coder_or_bits, int) else coder_or_bits.bits
        levels, per = layout(bits, options["fine"])
        if options["width"] % per:
            raise ValueError(f"hcq: width {options['width']} does not split into {per} codebooks per level")
        return HCQNet(levels, per, options["width"])

    @staticmethod
    def _inputs(arrays, feats: Features, side: str) -> tuple[np.ndarray, np.ndarray]:
        if side == "video":
            tokens = feats.tokens if feats.tokens is not None else feats.require_sequence("hcq")
            return unit(feats.vectors) - arrays["mean"], unit(tokens) - arrays["mean"]
        texts, text_tokens = feats.require_texts("hcq")
        mean = arrays.get("text_mean", arrays["mean"])
        return unit(texts) - mean, unit(text_tokens) - mean

    def fit(self, feats, bits, seed, options, progress):
        arrays = centres(feats)
        vc, vt = self._inputs(arrays, feats, "video")
        tc, tt = self._inputs(arrays, feats, "text")
        net = self._net(bits, options)
        n = len(vc)
        batch = min(options["batch"], n)
        params = net.init(jax.random.key(seed), vc[:2], vt[:2], tc[:2], tt[:2])["params"]
        levels = net.levels

        def sample(rng):
            idx = rng.choice(n, batch, replace=False)
            return {"vc": vc[idx], "vt": vt[idx], "tc": tc[idx], "tt": tt[idx]}

        def quantised(x, books):  # [B, levels, W] -> per-level unit soft reconstructions
            q, _ = cnn.soft_quantize(x.reshape(x.shape[0], -1), books, options["alpha"])
            return cnn.l2n(q.reshape(x.shape))

        def loss_fn(params, state, d, step, key):
            v, t = net.apply({"params": params}, d["vc"], d["vt"], d["tc"], d["tt"])
            books = params["codebooks"]
            tv = jnp.einsum("ilw,jlw->ij", t, quantised(v, books)) / levels
            vt_ = jnp.einsum("ilw,jlw->ij", v, quantised(t, books)) / levels
            a = cnn.info_nce(tv / options["temperature"])
            b = cnn.info_nce(vt_ / options["temperature"])
            return a + b, (state, {"text_vs_quantised_video": a, "video_vs_quantised_text": b})

        params, _, history = cnn.fit(loss_fn, params, None, sample, steps=options["steps"], lr=options["lr"],
                                     seed=seed, desc=f"hcq {bits} bits", progress=progress)
        books = np.asarray(cnn.l2n(params["codebooks"]))
        return {**arrays, "codebooks": books, **cnn.flatten_params(params)}, {"levels": levels, **history}

    def _embed(self, coder, feats: Features, side: str) -> np.ndarray:
        net = self._net(coder, coder.info["options"])
        params = cnn.unflatten_params(coder.arrays)
        coarse, tokens = self._inputs(coder.arrays, feats, side)
        fn = HCQNet.embed_video if side == "video" else HCQNet.embed_text
        return cnn.batch_apply(lambda c, t: net.apply({"params": params}, c, t, method=fn), coarse, tokens)

    def encode(self, coder, feats: Features) -> np.ndarray:
        return np.asarray(cnn.hard_codes(self._embed(coder, feats, "video"), coder.codebooks))

    def query(self, coder, feats: Features, side: str) -> np.ndarray:
        return self._embed(coder, feats, side)
