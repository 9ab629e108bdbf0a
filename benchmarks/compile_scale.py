"""Compile scale (issue 15): decoration to first result for large straight-line programs.

``python -m benchmarks.compile_scale [--families chain,pendulum,hessian] [--max-nodes N]
[--numba-max-nodes N] [--tools gradc,gradc-numba,symengine,jax] [--timeout S]``

Three families of programs, each measured per tool in fresh subprocesses:

- ``chain``: W3's chain (``benchmarks.workloads.make_chain``), value and gradient with its
  parameter array unrolled (``arrays="unroll"``), about 12 nodes per step: 500, 2,000,
  5,000, 20,000 and 100,000 nodes.
- ``pendulum``: the n-link planar pendulum derived with ``sympy.physics.mechanics``
  (KanesMethod; n = 3, 6, 10, 15). The program is the value and gradient, over the 2n
  states (q, u), of half the squared norm of the forcing vector of Kane's equations
  (masses, lengths and g numbers), fed to gradc through ``gradc.from_sympy``. SymPy
  derives the model once, in the parent, outside every timing.
- ``hessian``: ``gradc.hessian`` of the extended Rosenbrock function of n = 10, 50, 200
  variables (``benchmarks.compile_hessian``'s function, checked against SciPy's).

Tools: ``gradc`` (the public API, default numba backend: programs of >= 200 scalar
nodes take the native path of gradc/native.py), ``gradc-numba`` (the chain through
today's ordinary path, numba compiling the emitted source, up to ``--numba-max-nodes``),
``symengine`` (the expression built in SymEngine, ``diff``, then ``Lambdify`` with its
LLVM backend and ``cse=True``) and ``jax`` (``jit`` of ``value_and_grad`` or
``hessian``), each where installed.

Each cell: "cold", decoration (or expression building) to first result with an empty
``GRADC_CACHE_DIR`` (the imports of numpy, gradc, sympy, symengine and jax are not
counted; numba's import is, as it happens during gradc's first compile); "warm", a
second process on the directory the first filled (gradc only); "gradc stages" (trace,
AD, optimize, unroll, emit: ``lower()`` of a new function object, in the cold process
after its first result); the cold process's CPU time over the same span (on a loaded
machine closer to what the cold time is on an idle one: every tool but JAX compiles on one
thread); peak RSS of the cold process; per call (median of
``harness.measure``'s repeats). Writes ``benchmarks/results/compile_scale.md`` and
``compile_scale.png``. The machine is shared and has 2 cores: timings are noisy; each
cell is one run.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time

from . import harness

CHAIN_DEPTHS = {500: 42, 2000: 167, 5000: 417, 20000: 1667, 100000: 8333}
PENDULUM_LINKS = (3, 6, 10, 15)
HESSIAN_SIZES = (10, 50, 200)
FAMILIES = ("chain", "pendulum", "hessian")
TOOLS = ("gradc", "gradc-numba", "symengine", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))


# --- the programs ---------------------------------------------------------------------------

def pendulum_model(n):
    """``(expr, symbols)``: half the squared forcing of the n-link pendulum's Kane equations,
    a SymPy expression of the 2n plain symbols q0.., u0.. (numbers for masses, lengths, g)."""
    import sympy as sp
    import sympy.physics.mechanics as me

    q, u = me.dynamicsymbols(f"q:{n}"), me.dynamicsymbols(f"u:{n}")
    t = me.dynamicsymbols._t
    frame, origin = me.ReferenceFrame("N"), me.Point("O")
    origin.set_vel(frame, 0)
    particles, loads, kinematics, previous = [], [], [], origin
    for i in range(n):
        link = frame.orientnew(f"B{i}", "Axis", [q[i], frame.z])
        link.set_ang_vel(frame, u[i] * frame.z)
        point = previous.locatenew(f"P{i}", (1.0 + 0.1 * i) * link.x)
        point.v2pt_theory(previous, frame, link)
        mass = 1.0 + 0.05 * i
        particles.append(me.Particle(f"Pa{i}", point, mass))
        loads.append((point, mass * 9.81 * frame.x))
        kinematics.append(q[i].diff(t) - u[i])
        previous = point
    kane = me.KanesMethod(frame, q_ind=q, u_ind=u, kd_eqs=kinematics)
    kane.kanes_equations(particles, loads)
    plain = sp.symbols(f"q:{n}") + sp.symbols(f"u:{n}")
    forcing = kane.forcing.xreplace(dict(zip(list(q) + list(u), plain)))
    expr = sum(f ** 2 for f in forcing) / 2
    return expr, list(plain)


def pendulum_point(n):
    import numpy as np

    return np.concatenate([np.linspace(0.1, 0.9, n), np.linspace(-0.5, 0.5, n)])


def _rosen(np):
    from .compile_hessian import _function

    return _function("rosen", np)


# --- one measurement, in a fresh process ---------------------------------------------------

def child(family, tool, size, model_file):
    """Measure one cell in this (fresh) process; print one JSON line."""
    import warnings

    warnings.simplefilter("ignore")  # the "use gradc.scan" hint: these programs are unrolled
    setup = _SETUP[family]
    run, lower = setup(tool, int(size), model_file)  # untimed: imports, models unpickled
    t0, c0 = time.perf_counter(), time.process_time()
    call, result_nodes = run()
    first, cpu = time.perf_counter() - t0, time.process_time() - c0
    if callable(result_nodes):
        result_nodes = result_nodes()
    out = {"first_result_s": first, "first_result_cpu_s": cpu, "nodes": result_nodes}
    per_call = harness.measure(call, (), repeat=7, min_time=0.01, warmup=2)
    out["per_call_us"] = per_call.median * 1e6
    if lower is not None:
        t1 = time.perf_counter()
        lower()
        out["gradc_stages_s"] = time.perf_counter() - t1
    out["rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def _peak_rss_mb():
    """This process's peak resident memory: VmHWM (getrusage's ru_maxrss would report the
    parent's peak too where it was larger: Linux keeps it across fork and exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gradc_first_call(make, args):
    """A ``run`` for the child: make the gradc function (``make()``: decoration, or
    from_sympy's conversion), call it once; the call and the program's node count."""
    def run():
        J = make()
        J(*args)
        spec = next(iter(J._specs.values()))
        # counted after the timing: a warm start builds the graph only when asked (the index)
        return (lambda: J(*args)), (lambda: len(spec.graph.nodes))
    return run


def _setup_chain(tool, nodes, _model_file):
    import numpy as np

    from . import workloads as wl

    depth = CHAIN_DEPTHS[nodes]
    p = wl.chain_params(depth)
    if tool == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        def run():
            f = jax.jit(jax.value_and_grad(wl.make_chain(depth)(jnp)))
            jax.block_until_ready(f(p))
            return (lambda: jax.block_until_ready(f(p))), None
        return run, None
    if tool == "symengine":
        import symengine as se

        def run():
            ps = se.symbols(f"p:{2 * depth}")
            h = wl.W3_X0
            for i in range(depth):
                h = se.tanh(ps[2 * i] * h + ps[2 * i + 1])
            loss = 0.5 * (h - wl.W3_Y) ** 2
            f = se.Lambdify(ps, [loss] + [se.diff(loss, s) for s in ps], backend="llvm",
                            cse=True)
            f(p)
            return (lambda: f(p)), None
        return run, None
    import gradc

    make = wl.make_chain(depth)(np)
    if tool == "gradc-numba":
        from gradc import jit

        def run():
            J = gradc.value_and_grad(make, arrays="unroll", backend="python")
            graph, source, func_name, entry = J.lower((p.shape,))
            f, _ = jit.load_numba(source, func_name, entry, (p.shape,))
            f(p)
            return (lambda: f(p)), len(graph.nodes)
    else:
        run = _gradc_first_call(lambda: gradc.value_and_grad(make, arrays="unroll"), (p,))
    lower = lambda: gradc.value_and_grad(make, arrays="unroll").lower((p.shape,))  # noqa: E731
    return run, lower


def _setup_pendulum(tool, n, model_file):
    with open(model_file, "rb") as fh:
        expr, symbols = pickle.load(fh)
    x = pendulum_point(n)
    if tool == "symengine":
        import symengine as se

        def run():
            e, syms = se.sympify(expr), [se.sympify(s) for s in symbols]
            f = se.Lambdify(syms, [e] + [se.diff(e, s) for s in syms], backend="llvm", cse=True)
            f(x)
            return (lambda: f(x)), None
        return run, None
    if tool != "gradc":
        raise SystemExit(f"No module named {tool} for the pendulum")  # reported as skipped
    import gradc

    args = tuple(float(v) for v in x)
    run = _gradc_first_call(lambda: gradc.from_sympy(expr, symbols), args)
    return run, lambda: gradc.from_sympy(expr, symbols, backend="python").lower((None,) * len(args))


def _setup_hessian(tool, n, _model_file):
    import numpy as np

    from .compile_hessian import _expected

    x = np.linspace(-1.2, 1.3, n)
    want = _expected("rosen", x)
    if tool == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        def run():
            H = jax.jit(jax.hessian(_rosen(jnp)))
            assert np.allclose(np.asarray(H(x)), want, rtol=1e-10, atol=1e-10)
            return (lambda: H(x).block_until_ready()), None
        return run, None
    if tool == "symengine":
        import symengine as se

        def run():
            xs = se.symbols(f"x:{n}")
            f = sum(100.0 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2 for i in range(n - 1))
            grad = [se.diff(f, v) for v in xs]
            H = se.Lambdify(xs, [[se.diff(g, v) for v in xs] for g in grad], backend="llvm",
                            cse=True)
            assert np.allclose(H(x), want, rtol=1e-10, atol=1e-10)
            return (lambda: H(x)), None
        return run, None
    if tool != "gradc":
        raise SystemExit(f"No module named {tool} for the hessian")
    import gradc

    def run():
        H = gradc.hessian(_rosen(np))
        assert np.allclose(H(x), want, rtol=1e-10, atol=1e-10)
        spec = next(iter(H._specs.values()))
        return (lambda: H(x)), len(spec.graph.nodes)
    return run, lambda: gradc.hessian(_rosen(np), backend="python").lower(((n,),))


_SETUP = {"chain": _setup_chain, "pendulum": _setup_pendulum, "hessian": _setup_hessian}


# --- the parent: cells, table, plot -------------------------------------------------------------

def run_child(family, tool, size, model_file, cache_dir, timeout):
    r = harness.run_child("benchmarks.compile_scale",
                          ("--child", family, tool, size, model_file or "-"), cache_dir, timeout)
    stderr = r.pop("stderr", None)
    if stderr is not None:
        key = "skipped" if "No module named" in r["error"] else "error"
        r = {key: r["error"][:200]}
    return r


def measure(family, tool, size, model_file, timeout):
    with tempfile.TemporaryDirectory(prefix="gradc-scale-") as d:
        cold = run_child(family, tool, size, model_file, d, timeout)
        warm = {}
        if tool.startswith("gradc") and "first_result_s" in cold:
            warm = run_child(family, tool, size, model_file, d, timeout)
    return {"family": family, "tool": tool, "size": size, "cold": cold, "warm": warm}


def _cell(r, key, fmt):
    """One value of a cell; a cell that failed says why in its time column only."""
    if r and r.get(key) is not None:
        return fmt.format(r[key])
    if key != "first_result_s" or not r:
        return "–"
    return (r.get("error") or r.get("skipped") or "–").replace("|", "/")


_SIZE_LABEL = {"chain": "~{} nodes", "pendulum": "n = {}", "hessian": "n = {}"}


def write_results(rows, out_md, note):
    lines = ["# Compile scale (benchmarks/compile_scale.py)", "", note, "",
             "| program | size | tool | gradient nodes | cold s | cold CPU s | gradc stages s | "
             "warm s | peak RSS MB | per call µs |", "|---|---|---|---|---|---|---|---|---|---|"]
    nodes_of = {(r["family"], r["size"]): r["cold"].get("nodes") for r in rows
                if r["tool"] == "gradc" and r["cold"].get("nodes")}
    for r in rows:
        c, w = r["cold"], r["warm"]
        nodes = c.get("nodes") or nodes_of.get((r["family"], r["size"]))
        lines.append(
            f"| {r['family']} | {_SIZE_LABEL[r['family']].format(r['size'])} | {r['tool']} | "
            f"{nodes or '–'} | {_cell(c, 'first_result_s', '{:.2f}')} | "
            f"{_cell(c, 'first_result_cpu_s', '{:.2f}')} | "
            f"{_cell(c, 'gradc_stages_s', '{:.2f}')} | {_cell(w, 'first_result_s', '{:.2f}')} | "
            f"{_cell(c, 'rss_mb', '{:.0f}')} | {_cell(c, 'per_call_us', '{:.2f}')} |")
    with open(out_md, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plot(rows, out_png, key="first_result_s"):
    """Cold compile time (``key``: wall, or ``first_result_cpu_s``: the process's CPU time)
    against gradc's node count of the same program, per tool; one marker per family."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    nodes_of = {(r["family"], r["size"]): r["cold"].get("nodes") for r in rows
                if r["tool"] == "gradc" and r["cold"].get("nodes")}
    markers = {"chain": "o-", "pendulum": "s--", "hessian": "^:"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool in TOOLS:
        for family in FAMILIES:
            pts = sorted((nodes_of[(r["family"], r["size"])], r["cold"][key])
                         for r in rows if r["tool"] == tool and r["family"] == family
                         and key in r["cold"] and nodes_of.get((r["family"], r["size"])))
            if pts:
                ax.loglog(*zip(*pts), markers[family], label=f"{tool}, {family}",
                          color=f"C{TOOLS.index(tool)}")
    ax.set_xlabel("gradient nodes (gradc's optimized program)")
    ax.set_ylabel("cold, decoration to first result ("
                  + ("CPU s" if key == "first_result_cpu_s" else "s") + ")")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return True


def _installed(tool):
    module = {"gradc": "gradc", "gradc-numba": "numba", "symengine": "symengine", "jax": "jax"}
    try:
        __import__(module[tool])
    except ImportError:
        return False
    return True


def cells(families, tools, max_nodes, numba_max_nodes, jax_max_nodes):
    """(family, tool, size) to measure, in order."""
    out = []
    for family in families:
        sizes = {"chain": [n for n in CHAIN_DEPTHS if n <= max_nodes],
                 "pendulum": PENDULUM_LINKS, "hessian": HESSIAN_SIZES}[family]
        for size in sizes:
            for tool in tools:
                if tool == "gradc-numba" and (family != "chain" or size > numba_max_nodes):
                    continue
                if tool == "jax" and (family == "pendulum" or
                                      family == "chain" and size > jax_max_nodes):
                    continue  # the pendulum is SymPy's: JAX has no form of it here
                out.append((family, tool, size))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--max-nodes", type=int, default=100000)
    ap.add_argument("--numba-max-nodes", type=int, default=5000,
                    help="the ordinary numba path above this takes minutes (55 s at 20,000 "
                         "in issue 15)")
    ap.add_argument("--jax-max-nodes", type=int, default=20000,
                    help="JAX took 47.6 s and 4.9 GB at 20,000 nodes in issue 15")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--update", action="store_true",
                    help="measure only the cells asked for and replace those of the last run "
                         "(results/compile_scale.json) with them")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plot (CPU time) from results/compile_scale.json")
    ap.add_argument("--note", default="One run per cell on the shared 2-core machine, other "
                    "jobs running: treat differences under ~30% as noise; the CPU column is "
                    "the cold process's CPU time (user + system, all its threads).")
    args = ap.parse_args(argv)
    results = os.path.join(HERE, "results")
    if args.replot:
        with open(os.path.join(results, "compile_scale.json")) as fh:
            plot(json.load(fh), os.path.join(results, "compile_scale.png"), "first_result_cpu_s")
        return
    tools = [t for t in args.tools.split(",") if _installed(t)]
    families = args.families.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradc-scale-models-") as models:
        for family, tool, size in cells(families, tools, args.max_nodes, args.numba_max_nodes,
                                          args.jax_max_nodes):
            model_file = None
            if family == "pendulum":
                model_file = os.path.join(models, f"pendulum{size}.pickle")
                if not os.path.exists(model_file):
                    with open(model_file, "wb") as fh:
                        pickle.dump(pendulum_model(size), fh)
            r = measure(family, tool, size, model_file, args.timeout)
            rows.append(r)
            print(family, tool, size, json.dumps(r["cold"]), json.dumps(r["warm"]), flush=True)
    os.makedirs(results, exist_ok=True)
    if args.update:
        rows = _merged(os.path.join(results, "compile_scale.json"), rows)
    write_results(rows, os.path.join(results, "compile_scale.md"), args.note)
    with open(os.path.join(results, "compile_scale.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    plot(rows, os.path.join(results, "compile_scale.png"), "first_result_cpu_s")


def _merged(path, new_rows):
    """The rows of the last run at ``path``, those measured again replaced (in place)."""
    with open(path) as fh:
        old = json.load(fh)
    fresh = {(r["family"], r["tool"], r["size"]): r for r in new_rows}
    out = [fresh.pop((r["family"], r["tool"], r["size"]), r) for r in old]
    return out + list(fresh.values())


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:5], None if sys.argv[5] == "-" else sys.argv[5])
    else:
        main()
