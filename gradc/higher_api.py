"""The public higher-order transformations: hessian, value_grad_hessian, hvp, jvp, jacobian.

Each returns a :class:`HigherFunction`, a :class:`~gradc.api.GradcFunction`
whose transform comes from :mod:`gradc.higher`; tracing, optimizing, emitting,
the backends and the cache are the same as for ``value_and_grad``.

Calling conventions (``x...`` are ``f``'s arguments, the differentiated ones
chosen by ``argnums`` as in :func:`gradc.grad`):

- ``hessian(f)(x...) -> H``: a NumPy array, ``s + s`` for one differentiated
  array argument of shape ``s``, else ``(n, n)`` over the differentiated scalars
  (array arguments flattened, in argument order).
- ``value_grad_hessian(f)(x...) -> (value, gradient, H)``, the gradient as
  ``value_and_grad`` gives it.
- ``hvp(f)(x..., v...) -> H @ v``: one tangent ``v`` per differentiated
  argument, of its shape, after the primal arguments; the result has the
  gradient's structure (``hvp(f)(x, v) -> array`` for one array argument).
- ``jvp(f)(x..., v...) -> (value, directional derivative)``, same argument
  order; ``f`` may return a tuple or array (each output gets its tangent).
- ``jacobian(f, mode="auto")(x...) -> J`` of shape ``out_shape + in_shape``
  for ``f`` returning a float, a tuple of floats (``out_shape = (m,)``) or an
  array; forward mode when there are fewer input scalars than outputs, else
  reverse (``mode="forward"``/``"reverse"`` forces one). ``.source`` says which.
- ``hessian(f, sparse=True)`` and ``jacobian(f, sparse=True)`` return a
  ``scipy.sparse.csr_matrix`` of shape ``(n, n)`` / ``(m, n)`` (``m`` outputs and
  ``n`` differentiated scalars, both flattened in C order). The pattern is found
  once per signature when gradc traces: every entry that is not a structural zero
  is stored (explicit zeros included), so every call's matrix has the same
  ``indices`` and ``indptr``, what IPOPT's structure callbacks and SciPy's
  ``trust-constr`` take. The compiled code computes the stored entries only, in
  CSR order; CSR (not COO) because that row-major data is CSR's as it stands (no
  conversion per call), and CSR is what products ``H @ p`` and the optimizers
  want. SciPy is imported only when ``sparse=True`` is used.

>>> import gradc
>>> gradc.hessian(lambda x, y: x * x * y, backend="python")(1.0, 2.0).tolist()
[[4.0, 2.0], [2.0, 0.0]]
>>> gradc.hvp(lambda x, y: x * x * y, backend="python")(1.0, 2.0, 1.0, 0.5)
(5.0, 2.0)
"""
from __future__ import annotations

import numpy as np

from . import errors, higher
from .api import GradcFunction, _NeedsConversion, _shapes
from .emit import emit_module

_TANGENT_KINDS = ("hvp", "jvp")
_SPARSE_KINDS = ("hessian", "jacobian")
_MODES = ("auto", "forward", "reverse")


def _scipy_sparse():
    """scipy.sparse, imported here only: gradc itself never needs SciPy."""
    try:
        import scipy.sparse
    except ImportError:
        raise errors.GradcError(
            f"{errors.where()}: sparse=True returns scipy.sparse matrices, and SciPy is not "
            "installed: pip install scipy (or leave sparse=False for NumPy arrays).") from None
    return scipy.sparse


class HigherFunction(GradcFunction):
    """A compiled higher-order transformation of ``fn`` (see the module docstring)."""

    def __init__(self, fn, kind, argnums=None, backend="numba", mode="auto", arrays="auto",
                 sparse=False):
        if mode not in _MODES:
            raise errors.ArgumentError(f"mode must be one of {_MODES}, not {mode!r}.")
        if sparse is not True and sparse is not False:
            raise errors.ArgumentError(f"sparse must be True or False, not {sparse!r}.")
        if sparse and kind not in _SPARSE_KINDS:
            raise errors.ArgumentError(
                f"{errors.where()}: sparse=True is for gradc.hessian and gradc.jacobian, "
                f"not gradc.{kind}.")
        super().__init__(fn, kind, argnums, backend, arrays)
        self._mode = mode
        # sparse: scipy.sparse, and the pattern of each signature (set where it is lowered)
        self._sparse = _scipy_sparse() if sparse else None
        self._patterns: dict[tuple, higher.Sparsity] = {}

    # --- arguments: hvp and jvp take tangents after the primal arguments ----------------
    def _primal_count(self, total):
        argnums = self._argnums
        if argnums is None:
            nprim, ok = total // 2, total % 2 == 0
        else:
            nprim = total - (1 if isinstance(argnums, int) else len(argnums))
            ok = nprim >= 0
        if not ok:
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.{self._kind} of {self._name}() takes the arguments "
                "followed by one tangent per differentiated argument (argnums); got "
                f"{total} value(s).")
        return nprim

    def _bind(self, args, kwargs):
        if self._kind not in _TANGENT_KINDS:
            return super()._bind(args, kwargs)
        if kwargs:
            raise errors.ArgumentError(
                f"{errors.where()}: pass the arguments of gradc.{self._kind} by position.")
        nprim = self._primal_count(len(args))
        primals = super()._bind(args[:nprim], {})
        if len(primals) != nprim:
            raise errors.ArgumentError(
                f"{errors.where()}: gradc.{self._kind} needs every argument of {self._name}() "
                "passed explicitly, then the tangents.")
        tangents = tuple(self._check_number(nprim + k, v) for k, v in enumerate(args[nprim:]))
        argnums, _ = self._argnums_for(nprim)
        for p, v in zip(argnums, tangents):
            if _shape(v) != _shape(primals[p]):
                raise errors.ArgumentError(
                    f"{errors.where()}: the tangent of argument {p} of {self._name}() has shape "
                    f"{_shape(v)}, the argument {_shape(primals[p])}.")
        return primals + tangents

    # --- calling: sparse results ---------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self._sparse is None:
            return super().__call__(*args, **kwargs)
        # The compiled code returns the stored entries; the pattern of this signature (found
        # when it was lowered) makes them a matrix. Never the class switch to numba's bare
        # dispatcher (_call_full's), whose result would be the entries alone.
        shapes = _shapes(args)
        spec = None if kwargs else self._specs.get(shapes)
        data = None
        if spec is not None and spec.entry is not None:  # the quick path, as GradcFunction's
            try:
                data = spec.entry(*args)
            except _NeedsConversion:
                pass  # ints, float32, read-only arrays: converted below
        if data is None:
            values = self._bind(args, kwargs)
            shapes = _shapes(values)
            data = self._spec(shapes).call(*values)
        pattern = self._patterns[shapes]
        # copies of the index arrays: a matrix edited in place (eliminate_zeros, resize)
        # must not change the pattern of later calls
        return self._sparse.csr_matrix((data, pattern.indices.copy(), pattern.indptr.copy()),
                                       shape=pattern.shape)

    def _simple_signature(self):
        # hvp/jvp calls always pass through _bind (numba's own binding does not know the tangents)
        return self._kind not in _TANGENT_KINDS and super()._simple_signature()

    def _default_spec(self):
        if self._specs or self._kind not in _TANGENT_KINDS or not super()._simple_signature():
            return super()._default_spec()
        nprim = len(self._signature.parameters)
        argnums, _ = self._argnums_for(nprim)
        return self._spec((None,) * (nprim + len(argnums)))

    # --- building -------------------------------------------------------------------------
    def _transform(self, graph, nargs):
        argnums, bare = self._argnums_for(nargs)
        kind = self._kind
        if kind in ("hessian", "value_grad_hessian"):
            return higher.hessian(graph, argnums, bare, with_value_grad=kind != "hessian")
        if kind == "hvp":
            return higher.hvp(graph, argnums, bare)
        if kind == "jvp":
            return higher.jvp(graph, argnums)
        return higher.jacobian(graph, argnums, self._mode)

    def _check_number(self, i, value):
        value = super()._check_number(i, value)
        # higher orders unroll arrays into float64 scalar code: float32 arrives as float64
        return value.astype(np.float64) if isinstance(value, np.ndarray) else value

    def lower(self, shapes, dtype="float64", out_params=False, capture=False):
        """As :meth:`GradcFunction.lower`; for hvp/jvp ``shapes`` includes the tangents'."""
        nargs = self._primal_count(len(shapes)) if self._kind in _TANGENT_KINDS else len(shapes)
        multiple = self._kind in ("jvp", "jacobian")
        # hvp and jvp run on arrays traced whole (loops past a few hundred elements, as
        # value_and_grad does); hessian and jacobian build their output entry by entry.
        traced = self._trace(shapes[:nargs], dtype, multiple=multiple, capture=capture,
                             scalar=self._kind not in _TANGENT_KINDS)
        graph = self._differentiated(traced, nargs, shapes, dtype)
        argnums, _ = self._argnums_for(nargs)
        n, m = len(higher.wrt_inputs(traced, argnums)), len(traced.outputs)
        kind, notes = self._kind, []
        if self._kind == "jacobian":
            mode = higher.jacobian_mode(traced, argnums, self._mode)
            how = ("forward mode: one tangent sweep per input scalar" if mode == "forward" else
                   "reverse mode: one adjoint sweep per output")
            notes.append(f"# jacobian by {how} ({n} inputs, {m} outputs).")
        if self._sparse is not None:
            rows = n if self._kind == "hessian" else m
            graph, pattern = higher.sparse(graph, (rows, n))
            self._patterns[tuple(shapes)] = pattern
            kind = f"sparse_{self._kind}"
            notes.append(f"# sparse: returns the CSR data of a {rows} x {n} matrix, its "
                         f"{pattern.nnz} stored entries in row-major order.")
        source, func_name, entry_name = emit_module(graph, self._name, kind, traced.origin)
        if notes:
            head, rest = source.split("\n", 1)
            source = "\n".join([head, *notes, rest])
        return graph, source, func_name, entry_name


def _shape(value):
    return None if isinstance(value, float) else value.shape


def _transformation(kind, doc):
    def transform(fn=None, *, argnums=None, backend="numba", **options):
        if fn is None:  # used with arguments: @gradc.hessian(argnums=0)
            return lambda f: HigherFunction(f, kind, argnums, backend, **options)
        return HigherFunction(fn, kind, argnums, backend, **options)

    transform.__name__ = transform.__qualname__ = kind
    transform.__doc__ = doc
    return transform


hessian = _transformation("hessian", """``f -> H``: the Hessian as a NumPy array.

Shape ``s + s`` for one differentiated array argument of shape ``s``, else
``(n, n)`` over the differentiated scalars. Each symmetric entry is computed
once, sharing every subexpression with the value and the gradient.
``sparse=True``: a ``scipy.sparse.csr_matrix`` of shape ``(n, n)`` holding the
entries that are not structural zeros (see the module docstring).
""")
value_grad_hessian = _transformation("value_grad_hessian", """``f -> (value, gradient, H)``.

One fused function; see :func:`hessian` for ``H``'s shape.
""")
hvp = _transformation("hvp", """``f -> hvp(x..., v...) = H(x) @ v``, never forming ``H`` (forward-over-reverse).

One tangent per differentiated argument, of its shape; the result is shaped like
the gradient. ``scipy.optimize.minimize(..., hessp=gradc.hvp(f))`` works as is.
""")
jvp = _transformation("jvp", """``f -> jvp(x..., v...) = (f(x), df(x)[v])``: forward mode.

``f`` may return a float, a tuple or an array; the derivative has the same structure.
""")
jacobian = _transformation("jacobian", """``f -> J`` for ``f`` returning floats, a tuple or an array.

Shape ``out_shape + in_shape``. ``mode="auto"`` (forward when there are fewer input
scalars than outputs, else reverse), ``"forward"`` or ``"reverse"``. ``sparse=True``:
a ``scipy.sparse.csr_matrix`` of shape ``(m, n)`` (see the module docstring).
""")
