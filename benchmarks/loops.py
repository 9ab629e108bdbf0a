"""Workload family L: array code compiled to fused loops, at the sizes users have.

``python -m benchmarks.loops [--quick]`` times value+gradient side by side in one process:

- gradc (``arrays="loops"``: the loop lowering of gradc/lower.py, compiled by numba);
- a careful human's numba loop, allocation-free (into a buffer) and returning a fresh array;
- hand-written NumPy (the vectorised backward);
- JAX (``jit(value_and_grad)``, x64), when installed.

Workloads: Rosenbrock at n = 16 ... 10**6; least squares ``0.5 * sum((A @ x - b) ** 2)``
(A 200x50 and 2000x500, gradient in x); logistic-regression NLL + L2 (X 10,000x20, gradient
in w). Also: cold compile (decoration to first result; the gradc cache is a fresh directory),
and a second n of the same rank in the same process (no new compile).
Medians of repeated timings; ratios to the best hand-written baseline. Writes
benchmarks/results/loops.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit

import numpy as np

from .harness import pin_threads

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def warm(fn):
    """Call ``fn`` until a gradc function in it has had its chance at a C entry (it gets one
    after ``gradc.fastcall.PROMOTE_AFTER`` calls): what is timed is the steady state."""
    from gradc import fastcall

    for _ in range(fastcall.PROMOTE_AFTER + 1):
        fn()


def median_time(fn, budget=0.2, repeat=7):
    warm(fn)
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(budget / repeat / once))
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number


def interleaved_medians(fns, budget=1.0, rounds=15):
    """The median time of each of ``fns``, timed in ``rounds`` rounds that each run every one
    in turn (about ``budget`` seconds in all)."""
    numbers = []
    for fn in fns:
        warm(fn)
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        numbers.append(max(1, int(budget / len(fns) / rounds / once)))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, number, found in zip(fns, numbers, times):
            found.append(timeit.timeit(fn, number=number) / number)
    return [statistics.median(found) for found in times]


# --- the models, as a scientist writes them ---------------------------------------------------
def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def least_squares(x, A, b):
    return 0.5 * np.sum((A @ x - b) ** 2)


def logistic(w, X, y):
    z = X @ w
    return np.sum(np.log1p(np.exp(-y * z))) / X.shape[0] + 0.5e-2 * np.sum(w * w)


# --- careful humans ---------------------------------------------------------------------------
def hand_numba():
    from numba import njit

    @njit(error_model="numpy")
    def rosen_into(x, dx):
        n = x.shape[0]
        dx[:] = 0.0
        v = 0.0
        for i in range(n - 1):
            a = x[i + 1] - x[i] * x[i]
            b = 1.0 - x[i]
            v += 100.0 * a * a + b * b
            dx[i] += -400.0 * x[i] * a - 2.0 * b
            dx[i + 1] += 200.0 * a
        return v

    @njit(error_model="numpy")
    def rosen_fresh(x):
        dx = np.empty_like(x)
        return rosen_into(x, dx), dx

    @njit(error_model="numpy")
    def ls(x, A, b):
        r = A @ x - b
        return 0.5 * np.dot(r, r), A.T @ r

    @njit(error_model="numpy")
    def logit(w, X, y):
        z = X @ w
        m = z.shape[0]
        v = 0.0
        g = np.empty(m)
        for i in range(m):
            t = -y[i] * z[i]
            v += np.log1p(np.exp(t))
            g[i] = -y[i] / (1.0 + np.exp(-t)) / m
        return v / m + 0.5e-2 * np.dot(w, w), X.T @ g + 1e-2 * w

    return rosen_into, rosen_fresh, ls, logit


def numpy_rosen(x):
    a = x[1:] - x[:-1] ** 2
    b = 1.0 - x[:-1]
    dx = np.zeros_like(x)
    dx[:-1] = -400.0 * x[:-1] * a - 2.0 * b
    dx[1:] += 200.0 * a
    return np.sum(100.0 * a * a + b * b), dx


def numpy_ls(x, A, b):
    r = A @ x - b
    return 0.5 * r @ r, A.T @ r


def numpy_logit(w, X, y):
    z = X @ w
    t = -y * z
    m = len(y)
    return (np.sum(np.log1p(np.exp(t))) / m + 0.5e-2 * w @ w,
            X.T @ (-y / (1.0 + np.exp(-t)) / m) + 1e-2 * w)


def jax_versions():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)

    def j_rosen(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def j_ls(x, A, b):
        return 0.5 * jnp.sum((A @ x - b) ** 2)

    def j_logit(w, X, y):
        z = X @ w
        return jnp.sum(jnp.log1p(jnp.exp(-y * z))) / X.shape[0] + 0.5e-2 * jnp.sum(w * w)

    def wrap(f):
        compiled = jax.jit(jax.value_and_grad(f))
        return lambda *a: jax.block_until_ready(compiled(*a))

    return {"rosen": wrap(j_rosen), "ls": wrap(j_ls), "logit": wrap(j_logit)}


def us(t):
    return "–" if t is None else (f"{t * 1e6:.2f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms")


def table(rows):
    """The timing rows as Markdown table lines. Ratios: gradc ``f(x)`` over the hand loop
    returning a fresh array (the best of that and hand NumPy for rows without ``out=``);
    gradc ``f(x, out=dx)`` over the hand loop writing into a buffer."""
    lines = ["| workload | gradc f(x) | ratio | gradc f(x, out=dx) | ratio | hand numba (buffer) | "
             "hand numba (fresh) | hand NumPy | JAX jit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t_g, t_gout, t_buf, t_fresh, t_np, t_jax in rows:
        best = min(t_fresh, t_np) if t_gout is None else t_fresh
        out_ratio = "–" if t_gout is None else f"{t_gout / t_buf:.2f}×"
        lines.append(f"| {name} | {us(t_g)} | {t_g / best:.2f}× | {us(t_gout)} | {out_ratio} | "
                     f"{us(t_buf)} | {us(t_fresh)} | {us(t_np)} | {us(t_jax)} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loops")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings")
    parser.add_argument("--rosen-only", action="store_true",
                        help="only the Rosenbrock rows (the call-path measurement); the results "
                             "file is not written")
    parser.add_argument("--sizes", type=lambda text: [int(float(n)) for n in text.split(",")],
                        help="Rosenbrock sizes, comma-separated (default 16,100,1e3,1e4,1e6)")
    opts = parser.parse_args(argv)
    os.environ["GRADC_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradc-bench-loops-")
    pin_threads(1)  # numba's products (SciPy's BLAS) too: unpinned, they oversubscribed
    import gradc

    budget = 0.05 if opts.quick else 0.2
    rows, compiles = [], []
    rosen_into, rosen_fresh, hand_ls, hand_logit = hand_numba()
    jx = jax_versions()
    rng = np.random.default_rng(0)

    g_rosen = gradc.value_and_grad(rosen)  # arrays="auto": unrolled while small, else loops
    sizes = opts.sizes or ([16, 100, 1000, 10**4, 10**6] if not opts.quick else [16, 1000, 10**6])
    for k, n in enumerate(sizes):
        x = rng.uniform(-1.5, 1.5, n)
        t0 = time.perf_counter()
        g_rosen(x)
        how = g_rosen.cache_info()["specialisations"][-1].get("path_kind", "unrolled")
        compiles.append((f"Rosenbrock, first call at n = {n} ({how}; same process, after "
                         f"the smaller n)", time.perf_counter() - t0))
        v1, d1 = g_rosen(x)
        v2, d2 = rosen_fresh(x)
        assert np.isclose(v1, v2, rtol=1e-10) and np.allclose(d1, d2, rtol=1e-10, atol=1e-10)
        dx = np.empty(n)
        # side by side: rounds of every variant in turn, so load on a shared machine falls
        # on all of them alike (these rows are the ones compared to each other most closely)
        t_g, t_gout, t_buf, t_fresh, t_np = interleaved_medians(
            [lambda: g_rosen(x), lambda: g_rosen(x, out=dx), lambda: rosen_into(x, dx),
             lambda: rosen_fresh(x), lambda: numpy_rosen(x)], budget * 5)
        t_jax = median_time(lambda: jx["rosen"](x), budget) if jx else None
        rows.append((f"Rosenbrock n = {n}", t_g, t_gout, t_buf, t_fresh, t_np, t_jax))
    if opts.rosen_only:
        print("\n".join(table(rows) + [f"- {name}: {t:.2f} s" for name, t in compiles]))
        return 0

    for m, n in ([(200, 50), (2000, 500)] if not opts.quick else [(200, 50)]):
        A, b, x = rng.standard_normal((m, n)), rng.standard_normal(m), rng.standard_normal(n)
        t0 = time.perf_counter()
        g = gradc.value_and_grad(lambda x, A, b: least_squares(x, A, b), argnums=0,
                                 arrays="loops")
        g(x, A, b)
        compiles.append((f"least squares {m}x{n}", time.perf_counter() - t0))
        v1, d1 = g(x, A, b)
        v2, d2 = numpy_ls(x, A, b)
        assert np.isclose(v1, v2) and np.allclose(d1, d2)
        t_g = median_time(lambda: g(x, A, b), budget)
        t_h = median_time(lambda: hand_ls(x, A, b), budget)
        t_np = median_time(lambda: numpy_ls(x, A, b), budget)
        t_jax = median_time(lambda: jx["ls"](x, A, b), budget) if jx else None
        rows.append((f"least squares A {m}x{n}", t_g, None, t_h, t_h, t_np, t_jax))

    X = rng.standard_normal((10_000, 20))
    w = rng.standard_normal(20) * 0.1
    y = np.sign(X @ rng.standard_normal(20) + 0.1 * rng.standard_normal(10_000))
    t0 = time.perf_counter()
    g = gradc.value_and_grad(lambda w, X, y: logistic(w, X, y), argnums=0, arrays="loops")
    g(w, X, y)
    compiles.append(("logistic regression 10000x20", time.perf_counter() - t0))
    v1, d1 = g(w, X, y)
    v2, d2 = numpy_logit(w, X, y)
    assert np.isclose(v1, v2) and np.allclose(d1, d2)
    rows.append(("logistic NLL + L2, X 10000x20", median_time(lambda: g(w, X, y), budget), None,
                 median_time(lambda: hand_logit(w, X, y), budget),
                 median_time(lambda: hand_logit(w, X, y), budget),
                 median_time(lambda: numpy_logit(w, X, y), budget),
                 median_time(lambda: jx["logit"](w, X, y), budget) if jx else None))

    # a closure over data: X is a hidden parameter, passed by reference (not a literal)
    Xc = rng.standard_normal((20_000, 10))
    yc = rng.standard_normal(20_000)
    wc = rng.standard_normal(10)
    t0 = time.perf_counter()
    g_closure = gradc.value_and_grad(lambda w: np.mean((Xc @ w - yc) ** 2))
    g_closure(wc)
    compiles.append(("closure over X 20000x10", time.perf_counter() - t0))
    g_arg = gradc.value_and_grad(lambda w, X, y: np.mean((X @ w - y) ** 2), argnums=0)
    g_arg(wc, Xc, yc)
    v1, d1 = g_closure(wc)
    v2, d2 = g_arg(wc, Xc, yc)
    assert v1 == v2 and np.array_equal(d1, d2)
    t_c = median_time(lambda: g_closure(wc), budget)
    t_a = median_time(lambda: g_arg(wc, Xc, yc), budget)

    def numpy_mse(w, X, y):
        r = X @ w - y
        return np.mean(r * r), (2.0 / X.shape[0]) * (X.T @ r)

    t_npc = median_time(lambda: numpy_mse(wc, Xc, yc), budget)
    closure = (len(g_closure.source), t_c, t_a, t_npc)

    lines = [
        "# Workload L: array code as fused loops",
        "",
        f"One run of `python -m benchmarks.loops{' --quick' if opts.quick else ''}`: "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numba {__import__('numba').__version__}, NumPy {np.__version__}, BLAS pinned to one "
        "thread. Medians. Ratio: gradc over the best hand-written baseline (the numba loop "
        "returning a fresh array for `gradc f(x)`; into a buffer for `gradc f(x, out=)`; "
        "for products, the best of numba and NumPy).",
        "",
    ] + table(rows)
    size, t_c, t_a, t_npc = closure
    lines += ["", f"Closure over X of 20,000 x 10 (`lambda w: np.mean((X @ w - y) ** 2)`, X and "
              f"y captured): source {size} bytes; per call {us(t_c)} against {us(t_a)} for the "
              f"same function taking X and y as arguments ({t_c / t_a:.2f}x) and {us(t_npc)} "
              "for hand-written NumPy."]
    lines += ["", "Compile, decoration to first result (empty cache):", ""]
    lines += [f"- {name}: {t:.2f} s" for name, t in compiles]
    text = "\n".join(lines) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "loops.md"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
