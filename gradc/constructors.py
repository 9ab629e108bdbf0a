"""Arrays NumPy makes inside a traced function, made able to receive traced values.

Code written for numba fills arrays: ``y = np.zeros(n); y[0] = x[1]; y[1:] += x[:-1]``.
A NumPy float array asks ``float()`` of a traced value written into it, so gradc never
sees the assignment. While gradc traces a function, :func:`run` therefore runs it with a
copy of its module's namespace in which the numpy module (under any name) and NumPy's
constructors imported by name (``from numpy import zeros``) are stand-ins, and so are the
Python functions of the same module it calls (directly or from its closure): helpers that
fill arrays work too. NumPy itself is never changed: other threads, and every call
outside a trace, see NumPy as it is.

The stand-in constructors (:data:`CONSTRUCTORS`) return an :class:`AssignableArray`: a
real float64 ndarray that NumPy treats as the array it is (``if c[0] > 0`` on an untouched
constant array is plain NumPy) until a traced value is written into it or into a view of
it. From then on it holds a traced array (its numbers as a constant, then each write as a
functional update, op ``setitem``) and every read, ufunc, NumPy function and method goes
through that. Views made before (``v = y[1:]``, ``y.T``, ``np.reshape(y, ...)``) keep
NumPy's aliasing: they are recomputed from the array they view, and a write into an index
view writes into that array. The float64 arrays NumPy computes from an AssignableArray
(``2.0 * np.ones(n)``) are AssignableArrays too. ``np.empty`` arrays start as zeros.
``np.array`` (and ``asarray``, ...) of traced values is one array traced whole
(gradc.trace.pack), and the NumPy functions gradc has rules for take lists of traced values
(``np.sum([x, y])``, which NumPy would convert itself, without asking gradc).

What this cannot reach keeps gradc's error, with what to write instead (``zeros_like``):
arrays made outside the traced function (a global, a default argument) or in a function
of another module, by a ``numpy`` imported inside the function body, int, bool and float32
arrays (NumPy would round what they receive), and functions that assign module globals
(``global n``: their namespace cannot be a copy, so they run as they are).

>>> import numpy as np, gradc
>>> def f(x):
...     y = np.zeros(3)
...     y[0] = x[1]
...     y[1:] += x[:-1]
...     return np.sum(y * y)
>>> gradc.grad(f, backend="python")(np.array([1.0, 2.0, 3.0])).tolist()
[2.0, 8.0, 0.0]
"""
from __future__ import annotations

import dis
import functools
import sys
import types

import numpy as np

from . import errors
from . import ops as _ops
from .trace import Tracer, _first_tracer, pack

# --- the arrays ----------------------------------------------------------------------------


class AssignableArray(np.ndarray):
    """A float64 array NumPy made inside a traced function: plain NumPy until a traced value
    is written into it (or into a view of it); then it holds that traced array.

    A *root* owns its memory and, once written with a traced value, holds ``_traced`` (an
    array traced whole). A *view* (``_parent`` set) is recomputed from its parent by
    ``_replay`` once the root holds traced values; ``_writable`` says whether a traced write
    into it can go through to the root (views by basic indexing) or is refused (reshaped and
    transposed views, results of NumPy functions that share memory).
    """

    def __array_finalize__(self, obj):
        # Every new instance starts as a root of its own. A view NumPy made of an
        # AssignableArray in a way gradc did not see (no replay) is marked as such: used
        # once its root holds traced values, it is refused rather than read stale.
        self._parent, self._replay, self._writable = None, None, True
        self._traced = self._graph = None
        self._root = self
        if isinstance(obj, AssignableArray) and _shares(self, obj):
            self._parent, self._root, self._writable = obj, obj._root, False

    # --- state ------------------------------------------------------------------------------
    def _holds_traced(self):
        return self._root._traced is not None

    def _plain(self):
        """This array's numbers as a plain ndarray view (NumPy's own code, no dispatch back)."""
        return np.ndarray.view(self, np.ndarray)

    def _read(self):
        """What this array holds now: the traced value once its root holds one, else a plain
        ndarray view of its numbers."""
        if not self._holds_traced():
            return self._plain()
        if self._parent is None:
            return self._traced
        if self._replay is None:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: this array is a view (made by code gradc does not see, "
                "such as numpy.ndarray methods called on the class) of an array that now holds "
                "traced values, so its numbers are stale; take the view after the assignment, "
                "or index the array itself.")
        return self._replay()

    def _target(self, graph):
        """The traced value a write goes into (its root made traced in ``graph`` first)."""
        if not self._writable:
            raise errors.UnsupportedFunctionError(
                f"{errors.where()}: writing a traced value into a reshaped or transposed view, "
                "or into the result of a NumPy function that views an array, is not supported "
                "(NumPy would change the array it views); write into that array itself, for "
                "example y[...] = ... or y[i] = ....")
        if not self._holds_traced():
            root = self._root
            if not root._plain().flags.writeable:  # NumPy refuses any assignment here
                raise errors.TracingError(
                    f"{errors.where()}: assignment destination is read-only (this array was "
                    "set so with setflags(write=False)); write into a copy.")
            if root.dtype != np.float64:  # (made by NumPy in a way gradc did not see)
                raise errors.MathModuleError(
                    f"{errors.where()}: this {root.dtype} NumPy array can hold numbers only "
                    "(NumPy would round the value), and the value depends on a traced "
                    "argument; make the array traced instead, for example "
                    "y = numpy.zeros_like(x) or y = x.copy(), then assign into it.")
            root._become_traced(graph)
        return self._read()

    def _become_traced(self, graph):
        """This root now holds a traced array of ``graph``: its numbers as a constant."""
        self._traced, self._graph = _held(graph, np.array(self._plain())), graph
        # A plain ndarray still aliasing this memory (numpy.asarray(y), a memoryview) would
        # read numbers the array no longer holds: NaN makes such a stale read show.
        np.ndarray.fill(self._plain(), np.nan)

    # --- NumPy's protocols ------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        graph = _graph_of((inputs, out))
        if graph is not None:
            if out is not None:
                kwargs["out"] = tuple(o._target(graph) if isinstance(o, AssignableArray) else o
                                      for o in out)
            result = getattr(ufunc, method)(*_operands(inputs, graph), **kwargs)
            return result if out is None else _written(out)
        if out is not None:
            kwargs["out"] = _operands(out, None)
        result = getattr(ufunc, method)(*_operands(inputs, None), **kwargs)
        return _written(out) if out is not None else _adopt(result, {}, None)

    def __array_function__(self, func, types, args, kwargs):
        return numpy_call(func, args, kwargs)

    def __getitem__(self, index):
        if self._holds_traced() or _graph_of(index) is not None:
            return self._read()[_operands(index)]
        result = self._plain()[index]
        if type(result) is np.ndarray and _shares(result, self):
            writable = self._writable and _ops.canonical_index(index) is not None
            return _view(result, self, functools.partial(_replay_index, self, index), writable)
        return _adopt(result, {}, None)

    def __setitem__(self, index, value):
        graph = _graph_of(value)
        if graph is None and not self._holds_traced():
            self._plain()[index] = _operands(value, None)  # numbers into numbers: NumPy
            return
        target = self._target(graph)  # (the root holds traced values of its graph now)
        target[index] = _operands(value, self._root._graph)

    def __iter__(self):
        if self._holds_traced():
            return iter(self._read())
        if not self.ndim:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))  # rows are views, as in NumPy

    # Python's conversions and printing read the numbers (or the traced value).
    def __float__(self): return float(self._read())
    def __int__(self): return int(self._read())
    def __index__(self): return self._read().__index__()
    def __complex__(self): return complex(self._read())
    def __bool__(self): return bool(self._read())
    def __repr__(self): return repr(self._read())
    def __str__(self): return str(self._read())
    def __format__(self, spec): return format(self._read(), spec)
    def __copy__(self): return self.copy()
    def __deepcopy__(self, memo): return self.copy()

    @property
    def T(self):
        return _attribute(self, "T")

    @property
    def mT(self):
        return _attribute(self, "mT")

    @property
    def real(self):
        return _attribute(self, "real")

    @property
    def imag(self):
        return _attribute(self, "imag")

    @property
    def flat(self):
        return _attribute(self, "flat")


def _replay_index(parent, index):
    return parent._read()[index]


def _replay_attribute(parent, name):
    return getattr(parent._read(), name)


def _replay_method(parent, name, args, kwargs):
    args, kwargs = _operands((args, kwargs), parent._root._graph)
    return getattr(parent._read(), name)(*args, **kwargs)


def _attribute(array, name):
    if array._holds_traced():
        return getattr(array._read(), name)
    return _adopt(getattr(array._plain(), name), {id(array): array},
                  functools.partial(_replay_attribute, array, name))


#: ndarray methods that write into the array: with a traced argument, the array becomes
#: traced first (the traced array then does it, or refuses it by name).
_WRITING_METHODS = frozenset({"fill", "put", "itemset", "sort", "partition", "resize",
                              "setfield", "byteswap", "setflags"})


#: ndarray methods that change the array object (its flags, its size), not only its memory.
_OWN_METHODS = frozenset({"setflags", "resize"})


def _method(name):
    def method(self, *args, **kwargs):
        graph = _graph_of((self, args, kwargs))
        if graph is not None:
            if name in _WRITING_METHODS:
                subject = self._target(graph)
            elif self._holds_traced():
                subject = self._read()
            else:  # a method of constant numbers with traced arguments (c.dot(x))
                subject = _held(graph, np.array(self._plain()))
            args, kwargs = _operands((args, kwargs), graph)
            return getattr(subject, name)(*args, **kwargs)
        plain_args, plain_kwargs = _operands((args, kwargs), None)
        if name in _OWN_METHODS:  # they change the array object itself, not its numbers
            return getattr(np.ndarray, name)(self, *plain_args, **plain_kwargs)
        result = getattr(self._plain(), name)(*plain_args, **plain_kwargs)
        sources, others = {id(self): self}, []
        _collect((args, kwargs), sources, others)
        return _adopt(result, sources,
                      functools.partial(_replay_method, self, name, args, kwargs), others)

    method.__name__ = name
    return method


# Every public ndarray method runs on the numbers or on the traced value (ndarray's own C
# methods would read memory the array no longer uses once it holds traced values).
for _name in dir(np.ndarray):
    if (not _name.startswith("_") and _name not in AssignableArray.__dict__
            and callable(getattr(np.ndarray, _name))):
        setattr(AssignableArray, _name, _method(_name))


class Snapshot(np.ndarray):
    """An AssignableArray's numbers as an operation on traced values read them: a copy, so
    a later write into the array cannot change what that operation read. gradc's capture
    of arrays read from outside the function (hidden parameters passed by reference)
    takes plain ndarrays only, so it leaves a Snapshot a constant of the trace, as an
    array made inside the function is."""


def _shares(a, b):
    """Whether two arrays may share memory (on plain views: no dispatch back to them)."""
    return np.may_share_memory(np.ndarray.view(a, np.ndarray), np.ndarray.view(b, np.ndarray))


def _same_memory(a, b):
    """Whether ``a`` is ``b`` seen again: the same memory, shape, strides and dtype."""
    a, b = np.ndarray.view(a, np.ndarray), np.ndarray.view(b, np.ndarray)
    return (a.__array_interface__["data"] == b.__array_interface__["data"]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def _held(graph, numbers):
    """A traced array of ``graph`` holding ``numbers``: one constant broadcast where every
    element is the same float (zeros, ones, full: a few statements whatever the size), the
    array itself otherwise."""
    if numbers.ndim == 0:
        return Tracer(graph, graph.const(float(numbers)))
    bits = numbers.reshape(-1).view(np.int64)
    if bits.size and (bits == bits[0]).all():
        scalar = Tracer(graph, graph.const(float(numbers.flat[0])))
        return _ops.broadcast_to(scalar, numbers.shape)
    return Tracer(graph, graph.const(numbers))


def _root(array):
    """A plain float64 ndarray NumPy just made, as an AssignableArray that owns it."""
    return array.view(AssignableArray)


def _view(array, parent, replay, writable):
    """A plain ndarray viewing ``parent``'s memory, as an AssignableArray that rereads it."""
    view = array.view(AssignableArray)
    view._parent, view._root, view._replay = parent, parent._root, replay
    view._writable = writable
    return view


def _written(out):
    """What a ufunc with ``out=`` returns: the array(s) written into, as NumPy returns them."""
    return out[0] if len(out) == 1 else out


def _adopt(result, sources, replay, others=()):
    """NumPy's ``result`` of numbers, with its float64 arrays as AssignableArrays.

    ``sources`` (id -> AssignableArray) are the arrays the call read; a result sharing
    memory with one is a view of it (recomputed by ``replay()`` once it holds traced
    values), a source handed back as it is (numpy.asarray) is that source; a new float64
    array (sharing memory with none of the plain arrays ``others`` the call read either:
    numpy.asarray(X) is X, the user's) is a root. Anything else is NumPy's own.
    """
    if isinstance(result, tuple) and hasattr(result, "_fields"):  # a named tuple (eigh, ...)
        return type(result)(*(_adopt(r, sources, _item(replay, k), others)
                              for k, r in enumerate(result)))
    if isinstance(result, (tuple, list)):
        return type(result)(_adopt(r, sources, _item(replay, k), others)
                            for k, r in enumerate(result))
    if type(result) is not np.ndarray or any(np.may_share_memory(result, o) for o in others):
        return result
    for source in sources.values():
        if _same_memory(result, source):
            return source  # the source itself (numpy.asarray, numpy.atleast_1d)
        if _shares(result, source):
            return _view(result, source, replay, False) if replay is not None else result
    if result.dtype == np.float64 and result.ndim:
        return _root(result)
    return result


def _item(replay, k):
    return None if replay is None else functools.partial(_replay_item, replay, k)


def _replay_item(replay, k):
    return replay()[k]


def _replay_call(func, args, kwargs):
    args, kwargs = _operands((args, kwargs))
    return func(*args, **kwargs)


def numpy_call(func, args, kwargs):
    """``func(*args, **kwargs)`` for a NumPy function meeting AssignableArrays (or a stand-in
    constructor): on the values they hold, traced where any of them is, else NumPy on the
    numbers with the results adopted (see :func:`_adopt`)."""
    graph = _graph_of((args, kwargs))
    if graph is not None:
        args, kwargs = _operands((args, kwargs), graph)
        return func(*args, **kwargs)
    sources, others = {}, []
    _collect((args, kwargs), sources, others)
    plain_args, plain_kwargs = _operands((args, kwargs), None)
    result = func(*plain_args, **plain_kwargs)
    return _adopt(result, sources, functools.partial(_replay_call, func, args, kwargs), others)


# --- values ---------------------------------------------------------------------------------
def _collect(value, found, others):
    """The AssignableArrays in ``value`` into ``found`` (by id), its other arrays into
    ``others`` (also inside tuples, lists and dicts)."""
    if isinstance(value, AssignableArray):
        found[id(value)] = value
    elif isinstance(value, np.ndarray):
        others.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _collect(v, found, others)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, found, others)


def _graph_of(value):
    """The graph of the first traced value in ``value`` (a Tracer, an AssignableArray that
    holds one, also inside tuples, lists and dicts); None: numbers only."""
    if isinstance(value, AssignableArray):
        return value._root._graph
    if isinstance(value, Tracer):
        return value.graph
    if isinstance(value, (tuple, list)):
        return next((g for g in map(_graph_of, value) if g is not None), None)
    if isinstance(value, dict):
        return _graph_of(list(value.values()))
    return None


_FIND = object()


def _operands(value, graph=_FIND):
    """``value`` with every AssignableArray in it (also inside tuples, lists and dicts) as
    what it holds: the traced value it holds; else, where ``value`` holds traced values
    (of ``graph``, found in ``value`` by default), a :class:`Snapshot` of its numbers; else
    a plain ndarray view of them (NumPy's own code, which may write into it)."""
    if graph is _FIND:
        graph = _graph_of(value)
    if isinstance(value, AssignableArray):
        if value._holds_traced() or graph is None:
            return value._read()
        return np.array(value._plain()).view(Snapshot)
    if type(value) in (tuple, list):
        if not any(map(_has_assignable, value)):
            return value
        return type(value)(_operands(v, graph) for v in value)
    if type(value) is dict:
        return {k: _operands(v, graph) for k, v in value.items()} if _has_assignable(value) \
            else value
    return value


def _has_assignable(value):
    if isinstance(value, AssignableArray):
        return True
    if type(value) in (tuple, list):
        return any(map(_has_assignable, value))
    if type(value) is dict:
        return any(map(_has_assignable, value.values()))
    return False


def operands(args):
    """``args`` (a tuple) with each AssignableArray as what it holds, for gradc's own
    dispatch (Tracer operators, ufuncs, NumPy functions meeting a Tracer first). One call
    and a loop where there is none (it runs for every NumPy call a trace meets)."""
    for a in args:
        if isinstance(a, (AssignableArray, tuple, list, dict)):
            return _operands(args) if _has_assignable(args) else args
    return args


def plain(value):
    """A traced function's result as gradc takes it: every AssignableArray in it (also in
    tuples, lists and dicts, named tuples kept) as what it holds."""
    if isinstance(value, AssignableArray):
        return value._read()
    if isinstance(value, tuple) and hasattr(value, "_fields") and _has_assignable(tuple(value)):
        return type(value)(*map(plain, value))
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(map(plain, value)) if _has_assignable(list(value)) else value
    if type(value) is dict:
        return {k: plain(v) for k, v in value.items()}
    return value


# --- the stand-in constructors and numpy module ---------------------------------------------
#: NumPy's constructors (by name) whose float64 results are AssignableArrays in traced code.
CONSTRUCTOR_NAMES = ("zeros", "ones", "empty", "full", "eye", "identity", "array", "asarray",
                     "asanyarray", "ascontiguousarray", "copy", "arange", "linspace",
                     "logspace", "geomspace", "tri", "zeros_like", "ones_like", "empty_like",
                     "full_like")


_CONVERSIONS = frozenset({"asarray", "asanyarray", "ascontiguousarray", "array"})


def _keeps_float64(args, kwargs):
    """A conversion's other arguments ask for nothing but float64 (or leave it as it is)."""
    dtype = args[0] if args else kwargs.get("dtype")
    rest = set(kwargs) - {"dtype", "copy", "order"}
    return not rest and len(args) <= 1 and (dtype is None or np.dtype(dtype) == np.float64)


def _full(shape, fill_value, dtype=None, order="C", **kwargs):
    """numpy.full, also of a traced fill value: an array of zeros that then receives it
    (NumPy's own full would copy it into a float array with numpy.copyto)."""
    if _graph_of(fill_value) is None or kwargs or not _keeps_float64((dtype,), {}):
        return numpy_call(np.full, (shape, fill_value),
                          {"dtype": dtype, "order": order, **kwargs})
    array = _root(np.zeros(shape, order=order))
    array[...] = fill_value
    return array


def _stand_in(name):
    # np.empty's contents are undefined; a traced function gets zeros (deterministic: the
    # emitted code must not depend on whatever memory NumPy reused)
    func = {"empty": np.zeros, "empty_like": np.zeros_like}.get(name, getattr(np, name))

    @functools.wraps(getattr(np, name))
    def constructor(*args, **kwargs):
        if name in _CONVERSIONS and args and _keeps_float64(args[1:], kwargs):
            converted = _converted(name, args[0], kwargs)
            if converted is not None:
                return converted
        made = _full(*args, **kwargs) if name == "full" else numpy_call(func, args, kwargs)
        return _refusing_objects(made, name)

    return constructor


def _refusing_objects(array, name):
    """``array``, unless it is an object array: refused in traced code, where NumPy would run
    its own object loops on the traced values written into it (``a[0] = x`` stores the value
    unseen; ``numpy.exp(a)`` then calls methods gradc's values do not have)."""
    if isinstance(array, np.ndarray) and array.dtype == object:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: numpy.{name}(..., dtype=object) in a traced function: gradc's "
            "arrays hold floats, and NumPy would run its own object loops, unseen by gradc, on "
            "the traced values put into an object array. Use numpy.zeros(n) (or "
            "numpy.zeros_like(x)) and assign into it, or numpy.array([...]) of the values.")
    return array


def _converted(name, value, kwargs):
    """numpy.array (or asarray, asanyarray, ascontiguousarray) of ``value`` where it holds
    traced values, as one array traced whole; None where it holds numbers only (NumPy
    converts those). NumPy's own conversion would ask each traced value for its NumPy form
    (refused: see Tracer.__array__), or read the memory of an array that now holds traced
    values instead of numbers."""
    copy = name == "array" and kwargs.get("copy") is not False
    if isinstance(value, AssignableArray):
        if not value._holds_traced():
            return None
        # the array it is: itself (asarray, keeping its aliasing), or a copy (array)
        return value._read().copy() if copy else value
    if isinstance(value, Tracer):
        return value.copy() if copy else value
    value = _operands(value) if isinstance(value, (list, tuple)) else value
    like = _first_tracer(value)
    return None if like is None else pack(value, like)  # a new array, from its items


#: id(NumPy's constructor) -> (it, its stand-in).
CONSTRUCTORS = {id(getattr(np, n)): (getattr(np, n), _stand_in(n)) for n in CONSTRUCTOR_NAMES}


def _stand_in_for(value):
    """The stand-in of numpy (or numpy.linalg), of NumPy's constructor or of a NumPy
    function gradc traces, ``value``; None where it has none."""
    if value is np or value is np.linalg:
        return STAND_IN_NUMPY if value is np else STAND_IN_LINALG
    found = CONSTRUCTORS.get(id(value)) or _LIST_TAKING.get(id(value))
    if found is not None and found[0] is value:
        return found[1]
    if value is not None and _rules().get(id(value)) is value:
        _LIST_TAKING[id(value)] = (value, _list_taking(value))
        return _LIST_TAKING[id(value)][1]
    return None


#: id(NumPy function gradc has a rule for) -> (it, its stand-in), made when first looked up.
_LIST_TAKING = {}


@functools.lru_cache(maxsize=None)
def _rules():
    """id -> NumPy function, for the NumPy functions gradc traces by rules of its own (read
    once a trace runs: gradc.numpy_api installs its rules when gradc is imported)."""
    return {id(f): f for f in (*_trace._FUNCTIONS, *_trace._WHOLE_FUNCTIONS)}


def _list_taking(func):
    """NumPy's ``func`` as traced code calls it. Given a list or tuple holding traced values
    (``numpy.sum([x, y])``), NumPy would convert it into an array itself without asking
    gradc (no traced value is an argument of its own for NumPy to dispatch on), so the
    call goes to gradc's rule for ``func``, which traces that list as one array (see
    gradc.trace.pack); any other call is NumPy's (which dispatches traced values)."""
    @functools.wraps(func)
    def call(*args, **kwargs):
        if any(isinstance(a, (list, tuple)) and _graph_of(a) is not None
               for a in (*args, *kwargs.values())):
            return _trace._function(func, args, kwargs)
        return func(*args, **kwargs)

    return call


class _StandInModule(types.ModuleType):
    """The numpy module (or numpy.linalg) as traced code sees it: its attributes, with the
    constructors' stand-ins in place of the constructors, and the NumPy functions that gradc
    has rules for taking lists of traced values (``numpy.sum([x, y])``)."""

    def __init__(self, module):
        super().__init__(module.__name__, module.__doc__)
        self._gradc_module = module

    def __getattr__(self, name):
        value = getattr(self._gradc_module, name)
        stand_in = _stand_in_for(value)
        return value if stand_in is None else stand_in

    def __dir__(self):
        return dir(self._gradc_module)


STAND_IN_NUMPY, STAND_IN_LINALG = _StandInModule(np), _StandInModule(np.linalg)


# --- running a function with the stand-ins --------------------------------------------------
def run(fn, args, code):
    """``fn(*args)`` with NumPy's constructors made traceable in the code it runs (the
    function whose ``__code__`` is ``code``, reached through partials, bound methods and
    the wrappers that carry ``code``, and the helpers of its module); the result with every
    AssignableArray as what it holds."""
    runner = _Rebuild(code).callable(fn, 0) if code is not None else None
    return plain((runner or fn)(*args))


class _Rebuild:
    """One trace's rebuilt functions (memoised, so recursion and repeated calls find the same
    one) and the namespace of each module they come from."""

    def __init__(self, code):
        self.code = code
        self.functions = {}   # id(original) -> (original, rebuilt)
        self.namespaces = {}  # id(module globals) -> the namespace its functions run in

    def callable(self, fn, depth):
        """A stand-in for the callable ``fn`` that runs ``self.code`` rebuilt, or None."""
        if depth > 8:
            return None
        if isinstance(fn, types.FunctionType):
            if fn.__code__ is not self.code:
                return None
            rebuilt = self.function(fn)
            return None if rebuilt is fn else _Unwrapping(rebuilt, fn)
        if isinstance(fn, functools.partial):
            inner = self.callable(fn.func, depth + 1)
            return None if inner is None else functools.partial(inner, *fn.args, **fn.keywords)
        if isinstance(fn, types.MethodType):
            inner = self.callable(fn.__func__, depth + 1)
            return None if inner is None else types.MethodType(inner, fn.__self__)
        if getattr(fn, "__code__", None) is self.code:  # a wrapper that runs this code
            overrides = {}
            for name, value in list(getattr(fn, "__dict__", {}).items()):
                if callable(value) and name != "__code__":
                    inner = self.callable(value, depth + 1)
                    if inner is not None:
                        overrides[name] = inner
            return _calling(fn, overrides) if overrides else None
        return None

    def function(self, fn):
        """``fn`` with its module's namespace traced (and its closure's functions), or ``fn``
        itself where that cannot be done faithfully (it assigns globals)."""
        found = self.functions.get(id(fn))
        if found is not None:
            return found[1]
        if not _rebuildable(fn.__code__) or not isinstance(fn.__globals__, dict) \
                or _library(fn.__globals__):
            self.functions[id(fn)] = (fn, fn)
            return fn
        cells, fills = [], []
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name not bound yet): shared as it is
                cells.append(cell)
                continue
            if self._replaces(value, fn.__globals__):
                new = types.CellType()
                cells.append(new)
                fills.append((new, value))
            else:
                cells.append(cell)  # shared: nonlocal writes still reach the enclosing scope
        rebuilt = types.FunctionType(fn.__code__, self.namespace(fn.__globals__), fn.__name__,
                                     fn.__defaults__, tuple(cells) if fn.__closure__ else None)
        rebuilt.__kwdefaults__ = fn.__kwdefaults__
        rebuilt.__qualname__, rebuilt.__doc__ = fn.__qualname__, fn.__doc__
        rebuilt.__module__ = fn.__module__
        rebuilt.__dict__.update(fn.__dict__)
        self.functions[id(fn)] = (fn, rebuilt)  # before the closure: a function may call itself
        for new, value in fills:
            new.cell_contents = self.substitute(value, fn.__globals__)
        return rebuilt

    def namespace(self, module):
        """The namespace ``module``'s rebuilt functions run in: a copy of it (and of the
        builtins) with the stand-ins in place, so that a lookup costs what it costs in the
        module itself; or, where a function of the module assigns globals (whose writes
        the copy would hide from the others), :class:`_TracedGlobals`, which reads the
        module at every lookup."""
        found = self.namespaces.get(id(module))
        if found is not None:
            return found
        functions = [v for v in module.values()
                     if type(v) is types.FunctionType and v.__globals__ is module]
        if not all(_rebuildable(f.__code__) for f in functions):
            found = self.namespaces[id(module)] = _TracedGlobals(module, self)
            return found
        found = self.namespaces[id(module)] = dict(_builtins(module))
        found.update(module)
        for name, value in module.items():  # (registered first: the functions run in it)
            found[name] = self.substitute(value, module)
        return found

    @staticmethod
    def _replaces(value, module):
        """Whether traced code sees something else for ``value`` (see :meth:`substitute`)."""
        return (_stand_in_for(value) is not None
                or isinstance(value, types.FunctionType) and value.__globals__ is module)

    def substitute(self, value, module):
        """What traced code sees for ``value`` found in ``module``'s namespace: the stand-in
        numpy module, a stand-in constructor or NumPy function, a function of the module
        rebuilt, or it."""
        stand_in = _stand_in_for(value)
        if stand_in is not None:
            return stand_in
        if isinstance(value, types.FunctionType) and value.__globals__ is module:
            return self.function(value)
        return value


class _TracedGlobals(dict):
    """A module's namespace as traced code sees it: a copy of the module's globals (for
    ``globals()``) whose lookups read the module itself (so a name rebound since is seen) and
    give the stand-ins (Python's LOAD_GLOBAL calls ``__getitem__`` on a dict subclass)."""

    __slots__ = ("_module", "_rebuild")

    def __init__(self, module, rebuild):
        super().__init__(module)
        self._module, self._rebuild = module, rebuild

    def __getitem__(self, name):
        return self._rebuild.substitute(self._module[name], self._module)

    def get(self, name, default=None):
        return self[name] if name in self._module else default


def _library(module):
    """gradc's and NumPy's own modules: their code runs as it is (gradc's wrappers of the
    user's function, gradc.nn's steps), only the user's code sees the stand-ins."""
    name = str(module.get("__name__", ""))
    return name.partition(".")[0] in ("gradc", "numpy") and \
        getattr(sys.modules.get(name), "__dict__", None) is module  # (not a doctest's copy)


_GLOBAL_WRITES = (dis.opmap["STORE_GLOBAL"], dis.opmap["DELETE_GLOBAL"])


def _rebuildable(code):
    """False for code (or code nested in it) that assigns or deletes module globals: run
    with a copy of the namespace, the module would not see those writes."""
    stack = [code]
    while stack:
        c = stack.pop()
        opcodes = c.co_code[::2]  # wordcode: an opcode every two bytes (caches are opcode 0)
        if any(op in opcodes for op in _GLOBAL_WRITES):
            return False
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return True


def _builtins(module):
    found = module.get("__builtins__", {})
    return vars(found) if isinstance(found, types.ModuleType) else found


class _Unwrapping:
    """The rebuilt function as its wrapper calls it: its result with every AssignableArray as
    what it holds, and the original's ``__code__`` and name (for gradc's messages)."""

    def __init__(self, rebuilt, original):
        self._rebuilt, self.__wrapped__ = rebuilt, original
        self.__code__, self.__name__ = original.__code__, original.__name__

    def __call__(self, *args, **kwargs):
        return plain(self._rebuilt(*args, **kwargs))


@functools.lru_cache(maxsize=None)
def _calling_class(cls, names):
    """A subclass of ``cls`` whose attributes ``names`` read a per-instance override."""
    def reader(name):
        return property(lambda self: self._gradc_overrides[name])

    return type(cls.__name__, (cls,), {"__slots__": ("_gradc_overrides",),
                                       **{n: reader(n) for n in names}})


def _calling(wrapper, overrides):
    """``wrapper`` calling the rebuilt functions: an object of a subclass of its class that
    shares its state (``__dict__``: what the wrapper keeps aside is kept on the original),
    but whose attributes ``overrides`` hold the stand-ins. None where the class does not
    allow it (slots, another metaclass)."""
    cls = type(wrapper)
    if type(cls) is not type or not hasattr(wrapper, "__dict__"):
        return None
    try:
        view = object.__new__(_calling_class(cls, tuple(sorted(overrides))))
        view.__dict__ = wrapper.__dict__
    except TypeError:
        return None
    view._gradc_overrides = overrides
    return view


from . import trace as _trace  # noqa: E402  (the tracer takes these from here)

_trace.install_constructors(AssignableArray, operands, run)
