"""Timing harness: warm-up, timeit-style repeats, robust statistics, thread pinning, machine facts.

``measure(fn, args)`` calls ``fn(*args)`` through a ``timeit`` statement written out as
``fn(a0, a1, ...)`` (no ``*args`` unpacking, no wrapper lambda), so that per-call overhead is what a
user calling the tool directly would pay.  Each repeat runs an inner loop sized (like
``timeit.autorange``) to last at least ``min_time`` seconds; statistics are over the per-call times
of the repeats.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import timeit
from dataclasses import dataclass


@dataclass
class Stats:
    """Per-call times in seconds over ``repeats`` repeats of ``number`` calls each."""
    median: float
    min: float
    spread: float      # interquartile range / median (0.05 means 5 %)
    repeats: int
    number: int


def measure(fn, args=(), repeat=15, min_time=0.02, warmup=3) -> Stats:
    """Time ``fn(*args)``: ``warmup`` untimed calls (at least enough for a gradc function to
    get its C entry: gradc.fastcall.PROMOTE_AFTER), then ``repeat`` timed loops of >=
    ``min_time`` s."""
    from gradc import fastcall

    for _ in range(max(warmup, fastcall.PROMOTE_AFTER + 1)):
        fn(*args)
    names = [f"a{i}" for i in range(len(args))]
    env = dict(zip(names, args), fn=fn)
    timer = timeit.Timer(f"fn({', '.join(names)})", globals=env)
    number = 1
    while True:                                   # autorange: 1, 2, 5, 10, 20, 50, ...
        if timer.timeit(number) >= min_time:
            break
        number *= 2 if str(number)[0] in "15" else 2.5
        number = int(number)
    per_call = sorted(t / number for t in timer.repeat(repeat, number))
    q = statistics.quantiles(per_call, n=4) if len(per_call) >= 2 else [per_call[0]] * 3
    med = statistics.median(per_call)
    return Stats(med, per_call[0], (q[2] - q[0]) / med if med else 0.0, repeat, number)


def run_child(module, args, cache_dir, timeout=900):
    """``python -m module *args`` in a fresh process with its own gradc cache directory (cold
    and warm compiles are measured this way): the JSON dict its last stdout line holds, or
    ``{"error": its last stderr line, "stderr": all of it}`` (each caller says which errors
    mean a tool is missing), or ``{"error": "timed out after ... s"}``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GRADC_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", module, *map(str, args)]
    try:
        p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1], "stderr": p.stderr}
    return json.loads(p.stdout.strip().splitlines()[-1])


def pin_threads(n=1):
    """Pin BLAS/OpenMP pools to ``n`` threads (threadpoolctl if installed); returns a description."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "threadpoolctl not installed: BLAS threads not pinned"
    try:  # numba's np.dot calls SciPy's BLAS: load it now, since threadpoolctl limits only
        import scipy.linalg.cython_blas  # noqa: F401  (the libraries loaded when it is called)
    except ImportError:
        pass
    pin_threads._keep = threadpool_limits(limits=n)   # keep the context alive for the whole run
    return f"BLAS/OpenMP pools pinned to {n} thread(s) with threadpoolctl"


def numba_threading_layer():
    """The numba threading layer configured for this run (W1-W3 use no prange)."""
    try:
        import numba
    except ImportError:
        return "numba not installed"
    try:
        return numba.threading_layer()
    except ValueError:                                   # no parallel region has run yet
        return f"{numba.config.THREADING_LAYER} (configured; no parallel region executed)"


def w4_note():
    """The threading facts behind W4's parallel rows (call after a prange loop has run)."""
    try:
        import numba
    except ImportError:
        return "W4: numba not installed"
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = f"{numba.config.THREADING_LAYER} (configured; no parallel region executed)"
    env = os.environ.get("NUMBA_THREADING_LAYER")
    return (f"W4: numba threading layer used by the prange rows: {layer} "
            f"(NUMBA_THREADING_LAYER={env!r}), {numba.get_num_threads()} numba threads; "
            "BLAS pools pinned to 1 thread; torch rows set torch.set_num_threads per call")


def _version(dist):
    """Version of an installed distribution, else of an importable module (a source checkout of
    gradc on sys.path), else None."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        pass
    try:
        mod = __import__(dist)
    except Exception:
        return None
    return f"{getattr(mod, '__version__', '?')} (from {os.path.dirname(mod.__file__)})"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(notes=()):
    """A dict of facts about this machine and the software under test."""
    desc = {
        "CPU": cpu_model(),
        "logical cores": os.cpu_count(),
        "usable cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?",
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
    }
    for mod in ("numpy", "scipy", "numba", "gradc", "jax", "torch", "autograd", "sympy",
                "symengine", "casadi", "pytensor"):
        v = _version(mod)
        desc[mod] = v if v is not None else "not installed"
    desc["numba threading layer"] = numba_threading_layer()
    for note in notes:
        desc.setdefault("notes", []).append(note)
    return desc


def load_average():
    """1-minute load average (other work on the machine inflates timings), or "?"."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return "?"


def fmt_time(t):
    """Human-readable duration."""
    if t is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"
