"""Runs the in-process workloads: check every tool against the reference, then time it.

``run_workload`` gives one row per tool for W1-W5 (ratios to the workload's baseline: the
hand-written numba adjoint, or for W5 the hand-written NumPy backward); ``run_ratio`` gives workload R, the
cheap-gradient ratio time(value+gradient) / time(value) for each tool that has a value-only form.
A row's ``status`` is "ok", "MISMATCH ..." (not timed), "error: ..." or "skipped: ...".
"""
from __future__ import annotations

import time
import traceback

import numpy as np

from .harness import measure
from .tools import Skip, build, tool_label



def _first_call(tool, w, value_only):
    """Build the tool's callable and call it once; returns (call, unpack, out, seconds)."""
    t0 = time.perf_counter()
    call, unpack = build(tool, w, value_only)
    out = call(*w.args)
    return call, unpack, out, time.perf_counter() - t0


def _error_row(tool, e):
    if isinstance(e, Skip):
        return {"tool": tool, "status": f"skipped: {e}"}
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    return {"tool": tool, "status": f"error: {last[:300]}"}


_REFERENCES = {}


def _reference(w):
    """The workload's reference, computed once per workload (W4's is 1e6 points)."""
    key = id(w)
    if key not in _REFERENCES:
        _REFERENCES[key] = (w, w.reference())
    return _REFERENCES[key][1]


def check(w, value, grad):
    """None if (value, grad) matches the workload's reference, else a description of the mismatch.

    ``value`` is a float, or (W4) an array of values per point; tolerances are the workload's
    (``rtol``/``atol``: 1e-8/1e-10 for float64, looser for W5 in float32)."""
    ref_v, ref_g = _reference(w)
    ref_g = np.asarray(ref_g, dtype=float)
    rtol, atol = w.rtol, w.atol
    if grad.shape != ref_g.shape:
        return f"MISMATCH: gradient shape {grad.shape}, expected {ref_g.shape}"
    if np.shape(value) != np.shape(ref_v):
        return f"MISMATCH: value shape {np.shape(value)}, expected {np.shape(ref_v)}"
    if not np.allclose(value, ref_v, rtol=rtol, atol=atol):
        if np.ndim(value):
            k = int(np.argmax(np.abs(value - ref_v)))
            return f"MISMATCH: value[{k}] = {value[k]!r}, expected {ref_v[k]!r}"
        return f"MISMATCH: value {value!r}, expected {ref_v!r}"
    if not np.allclose(grad, ref_g, rtol=rtol, atol=atol):
        k = int(np.argmax(np.abs(grad - ref_g)))
        return f"MISMATCH: gradient[{k}] = {grad[k]!r}, expected {ref_g[k]!r}"
    return None


def _agreement(w, value, grad):
    """Largest relative deviation from the reference (over value and gradient), for the report."""
    ref_v, ref_g = _reference(w)
    a = np.concatenate([np.ravel(value), np.ravel(grad)])
    b = np.concatenate([np.ravel(ref_v), np.ravel(np.asarray(ref_g, dtype=float))])
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))


def run_workload(w, tools, timing, log=print):
    """Rows for workload ``w``: check each tool, then time it; ratio to the numba-hand baseline."""
    rows = []
    for tool in tools:
        t0 = time.perf_counter()
        try:
            call, unpack, out, first = _first_call(tool, w, value_only=False)
            value, grad = unpack(out)
            bad = check(w, value, grad)
        except Exception as e:                       # a tool's failure is a row, never a crash
            rows.append(_error_row(tool, e))
            log(f"  {w.name} {tool}: {rows[-1]['status']}")
            continue
        row = {"tool": tool_label(tool, w), "status": bad or "ok", "first_call": first,
               "max_rel_dev": _agreement(w, value, grad), "baseline": tool == w.baseline}
        if not bad:
            row["stats"] = measure(call, w.args, **timing)
            # checked again after the timed calls: what is timed is the steady state (gradc
            # switches a function to its C entry after 64 calls), and it must be as right.
            # Not a training step (W5): its calls update the parameters it holds.
            later = None if w.kind == "mlp" else check(w, *unpack(call(*w.args)))
            if later:
                row["status"] = f"{later} (after the timed calls)"
                del row["stats"]
        if "stats" in row:
            if w.points:
                row["points_per_s"] = w.points / row["stats"].median
        rows.append(row)
        log(f"  {w.name} {row['tool']}: {row['status']}"
            + (f", median {row['stats'].median * 1e6:.3g} µs" if "stats" in row else "")
            + f" (first call {first:.2g} s, total {time.perf_counter() - t0:.2g} s)")
    base = next((r for r in rows if r.get("baseline") and "stats" in r), None)
    for r in rows:
        r["ratio_to"] = tool_label(w.baseline, w)
        if base and "stats" in r:
            r["ratio"] = r["stats"].median / base["stats"].median
    return rows


def run_ratio(w, tools, timing, log=print):
    """Workload R rows for ``w``: median value-only time, median value+grad time, and their ratio."""
    rows = []
    for tool in tools:
        try:
            res = {}
            for value_only in (True, False):
                call, unpack, out, _ = _first_call(tool, w, value_only)
                got = unpack(out)
                ref_v = _reference(w)[0]
                if not np.allclose(got if value_only else got[0], ref_v, rtol=w.rtol, atol=w.atol):
                    raise ValueError(f"value {got} does not match reference {ref_v}")
                res[value_only] = measure(call, w.args, **timing)
        except Exception as e:
            rows.append(_error_row(tool, e))
            log(f"  R/{w.name} {tool}: {rows[-1]['status']}")
            continue
        rows.append({"tool": tool_label(tool, w), "status": "ok", "value": res[True],
                     "value_grad": res[False], "ratio": res[False].median / res[True].median})
        log(f"  R/{w.name} {rows[-1]['tool']}: ratio {rows[-1]['ratio']:.2f}")
    return rows
