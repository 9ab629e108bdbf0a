"""Where gradc's W5 step spends its time: each statement of the emitted value-and-gradient
function, timed on its own, against the hand-written NumPy backward; and gradc.nn's fused
training step (forward, backward and SGD update in one compiled function) against the
same hand-written NumPy step.

``python -m benchmarks.profile_w5`` prints one line per emitted statement (median of
repeated runs) and the totals, then the part of the reverse pass that differentiates the
max shift of the log-sum-exp: it is zero in exact arithmetic, the hand-written backward
omits it, and gradc computes it because it differentiates the code as written.

``python -m benchmarks.profile_w5 --nn`` times only the gradc.nn steps: W5's 64-64-10 MLP
at batch 64 and a 64-256-10 MLP at batch 1024, softmax cross-entropy, SGD. Each step
is timed as ``fit`` calls it (``step.raw`` on flat arguments), interleaved with the hand
NumPy step (``mlp_numpy_vg`` then ``p -= lr * g`` in place) in rounds, medians over the
rounds (201); BLAS is pinned to one thread. "BLAS" is the five matrix products alone (the
forward's two, the backward's three), the floor that both steps share.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

import gradc
from gradc.emit import assign_names
from gradc.ir import evaluate
from gradc.ops import OPS

from .harness import pin_threads
from .workloads_arrays import make_mlp_loss, mlp_namespace, mlp_numpy_vg, sgd, w5_data


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


# --- gradc.nn's fused step against the hand-written NumPy step --------------------------------
NN_CONFIGS = ((64, 64, 10, 64), (64, 256, 10, 1024))  # inputs, hidden, classes, batch


def _interleaved(calls, rounds=201, per_round=None):
    """Median seconds per call of each of ``calls`` (a dict), timed in alternating rounds so
    that the shared machine's slow spells fall on every tool alike."""
    per_round = per_round or {name: 20 for name in calls}
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            k = per_round[name]
            t = time.perf_counter()
            for _ in range(k):
                call()
            times[name].append((time.perf_counter() - t) / k)
    return {name: float(np.median(v)) for name, v in times.items()}


def nn_step(inputs, hidden, classes, batch, lr=0.01):
    """Median seconds of one gradc.nn SGD step, the hand NumPy step and their BLAS products."""
    from gradc import nn

    rng = np.random.default_rng(0)
    model = nn.Chain(nn.Dense(inputs, hidden), nn.Tanh(), nn.Dense(hidden, classes))
    params = model.init(seed=0)
    X = rng.standard_normal((batch, inputs))
    Y = np.eye(classes)[rng.integers(0, classes, batch)]
    t = time.perf_counter()
    step = nn.compile_step(model, params, X, Y, nn.softmax_cross_entropy, nn.SGD(lr))
    compile_s = time.perf_counter() - t
    flat = [params[k] for k in step.keys]
    raw = step.raw

    def gradc_step():
        nonlocal flat
        out = raw(*flat, X, Y, lr)
        flat = list(out[1:])

    hand = [p.copy() for p in flat]

    def hand_step():
        _, grads = mlp_numpy_vg(*hand, X, Y)
        sgd(hand, grads, lr)

    W1, _, W2, _ = hand
    h = np.tanh(X @ W1)
    dz = np.ones((batch, classes))

    def blas():
        np.dot(X, W1), np.dot(h, W2), np.dot(h.T, dz), np.dot(dz, W2.T), np.dot(X.T, h)

    gradc_step(), hand_step()  # warm
    # pinned now: numba's products call SciPy's BLAS, loaded by the compile (threadpoolctl
    # limits the libraries loaded when it is called)
    pinned = pin_threads(1)
    # short rounds, many of them: a slow spell of the shared machine then spoils a few rounds
    # of each tool, which the medians drop
    k = max(1, round(4 * 64 * 64 / (batch * hidden)))  # calls a round: ~0.4 ms of work
    medians = _interleaved({"gradc": gradc_step, "hand": hand_step, "blas": blas},
                           per_round=dict.fromkeys(("gradc", "hand", "blas"), k))
    return dict(medians, compile=compile_s, runs=type(raw).__name__, pinned=pinned,
                loops=", as loops." in step.source.splitlines()[0])


def nn_main():
    print("gradc.nn SGD step (softmax cross-entropy) against hand NumPy; medians of 201 rounds")
    print(f"{'model':>12s} {'batch':>6s} {'gradc.nn us':>12s} {'hand us':>9s} {'ratio':>6s} "
          f"{'BLAS us':>8s} {'rest gradc':>10s} {'rest hand':>9s}")
    for inputs, hidden, classes, batch in NN_CONFIGS:
        r = nn_step(inputs, hidden, classes, batch)
        print(f"{inputs}-{hidden}-{classes:<3d} {batch:6d} {r['gradc'] * 1e6:12.1f} "
              f"{r['hand'] * 1e6:9.1f} {r['gradc'] / r['hand']:6.2f} {r['blas'] * 1e6:8.1f} "
              f"{(r['gradc'] - r['blas']) * 1e6:10.1f} {(r['hand'] - r['blas']) * 1e6:9.1f}"
              f"   (first compile {r['compile']:.1f} s, {r['runs']}"
              f"{', fused loops' if r['loops'] else ''})")
    print(r["pinned"])


if __name__ == "__main__":
    if "--nn" in sys.argv[1:]:
        nn_main()
    else:
        main()
        print()
        nn_main()
