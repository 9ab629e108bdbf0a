"""Argument trees in hessian, hvp, jvp and jacobian (JAX's structures), and Hessians and
Jacobians of programs without a scalar form (cumsum, sort, linalg), which gradc builds from
compiled whole-array columns instead of tracing element by element."""
import numpy as np
import pytest

import gradc
from gradc import trace as tracing

PY = dict(backend="python")


# --- oracles -------------------------------------------------------------------------------
def central_jacobian(f, x, h=1e-6):
    """J[:, j] = (f(x + h e_j) - f(x - h e_j)) / 2h, J of shape f(x).shape + x.shape."""
    out = np.asarray(f(x), dtype=float)
    J = np.empty(out.shape + (x.size,))
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = h
        e = e.reshape(x.shape)
        J[..., j] = (np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h)
    return J.reshape(out.shape + x.shape)


def central_hessian(f, x, h=1e-4):
    """The four-point second difference of f itself, upper triangle mirrored."""
    n = x.size
    H = np.empty((n, n))
    step = np.eye(n) * h
    for i in range(n):
        for j in range(i, n):
            a, b = step[i], step[j]
            H[i, j] = H[j, i] = (f(x + a + b) - f(x + a - b) - f(x - a + b) + f(x - a - b)) / (4 * h * h)
    return H


# --- functions whose ops have no scalar form (gradc/unroll.py) ------------------------------
def f_cumsum(x):
    return np.sum(np.cumsum(x) ** 2 * np.sin(x))


def f_sort(x):
    return np.sum(np.sort(x) * np.arange(1.0, x.size + 1) * x)


def f_solve(x):
    A = np.eye(x.size) * 3.0 + np.outer(x, x) * 0.1
    return np.sum(np.linalg.solve(A, np.sin(x)))


def det_matrix(x):  # det near 1 at every size (central differences stay well scaled)
    return np.eye(x.size) + (np.outer(np.sin(x), x) + np.diag(x * x)) * (0.3 / x.size)


def f_det(x):
    return np.linalg.det(det_matrix(x))


def g_cumsum(x):
    return np.cumsum(x) * np.sin(x)


def g_sort(x):
    return np.sort(x) * x


def g_solve(x):
    A = np.eye(x.size) * 3.0 + np.outer(x, x) * 0.1
    return np.linalg.solve(A, np.sin(x))


def g_det(x):  # a tuple of floats: the Jacobian has one row per element
    return np.linalg.det(det_matrix(x)), np.sum(x * x)


SCALAR = [f_cumsum, f_sort, f_solve, f_det]
VECTOR = [g_cumsum, g_sort, g_solve, g_det]


def point(n):
    """Distinct, unordered values (sort has no tie near them), a fixed seed."""
    rng = np.random.default_rng(n)
    return rng.permutation(np.linspace(-0.9, 0.9, n)) + rng.uniform(-0.01, 0.01, n)


@pytest.mark.parametrize("n", [1, 7, 60])
@pytest.mark.parametrize("f", SCALAR, ids=lambda f: f.__name__)
def test_hessian_of_ops_without_a_scalar_form_matches_central_differences(f, n):
    x = point(n)
    H = gradc.hessian(f, **PY)(x)
    assert H.shape == (n, n)
    np.testing.assert_allclose(H, central_hessian(f, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 60])
@pytest.mark.parametrize("g", VECTOR, ids=lambda g: g.__name__)
def test_jacobian_of_ops_without_a_scalar_form_matches_central_differences(g, n):
    x = point(n)
    J = gradc.jacobian(g, **PY)(x)
    ref = central_jacobian(lambda v: np.asarray(g(v)), x)
    assert J.shape == ref.shape
    np.testing.assert_allclose(J, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobian_without_a_scalar_form_is_the_same_in_both_modes(mode):
    x = point(7)
    j = gradc.jacobian(g_sort, mode=mode, **PY)
    np.testing.assert_allclose(j(x), central_jacobian(g_sort, x), rtol=1e-6, atol=1e-6)
    assert f"{mode} mode" in j.source.splitlines()[0]


def test_jacobian_auto_mode_takes_fewer_calls_without_a_scalar_form():
    """forward (a jvp per input) for fewer inputs than outputs, else reverse (a row per output)."""
    def wide(x):  # 2 inputs, 6 outputs
        return np.cumsum(np.concatenate([x, x * x, np.sin(x)]))

    j = gradc.jacobian(wide, **PY)
    x = np.array([0.3, -0.4])
    np.testing.assert_allclose(j(x), central_jacobian(wide, x), rtol=1e-6, atol=1e-6)
    assert "forward mode: 2 calls" in j.source.splitlines()[0]
    narrow = gradc.jacobian(lambda x: np.cumsum(x)[:2], **PY)
    narrow(point(5))
    assert "reverse mode: 2 calls" in narrow.source.splitlines()[0]


def test_value_grad_hessian_without_a_scalar_form():
    x = point(7)
    value, grad, H = gradc.value_grad_hessian(f_sort, **PY)(x)
    assert value == pytest.approx(f_sort(x))
    assert isinstance(grad, np.ndarray)  # bare for one argument, as value_and_grad gives it
    np.testing.assert_allclose(grad, central_jacobian(f_sort, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(H, central_hessian(f_sort, x), rtol=1e-5, atol=1e-5)


def test_hessian_without_a_scalar_form_of_several_arguments_is_over_their_scalars():
    def f(a, x, b):
        return np.sum(np.sort(x * a) * b * x) + a * b * b

    H = gradc.hessian(f, **PY)(0.7, point(4), 1.3)
    flat = lambda z: f(z[0], z[1:5], z[5])  # noqa: E731
    z = np.concatenate([[0.7], point(4), [1.3]])
    np.testing.assert_allclose(H, central_hessian(flat, z), rtol=1e-5, atol=1e-5)
    assert H.shape == (6, 6)


def test_matrices_of_float_arguments_through_arrays_made_inside():
    """Whole arrays built from float arguments (np.reshape, np.concatenate) are arrays too:
    unrolled where every op has a scalar form, assembled where one has not."""
    def vector(*scalars):
        return np.concatenate([np.reshape(s, (1,)) for s in scalars])

    def unrolls(a, b):
        return np.sin(vector(a, b, a * b)) * vector(1.0, a, b)

    def assembled(a, b):
        return np.sort(vector(a * b, b, a)) * vector(1.0, a, b)

    def flat(g):
        return lambda z: g(z[0], z[1])

    z = np.array([0.7, -0.4])
    for g, path in ((unrolls, False), (assembled, True)):
        j = gradc.jacobian(g, **PY)
        np.testing.assert_allclose(j(*z), central_jacobian(flat(g), z), rtol=1e-6, atol=1e-6)
        assert ("assembled at each call" in j.source) is path
        H = gradc.hessian(lambda a, b: np.sum(g(a, b) ** 2), **PY)(*z)
        np.testing.assert_allclose(H, central_hessian(lambda z: np.sum(flat(g)(z) ** 2), z),
                                   rtol=1e-5, atol=1e-5)
    # a tuple of floats in and out: the tree call flattens the result into such an array
    J = gradc.jacobian(lambda p: (p[0] * p[1], p[0] + p[1]), **PY)((1.0, 2.0))
    assert J == ((2.0, 1.0), (1.0, 1.0))


def test_hessian_and_jacobian_never_trace_element_by_element(monkeypatch):
    """Element tracing (object arrays of scalar Tracers) is gone from the higher orders:
    every parameter is traced whole, also where the program does not unroll."""
    seen = []
    real = tracing._traced_param

    def spy(graph, name, shape, whole=False):
        seen.append((name, shape, whole))
        return real(graph, name, shape, whole)

    monkeypatch.setattr(tracing, "_traced_param", spy)
    x = point(5)
    for f in SCALAR:
        gradc.hessian(f, **PY)(x)
    for g in VECTOR:
        gradc.jacobian(g, **PY)(x)
        gradc.jacobian(g, mode="forward", **PY)(x)
    arrays = [s for s in seen if s[1] is not None]
    assert arrays and all(whole for _, _, whole in arrays)


def test_sparse_hessian_without_a_scalar_form_stores_every_entry():
    x = point(7)
    dense = gradc.hessian(f_sort, **PY)(x)
    S = gradc.hessian(f_sort, sparse=True, **PY)(x)
    assert S.shape == (7, 7) and S.nnz == 49
    np.testing.assert_array_equal(S.toarray(), dense)
    J = gradc.jacobian(g_det, sparse=True, **PY)(x)
    assert J.shape == (2, 7) and J.nnz == 14
    np.testing.assert_allclose(J.toarray(), gradc.jacobian(g_det, **PY)(x))


def test_hessian_without_a_scalar_form_has_no_single_program_and_says_so():
    h = gradc.hessian(f_sort, **PY)
    with pytest.raises(gradc.GradcError, match="no single emitted program") as info:
        h.lower(((7,),))
    assert "test_higher_trees.py" in str(info.value) and "sort" in str(info.value)
    with pytest.raises(gradc.GradcError, match="no single emitted program"):
        gradc.vmap(h)(np.stack([point(7), point(7)]))
    h(point(7))  # called, it works, and .source is the column program's, with a note
    assert h.source.startswith("# hessian of f_sort(), which uses sort")
    assert "def f_sort__hvp(" in h.source


def test_hessian_of_programs_that_unroll_keeps_the_entry_by_entry_path():
    h = gradc.hessian(lambda x: np.sum(x ** 3), **PY)
    h(np.ones(3))
    assert "H[0, 0]" in h.source and "assembled" not in h.source


def test_hessian_without_a_scalar_form_under_numba():
    x = point(7)
    h = gradc.hessian(f_sort)
    np.testing.assert_allclose(h(x), gradc.hessian(f_sort, **PY)(x), rtol=1e-12, atol=1e-12)
    assert h.cache_info()["runs"] == "numba"


# --- argument trees, compared with JAX --------------------------------------------------------
def tree_loss(xp):
    def loss(p, y):
        w, b, (c0, c1) = p["w"], p["b"], p["c"]
        return (xp.sum(xp.sin(w) * b) + c0 ** 2 * y + xp.sum(c1 * w ** 2) * y
                + b * b * c0 * y * y)
    return loss


def tree_model(xp):
    def model(p, y):
        return {"s": xp.sum(p["w"]) * p["b"] * y,
                "v": [p["w"] * p["c"][0], xp.tanh(p["c"][1] * y) ** 2]}
    return model


P = {"w": np.array([0.1, 0.2, 0.3]), "b": 0.5, "c": (1.5, np.array([0.4, -0.3, 0.8]))}
V = {"w": np.array([1.0, -1.0, 0.5]), "b": 0.25, "c": (2.0, np.array([0.1, 0.2, 0.3]))}
Y = 0.7


P2 = {"a": point(5), "s": 1.2}
ARGNUMS = [0, (0, 1)]


def key(argnums):
    """A dict key for one argnums (JAX sorts dict keys: an int and a tuple do not compare)."""
    return repr(argnums)


def sorting_loss(xp):
    return lambda p: xp.sum(xp.sort(p["a"] * p["s"]) * p["a"]) + p["s"] ** 3


def sorting_model(xp):
    return lambda p: {"y": xp.sort(p["a"]) * p["s"]}


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.fixture(scope="module")
def ref(jax):
    """Every JAX result these tests compare with, from one jitted function (JAX compiles
    once, ~1 s, instead of once per comparison)."""
    jnp = jax.numpy
    loss, model = tree_loss(jnp), tree_model(jnp)

    def everything(p, v, y, p2):
        hvp = {key(a): jax.jvp(jax.grad(loss, argnums=a), (p, y), (v, 0.0 if a == 0 else 0.3))[1]
               for a in ARGNUMS}
        return {
            "hessian": {key(a): jax.hessian(loss, argnums=a)(p, y) for a in ARGNUMS},
            "value": loss(p, y), "grad": jax.grad(loss)(p, y), "hvp": hvp,
            "jvp": jax.jvp(model, (p, y), (v, 0.3)),
            "jacobian": {key(a): jax.jacobian(model, argnums=a)(p, y) for a in ARGNUMS},
            "sorting_hessian": jax.hessian(sorting_loss(jnp))(p2),
            "sorting_jacobian": jax.jacobian(sorting_model(jnp))(p2)}

    return jax.jit(everything)(P, V, Y, P2)


def assert_same_tree(ours, theirs, jax):
    """The same structure (tuples, lists and dict keys), leaf shapes and values."""
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("argnums", ARGNUMS)
def test_hessian_of_trees_nests_as_jax_hessian(jax, ref, argnums):
    ours = gradc.hessian(tree_loss(np), argnums=argnums, **PY)(P, Y)
    assert_same_tree(ours, ref["hessian"][key(argnums)], jax)


def test_value_grad_hessian_of_trees(jax, ref):
    value, grad, H = gradc.value_grad_hessian(tree_loss(np), argnums=0, **PY)(P, Y)
    assert value == pytest.approx(float(ref["value"]))
    assert_same_tree(grad, ref["grad"], jax)
    assert_same_tree(H, ref["hessian"][key(0)], jax)


@pytest.mark.parametrize("argnums", ARGNUMS)
def test_hvp_of_trees_takes_and_returns_the_arguments_structure(jax, ref, argnums):
    tangents = (V,) if argnums == 0 else (V, 0.3)
    ours = gradc.hvp(tree_loss(np), argnums=argnums, **PY)(P, Y, *tangents)
    assert_same_tree(ours, ref["hvp"][key(argnums)], jax)


def test_jvp_of_trees_returns_the_results_structure(jax, ref):
    value, tangent = gradc.jvp(tree_model(np), **PY)(P, Y, V, 0.3)
    assert_same_tree(value, ref["jvp"][0], jax)
    assert_same_tree(tangent, ref["jvp"][1], jax)


def test_jvp_of_trees_returning_one_array_keeps_value_and_tangent_apart():
    value, tangent = gradc.jvp(lambda p: p["w"] * 2.0, **PY)(P, V)
    np.testing.assert_array_equal(value, 2.0 * P["w"])
    np.testing.assert_array_equal(tangent, 2.0 * V["w"])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("argnums", ARGNUMS)
def test_jacobian_of_trees_nests_as_jax_jacobian(jax, ref, argnums, mode):
    ours = gradc.jacobian(tree_model(np), argnums=argnums, mode=mode, **PY)(P, Y)
    assert_same_tree(ours, ref["jacobian"][key(argnums)], jax)


def test_trees_through_ops_without_a_scalar_form(jax, ref):
    """Trees and the assembled path compose: the flat function of the leaves sorts."""
    assert_same_tree(gradc.hessian(sorting_loss(np), **PY)(P2), ref["sorting_hessian"], jax)
    assert_same_tree(gradc.jacobian(sorting_model(np), **PY)(P2), ref["sorting_jacobian"], jax)


def test_hessian_of_trees_matches_central_differences():
    """The nesting and the numbers without JAX: blocks H[i][j] of shape s_i + s_j."""
    H = gradc.hessian(tree_loss(np), argnums=0, **PY)(P, Y)
    flat = lambda z: tree_loss(np)({"w": z[1:4], "b": z[0], "c": (z[4], z[5:8])}, Y)  # noqa: E731
    z = np.concatenate([[P["b"]], P["w"], [P["c"][0]], P["c"][1]])  # dict keys sorted: b, c, w
    ref = central_hessian(flat, z)
    assert set(H) == {"b", "c", "w"} and set(H["w"]) == {"b", "c", "w"}
    assert H["w"]["w"].shape == (3, 3) and H["w"]["b"].shape == (3,)
    assert isinstance(H["b"]["b"], float) and H["c"][1]["w"].shape == (3, 3)
    np.testing.assert_allclose(H["w"]["w"], ref[1:4, 1:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(H["c"][1]["b"], ref[5:8, 0], rtol=1e-5, atol=1e-5)
    assert H["b"]["c"][0] == pytest.approx(ref[0, 4], rel=1e-5)


def test_sparse_hessian_of_trees_is_the_flat_matrix_over_the_leaves():
    S = gradc.hessian(tree_loss(np), argnums=0, sparse=True, **PY)(P, Y)
    H = gradc.hessian(tree_loss(np), argnums=0, **PY)(P, Y)
    assert S.shape == (8, 8)
    np.testing.assert_allclose(S.toarray()[5:8, 5:8], H["w"]["w"])  # leaves: b, c0, c1, w


def test_tangents_must_have_the_arguments_structure():
    hvp = gradc.hvp(tree_loss(np), argnums=0, **PY)
    with pytest.raises(gradc.ArgumentError, match="structure") as info:
        hvp(P, Y, {"w": V["w"], "b": 0.25})
    assert "test_higher_trees.py" in str(info.value)
    bad = dict(V, w=np.ones(4))
    with pytest.raises(gradc.ArgumentError, match=r"shape \(4,\) at \['w'\]"):
        hvp(P, Y, bad)


def test_hessian_of_trees_under_numba():
    ours = gradc.hessian(tree_loss(np), argnums=0)(P, Y)
    theirs = gradc.hessian(tree_loss(np), argnums=0, **PY)(P, Y)
    np.testing.assert_allclose(ours["w"]["c"][1], theirs["w"]["c"][1], rtol=1e-12)
    assert ours["b"]["b"] == pytest.approx(theirs["b"]["b"], rel=1e-12)


def test_jvp_of_an_unnamed_array_result_returns_the_value_and_the_tangent_apart():
    x, v = np.arange(3.0), np.ones(3)
    value, tangent = gradc.jvp(lambda x: x * 2.0, **PY)(x, v)
    np.testing.assert_array_equal(value, 2.0 * x)
    np.testing.assert_array_equal(tangent, 2.0 * v)
