"""The objectives against NumPy references."""
import jax.numpy as jnp
import numpy as np

from tvts import losses


def np_log_softmax(x, axis):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def np_contrastive(v, t, temperature):
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = v @ t.T / temperature
    n = len(s)
    v2t = -np.mean([np_log_softmax(s, 1)[i, i] for i in range(n)])
    t2v = -np.mean([np_log_softmax(s, 0)[i, i] for i in range(n)])
    return (v2t + t2v) / 2, v2t, t2v


def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(9, 16)), rng.normal(size=(9, 16))
    got, metrics = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(t), 0.05)
    want, v2t, t2v = np_contrastive(v, t, 0.05)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive_v2t"]), v2t, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["contrastive_t2v"]), t2v, rtol=1e-5)


def test_contrastive_loss_is_low_for_matching_pairs_and_scale_invariant():
    v = np.eye(6, 8)  # orthogonal: cosine 1 on the diagonal, 0 elsewhere
    low, _ = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(3.0 * v), 0.05)
    # cosine ignores the norm: loss = log(1 + 5 exp(-1 / 0.05)) in both directions
    np.testing.assert_allclose(float(low), np.log1p(5 * np.exp(-20.0)), atol=1e-6)
    mismatched, _ = losses.contrastive_loss(jnp.asarray(v), jnp.asarray(np.roll(v, 1, axis=0)), 0.05)
    np.testing.assert_allclose(float(mismatched), 20.0 + np.log1p(5 * np.exp(-20.0)), rtol=1e-5)


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
