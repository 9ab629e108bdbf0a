"""Thin C entries for compiled bodies: a CPython builtin written in LLVM IR, without numba.

What it provides: :func:`make_entry` turns the address of a native *body* and an
:class:`EntrySpec` (what the body takes and returns) into an :class:`Entry`, whose
``function`` is a real CPython builtin (``METH_FASTCALL | METH_KEYWORDS``). Called like
the Python function it stands for, it checks its arguments, lays their pointers out as
the body expects, calls the body and builds the result. Any call it does not take goes,
untouched, to a *fallback* callable (:meth:`Entry.set_fallback`): the entry only ever
takes the calls it can answer exactly, and the fallback (gradc's ordinary path) answers,
converts or refuses the rest.

How: one entry function, written here in LLVM IR and compiled by llvmlite's MCJIT once
per process (the first make_entry), serves every entry; an entry is *data* (int64
cells: the spec's parameter kinds, the result tree as a small post-order program, the
shape table, the fallback) that the function reads through its ``self``. So building
an entry compiles nothing, and a spec of 500 floats is a table of 500 cells, not 500
checks. (An entry compiled per spec, this module's first version, took ~13 ms each and
seconds for a 500-float result tree; its calls were ~15 ns faster.)

Why it exists (measured on this project's 2 shared cores): numba's import and target
refresh cost ~0.9 s per process, so a process that only needs to *call* compiled code
cannot start fast through numba's dispatcher; and numba's boxing of a returned array
(~0.33 us) and of keywords (~0.2 us) made ``f(x, out=dx)`` at n = 16 2.4-4.6x a hand
numba kernel. This module imports llvmlite only (never numba). Measured (2 shared cores
under other jobs' load: noisy, best of repeats): llvmlite's import 35-70 ms, the entry
function's compile 50-100 ms once, each entry ~0.1 ms; on gradc/native.py's body of
``sum(x * x)`` and its gradient at n = 16, numba's dispatcher 1.2-1.5 us a call, the
entry 0.16-0.23 us with a fresh gradient array (PyArray_New is most of it: NumPy's
``np.empty(16)`` alone takes ~0.18 us from Python) and 0.12-0.16 us with ``out=dx``
(0.09 us on a plain 16-element loop body), a bare builtin (``len(x)``) 0.016 us; an
entry of two floats returning a 2-tuple 60 ns where ``divmod(7, 2)`` takes 35 ns; 500
floats in and a 501-float tree out, 6-10 us (``tuple(map(float, args))``: 11 us).

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
user, a file or a cache directory ever becomes code: the IR is written from this
module's constants only and is never stored; a spec is only ever data (checked ints).
The builtin's ``self`` is the tuple ``(anchor, blob)``: the anchor holds everything the
entry's cells point at (the config, the shape table, the fallback, protected arrays,
what the caller asked to keep), so they live as long as the function; the entry
function itself lives as long as the process.

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

import contextlib
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
_BYTES_DATA = 32       # PyBytesObject.ob_sval
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
    blob = bytes(range(1, 9))
    _check(ctypes.string_at(id(blob) + _BYTES_DATA, 8) == blob, "PyBytesObject")
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
# One entry function serves every entry of the process: it is compiled once (the first
# make_entry), and an entry is data, a "config" of int64 cells that the function reads
# through its ``self``. So building an entry costs no compile, and the function's size
# does not grow with a spec (a program of 500 floats is a table of 500 cells, not 500
# checks). The IR is written from this module's constants and this process's verified
# addresses only, never from anything of a user's, and it is never stored.
#
# ``self`` is the tuple ``(anchor, blob)``: ``blob`` is a bytes object whose 8 bytes are
# the address of the entry's config (held by the anchor, which the tuple holds).

# The config's cells (int64; "ptr" cells hold addresses of int64 cells).
_CFG_BODY = 0          # the body's address
_CFG_N_PARAMS = 1
_CFG_PARAMS = 2        # ptr: per parameter -1 (a float) or its ndim
_CFG_N_DIMS = 3        # the array parameters' dims, all together
_CFG_N_APARAMS = 4     # how many array parameters
_CFG_CONTIGUOUS = 5    # 0 / 1
_CFG_PASS_SHAPES = 6   # 0 / 1
_CFG_N_SCALARS = 7
_CFG_N_ARRAYS = 8
_CFG_TABLE = 9         # ptr: the shape table's rows (see _Layout)
_CFG_COUNT = 10        # the published row count
_CFG_WIDTH = 11        # cells per row (0: no table, every call matches)
_CFG_FALLBACK = 12     # the fallback's address (a reference the anchor holds)
_CFG_HAS_OUT = 13      # 0 / 1
_CFG_OUT_LEN = 14
_CFG_OUT = 15          # ptr: per place of out=, the aout index it replaces or -1 (None)
_CFG_N_PROTECT = 16
_CFG_PROTECT = 17      # ptr: [lo, hi) byte ranges out= may not touch
_CFG_PROGRAM = 18      # ptr: the result tree as (op, arg) pairs, in post-order
_CFG_PROGRAM_LEN = 19
_CFG_STACK = 20        # the deepest the program's value stack gets
_CFG_CELLS = 21

# The result program's ops: push a float of sout[arg]; push (a new reference to) aout
# array arg; pop arg items into a new tuple and push it.
_OP_FLOAT, _OP_ARRAY, _OP_TUPLE = 0, 1, 2

_OBJ = "i8*"
_SYMBOL = "gradc_shim_entry"
_ARRAY_NEW_ARGS = ("i8*", "i32", "i64*", "i32", "i64*", "i8*", "i32", "i32", "i8*")


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
    """Writes one function as LLVM IR text: numbered values and labels; a prologue (the
    entry block: the stack slots and what is loaded once); structured loops and ifs over
    stack-slot variables. Every block is left open for the next instruction: a branch
    that ends a block opens a new (possibly unreachable) one."""

    def __init__(self):
        self.prologue, self.lines = [], []
        self._n = 0

    def emit(self, line):
        self.lines.append("  " + line)

    def label(self, name):
        self.lines.append(f"{name}:")

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

    def pre(self, text):
        """``%v = text`` in the prologue (it dominates every block)."""
        v = self.new()
        self.prologue.append(f"  {v} = {text}")
        return v

    def goto(self, label):
        self.emit(f"br label %{label}")
        self.label(self.new_label("dead"))

    def require(self, cond, fail="fallback"):
        """Continue only where the i1 ``cond`` holds; else branch to label ``fail``."""
        ok = self.new_label("ok")
        self.emit(f"br i1 {cond}, label %{ok}, label %{fail}")
        self.label(ok)

    def cmp(self, pred, ty, a, b):
        return self.op(f"icmp {pred} {ty} {a}, {b}")

    def const_ptr(self, address, ty=_OBJ):
        return self.op(f"inttoptr i64 {int(address)} to {ty}")

    def at(self, base, ty, index):
        """The address of ``base[index]`` (``base`` a ``ty*``)."""
        return self.op(f"getelementptr {ty}, {ty}* {base}, i64 {index}")

    def load(self, base, ty, index=0):
        return self.op(f"load {ty}, {ty}* {self.at(base, ty, index)}")

    def store(self, value, base, ty, index=0):
        self.emit(f"store {ty} {value}, {ty}* {self.at(base, ty, index)}")

    def field(self, obj, offset, ty):
        """The ``ty`` value at byte ``offset`` of the object pointer ``obj``."""
        typed = self.op(f"bitcast i8* {self.at(obj, 'i8', offset)} to {ty}*")
        return self.op(f"load {ty}, {ty}* {typed}")

    def var(self, ty, init):
        """A mutable local (a stack slot in the prologue), set to ``init`` here."""
        slot = self.pre(f"alloca {ty}")
        self.emit(f"store {ty} {init}, {ty}* {slot}")
        return slot

    def get(self, slot, ty):
        return self.op(f"load {ty}, {ty}* {slot}")

    def set(self, slot, ty, value):
        self.emit(f"store {ty} {value}, {ty}* {slot}")

    @contextlib.contextmanager
    def loop(self, count):
        """``for i in range(count)``: yields (i, the label that continues the loop)."""
        slot = self.var("i64", 0)
        head, body, latch, done = (self.new_label(s) for s in ("head", "body", "latch", "done"))
        self.emit(f"br label %{head}")
        self.label(head)
        i = self.get(slot, "i64")
        self.emit(f"br i1 {self.cmp('slt', 'i64', i, count)}, label %{body}, label %{done}")
        self.label(body)
        yield i, latch
        self.emit(f"br label %{latch}")
        self.label(latch)
        self.set(slot, "i64", self.op(f"add i64 {i}, 1"))
        self.emit(f"br label %{head}")
        self.label(done)

    @contextlib.contextmanager
    def when(self, cond):
        """``if cond:`` (an i1)."""
        then, after = self.new_label("then"), self.new_label("after")
        self.emit(f"br i1 {cond}, label %{then}, label %{after}")
        self.label(then)
        yield
        self.emit(f"br label %{after}")
        self.label(after)

    def call(self, ret, address, argtypes, args):
        """A call of the C function at ``address`` (a constant: no symbol is resolved)."""
        fn = self.const_ptr(address, f"{ret} ({', '.join(argtypes)})*")
        text = ", ".join(f"{t} {a}" for t, a in zip(argtypes, args))
        if ret == "void":
            self.emit(f"call void {fn}({text})")
            return None
        return self.op(f"call {ret} {fn}({text})")

    def text(self, header):
        return "\n".join([header, "entry:"] + self.prologue + ["  br label %start", "start:"]
                         + self.lines + ["}"]) + "\n"


class _Frame:
    """The entry's values that every part reads: the config's cells (loaded once, in the
    prologue) and the call's scratch arrays (stack, sized by the config)."""

    def __init__(self, w):
        self.w = w
        blob = w.pre(f"getelementptr i8, i8* %self, i64 {_TUPLE_ITEMS + 8}")
        blob = w.pre(f"load i8*, i8** {w.pre(f'bitcast i8* {blob} to i8**')}")
        cfg = w.pre(f"getelementptr i8, i8* {blob}, i64 {_BYTES_DATA}")
        cfg = w.pre(f"load i64, i64* {w.pre(f'bitcast i8* {cfg} to i64*')}")
        self.cfg = w.pre(f"inttoptr i64 {cfg} to i64*")
        self._cells = {}
        self.n_params, self.n_dims = self.cell(_CFG_N_PARAMS), self.cell(_CFG_N_DIMS)
        self.n_aparams, self.n_scalars = self.cell(_CFG_N_APARAMS), self.cell(_CFG_N_SCALARS)
        self.n_arrays, self.out_len = self.cell(_CFG_N_ARRAYS), self.cell(_CFG_OUT_LEN)
        self.stack_size = self.cell(_CFG_STACK)
        scratch = [("data", _OBJ, self.n_params), ("strides", "i64", self.n_dims),
                   ("dims", "i64", self.n_dims), ("sout", "double", self.n_scalars),
                   ("aout", "double*", self.n_arrays), ("objs", _OBJ, self.n_arrays),
                   ("fresh", _OBJ, self.n_arrays), ("replaced", _OBJ, self.n_arrays),
                   ("aobj", _OBJ, self.n_aparams), ("alo", "i64", self.n_aparams),
                   ("ahi", "i64", self.n_aparams), ("bobj", _OBJ, self.out_len),
                   ("blo", "i64", self.out_len), ("bhi", "i64", self.out_len),
                   ("stack", _OBJ, self.stack_size)]
        # One stack allocation, cut into the arrays (each a multiple of 8 bytes): one
        # dynamic alloca costs about what fifteen cost each.
        total = "0"
        offsets = []
        for _, _, count in scratch:
            offsets.append(total)
            total = w.pre(f"add i64 {total}, {count}")
        base = w.pre(f"alloca i64, i64 {total}")
        for (name, ty, _), offset in zip(scratch, offsets):
            at = w.pre(f"getelementptr i64, i64* {base}, i64 {offset}")
            setattr(self, name, w.pre(f"bitcast i64* {at} to {ty}*"))

    def cell(self, index):
        """The config's cell ``index`` (an i64), loaded in the prologue."""
        if index not in self._cells:
            w = self.w
            at = w.pre(f"getelementptr i64, i64* {self.cfg}, i64 {index}")
            self._cells[index] = w.pre(f"load i64, i64* {at}")
        return self._cells[index]

    def pointer(self, index, ty="i64"):
        """The config's "ptr" cell ``index`` as a ``ty*``."""
        return self.w.op(f"inttoptr i64 {self.cell(index)} to {ty}*")


def _entry_ir(f):
    """The LLVM module text of the process's entry function (see the module docstring);
    ``f``: this process's facts."""
    w = _Writer()
    fr = _Frame(w)
    w.require(w.cmp("eq", "i64", "%nargs", fr.n_params))
    out_obj = _keyword_check(w, fr, f)
    _parameter_checks(w, fr, f)
    row = _row_lookup(w, fr)
    sp = w.var("i64", 0)  # the result program's stack: what the fail path releases
    with w.loop(fr.n_arrays) as (k, _):
        for name in ("fresh", "replaced"):
            w.store("null", getattr(fr, name), _OBJ, k)
    value = w.get(out_obj, _OBJ)
    with w.when(w.cmp("ne", _OBJ, value, "null")):
        _out_checks(w, fr, f, row, value)
    _allocate(w, fr, f, row)
    _call_body(w, fr, row)
    _build_results(w, fr, f, sp)
    root = w.load(fr.stack, _OBJ, 0)
    _release_fresh(w, fr, f)
    w.emit(f"ret i8* {root}")
    w.label("fail")  # an allocation failed (its exception is set): release what was made
    with w.loop(w.get(sp, "i64")) as (i, _):
        w.call("void", f["Py_DecRef"], [_OBJ], [w.load(fr.stack, _OBJ, i)])
    _release_fresh(w, fr, f)
    w.emit("ret i8* null")
    _fallback_block(w, fr, f)
    return w.text(f'define i8* @"{_SYMBOL}"(i8* %self, i8** %args, i64 %nargs, '
                  'i8* %kwnames) {') + _DIMS_EQUAL


def _keyword_check(w, fr, f):
    """No keyword at all, or (where the entry has out) exactly ``out``: a slot holding its
    value (null where the call has none)."""
    out = w.var(_OBJ, "null")
    with w.when(w.cmp("ne", _OBJ, "%kwnames", "null")):
        w.require(w.cmp("ne", "i64", fr.cell(_CFG_HAS_OUT), 0))
        w.require(w.cmp("eq", "i64", w.field("%kwnames", _OB_SIZE, "i64"), 1))
        # The compiler interns keyword names: an equal string that is another object (one
        # built at run time) goes to the fallback, which reads it as out= all the same.
        name = w.field("%kwnames", _TUPLE_ITEMS, _OBJ)
        w.require(w.cmp("eq", _OBJ, name, w.const_ptr(f["out"])))
        w.set(out, _OBJ, w.load("%args", _OBJ, "%nargs"))
    return out


def _dtype_checks(w, obj, f, mask):
    """An exact ndarray of native float64 whose flags hold all of ``mask`` (an i32)."""
    w.require(w.cmp("eq", _OBJ, w.field(obj, _OB_TYPE, _OBJ), w.const_ptr(f["ndarray"])))
    descr = w.field(obj, _ARRAY_DESCR, _OBJ)
    w.require(w.cmp("eq", "i32", w.field(descr, _DESCR_TYPE_NUM, "i32"), _NPY_DOUBLE))
    w.require(w.cmp("eq", "i8", w.field(descr, _DESCR_BYTEORDER, "i8"), ord("=")))
    flags = w.op(f"and i32 {w.field(obj, _ARRAY_FLAGS, 'i32')}, {mask}")
    w.require(w.cmp("eq", "i32", flags, mask))


def _parameter_checks(w, fr, f):
    """Check each parameter and store its data pointer; of each array parameter its dims
    and strides (one after another), the object and the byte range it spans."""
    contiguous = w.cmp("ne", "i64", fr.cell(_CFG_CONTIGUOUS), 0)
    mask = w.op(f"select i1 {contiguous}, i32 {_ALIGNED | _C_CONTIGUOUS}, i32 {_ALIGNED}")
    kinds = fr.pointer(_CFG_PARAMS)
    at, q = w.var("i64", 0), w.var("i64", 0)
    with w.loop(fr.n_params) as (p, next_param):
        obj = w.load("%args", _OBJ, p)
        kind = w.load(kinds, "i64", p)
        with w.when(w.cmp("slt", "i64", kind, 0)):
            w.require(w.cmp("eq", _OBJ, w.field(obj, _OB_TYPE, _OBJ), w.const_ptr(f["float"])))
            # A float is immutable: the body reads its value where it lies.
            w.store(w.at(obj, "i8", _FLOAT_VALUE), fr.data, _OBJ, p)
            w.goto(next_param)
        _dtype_checks(w, obj, f, mask)
        nd = w.op(f"sext i32 {w.field(obj, _ARRAY_ND, 'i32')} to i64")
        w.require(w.cmp("eq", "i64", nd, kind))
        data = w.field(obj, _ARRAY_DATA, _OBJ)
        w.store(data, fr.data, _OBJ, p)
        dims, strides = w.field(obj, _ARRAY_DIMS, "i64*"), w.field(obj, _ARRAY_STRIDES, "i64*")
        first = w.get(at, "i64")
        # The byte range: from the first element each axis reaches (dim - 1) * stride bytes
        # up or down; empty where a dim is 0.
        low, high, empty = w.var("i64", 0), w.var("i64", 8), w.var("i1", "false")
        with w.loop(kind) as (i, _):
            d, s = w.load(dims, "i64", i), w.load(strides, "i64", i)
            to = w.op(f"add i64 {first}, {i}")
            w.store(d, fr.dims, "i64", to)
            w.store(s, fr.strides, "i64", to)
            reach = w.op(f"mul i64 {w.op(f'sub i64 {d}, 1')}, {s}")
            up = w.cmp("sgt", "i64", reach, 0)
            w.set(high, "i64", w.op(f"add i64 {w.get(high, 'i64')}, "
                                    f"{w.op(f'select i1 {up}, i64 {reach}, i64 0')}"))
            w.set(low, "i64", w.op(f"add i64 {w.get(low, 'i64')}, "
                                   f"{w.op(f'select i1 {up}, i64 0, i64 {reach}')}"))
            w.set(empty, "i1", w.op(f"or i1 {w.get(empty, 'i1')}, "
                                    f"{w.cmp('eq', 'i64', d, 0)}"))
        base = w.op(f"ptrtoint i8* {data} to i64")
        lo = w.op(f"add i64 {base}, {w.get(low, 'i64')}")
        top = w.op(f"add i64 {base}, {w.get(high, 'i64')}")
        hi = w.op(f"select i1 {w.get(empty, 'i1')}, i64 {lo}, i64 {top}")
        index = w.get(q, "i64")
        w.store(obj, fr.aobj, _OBJ, index)
        w.store(lo, fr.alo, "i64", index)
        w.store(hi, fr.ahi, "i64", index)
        w.set(q, "i64", w.op(f"add i64 {index}, 1"))
        w.set(at, "i64", w.op(f"add i64 {first}, {kind}"))


def _row_lookup(w, fr):
    """A slot holding the first published row whose parameter dims are the call's (an
    i64*; null where the entry has no table). No such row: the fallback. The count is
    read once: rows below it are whole and never change."""
    row = w.var("i64*", "null")
    width = fr.cell(_CFG_WIDTH)
    with w.when(w.cmp("ne", "i64", width, 0)):
        found = w.new_label("row_found")
        table = fr.pointer(_CFG_TABLE)
        with w.loop(fr.cell(_CFG_COUNT)) as (r, next_row):
            start = w.at(table, "i64", w.op(f"mul i64 {r}, {width}"))
            with w.loop(fr.n_dims) as (i, _):
                same = w.cmp("eq", "i64", w.load(fr.dims, "i64", i), w.load(start, "i64", i))
                w.require(same, next_row)
            w.set(row, "i64*", start)
            w.goto(found)
        w.emit("br label %fallback")  # no row matched
        w.label(found)
    return row


def _row_result(w, fr, row, k):
    """(ndim, dims as an i64*, size in bytes) of array result ``k`` in the matched row."""
    start = w.get(row, "i64*")
    at = w.op(f"add i64 {fr.n_dims}, {w.op(f'mul i64 {k}, 3')}")
    nd = w.load(start, "i64", at)
    dims = w.op(f"inttoptr i64 {w.load(start, 'i64', w.op(f'add i64 {at}, 1'))} to i64*")
    return nd, dims, w.load(start, "i64", w.op(f"add i64 {at}, 2"))


def _apart(w, obj, lo, hi, other, other_lo, other_hi):
    """Require another object than ``other``, sharing no byte with [other_lo, other_hi)."""
    w.require(w.cmp("ne", _OBJ, obj, other))
    overlap = w.op(f"and i1 {w.cmp('ult', 'i64', lo, other_hi)}, "
                   f"{w.cmp('ult', 'i64', other_lo, hi)}")
    w.require(w.op(f"xor i1 {overlap}, true"))


def _out_checks(w, fr, f, row, value):
    """Check the out= buffers (``value`` is out='s object); record, per aout index a
    buffer replaces, the buffer in ``replaced``."""
    places = fr.pointer(_CFG_OUT)
    with w.when(w.cmp("eq", "i64", fr.out_len, 1)):
        w.store(value, fr.bobj, _OBJ, 0)
    with w.when(w.cmp("ne", "i64", fr.out_len, 1)):
        w.require(w.cmp("eq", _OBJ, w.field(value, _OB_TYPE, _OBJ), w.const_ptr(f["tuple"])))
        w.require(w.cmp("eq", "i64", w.field(value, _OB_SIZE, "i64"), fr.out_len))
        items = w.op(f"bitcast i8* {w.at(value, 'i8', _TUPLE_ITEMS)} to i8**")
        with w.loop(fr.out_len) as (j, _):
            w.store(w.load(items, _OBJ, j), fr.bobj, _OBJ, j)
    protect = fr.pointer(_CFG_PROTECT)
    with w.loop(fr.out_len) as (j, next_place):
        obj, k = w.load(fr.bobj, _OBJ, j), w.load(places, "i64", j)
        with w.when(w.cmp("slt", "i64", k, 0)):  # a float's place: None, an empty range
            w.require(w.cmp("eq", _OBJ, obj, w.const_ptr(f["None"])))
            w.store(0, fr.blo, "i64", j)
            w.store(0, fr.bhi, "i64", j)
            w.goto(next_place)
        _dtype_checks(w, obj, f, _C_CONTIGUOUS | _ALIGNED | _WRITEABLE)
        nd, dims, nbytes = _row_result(w, fr, row, k)
        w.require(w.cmp("eq", "i64", w.op(f"sext i32 {w.field(obj, _ARRAY_ND, 'i32')} to i64"),
                        nd))
        w.require(w.op(f"call i1 @dims_equal(i64* {w.field(obj, _ARRAY_DIMS, 'i64*')}, "
                       f"i64* {dims}, i64 {nd})"))
        lo = w.op(f"ptrtoint i8* {w.field(obj, _ARRAY_DATA, _OBJ)} to i64")
        hi = w.op(f"add i64 {lo}, {nbytes}")
        with w.loop(fr.n_aparams) as (a, _):
            _apart(w, obj, lo, hi, w.load(fr.aobj, _OBJ, a), w.load(fr.alo, "i64", a),
                   w.load(fr.ahi, "i64", a))
        with w.loop(j) as (b, _):
            _apart(w, obj, lo, hi, w.load(fr.bobj, _OBJ, b), w.load(fr.blo, "i64", b),
                   w.load(fr.bhi, "i64", b))
        with w.loop(fr.cell(_CFG_N_PROTECT)) as (z, _):
            zone = w.op(f"mul i64 {z}, 2")
            _apart(w, obj, lo, hi, "null", w.load(protect, "i64", zone),
                   w.load(protect, "i64", w.op(f"add i64 {zone}, 1")))
        w.store(lo, fr.blo, "i64", j)
        w.store(hi, fr.bhi, "i64", j)
        w.store(obj, fr.replaced, _OBJ, k)


def _allocate(w, fr, f, row):
    """Each array result's buffer: the out= buffer that replaces it, else a new C-order
    float64 array of the row's shape (NULL: the fail path)."""
    with w.loop(fr.n_arrays) as (k, next_array):
        buffer = w.load(fr.replaced, _OBJ, k)
        with w.when(w.cmp("ne", _OBJ, buffer, "null")):
            w.store(buffer, fr.objs, _OBJ, k)
            w.store(w.op(f"bitcast i8* {w.field(buffer, _ARRAY_DATA, _OBJ)} to double*"),
                    fr.aout, "double*", k)
            w.goto(next_array)
        nd, dims, _ = _row_result(w, fr, row, k)
        made = w.call(_OBJ, f["PyArray_New"], _ARRAY_NEW_ARGS,
                      [w.const_ptr(f["ndarray"]), w.op(f"trunc i64 {nd} to i32"), dims,
                       str(_NPY_DOUBLE), "null", "null", "0", "0", "null"])
        w.require(w.cmp("ne", _OBJ, made, "null"), "fail")
        w.store(made, fr.fresh, _OBJ, k)
        w.store(made, fr.objs, _OBJ, k)
        w.store(w.op(f"bitcast i8* {w.field(made, _ARRAY_DATA, _OBJ)} to double*"),
                fr.aout, "double*", k)


def _call_body(w, fr, row):
    """The body, with the fifth argument ``shapes`` where the config says so."""
    types4 = "void (i8**, i64*, double*, double**)*"
    types5 = "void (i8**, i64*, double*, double**, i64*)*"
    args4 = f"i8** {fr.data}, i64* {fr.strides}, double* {fr.sout}, double** {fr.aout}"
    body = fr.cell(_CFG_BODY)
    with w.when(w.cmp("ne", "i64", fr.cell(_CFG_PASS_SHAPES), 0)):
        w.emit(f"call void {w.op(f'inttoptr i64 {body} to {types5}')}({args4}, "
               f"i64* {fr.dims})")
        w.goto("called")
    w.emit(f"call void {w.op(f'inttoptr i64 {body} to {types4}')}({args4})")
    w.emit("br label %called")
    w.label("called")


def _build_results(w, fr, f, sp):
    """Run the result program: the result tree, built on the value stack (every object on
    it owned by this call until a tuple takes it)."""
    program = fr.pointer(_CFG_PROGRAM)

    def push(obj):
        top = w.get(sp, "i64")
        w.store(obj, fr.stack, _OBJ, top)
        w.set(sp, "i64", w.op(f"add i64 {top}, 1"))

    with w.loop(fr.cell(_CFG_PROGRAM_LEN)) as (t, next_op):
        at = w.op(f"mul i64 {t}, 2")
        op, arg = w.load(program, "i64", at), w.load(program, "i64", w.op(f"add i64 {at}, 1"))
        with w.when(w.cmp("eq", "i64", op, _OP_FLOAT)):
            made = w.call(_OBJ, f["PyFloat_FromDouble"], ["double"],
                          [w.load(fr.sout, "double", arg)])
            w.require(w.cmp("ne", _OBJ, made, "null"), "fail")
            push(made)
            w.goto(next_op)
        with w.when(w.cmp("eq", "i64", op, _OP_ARRAY)):
            fresh = w.load(fr.fresh, _OBJ, arg)
            with w.when(w.cmp("ne", _OBJ, fresh, "null")):  # its first use takes the
                w.store("null", fr.fresh, _OBJ, arg)        # allocation's reference
                push(fresh)
                w.goto(next_op)
            obj = w.load(fr.objs, _OBJ, arg)  # an out= buffer, or a fresh array again
            w.call("void", f["Py_IncRef"], [_OBJ], [obj])
            push(obj)
            w.goto(next_op)
        made = w.call(_OBJ, f["PyTuple_New"], ["i64"], [arg])  # _OP_TUPLE
        w.require(w.cmp("ne", _OBJ, made, "null"), "fail")
        first = w.op(f"sub i64 {w.get(sp, 'i64')}, {arg}")
        items = w.op(f"bitcast i8* {w.at(made, 'i8', _TUPLE_ITEMS)} to i8**")
        with w.loop(arg) as (i, _):
            w.store(w.load(fr.stack, _OBJ, w.op(f"add i64 {first}, {i}")), items, _OBJ, i)
        w.set(sp, "i64", first)  # the tuple owns them now
        push(made)


def _release_fresh(w, fr, f):
    """Drop the references of the allocations the result tree did not take (arrays the
    body wrote but the tree does not return; all of them on the fail path)."""
    with w.loop(fr.n_arrays) as (k, _):
        w.call("void", f["Py_DecRef"], [_OBJ], [w.load(fr.fresh, _OBJ, k)])


def _fallback_block(w, fr, f):
    """The call, exactly as it came, to the entry's fallback (held for the call's length:
    the fallback may replace itself)."""
    w.label("fallback")
    fallback = w.op(f"inttoptr i64 {fr.cell(_CFG_FALLBACK)} to i8*")
    w.call("void", f["Py_IncRef"], [_OBJ], [fallback])
    result = w.call(_OBJ, f["PyObject_Vectorcall"], [_OBJ, "i8**", "i64", _OBJ],
                    [fallback, "%args", "%nargs", "%kwnames"])
    w.call("void", f["Py_DecRef"], [_OBJ], [fallback])
    w.emit(f"ret i8* {result}")


# --- the process's entry function ----------------------------------------------------------

#: The most stack one call's scratch arrays may take (bytes); a larger spec is refused
#: (ShimUnavailable): Python threads may run on small stacks.
MAX_SCRATCH = 1 << 18


def _entry_function():
    """The address of the process's entry function, compiled on first use and kept for
    the process's life (every entry's builtin points at it)."""
    with _lock:
        if "function" in _state:
            return _state["function"]
    facts = _process()
    llvm = facts["llvm"]
    module = llvm.parse_assembly(_entry_ir(facts))
    module.verify()
    machine = target_machine(2)
    _optimize(llvm, module, machine)
    engine = llvm.create_mcjit_compiler(module, machine)  # owns the machine from now on
    engine.finalize_object()
    address = engine.get_function_address(_SYMBOL)
    with _lock:
        if "function" not in _state:  # (two threads may both have compiled: one is kept)
            _state["engine"], _state["function"] = engine, address
        return _state["function"]


def _optimize(llvm, module, machine):
    """The few IR passes the function needs: promote its stack-slot variables to registers
    (sroa), fold (instcombine), merge blocks (simplifycfg). Measured (2 shared cores):
    the whole O2 pipeline took 3x as long to build and made calls no faster. Skipped on
    an llvmlite without the new pass manager (the code is the same, ~30 ns slower)."""
    if not hasattr(llvm, "create_new_module_pass_manager"):  # pragma: no cover - old llvmlite
        return
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(
        speed_level=1))
    passes = llvm.create_new_module_pass_manager()
    passes.add_sroa_pass()
    passes.add_instruction_combine_pass()
    passes.add_simplify_cfg_pass()
    passes.add_dead_code_elimination_pass()
    passes.run(module, builder)


# --- entries --------------------------------------------------------------------------------

class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


class _Anchor:
    """Everything an entry's config points at, held as long as the builtin lives (its
    ``self`` is the tuple ``(anchor, blob)``): the config and the shape table, the
    result dims the rows point at, the fallback, the method definition, what the caller
    asked to keep and protect."""

    __slots__ = ("config", "cells", "result_dims", "rows", "fallback", "method", "keep",
                 "protect", "__weakref__")


class _Layout:
    """Where things are in an entry's shape table: a row is the array parameters' dims
    (``n_dims`` int64s, in parameter order) then, per array result k, its ``ndim``, the
    address of its dims and its size in bytes."""

    def __init__(self, spec):
        self.n_dims = sum(nd for nd in spec.params if nd is not None)
        self.width = self.n_dims + 3 * spec.n_arrays

    def result(self, k):
        return self.n_dims + 3 * k


def _program(spec):
    """The result tree as the entry's program: (op, arg) pairs in post-order, and the
    deepest its value stack gets."""
    ops, depth, deepest = [], 0, 0

    def walk(t):
        nonlocal depth, deepest
        if _is_leaf(t):
            kind, k = t
            ops.append((_OP_FLOAT, k) if kind == "s" else
                       (_OP_ARRAY, spec.out[k] if kind == "o" else k))
            depth += 1
        else:
            for item in t:
                walk(item)
            ops.append((_OP_TUPLE, len(t)))
            depth += 1 - len(t)
        deepest = max(deepest, depth)

    walk(spec.results)
    return ops, deepest


def _config(spec, layout, table, protect):
    """The entry's config cells (see _CFG_*): the header, then the arrays it points at."""
    ops, deepest = _program(spec)
    kinds = [-1 if nd is None else nd for nd in spec.params]
    places = [-1 if k is None else k for k in spec.out or ()]
    zones = [v for zone in protect for v in zone]
    program = [v for op in ops for v in op]
    n_aparams = len(spec.array_params())
    scratch = 8 * (len(kinds) + 2 * layout.n_dims + spec.n_scalars + 4 * spec.n_arrays
                   + 3 * n_aparams + 3 * len(places) + deepest)
    if scratch > MAX_SCRATCH:
        raise ShimUnavailable(f"gradc.shim: a call of this spec would take {scratch} bytes of "
                              f"stack (more than {MAX_SCRATCH})")
    config = (ctypes.c_int64 * (_CFG_CELLS + len(kinds) + len(places) + len(zones)
                                + len(program)))()
    base = ctypes.addressof(config)
    at = _CFG_CELLS

    def place(values):
        nonlocal at
        start = base + 8 * at
        for v in values:
            config[at] = v
            at += 1
        return start

    header = {
        _CFG_N_PARAMS: len(kinds), _CFG_PARAMS: place(kinds), _CFG_N_DIMS: layout.n_dims,
        _CFG_N_APARAMS: n_aparams, _CFG_CONTIGUOUS: int(spec.contiguous),
        _CFG_PASS_SHAPES: int(spec.pass_shapes), _CFG_N_SCALARS: spec.n_scalars,
        _CFG_N_ARRAYS: spec.n_arrays, _CFG_TABLE: ctypes.addressof(table),
        _CFG_COUNT: 0, _CFG_WIDTH: layout.width, _CFG_HAS_OUT: int(spec.out is not None),
        _CFG_OUT_LEN: len(places), _CFG_OUT: place(places), _CFG_N_PROTECT: len(protect),
        _CFG_PROTECT: place(zones), _CFG_PROGRAM: place(program),
        _CFG_PROGRAM_LEN: len(ops), _CFG_STACK: deepest,
    }
    for index, value in header.items():
        config[index] = value
    return config


class Entry:
    """A compiled entry: ``function`` (the builtin: call it like the Python function),
    ``allow`` (add a row to the shape table), ``set_fallback``, ``rows``, ``spec``."""

    def __init__(self, spec, name, anchor, function):
        self.spec, self.name, self._anchor, self.function = spec, name, anchor, function
        self._layout = _Layout(spec)
        # allow() from two threads at once must not write one row twice (a row of one
        # call's dims and another's result shapes would be a buffer overrun).
        self._lock = threading.Lock()

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
        with self._lock:
            old = anchor.fallback
            anchor.fallback = fallback  # held before the machine code may read it...
            anchor.config[_CFG_FALLBACK] = id(fallback)
        del old  # ...and the old one released only after it may no longer

    def allow(self, param_shapes, result_shapes):
        """Let the entry take calls whose array parameters have ``param_shapes`` (one shape
        per array parameter, in order; None may stand at the floats' places), allocating
        array result k with ``result_shapes[k]``. True where the row is (now) in the table;
        False where the table is full (those shapes stay with the fallback)."""
        params = self._param_shapes(param_shapes)
        results = self._result_shapes(result_shapes)
        with self._lock:
            return self._add_row(params, results)

    def _add_row(self, params, results):
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
        anchor.config[_CFG_COUNT] = index + 1  # published last: the row is whole by now
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


def make_entry(spec, body_address, name, keep=(), protect=(), opt=None):
    """The :class:`Entry` of the body at ``body_address`` (a native function with the
    module's ABI, described by ``spec``), its builtin named ``name``.

    ``keep``: objects the body needs alive (its engine, a numba cfunc object); the entry
    holds them. ``protect``: arrays the body reads besides its parameters (captured
    constants): no out= buffer may share a byte with them (held too). Building an entry
    compiles nothing (the process's entry function is compiled once, by the first); it
    raises :class:`ShimUnavailable` where this process's layouts are not the verified
    ones or the spec is too large for a call's stack (:data:`MAX_SCRATCH`). ``opt`` (a
    codegen level, 0-3) is accepted for callers of this module's first version, which
    compiled each entry; it changes nothing now.
    """
    if opt not in (None, 0, 1, 2, 3):
        raise ValueError(f"gradc.shim: opt must be None or 0..3, not {opt!r}")
    if not isinstance(spec, EntrySpec):
        raise TypeError("gradc.shim: spec must be an EntrySpec")
    if type(body_address) is not int or body_address <= 0:
        raise ValueError(f"gradc.shim: body_address must be a positive int, not {body_address!r}")
    if type(name) is not str or not name or "\0" in name:
        raise ValueError(f"gradc.shim: name must be a non-empty str without NUL, not {name!r}")
    protect = tuple(protect)
    if not all(type(a) is np.ndarray for a in protect):
        raise TypeError("gradc.shim: protect takes numpy arrays")
    function_address = _entry_function()
    layout = _Layout(spec)
    anchor = _Anchor()
    anchor.cells = (ctypes.c_int64 * max(CAPACITY * layout.width, 1))()
    anchor.config = _config(spec, layout, anchor.cells, [_extent(a) for a in protect])
    anchor.config[_CFG_BODY] = body_address
    anchor.result_dims, anchor.rows = [], []
    anchor.keep, anchor.protect = tuple(keep), protect
    anchor.fallback = _default_fallback(name, spec)
    anchor.config[_CFG_FALLBACK] = id(anchor.fallback)
    anchor.method = _MethodDef(name.encode("utf-8"), function_address,
                               _METH_FASTCALL | _METH_KEYWORDS,
                               f"{name}{_describe(spec)}: a gradc.shim entry".encode("utf-8"))
    blob = ctypes.addressof(anchor.config).to_bytes(8, sys.byteorder)
    new = _pythonapi("PyCFunction_NewEx", ctypes.py_object, ctypes.c_void_p, ctypes.py_object,
                     ctypes.py_object)
    function = new(ctypes.addressof(anchor.method), (anchor, blob), "gradc.shim")
    return Entry(spec, name, anchor, function)
