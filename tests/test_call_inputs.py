"""Every valid input is taken, whatever calls came before; every name user text gives is safe.

What a call returns must not depend on how the arrays were made (read-only, views, other byte
orders), on the dtypes mixed in one call, or on earlier calls of the same function (the fast
path for compiled float signatures falls back to the full path for anything else). Names from
user text are read as Python reads identifiers (NFKC) and kept short enough for file names.

numba compiles cost 0.3-3 s each: the numba tests share a few module-level functions (the
same emitted source is compiled once per session and loaded from the cache afterwards).
"""
import inspect
import os

import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

import gradc
from gradc import jit, native
from gradc.emit import _Namer
from gradc.nn.train import param_identifiers
from gradc.trace import identifier_or_none

BACKENDS = ["numba", "python"]


def square_sum(x):
    return np.sum(x * x)


def dot(x, y):
    return np.sum(x * y)


def _unaligned(values):
    """A float64 array whose data starts one byte into its buffer (not aligned)."""
    raw = np.zeros(len(values) * 8 + 1, dtype=np.uint8)
    array = raw[1:].view(np.float64)
    array[:] = values
    assert not array.flags.aligned
    return array


def _inputs():
    """The same three values, as arrays made in every way gradc must take."""
    base = np.array([1.0, -2.0, 3.0])
    read_only = base.copy()
    read_only.setflags(write=False)
    strided = np.zeros(6)
    strided[::2] = base
    return {
        "read-only": read_only,
        "frombuffer": np.frombuffer(base.tobytes(), dtype=np.float64),
        "strided view": strided[::2],
        "big-endian": base.astype(">f8"),
        "unaligned": _unaligned(base),
    }


# --- arrays however they were made ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_strided_unaligned_and_byte_swapped_arrays_are_taken(backend):
    f = gradc.value_and_grad(square_sum, backend=backend)
    expected_value, expected_grad = f(np.array([1.0, -2.0, 3.0]))
    for how, x in _inputs().items():
        before = x.copy()
        value, grad = f(x)
        assert value == expected_value == 14.0, how
        np.testing.assert_array_equal(grad, expected_grad, err_msg=how)
        np.testing.assert_array_equal(grad, [2.0, -4.0, 6.0], err_msg=how)
        np.testing.assert_array_equal(x, before, err_msg=how)  # inputs are never written


def test_byte_swapped_arrays_are_converted_where_the_quick_path_hands_arrays_over_as_they_are():
    # Loop code's quick path passes arrays of the compiled shape and dtype straight to numba;
    # >f8 is float64 to NumPy's dtype character but not to numba (a raw TypingError before).
    f = gradc.value_and_grad(square_sum, arrays="loops")
    native = np.array([1.0, -2.0, 3.0])
    assert f(native)[0] == 14.0
    value, grad = f(native.astype(">f8"))
    assert value == 14.0
    np.testing.assert_array_equal(grad, [2.0, -4.0, 6.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_endian_float32_arrays_stay_float32(backend):
    f = gradc.grad(square_sum, backend=backend)
    x = np.array([1.0, 2.0], dtype=">f4")
    grad = f(x)
    assert grad.dtype == np.float32
    np.testing.assert_array_equal(grad, [2.0, 4.0])


# --- what a call gives does not depend on the calls before it ---------------------------
def test_an_array_call_after_a_float_call_gives_what_a_fresh_function_gives():
    g = gradc.grad(square_sum)
    assert g(3.0) == 6.0
    fresh = gradc.grad(square_sum)(np.ones(3))
    np.testing.assert_array_equal(g(np.ones(3)), fresh)
    np.testing.assert_array_equal(fresh, [2.0, 2.0, 2.0])
    assert g(3.0) == 6.0  # and floats still work after it


@pytest.fixture(params=["native", "numba"])
def scalar_route(request, monkeypatch):
    """Scalar programs take the native route (a C entry, no numba); numba's route (what they
    took before, and what programs with an op outside native's table take) is kept tested."""
    if request.param == "numba":
        monkeypatch.setattr(native, "MIN_NODES", 10**9)
    return request.param


def _fast_path(g, route):
    """Whether calling ``g`` *is* calling its compiled code: numba's dispatcher, or the C entry
    (gradc/shim.py) in front of the native body."""
    call = type(g).__call__
    if route == "numba":
        return isinstance(call, Dispatcher)
    (spec,) = g._specs.values()
    return spec.c_entry is not None and call is spec.c_entry.function


def test_after_a_float_call_other_scalars_take_the_full_path_and_floats_stay_direct(scalar_route):
    g = gradc.grad(square_sum)
    assert g(3.0) == 6.0
    assert _fast_path(g, scalar_route)
    assert g(np.array(2.0)) == 4.0          # a 0-d array
    assert g(2) == 4.0                      # an int
    assert g(np.float32(1.5)) == 3.0        # a NumPy scalar of another type
    assert g(True) == 2.0
    assert g(x=2.5) == 5.0                  # by keyword
    assert _fast_path(g, scalar_route)      # none of them left the fast path
    with pytest.raises(gradc.ArgumentError, match="is a list.*numpy.asarray") as info:
        g([1.0, 2.0])
    assert os.path.basename(__file__) in str(info.value)  # names the caller's line
    with pytest.raises(gradc.ArgumentError, match="wrong arguments"):
        g()
    with pytest.raises(gradc.ArgumentError, match="wrong arguments"):
        g(1.0, 2.0)
    assert g(3.0) == 6.0


# --- float32 and float64 in one call ----------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_with_float64_arrays_computes_in_float64_as_numpy_does(backend):
    x = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    y = np.array([1.0, 1.0 / 3.0, -2.0, 1e-9])
    value, (dx, dy) = gradc.value_and_grad(dot, backend=backend)(x, y)
    promoted = np.result_type(x, y)
    assert promoted == np.float64
    assert value == pytest.approx(np.sum(x * y), rel=1e-15, abs=1e-18)  # not float32's 1e-7
    assert dx.dtype == dy.dtype == promoted
    np.testing.assert_array_equal(dx, y)
    np.testing.assert_array_equal(dy, x.astype(np.float64))


def test_mixed_dtypes_with_out_buffers_write_float64():
    f = gradc.value_and_grad(dot, backend="python")
    x, y = np.ones(4, np.float32), np.arange(4.0)
    dx, dy = np.empty(4), np.empty(4)
    value, (gx, gy) = f(x, y, out=(dx, dy))
    assert value == 6.0 and gx is dx and gy is dy
    np.testing.assert_array_equal(dx, y)
    np.testing.assert_array_equal(dy, np.ones(4))


def test_unaligned_out_buffers_are_refused_with_a_gradc_error():
    f = gradc.value_and_grad(square_sum, backend="python")
    with pytest.raises(gradc.ArgumentError, match="aligned"):
        f(np.ones(3), out=_unaligned([0.0, 0.0, 0.0]))


# --- names -------------------------------------------------------------------------------
def _named(name):
    def h(x):
        return x * x

    h.__name__ = h.__qualname__ = name
    return h


@pytest.mark.parametrize("name, defined", [("ℌ", "H"), ("ﬁ", "fi"), ("ｉｆ", "f"),
                                           ("ℌ" * 300, None)],
                         ids=["fraktur", "ligature", "keyword", "300 characters"])
def test_function_names_are_emitted_as_python_reads_them(name, defined):
    g = gradc.grad(_named(name), backend="python")
    assert g(3.0) == 6.0
    func = g.source.split("\ndef ", 1)[1].split("(", 1)[0]
    assert func.isascii() and func.isidentifier() and len(func) <= 64
    if defined is not None:
        assert func == f"{defined}__grad"


def test_a_long_unicode_function_name_compiles_and_names_its_cache_files_briefly(scalar_route):
    g = gradc.value_and_grad(_named("ℌ" * 300))
    assert g(3.0) == (9.0, 6.0)
    assert g.cache_info()["runs"] == scalar_route and os.path.isfile(g.path)
    names = [f for _, _, files in os.walk(jit.cache_dir()) for f in files]
    assert os.path.basename(g.path) in names
    assert all(len(f) < 160 for f in names)  # numba names its files after the function


def test_from_sympy_names_and_symbols_are_normalised_and_bounded():
    sympy = pytest.importorskip("sympy")
    a, b, c = sympy.symbols(["ℌ", "ｉｆ", "q" * 300])
    f = gradc.from_sympy(a * b + c, [a, b, c], backend="python", name="ℌ")
    assert f(2.0, 3.0, 1.0) == (7.0, (3.0, 2.0, 1.0))
    assert "\ndef H__value_and_grad(" in f.source
    params = list(inspect.signature(f).parameters)
    assert params[:2] == ["H", "if_"] and len(params[2]) <= 64
    assert f"({', '.join(params)})" in f.source  # the signature shows the emitted names
    long_name = gradc.from_sympy(a * a, [a], backend="python", name="ℌ" * 300)
    assert long_name(2.0) == (4.0, 4.0)
    assert "\ndef HHHH" in long_name.source and len(long_name.__name__) <= 64


def test_identifiers_from_user_text_are_normalised_bounded_and_unique():
    assert identifier_or_none("ℌ") == "H" and identifier_or_none("ﬁ") == "fi"
    assert identifier_or_none("ｉｆ") is None and identifier_or_none("__debug__") is None
    first, second = identifier_or_none("a" * 300), identifier_or_none("a" * 299 + "b")
    assert len(first) == len(second) == 64 and first != second
    namer = _Namer()
    names = [namer.fresh("x" * 200), namer.fresh("x" * 200), namer.fresh("ｉｆ")]
    assert len(set(names)) == 3 and all(n.isidentifier() and len(n) <= 66 for n in names)
    assert names[2] == "t0"


def test_nn_parameter_keys_become_normalised_bounded_identifiers():
    names = param_identifiers(["ℌ", "Ｘ", "0.W", "k" * 300, "k" * 299 + "j", "৴"])
    assert names[:3] == ["H", "p_X", "W0"]  # "Ｘ" is X, which the step's inputs use
    assert all(n.isidentifier() and len(n) <= 66 for n in names)
    assert len(set(names)) == len(names)
