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
    "norm_other_ords": lambda x: np.linalg.norm(x, -1) + np.linalg.norm(x, 0.5)
                                 + np.linalg.norm(x, -np.inf) + np.linalg.norm(x, 0) * x,
    "gradient": lambda x: _gradients(np.hstack([x, x ** 2, np.sin(x)])),
    "linspace": lambda x: (np.linspace(x[0], 3.0 * x[-1], 5), np.linspace(x, 2.0 * x + 1.0, 4),
                           np.linspace(x, 1.5, 3, endpoint=False, axis=-1),
                           *np.linspace(x[0], x[-1] + 1.0, 6, endpoint=False, retstep=True),
                           np.linspace(0.5, x[-1], 1, retstep=True)[0]),
    "complex_parts": lambda x: np.real(x) * x + np.imag(x) + np.real_if_close(x) ** 2
                               + np.angle(x - 0.6) + np.angle(0.6 - x, deg=True),
    "logspace": lambda x: (np.logspace(x[0], x[-1] + 1.0, 5, base=2.0), np.logspace(x[0], 1.0, 2)),
}


def _gradients(f):
    """numpy.gradient's spacings (none, even, uneven constant, traced coordinates) and edge
    orders on one vector of at least 3 elements."""
    n = f.size
    uneven = np.cumsum(1.0 + 0.3 * np.sin(np.arange(n)))
    traced = np.cumsum(1.0 + f * f)  # coordinates that depend on the argument
    return (np.gradient(f), np.gradient(f, 0.5, edge_order=2), np.gradient(f, uneven),
            np.gradient(f, uneven, edge_order=2), np.gradient(f, traced),
            np.gradient(f, traced, edge_order=2), np.gradient(f, np.arange(n) * 0.25))


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
    "norm_singular_values": lambda a: np.linalg.norm(a, 2) + np.linalg.norm(a, -2)
                                      + np.linalg.norm(a, "nuc") + np.linalg.norm(a[:, :3], 2)
                                      + np.linalg.norm(np.stack([a, a * a]), "nuc", axis=(2, 1))
                                      + np.linalg.norm(a[:3], -2, axis=(0, 1), keepdims=True),
    # singular vectors squared: the loss does not depend on LAPACK's choice of their signs
    "svd": lambda a: (np.linalg.svd(a)[0] ** 2, np.linalg.svd(a).S, np.linalg.svd(a)[2] ** 2),
    "svd_tall": lambda a: tuple(f ** 2 for f in np.linalg.svd(a[:, :3], full_matrices=False)),
    "svd_wide": lambda a: tuple(f ** 2 for f in np.linalg.svd(a[:2], full_matrices=False)),
    "svdvals": lambda a: np.linalg.svdvals(a[:, 1:]) + np.linalg.svd(a[:3], compute_uv=False),
    "qr": lambda a: (*np.linalg.qr(a), *np.linalg.qr(a[:, :2]), np.linalg.qr(a[:, 1:], "r"),
                     *np.linalg.qr(a[:2], "complete"), np.linalg.qr(a[:3], "r")),
    "lstsq": lambda a: _lstsq_parts(np.linalg.lstsq(a[:, :3], a[:, 3] ** 2))
                       + _lstsq_parts(np.linalg.lstsq(a[:, :2], a[:, 2:], rcond=1e-10))
                       + _lstsq_parts(np.linalg.lstsq(a, a[0]))
                       + _lstsq_parts(np.linalg.lstsq(a[:2], a[:2, 0] ** 2))
                       + _lstsq_parts(np.linalg.lstsq(a[:3], a[:3, :2] * a[:3, 2:])),
    "pinv": lambda a: np.linalg.pinv(a[:, :3]) + np.linalg.pinv(a[:3]).T + np.linalg.pinv(a)[:3],
    "cond": lambda a: np.linalg.cond(a) + np.linalg.cond(a, -2) + np.linalg.cond(a, "fro")
                      + np.linalg.cond(a, 1) + np.linalg.cond(a[:, :3]),
    "matrix_power": lambda a: np.linalg.matrix_power(a, 5) + np.linalg.matrix_power(a, -2)
                              + np.linalg.matrix_power(a, 0) + np.linalg.matrix_power(a, 3),
    "tensorinv_tensorsolve": lambda a: (np.linalg.tensorinv(a.reshape(2, 2, 4)),
                                        np.linalg.tensorsolve(a.reshape(2, 2, 2, 2),
                                                              a[0].reshape(2, 2))),
    "gradient_axes": lambda a: (*np.gradient(a), np.gradient(a, 0.5, axis=1, edge_order=2),
                                *np.gradient(a, np.array([0.0, 1.0, 3.0, 4.5]), 2.0, edge_order=2),
                                np.gradient(a, axis=-1)),
    "linspace_arrays": lambda a: np.linspace(a[0], a[1], 3, axis=1)
                                 + np.linspace(a[2], 1.0, 3, axis=1),
}


def _lstsq_parts(result):
    """lstsq's solution, residuals, rank and singular values (rank without derivative)."""
    x, residuals, rank, s = result
    return (x, residuals, rank * 1.0, s)


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


def test_linspace_and_gradient_values_are_numpys_bit_for_bit():
    def fn(v):
        return (np.linspace(v[0], v[1], 7), np.linspace(v[:2], v[2:], 5, endpoint=False, axis=1),
                np.linspace(v[0], v[0], 4), np.linspace(0.0, v[3], 6),
                np.gradient(v, 0.3, edge_order=2), np.gradient(v, np.array([0.0, 0.5, 1.7, 2.0])))
    v = np.array([0.1, 2.7, -1.3, 1e-323])  # 1e-323 / 5 underflows to 0: NumPy's special case
    got = gradc.compile(fn, arrays="numpy", backend="python")(v)
    for ours, numpys in zip(got, fn(v)):
        np.testing.assert_array_equal(ours, numpys)


def test_angle_of_real_values_is_numpys_at_signed_zeros_infinities_and_nan():
    v = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -2.5, 3.0])
    for deg in (False, True):
        got = gradc.compile(lambda x: np.angle(x, deg), arrays="numpy", backend="python")(v)
        np.testing.assert_array_equal(got, np.angle(v, deg))


def test_linspace_takes_traced_scalars_unrolled_and_whole():
    fn = lambda s, t: np.sum(np.linspace(s, t, 5) ** 2)  # noqa: E731
    for arrays in ("unroll", "numpy"):
        value, grads = gradc.value_and_grad(fn, arrays=arrays, backend="python")(1.0, 2.0)
        assert value == pytest.approx(fn(1.0, 2.0), rel=1e-14)
        # d/ds sum((s + k (t - s) / 4)**2) = sum(2 y (1 - k/4)), and k/4 for t
        y, k = np.linspace(1.0, 2.0, 5), np.arange(5) / 4
        np.testing.assert_allclose(grads, (np.sum(2 * y * (1 - k)), np.sum(2 * y * k)), rtol=1e-14)


def test_lstsq_of_a_rank_deficient_matrix_is_numpys_with_nan_derivatives():
    # lstsq jumps where A loses rank: the solution is NumPy's minimum-norm one, the residuals
    # (an empty array in NumPy there) and every derivative are NaN, never a number
    a = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    b = np.array([1.0, 0.5, -1.0])
    x, residuals, rank, s = gradc.compile(lambda m: np.linalg.lstsq(m, b), arrays="numpy",
                                          backend="python")(a)
    expected = np.linalg.lstsq(a, b)
    np.testing.assert_allclose(x, expected[0], rtol=1e-12)
    np.testing.assert_allclose(s, expected[3], rtol=1e-12, atol=1e-15)
    assert rank == expected[2] == 1 and np.isnan(residuals).all()
    grad = gradc.grad(lambda m: np.sum(np.linalg.lstsq(m, b)[0]), arrays="numpy",
                      backend="python")(a)
    assert np.isnan(grad).all()
    full = a + np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.0]])  # full rank: numbers again
    assert np.isfinite(gradc.grad(lambda m: np.sum(np.linalg.lstsq(m, b)[0]), arrays="numpy",
                                  backend="python")(full)).all()


def test_pinv_and_lstsq_cut_off_singular_values_as_numpy_does():
    # pinv drops s <= rcond * max(s); LAPACK's lstsq reads an rcond outside (0, 1) as eps
    a = np.diag([1.0, 1e-17, 0.3])[:, :2] + np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1e-3]])
    for rcond in (None, 2.0, 0.0, 0.5, 1e-18, -1.0):
        pinv = gradc.compile(lambda m: np.linalg.pinv(m, rcond), arrays="numpy", backend="python")
        np.testing.assert_allclose(pinv(a), np.linalg.pinv(a, rcond), rtol=1e-10, atol=1e-12)
        ranks = gradc.compile(lambda m: np.linalg.lstsq(m, m[:, 0], rcond)[2], arrays="numpy",
                              backend="python")
        assert ranks(a) == np.linalg.lstsq(a, a[:, 0], rcond)[2], rcond


def test_singular_values_at_a_tie():
    # at tied singular values their sum (the nuclear norm) is differentiable and exact (the
    # polar factor U V^T); single values get a one-sided derivative; U has none (NaN)
    a = 2.0 * np.eye(3)
    nuc = gradc.grad(lambda m: np.linalg.norm(m, "nuc"), arrays="numpy", backend="python")(a)
    np.testing.assert_allclose(nuc, np.eye(3), atol=1e-14)
    values = gradc.grad(lambda m: np.sum(np.linalg.svdvals(m) * np.arange(3.0)),
                        arrays="numpy", backend="python")(a)
    assert np.isfinite(values).all()
    with np.errstate(all="ignore"):
        u = gradc.grad(lambda m: np.sum(np.linalg.svd(m)[0] ** 2 * np.arange(9.0).reshape(3, 3)),
                       arrays="numpy", backend="python")(a)
    assert np.isnan(u).all()


def test_hessians_through_singular_values_qr_and_lstsq_match_central_differences():
    def fn(a):
        return (np.linalg.norm(a, 2) + np.sum(np.linalg.lstsq(a, a[:, 0] ** 2)[0])
                + np.sum(np.linalg.qr(a)[1] ** 2))
    a = np.array([[2.0, 0.3], [0.1, 1.0], [0.5, 0.7]])
    hessian = gradc.hessian(fn, arrays="numpy", backend="python")(a).reshape(6, 6)
    grad = gradc.grad(fn, arrays="numpy", backend="python")
    columns = []
    for k in range(6):
        step = np.zeros(6)
        step[k] = 1e-5
        up, down = grad(a + step.reshape(3, 2)), grad(a - step.reshape(3, 2))
        columns.append(((up - down) / 2e-5).ravel())
    np.testing.assert_allclose(hessian, np.array(columns).T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10)


@pytest.mark.parametrize("call, why", [
    (lambda a: np.linalg.svd(a), "full_matrices=False"),
    (lambda a: np.linalg.qr(a.T, "complete"), "no derivative"),
    (lambda a: np.linalg.pinv(a, hermitian=True), "hermitian"),
    (lambda a: np.linalg.norm(a, 3), "not a matrix norm"),
    (lambda a: np.gradient(a[0], edge_order=3), "edge_order must be 1 or 2"),
    (lambda a: np.linspace(a[0, 0], 1.0, 0), "num=0"),
])
def test_linear_algebra_and_spacing_refusals_say_why(call, why):
    a = np.ones((3, 4))
    with pytest.raises(gradc.GradcError, match=why) as info:
        gradc.grad(lambda m: np.sum(call(m)[0]), arrays="numpy", backend="python")(a)
    assert "test_numpy_surface.py:" in str(info.value)


def test_new_ops_without_a_loop_rule_fall_back_cleanly():
    # the loop lowering has no rule for singular values: arrays="loops" says so, "auto" runs
    # NumPy code (and gives what the python backend gives)
    fn = lambda a: np.linalg.norm(a, 2) + np.sum(a ** 2)  # noqa: E731
    a = rng.uniform(0.2, 1.0, (20, 20))
    with pytest.raises(gradc.UnsupportedFunctionError, match="no rule for svd_values"):
        gradc.value_and_grad(fn, arrays="loops")(a)
    value, grad = gradc.value_and_grad(fn)(a)
    expected = gradc.value_and_grad(fn, arrays="numpy", backend="python")(a)
    assert value == pytest.approx(expected[0], rel=1e-14)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12)


ORACLE_CASES = {
    "var": lambda np_, v: np_.var(v) * np_.sum(v),
    "cumprod": lambda np_, v: np_.sum(np_.cumprod(v) ** 2),
    "sort": lambda np_, v: np_.sum(np_.sort(v) * np.arange(7.0)),
    "einsum": lambda np_, v: np_.einsum("i,j->", v, v ** 2),
    "kron": lambda np_, v: np_.sum(np_.kron(v[:3], v[3:]) ** 2),
    "norm": lambda np_, v: np_.linalg.norm(v, 3),
    "solve": lambda np_, v: np_.sum(np_.linalg.solve(np_.outer(v[:3], v[:3]) + np_.eye(3), v[3:6])),
    "gradient": lambda np_, v: np_.sum(np_.gradient(v ** 2, 0.5) * np.arange(7.0)),
    "linspace": lambda np_, v: np_.sum(np_.linspace(v[0], v[1], 5) ** 2),
    "norm_nuc": lambda np_, v: np_.linalg.norm(np_.reshape(v[:6], (3, 2)), "nuc"),
    "norm_2": lambda np_, v: np_.linalg.norm(np_.reshape(v[:6], (2, 3)), 2),
    "svd": lambda np_, v: _svd_loss(np_, np_.reshape(v[:6], (3, 2))),
    "pinv": lambda np_, v: np_.sum(np_.linalg.pinv(_tall(np_, v)) * np.arange(6.0).reshape(2, 3)),
    "qr": lambda np_, v: np_.sum(np_.linalg.qr(_tall(np_, v))[1] * np.arange(4.0).reshape(2, 2)),
    "lstsq": lambda np_, v: np_.sum(np_.linalg.lstsq(_tall(np_, v), v[4:], rcond=None)[0] ** 2),
    "lstsq_wide": lambda np_, v: np_.sum(np_.linalg.lstsq(_tall(np_, v).T, v[5:], rcond=None)[0]
                                         ** 2),
    "cond": lambda np_, v: np_.linalg.cond(_tall(np_, v)),
    "matrix_power": lambda np_, v: np_.sum(np_.linalg.matrix_power(np_.reshape(v[:4], (2, 2)),
                                                                   3)),
}


def _tall(np_, v):
    """A 3 x 2 matrix of the argument's first six elements."""
    return np_.reshape(v[:6], (3, 2))


def _svd_loss(np_, a):
    """Singular values and squared singular vectors (their signs are LAPACK's choice)."""
    u, s, vh = np_.linalg.svd(a, full_matrices=False)
    return np_.sum(s * np.arange(1.0, 3.0)) + np_.sum(u ** 2 * np.arange(6.0).reshape(3, 2)) \
        + np_.sum(vh ** 2 * np.arange(4.0).reshape(2, 2))


# autograd has no derivative of these (its VJP is "not defined", or NotImplementedError:
# cumprod, cond, lstsq, matrix_power, qr, the matrix 2-norm, gradient with a spacing): JAX
# checks those
AUTOGRAD_CASES = sorted(set(ORACLE_CASES) - {"cumprod", "cond", "gradient", "lstsq",
                                             "lstsq_wide", "matrix_power", "norm_2", "qr"})


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
    theirs = np.asarray(jax.jit(jax.grad(lambda v: fn(jax.numpy, v)))(x))  # one compile, not per op
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_cumprods_derivative_past_its_memory_bound_is_a_clear_error_not_an_out_of_memory(
        monkeypatch):
    from gradc import ops

    monkeypatch.setattr(ops, "CUMPROD_PARTIALS_MAX", 100 ** 2)  # the bound, made small
    vg = gradc.value_and_grad(lambda x: np.sum(np.cumprod(x)), backend="python")
    length = 101
    with pytest.raises(gradc.UnsupportedFunctionError,
                       match=r"test_numpy_surface\.py:\d+.*cumprod.*numpy\.exp\(numpy\.cumsum"):
        vg(np.linspace(0.5, 1.0, length))
    value, grad = vg(np.linspace(0.5, 1.0, length - 1))  # at the bound it still works
    assert np.isfinite(value) and grad.shape == (length - 1,)
