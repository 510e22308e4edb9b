"""ConMH (Wang et al., "Contrastive Masked Autoencoders for Self-Supervised Video Hashing", arXiv 2211.11210) on
frozen per-frame features.

Training, per video of T frames: two disjoint random sets of visible frames (each (1 - mask_ratio) T frames; the
paper masks about 75%). A small transformer encoder sees only a view's visible frames (with their temporal
position embeddings) and a linear hash layer gives each visible frame a code b_t = sign(h_t) (straight-through).
A light transformer decoder gets those binary codes at their positions and a learned mask token at every other
position, and reconstructs the masked frames' features (loss: 1 - cosine with the input frame features). The two
views' codes, each the mean of its frames' b_t, are pulled together by the debiased contrastive loss (the other
videos of the batch as negatives).

Encoding: every frame visible, no mask; the code is sign(mean_t h_t) (the mean of the hash layer's outputs before
the sign; the mean of the signs would tie at 0 for an even number of frames).

Choices here (the paper starts from a frozen image CNN's frame features, as here): frame features L2-normalised and
centred by the training mean frame; encoder 2 blocks of width 128, decoder 1 block; contrastive weight 1,
temperature 0.5 and tau_plus 0.1 (the debiasing prior: the chance that a negative shares the anchor's content) as
in the released FCVID config. docs/codes.md lists where the released code differs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tvts.codes import nn as cnn
from tvts.codes.baselines import unit
from tvts.codes.coder import Method
from tvts.codes.features import Features
from tvts.codes.metrics import pack_bits


class ConMHNet(nn.Module):
    bits: int
    frames: int
    feature_dim: int
    width: int = 128
    depth: int = 2
    decoder_depth: int = 1
    heads: int = 4

    def setup(self):
        self.embed = nn.Dense(self.width)
        self.position = self.param("position", nn.initializers.normal(0.02), (self.frames, self.width))
        self.encoder = [cnn.Block(self.heads) for _ in range(self.depth)]
        self.encoder_norm = nn.LayerNorm()
        self.hash = nn.Dense(self.bits)
        self.code_embed = nn.Dense(self.width)
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.width,))
        self.decoder_position = self.param("decoder_position", nn.initializers.normal(0.02),
                                           (self.frames, self.width))
        self.decoder = [cnn.Block(self.heads) for _ in range(self.decoder_depth)]
        self.decoder_norm = nn.LayerNorm()
        self.reconstruct = nn.Dense(self.feature_dim)

    def hash_logits(self, frames: jax.Array, positions: jax.Array) -> jax.Array:
        """frames [B, V, D] at positions [B, V] -> per-frame hash-layer outputs h [B, V, bits]."""
        x = self.embed(frames) + self.position[positions]
        for block in self.encoder:
            x = block(x)
        return self.hash(self.encoder_norm(x))

    def decode(self, codes: jax.Array, positions: jax.Array) -> jax.Array:
        """Binary codes [B, V, bits] of the visible positions [B, V] -> reconstructions of all T frames [B, T, D]."""
        b = codes.shape[0]
        tokens = jnp.broadcast_to(self.mask_token, (b, self.frames, self.width))
        tokens = tokens.at[jnp.arange(b)[:, None], positions].set(self.code_embed(codes))
        x = tokens + self.decoder_position[None]
        for block in self.decoder:
            x = block(x)
        return self.reconstruct(self.decoder_norm(x))

    def __call__(self, frames: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean binary code [B, bits], reconstructions [B, T, D]) of one view."""
        b = cnn.ste_sign(self.hash_logits(frames, positions))
        return b.mean(1), self.decode(b, positions)


class ConMH(Method):
    name = "conmh"
    learned = True
    defaults = {"steps": 500, "batch": 128, "lr": 1e-3, "mask_ratio": 0.75, "width": 128, "depth": 2,
                "temperature": 0.5, "tau_plus": 0.1, "contrastive_weight": 1.0}

    def check(self, feats, bits):
        feats.require_sequence(self.name, min_length=4)
        feats.require_items(self.name, 8, "a batch of contrastive negatives")

    def _net(self, bits: int, frames: int, dim: int, options) -> ConMHNet:
        return ConMHNet(bits, frames, dim, options["width"], options["depth"])

    def fit(self, feats, bits, seed, options, progress):
        frames = unit(feats.require_sequence(self.name))
        mean = frames.reshape(-1, frames.shape[-1]).mean(0)
        x = frames - mean
        n, t, d = x.shape
        visible = max(1, int(round(t * (1 - options["mask_ratio"]))))
        if 2 * visible > t:
            raise feats.fail(f"conmh: {t} frames cannot give two disjoint views of {visible} visible frames "
                             f"(mask_ratio {options['mask_ratio']})")
        net = self._net(bits, t, d, options)
        batch = min(options["batch"], n)
        params = net.init(jax.random.key(seed), x[:2, :visible], np.zeros((2, visible), np.int32))["params"]

        def sample(rng):
            idx = rng.choice(n, batch, replace=False)
            order = np.argsort(rng.random((batch, t)), axis=1)
            return {"frames": x[idx], "a": order[:, :visible].astype(np.int32),
                    "b": order[:, visible:2 * visible].astype(np.int32)}

        def loss_fn(params, state, data, step, key):
            rows = jnp.arange(batch)[:, None]
            target = cnn.l2n(data["frames"])
            total, logs, codes = 0.0, {}, []
            for view in ("a", "b"):
                pos = data[view]
                code, recon = net.apply({"params": params}, data["frames"][rows, pos], pos)
                masked = jnp.ones((batch, t)).at[rows, pos].set(0.0)
                cos = jnp.sum(cnn.l2n(recon) * target, -1)
                rec = jnp.sum((1 - cos) * masked) / jnp.sum(masked)
                total, codes = total + 0.5 * rec, codes + [code]
                logs[f"reconstruction_{view}"] = rec
            con = cnn.debiased_contrastive(codes[0], codes[1], options["temperature"], options["tau_plus"])
            logs["contrastive"] = con
            return total + options["contrastive_weight"] * con, (state, logs)

        params, _, history = cnn.fit(loss_fn, params, None, sample, steps=options["steps"], lr=options["lr"],
                                     seed=seed, desc=f"conmh {bits} bits", progress=progress)
        return {"frame_mean": mean, **cnn.flatten_params(params)}, {"frames": t, "visible_frames": visible, **history}

    def encode(self, coder, feats: Features) -> np.ndarray:
        frames = feats.require_sequence(self.name)
        t = coder.info["frames"]
        if frames.shape[1] != t:
            raise feats.fail(f"conmh codes were trained on {t} frames per video; {feats.sequence_key} has "
                             f"{frames.shape[1]}")
        net = self._net(coder.bits, t, coder.dim, coder.info["options"])
        params = cnn.unflatten_params(coder.arrays)
        positions = np.broadcast_to(np.arange(t, dtype=np.int32), frames.shape[:2])
        x = unit(frames) - coder.arrays["frame_mean"]
        h = cnn.batch_apply(lambda f, p: net.apply({"params": params}, f, p, method=ConMHNet.hash_logits).mean(1),
                            x, np.ascontiguousarray(positions))
        return pack_bits(np.where(h >= 0, 1.0, -1.0))
