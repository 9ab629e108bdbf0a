"""Rows per second of one logistic-regression value+gradient: gradc in memory, gradc.dask, NumPy on dask.array.

``python -m benchmarks.dask_rows [--rows N]`` (default 10^7 x 20). Data are persisted on the
workers first, so each timing is the map-reduce itself; medians of ``--repeat`` calls.
Rows: gradc in memory (one process); gradc.dask on a LocalCluster of 1 and 2 worker
processes (1 thread each, serial kernels); the same loss hand-written in NumPy under
dask.array on the same clusters; and, for the threads question, gradc.dask.vmap under
Dask's threaded scheduler with serial against parallel (numba prange) block loops.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import dask_logistic  # noqa: E402

import gradc  # noqa: E402
import gradc.dask  # noqa: E402


def _median(fn, repeat):
    fn()  # warm: compiles
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def numpy_loss(w, b, X, y):
    """The hand-written NumPy loss and gradient under dask.array (lazy until computed)."""
    import dask
    import dask.array as da

    z = X @ w + b
    value = da.sum(da.logaddexp(0.0, z) - y * z)
    r = 1.0 / (1.0 + da.exp(-z)) - y
    return dask.compute(value, X.T @ r, r.sum())


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import dask
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    n, d = args.rows, args.features
    w, b = np.full(d, 0.1), 0.0
    rows = []
    X, y = dask_logistic.dataset(n, d, args.chunk_rows)
    Xm, ym = dask.compute(X, y, scheduler="threads")
    local = gradc.value_and_grad(dask_logistic.nll, argnums=(0, 1))
    t = _median(lambda: local(w, b, Xm, ym), args.repeat)
    rows.append(("gradc in memory (one process)", t))
    f = gradc.dask.value_and_grad(dask_logistic.nll, data=(2, 3))
    Xt, yt = da.from_array(Xm, chunks=(args.chunk_rows, -1)), da.from_array(ym, chunks=args.chunk_rows)
    with dask.config.set(scheduler="threads"):
        rows.append(("gradc.dask, threaded scheduler (2 threads)",
                     _median(lambda: f(w, b, Xt, yt), args.repeat)))
    del Xm, ym, Xt, yt
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as c, \
                Client(c) as client:
            Xp, yp = client.persist([X, y])
            from dask.distributed import wait
            wait([Xp, yp])
            rows.append((f"gradc.dask, {workers} worker process(es)",
                         _median(lambda: f(w, b, Xp, yp), args.repeat)))
            rows.append((f"NumPy on dask.array, {workers} worker process(es)",
                         _median(lambda: numpy_loss(w, b, Xp, yp), args.repeat)))
    # the threads question: vmap blocks under Dask's threads, serial vs parallel loops
    pts = da.random.default_rng(0).normal(size=n, chunks=args.chunk_rows).persist(scheduler="threads")
    rosen2 = lambda x, c: (1 - x) ** 2 + 100.0 * (c - x * x) ** 2  # noqa: E731
    with dask.config.set(scheduler="threads", num_workers=2):
        for parallel in (False, True):
            g = gradc.dask.vmap(gradc.value_and_grad(rosen2), parallel=parallel)
            rows.append((f"vmap points, threaded scheduler, parallel={parallel}",
                         _median(lambda: dask.compute(g(pts, 2.0)), args.repeat)))
    print(f"{n} rows x {d} features, chunks of {args.chunk_rows} rows, median of {args.repeat}")
    print("| run | seconds | rows/s |\n| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {n / t:.3g} |")


if __name__ == "__main__":
    main()
