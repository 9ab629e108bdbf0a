"""gradc.dask on a real dask.distributed LocalCluster (2 worker processes) and Dask's threads.

Results are compared with the in-memory gradc results to 1e-12 (relative). The cluster is
started once for the module and closed at its end; the workers inherit the test session's
gradc cache directory, so they load the kernels the tests compiled here.
"""
import contextlib
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("dask.distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402

import gradc  # noqa: E402
import gradc.dask as gd  # noqa: E402
from gradc import batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-12


def logistic(w, b, X, y):
    """Logistic regression's negative log-likelihood: a sum over the rows of X and y."""
    z = X @ w + b
    return np.sum(gradc.math.softplus(z) - y * z)


def rosen2(x, y):
    return (1 - x) ** 2 + 100.0 * (y - x * x) ** 2


def _data(n=3001, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d) * 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w)))).astype(float)
    return X, y, w * 0.3, 0.1


def _close(got, want):
    got, want = np.atleast_1d(np.asarray(got)), np.atleast_1d(np.asarray(want))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


def _cluster():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster, set_as_default=False)
    try:
        with _on(c):
            yield c
    finally:
        c.close()
        cluster.close()


@contextlib.contextmanager
def _on(client):
    """Run Dask computations on ``client`` (in this thread's context). Not scheduler=client.get:
    a nanny copies dask's config into the workers it spawns, and a Client does not pickle."""
    with dask.config.set(scheduler="dask.distributed"), client.as_current():
        yield


@pytest.fixture(scope="module")
def client():
    """The module's cluster: 2 worker processes of 1 thread."""
    yield from _cluster()


@pytest.fixture
def spoiled_client():
    """A cluster of its own for a test that kills or breaks a worker (this distributed's
    nanny could not always respawn a worker in the test process, so none is reused)."""
    yield from _cluster()


@pytest.fixture(scope="module")
def reference():
    X, y, w, b = _data()
    value, (gw, gb) = gradc.value_and_grad(logistic, argnums=(0, 1))(w, b, X, y)
    return X, y, w, b, value, gw, gb


# --- equality with in-memory gradc ---------------------------------------------------------

@pytest.mark.parametrize("rows_per_chunk", [1000, 3001, 777])  # uneven last, one chunk, many
def test_loss_value_and_gradient_equal_in_memory_at_every_chunking(client, reference,
                                                                    rows_per_chunk):
    X, y, w, b, value, gw, gb = reference
    f = gd.value_and_grad(logistic, data=(2, 3))
    v, (dw, db) = f(w, b, da.from_array(X, chunks=(rows_per_chunk, -1)),
                    da.from_array(y, chunks=rows_per_chunk))
    _close(v, value)
    _close(dw, gw)
    _close(db, gb)
    assert isinstance(v, float) and isinstance(db, float) and dw.shape == w.shape


def test_mean_loss_weights_chunks_by_their_rows(client, reference):
    X, y, w, b, value, gw, gb = reference
    mean = lambda w, b, X, y: np.mean(gradc.math.softplus(X @ w + b) - y * (X @ w + b))  # noqa
    f = gd.value_and_grad(mean, data=(2, 3), reduce="mean")
    v, (dw, db) = f(w, b, da.from_array(X, chunks=(1000, -1)), da.from_array(y, chunks=1000))
    n = len(y)
    _close(v, value / n)
    _close(dw, gw / n)
    _close(db, gb / n)


def test_columns_in_chunks_reach_each_task_as_whole_rows(client, reference):
    X, y, w, b, value, gw, gb = reference
    f = gd.value_and_grad(logistic, data=(2, 3))
    v, (dw, db) = f(w, b, da.from_array(X, chunks=(1000, 4)), da.from_array(y, chunks=1000))
    _close(v, value)
    _close(dw, gw)


def test_scipy_minimize_fits_through_the_cluster(client, reference):
    import scipy.optimize

    X, y, w, b, *_ = reference
    f = gd.value_and_grad(lambda w, X, y: logistic(w, 0.0, X, y))
    Xd, yd = da.from_array(X, chunks=(1000, -1)), da.from_array(y, chunks=1000)
    fit = scipy.optimize.minimize(f, np.zeros_like(w), args=(Xd, yd), jac=True,
                                  method="L-BFGS-B")
    local = scipy.optimize.minimize(gradc.value_and_grad(lambda w, X, y: logistic(w, 0.0, X, y),
                                                         argnums=0),
                                    np.zeros_like(w), args=(X, y), jac=True, method="L-BFGS-B")
    assert fit.success
    np.testing.assert_allclose(fit.x, local.x, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("chunk", [300, 1001])
def test_vmap_blocks_equal_in_memory_vmap(client, chunk):
    xs = np.linspace(-2.0, 2.0, 1001)
    ys = np.cos(xs)
    want = gradc.vmap(gradc.value_and_grad(rosen2))(xs, ys)
    got = gd.vmap(gradc.value_and_grad(rosen2))(da.from_array(xs, chunks=chunk),
                                                 da.from_array(ys, chunks=chunk))
    assert isinstance(got[0], da.Array) and got[0].chunks == da.from_array(xs, chunks=chunk).chunks
    (value, (dx, dy)), = dask.compute(got)
    _close(value, want[0])
    _close(dx, want[1][0])
    _close(dy, want[1][1])


def test_vmap_shares_a_float_argument_across_points(client):
    xs = np.linspace(-1.0, 1.0, 500)
    got = gd.vmap(gradc.value_and_grad(rosen2))(da.from_array(xs, chunks=128), 2.0)
    (value, (dx, dy)), = dask.compute(got)
    want = gradc.vmap(gradc.value_and_grad(rosen2))(xs, 2.0)
    _close(value, want[0])
    _close(dy, want[1][1])


# --- Dask's threaded scheduler -------------------------------------------------------------

def test_threaded_scheduler_gives_the_same_loss_and_vmap(reference):
    X, y, w, b, value, gw, gb = reference
    with dask.config.set(scheduler="threads", num_workers=2):
        v, (dw, db) = gd.value_and_grad(logistic, data=(2, 3))(
            w, b, da.from_array(X, chunks=(500, -1)), da.from_array(y, chunks=500))
        xs = np.linspace(-2.0, 2.0, 1001)
        for parallel in (False, True):  # serial loops run at once; parallel ones take turns
            got = gd.vmap(gradc.value_and_grad(rosen2), parallel=parallel)(
                da.from_array(xs, chunks=100), 2.0)
            (vals, _), = dask.compute(got)
            _close(vals, gradc.vmap(gradc.value_and_grad(rosen2))(xs, 2.0)[0])
    _close(v, value)
    _close(dw, gw)
    _close(db, gb)


# --- a worker dies mid-computation ---------------------------------------------------------

def test_killed_worker_chunks_are_recomputed_and_the_result_is_exact(spoiled_client, reference):
    client = spoiled_client
    X, y, w, b, value, gw, gb = reference

    def slow(block):  # a closure: pickled by value, so the workers need not import this file
        time.sleep(0.25)
        return block

    Xd = da.from_array(X, chunks=(250, -1)).map_blocks(slow, dtype=float)  # 13 chunks
    yd = da.from_array(y, chunks=250)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    f = gd.value_and_grad(logistic, data=(2, 3))
    f._checked = True  # the additivity probe is not what this test is about
    killed = threading.Event()

    def kill_when_busy():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(client.processing().values()):
                time.sleep(0.3)  # a few chunks done, others running
                os.kill(victim, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    result = {}
    context = contextvars.copy_context()  # the current client, in the runner thread too
    runner = threading.Thread(target=lambda: context.run(lambda: result.update(
        out=f(w, b, Xd, yd))), daemon=True)
    killer.start()
    runner.start()
    runner.join(timeout=90)
    assert not runner.is_alive(), "the reduction hung after a worker was killed"
    assert killed.is_set()
    v, (dw, db) = result["out"]
    _close(v, value)
    _close(dw, gw)
    _close(db, gb)
    assert victim not in client.run(os.getpid).values()  # the result came without it


# --- bad input -----------------------------------------------------------------------------

def test_rows_chunked_differently_across_data_arguments_are_refused(reference):
    X, y, w, b, *_ = reference
    f = gd.value_and_grad(logistic, data=(2, 3))
    with pytest.raises(gradc.ArgumentError, match=r"do not line up.*rechunk"):
        f(w, b, da.from_array(X, chunks=(1000, -1)), da.from_array(y, chunks=700))
    with pytest.raises(gradc.ArgumentError, match="do not line up"):
        gd.vmap(gradc.value_and_grad(rosen2))(da.from_array(X[:, 0], chunks=100),
                                              da.from_array(y, chunks=300))
    with pytest.raises(gradc.ArgumentError, match="rows"):
        f(w, b, da.from_array(X[:100], chunks=(50, -1)), da.from_array(y, chunks=50))


def test_in_memory_data_and_two_dimensional_points_are_refused(reference):
    X, y, w, b, *_ = reference
    with pytest.raises(gradc.ArgumentError, match="not a Dask array"):
        gd.value_and_grad(logistic, data=(2, 3))(w, b, X, da.from_array(y, chunks=1000))
    with pytest.raises(gradc.ArgumentError, match="1-D Dask arrays"):
        gd.vmap(gradc.value_and_grad(rosen2))(da.from_array(X, chunks=(100, -1)), 1.0)
    with pytest.raises(gradc.ArgumentError, match="in-memory array"):
        gd.vmap(gradc.value_and_grad(rosen2))(da.from_array(y, chunks=100), y)


def test_loss_with_a_regulariser_inside_is_refused_as_not_a_sum(reference):
    X, y, w, b, *_ = reference
    penalised = lambda w, b, X, y: logistic(w, b, X, y) + np.sum(w * w)  # noqa: E731
    f = gd.value_and_grad(penalised, data=(2, 3))
    with pytest.raises(gradc.ArgumentError, match="not a sum over the rows.*outside the loss"):
        f(w, b, da.from_array(X, chunks=(1000, -1)), da.from_array(y, chunks=1000))


def test_a_mean_declared_as_a_sum_is_refused_with_the_fix(reference):
    X, y, w, b, *_ = reference
    mean = lambda w, b, X, y: np.mean(X @ w + b - y)  # noqa: E731
    with pytest.raises(gradc.ArgumentError, match="reduce='mean'"):
        gd.value_and_grad(mean, data=(2, 3))(w, b, da.from_array(X, chunks=(1000, -1)),
                                             da.from_array(y, chunks=1000))


def test_altered_kernel_source_is_not_compiled():
    f = gradc.vmap(gradc.value_and_grad(rosen2, backend="python"))
    kernel = f.kernel((True, True))
    planted = "import os\nos.environ['GRADC_PLANTED'] = '1'\n" + kernel.source
    with pytest.raises(batch.KernelMismatchError, match="altered"):
        batch.compiled(kernel._replace(source=planted))
    assert "GRADC_PLANTED" not in os.environ


def test_worker_with_another_gradc_version_gets_a_clear_error(client):
    """The client's versions travel with the source; a worker with other versions refuses it."""
    def set_version(v):
        import gradc
        old, gradc.batch.__version__ = gradc.batch.__version__, v
        return old

    old = client.run(set_version, "0.0.0-other")
    try:
        xs = da.from_array(np.linspace(0.0, 1.0, 64), chunks=32)
        with pytest.raises(gradc.GradcError, match=r"gradc 0\.1\.0.*this process.*gradc "
                                                   r"0\.0\.0-other.*same gradc and numba"):
            # a function no earlier test compiled: its kernel is new to the workers
            dask.compute(gd.vmap(gradc.value_and_grad(lambda x, c: x * c + 3.25))(xs, 1.0))
    finally:
        client.run(set_version, next(iter(old.values())))


def test_worker_without_gradc_gets_an_install_hint():
    """What a worker lacking gradc raises (its task cannot be unpickled there) becomes a
    GradcError naming the install. Simulated with Dask's threads: a task raising the
    ModuleNotFoundError that unpickling raises (hiding gradc in a live worker hung it)."""
    def unpickle_on_a_bare_worker():
        raise ModuleNotFoundError("No module named 'gradc'", name="gradc")

    with dask.config.set(scheduler="threads"):
        with pytest.raises(gradc.GradcError, match=r"cannot import 'gradc'.*pip install"):
            gd._compute(dask.delayed(unpickle_on_a_bare_worker)())
        with pytest.raises(ModuleNotFoundError):  # another missing module is not gradc's
            gd._compute(dask.delayed(lambda: __import__("no_such_module_here"))())


# --- the example ---------------------------------------------------------------------------

def test_logistic_example_runs_small_and_recovers_the_coefficients():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "dask_logistic.py"),
                           "--rows", "20000", "--chunk-rows", "5000", "--features", "5"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows/s" in proc.stdout and "max |fitted - true|" in proc.stdout
    error = float(proc.stdout.split("max |fitted - true|")[1].split()[0])
    assert error < 0.2, proc.stdout
