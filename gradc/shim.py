"""Thin C entries for compiled bodies: a CPython builtin written in LLVM IR, without numba.

What it provides: :func:`make_entry` turns the address of a native *body* and an
:class:`EntrySpec` (what the body takes and returns) into an :class:`Entry`, whose
``function`` is a real CPython builtin (``METH_FASTCALL | METH_KEYWORDS``) written here
as LLVM IR and compiled by llvmlite's MCJIT. Called like the Python function it stands
for, it checks its arguments, lays their pointers out as the body expects, calls the
body and builds the result. Any call it does not take goes, untouched, to a *fallback*
callable (:meth:`Entry.set_fallback`): the entry only ever takes the calls it can answer
exactly, and the fallback (gradc's ordinary path) answers, converts or refuses the rest.

Why it exists (measured on this project's 2 shared cores): numba's import and target
refresh cost ~0.9 s per process, so a process that only needs to *call* compiled code
cannot start fast through numba's dispatcher; and numba's boxing of a returned array
(~0.33 us) and of keywords (~0.2 us) made ``f(x, out=dx)`` at n = 16 2.4-4.6x a hand
numba kernel. This module imports llvmlite only (never numba). Measured (2 shared,
loaded cores, medians; noisy): llvmlite's import 35 ms, the first entry 9 ms, each next
one ~13 ms (``opt=0``: ~4 ms); on gradc/native.py's body of ``sum(x * x)`` and its
gradient at n = 16, numba's dispatcher 1.29 us a call, this entry 0.20 us (a fresh
gradient array: PyArray_New is most of it) and 0.12 us with ``out=dx``; a bare builtin
(``len(x)``) 0.03 us. An entry of two floats returning a 2-tuple costs what ``divmod(7,
2)`` costs (~50 ns).

The body ABI (the same as gradc/native.py's object bodies)::

    void body(i8** data, i64* strides, double* sout, double** aout [, i64* shapes])

- ``data[p]``: parameter p's data: a pointer to a double (a float parameter: it points
  at the float object's own value, which is immutable) or to an array's first element;
- ``strides``: every array parameter's strides in bytes, one after another, in parameter
  order; ``shapes`` (only with ``pass_shapes=True``): their dims, laid out the same way;
- ``sout``: the scalar results, slot k for ``("s", k)``;
- ``aout[k]``: the k-th array result's buffer, C-contiguous float64, allocated by the
  entry (``PyArray_New``, C order) or the caller's ``out=`` buffer.

What the entry checks before it takes a call (any failure: the fallback gets the call):
``nargs == len(params)``; no keyword but ``out`` (interned name), and that only where
the spec has ``out``; a float parameter is an exact ``float``; an array parameter is an
exact ``numpy.ndarray`` (no subclass) whose dtype has ``type_num == NPY_DOUBLE`` and
byteorder ``'='`` (native: a byteswapped array goes to the fallback), aligned, of the
spec's ndim, C-contiguous where the spec says ``contiguous``; the array parameters'
shapes are a row of the entry's shape table (:meth:`Entry.allow`), which gives the array
results' shapes; ``out=`` buffers are exact float64 ndarrays, C-contiguous, aligned,
writeable, of the row's shape, and share no byte with an array parameter, another buffer
or a ``protect`` array (byte ranges compared, conservatively, from data, dims and
strides; the same object is refused even where it is empty).

How it reads CPython and NumPy objects: through the field offsets of the public struct
layouts (``PyObject``, ``PyFloatObject``, ``PyTupleObject``, ``PyArrayObject_fields``,
``PyArray_Descr``'s ``byteorder`` and ``type_num``, which NumPy 1.x and 2.x share), each
*verified once per process on probe objects* (:func:`_process`): a layout that differs
raises :class:`ShimUnavailable` and the caller keeps its ordinary path, never a guess.
Every CPython and NumPy function and object the machine code uses is an address baked
into the IR as a constant (``ctypes.pythonapi``; NumPy's C-API table for
``PyArray_New``), so nothing depends on how MCJIT resolves symbols, and nothing of a
user, a file or a cache directory ever becomes code: the IR is written from the spec's
integers only and is never stored. The objects those addresses name (the fallback, the
``"out"`` string, protected arrays, the shape table, the LLVM engine) are held by the
entry's anchor, which is the builtin's ``self``: they live as long as the function.

Thread-safety: the entry holds the GIL (it is a builtin); Python code can still run
inside a call (the fallback; a finalizer during an allocation), and may call ``allow``
or ``set_fallback`` then. So the shape table is append-only with a fixed capacity
(:data:`CAPACITY` rows, never reallocated, a published row never rewritten): a row is
written whole before the row count that publishes it, and a row the entry matched stays
valid to the call's end. Past the capacity ``allow`` returns False and those shapes stay
with the fallback. The fallback is held (a new reference) for the length of its call.

A tiny body (value = x[0] + x[1] + y, gradient = 2 * x) and its entry:

>>> import numpy as np, llvmlite.binding as llvm
>>> from gradc import shim
>>> body = llvm.parse_assembly('''
... define void @body(i8** %data, i64* %strides, double* %sout, double** %aout) {
...   %d0 = load i8*, i8** %data
...   %x = bitcast i8* %d0 to double*
...   %dp1 = getelementptr i8*, i8** %data, i64 1
...   %d1 = load i8*, i8** %dp1
...   %yp = bitcast i8* %d1 to double*
...   %y = load double, double* %yp
...   %s = load i64, i64* %strides
...   %x0 = load double, double* %x
...   %x1p8 = getelementptr i8, i8* %d0, i64 %s
...   %x1p = bitcast i8* %x1p8 to double*
...   %x1 = load double, double* %x1p
...   %a = fadd double %x0, %x1
...   %v = fadd double %a, %y
...   store double %v, double* %sout
...   %g = load double*, double** %aout
...   %g0 = fmul double %x0, 2.0
...   store double %g0, double* %g
...   %g1p = getelementptr double, double* %g, i64 1
...   %g1 = fmul double %x1, 2.0
...   store double %g1, double* %g1p
...   ret void
... }''')
>>> engine = llvm.create_mcjit_compiler(body, shim.target_machine())
>>> engine.finalize_object()
>>> spec = shim.EntrySpec(params=(1, None), results=(("s", 0), ("a", 0)), n_scalars=1,
...                       n_arrays=1, out=(0,))
>>> entry = shim.make_entry(spec, engine.get_function_address("body"), "f", keep=(engine,))
>>> entry.allow(((2,),), ((2,),))
True
>>> f = entry.function
>>> f(np.array([1.0, 2.0]), 0.5)
(3.5, array([2., 4.]))
>>> dx = np.zeros(2)
>>> value, grad = f(np.array([3.0, 4.0]), 0.0, out=dx)
>>> grad is dx, value, dx
(True, 7.0, array([6., 8.]))
>>> entry.set_fallback(lambda *args, **kwargs: ("fallback", len(args), sorted(kwargs)))
>>> f(np.array([1.0, 2.0, 3.0]), 0.5)         # a shape not in the table
('fallback', 2, [])
>>> f(np.array([1.0, 2.0]), 1)                # an int is the fallback's to convert
('fallback', 2, [])
"""
from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass

import numpy as np

#: Rows of an entry's shape table (fixed: the machine code reads the table in place).
CAPACITY = 64

_METH_FASTCALL = 0x80
_METH_KEYWORDS = 0x02
_NPY_DOUBLE = 12
# NumPy's array flags (ndarraytypes.h; the same values in NumPy 1.x and 2.x, and checked
# on probe arrays by _process()).
_C_CONTIGUOUS = 0x1
_ALIGNED = 0x100
_WRITEABLE = 0x400
# Field offsets of the public struct layouts (64-bit, non-debug CPython; NumPy 1.x and
# 2.x share PyArrayObject_fields' head and PyArray_Descr's byteorder and type_num):
# each is verified on probe objects by _process() before any code uses it.
_OB_TYPE = 8
_OB_SIZE = 16          # PyVarObject.ob_size (a tuple's length)
_FLOAT_VALUE = 16      # PyFloatObject.ob_fval
_TUPLE_ITEMS = 24      # PyTupleObject.ob_item
_ARRAY_DATA = 16       # PyArrayObject_fields.data
_ARRAY_ND = 24         # .nd (int)
_ARRAY_DIMS = 32       # .dimensions
_ARRAY_STRIDES = 40    # .strides
_ARRAY_DESCR = 56      # .descr
_ARRAY_FLAGS = 64      # .flags (int)
_DESCR_BYTEORDER = 26  # PyArray_Descr.byteorder (char)
_DESCR_TYPE_NUM = 28   # PyArray_Descr.type_num (int)
_PYARRAY_TYPE_INDEX = 2     # NumPy's C-API table: &PyArray_Type
_PYARRAYDESCR_TYPE_INDEX = 3  # &PyArrayDescr_Type
_PYARRAY_NEW_INDEX = 93     # PyArray_New


class ShimUnavailable(RuntimeError):
    """This process's CPython or NumPy is not the layout this module verified (or llvmlite
    is missing): no entry is built, and the caller keeps its ordinary path."""


# --- the spec -------------------------------------------------------------------------------

@dataclass(frozen=True)
class EntrySpec:
    """What a body takes and returns (plain, hashable data).

    - ``params``: per parameter, None (a float) or an int ndim (a float64 array);
    - ``results``: the result tree: nested tuples of leaves ``("s", k)`` (scalar slot k),
      ``("a", k)`` (array result k: the array the entry allocated, or the caller's out=
      buffer itself where out= replaced it) and ``("o", j)`` (the j-th out= buffer, i.e.
      ``("a", out[j])``). A tree that is one leaf returns that leaf;
    - ``n_scalars``: slots of ``sout``; ``n_arrays``: entries of ``aout``;
    - ``out``: None (no ``out=`` keyword), or per position of ``out=`` the aout index its
      buffer replaces, or None where the caller must pass None (a float's place). One
      position: ``out=`` is one array; more: a tuple of that length. A call without out=
      allocates every array result;
    - ``pass_shapes``: the body takes the fifth argument ``shapes``;
    - ``contiguous``: array parameters must be C-contiguous (bodies that index them as
      numba ``carray``\\ s).
    """

    params: tuple
    results: object
    n_scalars: int
    n_arrays: int
    out: tuple | None = None
    pass_shapes: bool = False
    contiguous: bool = False

    def __post_init__(self):
        problem = _spec_problem(self)
        if problem:
            raise ValueError(f"gradc.shim: bad EntrySpec: {problem}")

    def array_params(self):
        """The indices of the array parameters, in order."""
        return tuple(p for p, nd in enumerate(self.params) if nd is not None)


def _is_int(value):
    return type(value) is int


def _spec_problem(spec):
    """What is wrong with ``spec`` ('' where nothing): the IR is written from these
    integers alone, so each is checked to be one."""
    if type(spec.params) is not tuple or not all(
            p is None or (_is_int(p) and 0 <= p <= 64) for p in spec.params):
        return "params must be a tuple of None and ints 0..64"
    if not (_is_int(spec.n_scalars) and _is_int(spec.n_arrays)
            and spec.n_scalars >= 0 and spec.n_arrays >= 0):
        return "n_scalars and n_arrays must be ints >= 0"
    if type(spec.pass_shapes) is not bool or type(spec.contiguous) is not bool:
        return "pass_shapes and contiguous must be bools"
    if spec.out is not None:
        if type(spec.out) is not tuple or not spec.out:
            return "out must be None or a non-empty tuple"
        targets = [k for k in spec.out if k is not None]
        if not all(_is_int(k) and 0 <= k < spec.n_arrays for k in targets) or not targets:
            return "out's entries must be None or aout indices, at least one an index"
        if len(set(targets)) != len(targets):
            return "out names an aout index twice"
        if len(spec.out) == 1 and spec.out[0] is None:
            return "a one-place out= must name an aout index"
    try:
        leaves = list(_tree_leaves(spec.results))
    except ValueError as exc:
        return str(exc)
    for kind, k in leaves:
        limit = {"s": spec.n_scalars, "a": spec.n_arrays,
                 "o": len(spec.out) if spec.out else 0}[kind]
        if not 0 <= k < limit:
            return f"result leaf {(kind, k)!r} is out of range"
        if kind == "o" and spec.out[k] is None:
            return f"result leaf {(kind, k)!r} names a None place of out"
    return ""


def _is_leaf(t):
    return (type(t) is tuple and len(t) == 2 and t[0] in ("s", "a", "o")
            and _is_int(t[1]))


def _tree_leaves(t):
    if _is_leaf(t):
        yield t
    elif type(t) is tuple:
        for item in t:
            yield from _tree_leaves(item)
    else:
        raise ValueError(f"result tree item {t!r} is neither a tuple nor a leaf")


# --- the process: verified layouts and addresses --------------------------------------------

_lock = threading.Lock()
_state = {}


def _address(name):
    """The address of the CPython C function ``name`` in this process (exported by the
    CPython this module was written for; one that is not: ShimUnavailable)."""
    try:
        return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
    except AttributeError:
        raise ShimUnavailable(f"gradc.shim: this CPython does not export {name}") from None


def _read(address, ctype):
    return ctype.from_address(address).value


def _numpy_api_table():
    """NumPy's C-API function table (the capsule ``_ARRAY_API`` of its multiarray module,
    numpy._core in NumPy 2, numpy.core in 1.x)."""
    import importlib

    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        capsule = getattr(module, "_ARRAY_API", None)
        if capsule is not None:
            break
    else:
        raise ShimUnavailable("NumPy's C-API capsule _ARRAY_API was not found")
    get_name = _pythonapi("PyCapsule_GetName", ctypes.c_char_p, ctypes.py_object)
    get_pointer = _pythonapi("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.py_object,
                             ctypes.c_char_p)
    return get_pointer(capsule, get_name(capsule))


def _pythonapi(name, restype, *argtypes):
    """The CPython function ``name`` as a ctypes function of its own (setting argtypes on
    ``ctypes.pythonapi.<name>`` would change it for everyone in the process)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


def _check(condition, what):
    if not condition:
        raise ShimUnavailable(f"gradc.shim: this process's {what} is not the layout "
                              "gradc.shim was written for")


def _verify_layouts():
    """Check every field offset the machine code uses on probe objects (see module doc)."""
    _check(ctypes.sizeof(ctypes.c_void_p) == 8 and sys.byteorder == "little",
           "machine (64-bit little-endian)")
    value = float("1.25")  # a fresh float object
    _check(_read(id(value) + _OB_TYPE, ctypes.c_void_p) == id(float), "PyObject.ob_type")
    _check(_read(id(value) + _FLOAT_VALUE, ctypes.c_double) == 1.25, "PyFloatObject")
    pair = (value, None)
    _check(_read(id(pair) + _OB_SIZE, ctypes.c_ssize_t) == 2
           and _read(id(pair) + _TUPLE_ITEMS + 8, ctypes.c_void_p) == id(None),
           "PyTupleObject")
    probe = np.zeros((3, 4))[:, ::2]
    base = id(probe)
    # The fields read in place first; the dims and strides pointers are followed only
    # once those say this is PyArrayObject_fields.
    _check(_read(base + _ARRAY_DATA, ctypes.c_void_p) == probe.__array_interface__["data"][0]
           and _read(base + _ARRAY_ND, ctypes.c_int) == 2
           and _read(base + _ARRAY_DESCR, ctypes.c_void_p) == id(probe.dtype)
           and _read(base + _ARRAY_FLAGS, ctypes.c_int) == probe.flags.num,
           "numpy.ndarray")
    dims = _read(base + _ARRAY_DIMS, ctypes.c_void_p)
    strides = _read(base + _ARRAY_STRIDES, ctypes.c_void_p)
    _check(dims and strides
           and [_read(dims + 8 * i, ctypes.c_ssize_t) for i in range(2)] == [3, 2]
           and [_read(strides + 8 * i, ctypes.c_ssize_t) for i in range(2)] == [32, 16],
           "numpy.ndarray")
    full = np.zeros(3)
    flags = _read(id(full) + _ARRAY_FLAGS, ctypes.c_int)
    expected = _C_CONTIGUOUS | _ALIGNED | _WRITEABLE
    _check(flags & expected == expected and not probe.flags.num & _C_CONTIGUOUS,
           "numpy array flags")
    for dtype, order in ((np.dtype(np.float64), b"="),
                         (np.dtype(np.float64).newbyteorder(), b">")):
        _check(_read(id(dtype) + _DESCR_TYPE_NUM, ctypes.c_int) == _NPY_DOUBLE
               and ctypes.string_at(id(dtype) + _DESCR_BYTEORDER, 1) == order,
               "numpy dtype (PyArray_Descr)")
    _check(_read(id(np.dtype(np.float32)) + _DESCR_TYPE_NUM, ctypes.c_int) != _NPY_DOUBLE,
           "numpy dtype (PyArray_Descr)")


def _verify_array_new(address):
    """Call NumPy's PyArray_New once through ctypes, as the entry calls it."""
    proto = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_int,
                              ctypes.POINTER(ctypes.c_ssize_t), ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    dims = (ctypes.c_ssize_t * 2)(2, 3)
    made = proto(address)(id(np.ndarray), 2, dims, _NPY_DOUBLE, None, None, 0, 0, None)
    _check(type(made) is np.ndarray and made.shape == (2, 3) and made.dtype == np.float64
           and made.flags.c_contiguous and made.flags.writeable and made.flags.aligned,
           "numpy PyArray_New")


def _process():
    """This process's verified facts (once): the C functions' and objects' addresses, the
    host's target. Raises ShimUnavailable where a layout differs or llvmlite is missing."""
    with _lock:
        if "facts" in _state:
            return _state["facts"]
        if "error" in _state:
            raise ShimUnavailable(_state["error"])
        try:
            facts = _collect_facts()
        except ShimUnavailable as exc:
            _state["error"] = str(exc)
            raise
        _state["facts"] = facts
        return facts


def _collect_facts():
    try:
        import llvmlite.binding as llvm
    except ImportError as exc:  # pragma: no cover - llvmlite is a dependency of gradc
        raise ShimUnavailable(f"gradc.shim needs llvmlite ({exc})") from exc
    _verify_layouts()
    table = _numpy_api_table()
    # The table's indices are NumPy's ABI (every compiled extension calls PyArray_New as
    # table[93]); its two type objects are checked before a function in it is called.
    _check(_read(table + 8 * _PYARRAY_TYPE_INDEX, ctypes.c_void_p) == id(np.ndarray)
           and _read(table + 8 * _PYARRAYDESCR_TYPE_INDEX, ctypes.c_void_p) == id(np.dtype),
           "numpy C-API table")
    array_new = _read(table + 8 * _PYARRAY_NEW_INDEX, ctypes.c_void_p)
    _verify_array_new(array_new)
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    out_name = sys.intern("out")
    return {
        "llvm": llvm, "target": llvm.Target.from_triple(llvm.get_process_triple()),
        "cpu": llvm.get_host_cpu_name(), "features": llvm.get_host_cpu_features().flatten(),
        "out_name": out_name,
        "PyArray_New": array_new,
        "PyFloat_FromDouble": _address("PyFloat_FromDouble"),
        "PyTuple_New": _address("PyTuple_New"),
        "PyObject_Vectorcall": _address("PyObject_Vectorcall"),
        "Py_IncRef": _address("Py_IncRef"),
        "Py_DecRef": _address("Py_DecRef"),
        "float": id(float), "tuple": id(tuple), "ndarray": id(np.ndarray), "None": id(None),
        "out": id(out_name),
    }


def target_machine(opt=2):
    """A new target machine for this host (its CPU and features), codegen level ``opt``, as
    the entries are compiled for; also for bodies built with llvmlite in this process (the
    module's example). A new one each call: an llvmlite execution engine owns the machine
    it is given and deletes it with itself, so two engines must never share one."""
    facts = _process()
    return facts["target"].create_target_machine(cpu=facts["cpu"], features=facts["features"],
                                                 opt=opt, jit=True, codemodel="jitdefault")


# --- the IR ---------------------------------------------------------------------------------
# The entry is written as text from the spec's integers and this process's verified
# addresses only. Every value is SSA; the only memory the entry writes is its own stack
# (the ABI's arrays and the slots of the objects it owns) and the results it builds.

_OBJ = "i8*"
_ARRAY_NEW_ARGS = ("i8*", "i32", "i64*", "i32", "i64*", "i8*", "i32", "i32", "i8*")
_SYMBOL = "gradc_shim_entry"

# dims_equal(a, b, n): whether the n dims at a and b are equal (an out= buffer's dims
# against a row's, whose rank the row holds).
_DIMS_EQUAL = """
define internal i1 @dims_equal(i64* %a, i64* %b, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %same]
  %done = icmp eq i64 %i, %n
  br i1 %done, label %yes, label %compare
compare:
  %pa = getelementptr i64, i64* %a, i64 %i
  %pb = getelementptr i64, i64* %b, i64 %i
  %va = load i64, i64* %pa
  %vb = load i64, i64* %pb
  %eq = icmp eq i64 %va, %vb
  br i1 %eq, label %same, label %no
same:
  %next = add i64 %i, 1
  br label %loop
yes:
  ret i1 true
no:
  ret i1 false
}
"""


class _Writer:
    """Writes one function as LLVM IR text: numbered values and labels, the block being
    written (for phis), and the few instruction patterns the entry is made of."""

    def __init__(self):
        self.lines = []
        self.block = None
        self._n = 0

    def emit(self, line):
        self.lines.append("  " + line)

    def label(self, name):
        self.lines.append(f"{name}:")
        self.block = name

    def new(self, stem="v"):
        self._n += 1
        return f"%{stem}{self._n}"

    def new_label(self, stem):
        self._n += 1
        return f"{stem}{self._n}"

    def op(self, text):
        """``%v = text``; returns %v."""
        v = self.new()
        self.emit(f"{v} = {text}")
        return v

    def const_ptr(self, address, ty=_OBJ):
        return self.op(f"inttoptr i64 {int(address)} to {ty}")

    def field(self, obj, offset, ty):
        """The ``ty`` value at byte ``offset`` of the object pointer ``obj``."""
        at = self.op(f"getelementptr i8, i8* {obj}, i64 {offset}")
        typed = self.op(f"bitcast i8* {at} to {ty}*")
        return self.op(f"load {ty}, {ty}* {typed}")

    def item(self, base, ty, index):
        """``base[index]`` for a ``ty*`` base."""
        at = self.op(f"getelementptr {ty}, {ty}* {base}, i64 {index}")
        return self.op(f"load {ty}, {ty}* {at}")

    def store_item(self, value, base, ty, index):
        at = self.op(f"getelementptr {ty}, {ty}* {base}, i64 {index}")
        self.emit(f"store {ty} {value}, {ty}* {at}")

    def require(self, cond, fail):
        """Continue only where the i1 ``cond`` holds; else branch to label ``fail``."""
        ok = self.new_label("ok")
        self.emit(f"br i1 {cond}, label %{ok}, label %{fail}")
        self.label(ok)

    def all_of(self, conds):
        acc = "true"
        for c in conds:
            acc = c if acc == "true" else self.op(f"and i1 {acc}, {c}")
        return acc

    def call(self, ret, address, argtypes, args):
        """A call of the C function at ``address`` (a constant: no symbol is resolved)."""
        fn = self.const_ptr(address, f"{ret} ({', '.join(argtypes)})*")
        text = ", ".join(f"{t} {a}" for t, a in zip(argtypes, args))
        if ret == "void":
            self.emit(f"call void {fn}({text})")
            return None
        return self.op(f"call {ret} {fn}({text})")


class _Array:
    """An array (parameter or out= buffer) in the entry: its object, data pointer and the
    byte range [lo, hi) it may touch (i64 values)."""

    def __init__(self, obj, data, lo, hi):
        self.obj, self.data, self.lo, self.hi = obj, data, lo, hi


class _Layout:
    """Where things are in the entry's shape table: a row is the array parameters' dims
    (``n_dims`` i64s, in parameter order) then, per array result k, its ``ndim``, the
    address of its dims and its size in bytes."""

    def __init__(self, spec):
        self.n_dims = sum(nd for nd in spec.params if nd is not None)
        self.width = self.n_dims + 3 * spec.n_arrays

    def result(self, k):
        return self.n_dims + 3 * k


def _entry_ir(spec, body_address, facts, table_address, count_address, protect):
    """The LLVM module text of the entry of ``spec`` (see the module docstring)."""
    w = _Writer()
    layout = _Layout(spec)
    n_params, n_strides = len(spec.params), layout.n_dims
    w.lines.append(f'define i8* @"{_SYMBOL}"(i8* %self, i8** %args, i64 %nargs, '
                   'i8* %kwnames) {')
    w.label("entry")
    w.emit(f"%data = alloca i8*, i64 {max(n_params, 1)}")
    w.emit(f"%strides = alloca i64, i64 {max(n_strides, 1)}")
    w.emit(f"%sout = alloca double, i64 {max(spec.n_scalars, 1)}")
    w.emit(f"%aout = alloca double*, i64 {max(spec.n_arrays, 1)}")
    w.emit(f"%owned = alloca i8*, i64 {max(_slot_count(spec), 1)}")
    w.require(w.op(f"icmp eq i64 %nargs, {n_params}"), "fallback")
    out_obj = _keyword_check(w, spec, facts)
    arrays, dims = _parameter_checks(w, spec, facts)
    row = None
    if layout.width:
        row = _row_lookup(w, layout, dims, table_address, count_address)
    ctx = (spec, facts, layout, body_address, row)
    if spec.out is None:
        _compute(w, ctx, {}, "plain")
    else:
        plain, with_out = w.new_label("plain"), w.new_label("with_out")
        w.emit(f"br i1 {w.op(f'icmp eq i8* {out_obj}, null')}, label %{plain}, "
               f"label %{with_out}")
        w.label(plain)
        _compute(w, ctx, {}, "plain")
        w.label(with_out)
        buffers = _out_checks(w, ctx, arrays, out_obj, protect)
        _compute(w, ctx, buffers, "out")
    _fallback_block(w, facts)
    w.lines.append("}")
    return "\n".join(w.lines) + "\n" + _DIMS_EQUAL


def _keyword_check(w, spec, facts):
    """No keyword at all, or (where the spec has out) exactly ``out``: the i8* value of
    out= (null where the call has none)."""
    if spec.out is None:
        w.require(w.op("icmp eq i8* %kwnames, null"), "fallback")
        return "null"
    start, has, done = w.block, w.new_label("kw"), w.new_label("kw_done")
    w.emit(f"br i1 {w.op('icmp ne i8* %kwnames, null')}, label %{has}, label %{done}")
    w.label(has)
    w.require(w.op(f"icmp eq i64 {w.field('%kwnames', _OB_SIZE, 'i64')}, 1"), "fallback")
    name = w.field("%kwnames", _TUPLE_ITEMS, _OBJ)
    # The compiler interns keyword names: an equal string that is another object (one
    # built at run time) goes to the fallback, which reads it as out= all the same.
    w.require(w.op(f"icmp eq i8* {name}, {w.const_ptr(facts['out'])}"), "fallback")
    value = w.item("%args", _OBJ, len(spec.params))
    tail = w.block
    w.emit(f"br label %{done}")
    w.label(done)
    return w.op(f"phi i8* [null, %{start}], [{value}, %{tail}]")


def _dtype_checks(w, obj, facts, flags_mask):
    """An exact ndarray of native float64 whose flags hold all of ``flags_mask``."""
    w.require(w.op(f"icmp eq i8* {w.field(obj, _OB_TYPE, _OBJ)}, "
                   f"{w.const_ptr(facts['ndarray'])}"), "fallback")
    descr = w.field(obj, _ARRAY_DESCR, _OBJ)
    w.require(w.op(f"icmp eq i32 {w.field(descr, _DESCR_TYPE_NUM, 'i32')}, {_NPY_DOUBLE}"),
              "fallback")
    w.require(w.op(f"icmp eq i8 {w.field(descr, _DESCR_BYTEORDER, 'i8')}, {ord('=')}"),
              "fallback")
    flags = w.op(f"and i32 {w.field(obj, _ARRAY_FLAGS, 'i32')}, {flags_mask}")
    w.require(w.op(f"icmp eq i32 {flags}, {flags_mask}"), "fallback")


def _parameter_checks(w, spec, facts):
    """Check each parameter, store its data pointer (and strides): the array parameters
    as _Array (with the byte range they span) and all their dims (i64 values), in order."""
    mask = _ALIGNED | (_C_CONTIGUOUS if spec.contiguous else 0)
    arrays, all_dims, at = [], [], 0
    for p, nd in enumerate(spec.params):
        obj = w.item("%args", _OBJ, p)
        if nd is None:
            w.require(w.op(f"icmp eq i8* {w.field(obj, _OB_TYPE, _OBJ)}, "
                           f"{w.const_ptr(facts['float'])}"), "fallback")
            # A float is immutable: the body reads its value where it lies.
            w.store_item(w.op(f"getelementptr i8, i8* {obj}, i64 {_FLOAT_VALUE}"),
                         "%data", _OBJ, p)
            continue
        _dtype_checks(w, obj, facts, mask)
        w.require(w.op(f"icmp eq i32 {w.field(obj, _ARRAY_ND, 'i32')}, {nd}"), "fallback")
        data = w.field(obj, _ARRAY_DATA, _OBJ)
        w.store_item(data, "%data", _OBJ, p)
        dims_ptr, strides_ptr = w.field(obj, _ARRAY_DIMS, "i64*"), \
            w.field(obj, _ARRAY_STRIDES, "i64*")
        dims = [w.item(dims_ptr, "i64", i) for i in range(nd)]
        strides = [w.item(strides_ptr, "i64", i) for i in range(nd)]
        for i, s in enumerate(strides):
            w.store_item(s, "%strides", "i64", at + i)
        at += nd
        lo, hi = _span(w, data, dims, strides)
        arrays.append(_Array(obj, data, lo, hi))
        all_dims += dims
    return arrays, all_dims


def _span(w, data, dims, strides):
    """The byte range [lo, hi) an array's elements lie in (empty where a dim is 0): from
    its first element, each axis reaches (dim - 1) * stride bytes up or down."""
    base = w.op(f"ptrtoint i8* {data} to i64")
    lo, hi = base, w.op(f"add i64 {base}, 8")
    nonempty = []
    for d, s in zip(dims, strides):
        reach = w.op(f"mul i64 {w.op(f'sub i64 {d}, 1')}, {s}")
        up = w.op(f"icmp sgt i64 {reach}, 0")
        hi = w.op(f"add i64 {hi}, {w.op(f'select i1 {up}, i64 {reach}, i64 0')}")
        lo = w.op(f"add i64 {lo}, {w.op(f'select i1 {up}, i64 0, i64 {reach}')}")
        nonempty.append(w.op(f"icmp sgt i64 {d}, 0"))
    if nonempty:
        hi = w.op(f"select i1 {w.all_of(nonempty)}, i64 {hi}, i64 {lo}")
    return lo, hi


def _row_lookup(w, layout, dims, table_address, count_address):
    """The first published row whose parameter dims are ``dims`` (an i64* to it); no row:
    the fallback. The count is read once: rows below it are complete and never change."""
    count = w.op(f"load i64, i64* {w.const_ptr(count_address, 'i64*')}")
    table = w.const_ptr(table_address, "i64*")
    pre, loop, test, step, found = (w.block, w.new_label("rows"), w.new_label("row"),
                                    w.new_label("row_next"), w.new_label("row_found"))
    index, following = w.new("r"), w.new("r_next")
    w.emit(f"br label %{loop}")
    w.label(loop)
    w.emit(f"{index} = phi i64 [0, %{pre}], [{following}, %{step}]")
    w.emit(f"br i1 {w.op(f'icmp ult i64 {index}, {count}')}, label %{test}, label %fallback")
    w.label(test)
    row = w.op(f"getelementptr i64, i64* {table}, i64 {w.op(f'mul i64 {index}, {layout.width}')}")
    same = [w.op(f"icmp eq i64 {d}, {w.item(row, 'i64', i)}") for i, d in enumerate(dims)]
    w.emit(f"br i1 {w.all_of(same)}, label %{found}, label %{step}")
    w.label(step)
    w.emit(f"{following} = add i64 {index}, 1")
    w.emit(f"br label %{loop}")
    w.label(found)
    return row


def _row_result(w, layout, row, k):
    """(ndim as i64, dims as i64*, size in bytes) of array result k in the row."""
    at = layout.result(k)
    nd = w.item(row, "i64", at)
    dims = w.op(f"inttoptr i64 {w.item(row, 'i64', at + 1)} to i64*")
    return nd, dims, w.item(row, "i64", at + 2)


def _apart(w, a, b):
    """Require that the arrays ``a`` and ``b`` are other objects sharing no byte."""
    w.require(w.op(f"icmp ne i8* {a.obj}, {b.obj}"), "fallback")
    overlap = w.op(f"and i1 {w.op(f'icmp ult i64 {a.lo}, {b.hi}')}, "
                   f"{w.op(f'icmp ult i64 {b.lo}, {a.hi}')}")
    w.require(w.op(f"xor i1 {overlap}, true"), "fallback")


def _out_checks(w, ctx, arrays, out_obj, protect):
    """Check the out= buffers; returns {aout index: _Array} of those they replace."""
    spec, facts, layout, _, row = ctx
    places = spec.out
    if len(places) == 1:
        objs = [out_obj]
    else:
        w.require(w.op(f"icmp eq i8* {w.field(out_obj, _OB_TYPE, _OBJ)}, "
                       f"{w.const_ptr(facts['tuple'])}"), "fallback")
        w.require(w.op(f"icmp eq i64 {w.field(out_obj, _OB_SIZE, 'i64')}, {len(places)}"),
                  "fallback")
        objs = [w.field(out_obj, _TUPLE_ITEMS + 8 * j, _OBJ) for j in range(len(places))]
    buffers = {}
    guarded = [_Array(None, None, str(lo), str(hi)) for lo, hi in protect]
    for obj, k in zip(objs, places):
        if k is None:
            w.require(w.op(f"icmp eq i8* {obj}, {w.const_ptr(facts['None'])}"), "fallback")
            continue
        _dtype_checks(w, obj, facts, _C_CONTIGUOUS | _ALIGNED | _WRITEABLE)
        nd, dims, nbytes = _row_result(w, layout, row, k)
        rank = w.op(f"sext i32 {w.field(obj, _ARRAY_ND, 'i32')} to i64")
        w.require(w.op(f"icmp eq i64 {rank}, {nd}"), "fallback")
        same = w.op(f"call i1 @dims_equal(i64* {w.field(obj, _ARRAY_DIMS, 'i64*')}, "
                    f"i64* {dims}, i64 {nd})")
        w.require(same, "fallback")
        data = w.field(obj, _ARRAY_DATA, _OBJ)
        lo = w.op(f"ptrtoint i8* {data} to i64")
        buf = _Array(obj, data, lo, w.op(f"add i64 {lo}, {nbytes}"))
        for other in arrays + list(buffers.values()):
            _apart(w, buf, other)
        for zone in guarded:
            overlap = w.op(f"and i1 {w.op(f'icmp ult i64 {buf.lo}, {zone.hi}')}, "
                           f"{w.op(f'icmp ult i64 {zone.lo}, {buf.hi}')}")
            w.require(w.op(f"xor i1 {overlap}, true"), "fallback")
        buffers[k] = buf
    return buffers


def _slot_count(spec):
    """Slots for the objects one call may own before it returns: each array it allocates,
    each leaf and each tuple of the result tree."""
    count = spec.n_arrays

    def walk(t):
        nonlocal count
        count += 1
        if not _is_leaf(t):
            for item in t:
                walk(item)

    walk(spec.results)
    return count


def _compute(w, ctx, buffers, tag):
    """Allocate the fresh arrays, call the body, build and return the result tree. Any
    allocation failure releases every object this call owns and returns NULL (the
    allocator set the exception). ``buffers``: the aout indices out= replaced."""
    spec, facts, layout, body_address, row = ctx
    fail = w.new_label(f"fail_{tag}")
    n_slots = _slot_count(spec)
    for i in range(n_slots):
        w.store_item("null", "%owned", _OBJ, i)
    slots = iter(range(n_slots))
    fresh = {}
    for k in range(spec.n_arrays):
        if k in buffers:
            data = buffers[k].data
        else:
            nd, dims, _ = _row_result(w, layout, row, k)
            arr = w.call(_OBJ, facts["PyArray_New"], _ARRAY_NEW_ARGS,
                         [w.const_ptr(facts["ndarray"]), w.op(f"trunc i64 {nd} to i32"),
                          dims, str(_NPY_DOUBLE), "null", "null", "0", "0", "null"])
            w.require(w.op(f"icmp ne i8* {arr}, null"), fail)
            fresh[k] = (arr, next(slots))
            w.store_item(arr, "%owned", _OBJ, fresh[k][1])
            data = w.field(arr, _ARRAY_DATA, _OBJ)
        w.store_item(w.op(f"bitcast i8* {data} to double*"), "%aout", "double*", k)
    body_types = ["i8**", "i64*", "double*", "double**"]
    body_args = ["%data", "%strides", "%sout", "%aout"]
    if spec.pass_shapes:
        # The matched row begins with the array parameters' dims, in the ABI's layout.
        body_types.append("i64*")
        body_args.append(row if row is not None else "null")
    w.call("void", body_address, body_types, body_args)
    used = set()
    root, _ = _build_tree(w, spec, facts, spec.results, fresh, buffers, used, slots, fail)
    for k, (arr, _) in fresh.items():
        if k not in used:  # allocated for the body, not returned
            w.call("void", facts["Py_DecRef"], [_OBJ], [arr])
    w.emit(f"ret i8* {root}")
    w.label(fail)
    for i in range(n_slots):
        w.call("void", facts["Py_DecRef"], [_OBJ], [w.item("%owned", _OBJ, i)])
    w.emit("ret i8* null")


def _build_tree(w, spec, facts, t, fresh, buffers, used, slots, fail):
    """(object, owning slot) of the result (sub)tree ``t``; the slot is cleared once a
    tuple holds the object. A fresh array's first use takes its allocation's reference,
    each other use of an array a new one."""
    if _is_leaf(t):
        kind, k = t
        if kind == "s":
            value = w.item("%sout", "double", k)
            obj = w.call(_OBJ, facts["PyFloat_FromDouble"], ["double"], [value])
            w.require(w.op(f"icmp ne i8* {obj}, null"), fail)
        else:
            k = spec.out[k] if kind == "o" else k
            if k in fresh and k not in used:
                used.add(k)
                return fresh[k]
            used.add(k)
            obj = fresh[k][0] if k in fresh else buffers[k].obj
            w.call("void", facts["Py_IncRef"], [_OBJ], [obj])
        slot = next(slots)
        w.store_item(obj, "%owned", _OBJ, slot)
        return obj, slot
    items = [_build_tree(w, spec, facts, item, fresh, buffers, used, slots, fail) for item in t]
    tup = w.call(_OBJ, facts["PyTuple_New"], ["i64"], [str(len(items))])
    w.require(w.op(f"icmp ne i8* {tup}, null"), fail)
    slot = next(slots)
    w.store_item(tup, "%owned", _OBJ, slot)
    for i, (obj, owner) in enumerate(items):
        at = w.op(f"getelementptr i8, i8* {tup}, i64 {_TUPLE_ITEMS + 8 * i}")
        w.emit(f"store i8* {obj}, i8** {w.op(f'bitcast i8* {at} to i8**')}")  # stolen
        w.store_item("null", "%owned", _OBJ, owner)
    return tup, slot


def _fallback_block(w, facts):
    """The call, exactly as it came, to the entry's fallback (held for the call's length:
    the fallback may replace itself)."""
    w.label("fallback")
    fallback = w.op(f"load i8*, i8** {w.const_ptr(facts['fallback_slot'], 'i8**')}")
    w.call("void", facts["Py_IncRef"], [_OBJ], [fallback])
    result = w.call(_OBJ, facts["PyObject_Vectorcall"], [_OBJ, "i8**", "i64", _OBJ],
                    [fallback, "%args", "%nargs", "%kwnames"])
    w.call("void", facts["Py_DecRef"], [_OBJ], [fallback])
    w.emit(f"ret i8* {result}")


# --- entries --------------------------------------------------------------------------------

class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


class _Anchor:
    """Everything the entry's machine code points at, held as long as the builtin lives
    (it is the builtin's ``self``): the LLVM engine, the shape table, the fallback and its
    slot, the method definition, what the caller asked to keep and protect."""

    __slots__ = ("engine", "cells", "count", "result_dims", "rows", "fallback",
                 "fallback_slot", "method", "keep", "protect", "__weakref__")


class Entry:
    """A compiled entry: ``function`` (the builtin: call it like the Python function),
    ``allow`` (add a row to the shape table), ``set_fallback``, ``rows``, ``spec``."""

    def __init__(self, spec, name, anchor, function):
        self.spec, self.name, self._anchor, self.function = spec, name, anchor, function
        self._layout = _Layout(spec)

    @property
    def rows(self):
        """The allowed rows: ``(param_shapes, result_shapes)`` pairs, in order."""
        return tuple(self._anchor.rows)

    def __repr__(self):
        return f"<gradc.shim.Entry {self.name}: {len(self._anchor.rows)} rows>"

    def set_fallback(self, fallback):
        """The callable that gets every call the entry does not take, with the same
        positional arguments and keywords; its result (or exception) is the call's."""
        if not callable(fallback):
            raise TypeError(f"gradc.shim: the fallback must be callable, not {fallback!r}")
        anchor = self._anchor
        old = anchor.fallback
        anchor.fallback = fallback  # held before the machine code may read it...
        anchor.fallback_slot.value = id(fallback)
        del old  # ...and the old one released only after it may no longer

    def allow(self, param_shapes, result_shapes):
        """Let the entry take calls whose array parameters have ``param_shapes`` (one shape
        per array parameter, in order; None may stand at the floats' places), allocating
        array result k with ``result_shapes[k]``. True where the row is (now) in the table;
        False where the table is full (those shapes stay with the fallback)."""
        params = self._param_shapes(param_shapes)
        results = self._result_shapes(result_shapes)
        anchor = self._anchor
        for known, known_results in anchor.rows:
            if known == params:
                if known_results != results:
                    raise ValueError(f"gradc.shim: {self.name} already allows {params} with "
                                     f"results {known_results}, not {results}")
                return True
        if not self._layout.width:
            if not anchor.rows:
                anchor.rows.append((params, results))
            return True
        index = len(anchor.rows)
        if index >= CAPACITY:
            return False
        self._write_row(index, params, results)
        anchor.rows.append((params, results))
        anchor.count.value = index + 1  # published last: the row is whole by now
        return True

    def _write_row(self, index, params, results):
        anchor, layout = self._anchor, self._layout
        base = index * layout.width
        cells = anchor.cells
        at = base
        for shape in params:
            for d in shape:
                cells[at] = d
                at += 1
        for k, shape in enumerate(results):
            dims = (ctypes.c_int64 * max(len(shape), 1))(*shape)
            anchor.result_dims.append(dims)  # the row points at it: held with the table
            size = 8
            for d in shape:
                size *= d
            start = base + layout.result(k)
            cells[start], cells[start + 1], cells[start + 2] = \
                len(shape), ctypes.addressof(dims), size

    def _param_shapes(self, shapes):
        spec = self.spec
        shapes = tuple(shapes)
        if len(shapes) == len(spec.params) and len(shapes) != len(spec.array_params()):
            if any((s is None) != (nd is None) for s, nd in zip(shapes, spec.params)):
                raise ValueError(f"gradc.shim: {self.name}: param_shapes {shapes} must have "
                                 "None exactly at the float parameters")
            shapes = tuple(s for s in shapes if s is not None)
        ranks = [spec.params[p] for p in spec.array_params()]
        if len(shapes) != len(ranks):
            raise ValueError(f"gradc.shim: {self.name}: {len(ranks)} array parameter shapes "
                             f"expected, got {shapes}")
        checked = tuple(_shape(s, self.name) for s in shapes)
        for s, nd in zip(checked, ranks):
            if len(s) != nd:
                raise ValueError(f"gradc.shim: {self.name}: shape {s} is not of rank {nd}")
        return checked

    def _result_shapes(self, shapes):
        shapes = tuple(_shape(s, self.name) for s in shapes)
        if len(shapes) != self.spec.n_arrays:
            raise ValueError(f"gradc.shim: {self.name}: {self.spec.n_arrays} result shapes "
                             f"expected, got {shapes}")
        return shapes


def _shape(shape, name):
    """A shape as a tuple of ints >= 0 (ValueError otherwise, and for a size past 2**60
    bytes)."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"gradc.shim: {name}: {shape!r} is not a shape") from None
    size = 8
    for d in shape:
        if type(d) is not int and not isinstance(d, np.integer):
            raise ValueError(f"gradc.shim: {name}: {shape!r} is not a shape")
        if d < 0:
            raise ValueError(f"gradc.shim: {name}: {shape!r} has a negative dim")
        size *= int(d)
    if size >= 1 << 60 or len(shape) > 64:
        raise ValueError(f"gradc.shim: {name}: {shape!r} is too large")
    return tuple(int(d) for d in shape)


def _extent(array):
    """The byte range [lo, hi) an array's elements lie in (empty: lo == hi)."""
    info = array.__array_interface__
    lo = hi = info["data"][0]
    if array.size == 0:
        return lo, lo
    strides = array.strides
    hi += array.itemsize
    for d, s in zip(array.shape, strides):
        reach = (d - 1) * s
        if reach > 0:
            hi += reach
        else:
            lo += reach
    return lo, hi


def _default_fallback(name, spec):
    """Until set_fallback: a call the entry does not take is refused, by name."""
    def refuse(*args, **kwargs):
        from .errors import ArgumentError, where

        kinds = ", ".join(type(a).__name__ for a in args)
        raise ArgumentError(
            f"{where()}: {name}() was called with ({kinds}{', ' if kinds and kwargs else ''}"
            f"{', '.join(f'{k}=' for k in kwargs)}), which its compiled entry does not take "
            f"(it takes {_describe(spec)} at the shapes it was allowed), and it has no "
            "fallback: call the function through gradc, which converts or refuses them")

    refuse.__name__ = f"{name}__no_fallback"
    return refuse


def _describe(spec):
    params = ", ".join("float" if nd is None else f"float64 array of rank {nd}"
                       for nd in spec.params)
    return f"({params}{', out=' if spec.out else ''})"


def make_entry(spec, body_address, name, keep=(), protect=(), opt=2):
    """The :class:`Entry` of the body at ``body_address`` (a native function with the
    module's ABI, described by ``spec``), its builtin named ``name``.

    ``keep``: objects the body needs alive (its engine, a numba cfunc object); the entry
    holds them. ``protect``: arrays the body reads besides its parameters (captured
    constants): no out= buffer may share a byte with them (held too). ``opt``: the
    entry's codegen level (measured, 2 shared cores: level 2 builds in ~13 ms and an
    ``f(x, out=dx)`` call costs ~52 ns; level 0 builds in ~4 ms for ~6 ns more per call).
    Raises :class:`ShimUnavailable` where this process's layouts are not the verified ones.
    """
    if opt not in (0, 1, 2, 3):
        raise ValueError(f"gradc.shim: opt must be 0..3, not {opt!r}")
    if not isinstance(spec, EntrySpec):
        raise TypeError("gradc.shim: spec must be an EntrySpec")
    if type(body_address) is not int or body_address <= 0:
        raise ValueError(f"gradc.shim: body_address must be a positive int, not {body_address!r}")
    if type(name) is not str or not name or "\0" in name:
        raise ValueError(f"gradc.shim: name must be a non-empty str without NUL, not {name!r}")
    protect = tuple(protect)
    if not all(type(a) is np.ndarray for a in protect):
        raise TypeError("gradc.shim: protect takes numpy arrays")
    facts = _process()
    llvm = facts["llvm"]
    layout = _Layout(spec)
    anchor = _Anchor()
    anchor.cells = (ctypes.c_int64 * max(CAPACITY * layout.width, 1))()
    anchor.count = ctypes.c_int64(0)
    anchor.result_dims, anchor.rows = [], []
    anchor.keep, anchor.protect = tuple(keep), protect
    anchor.fallback = _default_fallback(name, spec)
    anchor.fallback_slot = ctypes.c_void_p(id(anchor.fallback))
    text = _entry_ir(spec, body_address, dict(facts, fallback_slot=ctypes.addressof(
        anchor.fallback_slot)), ctypes.addressof(anchor.cells), ctypes.addressof(anchor.count),
        [_extent(a) for a in protect])
    module = llvm.parse_assembly(text)
    module.verify()
    engine = llvm.create_mcjit_compiler(module, target_machine(opt))  # the engine's own
    engine.finalize_object()
    anchor.engine = engine
    address = engine.get_function_address(_SYMBOL)
    anchor.method = _MethodDef(name.encode("utf-8"), address,
                               _METH_FASTCALL | _METH_KEYWORDS,
                               f"{name}{_describe(spec)}: a gradc.shim entry".encode("utf-8"))
    new = _pythonapi("PyCFunction_NewEx", ctypes.py_object, ctypes.c_void_p, ctypes.py_object,
                     ctypes.py_object)
    function = new(ctypes.addressof(anchor.method), anchor, "gradc.shim")
    return Entry(spec, name, anchor, function)
