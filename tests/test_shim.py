"""gradc.shim: the C entry written in LLVM IR takes exactly the calls it can answer, and
gives every other call, untouched, to its fallback.

The bodies here are LLVM IR text with the shim's ABI (``void body(i8** data, i64*
strides, double* sout, double** aout [, i64* shapes])``), compiled by llvmlite: no numba.
"""
import gc
import os
import subprocess
import sys
import tracemalloc
import weakref

import llvmlite.binding as llvm
import numpy as np
import pytest

import gradc
from gradc import shim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# value = sum(x) + y (x read through its stride, n from shapes), gradient[i] = 2 * x[i].
SUM_BODY = """
define void @body(i8** %data, i64* %strides, double* %sout, double** %aout, i64* %shapes) {
entry:
  %xd = load i8*, i8** %data
  %yslot = getelementptr i8*, i8** %data, i64 1
  %yd = load i8*, i8** %yslot
  %yp = bitcast i8* %yd to double*
  %y = load double, double* %yp
  %s = load i64, i64* %strides
  %n = load i64, i64* %shapes
  %g = load double*, double** %aout
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %step]
  %acc = phi double [0.0, %entry], [%acc1, %step]
  %done = icmp eq i64 %i, %n
  br i1 %done, label %exit, label %step
step:
  %off = mul i64 %i, %s
  %p8 = getelementptr i8, i8* %xd, i64 %off
  %p = bitcast i8* %p8 to double*
  %v = load double, double* %p
  %acc1 = fadd double %acc, %v
  %gv = fmul double %v, 2.0
  %gp = getelementptr double, double* %g, i64 %i
  store double %gv, double* %gp
  %i1 = add i64 %i, 1
  br label %loop
exit:
  %r = fadd double %acc, %y
  store double %r, double* %sout
  ret void
}
"""

# Two floats: sout = (a * b, a - b).
FLOAT_BODY = """
define void @body(i8** %data, i64* %strides, double* %sout, double** %aout) {
  %ap = load i8*, i8** %data
  %bslot = getelementptr i8*, i8** %data, i64 1
  %bp = load i8*, i8** %bslot
  %af = bitcast i8* %ap to double*
  %bf = bitcast i8* %bp to double*
  %a = load double, double* %af
  %b = load double, double* %bf
  %m = fmul double %a, %b
  %d = fsub double %a, %b
  store double %m, double* %sout
  %s1 = getelementptr double, double* %sout, i64 1
  store double %d, double* %s1
  ret void
}
"""

# What the body is handed: sout = (shapes[0..2], strides[0..2]) of params (2-d, float, 1-d).
LAYOUT_BODY = """
define void @body(i8** %data, i64* %strides, double* %sout, double** %aout, i64* %shapes) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %sp = getelementptr i64, i64* %shapes, i64 %i
  %sv = load i64, i64* %sp
  %sf = sitofp i64 %sv to double
  %o1 = getelementptr double, double* %sout, i64 %i
  store double %sf, double* %o1
  %tp = getelementptr i64, i64* %strides, i64 %i
  %tv = load i64, i64* %tp
  %tf = sitofp i64 %tv to double
  %j = add i64 %i, 3
  %o2 = getelementptr double, double* %sout, i64 %j
  store double %tf, double* %o2
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, 3
  br i1 %more, label %loop, label %exit
exit:
  ret void
}
"""

# params (x: 1-d, c: float, z: 1-d), n = shapes[0]: sout[0] = c, aout[0] = c * x,
# aout[1] = c * z.
SCALE_BODY = """
define void @body(i8** %data, i64* %strides, double* %sout, double** %aout, i64* %shapes) {
entry:
  %xd = load i8*, i8** %data
  %cslot = getelementptr i8*, i8** %data, i64 1
  %cd = load i8*, i8** %cslot
  %cp = bitcast i8* %cd to double*
  %c = load double, double* %cp
  %zslot = getelementptr i8*, i8** %data, i64 2
  %zd = load i8*, i8** %zslot
  %xp = bitcast i8* %xd to double*
  %zp = bitcast i8* %zd to double*
  %n = load i64, i64* %shapes
  %a0 = load double*, double** %aout
  %a1slot = getelementptr double*, double** %aout, i64 1
  %a1 = load double*, double** %a1slot
  store double %c, double* %sout
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %step]
  %done = icmp eq i64 %i, %n
  br i1 %done, label %exit, label %step
step:
  %xe = getelementptr double, double* %xp, i64 %i
  %ze = getelementptr double, double* %zp, i64 %i
  %xv = load double, double* %xe
  %zv = load double, double* %ze
  %r0 = fmul double %c, %xv
  %r1 = fmul double %c, %zv
  %w0 = getelementptr double, double* %a0, i64 %i
  %w1 = getelementptr double, double* %a1, i64 %i
  store double %r0, double* %w0
  store double %r1, double* %w1
  %i1 = add i64 %i, 1
  br label %loop
exit:
  ret void
}
"""


_ENGINES = {}


def body(text):
    """(address, engine) of a body's IR text, compiled once per test session."""
    if text not in _ENGINES:
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(text), shim.target_machine())
        engine.finalize_object()
        _ENGINES[text] = engine
    engine = _ENGINES[text]
    return engine.get_function_address("body"), engine


class Recorder:
    """A fallback that records what it was given and returns a marker."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return "fallback"


def entry_of(text, fallback=None, **spec):
    address, engine = body(text)
    entry = shim.make_entry(shim.EntrySpec(**spec), address, "f", keep=(engine,))
    if fallback is not None:
        entry.set_fallback(fallback)
    return entry


def sum_entry(contiguous=True, rows=((5,),)):
    fallback = Recorder()
    entry = entry_of(SUM_BODY, fallback, params=(1, None), results=(("s", 0), ("a", 0)),
                     n_scalars=1, n_arrays=1, out=(0,), pass_shapes=True,
                     contiguous=contiguous)
    for n in rows:
        assert entry.allow((n,), (n,))
    return entry, fallback


def sequential_sum(x, y):
    acc = 0.0
    for v in x:
        acc += float(v)
    return acc + y


# --- what the entry takes ---------------------------------------------------------------

def test_floats_reach_the_body_and_results_come_back_as_floats():
    entry = entry_of(FLOAT_BODY, Recorder(), params=(None, None),
                     results=(("s", 1), (("s", 0),)), n_scalars=2, n_arrays=0)
    assert entry.function(3.0, 0.5) == (2.5, (1.5,))
    leaf = entry_of(FLOAT_BODY, params=(None, None), results=("s", 0), n_scalars=2, n_arrays=0)
    assert leaf.function(3.0, 0.5) == 1.5  # a one-leaf tree is the leaf itself


def test_array_results_are_bit_exact_and_fresh_per_call():
    entry, fallback = sum_entry()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5)
    value, grad = entry.function(x, 0.25)
    assert value == sequential_sum(x, 0.25)
    assert np.array_equal(grad, 2.0 * x) and grad.dtype == np.float64
    assert grad.flags.c_contiguous and grad.flags.owndata and grad.flags.writeable
    again = entry.function(x, 0.25)[1]
    assert again is not grad and np.array_equal(again, grad)
    assert not fallback.calls


def test_out_buffer_is_written_and_returned_itself():
    entry, fallback = sum_entry()
    x, dx = np.arange(5.0), np.full(5, np.nan)
    value, grad = entry.function(x, 1.0, out=dx)
    assert grad is dx and np.array_equal(dx, 2.0 * x) and value == 11.0
    assert not fallback.calls


def test_two_rows_each_allocate_their_shape():
    entry, fallback = sum_entry(rows=((5,), (3,)))
    assert entry.rows == ((((5,),), ((5,),)), (((3,),), ((3,),)))
    for n in (5, 3):
        x = np.linspace(0.0, 1.0, n)
        value, grad = entry.function(x, 0.0)
        assert grad.shape == (n,) and value == sequential_sum(x, 0.0)
    assert not fallback.calls


def test_strided_views_get_their_strides_when_contiguity_is_not_required():
    entry, fallback = sum_entry(contiguous=False)
    base = np.arange(15.0)
    x = base[::3]  # 5 elements, stride 24 bytes
    value, grad = entry.function(x, 0.0)
    assert value == sequential_sum(x, 0.0) and np.array_equal(grad, 2.0 * x)
    backwards = base[4::-1]  # negative stride
    assert entry.function(backwards, 0.0)[0] == sequential_sum(backwards, 0.0)
    assert not fallback.calls


def test_the_body_sees_the_shapes_and_strides_of_its_array_parameters():
    def layout_entry(contiguous):
        return entry_of(LAYOUT_BODY, Recorder(), params=(2, None, 1),
                        results=tuple(("s", k) for k in range(6)), n_scalars=6, n_arrays=0,
                        pass_shapes=True, contiguous=contiguous)

    entry = layout_entry(contiguous=False)
    assert entry.allow(((3, 4), None, (7,)), ())  # None at a float's place is accepted
    a, z = np.zeros((3, 4)), np.zeros(21)[::3]
    assert entry.function(a, 1.0, z) == (3.0, 4.0, 7.0, 32.0, 8.0, 24.0)
    fortran = np.asfortranarray(a)
    assert entry.function(fortran, 1.0, z) == (3.0, 4.0, 7.0, 8.0, 24.0, 24.0)
    strict = layout_entry(contiguous=True)
    strict.allow(((3, 4), (7,)), ())
    assert strict.function(fortran, 1.0, np.zeros(7)) == "fallback"
    assert strict.function(a, 1.0, np.zeros(7)) == (3.0, 4.0, 7.0, 32.0, 8.0, 8.0)


# --- what goes to the fallback, untouched ---------------------------------------------------

class Sub(np.ndarray):
    pass


def _unaligned(n):
    raw = np.zeros(8 * n + 1, dtype=np.uint8)
    view = raw[1:].view(np.float64)
    assert not view.flags.aligned
    return view


def _read_only(n):
    a = np.zeros(n)
    a.flags.writeable = False
    return a


X = np.arange(5.0)
_BASE = np.zeros(10)
MISMATCHES = {
    "int for a float": ((X, 1), {}),
    "bool for a float": ((X, True), {}),
    "numpy float64 scalar for a float": ((X, np.float64(1.0)), {}),
    "float32 array": ((X.astype(np.float32), 1.0), {}),
    "int array": ((np.arange(5), 1.0), {}),
    "wrong ndim": ((X.reshape(5, 1), 1.0), {}),
    "strided view when contiguity is required": ((np.arange(10.0)[::2], 1.0), {}),
    "byteswapped array": ((X.astype(">f8"), 1.0), {}),
    "unaligned array": ((_unaligned(5), 1.0), {}),
    "ndarray subclass": ((X.view(Sub), 1.0), {}),
    "list for an array": (([0.0] * 5, 1.0), {}),
    "shape not in the table": ((np.arange(6.0), 1.0), {}),
    "too few arguments": ((X,), {}),
    "too many arguments": ((X, 1.0, 2.0), {}),
    "out given positionally": ((X, 1.0, np.zeros(5)), {}),
    "a parameter by keyword": ((X,), {"y": 1.0}),
    "unknown keyword": ((X, 1.0), {"where": np.zeros(5)}),
    "out and another keyword": ((X, 1.0), {"out": np.zeros(5), "axis": 0}),
    "out=None": ((X, 1.0), {"out": None}),
    "read-only out": ((X, 1.0), {"out": _read_only(5)}),
    "out is x": ((X, 1.0), {"out": X}),
    "out overlapping x": ((_BASE[:5], 1.0), {"out": _BASE[4:9]}),
    "out of the wrong shape": ((X, 1.0), {"out": np.zeros(6)}),
    "out of the wrong ndim": ((X, 1.0), {"out": np.zeros((5, 1))}),
    "float32 out": ((X, 1.0), {"out": np.zeros(5, np.float32)}),
    "byteswapped out": ((X, 1.0), {"out": np.zeros(5, ">f8")}),
    "strided out": ((X, 1.0), {"out": np.zeros(10)[::2]}),
    "unaligned out": ((X, 1.0), {"out": _unaligned(5)}),
    "ndarray subclass out": ((X, 1.0), {"out": np.zeros(5).view(Sub)}),
    "a tuple for a one-array out": ((X, 1.0), {"out": (np.zeros(5),)}),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_every_mismatch_goes_to_the_fallback_with_its_arguments_intact(case):
    entry, fallback = sum_entry()
    args, kwargs = MISMATCHES[case]
    before = [a.copy() for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    assert entry.function(*args, **kwargs) == "fallback"
    (got_args, got_kwargs), = fallback.calls
    assert len(got_args) == len(args) and all(g is a for g, a in zip(got_args, args))
    assert got_kwargs.keys() == kwargs.keys()
    assert all(got_kwargs[k] is v for k, v in kwargs.items())
    after = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    assert all(np.array_equal(b, a) for b, a in zip(before, after))  # nothing was written


def test_an_out_buffer_right_next_to_x_is_taken():
    """The overlap check compares byte ranges, not bases: adjacent halves are apart."""
    entry, fallback = sum_entry()
    base = np.arange(10.0)
    value, grad = entry.function(base[:5], 0.0, out=base[5:])
    assert not fallback.calls and np.array_equal(base[5:], 2.0 * base[:5])


def test_an_out_name_built_at_run_time_goes_to_the_fallback_as_out():
    entry, fallback = sum_entry()
    dx = np.zeros(5)
    assert entry.function(X, 1.0, **{"".join(["o", "ut"]): dx}) == "fallback"
    assert fallback.calls[0][1]["out"] is dx


def test_an_entry_without_out_sends_out_to_the_fallback():
    entry = entry_of(FLOAT_BODY, Recorder(), params=(None, None), results=("s", 0),
                     n_scalars=2, n_arrays=0)
    assert entry.function(1.0, 2.0, out=None) == "fallback"


def test_the_fallbacks_exception_propagates():
    entry, _ = sum_entry()
    problem = ValueError("refused by the fallback")

    def refuse(*args, **kwargs):
        raise problem

    entry.set_fallback(refuse)
    with pytest.raises(ValueError) as info:
        entry.function(X, 1)
    assert info.value is problem


def test_without_a_fallback_a_mismatch_is_an_argument_error_naming_the_line():
    entry = entry_of(FLOAT_BODY, params=(None, None), results=("s", 0), n_scalars=2,
                     n_arrays=0)
    with pytest.raises(gradc.ArgumentError, match=r"test_shim\.py:\d+.*f\(\) was called"):
        entry.function(1, 2.0)


def test_a_fallback_may_replace_itself_while_it_runs():
    entry, _ = sum_entry()

    def first(*args, **kwargs):
        entry.set_fallback(lambda *a, **k: "second")
        return "first"

    entry.set_fallback(first)
    del first  # the entry holds the only reference, and drops it while it runs
    assert entry.function(X, 1) == "first"
    assert entry.function(X, 1) == "second"


# --- out= tuples, protected arrays, scratch arrays -----------------------------------------

def scale_entry(protect=()):
    address, engine = body(SCALE_BODY)
    spec = shim.EntrySpec(params=(1, None, 1), results=(("s", 0), (("a", 0), ("o", 2))),
                          n_scalars=1, n_arrays=2, out=(0, None, 1), pass_shapes=True,
                          contiguous=True)
    entry = shim.make_entry(spec, address, "scale", keep=(engine,), protect=protect)
    entry.set_fallback(Recorder())
    assert entry.allow(((4,), (4,)), ((4,), (4,)))
    return entry


def test_an_out_tuple_mirrors_the_gradient_with_none_at_floats():
    entry = scale_entry()
    x, z = np.arange(4.0), np.arange(4.0, 8.0)
    c, (gx, gz) = entry.function(x, 2.0, z)
    assert c == 2.0 and np.array_equal(gx, 2.0 * x) and np.array_equal(gz, 2.0 * z)
    dx, dz = np.empty(4), np.empty(4)
    c, (gx, gz) = entry.function(x, 3.0, z, out=(dx, None, dz))
    assert gx is dx and gz is dz and np.array_equal(dz, 3.0 * z)


@pytest.mark.parametrize("make", [
    lambda x, z: (np.empty(4), np.empty(4)),               # too short
    lambda x, z: [np.empty(4), None, np.empty(4)],         # a list
    lambda x, z: (np.empty(4), 0.0, np.empty(4)),          # a float's place must be None
    lambda x, z: (np.empty(4), None, None),                # a buffer's place is None
    lambda x, z: (x[::-1], None, np.empty(4)),             # shares x
    lambda x, z: (np.empty(4), None, z),                   # is z
], ids=["short", "list", "float-place", "none-buffer", "shares-x", "is-z"])
def test_a_bad_out_tuple_goes_to_the_fallback(make):
    entry = scale_entry()
    x, z = np.arange(4.0), np.arange(4.0, 8.0)
    out = make(x, z)
    assert entry.function(x, 2.0, z, out=out) == "fallback"
    shared = np.empty(4)
    assert entry.function(x, 2.0, z, out=(shared, None, shared)) == "fallback"


def test_out_may_not_overwrite_a_protected_array():
    captured = np.arange(8.0)
    entry = scale_entry(protect=(captured,))
    x, z = np.arange(4.0), np.arange(4.0, 8.0)
    before = captured.copy()
    assert entry.function(x, 2.0, z, out=(captured[2:6], None, np.empty(4))) == "fallback"
    assert np.array_equal(captured, before)
    taken = entry.function(x, 2.0, z, out=(np.empty(4), None, np.empty(4)))
    assert taken != "fallback"


# --- the table ------------------------------------------------------------------------------

def test_the_table_holds_capacity_rows_and_then_refuses():
    entry, fallback = sum_entry(rows=())
    for n in range(1, shim.CAPACITY + 1):
        assert entry.allow(((n,),), ((n,),))
    assert entry.allow(((1,),), ((1,),))  # already there
    assert not entry.allow(((shim.CAPACITY + 1,),), ((shim.CAPACITY + 1,),))
    assert entry.function(np.zeros(shim.CAPACITY + 1), 0.0) == "fallback"
    assert entry.function(np.ones(shim.CAPACITY), 0.0)[0] == float(shim.CAPACITY)
    with pytest.raises(ValueError, match="already allows"):
        entry.allow(((3,),), ((4,),))


def test_malformed_specs_and_rows_are_refused():
    with pytest.raises(ValueError, match="params"):
        shim.EntrySpec(params=(1.5,), results=("s", 0), n_scalars=1, n_arrays=0)
    with pytest.raises(ValueError, match="out of range"):
        shim.EntrySpec(params=(None,), results=("s", 1), n_scalars=1, n_arrays=0)
    with pytest.raises(ValueError, match="neither"):
        shim.EntrySpec(params=(None,), results=[("s", 0)], n_scalars=1, n_arrays=0)
    entry, _ = sum_entry(rows=())
    with pytest.raises(ValueError, match="rank"):
        entry.allow(((2, 2),), ((4,),))
    with pytest.raises(ValueError, match="negative"):
        entry.allow(((-1,),), ((1,),))


# --- lifetimes and references ---------------------------------------------------------------

def test_references_are_stable_over_many_calls():
    entry, _ = sum_entry()
    entry.set_fallback(lambda *args, **kwargs: None)  # (a Recorder would hold the arguments)
    x, dx, y = np.arange(5.0), np.zeros(5), float("0.5")
    counts = [sys.getrefcount(o) for o in (x, dx, y)]
    for _ in range(1000):
        value, grad = entry.function(x, y)
        entry.function(x, y, out=dx)
        entry.function(x, 1)  # the fallback's path
    assert [sys.getrefcount(o) for o in (x, dx, y)] == counts
    result = entry.function(x, y)
    assert sys.getrefcount(result) == 2 and sys.getrefcount(result[1]) == 3
    assert sys.getrefcount(result[0]) == 2 + 1  # the tuple's and getrefcount's argument


def test_no_memory_is_kept_over_many_calls():
    """Fresh arrays (one returned twice, one scratch array not returned), floats, tuples
    and out buffers: 10**5 calls keep nothing."""
    address, engine = body(SCALE_BODY)
    spec = shim.EntrySpec(params=(1, None, 1), results=(("s", 0), ("a", 0), ("a", 0)),
                          n_scalars=1, n_arrays=2, out=(0,), pass_shapes=True)
    entry = shim.make_entry(spec, address, "leak", keep=(engine,))
    entry.allow(((4,), (4,)), ((4,), (4,)))
    f, x, z, dx = entry.function, np.arange(4.0), np.arange(4.0), np.zeros(4)
    first = f(x, 2.0, z)
    array = first[1]
    count = sys.getrefcount(array)  # (not inside the assert: pytest keeps its operands)
    assert first[2] is array and count == 4  # the tuple twice, the name, the argument
    del first, array
    tracemalloc.start()
    try:
        for _ in range(1000):
            f(x, 2.0, z)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(50_000):
            f(x, 2.0, z)
            f(x, 2.0, z, out=dx)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 10_000, grown


def test_a_failed_allocation_raises_and_releases_what_was_built():
    address, engine = body(SCALE_BODY)
    spec = shim.EntrySpec(params=(1, None, 1), results=(("s", 0), ("a", 0), ("a", 1)),
                          n_scalars=1, n_arrays=2, pass_shapes=True)
    entry = shim.make_entry(spec, address, "huge", keep=(engine,))
    entry.allow(((4,), (4,)), ((1000,), (1 << 56,)))  # the second cannot be allocated
    x = np.arange(4.0)

    def traced():
        # NumPy traces its failed allocation too (at address 0, 2**59 bytes): left out.
        return sum(t.size for t in tracemalloc.take_snapshot().traces if t.size < 1 << 40)

    tracemalloc.start()
    try:
        start = traced()
        for _ in range(200):
            with pytest.raises(MemoryError):
                entry.function(x, 1.0, x)
        grown = traced() - start
    finally:
        tracemalloc.stop()
    assert grown < 8000 * 20, grown  # 200 leaked first arrays would be 1.6 MB
    count = sys.getrefcount(x)
    assert count == 2


def test_the_function_keeps_its_machine_code_alive_and_frees_it_when_dropped():
    entry, _ = sum_entry()
    f, anchor = entry.function, weakref.ref(entry._anchor)
    del entry
    gc.collect()
    assert f(np.arange(5.0), 0.0)[0] == 10.0  # the engine and table live with f
    del f
    assert anchor() is None  # no cycle: freed at once


def test_building_and_calling_an_entry_never_imports_numba():
    script = (
        "import sys, numpy as np, llvmlite.binding as llvm\n"
        "from gradc import shim\n"
        f"engine = llvm.create_mcjit_compiler(llvm.parse_assembly({FLOAT_BODY!r}),\n"
        "                                     shim.target_machine())\n"
        "engine.finalize_object()\n"
        "spec = shim.EntrySpec(params=(None, None), results=(('s', 0), ('s', 1)),\n"
        "                      n_scalars=2, n_arrays=0)\n"
        "f = shim.make_entry(spec, engine.get_function_address('body'), 'f').function\n"
        "assert f(3.0, 0.5) == (1.5, 2.5), f(3.0, 0.5)\n"
        "print('numba' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("field, offset, what", [
    ("_ARRAY_DESCR", 48, "numpy.ndarray"), ("_FLOAT_VALUE", 8, "PyFloatObject"),
    ("_DESCR_BYTEORDER", 25, "PyArray_Descr"), ("_PYARRAY_TYPE_INDEX", 4, "C-API table")])
def test_a_layout_other_than_the_verified_one_builds_no_entry(monkeypatch, field, offset, what):
    """The probes can fail: with one offset (or the C-API table's index of PyArray_Type)
    wrong, no code is made (and PyArray_New is never called)."""
    monkeypatch.setattr(shim, field, offset)
    with pytest.raises(shim.ShimUnavailable, match=what):
        shim._collect_facts()


def copy_body(n):
    """IR of a body that copies its n float parameters to sout."""
    return f"""
define void @body(i8** %data, i64* %strides, double* %sout, double** %aout) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %slot = getelementptr i8*, i8** %data, i64 %i
  %p8 = load i8*, i8** %slot
  %p = bitcast i8* %p8 to double*
  %v = load double, double* %p
  %o = getelementptr double, double* %sout, i64 %i
  store double %v, double* %o
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, {n}
  br i1 %more, label %loop, label %exit
exit:
  ret void
}}
"""


def test_entries_after_the_first_compile_nothing_whatever_their_size(monkeypatch):
    """One entry function serves every spec: a spec of 300 floats is a table, not code."""
    sum_entry()  # the process's entry function exists now

    def no_compile(*args):
        raise AssertionError("an entry was compiled")

    monkeypatch.setattr(shim, "_entry_ir", no_compile)
    n = 300
    entry = entry_of(copy_body(n), Recorder(), params=(None,) * n,
                     results=(("s", 0), tuple(("s", k) for k in range(n))), n_scalars=n,
                     n_arrays=0)
    args = tuple(float(k) * 0.5 for k in range(n))
    assert entry.function(*args) == (0.0, args)
    assert entry.function(*args[:-1]) == "fallback"


def test_a_spec_too_large_for_a_calls_stack_builds_no_entry():
    n = shim.MAX_SCRATCH // 8
    address, engine = body(FLOAT_BODY)
    spec = shim.EntrySpec(params=(None,) * n, results=("s", 0), n_scalars=2, n_arrays=0)
    with pytest.raises(shim.ShimUnavailable, match="bytes of stack"):
        shim.make_entry(spec, address, "huge", keep=(engine,))


def test_rows_added_while_other_threads_call_never_give_a_wrong_answer():
    import threading

    entry, fallback = sum_entry(rows=((1,),))
    entry.set_fallback(lambda x, y, **kwargs: ("fallback", len(x)))
    problems = []

    def caller():
        for n in range(1, shim.CAPACITY + 1):
            x = np.arange(float(n))
            got = entry.function(x, 0.0)
            if got[0] != "fallback" and (got[0] != sequential_sum(x, 0.0)
                                         or not np.array_equal(got[1], 2.0 * x)):
                problems.append((n, got))

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(2, shim.CAPACITY + 1):
        entry.allow(((n,),), ((n,),))
    for t in threads:
        t.join()
    assert not problems
    assert entry.function(np.ones(shim.CAPACITY), 0.0)[0] == float(shim.CAPACITY)


def test_rows_allowed_from_several_threads_at_once_each_get_their_own_row():
    import threading

    entry, _ = sum_entry(rows=())
    barrier = threading.Barrier(4)

    def add(first):
        barrier.wait()
        for n in range(first, shim.CAPACITY + 1, 4):
            assert entry.allow(((n,),), ((n,),))

    threads = [threading.Thread(target=add, args=(k,)) for k in range(1, 5)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads inside allow() as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert entry._anchor.config[shim._CFG_COUNT] == shim.CAPACITY  # the published count
    assert sorted(row[0][0][0] for row in entry.rows) == list(range(1, shim.CAPACITY + 1))
    for n in (1, 17, shim.CAPACITY):
        value, grad = entry.function(np.ones(n), 0.0)
        assert value == float(n) and grad.shape == (n,)
