"""The baselines at equal bits: random-hyperplane LSH, ITQ (binary), PQ and OPQ (faiss k-means; ADC).

All four see the same input: each vector L2-normalised (the backbone is trained with cosine similarities), then
centred by its modality's training mean (video and, when the training file has texts, text separately: the two
towers' embeddings sit in different cones of one space, and a shared centre would put every text on one side of
most hyperplanes).
"""
from __future__ import annotations

import abc

import numpy as np

from tvts.codes.coder import CODEWORDS, Coder, Method
from tvts.codes.features import Features
from tvts.codes.metrics import pack_bits


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def centres(feats: Features) -> dict[str, np.ndarray]:
    out = {"mean": unit(feats.vectors).mean(0)}
    if feats.texts is not None:
        out["text_mean"] = unit(feats.texts).mean(0)
    return out


def prepared(coder_arrays: dict[str, np.ndarray], feats: Features, side: str) -> np.ndarray:
    """The normalised, centred vectors of one side ('video' or 'text') of a feature file."""
    if side == "text":
        if feats.texts is None:
            raise feats.fail("has no 'texts' to use as text queries")
        return unit(feats.texts) - coder_arrays.get("text_mean", coder_arrays["mean"])
    return unit(feats.vectors) - coder_arrays["mean"]


class VectorBaseline(Method):
    """Baselines code one vector per item and encode texts the same way as videos."""

    text_queries = True

    @abc.abstractmethod
    def project(self, coder: Coder, x: np.ndarray) -> np.ndarray:
        """The prepared vectors in the space the codes live in (quantizers: their ADC query vectors)."""

    @abc.abstractmethod
    def encode_vectors(self, coder: Coder, x: np.ndarray) -> np.ndarray:
        """Codes of prepared vectors."""

    def encode(self, coder: Coder, feats: Features) -> np.ndarray:
        return self.encode_vectors(coder, prepared(coder.arrays, feats, "video"))

    def query(self, coder: Coder, feats: Features, side: str) -> np.ndarray:
        x = prepared(coder.arrays, feats, side)
        return self.encode_vectors(coder, x) if self.kind == "binary" else self.project(coder, x)


# ---------------------------------------------------------------------------------------------------------------
# Binary
# ---------------------------------------------------------------------------------------------------------------
class LSH(VectorBaseline):
    """Random-hyperplane LSH (Charikar 2002): bit b = sign(<x, w_b>), w_b ~ N(0, I); Hamming distance estimates the
    angle between the centred vectors."""

    name = "lsh"

    def check(self, feats, bits):
        """Any checked feature file will do: the hyperplanes are random, only the centre is learned."""

    def fit(self, feats, bits, seed, options, progress):
        rng = np.random.default_rng(seed)
        return {**centres(feats), "hyperplanes": rng.standard_normal((feats.dim, bits)).astype(np.float32)}, {}

    def project(self, coder, x):
        return x @ coder.arrays["hyperplanes"]

    def encode_vectors(self, coder, x):
        return pack_bits(self.project(coder, x))


def itq_rotation(v: np.ndarray, iterations: int, seed: int) -> tuple[np.ndarray, list[float]]:
    """ITQ (Gong & Lazebnik 2011): the orthogonal R minimising ||sign(V R) - V R||_F^2 by alternating B = sign(V R)
    with the orthogonal Procrustes solution R = U_A U_B^T of svd(B^T V) = U_B S U_A^T. Returns R and the
    quantisation error before the first and after every update."""
    rng = np.random.default_rng(seed)
    c = v.shape[1]
    r, _ = np.linalg.qr(rng.standard_normal((c, c)))
    errors = []
    for _ in range(iterations):
        projected = v @ r
        b = np.where(projected >= 0, 1.0, -1.0)
        errors.append(float(np.sum((b - projected) ** 2)))
        u_b, _, u_a_t = np.linalg.svd(b.T @ v)
        r = (u_b @ u_a_t).T
    projected = v @ r
    errors.append(float(np.sum((np.where(projected >= 0, 1.0, -1.0) - projected) ** 2)))
    return r.astype(np.float32), errors


class ITQ(VectorBaseline):
    """Iterative quantisation: PCA to `bits` dimensions, then the rotation that best fits the binary corners."""

    name = "itq"
    defaults = {"iterations": 50}

    def check(self, feats, bits):
        if feats.dim < bits:
            raise feats.fail(f"ITQ at {bits} bits needs features at least {bits} wide (PCA to {bits} dimensions); "
                             f"they are {feats.dim}")
        feats.require_items("itq", bits + 1, f"a PCA to {bits} dimensions")

    def fit(self, feats, bits, seed, options, progress):
        arrays = centres(feats)
        x = unit(feats.vectors) - arrays["mean"]
        x64 = x.astype(np.float64)
        _, vectors = np.linalg.eigh(x64.T @ x64)  # ascending eigenvalues
        pca = vectors[:, ::-1][:, :bits].astype(np.float32)
        rotation, errors = itq_rotation(x @ pca, options["iterations"], seed)
        return {**arrays, "pca": pca, "rotation": rotation}, {"quantization_error": [errors[0], errors[-1]]}

    def project(self, coder, x):
        return x @ coder.arrays["pca"] @ coder.arrays["rotation"]

    def encode_vectors(self, coder, x):
        return pack_bits(self.project(coder, x))


# ---------------------------------------------------------------------------------------------------------------
# Product quantisation
# ---------------------------------------------------------------------------------------------------------------
def pad_width(x: np.ndarray, multiple: int) -> np.ndarray:
    """Zero columns up to a multiple of `multiple` (M sub-spaces must split the width evenly; zeros change no
    distance)."""
    extra = -x.shape[1] % multiple
    return np.pad(x, ((0, 0), (0, extra))) if extra else x


def pq_encode(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """uint8 [N, M]: the nearest codeword (squared Euclidean) of each sub-vector."""
    m, _, ds = codebooks.shape
    sub = x.reshape(len(x), m, ds)
    codes = np.empty((len(x), m), np.uint8)
    norms = (codebooks * codebooks).sum(-1)  # [M, K]
    for start in range(0, len(x), 4096):
        block = sub[start:start + 4096]
        d = norms[None] - 2 * np.einsum("nmd,mkd->nmk", block, codebooks)
        codes[start:start + 4096] = d.argmin(-1)
    return codes


def train_pq(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    """faiss k-means per sub-space -> codebooks [M, 256, d / M]."""
    import faiss

    pq = faiss.ProductQuantizer(x.shape[1], m, 8)
    pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # small training sets are checked by the caller; no faiss warning
    pq.cp.niter = 25
    pq.train(np.ascontiguousarray(x, np.float32))
    return faiss.vector_to_array(pq.centroids).reshape(m, CODEWORDS, x.shape[1] // m).astype(np.float32)


class PQ(VectorBaseline):
    """Product quantisation (Jegou et al. 2011): M = bits / 8 sub-spaces, 256 codewords each; ADC at search."""

    name = "pq"
    kind = "quantizer"
    metric = "l2"

    def check(self, feats, bits):
        feats.require_items(self.name, CODEWORDS, f"k-means with {CODEWORDS} codewords per codebook")

    def fit(self, feats, bits, seed, options, progress):
        arrays = centres(feats)
        x = pad_width(unit(feats.vectors) - arrays["mean"], bits // 8)
        return {**arrays, "codebooks": train_pq(x, bits // 8, seed)}, {}

    def project(self, coder, x):
        return pad_width(x, coder.bits // 8)

    def encode_vectors(self, coder, x):
        return pq_encode(self.project(coder, x), coder.codebooks)


class OPQ(PQ):
    """Optimised PQ (Ge et al. 2013): a learned rotation (faiss OPQMatrix) balances the sub-spaces, then PQ."""

    name = "opq"
    defaults = {"iterations": 10}  # alternations of rotation and k-means (faiss's default 50 is 5x slower here)

    def fit(self, feats, bits, seed, options, progress):
        import faiss

        arrays = centres(feats)
        m = bits // 8
        x = pad_width(unit(feats.vectors) - arrays["mean"], m)
        opq = faiss.OPQMatrix(x.shape[1], m)
        inner = faiss.ProductQuantizer(x.shape[1], m, 8)  # kept referenced: opq.pq does not own it
        inner.cp.seed, inner.cp.min_points_per_centroid = seed, 1
        opq.pq = inner
        opq.niter = options["iterations"]
        opq.train(np.ascontiguousarray(x))
        rotation = faiss.vector_to_array(opq.A).reshape(x.shape[1], x.shape[1]).T.astype(np.float32)
        return {**arrays, "rotation": rotation, "codebooks": train_pq(x @ rotation, m, seed)}, {}

    def project(self, coder, x):
        return pad_width(x, coder.bits // 8) @ coder.arrays["rotation"]


BASELINES: dict[str, Method] = {m.name: m for m in (LSH(), ITQ(), PQ(), OPQ())}
