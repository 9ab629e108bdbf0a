"""Compile cost of ``gradc.hessian`` (issue 15): cold and warm decoration to first result, and
per call, for n = 10, 50 and 200, each compile in a fresh Python subprocess.

Two functions of one array ``x`` of length n:

- ``cubes``: ``np.sum(x ** 3)``, a diagonal Hessian (n stored entries of n²). Before gradc
  stopped storing structural zeros, n = 50 took 134-202 s to compile (2,500 stores).
- ``rosen``: the extended Rosenbrock function, a tridiagonal Hessian (3n - 2 entries).

Tools: ``gradc`` (dense NumPy result), ``gradc-sparse`` (``sparse=True``: a CSR matrix), and
``jax`` (``jit(hessian)``, float64, CPU) where installed. "cold" uses a new, empty
``GRADC_CACHE_DIR``; "warm" is a second process on the directory the cold one filled. Every
child checks its Hessian against the analytic one before it reports. Run::

    python -m benchmarks.compile_hessian            # n = 10, 50, 200
    python -m benchmarks.compile_hessian --quick    # n = 10, 50
    python -m benchmarks.compile_hessian --out benchmarks/results/compile_hessian.md

Timings on a shared machine are noisy: each cell is the median over ``--repeats`` fresh
directories (default 1; quote medians of more when it matters).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

from . import harness

SIZES = (10, 50, 200)
FUNCTIONS = ("cubes", "rosen")
TOOLS = ("gradc", "gradc-sparse", "jax")


def _function(name, np):
    if name == "cubes":
        return lambda x: np.sum(x ** 3)
    return lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _expected(name, x):
    """The analytic Hessian (scipy's rosen_hess for Rosenbrock)."""
    import numpy as np
    if name == "cubes":
        return np.diag(6.0 * x)
    from scipy.optimize import rosen_hess
    return rosen_hess(x)


def child(tool, name, n):
    """Measure in this (fresh) process; prints one JSON line."""
    t0 = time.perf_counter()
    import numpy as np
    if tool.startswith("gradc"):
        import gradc
    else:
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
    t1 = time.perf_counter()
    x = np.linspace(-1.2, 1.3, n)
    if tool == "gradc":
        H = gradc.hessian(_function(name, np))
        call = H
        first = H(x)
    elif tool == "gradc-sparse":
        H = gradc.hessian(_function(name, np), sparse=True)
        call = H
        first = H(x).toarray()
    else:
        H = jax.jit(jax.hessian(_function(name, jnp)))
        call = lambda x: H(x).block_until_ready()  # noqa: E731
        first = np.asarray(call(x))
    t2 = time.perf_counter()
    if not np.allclose(first, _expected(name, x), rtol=1e-10, atol=1e-10):
        print(json.dumps({"error": "wrong Hessian"}))
        return
    from .harness import measure
    per_call = measure(call, (x,), repeat=7, min_time=0.01, warmup=2).median
    print(json.dumps({"import_s": t1 - t0, "first_result_s": t2 - t1, "per_call_s": per_call}))


def run_child(tool, name, n, cache_dir, timeout=900):
    """One fresh subprocess; its JSON dict, or {"error": ...} / {"skipped": ...}."""
    r = harness.run_child("benchmarks.compile_hessian", ("--child", tool, name, n), cache_dir,
                          timeout)
    if r.pop("stderr", None) is not None:
        tail = r["error"]
        return {"skipped" if "No module named" in tail else "error": tail[:300]}
    return r


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def measure_case(tool, name, n, repeats=1):
    """Cold, warm and per-call medians for one row."""
    cold, warm, per_call, note = [], [], [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="gradc-bench-cache-") as d:
            r = run_child(tool, name, n, d)
            if "first_result_s" not in r:
                note = r.get("error") or r.get("skipped")
                break
            cold.append(r["first_result_s"])
            per_call.append(r["per_call_s"])
            if tool.startswith("gradc"):  # jax keeps no cache between processes here
                r2 = run_child(tool, name, n, d)
                warm.append(r2.get("first_result_s"))
    return {"tool": tool, "function": name, "n": n, "cold_s": _median(cold),
            "warm_s": _median(warm), "per_call_s": _median(per_call), "note": note}


def _fmt(t, unit="s"):
    if t is None:
        return "–"
    if unit == "us":
        return f"{t * 1e6:.1f} µs"
    return f"{t:.2f} s"


def table(rows):
    """The rows as a Markdown table."""
    lines = ["| function | n | tool | cold | warm | per call |", "|---|---|---|---|---|---|"]
    for r in rows:
        extra = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['function']} | {r['n']} | {r['tool']}{extra} | {_fmt(r['cold_s'])} | "
                     f"{_fmt(r['warm_s'])} | {_fmt(r['per_call_s'], 'us')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 10 and 50 only")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "FUNCTION", "N"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tool, name, n = args.child
        return child(tool, name, int(n))
    sizes = SIZES[:2] if args.quick else SIZES
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    rows = []
    for name in FUNCTIONS:
        for n in sizes:
            for tool in tools:
                row = measure_case(tool, name, n, args.repeats)
                rows.append(row)
                print(f"  {name} n={n} {tool}: cold={_fmt(row['cold_s'])} "
                      f"warm={_fmt(row['warm_s'])} per call={_fmt(row['per_call_s'], 'us')}"
                      + (f" ({row['note']})" if row["note"] else ""), flush=True)
    text = table(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("# gradc.hessian compile cost (benchmarks/compile_hessian.py)\n\n"
                     + text + "\n")


if __name__ == "__main__":
    main()
