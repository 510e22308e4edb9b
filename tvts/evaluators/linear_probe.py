"""Linear probe on frozen features: L2-regularised multinomial logistic regression in JAX.

Objective, solved for every ``l2`` of the grid on standardised features (training mean/std)::

    min_{W, b}  mean_i CE(softmax(x_i W + b), y_i)  +  l2 * ||W||_F^2        (bias not penalised)

Solver
------
* The standardised training features are rotated onto their principal axes (float64 NumPy
  eigendecomposition of the training covariance). A rotation changes neither the predictions
  nor ``||W||_F``, and the regularised optimum has no weight outside the span of the centred
  training features, so zero-variance directions are dropped *exactly* (this also guarantees
  that test-feature directions never seen in training get zero weight).
* In that basis the Böhning bound on the cross-entropy Hessian, ``0.5 * diag(var)`` per class
  (plus ``2 * l2``), is diagonal and serves as preconditioner of Nesterov-accelerated gradient
  descent with adaptive restart; the curvature scale is adapted by a sufficient-decrease test
  (see :func:`_fit_path`). One step costs about one forward and one backward matmul, and the
  loop is ``jit``-compiled (inputs padded to shape buckets so compilations are reused).
* The grid is solved as a continuation path, largest ``l2`` first, each value warm-started
  from the previous solution (small ``l2`` values, the slow ones, start close to their optimum).

Model selection: a stratified held-out part (``val_fraction``) of the training set picks
``l2`` (by validation cross-entropy by default, or validation accuracy); the model is then
refitted on all training data with that ``l2``, warm-started from the selected solution.
Ties go to the larger ``l2``. ``return_model=True`` also returns the classifier on raw features.

Cost: at most ``len(l2_grid) * steps + refit_steps`` steps of ``O(N * min(N, D) * C)`` (stages
stop early once converged). Measured for 1000 x 512 features on 2 shared CPU cores: ~0.7 s for
10 classes, ~1.5 s for 100, ~4 s for 400, plus ~2 s of one-off compilation per new shape
bucket. Full-batch: for very large training sets each step is a pass over all features.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, -1, 7))


# ----------------------------------------------------------------------------------------------
# Pre-processing: standardise + principal-axis rotation (float64)
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _single_threaded_blas():
    """Run NumPy's OpenBLAS single-threaded on *this* thread for the block.

    Threaded OpenBLAS LAPACK on a busy CPU (e.g. next to a training job) can be 10-50x slower
    than one thread for the small (D x D) problems here; ``openblas_set_num_threads_local``
    only affects the calling thread and the previous value is restored. No-op when the symbol
    is unavailable (other BLAS, other OS).
    """
    setters = _openblas_thread_setters()
    previous = [f(1) for f in setters]
    try:
        yield
    finally:
        for f, n in zip(setters, previous):
            f(n)


@functools.lru_cache(maxsize=1)
def _openblas_thread_setters():
    setters = []
    try:
        with open('/proc/self/maps') as fh:
            paths = {line.split()[-1] for line in fh if 'openblas' in line.lower()}
    except OSError:
        return ()
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int]
        setters.append(fn)
    return tuple(setters)


class _Basis:
    """Training-set standardisation followed by projection on the kept principal axes.

    Computed in float64 NumPy; ``train`` and ``__call__`` return float64 arrays.
    """

    def __init__(self, x: np.ndarray, rel_tol: float = 1e-9):
        x = np.asarray(x, dtype=np.float64)
        with _single_threaded_blas():
            self.mean = x.mean(axis=0)
            std = x.std(axis=0)
            scale = max(1.0, float(np.abs(self.mean).max(initial=0.0)))
            self.std = np.where(std > 1e-12 * scale, std, 1.0)   # constant features -> zeros
            xs = (x - self.mean) / self.std
            var, axes = np.linalg.eigh(xs.T @ xs / x.shape[0])
            keep = var > rel_tol * max(float(var.max(initial=0.0)), 1e-300)
            self.var = var[keep]                                  # [r] variances along axes
            self.rotation = axes[:, keep]                         # [D, r]
            self.train = xs @ self.rotation                        # [N, r]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with _single_threaded_blas():
            return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.rotation

    def to_raw(self, w: np.ndarray, b: np.ndarray):
        """``(w [r, C], b [C])`` in this basis -> ``(W [D, C], b' [C])`` on raw features."""
        weights = (self.rotation @ w) / self.std[:, None]
        return weights, b - self.mean @ weights

    def from_raw(self, weights: np.ndarray, bias: np.ndarray):
        """Inverse of :meth:`to_raw` (projects on the kept axes)."""
        return self.rotation.T @ (self.std[:, None] * weights), bias + self.mean @ weights


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


# ----------------------------------------------------------------------------------------------
# Solver (JAX, float32)
# ----------------------------------------------------------------------------------------------

_ROW_BUCKET = 128     # samples are zero-padded (and masked) to a multiple of this ...
_COL_BUCKET = 32      # ... and features to a multiple of this, so compiled solvers get reused
_RESYNC = 16          # solver steps between exact recomputations of the stored logits


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _fit_path(z, y, mask, var, l2s, w_init, b_init, bias_mask, max_steps, tol, *,
              num_classes: int):
    """Accelerated, diagonally preconditioned gradient descent along a path of ``l2`` values.

    The ``l2s`` are solved in the given order (strongest first), each warm-started from the
    previous solution (the first from ``(w_init, b_init)``), momentum reset at every stage.

    ``z [N, r]`` are rotated features (columns with variances ``var``), ``mask [N]`` is 1 for
    real samples and 0 for padding (padded rows/columns of ``z`` are zero). ``bias_mask [C]``
    is 0 for classes without training samples: their bias stays at its initial value (the
    unpenalised optimum would be ``-inf``, approached ever more slowly).

    The step is ``-M_c^-1 grad`` with ``M_c = diag(c * var + 2 l2 ; c)`` (weights ; bias). For
    ``c = 1/2`` this is the Böhning majoriser of the objective, so that step always decreases
    it; smaller ``c`` (down to ``1/(4C)``, below the curvature near uniform predictions) gives
    longer steps and is accepted only when the sufficient-decrease test
    ``f(y - d) <= f(y) - <grad, d> / 2`` holds, otherwise ``c`` doubles (capped at 1/2).
    ``c`` shrinks by 10% per step and carries over from one stage to the next. Nesterov
    momentum (FISTA sequence) restarts when the step goes against the gradient (O'Donoghue &
    Candes' gradient scheme). Logits are linear in the parameters, so the momentum point's
    logits are a combination of stored ones: one backward matmul per step plus one forward
    matmul per trial step; every ``_RESYNC`` steps the stored logits are recomputed from the
    parameters so float32 rounding cannot accumulate. A stage stops after ``max_steps`` or once
    its squared gradient norm in the inverse Böhning metric is ``<= tol``.

    Returns ``(w [G, r, C], b [G, C], total steps run)``.
    """
    dtype = z.dtype
    onehot = jax.nn.one_hot(y, num_classes, dtype=dtype)
    weight = mask / jnp.sum(mask)                            # [N], sums to 1
    c_max = 0.5
    c_min = 0.25 / num_classes

    def solve(carry0, l2):
        w0, b0, c0 = carry0

        def step(carry):
            k, (w, b, lg), (wp, bp, lgp), t, c, _ = carry
            lg, lgp = jax.lax.cond(
                (k % _RESYNC == 0) & (k > 0),
                lambda: (z @ w + b, z @ wp + bp), lambda: (lg, lgp))
            t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
            beta = (t - 1.0) / t_next
            yw = w + beta * (w - wp)
            yb = b + beta * (b - bp)
            ylg = lg + beta * (lg - lgp)
            p = jax.nn.softmax(ylg, axis=-1)
            g_logits = weight[:, None] * (p - onehot)
            gw = z.T @ g_logits + 2.0 * l2 * yw
            gb = jnp.sum(g_logits, axis=0) * bias_mask

            def trial(c_):
                dw = gw / (c_ * var + 2.0 * l2)[:, None]
                db = gb / c_
                dlg = z @ dw + db
                # Objective change f(y - d) - f(y), computed from differences (not as the
                # difference of two rounded objective values, which float32 cannot resolve
                # near the optimum): per sample, lse(l - dl) - lse(l) = log sum_k p_k e^-dl_k.
                d_lse = jnp.log1p(jnp.sum(p * jnp.expm1(-dlg), axis=-1))
                d_true = jnp.sum(dlg * onehot, axis=-1)
                change = (jnp.sum(weight * (d_lse + d_true))
                          + l2 * (jnp.sum(dw * dw) - 2.0 * jnp.sum(yw * dw)))
                decrease = 0.5 * (jnp.sum(gw * dw) + jnp.sum(gb * db))
                return c_, (yw - dw, yb - db, ylg - dlg), change, decrease

            def bt_cond(state):
                c_, _, change, decrease = state
                return (c_ < c_max) & ~(change <= -decrease)

            def bt_body(state):
                return trial(jnp.minimum(2.0 * state[0], c_max))

            c, new, _, _ = jax.lax.while_loop(
                bt_cond, bt_body, trial(jnp.maximum(0.9 * c, c_min)))
            # Gradient-based adaptive restart: drop momentum when the step opposes the gradient.
            restart = (jnp.sum(gw * (new[0] - w)) + jnp.sum(gb * (new[1] - b))) > 0.0
            t_next = jnp.where(restart, 1.0, t_next)
            q = jnp.sum(gw * gw / (c_max * var + 2.0 * l2)[:, None]) + jnp.sum(gb * gb) / c_max
            return k + 1, new, (w, b, lg), t_next, c, q

        def cond(carry):
            k, *_, q = carry
            return (k < max_steps) & (q > tol)

        lg0 = z @ w0 + b0
        x0 = (w0, b0, lg0)
        init = (jnp.asarray(0), x0, x0, jnp.asarray(1.0, dtype), c0,
                jnp.asarray(jnp.inf, dtype))
        k, (w, b, _), _, _, c, _ = jax.lax.while_loop(cond, step, init)
        return (w, b, c), (w, b, k)

    _, (w, b, k) = jax.lax.scan(solve, (w_init, b_init, jnp.asarray(c_max, dtype)), l2s)
    return w, b, jnp.sum(k)


def _fit(z: np.ndarray, y: np.ndarray, var: np.ndarray, l2s, num_classes: int,
         max_steps: int, tol: float, init=None):
    """Runs :func:`_fit_path` over ``l2s`` (sorted strongest first internally) on inputs padded
    to the shape buckets; ``init = (w [r, C], b [C])`` warm-starts the first stage (default:
    zero weights, bias = log class priors). Returns float64 ``(w [G, r, C], b [G, C], steps)``
    in the order of ``l2s``.
    """
    n, r = z.shape
    n_pad, r_pad = _round_up(n, _ROW_BUCKET), _round_up(r, _COL_BUCKET)
    z_pad = np.zeros((n_pad, r_pad), np.float32)
    z_pad[:n, :r] = z
    y_pad = np.zeros(n_pad, np.int32)
    y_pad[:n] = y
    mask = np.zeros(n_pad, np.float32)
    mask[:n] = 1.0
    var_pad = np.ones(r_pad, np.float32)          # padded columns: zero gradient, weights stay 0
    var_pad[:r] = var
    w0 = np.zeros((r_pad, num_classes), np.float32)
    if init is None:
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        b0 = np.log((counts + 1.0) / (counts.sum() + num_classes)).astype(np.float32)
    else:
        w0[:r] = init[0]
        b0 = np.asarray(init[1], np.float32)
    bias_mask = (np.bincount(y, minlength=num_classes) > 0).astype(np.float32)
    order = np.argsort(-np.asarray(l2s, np.float64), kind='stable')   # strongest first
    w, b, k = _fit_path(z_pad, y_pad, mask, var_pad, np.asarray(l2s, np.float32)[order], w0, b0,
                        bias_mask, np.int32(max_steps), np.float32(tol), num_classes=num_classes)
    inverse = np.argsort(order)
    return np.asarray(w, np.float64)[inverse, :r], np.asarray(b, np.float64)[inverse], int(k)


def _accuracy_and_loss(z: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray,
                       rows: int = 8192):
    """Accuracy (percent) and mean cross-entropy of each model ``(w [G, r, C], b [G, C])``.

    A true class tied with another for the top logit counts as wrong (as in the other
    evaluators). Evaluated in blocks of ``rows`` samples, one model at a time.
    """
    correct = np.zeros(len(w))
    nll = np.zeros(len(w))
    with _single_threaded_blas():
        for g in range(len(w)):
            for start in range(0, len(y), rows):
                logits = z[start:start + rows] @ w[g] + b[g]                 # [n, C]
                yy = y[start:start + rows]
                true = np.take_along_axis(logits, yy[:, None], axis=1)
                top = logits.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.sum(np.exp(logits - top), axis=1))
                correct[g] += np.sum(np.sum(logits >= true, axis=1) == 1)
                nll[g] += np.sum(lse - true[:, 0])
    return 100.0 * correct / len(y), nll / len(y)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                 l2_grid: Sequence[float] = DEFAULT_L2_GRID, val_fraction: float = 0.2,
                 seed: int = 0, steps: int = 60, refit_steps: int = 120, tol: float = 1e-10,
                 select: str = 'loss', return_model: bool = False) -> dict:
    """Multinomial logistic-regression probe with ``l2`` chosen on held-out training data.

    Args:
      train_x, test_x: ``[N, D]`` features. train_y, test_y: ``[N]`` int labels.
      num_classes: default ``max(label) + 1`` over train and test.
      l2_grid: candidate penalties (objective in the module docstring, standardised features).
        A single value skips the validation split.
      val_fraction: stratified fraction of the training set held out to choose ``l2``.
      seed: seed of the train/validation split (the optimisation itself is deterministic).
      steps: maximum solver steps per grid value on the selection path (largest ``l2`` first,
        each warm-started from the previous one).
      refit_steps: maximum steps of the final fit on all training data at the chosen ``l2``,
        warm-started from the selection solution. Any fit stops early once its squared
        preconditioned gradient norm is ``<= tol``.
      select: ``'loss'`` (validation cross-entropy, default: smooth and reliable even with few
        validation samples per class) or ``'accuracy'`` (validation accuracy, ties broken by
        cross-entropy). Remaining ties go to the larger ``l2``.
      return_model: also return ``'weights' [D, C]`` and ``'bias' [C]`` acting on the *raw*
        features (standardisation folded in): ``logits = x @ weights + bias``.
    Returns:
      ``{'accuracy': test percent, 'l2': chosen, 'train_accuracy': percent on all train data,
      'test_loss', 'l2_grid', 'val_accuracy', 'val_loss' (lists over the ascending grid, None
      when the grid has one value), 'steps': solver steps run in total}``. Accuracies count a
      true class tied with another for the top score as wrong.
    """
    train_x = np.asarray(train_x)
    test_x = np.asarray(test_x)
    train_y = np.asarray(train_y).astype(np.int64)
    test_y = np.asarray(test_y).astype(np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f'features must be [N, D], got {train_x.shape} and {test_x.shape}')
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError('labels must be [N] and match the features')
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError('empty train or test set')
    labels_max = int(max(train_y.max(), test_y.max()))
    if num_classes is None:
        num_classes = labels_max + 1
    if min(train_y.min(), test_y.min()) < 0 or labels_max >= num_classes:
        raise ValueError('labels out of range')
    if select not in ('loss', 'accuracy'):
        raise ValueError(f"select must be 'loss' or 'accuracy', got {select!r}")
    grid = np.sort(np.asarray(l2_grid, dtype=np.float64).reshape(-1))
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError('l2_grid must hold positive values')

    val_acc = val_loss = init = None
    total_steps = 0
    if grid.size == 1:
        chosen = float(grid[0])
        fit_steps = steps + refit_steps
    else:
        fit_idx, val_idx = _stratified_split(train_y, val_fraction, seed)
        if val_idx.size == 0:
            raise ValueError('empty validation split; raise val_fraction or pass one l2 value')
        sub = _Basis(train_x[fit_idx])
        w, b, k = _fit(sub.train, train_y[fit_idx], sub.var, grid, num_classes, steps, tol)
        total_steps += k
        val_acc, val_loss = _accuracy_and_loss(sub(train_x[val_idx]), train_y[val_idx], w, b)
        # np.lexsort sorts by its last key first, ascending; -grid first => ties -> larger l2.
        if select == 'loss':
            best = np.lexsort((-grid, val_loss))[0]
        else:
            best = np.lexsort((-grid, val_loss, -val_acc))[0]
        chosen = float(grid[best])
        init = sub.to_raw(w[best], b[best])
        fit_steps = refit_steps

    basis = _Basis(train_x)
    if init is not None:
        init = basis.from_raw(*init)
    w, b, k = _fit(basis.train, train_y, basis.var, np.array([chosen]), num_classes, fit_steps,
                   tol, init=init)
    total_steps += k
    train_acc, _ = _accuracy_and_loss(basis.train, train_y, w, b)
    test_acc, test_loss = _accuracy_and_loss(basis(test_x), test_y, w, b)
    out = {
        'accuracy': float(test_acc[0]),
        'l2': chosen,
        'train_accuracy': float(train_acc[0]),
        'test_loss': float(test_loss[0]),
        'l2_grid': [float(v) for v in grid],
        'val_accuracy': None if val_acc is None else [float(v) for v in val_acc],
        'val_loss': None if val_loss is None else [float(v) for v in val_loss],
        'steps': total_steps,
    }
    if return_model:
        out['weights'], out['bias'] = basis.to_raw(w[0], b[0])
    return out
