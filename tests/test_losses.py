"""The objectives against NumPy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from tvts import losses


def np_log_softmax(x, axis):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def np_contrastive(v, t, temperature):
    """The published NormSoftmaxLoss on the published sim_matrix (docs/published_recipe.md, "Objectives")."""
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-8)
    s = v @ t.T / temperature
    n = len(s)
    v2t = -np.mean([np_log_softmax(s, 1)[i, i] for i in range(n)])
    t2v = -np.mean([np_log_softmax(s, 0)[i, i] for i in range(n)])
    return v2t + t2v, v2t, t2v


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(9, 16)), rng.normal(size=(9, 16))
    got, metrics = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(t), 0.05)
    want, v2t, t2v = np_contrastive(v, t, 0.05)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive_v2t"]), v2t, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive_t2v"]), t2v, rtol=1e-5)
    mean, _ = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(t), 0.05, "mean")
    np.testing.assert_allclose(float(mean), want / 2, rtol=1e-5)


def test_contrastive_loss_by_hand_on_a_3x3_similarity_matrix():
    """The published loss, -loss_i - loss_j, written out for three pairs.

    videos (1, 0), (0, 2), (3, 4) and texts (2, 0), (1, 1), (0, -1) have unit directions (1, 0), (0, 1), (.6, .8) and
    (1, 0), (r, r), (0, -1) with r = 1/sqrt(2), so the cosine matrix (rows videos, columns texts) is
    """
    r = 1 / np.sqrt(2)
    cos = np.array([[1.0, r, 0.0],
                    [0.0, r, -1.0],
                    [0.6, 0.6 * r + 0.8 * r, -0.8]])
    logits = cos / 0.05
    # video i -> text i: -log(exp(l_ii) / sum_j exp(l_ij)), mean over i; text j -> video j: the same over columns
    v2t = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)])
    t2v = np.mean([np.log(np.exp(logits[:, j]).sum()) - logits[j, j] for j in range(3)])
    # rows: video 0 and 1 find their text (0.0029, 7e-7); video 2's own text is its worst (-0.8 vs 0.99): 35.7994
    np.testing.assert_allclose(v2t, (0.0028533 + 7.2135e-7 + 35.7993999) / 3, rtol=1e-6)
    np.testing.assert_allclose(t2v, (0.0003354 + 5.6638169 + 16.0000001) / 3, rtol=1e-6)
    video = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    text = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    got, metrics = losses.contrastive_loss(video, text, temperature=0.05)
    np.testing.assert_allclose(float(metrics["contrastive_v2t"]), v2t, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive_t2v"]), t2v, rtol=1e-5)
    np.testing.assert_allclose(float(got), v2t + t2v, rtol=1e-5)  # summed, as published
    mean, _ = losses.contrastive_loss(video, text, temperature=0.05, reduction="mean")
    np.testing.assert_allclose(float(mean), (v2t + t2v) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["batch_v2t_acc"]), 2 / 3)  # rows 0, 1 pick their text; row 2 text 1


def test_cosine_clamps_each_norm_at_1e_8():
    """sim_matrix divides each vector by max(its norm, 1e-8): a zero vector gives similarity 0 (not NaN), and a
    vector of norm 1e-9 is scaled to norm 0.1 (a clamp on the product of the norms would give 1.0 here)."""
    sim = losses.cosine_similarity(jnp.array([[1e-9, 0.0], [0.0, 0.0]]), jnp.array([[3.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(sim), [[0.1], [0.0]], rtol=1e-5)
    loss, _ = losses.contrastive_loss(jnp.zeros((2, 4)), jnp.ones((2, 4)))
    np.testing.assert_allclose(float(loss), 2 * np.log(2), rtol=1e-6)  # all logits 0: log 2 in each direction


def test_unknown_reduction_is_an_error():
    with pytest.raises(ValueError, match="reduction 'max'"):
        losses.contrastive_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), 0.05, "max")


def test_contrastive_loss_is_low_for_matching_pairs_and_scale_invariant():
    v = np.eye(6, 8)  # orthogonal: cosine 1 on the diagonal, 0 elsewhere
    low, _ = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(3.0 * v), 0.05)
    # cosine ignores the norm: loss = log(1 + 5 exp(-1 / 0.05)) in each direction, summed
    np.testing.assert_allclose(float(low), 2 * np.log1p(5 * np.exp(-20.0)), atol=1e-6)
    mismatched, _ = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(np.roll(v, 1, axis=0)), 0.05)
    np.testing.assert_allclose(float(mismatched), 2 * (20.0 + np.log1p(5 * np.exp(-20.0))), rtol=1e-5)


def test_transcribed_text_embedding_is_the_mean_of_transcripts():
    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_allclose(losses.transcript_text_embedding(jnp.asarray(x)), x.mean(1))


def test_sorting_loss_and_accuracy_by_hand():
    # video 0: confident and right for all; video 1: transcripts 2 and 3 swapped
    logits = np.full((2, 4, 4), -10.0)
    for j in range(4):
        logits[0, j, j] = 10.0
    for j, c in enumerate([0, 1, 3, 2]):
        logits[1, j, c] = 10.0
    loss, acc = losses.sorting_loss(jnp.asarray(logits))
    assert float(acc) == 6 / 8
    want = -np.mean(np_log_softmax(logits, -1)[np.arange(2)[:, None], np.arange(4)[None], np.arange(4)[None]])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    uniform, _ = losses.sorting_loss(jnp.zeros((3, 4, 4)))
    np.testing.assert_allclose(float(uniform), np.log(4), rtol=1e-6)
