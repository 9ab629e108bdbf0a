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

>>> import gradc
>>> gradc.hessian(lambda x, y: x * x * y, backend="python")(1.0, 2.0).tolist()
[[4.0, 2.0], [2.0, 0.0]]
>>> gradc.hvp(lambda x, y: x * x * y, backend="python")(1.0, 2.0, 1.0, 0.5)
(5.0, 2.0)
"""
from __future__ import annotations

import numpy as np

from . import errors, higher
from .api import GradcFunction
from .emit import emit_module
from .optimize import optimize

_TANGENT_KINDS = ("hvp", "jvp")
_MODES = ("auto", "forward", "reverse")


class HigherFunction(GradcFunction):
    """A compiled higher-order transformation of ``fn`` (see the module docstring)."""

    def __init__(self, fn, kind, argnums=None, backend="numba", mode="auto", arrays="auto"):
        if mode not in _MODES:
            raise errors.ArgumentError(f"mode must be one of {_MODES}, not {mode!r}.")
        super().__init__(fn, kind, argnums, backend, arrays)
        self._mode = mode

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

    def lower(self, shapes, dtype="float64", out_params=False):
        """As :meth:`GradcFunction.lower`; for hvp/jvp ``shapes`` includes the tangents'."""
        nargs = self._primal_count(len(shapes)) if self._kind in _TANGENT_KINDS else len(shapes)
        multiple = self._kind in ("jvp", "jacobian")
        # hvp and jvp run on arrays traced whole (loops past a few hundred elements, as
        # value_and_grad does); hessian and jacobian build their output entry by entry.
        arrays = None if self._kind in _TANGENT_KINDS else "unroll"
        traced = self._trace(shapes[:nargs], dtype, multiple=multiple, arrays=arrays)
        graph = optimize(self._transform(traced, nargs))
        source, func_name, entry_name = emit_module(graph, self._name, self._kind, traced.origin)
        if self._kind == "jacobian":
            argnums, _ = self._argnums_for(nargs)
            mode = higher.jacobian_mode(traced, argnums, self._mode)
            n, m = len(higher.wrt_inputs(traced, argnums)), len(traced.outputs)
            how = ("forward mode: one tangent sweep per input scalar" if mode == "forward" else
                   "reverse mode: one adjoint sweep per output")
            head, rest = source.split("\n", 1)
            source = f"{head}\n# jacobian by {how} ({n} inputs, {m} outputs).\n{rest}"
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
scalars than outputs, else reverse), ``"forward"`` or ``"reverse"``.
""")
