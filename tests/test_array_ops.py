"""Array ops traced whole (NumPy-level code), each checked against central differences.

``CASES`` holds, for every op of the table that has a shape rule, functions that
exercise it (with broadcasting and several axes); ``test_every_array_op_has_cases``
fails when an op arrives without them. Every scalar op is also run elementwise
on arrays with broadcasting.
"""
import numpy as np
import pytest

import gradc
from gradc.ops import OPS

from test_ops import ARRAY_OPS, FLOAT_OPS


def _central(f, args, k, h=1e-6):
    x = np.array(args[k], dtype=float)
    grad = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        a_up, a_down = list(args), list(args)
        a_up[k], a_down[k] = up, down
        grad[i] = (f(*a_up) - f(*a_down)) / (2 * h)
    return grad


def _check(fn, *args, rtol=1e-6, atol=1e-7):
    f = gradc.value_and_grad(fn, arrays="numpy", backend="python")
    value, grads = f(*args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert value == pytest.approx(float(fn(*args)), rel=1e-12)
    for k, g in enumerate(grads):
        assert np.shape(g) == np.shape(args[k])
        np.testing.assert_allclose(g, _central(fn, args, k), rtol=rtol, atol=atol)
    return f


rng = np.random.default_rng(7)
A = rng.uniform(0.5, 1.5, (3, 4))
B = rng.uniform(0.5, 1.5, (4, 2))
V3 = rng.uniform(0.5, 1.5, 3)
V4 = rng.uniform(0.5, 1.5, 4)
W = np.linspace(0.3, 1.1, 12).reshape(3, 4)  # a constant weight: keeps sums of terms distinct

CASES = {
    "sum": [(lambda a: np.sum(np.sin(a) * W), (A,)),
            (lambda a: np.sum(np.sum(a * W, axis=0) ** 2), (A,)),
            (lambda a: np.sum(a.sum(axis=1, keepdims=True) * a), (A,)),
            (lambda a: np.sum(np.sum(a, axis=(0, 1)) * a), (A,))],
    "max": [(lambda a: np.sum(np.max(a * W, axis=1) ** 2), (A,)),
            (lambda a: np.max(a * W) + np.sum(a.max(axis=0, keepdims=True) * W), (A,))],
    "min": [(lambda a: np.sum(np.min(a * W, axis=0) ** 2), (A,)),
            (lambda a: np.min(a * W), (A,))],
    "matmul": [(lambda a, b: np.sum(np.tanh(a @ b)), (A, B)),
               (lambda a, v: np.sum((a @ v) ** 2), (A, V4)),
               (lambda v, a: np.sum((v @ a) ** 3), (V3, A)),
               (lambda v, w: np.dot(v, w) ** 2, (V4, V4)),
               (lambda a, b: np.sum(np.matmul(a, b) * np.dot(a, b)), (A, B))],
    "transpose": [(lambda a: np.sum((a.T @ a) * np.sin(a.T @ a)), (A,)),
                  (lambda a: np.sum(np.transpose(a) * W.T), (A,))],
    "reshape": [(lambda a: np.sum(np.cos(a.reshape(2, 6)) * W.reshape(2, 6)), (A,)),
                (lambda a: np.sum(np.reshape(a, (-1,)) ** 2), (A,))],
    "broadcast_to": [(lambda a, v: np.sum(a, axis=0) @ v, (A, V4)),  # da is a broadcast
                     (lambda a, v: np.sum(np.exp(a + v) * W), (A, V4)),
                     (lambda a, v: np.sum((a.T * v) ** 2), (A, V3))],
    "fill": [(lambda a: np.sum(a) * 3.0, (A,)),  # the adjoint of a full sum, spread
             (lambda a: np.sum(a) * np.sum(a * W), (A,))],
    "getitem": [(lambda a: np.sum(a[1:, ::2] ** 2) + a[0, -1] * a[2, 1], (A,)),
                (lambda a: np.sum(a[:, None, 1] * W[:, None, :]), (A,))],
    "scatter": [(lambda a: np.sum(np.sin(a[1:3]) * W[1:3]), (A,))],  # getitem's adjoint
    "concatenate": [(lambda a, v: np.sum(np.concatenate([a, a[:1] * 2.0], axis=0) ** 2)
                     + np.sum(np.concatenate([v, v ** 2]) * 0.5), (A, V4))],
    "stack": [(lambda v, w: np.sum(np.stack([v, w * v], axis=1) ** 2), (V4, V4)),
              (lambda v, w: np.sum(np.stack([v, w]) @ w), (V4, V4))],
    # np.array of traced scalars (gradc.trace.pack), and nested: a stack of packs
    "pack": [(lambda v, w: np.sum(np.array([v[0] * w[1], np.sum(v * w), 2.0]) ** 2 * V3), (V4, V4)),
             (lambda a: np.sum(np.array([[a[0, 0], a[1, 2] ** 2], [np.max(a), 1.0]]) @ B[:2]),
              (A,))],
    "zeros": [(lambda a, v: np.sum(a ** 2), (A, V4))],  # v unused: its gradient is zeros
    # a mean's divisor, read from the shape (zero derivative)
    "count": [(lambda a: np.sum(np.mean(np.sin(a), axis=1) ** 2), (A,)),
              (lambda a: np.mean(a * W) + np.sum(np.mean(a, axis=(0, 1), keepdims=True)), (A,))],
}


def test_every_array_op_has_cases():
    assert sorted(CASES) == sorted(ARRAY_OPS)


@pytest.mark.parametrize("name, k", [(n, k) for n in CASES for k in range(len(CASES[n]))])
def test_array_op_against_central_differences(name, k):
    fn, args = CASES[name][k]
    f = _check(fn, *args)
    if k == 0:  # the first case of each op keeps it in the optimized program
        assert name in {n.op for n in f.graph.nodes}


def _broadcast_pair(seed):
    """Two random shapes that broadcast together (some axes 1, some missing)."""
    g = np.random.default_rng(seed)
    full = tuple(int(n) for n in g.integers(1, 4, size=g.integers(1, 4)))
    a = tuple(n if g.random() < 0.7 else 1 for n in full)
    b = tuple(n if g.random() < 0.7 else 1 for n in full)[int(g.integers(0, len(full))):]
    return a, b


@pytest.mark.parametrize("name", FLOAT_OPS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scalar_ops_elementwise_with_broadcasting(name, seed):
    op = OPS[name]
    lo, hi = op.domain
    shape_a, shape_b = _broadcast_pair(seed + 10 * FLOAT_OPS.index(name))
    g = np.random.default_rng(seed)
    x, y = g.uniform(lo, hi, shape_a), g.uniform(lo, hi, shape_b)
    weight = g.uniform(0.5, 1.5, np.broadcast_shapes(shape_a, shape_b))  # distinct terms
    if op.arity == 1:
        _check(lambda a: np.sum(_apply(name, a) * weight[(0,) * (weight.ndim - a.ndim)]), x,
               rtol=1e-5, atol=1e-6)
    else:
        _check(lambda a, b: np.sum(_apply(name, a, b) * weight), x, y, rtol=1e-5, atol=1e-6)


def _apply(name, *args):
    from gradc.trace import apply

    return apply(name, *args)


def test_where_and_comparisons_on_arrays():
    _check(lambda a: np.sum(np.where(a > 1.0, a ** 2, -a) * W), A)
    _check(lambda a: np.sum(gradc.where((a > 0.8) & (a < 1.2), np.sin(a), a) * W), A)


def test_mlp_loss_against_handwritten_backward():
    def loss(W1, b1, W2, b2, X, Y):
        h = np.tanh(X @ W1 + b1)
        logits = h @ W2 + b2
        m = np.max(logits, axis=1, keepdims=True)
        lse = m + np.log(np.sum(np.exp(logits - m), axis=1, keepdims=True))
        return -np.mean(np.sum(Y * (logits - lse), axis=1))

    r = np.random.default_rng(0)
    W1, b1 = r.normal(size=(8, 6)) * 0.3, r.normal(size=6) * 0.1
    W2, b2 = r.normal(size=(6, 4)) * 0.3, r.normal(size=4) * 0.1
    X, Y = r.normal(size=(5, 8)), np.eye(4)[r.integers(0, 4, 5)]
    for mode in ("numpy", "auto"):
        f = gradc.value_and_grad(loss, argnums=(0, 1, 2, 3), arrays=mode, backend="python")
        value, (dW1, db1, dW2, db2) = f(W1, b1, W2, b2, X, Y)
        # the hand-written backward pass
        h = np.tanh(X @ W1 + b1)
        logits = h @ W2 + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dlogits = (p - Y) / len(X)
        dh = dlogits @ W2.T * (1 - h ** 2)
        assert value == pytest.approx(-np.mean(np.sum(Y * np.log(p), axis=1)))
        np.testing.assert_allclose(dW2, h.T @ dlogits, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db2, dlogits.sum(axis=0), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(dW1, X.T @ dh, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db1, dh.sum(axis=0), rtol=1e-10, atol=1e-14)


def test_auto_mode_unrolls_small_and_keeps_large_arrays_whole():
    rosen = lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)  # noqa: E731
    small = gradc.value_and_grad(rosen, backend="python")
    small(np.ones(10))
    assert "x_9 = x[9]" in small.source  # unrolled into scalar code
    big = gradc.value_and_grad(rosen, backend="python")
    x = np.linspace(-1, 1, 1000)
    value, grad = big(x)
    assert "x[1:]" in big.source  # NumPy-level code
    import scipy.optimize

    np.testing.assert_allclose(grad, scipy.optimize.rosen_der(x), rtol=1e-12)


def test_gradient_arrays_never_alias_inputs():
    f = gradc.grad(lambda x, y: np.sum(x * y), arrays="numpy", backend="python")
    x, y = np.ones(3), np.full(3, 2.0)
    dx, dy = f(x, y)
    assert not np.shares_memory(dx, y) and not np.shares_memory(dy, x)
    dx[:] = 0.0
    assert (y == 2.0).all()


def test_shape_errors_name_both_shapes():
    with pytest.raises(gradc.ShapeError, match=r"\(3,\).*\(4,\)"):
        gradc.grad(lambda a, b: np.sum(a * b), arrays="numpy", backend="python")(V3, V4)
    with pytest.raises(gradc.ShapeError, match="inner dimensions"):
        gradc.grad(lambda a: np.sum(a @ a), arrays="numpy", backend="python")(A)


@pytest.mark.parametrize("name, k", [(n, k) for n in CASES for k in range(len(CASES[n]))])
def test_float32_stays_float32(name, k):
    fn, args = CASES[name][k]
    f = gradc.value_and_grad(fn, backend="python")
    value64, grads64 = f(*args)
    value32, grads32 = f(*(a.astype(np.float32) for a in args))
    grads64 = grads64 if isinstance(grads64, tuple) else (grads64,)
    grads32 = grads32 if isinstance(grads32, tuple) else (grads32,)
    assert value32 == pytest.approx(value64, rel=1e-4)
    for g32, g64 in zip(grads32, grads64):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4)


def test_float32_mlp_step_stays_float32():
    def loss(W, X, Y):
        z = X @ W
        m = np.max(z, axis=1, keepdims=True)
        return -np.mean(np.sum(Y * (z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))),
                               axis=1))

    r = np.random.default_rng(1)
    W, X = r.normal(size=(6, 3)).astype(np.float32), r.normal(size=(4, 6)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
    f = gradc.grad(loss, argnums=0, backend="python")
    assert f(W, X, Y).dtype == np.float32
    assert "float64" not in f.source


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_stable_composites_against_scipy(axis):
    import scipy.special

    x = rng.normal(size=(3, 4)) * 50  # large values: a naive exp would overflow
    np.testing.assert_allclose(gradc.math.logsumexp(x, axis=axis),
                               scipy.special.logsumexp(x, axis=axis), rtol=1e-13)
    if axis is not None:
        np.testing.assert_allclose(gradc.math.softmax(x, axis=axis),
                                   scipy.special.softmax(x, axis=axis), rtol=1e-12)
        np.testing.assert_allclose(gradc.math.log_softmax(x, axis=axis),
                                   scipy.special.log_softmax(x, axis=axis), rtol=1e-12)
        _check(lambda a: np.sum(gradc.math.softmax(a, axis=axis) * W), A)
        _check(lambda a: np.sum(gradc.math.log_softmax(a, axis=axis) * W), A)
    _check(lambda a: np.sum(gradc.math.logsumexp(a * 30, axis=axis) * 0.5), A, rtol=1e-5)
    big = gradc.value_and_grad(lambda a: gradc.math.logsumexp(a, axis=None), backend="python")
    value, grad = big(x)
    assert np.isfinite(value) and np.allclose(grad, scipy.special.softmax(x, axis=None))
