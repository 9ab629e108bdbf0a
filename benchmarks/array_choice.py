"""Workload A: the per-size choice between unrolled numba code and NumPy-level code for arrays.

gradc's ``arrays="auto"`` unrolls array arguments into straight-line scalar code compiled by numba
while they hold at most ``UNROLL_MAX_ELEMENTS`` elements and the unrolled program has at most
``UNROLL_MAX_NODES`` nodes (``gradc/api.py``), and runs NumPy-level code otherwise.  This measures
both paths, forced with ``arrays="unroll"`` and ``arrays="numpy"``, for

- extended Rosenbrock at n = 8, 16, 32, 64, 128, 256, 512 (quick: 8, 32, 128), and
- an MLP-like loss (tanh layer, softmax cross-entropy *without* the max shift, because ``np.max``
  with ``axis`` cannot be unrolled) at two sizes (quick: the small one),

each in fresh subprocesses with an empty ``GRADC_CACHE_DIR``: *cold* is decoration to first result
(trace, differentiate, emit, compile, first call), *warm* the same in a second process on the
filled cache, and *per call* the median per-call time measured in the warm process (harness
``measure``, BLAS pinned to one thread).  The parent also records which path ``arrays="auto"``
takes (``GradcFunction.lower``, which compiles nothing) and the node counts.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

from . import harness

ROSEN_SIZES = [8, 16, 32, 64, 128, 256, 512]
ROSEN_SIZES_QUICK = [8, 32, 128]
#: (inputs, hidden, classes, batch) for the MLP-like loss
MLP_SIZES = [(4, 4, 3, 4), (8, 8, 4, 8)]
MLP_SIZES_QUICK = [(4, 4, 3, 4)]


def _rosen(x):
    import numpy as np
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _mlp_nomax(W1, b1, W2, b2, X, Y):
    import numpy as np
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    return np.sum(Y * (np.log(np.sum(np.exp(z), axis=1, keepdims=True)) - z)) / X.shape[0]


def case_args(case, size):
    """(function, argnums, args) for a case: "rosen" with size n, or "mlp" with size "d-h-k-B"."""
    import numpy as np
    rng = np.random.default_rng(0)
    if case == "rosen":
        return _rosen, None, (rng.uniform(-2.0, 2.0, int(size)),)
    d, h, k, B = (int(s) for s in str(size).split("-"))
    args = (rng.standard_normal((d, h)) / np.sqrt(d), 0.1 * rng.standard_normal(h),
            rng.standard_normal((h, k)) / np.sqrt(h), 0.1 * rng.standard_normal(k),
            rng.standard_normal((B, d)), np.eye(k)[rng.integers(0, k, B)])
    return _mlp_nomax, (0, 1, 2, 3), args


def child(mode, case, size, time_calls):
    """In a fresh process: decoration to first result, then (optionally) per-call time."""
    t0 = time.perf_counter()
    import gradc
    from .harness import measure, pin_threads
    pin_threads(1)
    fn, argnums, args = case_args(case, size)
    t1 = time.perf_counter()
    f = gradc.value_and_grad(fn, argnums=argnums, arrays=mode)
    value = f(*args)[0]
    t2 = time.perf_counter()
    res = {"import_s": t1 - t0, "first_result_s": t2 - t1, "value": float(value),
           "runs": f.cache_info()["runs"]}
    if time_calls:
        s = measure(f, args, repeat=7, min_time=0.02)
        res.update(per_call_median=s.median, per_call_min=s.min, spread=s.spread)
    print(json.dumps(res))


def _run(mode, case, size, cache_dir, time_calls, timeout=900):
    r = harness.run_child("benchmarks.array_choice",
                          (mode, case, size, "1" if time_calls else "0"), cache_dir, timeout)
    if r.pop("stderr", None) is not None:
        r["error"] = r["error"][:300]
    return r


def auto_choice(case, size):
    """What arrays="auto" picks, and the sizes that decide it (nothing is compiled)."""
    import numpy as np
    import gradc
    from gradc import api
    fn, argnums, args = case_args(case, size)
    shapes = tuple(a.shape for a in args)
    elements = sum(int(np.prod(s)) for s in shapes)
    info = {"elements": elements}
    try:
        g, *_ = gradc.value_and_grad(fn, argnums=argnums, arrays="unroll").lower(shapes)
        info["unrolled_nodes"] = len(g.nodes)      # after differentiation and optimisation
    except Exception as e:                          # noqa: BLE001
        info["unrolled_nodes"] = f"error: {e.__class__.__name__}"
    try:
        from gradc.trace import trace
        traced = trace(fn, [(f"a{i}", s, False) for i, s in enumerate(shapes)], "f", None)
        info["traced_nodes"] = len(traced.nodes)  # what the UNROLL_MAX_NODES rule counts
    except Exception:                               # noqa: BLE001
        info["traced_nodes"] = None
    g, *_ = gradc.value_and_grad(fn, argnums=argnums, arrays="auto").lower(shapes)
    info["auto"] = "numpy" if g.whole_params else "unroll"
    info["rule"] = f"elements <= {api.UNROLL_MAX_ELEMENTS} and traced nodes <= {api.UNROLL_MAX_NODES}"
    return info


def run_array_choice(quick, log=print):
    """Rows: one per (case, size), with both paths' cold, warm and per-call times."""
    cases = [("rosen", n) for n in (ROSEN_SIZES_QUICK if quick else ROSEN_SIZES)]
    cases += [("mlp", "-".join(map(str, s))) for s in (MLP_SIZES_QUICK if quick else MLP_SIZES)]
    rows = []
    for case, size in cases:
        row = {"case": case, "size": size, **auto_choice(case, size)}
        for mode in ("unroll", "numpy"):
            with tempfile.TemporaryDirectory(prefix="gradc-bench-choice-") as d:
                cold = _run(mode, case, size, d, time_calls=False)
                warm = _run(mode, case, size, d, time_calls=True) if "error" not in cold else cold
            row[mode] = {"cold": cold.get("first_result_s"), "warm": warm.get("first_result_s"),
                         "per_call": warm.get("per_call_median"), "per_call_min":
                         warm.get("per_call_min"), "runs": warm.get("runs"),
                         "error": cold.get("error") or warm.get("error"),
                         "value": warm.get("value")}
        u, n = row["unroll"], row["numpy"]
        if u["per_call"] and n["per_call"]:
            row["speedup"] = n["per_call"] / u["per_call"]        # > 1: unrolled numba is faster
            extra = (u["cold"] or 0) - (n["cold"] or 0)
            saved = n["per_call"] - u["per_call"]
            row["break_even_calls"] = extra / saved if saved > 0 else None
        rows.append(row)
        log(f"  A {case} {size}: elements={row['elements']} nodes={row['unrolled_nodes']} "
            f"auto={row['auto']} unroll cold={u['cold']} call={u['per_call']} | numpy "
            f"cold={n['cold']} call={n['per_call']}" + (f" err={u['error'] or n['error']}"
                                                         if u['error'] or n['error'] else ""))
    return rows


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1")
