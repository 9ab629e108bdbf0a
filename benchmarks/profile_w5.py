"""Where gradc's W5 step spends its time: each statement of the emitted value-and-gradient
function, timed on its own, against the hand-written NumPy backward.

``python -m benchmarks.profile_w5`` prints one line per emitted statement (median of
repeated runs) and the totals, then the part of the reverse pass that differentiates the
max shift of the log-sum-exp: it is zero in exact arithmetic, the hand-written backward
omits it, and gradc computes it because it differentiates the code as written.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

import gradc
from gradc.emit import assign_names
from gradc.ir import evaluate
from gradc.ops import OPS

from .workloads_arrays import make_mlp_loss, mlp_namespace, mlp_numpy_vg, w5_data


def _median_time(fn, repeat=301):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    (params, (X, Y)) = w5_data()
    args = [*params, X, Y]
    loss = make_mlp_loss(mlp_namespace(np))
    f = gradc.value_and_grad(loss, argnums=(0, 1, 2, 3), arrays="numpy", backend="python")
    f(*args)
    graph = f.graph
    values = evaluate(graph, args)
    names, _, _ = assign_names(graph, graph.name)
    print(f"{'statement':10s} {'op':10s} {'shape':>10s} {'us':>8s}")
    total = 0.0
    for node in graph.nodes:
        if node.op in ("input", "const", "alias"):
            continue
        inputs = [values[a.id] for a in node.args]
        cost = _median_time(lambda: OPS[node.op].compute(inputs, node.attrs))
        total += cost
        print(f"{names[node.id]:10s} {node.op:10s} {str(node.shape):>10s} {cost * 1e6:8.2f}")
    # The same program with the row max treated as a constant (its adjoint is zero in exact
    # arithmetic): what differentiating the shift costs.
    saved = OPS["max"]
    OPS["max"] = dataclasses.replace(saved, vjp=lambda g, out, x: (None,))
    try:
        g = gradc.value_and_grad(loss, argnums=(0, 1, 2, 3), arrays="numpy", backend="python")
        g(*args)
    finally:
        OPS["max"] = saved
    whole = _median_time(lambda: f(*args))
    without = _median_time(lambda: g(*args))
    hand = _median_time(lambda: mlp_numpy_vg(*args))
    n_with = sum(1 for n in graph.nodes if n.op not in ("input", "const", "alias"))
    n_without = sum(1 for n in g.graph.nodes if n.op not in ("input", "const", "alias"))
    print(f"\ngradc: {n_with} statements, {whole * 1e6:.1f} us a call "
          f"({total * 1e6:.1f} us op by op)")
    print(f"gradc without the max shift's derivative: {n_without} statements, "
          f"{without * 1e6:.1f} us")
    print(f"hand-written NumPy backward: {hand * 1e6:.1f} us")


if __name__ == "__main__":
    main()
