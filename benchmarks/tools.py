"""One adapter per tool: ``build(tool, workload, value_only=False)`` returns ``(call, unpack)``.

``call(*workload.args)`` is what gets timed: the tool's own way of computing value and gradient from
the workload's inputs, including the conversions a user would need (PyTorch builds tensors from the
floats/arrays and returns Python numbers/arrays; JAX results are waited for with
``block_until_ready``).  ``unpack(out)`` turns the result into ``(float, 1-D ndarray)`` for the
correctness check (not timed).  A tool that is not installed raises ``Skip``.

Tools: gradc (numba backend), gradc-python, numba-hand, numpy-hand (hand-written baselines, see
``workloads``), jax, torch, autograd, sympy, symengine, casadi, pytensor.
"""
from __future__ import annotations

import importlib
import types

import numpy as np

TOOLS = ["gradc", "gradc-python", "numba-hand", "numpy-hand", "jax", "torch", "autograd", "sympy",
         "symengine", "casadi", "pytensor"]
BASELINE = "numba-hand"


class Skip(Exception):
    """The tool is not installed or does not apply; the message says why."""


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:                      # noqa: PERF203
        raise Skip(f"not installed ({e.__class__.__name__}: {e})") from None


def _scalar(v):
    return float(np.asarray(v, dtype=float).reshape(()))    # also 1x1 matrices (CasADi DM)


def to_vg(out):
    """(value, gradient) in any tool's types -> (float, 1-D float64 ndarray)."""
    v, g = out
    if isinstance(g, (tuple, list)):
        g = [_scalar(e) for e in g]
    return _scalar(v), np.asarray(g, dtype=float).ravel()


def flat_vg(out):
    """[value, g0, g1, ...] -> (float, ndarray)."""
    out = np.asarray(out, dtype=float).ravel()
    return float(out[0]), out[1:]


def to_v(out):
    return _scalar(out)


def build(tool, w, value_only=False):
    """Return ``(call, unpack)`` for ``tool`` on workload ``w``; raises Skip or any build error."""
    if tool in w.custom:                          # W4, W5: workload-specific adapters
        return w.custom[tool][1](w, "value" if value_only else w.mode)
    if w.custom:
        raise Skip(f"no adapter for {w.name}")
    if tool in w.hand:
        vg, v = w.hand[tool]
        return (v, to_v) if value_only else (vg, to_vg)
    if tool.endswith("-hand"):
        raise Skip("baseline not available (numba missing?)")
    builder = _BUILDERS[tool]
    return builder(w, value_only)


# ------------------------------------------------------------------------------------------ gradc
def _gradc(w, value_only, backend=None):
    gradc = _import("gradc")
    f = w.make(np)
    kw = {} if backend is None else {"backend": backend}
    if value_only:
        return gradc.compile(f, **kw), to_v
    return gradc.value_and_grad(f, **kw), to_vg


# -------------------------------------------------------------------------------------------- JAX
def _jax(w, value_only):
    jax = _import("jax")
    jax.config.update("jax_enable_x64", True)
    f = w.make(_import("jax.numpy"))
    argnums = tuple(range(w.n)) if w.kind == "scalars" else 0
    jf = jax.jit(f if value_only else jax.value_and_grad(f, argnums=argnums))
    block = jax.block_until_ready
    return (lambda *a: block(jf(*a))), (to_v if value_only else to_vg)


# ---------------------------------------------------------------------------------------- PyTorch
def _torch(w, value_only):
    torch = _import("torch")
    torch.set_num_threads(1)                     # like the pinned BLAS pools: one thread
    f = w.make(torch)
    f64 = torch.float64
    if value_only:
        if w.kind == "scalars":
            def call(*a):
                with torch.no_grad():
                    return f(*[torch.tensor(v, dtype=f64) for v in a]).item()
        else:
            def call(x):
                with torch.no_grad():
                    return f(torch.from_numpy(x)).item()
        return call, to_v
    if w.kind == "scalars":
        def call(*a):
            ts = [torch.tensor(v, dtype=f64, requires_grad=True) for v in a]
            out = f(*ts)
            return out.item(), tuple(g.item() for g in torch.autograd.grad(out, ts))
    else:
        def call(x):
            t = torch.from_numpy(x).requires_grad_()
            out = f(t)
            (g,) = torch.autograd.grad(out, (t,))
            return out.item(), g.numpy()
    return call, to_vg


# ----------------------------------------------------------------------------------- HIPS autograd
def _autograd(w, value_only):
    ag = _import("autograd")
    f = w.make(_import("autograd.numpy"))
    if value_only:
        return f, to_v
    argnum = tuple(range(w.n)) if w.kind == "scalars" else 0
    return ag.value_and_grad(f, argnum=argnum), to_vg


# ------------------------------------------------------------------------------ SymPy / SymEngine
def _symbols(mod, w):
    names = "a b c".split() if w.kind == "scalars" else [f"x{i}" for i in range(w.n)]
    syms = [mod.Symbol(s) for s in names]
    f = (w.make_scalar or w.make)(mod)
    expr = f(*syms) if w.kind == "scalars" else f(syms)
    return syms, expr


def _sympy(w, value_only):
    sp = _import("sympy")
    syms, expr = _symbols(sp, w)
    exprs = [expr] if value_only else [expr] + [sp.diff(expr, s) for s in syms]
    args = syms if w.kind == "scalars" else [syms]
    fn = sp.lambdify(args, exprs, modules="math", cse=True)
    return fn, (lambda out: float(out[0])) if value_only else flat_vg


def _symengine(w, value_only):
    se = _import("symengine")
    syms, expr = _symbols(se, w)
    exprs = [expr] if value_only else [expr] + [expr.diff(s) for s in syms]
    errors = []
    for backend in ("llvm", "lambda"):
        try:
            fn = se.Lambdify(syms, exprs, backend=backend, cse=True)
            break
        except Exception as e:                     # llvm backend not compiled in
            errors.append(f"{backend}: {e}")
    else:
        raise RuntimeError("; ".join(errors))
    _symengine.backend = backend
    call = (lambda *a: fn(a)) if w.kind == "scalars" else fn
    return call, (lambda out: float(np.ravel(out)[0])) if value_only else flat_vg


# ----------------------------------------------------------------------------------------- CasADi
def _casadi(w, value_only):
    ca = _import("casadi")
    ns = types.SimpleNamespace(sum=ca.sum1, tanh=ca.tanh)
    f = w.make(ns)
    if w.kind == "scalars":
        syms = [ca.SX.sym(s) for s in "abc"]
        expr, x = f(*syms), ca.vertcat(*syms)
    else:
        x = ca.SX.sym("x", w.n)
        syms, expr = [x], f(x)
    outs = [expr] if value_only else [expr, ca.gradient(expr, x)]
    fn = ca.Function("f", syms, outs)
    return fn, (to_v if value_only else to_vg)


# --------------------------------------------------------------------------------------- PyTensor
def _pytensor(w, value_only):
    pytensor = _import("pytensor")
    pt = _import("pytensor.tensor")
    f = w.make(pt)
    if w.kind == "scalars":
        syms = [pt.dscalar(s) for s in "abc"]
        expr = f(*syms)
        grads = [] if value_only else pytensor.grad(expr, syms)
        fn = pytensor.function(syms, [expr] + grads)
        return fn, (lambda out: float(out[0])) if value_only else flat_vg
    x = pt.dvector("x")
    expr = f(x)
    outs = [expr] if value_only else [expr, pytensor.grad(expr, x)]
    fn = pytensor.function([x], outs)
    return fn, (lambda out: float(out[0])) if value_only else to_vg


_BUILDERS = {
    "gradc": _gradc,
    "gradc-python": lambda w, v: _gradc(w, v, backend="python"),
    "jax": _jax, "torch": _torch, "autograd": _autograd, "sympy": _sympy,
    "symengine": _symengine, "casadi": _casadi, "pytensor": _pytensor,
}


def tool_label(tool, w=None):
    """Display name, with the backend where the tool picked one at build time."""
    if w is not None and tool in w.custom:
        return w.custom[tool][0]
    if tool == "symengine" and getattr(_symengine, "backend", None):
        return f"symengine ({_symengine.backend})"
    if tool == "gradc":
        return "gradc (numba)"
    return tool
