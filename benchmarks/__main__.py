"""``python -m benchmarks``: run the gradc benchmarks and write benchmarks/results/.

Workloads: W1, W2, W3 (value+gradient latency), W4 (batched value+gradient at 1e6 points), W5 (one
MLP training step, float64 and float32), C (compile cost in fresh processes), R (cheap-gradient
ratio, W2, W3, W5), A (array path choice: unrolled numba against NumPy-level code, per size).
"""
from __future__ import annotations

import os

# Before numba / JAX / OpenMP runtimes are imported: a threading layer that does not spin-wait on
# small machines (see shared/design.md), JAX on CPU in float64.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from . import report  # noqa: E402
from .array_choice import run_array_choice  # noqa: E402
from .compile_cost import run_compile_cost  # noqa: E402
from .harness import load_average, machine_description, pin_threads, w4_note  # noqa: E402
from .suite import run_ratio, run_workload  # noqa: E402
from .tools import BASELINE, TOOLS  # noqa: E402
from .workloads import build_workloads  # noqa: E402

ALL = ["W1", "W2", "W3", "W4", "W5", "C", "R", "A"]
STUBS = {}
R_TOOLS = ["gradc", "gradc-python", "numba-hand", "numpy-hand", "jax", "torch"]
TITLES = {"C": "compile cost, decoration to first result (fresh subprocesses, GRADC_CACHE_DIR)",
          "R": "cheap-gradient ratio time(value+gradient) / time(value)",
          "A": "array path choice: arrays=\"unroll\" (numba) against arrays=\"numpy\", per size "
               "(fresh subprocesses, empty GRADC_CACHE_DIR)"}


def select_tools(spec):
    """Names from --tools: exact tool names, or a family ("gradc" selects gradc and gradc-python)."""
    if not spec:
        return list(TOOLS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if not any(t == s or t.split("-")[0] == s for t in TOOLS)]
    if unknown:
        sys.exit(f"unknown tool(s) {unknown}; known: {', '.join(TOOLS)}")
    picked = [t for t in TOOLS if any(t == s or t.split("-")[0] == s for s in wanted)]
    if BASELINE not in picked:                     # every ratio is to this baseline
        picked.insert(0, BASELINE)
    return picked


def custom_tools(w, tools):
    """A workload's own tools (W4, W5) whose family (the part before the first "-") was selected;
    the workload's baseline always runs."""
    families = {t.split("-")[0] for t in tools}
    return [t for t in w.custom if t.split("-")[0] in families or t == w.baseline]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and depths (a few minutes)")
    ap.add_argument("--workloads", default=",".join(ALL), help=f"comma list from {','.join(ALL)}")
    ap.add_argument("--tools", default="", help=f"comma list from {','.join(TOOLS)} (default all)")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    ap.add_argument("--depths", default="", help="W3 depths for C (default 10,20,50,100,200; "
                                                 "quick 10,50,200)")
    args = ap.parse_args(argv)

    chosen = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in chosen if w not in ALL]
    if bad:
        sys.exit(f"unknown workload(s) {bad}; known: {', '.join(ALL)}")
    tools = select_tools(args.tools)
    timing = dict(repeat=7, min_time=0.01) if args.quick else dict(repeat=15, min_time=0.05)
    depths = ([int(d) for d in args.depths.split(",")] if args.depths
              else [10, 50, 200] if args.quick else [10, 20, 50, 100, 200])
    os.makedirs(args.out, exist_ok=True)
    notes = [pin_threads(1), "PyTorch intra-op threads set to 1 (torch.set_num_threads)",
             f"timing: {timing['repeat']} repeats of >= {timing['min_time'] * 1e3:.0f} ms each, "
             "after 3 warm-up calls; gc disabled during timing (timeit)",
             "JAX: jit(value_and_grad), float64, CPU, results waited for with block_until_ready"]

    load_start = load_average()
    started = time.perf_counter()
    workloads = build_workloads()
    sections, plots, stubs = {}, {}, []
    titles = dict(TITLES, **{k: w.title for k, w in workloads.items()})
    for name in chosen:
        if name in STUBS:
            print(STUBS[name])
            stubs.append(STUBS[name])
            continue
        for wname in [k for k in workloads if k == name or k.startswith(name + "/")]:
            w = workloads[wname]
            print(f"{wname}: {w.title}")
            # W4 calls take milliseconds: repeats of >= 50 ms even with --quick (fewer outliers)
            t = dict(timing, min_time=max(timing["min_time"], 0.05)) if w.points else timing
            rows = run_workload(w, custom_tools(w, tools) if w.custom else tools, t)
            sections[wname] = ("workload", rows)
            if wname == "W4":
                notes.append(w4_note())
            p = report.plot_latency(os.path.join(args.out, wname.replace("/", "-") + ".png"),
                                    f"{wname}: " + w.title, rows)
            if p:
                plots[wname] = p
    if "R" in chosen:
        r_tools = [t for t in tools if t in R_TOOLS]
        for name in ("W2", "W3", "W5/float64", "W5/float32"):
            w = workloads[name]
            if w.custom:                      # W5: value+gradient without the SGD update
                w = dataclasses.replace(w, mode="vg")
                tl = [t for t in custom_tools(w, tools) if t in R_TOOLS]
            else:
                tl = r_tools
            print(f"R/{name}: time(value+grad) / time(value)")
            sections[f"R/{name}"] = ("ratio", run_ratio(w, tl, timing))
            titles[f"R/{name}"] = TITLES["R"] + f", {name} (tools: {', '.join(R_TOOLS)})" + (
                "; loss and gradients, without the SGD update" if w.custom else "")
    if "C" in chosen:
        print(f"C: compile cost, depths {depths}")
        rows = run_compile_cost(tools, depths, repeats=1 if args.quick else 3)
        sections["C"] = ("compile", rows)
        p = report.plot_compile(os.path.join(args.out, "compile_vs_depth.png"), rows)
        if p:
            plots["C"] = p

    if "A" in chosen:
        print("A: array path choice, unroll (numba) against numpy, fresh subprocesses")
        rows = run_array_choice(args.quick)
        sections["A"] = ("choice", rows)
        p = report.plot_choice(os.path.join(args.out, "array_choice.png"), rows)
        if p:
            plots["A"] = p

    machine = machine_description(notes)
    machine["total benchmark wall time"] = f"{time.perf_counter() - started:.0f} s"
    machine["load average (1 min) at start / end"] = f"{load_start} / {load_average()}"
    if isinstance(load_start, float) and load_start > 0.5:
        machine.setdefault("notes", []).append(
            "WARNING: the machine was busy when the run started (load average above 0.5): "
            "other processes share the cores, so medians and spreads are inflated; prefer `min`.")
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    report.write_markdown(os.path.join(args.out, "RESULTS.md"), machine, sections, stubs, titles,
                          command.strip(), plots)
    report.write_json(os.path.join(args.out, "results.json"), machine, sections)
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
