"""Markdown tables (``RESULTS.md``), raw numbers (``results.json``) and PNG plots (matplotlib).

Columns: median and min per-call time, spread (interquartile range / median), ratio of the median to
the workload's baseline (the hand-written numba adjoint; for W5 the hand-written NumPy backward),
points per second (W4), the largest relative deviation from the reference, and "first call": building the tool's callable plus its first call in
the benchmark process (the gradc disk cache may be warm there; workload C measures cold and warm).
"""
from __future__ import annotations

import dataclasses
import json
import os
import textwrap

from .harness import fmt_time


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _status(r):
    return r["status"].replace("|", "\\|").replace("\n", " ")


def workload_table(rows):
    base = next((r["ratio_to"] for r in rows if "ratio_to" in r), "numba-hand")
    rate = any("points_per_s" in r for r in rows)
    body = []
    for r in rows:
        s = r.get("stats")
        line = [r["tool"], fmt_time(s.median) if s else "-", fmt_time(s.min) if s else "-",
                f"{s.spread * 100:.1f} %" if s else "-",
                f"{r['ratio']:.2f}×" if "ratio" in r else "-"]
        if rate:
            line.append(f"{r['points_per_s'] / 1e6:.1f} M" if "points_per_s" in r else "-")
        line += [fmt_time(r.get("first_call")),
                 f"{r['max_rel_dev']:.1e}" if r.get("max_rel_dev") is not None else "-", _status(r)]
        body.append(line)
    header = ["tool", "median", "min", "spread", f"÷ {base}"] + (["points/s"] if rate else [])
    return _table(header + ["first call", "max rel. dev.", "status"], body)


def choice_table(rows):
    """Workload A: both array paths per case and size."""
    body = []
    for r in rows:
        u, n = r["unroll"], r["numpy"]
        size = f"n = {r['size']}" if r["case"] == "rosen" else f"{r['size']} (d-h-k-B)"
        err = "; ".join(f"{m}: {r[m]['error']}" for m in ("unroll", "numpy") if r[m]["error"])
        body.append([("Rosenbrock " if r["case"] == "rosen" else "MLP-like ") + size,
                     r["elements"], r["traced_nodes"] if r["traced_nodes"] is not None else "-",
                     r["unrolled_nodes"], r["auto"],
                     fmt_time(u["per_call"]), fmt_time(n["per_call"]),
                     f"{r['speedup']:.2f}×" if r.get("speedup") else "-",
                     fmt_time(u["cold"]), fmt_time(n["cold"]), fmt_time(u["warm"]), fmt_time(n["warm"]),
                     (f"{r['break_even_calls']:.3g}" if r.get("break_even_calls") else
                      "never" if r.get("speedup") else "-"),
                     err.replace("|", "\\|")])
    return _table(["case", "elements", "traced nodes", "nodes (unrolled, with gradient)",
                   "auto picks", "per call: unroll", "per call: numpy", "numpy ÷ unroll",
                   "cold: unroll", "cold: numpy", "warm: unroll", "warm: numpy",
                   "break-even calls (cold)", "errors"], body)


def ratio_table(rows):
    body = []
    for r in rows:
        ok = r["status"] == "ok"
        body.append([r["tool"], fmt_time(r["value"].median) if ok else "-",
                     fmt_time(r["value_grad"].median) if ok else "-",
                     f"{r['ratio']:.2f}" if ok else "-", _status(r)])
    return _table(["tool", "value (median)", "value+grad (median)", "ratio", "status"], body)


def compile_table(rows):
    body = [[r["workload"] + (f" depth {r['depth']}" if r["workload"] == "W3" else ""), r["tool"],
             fmt_time(r["cold"]), fmt_time(r["warm"]), fmt_time(r["import"]), r["note"] or ""]
            for r in rows]
    return _table(["case", "tool", "cold (decoration → first result)", "warm (2nd process)",
                   "imports", "note"], body)


def write_markdown(path, machine, sections, stubs, titles, command, plots):
    lines = ["# gradc benchmark results", "", f"Command: `{command}`", "", "## Machine", ""]
    for k, v in machine.items():
        if k == "notes":
            lines += [f"- {n}" for n in v]
        else:
            lines.append(f"- **{k}**: {v}")
    lines += ["", "Times are per call. *spread* = interquartile range / median over the repeats; "
              "*÷ baseline* = median / median of the workload's baseline (the hand-written numba "
              "adjoint; for W5 the hand-written NumPy backward); *first call* = building the tool's "
              "callable + first call, in this process; *max rel. dev.* = largest |got − ref| / "
              "max(|ref|, 1) over value and gradient against the workload's reference.", ""]
    for name, (kind, rows) in sections.items():
        lines += [f"## {name}: {titles.get(name, '')}", ""]
        if kind == "workload":
            lines.append(workload_table(rows))
        elif kind == "ratio":
            lines += ["Both times are per call from Python and include each tool's call overhead.", "",
                      ratio_table(rows)]
        elif kind == "choice":
            lines += ["*per call*: median in a warm process; *cold*: decoration → first result with an "
                      "empty cache (trace, differentiate, emit, numba compile, first call); *warm*: the "
                      "same in a second process on the filled cache; *numpy ÷ unroll* > 1 means the "
                      "unrolled numba code is faster per call; *break-even calls*: how many calls the "
                      "per-call saving of unrolling needs to pay back its extra cold compile time. "
                      "*traced nodes* is what `UNROLL_MAX_NODES` limits.", "", choice_table(rows)]
        else:
            lines.append(compile_table(rows))
        if name in plots:
            lines += ["", f"![{name}]({os.path.basename(plots[name])})"]
        lines.append("")
    if stubs:
        lines += ["## Not measured yet", ""] + [f"- {s}" for s in stubs] + [""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_json(path, machine, sections):
    def conv(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        return str(o)
    with open(path, "w") as fh:
        json.dump({"machine": machine, "sections": sections}, fh, indent=1, default=conv)


def plot_latency(path, name, rows):
    """Horizontal bars of median latency (log scale) per tool; None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get("stats")]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["stats"].median)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    med = [r["stats"].median * 1e6 for r in rows]
    colors = ["tab:red" if r["tool"].startswith("gradc") else
              "tab:gray" if r["tool"].split(" ")[0].endswith("-hand") else "tab:blue" for r in rows]
    ax.barh([r["tool"] for r in rows], med, color=colors)
    for y, m in enumerate(med):
        ax.text(m, y, f" {m:.3g}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("median time per call (µs, log scale)")
    ax.set_title(textwrap.fill(name, 60), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replot(out_dir):
    """Redraw the latency bars of a finished run from its ``results.json``."""
    from .harness import Stats
    with open(os.path.join(out_dir, "results.json")) as fh:
        data = json.load(fh)
    for name, (kind, rows) in data["sections"].items():
        if kind != "workload":
            continue
        for r in rows:
            if isinstance(r.get("stats"), dict):
                r["stats"] = Stats(**r["stats"])
        title = next((line[3 + len(name) + 2:] for line in open(os.path.join(out_dir, "RESULTS.md"))
                      if line.startswith(f"## {name}: ")), "").strip()
        plot_latency(os.path.join(out_dir, name.replace("/", "-") + ".png"), f"{name}: {title}", rows)


def plot_choice(path, rows):
    """Workload A: per-call time and cold compile time against Rosenbrock n, for both paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r["case"] == "rosen"]
    if not rows:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("unroll", "-o"), ("numpy", "--s")):
        pts = [(r["size"], r[mode]["per_call"]) for r in rows if r[mode]["per_call"]]
        if pts:
            a1.plot([p[0] for p in pts], [p[1] * 1e6 for p in pts], style, label=f"arrays={mode}")
        pts = [(r["size"], r[mode]["cold"]) for r in rows if r[mode]["cold"]]
        if pts:
            a2.plot(*zip(*pts), style, label=f"arrays={mode}")
    for ax, label in ((a1, "per call (µs)"), (a2, "cold: decoration → first result (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("extended Rosenbrock n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("A: unrolled numba code against NumPy-level code")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compile(path, rows):
    """Cold/warm decoration-to-first-result against W3 depth, one line per tool."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r["workload"] == "W3"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for tool in dict.fromkeys(r["tool"] for r in rows):
        for key, style in (("cold", "-o"), ("warm", "--s")):
            pts = [(r["depth"], r[key]) for r in rows if r["tool"] == tool and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{tool} ({key})")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("W3 chain depth (layers)")
    ax.set_ylabel("decoration → first result (s)")
    ax.set_title("C: compile cost against graph size (fresh processes)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
