"""Workload family H: second derivatives on arrays traced whole (forward-over-reverse loops).

``python -m benchmarks.higher_loops [--quick]`` times, side by side in one process:

- ``gradc.hvp(rosen)`` (compiled loops, one function for every length) against a careful
  human's numba Hessian-vector product (into a buffer and returning a fresh array) and
  JAX's ``jit(jvp(grad(f)))`` (x64) where installed, at n = 10**3, 10**4, 10**5;
- cold compile of the hvp (decoration to first result, empty gradc cache) and a second n;
- ``gradc.hessian`` of ``sum(x**3)`` and of Rosenbrock at n = 100, cold, and per call.

Medians of repeated timings. Writes benchmarks/results/higher_loops.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

from .loops import RESULTS, median_time, rosen


def hand_hvp():
    from numba import njit

    @njit(error_model="numpy")
    def hvp_into(x, v, hv):
        n = x.shape[0]
        hv[:] = 0.0
        for i in range(n - 1):
            a = x[i + 1] - x[i] * x[i]
            da = v[i + 1] - 2.0 * x[i] * v[i]
            hv[i] += -400.0 * (v[i] * a + x[i] * da) + 2.0 * v[i]
            hv[i + 1] += 200.0 * da
        return hv

    @njit(error_model="numpy")
    def hvp_fresh(x, v):
        return hvp_into(x, v, np.empty_like(x))

    return hvp_into, hvp_fresh


def jax_hvp():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)

    def f(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    g = jax.grad(f)
    hvp = jax.jit(lambda x, v: jax.jvp(g, (x,), (v,))[1])
    return lambda x, v: hvp(x, v).block_until_ready()


def fmt(seconds):
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter timings")
    args = parser.parse_args(argv)
    os.environ["GRADC_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradc-bench-higher-")
    import gradc

    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    budget = 0.05 if args.quick else 0.2
    into, fresh = hand_hvp()
    jhvp = jax_hvp()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    hvp = gradc.hvp(rosen)
    x, v = rng.uniform(-1, 1, sizes[0]), rng.standard_normal(sizes[0])
    hvp(x, v)
    cold = time.perf_counter() - t0
    x2, v2 = rng.uniform(-1, 1, sizes[0] + 7), rng.standard_normal(sizes[0] + 7)
    t0 = time.perf_counter()
    hvp(x2, v2)
    second = time.perf_counter() - t0

    rows = []
    for n in sizes:
        x, v = rng.uniform(-1, 1, n), rng.standard_normal(n)
        buf = np.empty(n)
        expected = fresh(x, v)
        assert np.allclose(hvp(x, v), expected, rtol=1e-12, atol=1e-9)
        t_g = median_time(lambda: hvp(x, v), budget)
        t_into = median_time(lambda: into(x, v, buf), budget)
        t_fresh = median_time(lambda: fresh(x, v), budget)
        t_jax = None
        if jhvp is not None:
            assert np.allclose(np.asarray(jhvp(x, v)), expected, rtol=1e-10, atol=1e-8)
            t_jax = median_time(lambda: jhvp(x, v), budget)
        rows.append((n, t_g, t_fresh, t_into, t_jax))

    hess = []
    for name, f in (("sum(x**3)", lambda x: np.sum(x ** 3)), ("Rosenbrock", rosen)):
        x = rng.uniform(-1, 1, 100)
        t0 = time.perf_counter()
        h = gradc.hessian(f)
        H = h(x)
        t_cold = time.perf_counter() - t0
        if name == "Rosenbrock":  # every column of H is an hvp with a unit vector
            e = np.zeros(100)
            e[3] = 1.0
            assert np.allclose(H[:, 3], fresh(x, e), rtol=1e-12, atol=1e-9)
        hess.append((name, t_cold, median_time(lambda: h(x), budget)))

    lines = [
        "# Workload H: second derivatives of arrays as loops",
        "",
        f"One run of `python -m benchmarks.higher_loops{' --quick' if args.quick else ''}`: "
        f"{platform.machine()}, Python {platform.python_version()}, shared 2-core machine "
        "(other jobs were running: read ±30 %). Medians. Ratio: gradc over the hand-written "
        "numba hvp returning a fresh array.",
        "",
        "| hvp, Rosenbrock | gradc.hvp | ratio | hand numba (fresh) | hand numba (buffer) | JAX jit(jvp(grad)) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, t_g, t_fresh, t_into, t_jax in rows:
        lines.append(f"| n = {n} | {fmt(t_g)} | {t_g / t_fresh:.2f}× | {fmt(t_fresh)} | "
                     f"{fmt(t_into)} | {fmt(t_jax)} |")
    lines += [
        "",
        f"- cold compile of `gradc.hvp(rosen)` (decoration to first result, n = {sizes[0]}, "
        f"empty cache): {fmt(cold)}",
        f"- a second n ({sizes[0] + 7}) in the same process: {fmt(second)} (a trace, no compile)",
        "",
        "| hessian, n = 100 | cold (decoration to first result) | per call |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {fmt(c)} | {fmt(p)} |" for name, c, p in hess]
    text = "\n".join(lines) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "higher_loops.md"), "w") as fh:
        fh.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
