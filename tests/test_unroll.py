"""The unroll pass (gradc/unroll.py): a whole-array program and its scalar form agree.

Every array op the pass knows is checked on value-and-gradient graphs, at sizes 1, 7 and 300,
by evaluating both graphs (gradc.ir.evaluate: NumPy semantics) at random points; and the
API's choice: small programs run unrolled, large ones as loops, from the one whole trace.
"""
import numpy as np
import pytest

import gradc
from gradc import ad, higher
from gradc.ir import ArrayOut, evaluate, leaves
from gradc.optimize import optimize
from gradc.trace import trace
from gradc.unroll import UnrollError, can_unroll, unroll

RNG = np.random.default_rng(0)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def assigns(x):
    """Item assignment (setitem) into a copy, one element and a slice."""
    y = x.copy()
    y[0] = x[-1] ** 2
    y[1:] = np.sin(x[:-1]) * y[:1]
    return np.sum(y * x)


# name -> (function of one array of length n, uses 2-D reshapes)
CASES = {
    "item_assignment": assigns,
    "array_of_scalars": lambda x: np.sum(np.array([x[0], np.sum(x ** 2), x[-1] * x[0]]) * x[0]),
    "rosen": lambda x: rosen(x),
    "broadcast": lambda x: np.sum(np.sin(x) * x[0] + np.exp(-x) / (1.0 + x ** 2)),
    "max_min": lambda x: np.max(x ** 2) - 3.0 * np.min(np.cos(x)),
    "outer_matmul": lambda x: np.sum(np.tanh(np.reshape(x, (-1, 1)) @ np.reshape(x, (1, -1)))),
    "stack_transpose": lambda x: np.sum(np.transpose(np.stack([x, x ** 2])) ** 3),
    "concatenate": lambda x: np.sum(np.concatenate([x[::-1] ** 2, np.log1p(x ** 2)])),
    "where": lambda x: np.sum(np.where(x > 0.5, x ** 3, np.sin(x))),
    "axis_sums": lambda x: np.sum(np.sum(np.stack([x, 2.0 * x, x ** 2]), axis=0) ** 2)
    + np.sum(np.mean(np.stack([x, x]), axis=1)),
}


def _outputs(graph, args):
    values = evaluate(graph, args)
    out = []
    for leaf in leaves(graph.out_tree):
        if isinstance(leaf, ArrayOut):
            out.append(np.array([values[graph.outputs[i].id] for i in leaf.indices],
                                dtype=float).reshape(leaf.shape))
        else:
            out.append(np.asarray(values[graph.outputs[leaf].id], dtype=float))
    return out


@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("name", sorted(CASES))
def test_unrolled_value_and_gradient_equal_the_array_program(name, n):
    if name == "max_min" or n == 300 and name == "outer_matmul":
        n = max(n, 2) if name == "max_min" else 40  # max needs two elements; 300^2 is slow
    graph = optimize(ad.value_and_grad(trace(CASES[name], [("x", (n,), True)], name), (0,), True))
    assert can_unroll(graph)
    scalar = optimize(unroll(graph))
    assert not scalar.whole_params and all(not node.shape for node in scalar.nodes)
    x = RNG.uniform(0.1, 0.9, n)
    for whole, elements in zip(_outputs(graph, [x]), _outputs(scalar, [x])):
        np.testing.assert_allclose(elements, whole, rtol=1e-13, atol=1e-13)


def test_unrolling_before_differentiating_gives_the_hessian():
    graph = unroll(trace(rosen, [("x", (6,), True)], "rosen"))
    H = _outputs(optimize(higher.hessian(graph, (0,))), [np.linspace(-1, 1, 6)])[0]
    np.testing.assert_allclose(H, gradc.hessian(rosen, backend="python")(np.linspace(-1, 1, 6)),
                               rtol=1e-13)


def test_an_op_without_a_scalar_form_is_refused():
    def f(x):
        return gradc.scan(lambda c, xi: c * xi + 1.0, 0.0, x)

    graph = trace(f, [("x", (4,), True)], "f")
    assert not can_unroll(graph)
    with pytest.raises(UnrollError, match="scan"):
        unroll(graph)


def test_absent_elements_add_nothing():
    """The adjoint of x[1:] and x[:-1]: each element sums the contributions it has, no + 0.0."""
    graph = optimize(ad.value_and_grad(trace(rosen, [("x", (4,), True)], "rosen"), (0,), True))
    src = str(optimize(unroll(graph)))
    assert " + 0.0" not in src and "0.0 + " not in src


def test_one_trace_small_arrays_run_unrolled_large_ones_as_loops():
    vg = gradc.value_and_grad(rosen, backend="python")
    vg(np.ones(8))
    assert "x_7 = x[7]" in vg.source  # scalar code
    vg(np.ones(1000))
    assert vg._specs[((1000,),)].graph.whole_params  # NumPy-level, one node per array
