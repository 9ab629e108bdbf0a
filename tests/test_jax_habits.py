"""What JAX users write: has_aux, argument trees, static_argnums, compile of tuples and arrays
(gradc.jit), nested transformations, and the errors that say what to do instead."""
import collections

import numpy as np
import pytest

import gradc
from gradc import trees


def central(f, x, h=1e-6):
    """Central differences of a scalar function of one array."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


# --- trees ------------------------------------------------------------------------------------
def test_tree_flatten_orders_dict_keys_sorted_and_round_trips():
    Point = collections.namedtuple("Point", "x y")
    tree = {"b": (1.0, [2.0, None]), "a": Point(3.0, 4.0), "c": {}}
    leaves, treedef = trees.flatten(tree)
    assert leaves == [3.0, 4.0, 1.0, 2.0]  # a before b; None and {} hold no leaves
    assert trees.unflatten(treedef, leaves) == tree
    assert type(trees.unflatten(treedef, leaves)["a"]) is Point
    assert trees.paths(treedef) == ["['a'][0]", "['a'][1]", "['b'][0]", "['b'][1][0]"]
    assert hash(treedef) == hash(trees.flatten(dict(reversed(list(tree.items()))))[1])
    with pytest.raises(gradc.ArgumentError, match="cannot be compared"):
        trees.flatten({1: 1.0, "a": 2.0})


# --- has_aux ----------------------------------------------------------------------------------
def loss_with_metrics(w, x):
    r = w * x - 1.0
    loss = np.sum(r ** 2)
    return loss, {"first": r[0], "residuals": r, "n": 3}


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_has_aux_returns_value_aux_and_gradient_from_one_function(backend):
    x = np.array([1.0, 2.0, 3.0])
    f = gradc.value_and_grad(loss_with_metrics, argnums=0, has_aux=True, backend=backend)
    for w in (0.5, 2.0):  # the second call takes the compiled path
        (value, aux), dw = f(w, x)
        r = w * x - 1.0
        assert value == pytest.approx(np.sum(r ** 2))
        assert dw == pytest.approx(np.sum(2 * r * x))
        assert sorted(aux) == ["first", "n", "residuals"]
        assert aux["first"] == pytest.approx(r[0]) and aux["n"] == 3.0
        np.testing.assert_allclose(aux["residuals"], r)
    g = gradc.grad(loss_with_metrics, argnums=0, has_aux=True, backend=backend)
    dw, aux = g(2.0, x)
    assert dw == pytest.approx(np.sum(2 * (2.0 * x - 1.0) * x)) and aux["n"] == 3.0


def test_has_aux_with_a_tuple_aux_and_array_arguments_traced_whole():
    def f(x):
        y = np.tanh(x)
        return np.sum(y ** 2), (y, np.sum(y))

    x = np.linspace(-1, 1, 5)
    for arrays in ("unroll", "numpy"):
        (value, (y, s)), dx = gradc.value_and_grad(f, has_aux=True, backend="python",
                                                   arrays=arrays)(x)
        np.testing.assert_allclose(y, np.tanh(x))
        assert s == pytest.approx(np.sum(np.tanh(x)))
        np.testing.assert_allclose(dx, central(lambda v: np.sum(np.tanh(v) ** 2), x), rtol=1e-7)


def test_has_aux_source_returns_the_aux_beside_the_gradient():
    f = gradc.value_and_grad(lambda a, b: (a * b, a + b), has_aux=True, backend="python")
    assert f(2.0, 3.0) == ((6.0, 5.0), (3.0, 2.0))
    assert "return" in f.source and f.graph.out_tree == ((0, 3), (1, 2))


def test_has_aux_needs_a_pair_and_is_only_for_gradients():
    with pytest.raises(gradc.TracingError, match="has_aux=True, so it must return a pair"):
        gradc.grad(lambda x: x * x, has_aux=True, backend="python")(1.0)
    with pytest.raises(gradc.ArgumentError, match="has_aux=True is for gradc.grad"):
        gradc.compile(lambda x: x, has_aux=True)


# --- argument trees ---------------------------------------------------------------------------
def linear_loss(params, X, y):
    pred = X @ params["W"] + params["b"]
    return np.mean((pred - y) ** 2)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_dict_parameters_get_a_dict_gradient(backend):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    params = {"W": rng.normal(size=3), "b": 0.3}
    f = gradc.value_and_grad(linear_loss, argnums=0, backend=backend)
    value, g = f(params, X, y)
    assert value == pytest.approx(linear_loss(params, X, y))
    assert sorted(g) == ["W", "b"] and g["W"].shape == (3,) and isinstance(g["b"], float)
    np.testing.assert_allclose(
        g["W"], central(lambda W: linear_loss({"W": W, "b": 0.3}, X, y), params["W"]), rtol=1e-6)
    assert g["b"] == pytest.approx(float(np.mean(2 * (X @ params["W"] + 0.3 - y))))
    again = f({"b": 0.3, "W": params["W"]}, X, y)  # the same structure: dict order is irrelevant
    np.testing.assert_allclose(again[1]["W"], g["W"])


def test_nested_trees_of_every_kind_keep_their_structure():
    Layer = collections.namedtuple("Layer", "w b")

    def f(layers, scale):
        total = 0.0
        for layer in layers["stack"]:
            total = total + np.sum(layer.w ** 2) * layer.b
        return total * scale[0] + scale[1] ** 3

    layers = {"stack": [Layer(np.array([1.0, 2.0]), 2.0), Layer(np.array([3.0]), -1.0)]}
    (g_layers, g_scale) = gradc.grad(f, backend="python")(layers, (2.0, 1.5))
    assert isinstance(g_layers["stack"], list) and isinstance(g_layers["stack"][0], Layer)
    np.testing.assert_allclose(g_layers["stack"][0].w, [8.0, 16.0])
    assert g_layers["stack"][0].b == pytest.approx(10.0)
    np.testing.assert_allclose(g_layers["stack"][1].w, [-12.0])
    assert g_layers["stack"][1].b == pytest.approx(18.0)
    assert g_scale == pytest.approx((10.0 - 9.0, 3 * 1.5 ** 2))


def test_emitted_source_names_tree_leaves_by_their_path():
    f = gradc.value_and_grad(linear_loss, argnums=0, backend="python")
    f({"W": np.ones(2), "b": 0.0}, np.ones((3, 2)), np.zeros(3))
    source = f.source
    assert "params_W" in source and "params_b" in source


def test_a_tuple_of_floats_is_a_tree_and_a_list_of_floats_still_asks_for_an_array():
    assert gradc.grad(lambda p: p[0] * p[1], backend="python")((2.0, 3.0)) == (3.0, 2.0)
    with pytest.raises(gradc.ArgumentError, match="numpy.asarray"):
        gradc.grad(lambda x: np.sum(x), backend="python")([1.0, 2.0])


def test_a_leaf_that_is_not_a_number_names_its_path_and_static_argnums():
    message = r"holds a str at \['mode'\].*static_argnums=\(0,\)"
    with pytest.raises(gradc.ArgumentError, match=message):
        gradc.grad(lambda p: p["w"], backend="python")({"w": 1.0, "mode": "fast"})


# --- static_argnums ---------------------------------------------------------------------------
def powered(x, n, mode):
    y = x ** n
    return y if mode == "plain" else np.log(y)


def test_static_arguments_are_not_traced_and_compile_once_per_value():
    f = gradc.grad(powered, argnums=0, static_argnums=(1, 2), backend="python")
    assert f(2.0, 3, "plain") == pytest.approx(12.0)
    assert f(2.0, 2, "plain") == pytest.approx(4.0)
    assert f(2.0, 3, "log") == pytest.approx(1.5)
    assert f(5.0, 3, "plain") == pytest.approx(75.0)  # reuses the (3, "plain") code
    assert len(f._tree_calls) == 3
    # 3 and 3.0 are different static values (a function may branch on the type)
    f(2.0, 3.0, "plain")
    assert len(f._tree_calls) == 4


def test_static_argnums_with_argnums_none_differentiates_the_traced_arguments():
    f = gradc.value_and_grad(lambda x, cfg, y: x * y * cfg[1], static_argnums=1, backend="python")
    assert f(2.0, ("scale", 10.0), 3.0) == (60.0, (30.0, 20.0))
    g = gradc.value_and_grad(lambda x, cfg: x * cfg[1], static_argnums=1, backend="python")
    assert g(2.0, ("scale", 10.0)) == (20.0, 10.0)  # one traced argument: bare


def test_static_argument_errors_are_clear():
    f = gradc.grad(powered, argnums=0, static_argnums=(1, 2), backend="python")
    with pytest.raises(gradc.ArgumentError, match="cannot be hashed.*tuple instead of a list"):
        f(2.0, [3], "plain")
    with pytest.raises(gradc.ArgumentError, match="both differentiated.*and static"):
        gradc.grad(powered, argnums=1, static_argnums=(1, 2), backend="python")(2.0, 3.0, "plain")
    with pytest.raises(gradc.ArgumentError, match="static_argnums must be"):
        gradc.grad(powered, static_argnums="n")
    with pytest.raises(gradc.ArgumentError, match=r"is a str.*static_argnums=\(2,\)"):
        gradc.grad(powered, argnums=0, backend="python")(2.0, 3.0, "plain")


# --- compile of tuples and arrays; gradc.jit --------------------------------------------------
@pytest.mark.parametrize("backend", ["python", "numba"])
def test_compile_returns_tuples_arrays_and_dicts(backend):
    f = gradc.jit(lambda x, y: (x * y, np.array([x, y, x + y])), backend=backend)
    for args in ((2.0, 3.0), (1.0, -1.0)):
        a, arr = f(*args)
        assert a == args[0] * args[1]
        np.testing.assert_array_equal(arr, [args[0], args[1], args[0] + args[1]])
    d = gradc.compile(lambda x: {"sq": x * x, "parts": [x, 1.0]}, backend=backend)
    assert d(3.0) == {"parts": [3.0, 1.0], "sq": 9.0}
    assert d(4.0) == {"parts": [4.0, 1.0], "sq": 16.0}


def test_compile_of_arrays_traced_whole_returns_arrays():
    f = gradc.compile(lambda x: (np.sin(x), np.sum(x)), arrays="numpy", backend="python")
    s, total = f(np.arange(4.0))
    np.testing.assert_allclose(s, np.sin(np.arange(4.0)))
    assert total == 6.0


def test_jit_is_compile_and_the_backend_module_stays_importable():
    from gradc import jit

    assert callable(jit) and hasattr(jit, "load_numba")
    assert gradc.jit(lambda x: 2 * x, backend="python")(4.0) == 8.0
    assert gradc.jit(static_argnums=1, backend="python")(lambda x, k: x * k)(2.0, 5) == 10.0


# --- nested transformations -------------------------------------------------------------------
def test_grad_of_grad_is_the_second_derivative():
    f = lambda x: np.sin(x) * x ** 3  # noqa: E731
    d2 = gradc.grad(gradc.grad(f, backend="python"), backend="python")
    x = 0.7
    expected = -np.sin(x) * x ** 3 + 6 * np.cos(x) * x ** 2 + 6 * x * np.sin(x)
    assert d2(x) == pytest.approx(expected, rel=1e-12)
    d3 = gradc.grad(d2, backend="python")
    assert d3(x) == pytest.approx((d2(x + 1e-5) - d2(x - 1e-5)) / 2e-5, rel=1e-6)


def test_grad_of_grad_compiles_with_numba():
    d2 = gradc.value_and_grad(gradc.grad(lambda x, y: x ** 3 * y, argnums=0))
    assert d2(2.0, 5.0) == (60.0, (60.0, 12.0))
    assert d2(1.0, 1.0) == (3.0, (6.0, 3.0))


def test_jacobian_of_grad_is_the_hessian():
    def f(x):
        return np.sum(x[1:] * x[:-1] ** 2) + np.prod(x)

    x = np.array([0.5, -1.0, 2.0])
    H = gradc.jacobian(gradc.grad(f, backend="python"), backend="python")(x)
    np.testing.assert_allclose(H, gradc.hessian(f, backend="python")(x), rtol=1e-12)


def test_a_traced_loss_may_call_compiled_helpers_and_gradients():
    helper = gradc.compile(lambda a, b: (a * b, a - b), backend="python")
    inner_grad = gradc.grad(lambda v: np.sum(v ** 3), backend="python")

    def loss(x):
        p, m = helper(x[0], x[1])
        return p + m ** 2 + np.sum(inner_grad(x))

    x = np.array([1.5, -0.5])
    g = gradc.grad(loss, backend="python")(x)
    plain = lambda v: v[0] * v[1] + (v[0] - v[1]) ** 2 + np.sum(3 * v ** 2)  # noqa: E731
    np.testing.assert_allclose(g, central(plain, x), rtol=1e-7)
    whole = gradc.grad(lambda x: np.sum(inner_grad(x) ** 2), arrays="numpy", backend="python")
    np.testing.assert_allclose(whole(x), 36 * x ** 3)


def test_vmap_of_grad_of_grad_over_points():
    d2 = gradc.vmap(gradc.grad(gradc.grad(lambda x: x ** 4, backend="python"),
                               backend="python"), parallel=False)
    np.testing.assert_allclose(d2(np.array([1.0, 2.0, 3.0])), 12 * np.array([1.0, 4.0, 9.0]))


# --- errors that teach ------------------------------------------------------------------------
def test_grad_of_a_function_returning_a_tuple_points_to_has_aux_and_jacobian():
    with pytest.raises(gradc.TracingError, match="has_aux=True.*gradc.jacobian") as info:
        gradc.grad(lambda x: (x * x, x), backend="python")(1.0)
    assert "test_jax_habits.py" in str(info.value)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_out_buffers_mirror_a_tree_gradient(backend):
    g = gradc.value_and_grad(lambda p, y: np.sum(p["a"] ** 2) * p["s"] * y, argnums=0,
                             backend=backend)
    buffer = np.zeros(3)
    value, grads = g({"a": np.ones(3), "s": 2.0}, 1.0, out={"a": buffer, "s": None})
    assert value == 6.0 and grads["s"] == 3.0 and grads["a"] is buffer
    np.testing.assert_array_equal(buffer, [4.0, 4.0, 4.0])
    with pytest.raises(gradc.ArgumentError, match=r"mirror the gradient of argument 0, \{'a'"):
        g({"a": np.ones(3), "s": 2.0}, 1.0, out={"a": buffer})


def test_out_with_has_aux_is_refused_clearly():
    g = gradc.grad(lambda x: (np.sum(x ** 2), x[0]), has_aux=True, backend="python")
    with pytest.raises(gradc.ArgumentError, match="out= together with has_aux"):
        g(np.ones(2), out=np.zeros(2))


def test_a_helper_with_trees_and_static_arguments_composes_inside_a_traced_loss():
    helper = gradc.grad(lambda p, n: np.sum(p["w"] ** n), argnums=0, static_argnums=1,
                        backend="python")
    loss = gradc.grad(lambda w: np.sum(helper({"w": w}, 3)["w"]), backend="python")
    np.testing.assert_allclose(loss(np.array([1.0, 2.0])), [6.0, 12.0])  # d/dw sum(3 w^2)
