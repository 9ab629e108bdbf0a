"""gradc.vmap called from several threads at once: no abort, the serial loop's results exactly.

numba's workqueue threading layer aborts the whole process when two threads launch parallel loops
at once, so the end-to-end checks run in a subprocess: an abort fails the test instead of killing
pytest. The gate that orders parallel launches is also tested directly, with fake kernels.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gradc
from gradc import batch

# 4 threads x 20 calls of a default (parallel) vmap, started together; every result is compared
# with the serial loop's. 1,000 points: short calls overlap often (without the gate this aborted
# in most runs).
_CHILD = r"""
import sys, threading
import numpy as np
import numba
import gradc

rosen2 = lambda x, y: (1 - x) ** 2 + 100.0 * (y - x * x) ** 2
parallel = gradc.vmap(gradc.value_and_grad(rosen2))
serial = gradc.vmap(gradc.value_and_grad(rosen2), parallel=False)
pts = np.linspace(-2.0, 2.0, 1000)
expected = serial(pts, 2.0)
try:
    parallel(pts, 2.0)
except gradc.GradcError as e:  # the layer asked for does not load here (tbb not installed)
    print(e)
    sys.exit(3)
barrier = threading.Barrier(4)
wrong = []

def caller():
    barrier.wait()
    for _ in range(20):
        values, (dx, dy) = parallel(pts, 2.0)
        if not (np.array_equal(values, expected[0]) and np.array_equal(dx, expected[1][0])
                and np.array_equal(dy, expected[1][1])):
            wrong.append(1)

threads = [threading.Thread(target=caller) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(numba.threading_layer(), gradc.batch._gate.threadsafe, len(wrong))
"""


def _run_child(layer):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")}
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("layer", ["default", "omp", "tbb"])
def test_parallel_vmap_from_four_threads_neither_aborts_nor_differs(layer):
    proc = _run_child(layer)
    if proc.returncode == 3:  # a layer that does not load: a gradc error that names it
        assert f"threading layer '{layer}'" in proc.stdout and "parallel=False" in proc.stdout
        assert layer != "default"  # gradc's own choice always loads (workqueue is built in)
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    picked, unlocked, wrong = proc.stdout.split()
    assert wrong == "0"  # every one of the 80 results equals the serial loop's, bit for bit
    assert unlocked == str(picked in ("tbb", "omp"))  # the gate locks exactly for workqueue
    if layer == "default":  # gradc steers numba away from the spin-waiting OpenMP layer
        assert picked in ("tbb", "workqueue")
    else:
        assert picked == layer


# --- the gate, with fake kernels -----------------------------------------------------------------
def _most_at_once(gate, calls=8, threads=4):
    """Run ``calls`` slow fake kernels from ``threads`` threads through ``gate``: the most that ran
    at the same time."""
    active, most, lock = [0], [0], threading.Lock()

    def kernel():
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.005)  # long enough for the other threads to arrive
        with lock:
            active[0] -= 1

    def caller():
        for _ in range(calls // threads):
            gate.run(kernel, ())

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return most[0]


def test_gate_runs_workqueue_launches_one_at_a_time(monkeypatch):
    monkeypatch.setattr(batch, "_threading_layer", lambda: "workqueue")
    gate = batch._ParallelGate()
    assert _most_at_once(gate) == 1
    assert gate.threadsafe is False


def test_gate_locks_until_numba_has_picked_a_layer(monkeypatch):
    monkeypatch.setattr(batch, "_threading_layer", lambda: None)
    gate = batch._ParallelGate()
    assert _most_at_once(gate) == 1
    assert gate.threadsafe is None  # still undecided: keeps locking


@pytest.mark.parametrize("layer", ["tbb", "omp"])
def test_gate_lets_threadsafe_layers_run_concurrently(monkeypatch, layer):
    monkeypatch.setattr(batch, "_threading_layer", lambda: layer)
    gate = batch._ParallelGate()
    gate.run(lambda: None, ())  # the first launch tells the gate which layer numba picked
    assert gate.threadsafe is True
    assert _most_at_once(gate) > 1


def test_gate_lock_is_fresh_in_a_forked_child(monkeypatch):
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    gate = batch._gate  # the process-wide gate: the one the at-fork hook renews
    monkeypatch.setattr(gate, "threadsafe", False)  # as under workqueue: launches take the lock
    held = threading.Event()
    release = threading.Event()

    def holder():  # another thread is inside a parallel launch when the process forks
        gate.run(lambda: (held.set(), release.wait(5)), ())

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the lock must not be the (held) parent's
            ok = gate._lock.acquire(timeout=2)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.waitstatus_to_exitcode(status) == 0


# --- the python backend, and first calls, from threads ------------------------------------------
def _from_threads(call, threads=4):
    results, errors = [], []
    barrier = threading.Barrier(threads)

    def caller():
        barrier.wait()
        try:
            results.append(call())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return results


def test_python_backend_vmap_from_threads_builds_once_and_agrees(monkeypatch):
    f = gradc.vmap(gradc.value_and_grad(lambda x, y: x * x * y, backend="python"))
    builds = []
    build = f._build
    monkeypatch.setattr(f, "_build", lambda batched: builds.append(batched) or build(batched))
    x = np.linspace(-1.0, 1.0, 50)
    results = _from_threads(lambda: f(x, 3.0))  # four first calls at once
    assert builds == [(True, False)]
    for values, (dx, dy) in results:
        np.testing.assert_array_equal(values, x * x * 3.0)
        np.testing.assert_array_equal(dx, 2 * x * 3.0)
        np.testing.assert_array_equal(dy, x * x)
