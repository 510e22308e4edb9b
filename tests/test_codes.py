"""Compact codes (tvts/codes): the straight-through sign, product quantisation and ADC, the ranking metrics with
ties, ITQ, determinism, and the feature-file checks, each against NumPy or a hand computation."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvts.codes import baselines, coder, features, methods, metrics, synthetic
from tvts.codes import nn as cnn


# ---------------------------------------------------------------------------------------------------------------
# Straight-through sign
# ---------------------------------------------------------------------------------------------------------------
def test_ste_sign_is_exactly_plus_minus_one_and_passes_gradient():
    x = jnp.array([-2.0, -0.7, -1e-8, 0.0, 1e-8, 0.3, 1.0, 3.5])
    b = np.asarray(cnn.ste_sign(x))
    np.testing.assert_array_equal(b, [-1, -1, -1, 1, 1, 1, 1, 1])  # exact, sign(0) = +1
    assert set(np.unique(b)) == {-1.0, 1.0}
    w = jnp.arange(1.0, 9.0)
    grad = np.asarray(jax.grad(lambda v: jnp.sum(cnn.ste_sign(v) * w))(x))
    # hardtanh's straight-through gradient: w where |x| <= 1, 0 outside
    np.testing.assert_array_equal(grad, np.where(np.abs(np.asarray(x)) <= 1, np.asarray(w), 0.0))


# ---------------------------------------------------------------------------------------------------------------
# Product quantisation and ADC
# ---------------------------------------------------------------------------------------------------------------
def test_pq_encode_decode_round_trip_and_nearest_codeword():
    rng = np.random.default_rng(0)
    m, k, ds = 4, 256, 6
    books = rng.standard_normal((m, k, ds)).astype(np.float32)
    codes = rng.integers(0, k, (50, m)).astype(np.uint8)
    x = metrics.decode(codes, books)
    np.testing.assert_array_equal(x[3, ds:2 * ds], books[1, codes[3, 1]])
    np.testing.assert_array_equal(baselines.pq_encode(x, books), codes)  # a codeword encodes to itself
    noisy = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    reference = np.array([[np.argmin(((noisy[i, j * ds:(j + 1) * ds] - books[j]) ** 2).sum(1)) for j in range(m)]
                          for i in range(len(noisy))])
    np.testing.assert_array_equal(baselines.pq_encode(noisy, books), reference)


def test_kmeans_codebooks_cover_planted_directions():
    """Sub-vectors around 256 planted directions per codebook, at any length: the k-means start of the learned
    quantisers (cosine codes) puts a codeword near nearly every item's direction and uses nearly every codeword,
    where the random-normal start they replace leaves items far from any codeword."""
    rng = np.random.default_rng(0)
    m, k, ds = 2, 256, 16
    planted = rng.standard_normal((m, k, ds)).astype(np.float32)
    planted /= np.linalg.norm(planted, axis=-1, keepdims=True)
    ids = rng.integers(0, k, (2048, m))
    scale = rng.uniform(0.5, 3.0, (len(ids), m, 1)).astype(np.float32)
    z = planted[np.arange(m), ids] * scale + 0.01 * rng.standard_normal((len(ids), m, ds)).astype(np.float32)
    z = z.reshape(len(z), -1)

    def fit(books):  # mean cosine of each sub-vector with its codeword, codewords used per codebook
        scores = np.asarray(cnn.codeword_scores(jnp.asarray(z), jnp.asarray(books)))
        return scores.max(-1).mean(), min(len(np.unique(c)) for c in scores.argmax(-1).T)

    cosine, used = fit(cnn.kmeans_codebooks(z, m, seed=0))
    assert cosine > 0.94 and used > 200, (cosine, used)
    random_cosine, _ = fit(rng.standard_normal((m, k, ds)).astype(np.float32))
    assert random_cosine < 0.8, random_cosine


def test_pq_codebooks_from_faiss_encode_as_faiss_does():
    import faiss

    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    books = baselines.train_pq(x, 2, seed=3)
    pq = faiss.ProductQuantizer(16, 2, 8)
    faiss.copy_array_to_vector(books.ravel(), pq.centroids)
    pq.is_trained = True
    np.testing.assert_array_equal(baselines.pq_encode(x, books), pq.compute_codes(x))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adc_distances_match_numpy_reference(metric):
    rng = np.random.default_rng(2)
    m, k, ds = 3, 256, 4
    books = rng.standard_normal((m, k, ds)).astype(np.float32)
    codes = rng.integers(0, k, (40, m)).astype(np.uint8)
    q = rng.standard_normal((7, m * ds)).astype(np.float32)
    recon = np.stack([np.concatenate([books[j, codes[i, j]] for j in range(m)]) for i in range(40)])
    if metric == "l2":
        reference = ((q[:, None, :] - recon[None]) ** 2).sum(-1)
    else:
        reference = -(q @ recon.T)
    np.testing.assert_allclose(metrics.adc_distances(q, codes, books, metric), reference, rtol=1e-5, atol=1e-4)


def test_hamming_distances_match_popcount():
    rng = np.random.default_rng(3)
    a, b = rng.choice([-1, 1], (9, 24)), rng.choice([-1, 1], (11, 24))
    reference = (a[:, None, :] != b[None]).sum(-1)
    np.testing.assert_array_equal(metrics.hamming_distances(metrics.pack_bits(a), metrics.pack_bits(b), 24), reference)


# ---------------------------------------------------------------------------------------------------------------
# Ranking metrics with ties (by hand)
# ---------------------------------------------------------------------------------------------------------------
# one query, five items: distances with two tie groups; relevant items 0, 3, 4.
DIST = np.array([[1.0, 0.0, 1.0, 2.0, 0.0]])
REL = np.array([[True, False, False, True, True]])
# ties by index: order 1, 4, 0, 2, 3 -> hits F T T F T -> precision at the hits 1/2, 2/3, 3/5
# pessimistic:   order 1, 4, 2, 0, 3 -> hits F T F T T -> precision at the hits 1/2, 2/4, 3/5


@pytest.mark.parametrize("ties,ap_norm,k,expected", [
    ("index", "retrieved", "all", (1 / 2 + 2 / 3 + 3 / 5) / 3),
    ("index", "retrieved", 2, (1 / 2) / 1),
    ("index", "min", 2, (1 / 2) / 2),
    ("index", "ssvh", 2, (1 / 2) / 2),
    ("index", "retrieved", 3, (1 / 2 + 2 / 3) / 2),
    ("index", "min", 3, (1 / 2 + 2 / 3) / 3),
    ("index", "ssvh", 5, (1 / 2 + 2 / 3 + 3 / 5) / 5),
    ("pessimistic", "retrieved", "all", (1 / 2 + 2 / 4 + 3 / 5) / 3),
    ("pessimistic", "retrieved", 3, (1 / 2) / 1),
    ("pessimistic", "ssvh", 4, (1 / 2 + 2 / 4) / 4),
])
def test_map_at_k_by_hand(ties, ap_norm, k, expected):
    out = metrics.ranking_metrics(DIST, REL, ks=(k,), ap_norm=ap_norm, ties=ties)
    assert out[f"mAP@{k}"] == pytest.approx(expected)


def test_precision_and_queries_without_relevant_items():
    dist = np.vstack([DIST, DIST])
    rel = np.vstack([REL, np.zeros_like(REL)])  # the second query has nothing relevant: AP 0, still counted
    out = metrics.ranking_metrics(dist, rel, ks=(2, 3, "all"))
    assert out["P@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert out["P@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert out["mAP@all"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3 / 2)


def test_recall_at_k_with_ties_by_hand():
    # query i's pair is item i. q0: item 2 nearer, item 1 tied with the pair (after it by index);
    # q1: item 0 tied, before the pair by index; q2: item 1 nearer, item 0 tied and earlier.
    dist = np.array([[0.5, 0.5, 0.1], [0.2, 0.2, 0.9], [0.3, 0.0, 0.3]])
    np.testing.assert_array_equal(metrics.paired_ranks(dist, ties="index"), [2, 2, 3])
    np.testing.assert_array_equal(metrics.paired_ranks(dist, ties="pessimistic"), [3, 2, 3])
    out = metrics.recall_metrics(dist, ks=(1, 2, 3), ties="index")
    assert (out["R@1"], out["R@2"], out["R@3"]) == pytest.approx((0.0, 200 / 3, 100.0))
    assert metrics.recall_metrics(dist, ks=(2,), ties="pessimistic")["R@2"] == pytest.approx(100 / 3)
    # the project's retrieval evaluator ranks ties pessimistically too (similarity = -distance)
    from tvts.evaluators.retrieval import retrieval_ranks

    np.testing.assert_array_equal(metrics.paired_ranks(dist, ties="pessimistic"), retrieval_ranks(-dist))


def test_debiased_contrastive_matches_its_formula():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    t, tau = 0.5, 0.1
    z = np.concatenate([a, b])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(6):
        j = (i + 3) % 6
        pos = np.exp(z[i] @ z[j] / t)
        neg = sum(np.exp(z[i] @ z[k] / t) for k in range(6) if k not in (i, j))
        ng = max((neg - 4 * tau * pos) / (1 - tau), 4 * np.exp(-1 / t))
        losses.append(-np.log(pos / (pos + ng)))
    got = cnn.debiased_contrastive(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t, tau)
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ITQ
# ---------------------------------------------------------------------------------------------------------------
def test_itq_rotation_is_orthogonal_and_lowers_quantisation_error():
    rng = np.random.default_rng(5)
    v = rng.standard_normal((500, 8)) * np.linspace(3, 0.5, 8)
    r, errors = baselines.itq_rotation(v, iterations=20, seed=0)
    np.testing.assert_allclose(r.T @ r, np.eye(8), atol=1e-5)
    assert all(e1 <= e0 + 1e-6 for e0, e1 in zip(errors, errors[1:]))  # each Procrustes step can only lower it
    assert errors[-1] < 0.95 * errors[0]
    projected = v @ r  # the reported error is ||sign(VR) - VR||^2, recomputed here
    assert np.sum((np.where(projected >= 0, 1, -1) - projected) ** 2) == pytest.approx(errors[-1], rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Determinism and the synthetic features
# ---------------------------------------------------------------------------------------------------------------
def _small(n=300, split="train", seed=0):
    return features.from_arrays(synthetic.generate(n, split, seed=seed), f"{split}.npz")


def test_synthetic_features_are_a_function_of_seed_and_hold_the_keys():
    a, b = synthetic.generate(20, "train", seed=1), synthetic.generate(20, "train", seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["embeddings"], synthetic.generate(20, "train", seed=2)["embeddings"])
    assert not np.array_equal(a["embeddings"], synthetic.generate(20, "query", seed=1)["embeddings"])
    np.testing.assert_allclose(a["embeddings"], a["frame_embeddings"].mean(1), rtol=1e-5, atol=1e-5)
    assert a["frame_embeddings"].shape == (20, 12, 256) and a["text_tokens"].shape == (20, 6, 256)
    assert a["depth_0"].shape == (20, 12, 64) and a["labels"].dtype == np.int64


def test_learned_and_random_codes_are_determined_by_the_seed():
    feats = _small(300)
    opts = {"steps": 3, "batch": 16, "dim": 32, "memory": 32}
    one = methods.train("mecoq", 16, feats, seed=7, progress=False, **opts)
    two = methods.train("mecoq", 16, feats, seed=7, progress=False, **opts)
    other = methods.train("mecoq", 16, feats, seed=8, progress=False, **opts)
    assert one.arrays.keys() == two.arrays.keys()
    assert all(np.array_equal(one.arrays[k], two.arrays[k]) for k in one.arrays)
    assert not np.array_equal(one.arrays["codebooks"], other.arrays["codebooks"])
    np.testing.assert_array_equal(methods.database_codes(one, feats), methods.database_codes(two, feats))
    lsh = [methods.train("lsh", 32, feats, seed=s, progress=False).arrays["hyperplanes"] for s in (1, 1, 2)]
    assert np.array_equal(lsh[0], lsh[1]) and not np.array_equal(lsh[0], lsh[2])


def test_mecoq_views_are_views_of_the_encoded_vector():
    """views='auto' draws frame halves only when the item vectors are the frames' mean; otherwise (a whole-clip
    embedding beside per-frame encodings) it perturbs the vector itself."""
    arrays = synthetic.generate(300, "train", seed=0)
    opts = {"steps": 2, "batch": 16, "dim": 32, "memory": 32}
    same = methods.train("mecoq", 16, features.from_arrays(arrays, "same.npz"), progress=False, **opts)
    assert same.info["views_from"] == "frame_embeddings"
    clip = dict(arrays, embeddings=np.random.default_rng(1).standard_normal((300, 256)).astype(np.float32))
    other = methods.train("mecoq", 16, features.from_arrays(clip, "clip.npz"), progress=False, **opts)
    assert other.info["views_from"] == "vector"
    forced = methods.train("mecoq", 16, features.from_arrays(clip, "clip.npz"), progress=False, views="frames",
                           **opts)
    assert forced.info["views_from"] == "frame_embeddings"
    no_frames = {k: v for k, v in arrays.items() if k != "frame_embeddings"}
    with pytest.raises(features.FeatureFileError, match="vec.npz: mecoq needs per-frame features"):
        methods.train("mecoq", 16, features.from_arrays(no_frames, "vec.npz"), progress=False, views="frames",
                      **opts)


def test_codes_directory_round_trip(tmp_path):
    feats = _small(300)
    trained = methods.train("itq", 16, feats, seed=0, progress=False)
    trained.save(str(tmp_path / "itq"))
    loaded = coder.Coder.load(str(tmp_path / "itq"))
    assert (loaded.method, loaded.bits, loaded.kind, loaded.dim) == ("itq", 16, "binary", 256)
    np.testing.assert_array_equal(methods.database_codes(loaded, feats), methods.database_codes(trained, feats))
    codes = methods.database_codes(loaded, feats)
    assert codes.shape == (300, 2) and codes.dtype == np.uint8  # 16 bits packed in 2 bytes


def test_evaluate_cli_float_reference_matches_numpy(tmp_path):
    from tvts.codes import evaluate, train

    paths = synthetic.write(str(tmp_path / "f"), train=300, queries=40, database=300)
    for method in ("lsh", "pq"):
        train.main(["--method", method, "--bits", "16", "--features", paths["train"], "--out",
                    str(tmp_path / "codes" / method), "--quiet"])
    result = evaluate.main(["--codes", str(tmp_path / "codes"), "--queries", paths["query"], "--database",
                            paths["database"], "--out", str(tmp_path / "results")])
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"float", "lsh", "pq"} and rows["pq"]["bytes_per_item"] == 2
    # the float row against a direct NumPy AP (ties do not occur with float cosine here)
    q, d = np.load(paths["query"]), np.load(paths["database"])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit(q["embeddings"]) @ unit(d["embeddings"]).T
    aps = []
    for i in range(len(sims)):
        hits = (d["labels"][np.argsort(-sims[i])] == q["labels"][i]).astype(float)
        aps.append((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum())
    assert rows["float"]["mAP@all"] == pytest.approx(np.mean(aps), rel=1e-5)
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    assert saved["rows"][1]["mAP@all"] == pytest.approx(rows[saved["rows"][1]["method"]]["mAP@all"])
    assert "| lsh |" in (tmp_path / "results" / "results.md").read_text()
    assert os.path.getsize(tmp_path / "results" / "map_vs_bits.png") > 1000


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a message naming the file and the problem, before training
# ---------------------------------------------------------------------------------------------------------------
def _write(tmp_path, name, **arrays):
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def test_bad_feature_files_name_the_file_and_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.standard_normal((300, 16)).astype(np.float32)
    cases = {
        "keys.npz": ({"features": good}, "no 'embeddings' key (found: features)"),
        "nan.npz": ({"embeddings": np.where(np.arange(16) == 3, np.nan, good)}, "'embeddings' holds NaN in 300 of 300"),
        "width.npz": ({"embeddings": good, "frame_embeddings": np.zeros((300, 4, 8), np.float32)},
                      "'frame_embeddings' has shape (300, 4, 8)"),
        "count.npz": ({"embeddings": good, "labels": np.zeros(299, np.int64)}, "'labels' has shape (299,)"),
        "texts.npz": ({"embeddings": good, "texts": np.zeros((300, 15), np.float32)}, "'texts' has shape (300, 15)"),
    }
    for name, (arrays, problem) in cases.items():
        path = _write(tmp_path, name, **arrays)
        with pytest.raises(features.FeatureFileError) as err:
            features.load(path)
        assert str(err.value).startswith(path + ":") and problem in str(err.value), str(err.value)


def test_method_needs_are_checked_before_training(tmp_path):
    from tvts.codes import train

    rng = np.random.default_rng(0)
    few = _write(tmp_path, "few.npz", embeddings=rng.standard_normal((100, 16)).astype(np.float32))
    out = tmp_path / "codes"
    with pytest.raises(SystemExit, match=f"{few}: 100 items are too few for pq: it needs at least 256"):
        train.main(["--method", "pq", "--bits", "16", "--features", few, "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit, match=f"{few}: conmh needs per-frame features"):
        train.main(["--method", "conmh", "--bits", "16", "--features", few, "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit, match=f"{few}: phpq is supervised and needs 'labels'"):
        train.main(["--method", "phpq", "--bits", "16", "--features", few, "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit, match=f"{few}: hcq needs token-level text features"):
        train.main(["--method", "hcq", "--bits", "16", "--features", few, "--out", str(out), "--quiet"])
    assert not out.exists()  # nothing was trained or written


def test_queries_of_another_width_are_refused(tmp_path):
    from tvts.codes import evaluate

    trained = methods.train("lsh", 16, _small(50), progress=False)
    narrow = features.from_arrays({"embeddings": np.ones((5, 8), np.float32), "labels": np.zeros(5, np.int64)},
                                  "narrow.npz")
    with pytest.raises(features.FeatureFileError, match="narrow.npz: query features have width D = 8, but the "
                                                        "codes were trained on D = 256"):
        evaluate.evaluate_coder(trained, narrow, _small(50, "database"))


@pytest.mark.slow
def test_contrastive_quantisation_beats_lsh_and_itq_on_planted_classes():
    """The issue's check in small: at 32 bits MeCoQ, trained briefly, ranks the planted classes better than LSH
    (near its floor) and ITQ (whose principal components hold the per-frame nuisance). docs/codes.md has the full
    sweep."""
    from tvts.codes import evaluate

    train, queries, database = _small(1500), _small(150, "query"), _small(1500, "database")
    chance = metrics.relevance(queries.labels, database.labels).mean()
    scores = {}
    for method, opts in (("lsh", {}), ("itq", {}), ("mecoq", {"steps": 150})):
        trained = methods.train(method, 32, train, seed=0, progress=False, **opts)
        scores[method] = evaluate.evaluate_coder(trained, queries, database)["mAP@all"]
    assert scores["lsh"] < 3 * chance
    assert scores["mecoq"] > max(scores["lsh"], scores["itq"]) + 0.1, scores
