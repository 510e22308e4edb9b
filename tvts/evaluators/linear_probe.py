"""Linear probe on frozen features: multinomial logistic regression, two protocols.

``solver='lbfgs'`` (default), CLIP's protocol (Radford et al. 2021, appendix A.3: logistic regression
by L-BFGS, L2 strength swept on a validation split). On features standardised with the training
mean/std it solves::

    min_{W, b}  mean_i CE(softmax(x_i W + b), y_i)  +  l2 * ||W||_F^2        (bias not penalised)

with ``optax.lbfgs`` (zoom line search) in a ``jax.lax.while_loop`` that stops after ``max_iter``
iterations or once the gradient's L2 norm is ``<= tol``; float32, compiled once per
``(N, D, num_classes)``; the cross-entropy is evaluated so that float32 resolves the tiny losses of
nearly separable data. Constant features get zero weight, and as the solver starts at zero and
moves only within the span of the training features, test directions never seen in training are
ignored (up to rounding).

Model selection: a stratified part (``val_fraction``) of the training set is held out; the grid
is solved from the largest ``l2`` down, each fit warm-started from the previous one, and ``l2`` is
picked by validation cross-entropy (``select='accuracy'``: by validation accuracy, then
cross-entropy); ties go to the larger ``l2``. The model is then refitted on all training data
from the chosen solution. Both stages use the same standardisation (all training features; the
held-out labels are unused until scoring), so the chosen ``l2`` means the same in both.

``solver='sgd'``, TVTS v1's linear probe (github.com/TencentARC/TVTS ``v1/``, read at commit
290a63e): only a linear head on the frozen features is trained (``downstream/run_class_linear.py:343-346``);
``scripts/linear_ssv2.sh``: ``--opt sgd --lr 0.1 --momentum 0.9 --weight_decay 1e-9
--warmup_epochs 10 --epochs 100``, batch 12 x 32 GPUs = 384; ``--opt sgd`` is torch SGD with
Nesterov momentum, bias not decayed (``downstream/optim_factory.py:58,123``); lr, min_lr and
warmup_lr (both 1e-6) scaled by batch / 256 (``run_class_linear.py:365-369``); per-step schedule
``utils.cosine_scheduler`` (``run_class_linear.py:415-417``, ``utils.py:399-416``):
``np.linspace(warmup_lr, lr, W)`` over the W warm-up steps, then
``min_lr + (lr - min_lr) (1 + cos(pi i / K)) / 2`` for i = 0 .. K-1; an epoch is ``N // batch``
steps (``drop_last=True``, ``run_class_linear.py:280``). Here on raw features (v1 feeds the
encoder's output to the head), zero-initialised head, batches of ``min(batch_size, N)`` from a
seeded permutation per epoch; the last epoch's head is returned. Not reproduced: v1 re-augments
the videos every epoch (features here are extracted once) and tests 2 segments x 3 crops; its
defaults also train with mixup 0.8 / cutmix 1.0 / label smoothing 0.1 (``run_class_linear.py:99,
121-124``) in fp16 and report the best epoch on the evaluation split. Caveat: the script also
passes ``--enable_deepspeed``, with which the optimiser comes from the DeepSpeed config
(``utils.py:506-530``: Adam in AdamW mode, same schedule) instead of ``--opt sgd``; this option
follows the SGD that the script's flags name.

Cost (measured on 2 CPU cores shared with other work, load average 2.5-4.7; 1000 x 512 training
features, default grid of 7 values, tol 1e-6): lbfgs ~0.7 s for 10 classes and ~2.5 s for 100
(7 selection fits plus the refit, ~190-310 L-BFGS iterations in all), plus 2.5-8 s of compilation
on the first call per shape; sgd (100 epochs of 2 steps) ~0.2 s and ~0.4 s, plus ~0.6 s of
compilation. Full batch: an L-BFGS iteration is a pass over all training features (the held-out
rows too, with weight 0).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, -1, 7))

# TVTS v1's fixed linear-probe settings (module docstring); min_lr, warmup_lr are per 256 samples.
V1_SGD = dict(min_lr=1e-6, warmup_lr=1e-6, momentum=0.9, weight_decay=1e-9, warmup_epochs=10)


def _stratified_split(y: np.ndarray, fraction: float, seed: int):
    """Per class a randomly rounded ``fraction`` goes to validation (never its last sample)."""
    rng = np.random.default_rng(seed)
    val = [np.zeros(0, np.int64)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        k = min(int(np.floor(fraction * idx.size + rng.random())), idx.size - 1)
        val.append(idx[:k])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(y.size), val), val


def _scores(x: np.ndarray, y: np.ndarray, weights: np.ndarray, bias: np.ndarray):
    """Accuracy (percent; a true class tied for the top logit counts as wrong) and mean cross-entropy."""
    logits = x @ weights + bias
    true = np.take_along_axis(logits, y[:, None], axis=1)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.sum(np.exp(logits - top), axis=1))
    return 100.0 * float(np.mean(np.sum(logits >= true, axis=1) == 1)), float(np.mean(lse - true[:, 0]))


# ----------------------------------------------------------------------------------------------
# L-BFGS (CLIP protocol)
# ----------------------------------------------------------------------------------------------

def _objective(params, x, onehot, weight, present, l2):
    w, b = params
    # A class without training samples would drive its unpenalised bias to -inf (ever more slowly):
    # its bias stays at the initial value instead.
    logits = x @ w + jnp.where(present, b, jax.lax.stop_gradient(b))
    # log-sum-exp as top + log1p(sum of the others): near separability (losses of 1e-4 and less)
    # log_softmax's log(1 + small) rounds loss and gradient in float32 and the line search stalls.
    top_idx = jnp.argmax(logits, axis=-1)
    top = jnp.take_along_axis(logits, top_idx[:, None], axis=-1)
    others = jnp.sum(jnp.exp(logits - top) * (1.0 - jax.nn.one_hot(top_idx, logits.shape[-1])), axis=-1)
    ce = jnp.sum(onehot * (top - logits), axis=-1) + jnp.log1p(others)
    return jnp.sum(weight * ce) + l2 * jnp.sum(w * w)


@jax.jit
def _lbfgs(params, x, onehot, weight, present, l2, max_iter, tol):
    """Minimises :func:`_objective` from ``params``; ``weight`` [N] sums to 1 over the rows fitted
    (0 elsewhere, so selection and refit share one compiled shape). Returns (params, iterations)."""
    fun = functools.partial(_objective, x=x, onehot=onehot, weight=weight, present=present, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def cond(carry):
        _, state = carry
        count = otu.tree_get(state, 'count')
        return (count == 0) | ((count < max_iter) & (otu.tree_norm(otu.tree_get(state, 'grad')) > tol))

    params, state = jax.lax.while_loop(cond, step, (params, opt.init(params)))
    return params, otu.tree_get(state, 'count')


def _fit_lbfgs(train_x, train_y, num_classes, grid, val_fraction, seed, select, max_iter, tol):
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    # Constant features become zero columns (then their weight never moves from 0).
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    xs = jnp.asarray((train_x - mean) / std, jnp.float32)
    onehot = jax.nn.one_hot(train_y, num_classes, dtype=jnp.float32)
    counts = np.bincount(train_y, minlength=num_classes)
    present = counts > 0
    params = (jnp.zeros((train_x.shape[1], num_classes)),               # bias: smoothed log priors
              jnp.asarray(np.log((counts + 1.0) / (counts.sum() + num_classes)), jnp.float32))

    def fit(params, l2, rows):
        weight = np.zeros(len(train_y), np.float32)
        weight[rows] = 1.0 / len(rows)
        params, k = _lbfgs(params, xs, onehot, weight, present, np.float32(l2), np.int32(max_iter),
                           np.float32(tol))
        return params, int(k)

    def to_raw(params):
        weights = np.asarray(params[0], np.float64) / std[:, None]
        return weights, np.asarray(params[1], np.float64) - mean @ weights

    total_steps = 0
    val_acc = val_loss = None
    if grid.size == 1:
        chosen = float(grid[0])
    else:
        fit_idx, val_idx = _stratified_split(train_y, val_fraction, seed)
        if val_idx.size == 0:
            raise ValueError('empty validation split; raise val_fraction or pass one l2 value')
        solutions, val_acc, val_loss = {}, np.zeros(grid.size), np.zeros(grid.size)
        for g in range(grid.size - 1, -1, -1):        # largest l2 first: an easy start for the next
            params, k = fit(params, grid[g], fit_idx)
            total_steps += k
            solutions[g] = params
            val_acc[g], val_loss[g] = _scores(train_x[val_idx], train_y[val_idx], *to_raw(params))
        # np.lexsort sorts by its last key first, ascending; -grid first => ties -> larger l2.
        keys = (-grid, val_loss) if select == 'loss' else (-grid, val_loss, -val_acc)
        best = int(np.lexsort(keys)[0])
        chosen, params = float(grid[best]), solutions[best]
    params, k = fit(params, chosen, np.arange(len(train_y)))
    return to_raw(params), chosen, total_steps + k, val_acc, val_loss


# ----------------------------------------------------------------------------------------------
# SGD (TVTS v1 protocol)
# ----------------------------------------------------------------------------------------------

def v1_lr_schedule(num_train: int, batch_size: int = 384, epochs: int = 100, lr: float = 0.1):
    """TVTS v1's per-step learning rate as an optax schedule (formula in the module docstring)."""
    steps_per_epoch = num_train // batch_size
    scale = batch_size / 256
    warmup = V1_SGD['warmup_epochs'] * steps_per_epoch
    if epochs <= V1_SGD['warmup_epochs'] or steps_per_epoch == 0:
        raise ValueError(f"need more than {V1_SGD['warmup_epochs']} epochs and batch_size <= num_train")
    return optax.join_schedules(
        # np.linspace includes its end point: the last warm-up step is already at lr.
        [optax.linear_schedule(V1_SGD['warmup_lr'] * scale, lr * scale, warmup - 1),
         optax.cosine_decay_schedule(lr * scale, epochs * steps_per_epoch - warmup, alpha=V1_SGD['min_lr'] / lr)],
        [warmup])


@functools.partial(jax.jit, static_argnames=('num_classes', 'schedule_args'))
def _sgd(x, y, order, *, num_classes, schedule_args):
    opt = optax.chain(optax.add_decayed_weights(V1_SGD['weight_decay'], mask=(True, False)),   # not the bias
                      optax.sgd(v1_lr_schedule(*schedule_args), momentum=V1_SGD['momentum'], nesterov=True))

    def loss(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(xb @ params[0] + params[1], yb).mean()

    def step(carry, idx):
        params, state = carry
        updates, state = opt.update(jax.grad(loss)(params, x[idx], y[idx]), state, params)
        return (optax.apply_updates(params, updates), state), None

    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), order)
    return params


def _fit_sgd(train_x, train_y, num_classes, seed, epochs, batch_size, lr):
    n = len(train_y)
    batch = min(batch_size, n)
    steps = n // batch
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(n)[:steps * batch] for _ in range(epochs)]).reshape(-1, batch)
    w, b = _sgd(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32), order,
                num_classes=num_classes, schedule_args=(n, batch, epochs, float(lr)))
    return (np.asarray(w, np.float64), np.asarray(b, np.float64)), len(order)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None, solver: str = 'lbfgs',
                 l2_grid: Sequence[float] = DEFAULT_L2_GRID, val_fraction: float = 0.2, seed: int = 0,
                 select: str = 'loss', max_iter: int = 1000, tol: float = 1e-6, epochs: int = 100,
                 batch_size: int = 384, lr: float = 0.1, return_model: bool = False) -> dict:
    """Multinomial logistic-regression probe (protocols in the module docstring).

    Args:
      train_x, test_x: ``[N, D]`` features. train_y, test_y: ``[N]`` int labels.
      num_classes: default ``max(label) + 1`` over train and test.
      solver: ``'lbfgs'`` (CLIP protocol, ``l2`` chosen on held-out training data) or ``'sgd'``
        (TVTS v1's protocol; ignores ``l2_grid``, ``val_fraction``, ``select``, ``max_iter``, ``tol``).
      l2_grid: candidate penalties on standardised features; a single value skips the validation split.
      val_fraction: stratified fraction of the training set held out to choose ``l2``.
      seed: seed of the train/validation split (lbfgs) or of the batch order (sgd).
      select: ``'loss'`` (validation cross-entropy, default: smooth even with few validation samples
        per class) or ``'accuracy'`` (ties broken by cross-entropy). Remaining ties -> larger ``l2``.
      max_iter, tol: each L-BFGS fit stops after ``max_iter`` iterations or at gradient norm ``<= tol``.
      epochs, batch_size, lr: sgd only, v1's values by default; ``lr`` is per 256 samples (v1's
        ``--lr``) and the batch is ``min(batch_size, N)``.
      return_model: also return ``'weights' [D, C]`` and ``'bias' [C]`` acting on the *raw*
        features: ``logits = x @ weights + bias``.
    Returns:
      ``{'accuracy': test percent, 'l2': chosen (None for sgd), 'train_accuracy': percent on all
      train data, 'test_loss', 'l2_grid', 'val_accuracy', 'val_loss' (lists over the ascending grid;
      None for sgd or a one-value grid), 'steps': L-BFGS iterations or SGD steps in total,
      'solver', 'weight_decay' (sgd: v1's 1e-9 torch weight decay, i.e. l2 = 5e-10; lbfgs: None)}``.
      Accuracies count a true class tied with another for the top score as wrong.
    """
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y).astype(np.int64)
    test_y = np.asarray(test_y).astype(np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f'features must be [N, D], got {train_x.shape} and {test_x.shape}')
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError('labels must be [N] and match the features')
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError('empty train or test set')
    labels_max = int(max(train_y.max(), test_y.max()))
    num_classes = labels_max + 1 if num_classes is None else num_classes
    if min(train_y.min(), test_y.min()) < 0 or labels_max >= num_classes:
        raise ValueError('labels out of range')
    if select not in ('loss', 'accuracy'):
        raise ValueError(f"select must be 'loss' or 'accuracy', got {select!r}")
    grid = np.sort(np.asarray(l2_grid, dtype=np.float64).reshape(-1))
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError('l2_grid must hold positive values')

    val_acc = val_loss = None
    if solver == 'lbfgs':
        (weights, bias), chosen, steps, val_acc, val_loss = _fit_lbfgs(
            train_x, train_y, num_classes, grid, val_fraction, seed, select, max_iter, tol)
    elif solver == 'sgd':
        (weights, bias), steps = _fit_sgd(train_x, train_y, num_classes, seed, epochs, batch_size, lr)
        chosen = grid = None
    else:
        raise ValueError(f"solver must be 'lbfgs' or 'sgd', got {solver!r}")
    train_acc, _ = _scores(train_x, train_y, weights, bias)
    test_acc, test_loss = _scores(test_x, test_y, weights, bias)
    out = {
        'accuracy': test_acc,
        'l2': chosen,
        'train_accuracy': train_acc,
        'test_loss': test_loss,
        'l2_grid': None if grid is None else [float(v) for v in grid],
        'val_accuracy': None if val_acc is None else [float(v) for v in val_acc],
        'val_loss': None if val_loss is None else [float(v) for v in val_loss],
        'steps': steps,
        'solver': solver,
        'weight_decay': V1_SGD['weight_decay'] if solver == 'sgd' else None,
    }
    if return_model:
        out['weights'], out['bias'] = weights, bias
    return out
