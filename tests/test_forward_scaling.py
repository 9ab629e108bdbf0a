"""Forward sweeps cost what they build, not inputs x graph (gradc.forward.ForwardSweeps).

A Hessian runs one forward sweep per input over the gradient's graph. Each sweep used to
scan the whole graph, and to build the tangent of the value too (never read: in an
unrolled ``np.sum`` input ``j`` reaches every partial sum after ``j``), so compiling a
Hessian of n inputs took time quadratic in n. The count of nodes the sweeps look at
(``ForwardSweeps.visits``, the plan's own scan included) measures that work without
depending on the machine's speed: doubling n must about double it.
"""
import numpy as np
import pytest

import gradc
import gradc.forward as forward
import gradc.higher as higher
from gradc.trace import trace
from gradc.unroll import unroll


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def cubes(x):
    return np.sum(x ** 3)


@pytest.fixture
def plans(monkeypatch):
    """Every ForwardSweeps made while the test runs, wherever gradc makes one."""
    made = []

    class Recorded(forward.ForwardSweeps):
        def __init__(self, graph, wanted=None):
            super().__init__(graph, wanted)
            made.append(self)

    monkeypatch.setattr(forward, "ForwardSweeps", Recorded)
    monkeypatch.setattr(higher, "ForwardSweeps", Recorded)
    return made


def _hessian_visits(plans, fn, n):
    plans.clear()
    gradc.hessian(fn, backend="python").lower(((n,),))
    assert plans, "the Hessian made no forward-sweep plan"
    return sum(p.visits for p in plans)


@pytest.mark.parametrize("fn", [rosen, cubes], ids=["rosen", "cubes"])
def test_hessian_forward_sweeps_visit_nodes_linearly_in_inputs(plans, fn):
    counts = [_hessian_visits(plans, fn, n) for n in (20, 40, 80)]
    # linear: x2.0 per doubling; the full scan per input was x3.9-4.0, reachability alone
    # (the value's tangent still built) x2.6-3.3 at these sizes
    for small, large in zip(counts, counts[1:]):
        assert large <= 2.2 * small, counts


def test_forward_jacobian_sweeps_share_one_plan(plans):
    """A forward Jacobian's n sweeps share one plan: n plans would scan the graph n times."""
    gradc.jacobian(lambda x: tuple(x * x[0]) + tuple(np.sin(x)), mode="forward",
                   backend="python").lower(((30,),))
    assert len(plans) == 1
    assert plans[0].visits < 3 * len(plans[0].graph.nodes)


def test_forward_sweep_builds_only_tangents_the_wanted_nodes_use():
    """A node no wanted node depends on gets no tangent, however a seed reaches it."""
    g = trace(lambda x, y: (x * y, x + 1.0), ["x", "y"], "f", multiple=True)
    x, _ = g.inputs
    product, shifted = g.outputs
    t = forward.ForwardSweeps(g, wanted=[product]).tangents({x.id: g.const(1.0)})
    assert product.id in t and shifted.id not in t
    both = forward.tangents(g, {x.id: g.const(1.0)})
    assert product.id in both and shifted.id in both


def test_one_plan_gives_each_sweep_the_tangents_a_fresh_plan_gives():
    """Sweeps added to the graph by earlier sweeps do not leak into later ones."""
    g = unroll(trace(rosen, [("x", (6,))], "f"))  # one input per element: one sweep each
    sweeps = forward.ForwardSweeps(g)
    for x in g.inputs:
        shared = sweeps.tangents({x.id: g.const(1.0)})
        fresh = forward.tangents(g, {x.id: g.const(1.0)})
        assert {k: v.id for k, v in shared.items()} == {k: v.id for k, v in fresh.items()}
