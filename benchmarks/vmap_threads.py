"""gradc.vmap called from several threads: the per-call cost of each way of making that safe.

numba's ``workqueue`` threading layer (gradc's default, because the OpenMP layer spin-waits on
small machines) aborts the process when two threads launch parallel loops at once. This measures,
for ``gradc.vmap(gradc.value_and_grad(rosen2))`` over 1e6 and 1e3 points with ``out=`` buffers
(so that page faults of fresh outputs do not swamp the loop), called by one thread and by four
threads at once:

- ``workqueue``, no guard (the bug: four callers abort);
- ``workqueue`` + one process-wide lock, callers wait their turn;
- ``workqueue`` + the lock, but a caller that finds it taken runs the serial loop instead;
- ``tbb`` (when ``pip install tbb`` made it loadable), no guard;
- ``omp`` with its default waiting (spins), and with ``OMP_WAIT_POLICY=PASSIVE``, no guard;
- the serial loop (``parallel=False``) for reference, and gradc as shipped.

Every variant goes through the public call (argument checks, the same Python wrapper): the
guard is swapped by replacing ``gradc.batch._gate``, the object every parallel call goes through.
Each (variant, callers) pair runs in its own process, because numba picks its threading layer
once per process. Reported: the median over rounds of wall time / calls ("per call", what a
caller pays on average: throughput) and the median latency of single calls, in ms. A final
section times read-only against writable inputs (the kernels take read-only point arrays).

Run ``python -m benchmarks.vmap_threads`` (``--quick`` for fewer rounds). The numbers are noisy
on a shared machine; they are medians, and the machine is described in the output.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

#: (points, mode). "out": into out= buffers. "fresh": new outputs every call (no out=: the default
#: call). "work": out= buffers, and the caller runs ~0.5 ms of Python between calls, timed with the
#: call; idle workers that spin steal that time on a small machine (the reason for workqueue).
CASES = ((1_000_000, "out"), (1_000, "out"), (1_000_000, "fresh"), (1_000_000, "work"))
CALLS = {1_000_000: 20, 1_000: 500}  # per caller thread and round
CALLERS = (1, 4)

#: name -> (environment, guard, parallel)
VARIANTS = {
    "serial loop (parallel=False)": ({}, "none", False),
    "workqueue, no guard": ({"NUMBA_THREADING_LAYER": "workqueue"}, "none", True),
    "workqueue + lock (wait)": ({"NUMBA_THREADING_LAYER": "workqueue"}, "lock", True),
    "workqueue + lock, serial if taken": ({"NUMBA_THREADING_LAYER": "workqueue"}, "trylock", True),
    "tbb, no guard": ({"NUMBA_THREADING_LAYER": "tbb"}, "none", True),
    "omp (default wait policy), no guard": ({"NUMBA_THREADING_LAYER": "omp"}, "none", True),
    "omp, OMP_WAIT_POLICY=PASSIVE, no guard": (
        {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "PASSIVE"}, "none", True),
    "gradc as shipped (default env)": ({}, "shipped", True),
}


def rosen2(x, y):
    return (1 - x) ** 2 + 100.0 * (y - x * x) ** 2


# --- guards swapped in for gradc.batch._gate ---------------------------------------------------
class _NoGuard:
    threadsafe = True

    def run(self, kernel, args):
        kernel(*args)


class _Lock:
    def __init__(self):
        self._lock = threading.Lock()

    def run(self, kernel, args):
        with self._lock:
            kernel(*args)


class _TryLockElseSerial:
    """The lock, but a caller that finds it taken runs the serial loop instead of waiting."""

    def __init__(self, serial_of):
        self._lock, self._serial_of = threading.Lock(), serial_of

    def run(self, kernel, args):
        if self._lock.acquire(blocking=False):
            try:
                kernel(*args)
            finally:
                self._lock.release()
        else:
            self._serial_of[kernel](*args)


# --- one process: one variant, one number of callers -------------------------------------------
def _points(n):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.uniform(-2, 2, n), rng.uniform(-1, 3, n)


def _python_work():
    return sum(k * k for k in range(12_000))  # ~0.5 ms of interpreter work


def _time_callers(f, n, mode, callers, rounds):
    """Median over rounds of wall/calls, and the median single-call latency, both in ms."""
    import numpy as np

    x, y = _points(n)
    outs = [None if mode == "fresh" else (np.empty(n), (np.empty(n), np.empty(n)))
            for _ in range(callers)]
    calls = CALLS[n]
    per_call, latencies = [], []

    def work(out, lat):
        for _ in range(calls):
            t0 = time.perf_counter()
            f(x, y, out=out)
            if mode == "work":
                _python_work()
            lat.append(time.perf_counter() - t0)

    for r in range(rounds + 1):  # round 0 warms up
        lats = [[] for _ in range(callers)]
        threads = [threading.Thread(target=work, args=(outs[k], lats[k])) for k in range(callers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if r:
            per_call.append(wall / (calls * callers))
            latencies.extend(v for lat in lats for v in lat)
    return {"per_call_ms": 1e3 * statistics.median(per_call),
            "latency_ms": 1e3 * statistics.median(latencies)}


def _child(name, callers, rounds):
    import numba

    import gradc
    from gradc import batch

    _, guard, parallel = VARIANTS[name]
    f = gradc.vmap(gradc.value_and_grad(rosen2), parallel=parallel)
    serial = gradc.vmap(gradc.value_and_grad(rosen2), parallel=False)
    x, y = _points(16)
    f(x, y), serial(x, y)  # compile (or load from the cache) before timing
    if guard == "none":
        batch._gate = _NoGuard()
    elif guard == "lock":
        batch._gate = _Lock()
    elif guard == "trylock":
        key = (True, True)
        batch._gate = _TryLockElseSerial({f._spec(key).kernel: serial._spec(key).kernel})
    result = [_time_callers(f, n, mode, callers, rounds) for n, mode in CASES]
    layer = batch._threading_layer() if parallel else "none (serial)"
    print(json.dumps({"layer": layer, "numba_threads": numba.config.NUMBA_NUM_THREADS,
                      "results": result}))


def _readonly_child(rounds):
    """Per-call cost of read-only point arrays, through the public call and the raw kernel."""
    import timeit

    import numpy as np
    from numba import float64, int64, njit, types

    import gradc

    f = gradc.vmap(gradc.value_and_grad(rosen2), parallel=False)
    n = 1_000
    x, y = _points(n)
    xr, yr = x.copy(), y.copy()
    xr.setflags(write=False)
    yr.setflags(write=False)
    out = (np.empty(n), (np.empty(n), np.empty(n)))
    f(x, y, out=out)
    kernel = f._spec((True, True)).kernel
    mutable = types.Array(float64, 1, "C")
    writable_only = njit((int64, mutable, mutable) + (mutable,) * 3)(kernel.py_func)
    o = (out[0], *out[1])
    cases = {
        "public call, writable inputs": lambda: f(x, y, out=out),
        "public call, read-only inputs": lambda: f(xr, yr, out=out),
        "kernel, writable-only signature": lambda: writable_only(n, x, y, *o),
        "kernel, read-only signature, writable inputs": lambda: kernel(n, x, y, *o),
        "kernel, read-only signature, read-only inputs": lambda: kernel(n, xr, yr, *o),
    }
    samples = {k: [] for k in cases}
    for _ in range(rounds * 3):  # interleaved, so drifts of the shared machine hit every case
        for k, call in cases.items():
            samples[k].append(min(timeit.repeat(call, number=2000, repeat=3)) / 2000)
    print(json.dumps({k: 1e6 * statistics.median(v) for k, v in samples.items()}))


# --- the parent: one subprocess per case, then a table -----------------------------------------
def _run(args, env_extra, cache):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    env.update(env_extra, GRADC_CACHE_DIR=cache)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.vmap_threads", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        if "does not load here" in proc.stderr:
            return None, "layer not available here"
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"exit {proc.returncode}: {last[:60]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _machine():
    import numba

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPUs, load average {load:.1f} at start, numba {numba.__version__}, "
            f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "CALLERS"), help=argparse.SUPPRESS)
    parser.add_argument("--readonly-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    if args.child:
        return _child(args.child[0], int(args.child[1]), rounds)
    if args.readonly_child:
        return _readonly_child(rounds)

    print(f"# gradc.vmap from threads: {_machine()}")
    print("# ms per call: median over rounds of wall/calls (lat: median single call); modes: see CASES\n")
    header = " | ".join(f"{n:.0e} pts, {mode}, {c} caller{'s' * (c > 1)}"
                        for n, mode in CASES for c in CALLERS)
    print(f"| variant | layer | {header} |")
    print("|---|---|" + "---|" * (len(CASES) * len(CALLERS)))
    with tempfile.TemporaryDirectory(prefix="gradc-bench-threads-") as cache:
        for name, (env, _, _) in VARIANTS.items():
            cells, layer = {}, "?"
            for callers in CALLERS:
                data, error = _run(["--child", name, str(callers), "--rounds", str(rounds)],
                                   env, cache)
                for k in range(len(CASES)):
                    if error:
                        cells[k, callers] = error if k == 0 else "(same)"
                    else:
                        layer = data["layer"]
                        r = data["results"][k]
                        cells[k, callers] = f"{r['per_call_ms']:.3f} (lat {r['latency_ms']:.3f})"
            row = " | ".join(cells[k, c] for k in range(len(CASES)) for c in CALLERS)
            print(f"| {name} | {layer} | {row} |", flush=True)
        data, error = _run(["--readonly-child", "--rounds", str(rounds)], {}, cache)
    print("\n# read-only inputs, 1e3 points, serial loop: µs per call (median)")
    for k, v in (data or {"failed": error}).items():
        print(f"- {k}: {v if isinstance(v, str) else f'{v:.2f}'}")


if __name__ == "__main__":
    main()
