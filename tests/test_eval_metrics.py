"""Metric cores of the evaluators, checked against hand computations and independent references."""
import numpy as np
import pytest

from tvts.evaluators.classification import average_views, class_embeddings, multiple_choice, zero_shot_classify
from tvts.evaluators.linear_probe import DEFAULT_L2_GRID, linear_probe, v1_lr_schedule
from tvts.evaluators.retrieval import (
    chance_metrics,
    metrics_from_ranks,
    recall_at_k_curve,
    retrieval_metrics,
    retrieval_ranks,
    text_video_retrieval,
)
from tvts.plots import plot_recall_curves, plot_training_curves

# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------

# Ground truth on the diagonal. Ranks by hand (ties count against the query):
#   row 0: 0.9 is the best                                   -> 1
#   row 1: 0.8 and 0.7 beat 0.5                              -> 3
#   row 2: all five tied                                     -> 5
#   row 3: 0.6 tied with column 1                            -> 2
#   row 4: 0.5 is the best                                   -> 1
HAND_SIM = np.array([
    [0.9, 0.1, 0.2, 0.3, 0.0],
    [0.8, 0.5, 0.7, 0.1, 0.0],
    [0.3, 0.3, 0.3, 0.3, 0.3],
    [0.2, 0.6, 0.1, 0.6, 0.5],
    [0.1, 0.2, 0.3, 0.4, 0.5],
])
HAND_RANKS = [1, 3, 5, 2, 1]


def test_retrieval_metrics_hand_example():
    np.testing.assert_array_equal(retrieval_ranks(HAND_SIM), HAND_RANKS)
    m = retrieval_metrics(HAND_SIM)
    assert set(m) == {'R@1', 'R@5', 'R@10', 'R@50', 'MdR', 'MnR'}
    assert m['R@1'] == pytest.approx(40.0)
    assert m['R@5'] == m['R@10'] == m['R@50'] == pytest.approx(100.0)
    assert m['MdR'] == pytest.approx(2.0)
    assert m['MnR'] == pytest.approx(2.4)
    assert all(isinstance(v, float) for v in m.values())
    np.testing.assert_allclose(recall_at_k_curve(HAND_SIM, ks=range(1, 7)),
                               [40, 60, 80, 80, 100, 100])


def test_retrieval_ties_do_not_depend_on_candidate_order():
    perm = np.array([4, 2, 0, 3, 1])
    # Permute candidates and queries together: the ground truth stays on the diagonal.
    np.testing.assert_array_equal(retrieval_ranks(HAND_SIM[perm][:, perm]),
                                  np.array(HAND_RANKS)[perm])


def _brute_force(sim, ks=(1, 5, 10, 50)):
    n = sim.shape[0]
    ranks = []
    for i in range(n):
        rank = 1
        for j in range(n):
            if j != i and sim[i, j] >= sim[i, i]:
                rank += 1
        ranks.append(rank)
    ranks = np.array(ranks)
    out = {f'R@{k}': 100.0 * sum(r <= k for r in ranks) / n for k in ks}
    out['MdR'] = float(np.median(ranks))
    out['MnR'] = float(sum(ranks) / n)
    return out, ranks


@pytest.mark.parametrize('seed,levels', [(0, None), (1, 3), (2, 2)])
def test_retrieval_metrics_match_brute_force(seed, levels):
    rng = np.random.default_rng(seed)
    n = 73
    sim = rng.normal(size=(n, n)) if levels is None else rng.integers(0, levels, size=(n, n))
    sim = sim.astype(np.float32)                 # levels != None: many ties
    expected, ranks = _brute_force(sim)
    got = retrieval_metrics(sim)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k]), k
    curve = recall_at_k_curve(sim)
    assert curve.shape == (100,)
    np.testing.assert_allclose(curve, [100.0 * np.mean(ranks <= k) for k in range(1, 101)])


def test_retrieval_explicit_targets_and_nan():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(6, 9))
    targets = np.array([8, 0, 3, 3, 5, 1])
    expected = [1 + sum(sim[i, j] >= sim[i, t] for j in range(9) if j != t)
                for i, t in enumerate(targets)]
    np.testing.assert_array_equal(retrieval_ranks(sim, targets), expected)
    with pytest.raises(ValueError):
        retrieval_metrics(sim)                   # non-square without targets
    sim = np.eye(4)
    sim[1, 1] = np.nan
    sim[2, 0] = np.nan
    np.testing.assert_array_equal(retrieval_ranks(sim), [1, 4, 1, 1])


def test_text_video_retrieval_both_directions():
    rng = np.random.default_rng(0)
    video = rng.normal(size=(40, 16))
    text = video + 1.5 * rng.normal(size=(40, 16))
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    v = video / np.linalg.norm(video, axis=1, keepdims=True)
    sim = t @ v.T
    got = text_video_retrieval(text * 7.0, video * rng.uniform(0.1, 10, size=(40, 1)))
    for k, val in retrieval_metrics(sim).items():
        assert got[f't2v/{k}'] == pytest.approx(val)
    for k, val in retrieval_metrics(sim.T).items():
        assert got[f'v2t/{k}'] == pytest.approx(val)
    assert len(got) == 12
    perfect = text_video_retrieval(video, video)
    assert perfect['t2v/R@1'] == perfect['v2t/R@1'] == 100.0
    assert perfect['t2v/MdR'] == perfect['v2t/MnR'] == 1.0


def test_chance_metrics_are_the_average_over_every_ranking():
    import itertools

    n = 5  # each permutation places the ground truth at one rank; average the metrics over all of them
    runs = [metrics_from_ranks(np.array(p) + 1, ks=(1, 2, 10)) for p in itertools.permutations(range(n))]
    chance = chance_metrics(n, ks=(1, 2, 10))
    for key in ("R@1", "R@2", "R@10", "MnR"):
        assert chance[key] == pytest.approx(np.mean([r[key] for r in runs]))
    assert chance["MdR"] == 3.0  # the median rank of a uniform draw from 1..5
    with pytest.raises(ValueError, match="at least one candidate"):
        chance_metrics(0)


# ----------------------------------------------------------------------------------------------
# Zero-shot classification, prompt averaging, multiple choice
# ----------------------------------------------------------------------------------------------

def test_zero_shot_hand_example():
    # Class c is the unit vector e_c (given with arbitrary positive scales), so the cosine
    # of a video with class c is video[c] / ||video||; ranks read off directly:
    videos = np.array([
        [6, 5, 4, 3, 2, 1],      # label 0: best                    -> rank 1
        [6, 5, 4, 3, 2, 1],      # label 5: worst                   -> rank 6
        [1, 2, 3, 4, 5, 6],      # label 1: 5th                     -> rank 5
        [1, 1, 0, 0, 0, 0],      # label 0: tied with class 1       -> rank 2
        [0, 0, 3, 0, 0, 0],      # label 2: best                    -> rank 1
    ], dtype=np.float64)
    labels = np.array([0, 5, 1, 0, 2])
    classes = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    out = zero_shot_classify(videos, classes, labels, return_logits=True)
    assert out['top1'] == pytest.approx(40.0)
    assert out['top5'] == pytest.approx(80.0)
    assert out['logits'].shape == (5, 6)
    np.testing.assert_allclose(out['logits'][4], [0, 0, 100, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(out['logits'][3, :2], 100 / np.sqrt(2))
    assert 'logits' not in zero_shot_classify(videos, classes, labels)
    # Fewer than 5 classes: no top-5.
    small = zero_shot_classify(videos[:, :3], np.eye(3), np.array([0, 0, 1, 0, 2]))
    assert set(small) == {'top1'}
    assert small['top1'] == pytest.approx(60.0)   # ranks 1, 1, 3, 2 (tie), 1


def test_prompt_averaging_matches_hand_computation():
    # Class 0: prompts (10, 0) and (0, 1) -> normalised (1, 0), (0, 1) -> mean (.5, .5)
    #          -> renormalised (1, 1) / sqrt 2. (Averaging raw embeddings would give ~(1, 0.1).)
    # Class 1: prompts (1, 0) and (3, 0) -> (1, 0).
    prompts = np.array([[[10.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 0.0]]])
    expected = np.array([[1.0, 1.0] / np.sqrt(2), [1.0, 0.0]])
    np.testing.assert_allclose(class_embeddings(prompts), expected)
    np.testing.assert_allclose(average_views(prompts), expected)
    video = np.array([[0.8, 0.6]])
    # cos with class 0 = 1.4 / sqrt 2 = 0.99 > cos with class 1 = 0.8 -> class 0. (Raw
    # averaging would pick class 1.)
    out = zero_shot_classify(video, prompts, np.array([0]), logit_scale=10.0, return_logits=True)
    assert out['top1'] == 100.0
    np.testing.assert_allclose(out['logits'], [[10 * 1.4 / np.sqrt(2), 8.0]])


def test_average_views_multi_view():
    emb = np.array([[[3.0, 0.0], [0.0, 4.0]], [[0.0, 2.0], [0.0, 0.5]]])
    np.testing.assert_allclose(average_views(emb), [[1 / np.sqrt(2), 1 / np.sqrt(2)], [0, 1]])


def test_multiple_choice_hand_example():
    video = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    options = np.array([
        [[1, 0], [0, 1], [-1, 0]],       # cos 1, 0, -1         answer 0 -> right
        [[1, 0], [1, 1], [0, 2]],        # cos 0, .71, 1        answer 1 -> wrong
        [[1, 0], [0, 1], [2, 2]],        # cos .71, .71, 1      answer 2 -> right
        [[1, 0], [2, 0], [0, 1]],        # cos 1, 1, 0 (tie)    answer 0 -> wrong
    ], dtype=np.float64)
    out = multiple_choice(video, options, np.array([0, 1, 2, 0]))
    assert out == {'accuracy': pytest.approx(50.0)}


# ----------------------------------------------------------------------------------------------
# Linear probe (all problems share shapes so the compiled solver is reused)
# ----------------------------------------------------------------------------------------------

N, D, C = 300, 32, 4


def _blobs(rng, separation, n=N):
    means = rng.normal(size=(C, D))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.arange(n) % C
    rng.shuffle(y)
    return means[y] + rng.normal(size=(n, D)) + 3.0, y


def test_linear_probe_recovers_planted_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * N, D)) * rng.uniform(0.5, 5.0, D) + rng.normal(size=D) * 10.0
    w_true = rng.normal(size=(D, C))
    scores = (x - x.mean(0)) @ w_true                               # labels: a noise-free linear rule ...
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > np.quantile(top2[:, 1] - top2[:, 0], 0.75)    # ... with a margin
    x, y = x[clear][:2 * N], np.argmax(scores[clear][:2 * N], axis=1)
    out = linear_probe(x[:N], y[:N], x[N:], y[N:], return_model=True)
    assert out['accuracy'] >= 98.0 and out['train_accuracy'] == 100.0
    # Softmax weights are defined up to a per-feature shift across classes: compare class-centred ones.
    learned = out['weights'] - out['weights'].mean(1, keepdims=True)
    planted = w_true - w_true.mean(1, keepdims=True)
    assert np.sum(learned * planted) / np.linalg.norm(learned) / np.linalg.norm(planted) > 0.9
    assert out['l2'] in DEFAULT_L2_GRID and out['solver'] == 'lbfgs'
    assert len(out['val_loss']) == len(out['val_accuracy']) == len(DEFAULT_L2_GRID)


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2 * N, D))
    y = rng.integers(0, C, 2 * N)
    out = linear_probe(x[:N], y[:N], x[N:], y[N:])
    assert abs(out['accuracy'] - 100.0 / C) < 10.0


def test_linear_probe_chooses_stronger_l2_for_noise_features():
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, separation=2.5, n=2 * N)
    informative = linear_probe(x[:N], y[:N], x[N:], y[N:])
    noise = rng.normal(size=(2 * N, D))
    uninformative = linear_probe(noise[:N], y[:N], noise[N:], y[N:])
    assert informative['accuracy'] > 60.0
    assert uninformative['l2'] > informative['l2']
    assert uninformative['l2'] >= 1e-2
    by_acc = linear_probe(x[:N], y[:N], x[N:], y[N:], select='accuracy')
    assert by_acc['accuracy'] > 60.0


def _scipy_logreg(x, y, l2):
    """The probe's objective in float64 NumPy on standardised features, minimised by SciPy's L-BFGS-B.
    Returns (raw weights, raw bias, optimal value, objective as a function of raw (weights, bias))."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    mean, std = x.mean(0), x.std(0)
    xs = (x - mean) / std
    n, d = xs.shape
    onehot = np.eye(C)[y]

    def objective(theta):
        w, b = theta[:d * C].reshape(d, C), theta[d * C:]
        logits = xs @ w + b
        lse = logsumexp(logits, axis=1)
        g = (np.exp(logits - lse[:, None]) - onehot) / n
        value = np.mean(lse - np.sum(onehot * logits, axis=1)) + l2 * np.sum(w * w)
        return value, np.concatenate([(xs.T @ g + 2 * l2 * w).ravel(), g.sum(0)])

    res = minimize(objective, np.zeros(d * C + C), jac=True, method='L-BFGS-B',
                   options=dict(maxiter=20000, maxcor=30, ftol=1e-15, gtol=1e-10))
    w, b = res.x[:d * C].reshape(d, C), res.x[d * C:]
    weights = w / std[:, None]
    raw_objective = lambda weights, bias: objective(np.concatenate([(weights * std[:, None]).ravel(),
                                                                    bias + mean @ weights]))[0]
    return weights, b - mean @ weights, res.fun, raw_objective


def test_linear_probe_matches_scipy_lbfgs():
    rng = np.random.default_rng(3)
    x, y = _blobs(rng, separation=3.0, n=2 * N)
    x[:, :D // 2] = x[:, :D // 2] @ rng.normal(size=(D // 2, D // 2))    # correlated features
    l2 = 1e-2
    out = linear_probe(x[:N], y[:N], x[N:], y[N:], l2_grid=[l2], return_model=True)
    w_ref, b_ref, f_ref, objective = _scipy_logreg(x[:N], y[:N], l2)
    assert f_ref <= objective(out['weights'], out['bias']) <= f_ref + 1e-7 * f_ref
    np.testing.assert_allclose(out['weights'], w_ref, atol=1e-4 * np.abs(w_ref).max())
    # The bias is not penalised, so (like softmax) it is only defined up to a constant.
    b_scale = np.abs(b_ref).max() + np.abs(x[:N] @ w_ref).max()
    np.testing.assert_allclose(out['bias'] - out['bias'].mean(), b_ref - b_ref.mean(), atol=1e-3 * b_scale)
    ref_pred = np.argmax(x[N:] @ w_ref + b_ref, axis=1)
    assert out['accuracy'] == pytest.approx(100.0 * np.mean(ref_pred == y[N:]), abs=0.5)
    ref_train = np.argmax(x[:N] @ w_ref + b_ref, axis=1)
    assert out['train_accuracy'] == pytest.approx(100.0 * np.mean(ref_train == y[:N]), abs=0.5)
    assert out['val_loss'] is None and out['l2'] == l2


def test_linear_probe_converges_near_separability():
    # Separable classes, tiny l2: losses ~1e-5, where a float32 log_softmax rounds loss and gradient
    # and the line search stalls; the probe must still reach SciPy's float64 optimum.
    rng = np.random.default_rng(6)
    x, y = _blobs(rng, separation=12.0, n=2 * N)
    out = linear_probe(x[:N], y[:N], x[N:], y[N:], l2_grid=[1e-6], tol=1e-8, max_iter=1000, return_model=True)
    _, _, f_ref, objective = _scipy_logreg(x[:N], y[:N], 1e-6)
    assert out['steps'] < 200
    assert f_ref <= objective(out['weights'], out['bias']) <= f_ref * (1 + 1e-5)


def test_linear_probe_ignores_directions_unseen_in_training():
    rng = np.random.default_rng(4)
    x, y = _blobs(rng, separation=3.0, n=2 * N)
    x[:N, -4:] = 1.0                               # constant in training ...
    x[N:, -4:] = rng.normal(size=(N, 4)) * 100.0   # ... wild at test time
    out = linear_probe(x[:N], y[:N], x[N:], y[N:], return_model=True)
    np.testing.assert_allclose(out['weights'][-4:], 0.0, atol=1e-9)
    clean = x[N:].copy()
    clean[:, -4:] = 1.0
    again = linear_probe(x[:N], y[:N], clean, y[N:])
    assert out['accuracy'] == again['accuracy']
    with pytest.raises(ValueError):
        linear_probe(x[:N], y[:N], x[N:], y[N:] + C, num_classes=C)


def test_v1_lr_schedule_matches_v1_formula():
    # 768 samples in batches of 384: 2 steps per epoch, 20 warm-up steps, 180 cosine steps; v1 scales
    # lr 0.1, min_lr = warmup_lr = 1e-6 by 384 / 256 = 1.5.
    schedule = v1_lr_schedule(768, batch_size=384, epochs=100, lr=0.1)
    lr, low = 0.15, 1.5e-6
    expected = {0: low,                                                      # np.linspace start
                10: low + (lr - low) * 10 / 19,
                19: lr,                                                      # np.linspace end point
                20: lr,                                                      # cosine, i = 0
                110: (lr + low) / 2,                                         # i = 90 of 180
                199: low + (lr - low) * (1 + np.cos(np.pi * 179 / 180)) / 2}  # last step, i = 179
    for step, value in expected.items():   # float32: resolution ~1e-8 at lr = 0.15
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6, abs=2e-8), step


def _v1_cosine_scheduler(base, final, epochs, steps_per_epoch, warmup_epochs, start_warmup):
    """TVTS v1's downstream/utils.py:cosine_scheduler, transcribed."""
    warmup = warmup_epochs * steps_per_epoch
    iters = np.arange(epochs * steps_per_epoch - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate([np.linspace(start_warmup, base, warmup), cosine])


def test_linear_probe_sgd_follows_torch_sgd_and_learns():
    rng = np.random.default_rng(5)
    x, y = _blobs(rng, separation=12.0, n=2 * N)
    epochs, batch = 12, 64
    out = linear_probe(x[:N], y[:N], x[N:], y[N:], solver='sgd', epochs=epochs, batch_size=batch, seed=7,
                       return_model=True)
    # Reference: torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=1e-9 on the weight only),
    # zero-initialised head, v1's schedule, batches from one seeded permutation per epoch.
    steps = N // batch
    lrs = _v1_cosine_scheduler(0.1 * batch / 256, 1e-6 * batch / 256, epochs, steps, 10, 1e-6 * batch / 256)
    order = np.random.default_rng(7)
    w, b = np.zeros((D, C)), np.zeros(C)
    buf_w, buf_b = np.zeros((D, C)), np.zeros(C)
    for epoch in range(epochs):
        perm = order.permutation(N)
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            logits = x[idx] @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            g = (p / p.sum(1, keepdims=True) - np.eye(C)[y[idx]]) / batch
            g_w, g_b = x[idx].T @ g + 1e-9 * w, g.sum(0)
            buf_w, buf_b = 0.9 * buf_w + g_w, 0.9 * buf_b + g_b
            lr = lrs[epoch * steps + s]
            w, b = w - lr * (g_w + 0.9 * buf_w), b - lr * (g_b + 0.9 * buf_b)
    assert out['steps'] == epochs * steps and out['l2'] is None and out['weight_decay'] == 1e-9
    np.testing.assert_allclose(out['weights'], w, atol=1e-4 * np.abs(w).max())
    np.testing.assert_allclose(out['bias'], b, atol=1e-4 * np.abs(w).max())
    assert out['accuracy'] >= 95.0 and out['train_accuracy'] >= 95.0


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------

def _is_png(path):
    with open(path, 'rb') as fh:
        return fh.read(8) == b'\x89PNG\r\n\x1a\n'


def test_plots_write_png(tmp_path):
    curves = {'t2v': recall_at_k_curve(HAND_SIM, ks=range(1, 6)),
              'v2t': recall_at_k_curve(HAND_SIM.T, ks=range(1, 6))}
    path = tmp_path / 'sub' / 'recall.png'
    plot_recall_curves(curves, str(path), title='hand example')
    assert path.stat().st_size > 1000 and _is_png(path)

    history = {'loss': [(0, 2.0), (100, 1.2), (50, 1.5)], 'val/t2v/R@1': [(100, 10.0)],
               'lr': [(i, 1e-4 * i) for i in range(200)], 'empty': []}
    path = tmp_path / 'train.png'
    plot_training_curves(history, str(path))
    assert path.stat().st_size > 1000 and _is_png(path)
    path = tmp_path / 'nothing.png'
    plot_training_curves({}, str(path))
    assert path.stat().st_size > 0 and _is_png(path)
