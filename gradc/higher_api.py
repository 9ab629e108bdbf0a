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

Argument trees (tuples, lists and dicts of floats and arrays, nested, as for
``value_and_grad``; dict keys in sorted order) are taken by all of them, with JAX's
result structures: ``jvp``'s tangents and ``hvp``'s ``v`` are trees of the primals'
structure, and so are their results (``jvp``'s derivative has the structure of
``f``'s result, which may be a tree too). ``jacobian`` nests as ``jax.jacobian``
does: the tree of ``f``'s result, holding at each leaf the tree of the
differentiated argument (a tuple of them for several ``argnums``), whose leaves are
blocks of shape ``out_leaf_shape + in_leaf_shape``. ``hessian`` nests as
``jax.hessian``: the argument's tree, holding at each leaf the argument's tree again,
blocks of shape ``leaf_i_shape + leaf_j_shape`` (floats where both are floats). A
call without trees keeps the flat conventions above. ``sparse=True`` with trees
returns the flat matrix over the leaves, in their order.

Programs whose every op has a scalar form are unrolled before differentiating
(gradc/unroll.py), and each entry of ``H`` or ``J`` is its own expression: the fast
path, with its structural zeros. For the others (``np.sort``, ``np.linalg.solve``,
...) the whole-array rules build the matrix at each call: ``H`` from ``n`` columns of
a compiled ``hvp``, ``J`` from ``n`` columns of a compiled ``jvp`` (forward mode) or
``m`` rows of a compiled vector-Jacobian product (reverse mode), whichever takes fewer
calls (``mode=`` forces one). Those programs are traced whole, so they compile once
per rank, not per size. ``sparse=True`` then stores every entry (no structural zero is
known), and there is no single emitted program to show, map or nest: ``.source`` is
the column program's, and ``gradc show`` / ``vmap`` / nesting say so.

>>> import gradc
>>> gradc.hessian(lambda x, y: x * x * y, backend="python")(1.0, 2.0).tolist()
[[4.0, 2.0], [2.0, 0.0]]
>>> gradc.hvp(lambda x, y: x * x * y, backend="python")(1.0, 2.0, 1.0, 0.5)
(5.0, 2.0)
"""
from __future__ import annotations

import inspect

import numpy as np

from . import errors, higher, trees
from .api import (CapturedArrayChanged, GradcFunction, _is_tree, _leaf_names, _NeedsConversion,
                  _shapes, _Spec)
from .emit import emit_module
from .trace import Tracer, identifier_or_none

_TANGENT_KINDS = ("hvp", "jvp")
_SPARSE_KINDS = ("hessian", "jacobian")
#: The kinds that unroll their trace before differentiating, where every op can: the
#: others are assembled from compiled columns (_Assembled).
_MATRIX_KINDS = ("hessian", "value_grad_hessian", "jacobian")
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
        self._columns: dict[tuple, GradcFunction] = {}  # what _Assembled calls, made once
        self._stash = None  # (shapes, capture, traced): _spec's trace, for lower() to reuse

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
        if self._needs_trees(args, kwargs):
            return self._call_tree(args, kwargs)
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

    # --- argument trees --------------------------------------------------------------------
    def _needs_trees(self, args, kwargs):
        """Whether a call holds an argument tree (a tuple, a dict, a list of more than numbers)."""
        return any(map(_is_tree, args)) or any(map(_is_tree, kwargs.values()))

    def _call_tree(self, args, kwargs, out=None):
        """A call with argument trees: the flat transformation of the leaves (one
        :class:`_TreeCall` per structure), its results put back into JAX's structures."""
        if self._kind in _TANGENT_KINDS:
            if kwargs:
                raise errors.ArgumentError(
                    f"{errors.where()}: pass the arguments of gradc.{self._kind} by position.")
            nprim = self._primal_count(len(args))
            primals = self._positional(args[:nprim], {})
            if len(primals) != nprim:
                raise errors.ArgumentError(
                    f"{errors.where()}: gradc.{self._kind} needs every argument of "
                    f"{self._name}() passed explicitly, then the tangents.")
            tangents = args[nprim:]
        else:
            primals, tangents = self._positional(args, kwargs), ()
        structure, leaves = [], []
        for i, value in enumerate(primals):
            found, treedef = trees.flatten(value)
            leaves.extend(self._check_leaf(i, treedef, k, leaf) for k, leaf in enumerate(found))
            structure.append(treedef)
        argnums, _ = self._argnums_for(len(primals))
        tangent_leaves = []
        for p, value in zip(argnums, tangents):
            tangent_leaves.extend(self._tangent_leaves(p, structure[p], primals[p], value))
        key = tuple(structure)
        call = self._tree_calls.get(key)
        if call is None:
            call = self._tree_calls[key] = _TreeCall(self, structure)
        return call(leaves, tangent_leaves)

    def _tangent_leaves(self, p, treedef, primal, tangent):
        """The leaves of argument ``p``'s tangent, which must have the argument's structure
        and leaf shapes (JAX's rule for jvp and hvp)."""
        found, tangent_def = trees.flatten(tangent)
        if tangent_def != treedef:
            raise errors.ArgumentError(
                f"{errors.where()}: the tangent of argument {p} of {self._name}() is "
                f"{trees.describe(tangent_def)}; it must have the argument's structure, "
                f"{trees.describe(treedef)}.")
        leaves = [self._check_leaf(p, treedef, k, leaf) for k, leaf in enumerate(found)]
        for path, v, x in zip(trees.paths(treedef), leaves, trees.flatten(primal)[0]):
            if _leaf_shape(v) != _leaf_shape(x):
                raise errors.ArgumentError(
                    f"{errors.where()}: the tangent of argument {p} of {self._name}() has "
                    f"shape {_leaf_shape(v)} at {path or 'its root'}, the argument "
                    f"{_leaf_shape(x)}.")
        return leaves

    # --- building -------------------------------------------------------------------------
    def _spec(self, shapes, dtype="float64"):
        """As :meth:`GradcFunction._spec`; a Hessian or Jacobian whose trace does not unroll
        is assembled from compiled columns at each call (:class:`_Assembled`)."""
        key = shapes if dtype == "float64" else (shapes, dtype)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        if self._kind not in _MATRIX_KINDS:
            return super()._spec(shapes, dtype)
        traced = self._trace(shapes, dtype, multiple=self._kind == "jacobian", capture=True,
                             scalar=True)
        if not _has_arrays(traced):  # unrolled: today's path, entry by entry
            self._stash = (tuple(shapes), True, traced)
            try:
                return super()._spec(shapes, dtype)
            finally:
                self._stash = None
        spec = self._specs[key] = _Assembled(self, traced, tuple(shapes)).spec()
        return spec

    def _column_function(self, kind, argnums, nargs):
        """The transformation whose calls give the columns (or rows) of an assembled matrix:
        ``hvp``, ``jvp``, ``vjp`` (the gradient of ``<f(x), u>`` in ``x``) or
        ``value_and_grad``, made once per kind and arguments and reused for every shape
        (traced whole, so compiled once per rank)."""
        key = (kind, argnums, nargs)
        found = self._columns.get(key)
        if found is None:
            if kind in _TANGENT_KINDS:
                found = HigherFunction(self._fn, kind, argnums, self._backend,
                                       arrays=self._arrays)
            elif kind == "vjp":
                pulled = _Pulled(self._fn, self._arg_names(nargs))
                found = GradcFunction(pulled, "grad", argnums, self._backend, self._arrays)
            else:
                found = GradcFunction(self._fn, kind, argnums, self._backend, self._arrays)
            self._columns[key] = found
        return found

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
        stash, self._stash = self._stash, None
        if stash is not None and stash[:2] == (tuple(shapes), capture):
            traced = stash[2]  # _spec traced it to choose the path
        else:
            # hvp and jvp run on arrays traced whole (loops past a few hundred elements, as
            # value_and_grad does); hessian and jacobian build their output entry by entry
            # where the trace unrolls.
            traced = self._trace(shapes[:nargs], dtype, multiple=multiple, capture=capture,
                                 scalar=self._kind not in _TANGENT_KINDS)
        if self._kind in _MATRIX_KINDS and _has_arrays(traced):
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: {self._name}() uses {_no_scalar_form(traced)}, which has "
                f"no scalar form, so gradc.{self._kind} computes it at each call from compiled "
                "columns (hvp, jvp or vector-Jacobian products) and has no single emitted "
                "program for gradc show, vmap or a gradc function that calls it. Call it "
                "directly, or use gradc.hvp / gradc.jvp, which are one program.")
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


def _leaf_shape(value):
    """A leaf's shape, ``()`` for a float (traced or not)."""
    return tuple(value.shape or ()) if isinstance(value, Tracer) else np.shape(value)


def _has_arrays(graph):
    """Whether a trace still holds array nodes (its ops did not all unroll into scalars)."""
    return any(node.shape for node in graph.nodes)


def _size(shape):
    """How many scalars an argument of this shape (None: a float) holds."""
    return 1 if shape is None else int(np.prod(shape))


def _no_scalar_form(graph):
    """The ops of a whole-array trace that gradc/unroll.py has no scalar form for, as text."""
    from .unroll import _without_scalar_form

    return ", ".join(_without_scalar_form(graph)) or "an op"


# --- matrices of programs that do not unroll: assembled from compiled columns ---------------
class _Assembled:
    """A Hessian or Jacobian at one signature whose trace has an op without a scalar form:
    built at each call from a compiled whole-array program, one call per column or row.

    - Hessian: ``H[:, j] = hvp(x, e_j)``, ``n`` calls (forward over reverse, the rule
      ``hvp`` compiles once per rank). ``value_grad_hessian`` adds one ``value_and_grad``.
    - Jacobian, forward mode: ``J[:, j] = jvp(x, e_j)``, ``n`` calls; reverse mode:
      ``J[k, :] = vjp(x, e_k)``, ``m`` calls, the gradient of ``<f(x), e_k>``. ``auto``
      takes forward when ``n < m``, as the unrolled path does.

    ``e_j`` runs over the differentiated scalars in argument order (arrays in C order),
    so the matrix has the unrolled path's shape and layout, and ``sparse=True`` a dense
    pattern (every entry stored: no structural zero is known here).
    """

    def __init__(self, owner, traced, shapes):
        self.owner, self.shapes = owner, shapes
        self.argnums, _ = owner._argnums_for(len(shapes))
        self.tangent_shapes = tuple(shapes[p] for p in self.argnums)
        self.n = sum(map(_size, self.tangent_shapes))
        single = len(self.argnums) == 1 and self.tangent_shapes[0] is not None
        self.in_shape = tuple(self.tangent_shapes[0]) if single else (self.n,)
        self.out_shape = _traced_out_shape(traced) if owner._kind == "jacobian" else ()
        self.m = int(np.prod(self.out_shape))
        self.ops = _no_scalar_form(traced)

    def spec(self):
        """The :class:`~gradc.api._Spec` whose call returns the matrix (entry None: every call
        binds its arguments first)."""
        owner = self.owner
        kind = owner._kind
        if kind == "jacobian":
            mode = owner._mode if owner._mode != "auto" else (
                "forward" if self.n < self.m else "reverse")
            inner, build = (self._jvp() if mode == "forward" else self._vjp())
            how = (f"forward mode: {self.n} calls of this jvp, one per input scalar"
                   if mode == "forward" else
                   f"reverse mode: {self.m} calls of this vector-Jacobian product, one per "
                   "output")
        else:
            inner, build = self._hessian()
            how = f"{self.n} calls of this hvp, one column each"
        rows = self.m if kind == "jacobian" else self.n
        if owner._sparse is not None:
            owner._patterns[self.shapes] = _dense_pattern(rows, self.n)
            dense = build
            build = lambda *values: dense(*values).reshape(-1)  # noqa: E731  (the CSR data)
        notes = (f"# {kind} of {owner._name}(), which uses {self.ops} (no scalar form): "
                 f"assembled at each call by {how}.\n")
        call = _forgetting(build, inner)
        inner_spec = inner[-1][1]
        dispatcher = inner_spec.call if inner_spec.runs == "loops" else inner_spec.entry
        call._gradc_inner = getattr(dispatcher, "_gradc_inner", dispatcher)
        return _Spec(inner_spec.graph, notes + inner_spec.source, inner_spec.path, call,
                     inner_spec.func_name, runs=inner_spec.runs)

    def _inner(self, kind, extra_shapes, argnums):
        """``(function, spec)`` of a column program at this signature plus ``extra_shapes``."""
        fn = self.owner._column_function(kind, argnums, len(self.shapes))
        return fn, fn._spec(self.shapes + tuple(extra_shapes))

    def _hessian(self):
        hvp = self._inner("hvp", self.tangent_shapes, self.argnums)
        n, shape, call = self.n, self.in_shape + self.in_shape, hvp[1].call
        with_value_grad = self.owner._kind == "value_grad_hessian"
        vag = self._inner("value_and_grad", (), self.owner._argnums) if with_value_grad else None

        def build(*values):
            H = np.empty((n, n))
            for j, tangents in _basis(self.tangent_shapes):
                H[:, j] = _flat(call(*values, *tangents))
            H = H.reshape(shape)
            if vag is None:
                return H
            value, grads = vag[1].call(*values)
            return value, grads, H

        return ((vag,) if vag else ()) + (hvp,), build

    def _jvp(self):
        jvp = self._inner("jvp", self.tangent_shapes, self.argnums)
        n, m, shape, call = self.n, self.m, self.out_shape + self.in_shape, jvp[1].call

        def build(*values):
            J = np.empty((m, n))
            for j, tangents in _basis(self.tangent_shapes):
                J[:, j] = _flat(call(*values, *tangents)[1])
            return J.reshape(shape)

        return (jvp,), build

    def _vjp(self):
        vjp = self._inner("vjp", ((self.m,),), self.argnums)
        n, m, shape, call = self.n, self.m, self.out_shape + self.in_shape, vjp[1].call

        def build(*values):
            J = np.empty((m, n))
            for k, (cotangent,) in _basis(((m,),)):
                J[k, :] = _flat(call(*values, cotangent))
            return J.reshape(shape)

        return (vjp,), build


def _forgetting(build, inner):
    """``build`` that, where a captured array changed under a column program, makes that
    program trace again too (the caller's retry would otherwise meet the same stale code)."""

    def call(*values):
        try:
            return build(*values)
        except CapturedArrayChanged:
            for fn, _ in inner:
                fn._forget()
            raise

    return call


def _basis(shapes):
    """``(j, tangents)`` for each unit vector over arguments of these shapes (None: a
    float), in argument order and C order within an array. The arrays are reused: what a
    call returns is read before the next tangent is made."""
    tangents = [0.0 if s is None else np.zeros(s) for s in shapes]
    j = 0
    for t, s in enumerate(shapes):
        if s is None:
            tangents[t] = 1.0
            yield j, tuple(tangents)
            tangents[t], j = 0.0, j + 1
            continue
        flat = tangents[t].reshape(-1)  # a view: writes reach the argument
        for k in range(flat.size):
            flat[k] = 1.0
            yield j, tuple(tangents)
            flat[k], j = 0.0, j + 1


def _flat(result):
    """A column program's result (a float, an array or a tuple of them) as one flat vector."""
    if isinstance(result, tuple):
        return np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in result])
    return np.ravel(np.asarray(result, dtype=np.float64))


def _traced_out_shape(graph):
    """The shape of what a whole-array trace (``multiple=True``) returns: ``()`` for a float."""
    tree = graph.out_tree
    if isinstance(tree, tuple):
        return (len(tree),)
    if isinstance(tree, int):
        return tuple(graph.outputs[tree].shape or ())
    return tuple(tree.shape)  # an ArrayOut: an array of traced elements


def _dense_pattern(rows, cols):
    """The :class:`~gradc.higher.Sparsity` storing every entry of a ``rows x cols`` matrix."""
    dtype = np.int32 if rows * cols < 2**31 else np.int64
    indptr = np.arange(0, rows * cols + 1, cols, dtype=dtype)
    indices = np.tile(np.arange(cols, dtype=dtype), rows)
    for a in (indptr, indices):
        a.setflags(write=False)
    return higher.Sparsity((rows, cols), indptr, indices)


class _Pulled:
    """``f(x..., u) = <f(x), u>``, the output flattened in C order: its gradient in ``x``
    is the vector-Jacobian product ``u^T J`` (one row of ``J`` for ``u = e_k``). It carries
    ``f``'s ``__code__`` (trace() names the nodes after ``f``'s locals) and a signature of
    ``f``'s argument names and ``cotangent``."""

    def __init__(self, fn, names):
        self.__wrapped__ = fn
        code = getattr(fn, "__code__", None)
        if code is not None:
            self.__code__ = code
        self.__name__ = getattr(fn, "__name__", None) or type(fn).__name__
        last = "cotangent"
        while last in names:
            last += "_"
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in (*names, last)])

    def __call__(self, *args):
        *xs, u = args
        out = self.__wrapped__(*xs)
        if isinstance(out, Tracer) and out.shape:
            return np.sum(np.reshape(out, (-1,)) * u)
        if isinstance(out, np.ndarray):
            items = list(out.flat)
        elif isinstance(out, (tuple, list)):
            items = list(out)
        else:
            items = [out]
        total = 0.0
        for k, item in enumerate(items):
            total = total + item * u[k]
        return total


# --- argument trees -------------------------------------------------------------------------
class _TreeFunction:
    """``fn`` as a function of the leaves of its argument trees (it rebuilds them and calls
    ``fn``). With ``flat_result`` (jvp, jacobian), a result that is a tree is returned as
    one flat vector of its leaves, and its structure and leaf shapes are kept, by the
    shapes of the leaves traced, for :class:`_TreeCall` to rebuild it."""

    def __init__(self, fn, structure, leaf_names, flat_result):
        self.__wrapped__ = fn
        code = getattr(fn, "__code__", None)
        if code is not None:
            self.__code__ = code
        self.__name__ = getattr(fn, "__name__", None) or type(fn).__name__
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in leaf_names])
        self._structure, self._flat_result = structure, flat_result
        self.results: dict = {}  # leaf shapes -> (result treedef, result leaf shapes)

    def __call__(self, *leaves):
        args, k = [], 0
        for s in self._structure:
            count = trees.leaf_count(s)
            args.append(trees.unflatten(s, leaves[k:k + count]))
            k += count
        result = self.__wrapped__(*args)
        if not self._flat_result:
            return result
        found, treedef = trees.flatten(result)
        self.results[tuple(map(_leaf_shape, leaves))] = (treedef, [_leaf_shape(v) for v in found])
        if treedef != trees.LEAF:
            if not found:
                raise errors.TracingError(
                    f"{errors.where()}: {self.__name__} returned {trees.describe(treedef)}, a "
                    "tree without floats or arrays; return the values to differentiate.")
            result = np.concatenate([np.reshape(v, (-1,)) for v in found])
        if isinstance(result, Tracer) and result.shape:
            # named after the function, as trace() names a float result (jvp's tangent of it
            # is then <name>_dot: unrolled, the two arrays are told apart by these names)
            result.graph.names.setdefault(result.node.id,
                                          identifier_or_none(self.__name__) or "result")
        return result


class _TreeCall:
    """One argument structure of a higher transformation called with trees: the flat
    transformation of the leaves (a :class:`HigherFunction` of its own, compiled as any
    other), and how its flat results go back into JAX's structures (module docstring)."""

    def __init__(self, owner, structure):
        self.kind, self.structure = owner._kind, structure
        nprim = len(structure)
        ranges, k = [], 0
        for s in structure:
            ranges.append(range(k, k + trees.leaf_count(s)))
            k += len(ranges[-1])
        self.argnums, self.bare = owner._argnums_for(nprim)
        for p in self.argnums:
            if not ranges[p]:
                raise errors.ArgumentError(
                    f"{errors.where()}: argument {p} of {owner._name}() is differentiated but "
                    f"holds no float or array ({trees.describe(structure[p])}).")
        self.ranges = ranges
        leaf_argnums = tuple(j for p in self.argnums for j in ranges[p])
        names = _leaf_names(owner._arg_names(nprim), structure)
        self.flat = _TreeFunction(owner._fn, structure, names,
                                  flat_result=self.kind in ("jvp", "jacobian"))
        self.sparse = owner._sparse is not None
        self.inner = HigherFunction(self.flat, self.kind, leaf_argnums, owner._backend,
                                    mode=owner._mode, arrays=owner._arrays, sparse=self.sparse)

    def __call__(self, leaves, tangent_leaves):
        result = self.inner(*leaves, *tangent_leaves)
        if self.sparse:
            return result  # the flat (n, n) / (m, n) matrix over the leaves
        kind = self.kind
        shapes = [_leaf_shape(v) for v in leaves]
        wrt = [shapes[j] for p in self.argnums for j in self.ranges[p]]
        if kind == "hvp":
            return self._per_argument(list(result))
        if kind == "hessian":
            return self._hessian(result, shapes, wrt)
        if kind == "value_grad_hessian":
            value, grads, H = result
            return value, self._per_argument(list(grads)), self._hessian(H, shapes, wrt)
        out_def, out_shapes = self.flat.results[tuple(shapes)]
        if kind == "jvp":
            value, tangent = result
            return self._result(value, out_def, out_shapes), \
                self._result(tangent, out_def, out_shapes)
        rows = sum(int(np.prod(s)) for s in out_shapes)
        J = np.reshape(result, (rows, -1))
        per_out = [self._per_argument(row) for row in trees.blocks(J, out_shapes, wrt)]
        return trees.unflatten(out_def, per_out)

    def _per_argument(self, leaves):
        """Leaves over the differentiated arguments' leaves, in order, as those arguments'
        trees: one tree, or a tuple of them (bare as ``argnums`` says)."""
        per_arg, k = [], 0
        for p in self.argnums:
            count = len(self.ranges[p])
            per_arg.append(trees.unflatten(self.structure[p], leaves[k:k + count]))
            k += count
        return per_arg[0] if self.bare else tuple(per_arg)

    def _hessian(self, H, shapes, wrt):
        """JAX's nesting: the arguments' trees of rows, each leaf the arguments' trees again."""
        n = sum(int(np.prod(s)) for s in wrt)
        rows = trees.blocks(np.reshape(H, (n, n)), wrt, wrt)
        return self._per_argument([self._per_argument(row) for row in rows])

    @staticmethod
    def _result(value, out_def, out_shapes):
        """A flat result vector (or the one leaf) as the tree ``f`` returned."""
        if out_def == trees.LEAF:
            return value
        return trees.unflatten(out_def, trees.split(np.asarray(value, dtype=np.float64),
                                                    out_shapes))


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
entries that are not structural zeros (see the module docstring). Argument trees give
``jax.hessian``'s nesting.
""")
value_grad_hessian = _transformation("value_grad_hessian", """``f -> (value, gradient, H)``.

One fused function; see :func:`hessian` for ``H``'s shape.
""")
hvp = _transformation("hvp", """``f -> hvp(x..., v...) = H(x) @ v``, never forming ``H`` (forward-over-reverse).

One tangent per differentiated argument, of its shape; the result is shaped like
the gradient. ``scipy.optimize.minimize(..., hessp=gradc.hvp(f))`` works as is.
With argument trees, each ``v`` is a tree of its argument's structure, as the result.
""")
jvp = _transformation("jvp", """``f -> jvp(x..., v...) = (f(x), df(x)[v])``: forward mode.

``f`` may return a float, a tuple or an array; the derivative has the same structure.
With argument trees, each ``v`` is a tree of its argument's structure, and ``f`` may
return a tree (tuples, lists, dicts of floats and arrays).
""")
jacobian = _transformation("jacobian", """``f -> J`` for ``f`` returning floats, a tuple or an array.

Shape ``out_shape + in_shape``. ``mode="auto"`` (forward when there are fewer input
scalars than outputs, else reverse), ``"forward"`` or ``"reverse"``. ``sparse=True``:
a ``scipy.sparse.csr_matrix`` of shape ``(m, n)`` (see the module docstring).
Argument and result trees give ``jax.jacobian``'s nesting.
""")
