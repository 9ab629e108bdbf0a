"""The workloads W1-W3 (W4, W5: see ``workloads_arrays``): the function (written once, over a math namespace), its inputs, a reference
result, and the "careful human" baselines: a hand-written numba adjoint and hand-written NumPy/Python.

Every function is built by a factory ``make(xp)`` where ``xp`` supplies ``sum`` and ``tanh`` (NumPy,
jax.numpy, torch, autograd.numpy, ...), so every tool differentiates the same program.  ``make_scalar``
builds the same function over an indexable of scalar symbols (for SymPy / SymEngine, which have no
vector slicing); for W1 and W3 it is the same factory.

W4 (batched Rosenbrock) and W5 (MLP training step) live in ``workloads_arrays``: their tools are
workload-specific adapters (``Workload.custom``), and ``build_workloads`` adds them here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def _numba_njit():
    """numba's njit, imported when a baseline is built (not on import of this module: the
    compile-scale cells import it to build their programs, and gradc's native path must
    meet a process without numba, as a user's does); None where numba is missing."""
    try:
        from numba import njit
    except ImportError:                     # the harness still runs the other tools
        return None
    return njit


@dataclass
class Workload:
    name: str
    title: str
    kind: str                               # "scalars": f(a, b, c); "vector": f(x) with x a 1-D array;
                                            # "batched" (W4), "mlp" (W5): see workloads_arrays
    args: tuple                             # the inputs every tool is called with
    make: Callable                          # make(xp) -> f
    reference: Callable                     # () -> (value, gradient as 1-D array)
    hand: dict = field(default_factory=dict)   # tool name -> (value_and_grad fn, value fn)
    make_scalar: Callable | None = None     # make over scalar symbols (defaults to make)
    n: int = 0                              # number of inputs (vector length or scalar count)
    custom: dict = field(default_factory=dict)  # tool -> (label, builder(w, mode)) (W4, W5)
    baseline: str = "numba-hand"            # the ratio column is relative to this tool
    points: int = 0                         # W4: points per call (a points/s column)
    rtol: float = 1e-8                      # agreement with the reference
    atol: float = 1e-10
    mode: str = "vg"                        # what a custom builder times: "vg" or "step" (W5)
    params: tuple = ()                      # W5: initial parameters (each tool updates a copy)


def _jit(fn):
    njit = _numba_njit()
    return njit(cache=False, error_model="numpy")(fn) if njit else None


# --------------------------------------------------------------------------------------------- W1
def make_w1(xp=None):
    def J(a, b, c):
        return 3.0 * (a + b * c)
    return J


def w1_python(a, b, c):
    """Hand-written Python: value and gradient of J = 3(a + b c)."""
    return 3.0 * (a + b * c), (3.0, 3.0 * c, 3.0 * b)


def w1_python_value(a, b, c):
    return 3.0 * (a + b * c)


def _w1_numba_src(a, b, c):
    u = b * c
    J = 3.0 * (a + u)
    dv = 3.0
    return J, (dv, dv * c, dv * b)


def _w1_numba_value(a, b, c):
    return 3.0 * (a + b * c)


# --------------------------------------------------------------------------------------------- W2
def make_rosen(xp):
    def rosen(x):
        return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return rosen


def make_rosen_scalar(xp=None):
    def rosen(x):
        s = 0.0
        for i in range(len(x) - 1):
            s = s + 100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
        return s
    return rosen


def rosen_numpy(x):
    """Hand-written NumPy value and gradient (the algebra of scipy.optimize.rosen_der)."""
    xm, xl, xr = x[1:-1], x[:-2], x[2:]
    t = x[1:] - x[:-1] ** 2
    g = np.empty_like(x)
    g[1:-1] = 200.0 * (xm - xl ** 2) - 400.0 * (xr - xm ** 2) * xm - 2.0 * (1.0 - xm)
    g[0] = -400.0 * x[0] * (x[1] - x[0] ** 2) - 2.0 * (1.0 - x[0])
    g[-1] = 200.0 * (x[-1] - x[-2] ** 2)
    return np.sum(100.0 * t ** 2 + (1.0 - x[:-1]) ** 2), g


def rosen_numpy_value(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _rosen_numba_src(x):
    n = x.shape[0]
    g = np.zeros(n)
    f = 0.0
    for i in range(n - 1):
        t = x[i + 1] - x[i] * x[i]
        u = 1.0 - x[i]
        f += 100.0 * t * t + u * u
        g[i] += -400.0 * t * x[i] - 2.0 * u
        g[i + 1] += 200.0 * t
    return f, g


def _rosen_numba_value(x):
    f = 0.0
    for i in range(x.shape[0] - 1):
        t = x[i + 1] - x[i] * x[i]
        u = 1.0 - x[i]
        f += 100.0 * t * t + u * u
    return f


# --------------------------------------------------------------------------------------------- W3
W3_X0, W3_Y = 0.3, 0.5


def make_chain(depth):
    """W3 at a given depth: h -> tanh(p[2i] h + p[2i+1]), loss 0.5 (h - y)^2, gradient w.r.t. p."""
    def make(xp):
        tanh = xp.tanh

        def chain(p):
            h = W3_X0
            for i in range(depth):
                h = tanh(p[2 * i] * h + p[2 * i + 1])
            return 0.5 * (h - W3_Y) ** 2
        return chain
    return make


def chain_python(p):
    """Hand-written Python reverse mode over a list copy of p (math.tanh is faster on floats)."""
    q = p.tolist()
    depth = len(q) // 2
    hs = [W3_X0]
    h = W3_X0
    for i in range(depth):
        h = math.tanh(q[2 * i] * h + q[2 * i + 1])
        hs.append(h)
    g = [0.0] * len(q)
    dh = h - W3_Y
    for i in range(depth - 1, -1, -1):
        hi = hs[i + 1]
        dz = dh * (1.0 - hi * hi)
        g[2 * i] = dz * hs[i]
        g[2 * i + 1] = dz
        dh = dz * q[2 * i]
    return 0.5 * (h - W3_Y) ** 2, np.array(g)


def chain_python_value(p):
    q = p.tolist()
    h = W3_X0
    for i in range(len(q) // 2):
        h = math.tanh(q[2 * i] * h + q[2 * i + 1])
    return 0.5 * (h - W3_Y) ** 2


def _chain_numba_src(p):
    depth = p.shape[0] // 2
    hs = np.empty(depth + 1)
    hs[0] = 0.3
    for i in range(depth):
        hs[i + 1] = np.tanh(p[2 * i] * hs[i] + p[2 * i + 1])
    h = hs[depth]
    g = np.empty(p.shape[0])
    dh = h - 0.5
    for i in range(depth - 1, -1, -1):
        hi = hs[i + 1]
        dz = dh * (1.0 - hi * hi)
        g[2 * i] = dz * hs[i]
        g[2 * i + 1] = dz
        dh = dz * p[2 * i]
    return 0.5 * (h - 0.5) ** 2, g


def _chain_numba_value(p):
    h = 0.3
    for i in range(p.shape[0] // 2):
        h = np.tanh(p[2 * i] * h + p[2 * i + 1])
    return 0.5 * (h - 0.5) ** 2


assert (W3_X0, W3_Y) == (0.3, 0.5), "the numba baselines hard-code x0 and y"


# ---------------------------------------------------------------------------------------- registry
def chain_params(depth, seed=0):
    """Parameters for W3: weights in [0.5, 1.5], biases in [-0.5, 0.5] (gradients do not vanish)."""
    rng = np.random.default_rng(seed)
    p = np.empty(2 * depth)
    p[0::2] = rng.uniform(0.5, 1.5, depth)
    p[1::2] = rng.uniform(-0.5, 0.5, depth)
    return p


def complex_step(f, x, h=1e-30):
    """Reference value and gradient by complex-step differentiation (exact to rounding)."""
    grad = np.empty(len(x))
    for k in range(len(x)):
        xc = x.astype(complex)
        xc[k] += 1j * h
        grad[k] = f(xc).imag / h
    return float(f(x)), grad


def build_workloads():
    """The W1-W3 workloads, with their numba baselines jitted (compiled on first call)."""
    x20 = np.random.default_rng(0).uniform(-2.0, 2.0, 20)
    p100 = chain_params(50)

    def scipy_ref():
        from scipy.optimize import rosen, rosen_der
        return float(rosen(x20)), rosen_der(x20)

    w1 = Workload("W1", "J = 3(a + b·c): value+gradient per-call latency (scalar floats)", "scalars",
                  (1.5, -0.75, 2.25), make_w1,
                  lambda: (w1_python(1.5, -0.75, 2.25)[0], np.array(w1_python(1.5, -0.75, 2.25)[1])),
                  n=3)
    w2 = Workload("W2", "extended Rosenbrock, n = 20: value+gradient", "vector", (x20,), make_rosen,
                  scipy_ref, make_scalar=make_rosen_scalar, n=20)
    w3 = Workload("W3", "tanh chain, depth 50, 100 parameters: value+gradient of ½(h−y)²", "vector",
                  (p100,), make_chain(50), lambda: complex_step(make_chain(50)(np), p100), n=100)
    w1.hand = {"numba-hand": (_jit(_w1_numba_src), _jit(_w1_numba_value)),
               "numpy-hand": (w1_python, w1_python_value)}
    w2.hand = {"numba-hand": (_jit(_rosen_numba_src), _jit(_rosen_numba_value)),
               "numpy-hand": (rosen_numpy, rosen_numpy_value)}
    w3.hand = {"numba-hand": (_jit(_chain_numba_src), _jit(_chain_numba_value)),
               "numpy-hand": (chain_python, chain_python_value)}
    if _numba_njit() is None:
        for w in (w1, w2, w3):
            del w.hand["numba-hand"]
    from .workloads_arrays import build_array_workloads
    return {**{w.name: w for w in (w1, w2, w3)}, **build_array_workloads(Workload)}
