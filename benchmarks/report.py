"""Markdown tables (``RESULTS.md``), raw numbers (``results.json``) and PNG plots (matplotlib).

Columns: median and min per-call time, spread (interquartile range / median), ratio of the median to
the hand-written numba adjoint, and "first call": building the tool's callable plus its first call in
the benchmark process (the gradc disk cache may be warm there; workload C measures cold and warm).
"""
from __future__ import annotations

import dataclasses
import json
import os

from .harness import fmt_time


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _status(r):
    return r["status"].replace("|", "\\|").replace("\n", " ")


def workload_table(rows):
    body = []
    for r in rows:
        s = r.get("stats")
        body.append([r["tool"], fmt_time(s.median) if s else "-", fmt_time(s.min) if s else "-",
                     f"{s.spread * 100:.1f} %" if s else "-",
                     f"{r['ratio']:.2f}×" if "ratio" in r else "-",
                     fmt_time(r.get("first_call")), _status(r)])
    return _table(["tool", "median", "min", "spread", "÷ numba-hand", "first call", "status"], body)


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
              "*÷ numba-hand* = median / median of the hand-written numba adjoint; *first call* = "
              "building the tool's callable + first call, in this process.", ""]
    for name, (kind, rows) in sections.items():
        lines += [f"## {name}: {titles.get(name, '')}", ""]
        if kind == "workload":
            lines.append(workload_table(rows))
        elif kind == "ratio":
            lines += ["Both times are per call from Python and include each tool's call overhead.", "",
                      ratio_table(rows)]
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
              "tab:gray" if r["tool"].endswith("-hand") else "tab:blue" for r in rows]
    ax.barh([r["tool"] for r in rows], med, color=colors)
    for y, m in enumerate(med):
        ax.text(m, y, f" {m:.3g}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("median time per value+gradient call (µs, log scale)")
    ax.set_title(name)
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
