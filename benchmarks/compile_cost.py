"""Workload C: compile cost, from decoration to first result, each in a fresh Python subprocess.

Every measurement starts ``python -m benchmarks.compile_cost TOOL WORKLOAD DEPTH`` with
``GRADC_CACHE_DIR`` pointing at a temporary directory: "cold" uses a new empty directory, "warm" a
second process on the directory the cold process filled.  The child reports the time to import the
tool (numpy, numba, gradc, jax ...) separately from the time from decoration to first result.
Tools: gradc, gradc-python, numba-hand (no disk cache: cold and warm are the same), jax.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

from . import harness

CHILD_TOOLS = ["gradc", "gradc-python", "numba-hand", "jax"]


def child(tool, workload, depth):
    """Measure in this (fresh) process; prints one JSON line."""
    t0 = time.perf_counter()
    import numpy as np
    from . import workloads as wl
    if tool.startswith("gradc"):
        import gradc
    elif tool == "jax":
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
    else:
        import numba  # noqa: F401
    t1 = time.perf_counter()
    args = (1.5, -0.75, 2.25) if workload == "W1" else (wl.chain_params(depth),)
    if tool == "gradc":
        f = wl.make_w1(np) if workload == "W1" else wl.make_chain(depth)(np)
        J = gradc.value_and_grad(f)
        out = J(*args)
    elif tool == "gradc-python":
        f = wl.make_w1(np) if workload == "W1" else wl.make_chain(depth)(np)
        out = gradc.value_and_grad(f, backend="python")(*args)
    elif tool == "jax":
        f = wl.make_w1(jnp) if workload == "W1" else wl.make_chain(depth)(jnp)
        argnums = (0, 1, 2) if workload == "W1" else 0
        out = jax.block_until_ready(jax.jit(jax.value_and_grad(f, argnums=argnums))(*args))
    else:
        src = wl._w1_numba_src if workload == "W1" else wl._chain_numba_src
        out = wl._jit(src)(*args)
    t2 = time.perf_counter()
    res = {"import_s": t1 - t0, "first_result_s": t2 - t1, "value": float(out[0])}
    if tool == "gradc":
        res["note"] = _gradc_backend_note(J)
    print(json.dumps(res))


def _gradc_backend_note(J):
    """gradc (numba backend) may run a graph as plain Python/NumPy instead: say so, from what
    ``cache_info()`` reports ran (numba, the native route, or numpy / python)."""
    runs = J.cache_info().get("runs")
    return "ran as Python/NumPy, not compiled" if runs in ("numpy", "python") else None


def run_child(tool, workload, depth, cache_dir, timeout=900):
    """One fresh subprocess; returns its JSON dict or {"error": ...} / {"skipped": ...}."""
    r = harness.run_child("benchmarks.compile_cost", (tool, workload, depth), cache_dir, timeout)
    stderr = r.pop("stderr", "")
    if "No module named 'gradc'" in stderr or "No module named 'jax'" in stderr:
        return {"skipped": r["error"]}
    if "error" in r:
        r["error"] = r["error"][:300]
    return r


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def measure_compile(tool, workload, depth, repeats=1, warm=True):
    """Cold (and warm) decoration-to-first-result for one case: medians over ``repeats`` fresh dirs."""
    cold, warm_t, imports, note = [], [], [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="gradc-bench-cache-") as d:
            r = run_child(tool, workload, depth, d)
            if "first_result_s" not in r:
                note = r.get("error") or r.get("skipped")
                break
            cold.append(r["first_result_s"])
            note = r.get("note") or note
            imports.append(r["import_s"])
            if warm and tool == "gradc":
                r2 = run_child(tool, workload, depth, d)
                if "first_result_s" not in r2:
                    note = "warm: " + str(r2.get("error"))
                else:
                    warm_t.append(r2["first_result_s"])
    return {"tool": tool, "workload": workload, "depth": depth, "cold": _median(cold),
            "warm": _median(warm_t), "import": _median(imports), "note": note}


def run_compile_cost(tools, depths, repeats, log=print):
    """All C rows: W1 and W3 (depth 50) cold/warm, then W3 at each depth."""
    tools = [t for t in CHILD_TOOLS if t in tools]
    rows = []
    cases = [("W1", 0)] + [("W3", d) for d in depths]
    for workload, depth in cases:
        for tool in tools:
            r = measure_compile(tool, workload, depth, repeats)
            rows.append(r)
            log(f"  C {workload} depth={depth} {tool}: cold={r['cold']} warm={r['warm']} "
                f"import={r['import']}" + (f" ({r['note']})" if r["note"] else ""))
    return rows


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
