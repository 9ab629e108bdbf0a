"""Compile scale: decoration to first result for large straight-line programs, per path.

``python -m benchmarks.compile_scale [--max-nodes N] [--numba-max-nodes N] [--jax-max-nodes N]``

The program is W3's chain (``benchmarks.workloads.make_chain``), value and gradient with
its parameter array unrolled (``arrays="unroll"``): about 12 nodes per step, so the
depths below give 500 to 100,000 nodes. Each measurement runs in a fresh subprocess:
"cold" with an empty ``GRADC_CACHE_DIR``, "warm" a second process on the directory the
first filled. Timed from decoration to first result (trace, AD, optimize, emit,
compile, one call); imports are not counted. Also peak RSS of the process and the
per-call time (best of 5 repeats). Paths:

- ``native``: :func:`gradc.native.compile_graph` (route 2 here: the body as object code
  compiled by gradc's own LLVM target machine, called from a small numba wrapper);
- ``numba``: today's path, :func:`gradc.jit.load_numba` of the emitted source;
- ``jax``: ``jax.jit(jax.value_and_grad(chain))`` on the same chain, where installed.

Writes ``benchmarks/results/compile_scale.md`` and ``compile_scale.png``.
The machine is shared and has 2 cores: timings are noisy; each cell is one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from . import harness

DEPTHS = {500: 42, 2000: 167, 5000: 417, 20000: 1667, 100000: 8333}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(path, depth):
    """Measure in this fresh process; print one JSON line."""
    import resource
    import timeit
    import warnings

    import numpy as np

    from . import workloads as wl

    warnings.simplefilter("ignore")  # the "use gradc.scan" hint: this chain is unrolled on purpose
    p = wl.chain_params(depth)
    if path == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        t0 = time.perf_counter()
        f = jax.jit(jax.value_and_grad(wl.make_chain(depth)(jnp)))
        jax.block_until_ready(f(p))
        t1 = time.perf_counter()
        call, nodes, hits = (lambda: jax.block_until_ready(f(p))), None, None
    else:
        import gradc
        from gradc import jit, native

        shapes = (p.shape,)
        t0 = time.perf_counter()
        J = gradc.value_and_grad(wl.make_chain(depth)(np), arrays="unroll", backend="python")
        graph, source, func_name, entry = J.lower(shapes)
        t_lower = time.perf_counter() - t0
        if path == "native":
            f, _ = native.compile_graph(graph, func_name, source, shapes)
        else:
            f, _ = jit.load_numba(source, func_name, entry, shapes)
        f(p)
        t1 = time.perf_counter()
        call, nodes, hits = (lambda: f(p)), len(graph.nodes), sum(f.stats.cache_hits.values())
    number = max(1, int(2e5 // max(depth, 1)))
    per_call = min(timeit.repeat(call, number=number, repeat=5)) / number
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"first_result_s": t1 - t0, "per_call_us": per_call * 1e6, "rss_mb": rss,
           "nodes": nodes, "cache_hits": hits}
    if path != "jax":
        out["gradc_stages_s"] = t_lower
    print(json.dumps(out))


def run_child(path, depth, cache_dir, timeout):
    r = harness.run_child("benchmarks.compile_scale", ("--child", path, depth), cache_dir, timeout)
    if r.pop("stderr", None) is not None:
        r["error"] = r["error"][:200]
    return r


def measure(path, depth, timeout):
    with tempfile.TemporaryDirectory(prefix="gradc-scale-") as d:
        cold = run_child(path, depth, d, timeout)
        warm = run_child(path, depth, d, timeout) if path != "jax" and "error" not in cold else {}
    return {"path": path, "depth": depth, "cold": cold, "warm": warm}


def _cell(r, key, fmt):
    return fmt.format(r[key]) if r and r.get(key) is not None else ("–" if not r else
                                                                     r.get("error", "–"))


def write_results(rows, out_md):
    lines = ["# Compile scale (W3 chain, value and gradient, parameters unrolled)", "",
             "Decoration to first result in a fresh process (imports excluded); warm: a second "
             "process on the same cache directory. One run per cell on a shared 2-core machine "
             "(other jobs running): treat differences under ~30% as noise.", "",
             "| nodes | path | cold s | gradc stages s | warm s | warm cache hit | peak RSS MB | "
             "per call µs |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, w = r["cold"], r["warm"]
        nodes = c.get("nodes") or f"~{12 * r['depth']}"
        lines.append(f"| {nodes} | {r['path']} | {_cell(c, 'first_result_s', '{:.2f}')} | "
                     f"{_cell(c, 'gradc_stages_s', '{:.2f}')} | {_cell(w, 'first_result_s', '{:.2f}')} | "
                     f"{_cell(w, 'cache_hits', '{}')} | {_cell(c, 'rss_mb', '{:.0f}')} | "
                     f"{_cell(c, 'per_call_us', '{:.2f}')} |")
    with open(out_md, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plot(rows, out_png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for path in sorted({r["path"] for r in rows}):
        pts = [(12 * r["depth"], r["cold"]["first_result_s"]) for r in rows
               if r["path"] == path and "first_result_s" in r["cold"]]
        if pts:
            ax.loglog(*zip(*pts), "o-", label=path)
    ax.set_xlabel("nodes (W3 chain, value and gradient)")
    ax.set_ylabel("cold compile, decoration to first result (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-nodes", type=int, default=100000)
    ap.add_argument("--numba-max-nodes", type=int, default=5000,
                    help="today's path above this takes minutes (55 s at 20,000 in issue 15)")
    ap.add_argument("--jax-max-nodes", type=int, default=5000)
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args(argv)
    try:
        import jax  # noqa: F401
        have_jax = True
    except ImportError:
        have_jax = False
    rows = []
    for nodes, depth in DEPTHS.items():
        if nodes > args.max_nodes:
            continue
        paths = ["native"] + (["numba"] if nodes <= args.numba_max_nodes else []) + (
            ["jax"] if have_jax and nodes <= args.jax_max_nodes else [])
        for path in paths:
            r = measure(path, depth, args.timeout)
            rows.append(r)
            print(path, nodes, json.dumps(r["cold"]), json.dumps(r["warm"]), flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    write_results(rows, os.path.join(HERE, "results", "compile_scale.md"))
    plot(rows, os.path.join(HERE, "results", "compile_scale.png"))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
