"""The array workloads W4 (batched 2-D Rosenbrock) and W5 (one MLP training step), with their
"careful human" baselines and one adapter per tool.

The tools here are specific to each workload (gradc's ``vmap`` with and without ``parallel``, a
hand-written numba loop with and without ``prange``, an SGD step per framework), so each
:class:`~benchmarks.workloads.Workload` carries its own ``custom`` builders: ``builder(w, mode)``
returns ``(call, unpack)`` like ``tools.build``; ``mode`` is ``"step"`` (W5: loss, gradients and the
SGD update), ``"vg"`` (value and gradient) or ``"value"``.  ``call(*w.args)`` is what is timed.

W4: value and gradient of f(x, y) = (1 - x)² + 100 (y - x²)² at 1,000,000 points.  Every tool that
can write into caller buffers does (``out=``: fresh multi-MB outputs cost page faults, see
``shared/design.md``); JAX and PyTorch return new arrays, as their users get.  Reference: the
hand-written NumPy gradient.

W5: 64 inputs, 64 tanh hidden units, 10-way softmax cross-entropy (max-shifted log-sum-exp), batch
64, one-hot labels: loss, gradients w.r.t. W1, b1, W2, b2, and the SGD update p -= lr·g, in float64
and float32.  Every tool differentiates the same loss program (``make_mlp_loss(ns)``), and every
step updates its own copy of the parameters in place (JAX: functionally, inside ``jit``).
Reference: the hand-written NumPy backward, in float64.
"""
from __future__ import annotations

import types

import numpy as np

from .tools import Skip, _import

try:
    from numba import njit, prange
except ImportError:
    njit = prange = None

W4_POINTS = 1_000_000
W5_SIZES = dict(inputs=64, hidden=64, classes=10, batch=64)
W5_LR = 0.01


def _concat_vg(out):
    """(values, (dx, dy)) -> (values, concatenated gradients) for the check (not timed)."""
    v, g = out
    return np.asarray(v, dtype=float), np.concatenate([np.asarray(a, dtype=float).ravel() for a in g])


def _value_only(out):
    return np.asarray(out, dtype=float)


# ============================================================================================ W4
def make_rosen2(xp=None):
    def rosen2(x, y):
        return (1.0 - x) ** 2 + 100.0 * (y - x ** 2) ** 2
    return rosen2


def rosen2_numpy(x, y, v, dx, dy, t, u):
    """Hand-written vectorised NumPy, writing into caller buffers (t, u: scratch of len(x))."""
    np.multiply(x, x, out=t)
    np.subtract(y, t, out=t)                  # t = y - x^2
    np.subtract(1.0, x, out=u)                # u = 1 - x
    np.multiply(t, 200.0, out=dy)             # dy = 200 t
    np.multiply(dy, x, out=dx)
    np.multiply(dx, -2.0, out=dx)             # -400 t x
    np.multiply(u, 2.0, out=v)
    np.subtract(dx, v, out=dx)                # dx = -400 t x - 2 u
    np.multiply(u, u, out=u)
    np.multiply(t, t, out=t)
    np.multiply(t, 100.0, out=t)
    np.add(u, t, out=v)                       # v = u^2 + 100 t^2
    return v, (dx, dy)


def _rosen2_loop(x, y, v, dx, dy):
    for i in range(x.shape[0]):
        xi = x[i]
        t = y[i] - xi * xi
        u = 1.0 - xi
        v[i] = u * u + 100.0 * t * t
        dx[i] = -400.0 * t * xi - 2.0 * u
        dy[i] = 200.0 * t


def _rosen2_prange(x, y, v, dx, dy):
    for i in prange(x.shape[0]):
        xi = x[i]
        t = y[i] - xi * xi
        u = 1.0 - xi
        v[i] = u * u + 100.0 * t * t
        dx[i] = -400.0 * t * xi - 2.0 * u
        dy[i] = 200.0 * t


def _rosen2_loop_value(x, y, v):
    for i in range(x.shape[0]):
        t = y[i] - x[i] * x[i]
        u = 1.0 - x[i]
        v[i] = u * u + 100.0 * t * t


def _buffers(n, k):
    return [np.empty(n) for _ in range(k)]


def _w4_gradc(parallel):
    def build(w, mode):
        gradc = _import("gradc")
        f = make_rosen2()
        n = len(w.args[0])
        if mode == "value":
            vf = gradc.vmap(gradc.compile(f), parallel=parallel)
            (v,) = _buffers(n, 1)
            return (lambda x, y: vf(x, y, out=v)), _value_only
        vf = gradc.vmap(gradc.value_and_grad(f), parallel=parallel)
        v, dx, dy = _buffers(n, 3)
        out = (v, (dx, dy))
        return (lambda x, y: vf(x, y, out=out)), _concat_vg
    return build


def _w4_numba(parallel):
    def build(w, mode):
        if njit is None:
            raise Skip("numba not installed")
        n = len(w.args[0])
        if mode == "value":
            if parallel:
                raise Skip("no value-only prange baseline")
            fn = njit(error_model="numpy")(_rosen2_loop_value)
            (v,) = _buffers(n, 1)

            def call(x, y):
                fn(x, y, v)
                return v
            return call, _value_only
        kernel = njit(error_model="numpy", parallel=parallel)(_rosen2_prange if parallel else
                                                             _rosen2_loop)
        v, dx, dy = _buffers(n, 3)

        def call(x, y):
            kernel(x, y, v, dx, dy)
            return v, (dx, dy)
        return call, _concat_vg
    return build


def _w4_numpy(w, mode):
    n = len(w.args[0])
    v, dx, dy, t, u = _buffers(n, 5)
    if mode == "value":
        return make_rosen2(np), _value_only
    return (lambda x, y: rosen2_numpy(x, y, v, dx, dy, t, u)), _concat_vg


def _w4_jax(w, mode):
    jax = _import("jax")
    jax.config.update("jax_enable_x64", True)
    f = make_rosen2()
    jf = jax.jit(jax.vmap(f if mode == "value" else jax.value_and_grad(f, argnums=(0, 1))))
    block = jax.block_until_ready
    return (lambda x, y: block(jf(x, y))), (_value_only if mode == "value" else _concat_vg)


def _w4_torch(threads):
    def build(w, mode):
        torch = _import("torch")
        f = make_rosen2()

        def call(x, y):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                if mode == "value":
                    with torch.no_grad():
                        return f(torch.from_numpy(x), torch.from_numpy(y)).numpy()
                tx = torch.from_numpy(x).requires_grad_()
                ty = torch.from_numpy(y).requires_grad_()
                v = f(tx, ty)
                v.sum().backward()
                return v.detach().numpy(), (tx.grad.numpy(), ty.grad.numpy())
            finally:
                torch.set_num_threads(before)
        return call, (_value_only if mode == "value" else _concat_vg)
    return build


def _w4_autograd(w, mode):
    ag = _import("autograd")
    f = make_rosen2()
    if mode == "value":
        return f, _value_only
    make_vjp = ag.make_vjp

    def call(x, y):
        vjp, v = make_vjp(lambda xy: f(xy[0], xy[1]))((x, y))
        return v, vjp(np.ones_like(v))
    return call, _concat_vg


def _w4_sympy(w, mode):
    sp = _import("sympy")
    X, Y = sp.symbols("x y")
    e = make_rosen2()(X, Y)
    exprs = [e] if mode == "value" else [e, sp.diff(e, X), sp.diff(e, Y)]
    fn = sp.lambdify((X, Y), exprs, modules="numpy", cse=True)
    if mode == "value":
        return (lambda x, y: fn(x, y)[0]), _value_only
    return (lambda x, y: (lambda r: (r[0], (r[1], r[2])))(fn(x, y))), _concat_vg


def _w4_symengine(w, mode):
    se = _import("symengine")
    X, Y = se.symbols("x y")
    e = make_rosen2()(X, Y)
    exprs = [e] if mode == "value" else [e, e.diff(X), e.diff(Y)]
    errors = []
    for backend in ("llvm", "lambda"):
        try:
            fn = se.Lambdify([X, Y], exprs, backend=backend, cse=True)
            break
        except Exception as err:
            errors.append(f"{backend}: {err}")
    else:
        raise RuntimeError("; ".join(errors))

    def call(x, y):                             # Lambdify takes points as rows: (n, 2) -> (n, k)
        r = fn(np.column_stack((x, y)))
        return r[:, 0] if mode == "value" else (r[:, 0], (r[:, 1], r[:, 2]))
    return call, (_value_only if mode == "value" else _concat_vg)


def w4_points(n=W4_POINTS, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.0, n), rng.uniform(-1.0, 3.0, n)


W4_TOOLS = {
    "gradc": ("gradc (vmap, parallel)", _w4_gradc(True)),
    "gradc-serial": ("gradc (vmap, serial)", _w4_gradc(False)),
    "numba-hand": ("numba-hand (loop)", _w4_numba(False)),
    "numba-hand-prange": ("numba-hand (prange)", _w4_numba(True)),
    "numpy-hand": ("numpy-hand (vectorised, out=)", _w4_numpy),
    "jax": ("jax (jit(vmap(value_and_grad)))", _w4_jax),
    "torch": ("torch (1 thread)", _w4_torch(1)),
    "torch-2threads": ("torch (2 threads)", _w4_torch(2)),
    "autograd": ("autograd (make_vjp)", _w4_autograd),
    "sympy": ("sympy (lambdify numpy, cse)", _w4_sympy),
    "symengine": ("symengine (Lambdify, cse)", _w4_symengine),
}


# ============================================================================================ W5
def mlp_namespace(xp):
    """The few reductions the MLP loss needs, for a NumPy-like module (numpy, jax.numpy,
    autograd.numpy) or for torch."""
    if getattr(xp, "__name__", "") == "torch":
        return types.SimpleNamespace(
            tanh=xp.tanh, exp=xp.exp, log=xp.log, sum=xp.sum,
            rowmax=lambda z: z.amax(dim=1, keepdim=True),
            rowsum=lambda z: z.sum(dim=1, keepdim=True))
    return types.SimpleNamespace(
        tanh=xp.tanh, exp=xp.exp, log=xp.log, sum=xp.sum,
        rowmax=lambda z: xp.max(z, axis=1, keepdims=True),
        rowsum=lambda z: xp.sum(z, axis=1, keepdims=True))


def make_mlp_loss(ns):
    """Mean softmax cross-entropy of a 1-hidden-layer tanh MLP, max-shifted log-sum-exp."""
    def mlp_loss(W1, b1, W2, b2, X, Y):
        h = ns.tanh(X @ W1 + b1)
        z = h @ W2 + b2
        m = ns.rowmax(z)
        lse = ns.log(ns.rowsum(ns.exp(z - m))) + m
        return ns.sum(Y * (lse - z)) / X.shape[0]
    return mlp_loss


def mlp_numpy_vg(W1, b1, W2, b2, X, Y):
    """Hand-written NumPy forward and backward (rows of Y are one-hot: d loss/dz = (p - Y)/B)."""
    B = X.shape[0]
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.sum(Y * (np.log(s) - z))) / B
    dz = (e / s - Y) / B
    dW2 = h.T @ dz
    db2 = dz.sum(axis=0)
    da = (dz @ W2.T) * (1.0 - h * h)
    dW1 = X.T @ da
    db1 = da.sum(axis=0)
    return loss, (dW1, db1, dW2, db2)


def mlp_numpy_value(W1, b1, W2, b2, X, Y):
    z = np.tanh(X @ W1 + b1) @ W2 + b2
    z -= z.max(axis=1, keepdims=True)
    return float(np.sum(Y * (np.log(np.exp(z).sum(axis=1, keepdims=True)) - z))) / X.shape[0]


def sgd(params, grads, lr=W5_LR):
    """In place: p -= lr * g for each parameter array (the same update for every NumPy tool)."""
    for p, g in zip(params, grads):
        p -= lr * g


def w5_data(dtype=np.float64, seed=0):
    """Initial parameters (W1, b1, W2, b2) and one batch (X, one-hot Y), in ``dtype``."""
    d, hdim, k, B = (W5_SIZES[s] for s in ("inputs", "hidden", "classes", "batch"))
    rng = np.random.default_rng(seed)
    params = (rng.standard_normal((d, hdim)) / np.sqrt(d), 0.1 * rng.standard_normal(hdim),
              rng.standard_normal((hdim, k)) / np.sqrt(hdim), 0.1 * rng.standard_normal(k))
    X = rng.standard_normal((B, d))
    Y = np.eye(k)[rng.integers(0, k, B)]
    return tuple(p.astype(dtype) for p in params), (X.astype(dtype), Y.astype(dtype))


def _flat_grads(out):
    loss, grads = out[0], out[1]
    return float(loss), np.concatenate([np.asarray(g, dtype=float).ravel() for g in grads])


def _w5_numpy_style(vg_of, value_of):
    """A NumPy-array tool: ``vg_of(params) -> fn(*params, X, Y) -> (loss, grads)``."""
    def build(w, mode):
        params = tuple(p.copy() for p in w.params)
        if mode == "value":
            fv = value_of()
            return (lambda X, Y: fv(*params, X, Y)), (lambda v: float(v))
        fvg = vg_of()
        if mode == "vg":
            return (lambda X, Y: fvg(*params, X, Y)), _flat_grads

        def step(X, Y):
            loss, grads = fvg(*params, X, Y)
            sgd(params, grads)
            return loss, grads
        return step, _flat_grads
    return build


def _gradc_vg():
    # the default (arrays="auto"): the arrays are traced whole and lowered to fused loops
    # with BLAS products, compiled by numba (NumPy-level code was 1.5-2x the hand backward)
    gradc = _import("gradc")
    return gradc.value_and_grad(make_mlp_loss(mlp_namespace(np)), argnums=(0, 1, 2, 3))


def _gradc_value():
    gradc = _import("gradc")
    return gradc.compile(make_mlp_loss(mlp_namespace(np)))


def _autograd_vg():
    ag = _import("autograd")
    return ag.value_and_grad(make_mlp_loss(mlp_namespace(_import("autograd.numpy"))),
                             argnum=(0, 1, 2, 3))


def _autograd_value():
    return make_mlp_loss(mlp_namespace(_import("autograd.numpy")))


def _w5_jax(w, mode):
    jax = _import("jax")
    jax.config.update("jax_enable_x64", True)
    loss = make_mlp_loss(mlp_namespace(_import("jax.numpy")))
    state = {"params": tuple(jax.device_put(p) for p in w.params)}
    block = jax.block_until_ready
    if mode == "value":
        jv = jax.jit(lambda p, X, Y: loss(*p, X, Y))
        return (lambda X, Y: block(jv(state["params"], X, Y))), (lambda v: float(v))
    vg = jax.value_and_grad(lambda p, X, Y: loss(*p, X, Y))
    if mode == "vg":
        jvg = jax.jit(vg)
        return (lambda X, Y: block(jvg(state["params"], X, Y))), _flat_grads

    @jax.jit
    def step(p, X, Y):
        v, g = vg(p, X, Y)
        return tuple(a - W5_LR * b for a, b in zip(p, g)), v, g

    def call(X, Y):
        state["params"], v, g = block(step(state["params"], X, Y))
        return v, g
    return call, _flat_grads


def _w5_torch(w, mode):
    torch = _import("torch")
    torch.set_num_threads(1)
    loss = make_mlp_loss(mlp_namespace(torch))
    params = [torch.from_numpy(p.copy()).requires_grad_() for p in w.params]
    if mode == "value":
        def value(X, Y):
            with torch.no_grad():
                return loss(*params, torch.from_numpy(X), torch.from_numpy(Y)).item()
        return value, (lambda v: float(v))

    def call(X, Y):
        out = loss(*params, torch.from_numpy(X), torch.from_numpy(Y))
        grads = torch.autograd.grad(out, params)
        if mode == "step":
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(g, alpha=W5_LR)
        return out.item(), [g.numpy() for g in grads]
    return call, _flat_grads


W5_TOOLS = {
    "gradc": ("gradc (fused loops)", _w5_numpy_style(_gradc_vg, _gradc_value)),
    "numpy-hand": ("numpy-hand (backward by hand)",
                   _w5_numpy_style(lambda: mlp_numpy_vg, lambda: mlp_numpy_value)),
    "jax": ("jax (jit, value_and_grad)", _w5_jax),
    "torch": ("torch (autograd.grad)", _w5_torch),
    "autograd": ("autograd (value_and_grad)", _w5_numpy_style(_autograd_vg, _autograd_value)),
}


def w5_reference(params, X, Y):
    """Loss and flat gradient of the hand-written backward, computed in float64."""
    f64 = [np.asarray(a, dtype=np.float64) for a in (*params, X, Y)]
    return _flat_grads(mlp_numpy_vg(*f64))


def build_array_workloads(Workload):
    """W4, W5/float64, W5/float32 as Workload objects (``Workload`` passed in to avoid a cycle)."""
    x, y = w4_points()

    def w4_ref():
        v, dx, dy, t, u = _buffers(len(x), 5)
        return _concat_vg(rosen2_numpy(x, y, v, dx, dy, t, u))

    out = {"W4": Workload(
        "W4", f"batched 2-D Rosenbrock, value+gradient at {W4_POINTS:,} points", "batched",
        (x, y), make_rosen2, w4_ref, custom=dict(W4_TOOLS), baseline="numba-hand",
        points=W4_POINTS, rtol=1e-8, atol=1e-9)}
    for dtype, tol in ((np.float64, (1e-8, 1e-10)), (np.float32, (2e-4, 2e-5))):
        params, (X, Y) = w5_data(dtype)
        name = f"W5/{np.dtype(dtype).name}"
        sizes = W5_SIZES
        out[name] = Workload(
            name, f"MLP training step {sizes['inputs']}-{sizes['hidden']}-{sizes['classes']} tanh, "
            f"softmax cross-entropy, batch {sizes['batch']}, {np.dtype(dtype).name}: loss + "
            f"gradients + SGD update", "mlp", (X, Y), make_mlp_loss,
            (lambda params=params, X=X, Y=Y: w5_reference(params, X, Y)),
            custom=dict(W5_TOOLS), baseline="numpy-hand", rtol=tol[0], atol=tol[1],
            mode="step", params=params)
    return out
