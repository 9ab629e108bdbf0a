"""Kernel time of gradc's fused loops (gradc/lower.py) against careful hand-written kernels.

``python -m benchmarks.profile_kernels`` calls the compiled loops function itself (the numba
dispatcher of the specialisation, reached through ``f._specs``), not ``f(...)``: the Python
frame of the call is not the lowering's to remove, so this measures what gradc/lower.py
controls. Workloads are benchmarks/loops.py's (Rosenbrock 10**6 fresh and into a buffer,
least squares, logistic regression) and W5's MLP value and gradient (float64 and float32,
benchmarks/workloads_arrays.py), against the hand-written numba and NumPy versions of those
files. Medians of interleaved rounds, BLAS pinned to one thread.

``--ufuncs`` measures the rule behind gradc.lower's vectorised transcendentals: per element,
a numba loop of scalar libm calls against NumPy's SIMD loop reached through numba's object
mode, and the fixed cost of entering object mode, by length (the crossover
``_VECTOR_MIN`` is read from this table).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import timeit

import numpy as np

from .harness import pin_threads


def interleaved(fns, budget=2.0, rounds=21):
    """Median seconds per call of each of ``fns`` (a dict), in rounds that run every one in
    turn, so that a slow spell of the shared machine falls on all alike."""
    numbers = {}
    for name, fn in fns.items():
        fn()
        once = max(timeit.timeit(fn, number=1), 1e-7)
        numbers[name] = max(1, int(budget / len(fns) / rounds / once))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timeit.timeit(fn, number=numbers[name]) / numbers[name])
    return {name: statistics.median(t) for name, t in times.items()}


def kernel(f, *args):
    """The compiled loops function of ``f``'s specialisation for ``args`` (called once)."""
    f(*args)
    specs = [s for s in f._specs.values() if s.runs == "loops"]
    assert specs, "not lowered to loops"
    return specs[-1].call


def us(t):
    return f"{t * 1e6:9.2f} us"


def workloads():
    """``(name, {variant: thunk})``: gradc's kernel first, then the hand-written versions."""
    import gradc

    from . import loops as L
    from .workloads_arrays import make_mlp_loss, mlp_namespace, mlp_numpy_vg, w5_data

    rosen_into, rosen_fresh, hand_ls, hand_logit = L.hand_numba()
    rng = np.random.default_rng(0)
    out = []

    xr = rng.uniform(-1.5, 1.5, 10**6)
    dx = np.empty_like(xr)
    f = gradc.value_and_grad(L.rosen)
    k = kernel(f, xr)
    f(xr, out=dx)
    k_out = [s for s in f._specs.values() if s.runs == "loops" and s.call is not k]
    variants = {"gradc kernel": lambda k=k: k(xr), "hand fresh": lambda: rosen_fresh(xr),
                "hand buffer": lambda: rosen_into(xr, dx)}
    if k_out:
        variants["gradc kernel, out="] = lambda k=k_out[-1].call: k(xr, dx)
    out.append(("Rosenbrock n = 10^6", variants))

    for m, n in ((200, 50), (2000, 500)):
        A, b, x = rng.standard_normal((m, n)), rng.standard_normal(m), rng.standard_normal(n)
        f = gradc.value_and_grad(lambda x, A, b: L.least_squares(x, A, b), argnums=0,
                                 arrays="loops")
        k = kernel(f, x, A, b)
        out.append((f"least squares {m}x{n}", {
            "gradc kernel": lambda k=k, x=x, A=A, b=b: k(x, A, b),
            "hand numba": lambda x=x, A=A, b=b: hand_ls(x, A, b),
            "hand NumPy": lambda x=x, A=A, b=b: L.numpy_ls(x, A, b)}))

    X = rng.standard_normal((10_000, 20))
    w = rng.standard_normal(20) * 0.1
    y = np.sign(X @ rng.standard_normal(20) + 0.1 * rng.standard_normal(10_000))
    f = gradc.value_and_grad(lambda w, X, y: L.logistic(w, X, y), argnums=0, arrays="loops")
    k = kernel(f, w, X, y)
    out.append(("logistic 10000x20", {
        "gradc kernel": lambda k=k, w=w, X=X, y=y: k(w, X, y),
        "hand numba": lambda w=w, X=X, y=y: hand_logit(w, X, y),
        "hand NumPy": lambda w=w, X=X, y=y: L.numpy_logit(w, X, y)}))

    for dtype in (np.float64, np.float32):
        params, (X, Y) = w5_data(dtype)
        f = gradc.value_and_grad(make_mlp_loss(mlp_namespace(np)), argnums=(0, 1, 2, 3))
        k = kernel(f, *params, X, Y)
        out.append((f"W5 MLP value+grad {np.dtype(dtype).name}", {
            "gradc kernel": lambda k=k, p=params, X=X, Y=Y: k(*p, X, Y),
            "hand NumPy": lambda p=params, X=X, Y=Y: mlp_numpy_vg(*p, X, Y)}))
    return out


def _numpy_loop(ufunc, a, out):
    with np.errstate(all="ignore"):
        ufunc(a, out=out)


def ufunc_table(lengths=(64, 256, 512, 1024, 2048, 4096, 16384)):
    """Per op and length: a numba loop of scalar calls, and NumPy's loop in object mode."""
    import numba

    rows = []
    for name in ("exp", "log", "log1p", "tanh", "sin"):
        ufunc = getattr(np, name)
        # the helper gradc.lower writes: NumPy's loop under errstate(all="ignore"), in object mode
        src = (f"def scalar(a, out):\n    for i in range(a.shape[0]):\n"
               f"        out[i] = np.{name}(a[i])\n"
               f"def vector(a, out):\n    with numba.objmode():\n"
               f"        numpy_loop(np.{name}, a, out)\n")
        ns = {"np": np, "numba": numba, "numpy_loop": _numpy_loop}
        exec(src, ns)
        scalar = numba.njit(error_model="numpy")(ns["scalar"])
        vector = numba.njit(error_model="numpy")(ns["vector"])
        for n in lengths:
            a = np.random.default_rng(n).uniform(0.1, 2.0, n)
            o = np.empty_like(a)
            t = interleaved({"scalar": lambda: scalar(a, o), "vector": lambda: vector(a, o)},
                            budget=0.4)
            rows.append((name, n, t["scalar"], t["vector"]))
        assert np.allclose(ufunc(a), o)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_kernels")
    parser.add_argument("--ufuncs", action="store_true",
                        help="the scalar-loop against NumPy-in-object-mode table only")
    opts = parser.parse_args(argv)
    print(pin_threads(1))
    if opts.ufuncs:
        print(f"{'op':6s} {'n':>6s} {'numba loop':>12s} {'NumPy (objmode)':>16s}")
        for name, n, ts, tv in ufunc_table():
            print(f"{name:6s} {n:6d} {us(ts)} {us(tv)}   {ts / tv:5.2f}x")
        return 0
    for name, variants in workloads():
        t = interleaved(variants)
        base = t["gradc kernel"]
        best = min(v for k, v in t.items() if not k.startswith("gradc"))
        print(f"{name}: gradc kernel {us(base).strip()} = {base / best:.2f}x the best hand")
        for k, v in t.items():
            print(f"    {k:22s} {us(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
