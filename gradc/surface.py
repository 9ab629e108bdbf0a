"""The NumPy API that gradc traces, by kind, read from the tables that implement it.

:func:`supported_api` is generated, not written: the ufuncs come from the op table
(``gradc.ops.UFUNCS``, through the set ``gradc.trace`` dispatches on), the functions from
the trace rules (``gradc.trace._FUNCTIONS`` and ``gradc.numpy_api.RULES``), the array
methods and operators from what :class:`gradc.trace.Tracer` defines and does not refuse. A
rule added to those tables appears here by itself; only its kind is written down
(:data:`_KIND_OF`), and ``tests/test_surface.py`` fails for a rule without one.

:data:`UNSUPPORTED` is what gradc refuses on purpose, and why; :data:`INSTEAD` the supported
spelling to use for other refused names. Both feed the refusal messages
(:func:`refusal_hint`, :func:`listing`) and the README's "Supported NumPy" section, which
``python -m gradc.surface --markdown`` prints and ``tests/test_surface.py`` compares.

Names are NumPy's own (``__name__``): ``linalg.norm`` for ``numpy.linalg.norm``. NumPy's
other spellings of the same objects (``numpy.acos`` for ``numpy.arccos``, ``numpy.concat``
for ``numpy.concatenate``) are the same functions, and traced too.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import sys

import numpy as np

from . import numpy_api, trace

#: The kinds of NumPy function, in the order the README and the error messages list them.
KINDS = ("ufuncs", "elementwise", "reductions", "shape ops", "sorting", "products", "linalg")

#: The kind of each traced NumPy function that is not a ufunc or in numpy.linalg (by NumPy's
#: ``__name__``). A rule missing here is listed under "other", which tests/test_surface.py
#: refuses.
_KIND_OF = {
    **dict.fromkeys(("where", "select", "clip", "nan_to_num", "round", "around", "fix", "sinc",
                     "real", "imag", "real_if_close", "angle"), "elementwise"),
    **dict.fromkeys(("sum", "mean", "max", "min", "amax", "amin", "prod", "var", "std",
                     "cumsum", "cumprod", "diff", "gradient", "trace"), "reductions"),
    **dict.fromkeys((
        "reshape", "transpose", "ravel", "squeeze", "expand_dims", "atleast_1d", "atleast_2d",
        "atleast_3d", "swapaxes", "moveaxis", "rollaxis", "flip", "fliplr", "flipud", "roll",
        "rot90", "broadcast_to", "broadcast_arrays", "stack", "concatenate", "hstack", "vstack",
        "dstack", "column_stack", "append", "split", "array_split", "hsplit", "vsplit",
        "dsplit", "take", "repeat", "tile", "pad", "diagonal", "diag", "tril", "triu", "copy",
        "zeros_like", "ones_like", "full_like", "empty_like", "linspace", "logspace", "shape",
        "ndim", "size"),
        "shape ops"),
    **dict.fromkeys(("sort", "partition"), "sorting"),
    **dict.fromkeys(("dot", "matmul", "inner", "outer", "vdot", "kron", "tensordot", "einsum",
                     "cross"), "products"),
}

#: Python operators on traced values: (how it is written, the Tracer method behind it).
_OPERATORS = (
    ("+", "__add__"), ("-", "__sub__"), ("*", "__mul__"), ("/", "__truediv__"),
    ("//", "__floordiv__"), ("%", "__mod__"), ("**", "__pow__"), ("@", "__matmul__"),
    ("-x", "__neg__"), ("+x", "__pos__"), ("abs(x)", "__abs__"), ("divmod", "__divmod__"),
    ("<", "__lt__"), ("<=", "__le__"), (">", "__gt__"), (">=", "__ge__"), ("==", "__eq__"),
    ("!=", "__ne__"), ("&", "__and__"), ("|", "__or__"), ("~", "__invert__"),
    ("<<", "__lshift__"), (">>", "__rshift__"), ("^", "__xor__"),
    ("x[i]", "__getitem__"), ("x[i] = v", "__setitem__"), ("+=", "__iadd__"),
    ("-=", "__isub__"), ("*=", "__imul__"), ("/=", "__itruediv__"), ("**=", "__ipow__"),
    ("//=", "__ifloordiv__"), ("%=", "__imod__"),
)

_NOT_DIFFERENTIABLE = ("not differentiable (its result is an integer: indices or counts); "
                       "use it outside the traced function, on concrete values")

#: NumPy names gradc refuses on purpose: (names, why and what to do instead).
UNSUPPORTED = (
    (("argmax", "argmin", "argsort", "argpartition", "argwhere", "nonzero", "flatnonzero",
      "searchsorted", "digitize", "bincount", "count_nonzero", "unique", "histogram",
      "nanargmax", "nanargmin", "linalg.matrix_rank"), _NOT_DIFFERENTIABLE),
    (("isnan", "isinf", "isfinite", "signbit"),
     "tests of a float's class are not traced yet; write x != x for NaN and "
     "numpy.abs(x) == numpy.inf for an infinity"),
    (("bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift", "gcd",
      "lcm"), "integer operations: traced values are floats"),
    (("median", "percentile", "quantile"),
     "order statistics are not traced yet; sort with numpy.sort and index the sorted array"),
    (("nansum", "nanmean", "nanmax", "nanmin", "nanprod", "nanstd", "nanvar", "nancumsum",
      "nancumprod"), "NaN-skipping reductions are not traced; replace the NaNs first, "
                     "numpy.where(x != x, 0.0, x), and reduce that"),
    (("linalg.eig", "linalg.eigvals"),
     "a general matrix has complex eigenvalues and eigenvectors, and traced values are real; "
     "for a symmetric matrix use numpy.linalg.eigh or numpy.linalg.eigvalsh, for singular "
     "values numpy.linalg.svd"),
    (("asarray", "array", "asanyarray", "ascontiguousarray"),
     "of a traced array: it is traced as an array already, and NumPy cannot compute with "
     "what the conversion would give it; drop the conversion (x.copy() for a copy, "
     "numpy.stack to build an array; numpy.array of traced scalars works)"),
)

#: Python constructs on traced values gradc refuses on purpose (not NumPy names): (how they
#: are written, why and what to do instead).
UNSUPPORTED_PYTHON = (
    (("float(x)", "int(x)", "math.exp(x)"),
     "need a concrete number; use the numpy functions, which gradc traces"),
    (("if x > 0:", "while", "bool(x)", "x and y"),
     "need a concrete truth value; write numpy.where(x > 0, a, b)"),
    (("x[x > 0]", "x[[0, 2]]", "x[i] (i traced)"),
     "indices must be constant (ints, slices, None, ...); select with numpy.where"),
    (("x.T[0] = v", "x.reshape(n)[0] = v"),
     "NumPy would change the array they view; write into that array itself"),
)

#: The supported spelling to suggest for a NumPy name gradc refuses without a reason above.
INSTEAD = {
    "cumulative_sum": "numpy.cumsum",
    "cumulative_prod": "numpy.cumprod",
    "matrix_transpose": "numpy.swapaxes(x, -1, -2) (x.T for one matrix)",
    "linalg.matrix_transpose": "numpy.swapaxes(x, -1, -2) (x.T for one matrix)",
    "vecdot": "numpy.sum(a * b, axis=-1)",
    "linalg.vecdot": "numpy.sum(a * b, axis=-1)",
    "linalg.vector_norm": "numpy.linalg.norm(x, ord, axis)",
    "linalg.matrix_norm": "numpy.linalg.norm(x, ord, axis)",
    "linalg.outer": "numpy.outer",
    "linalg.cross": "numpy.cross",
    "linalg.diagonal": "numpy.diagonal",
    "linalg.trace": "numpy.trace",
    "linalg.tensordot": "numpy.tensordot",
    "linalg.matmul": "numpy.matmul (or a @ b)",
    "linalg.multi_dot": "numpy.matmul, a @ b @ c",
    "average": "numpy.sum(w * x) / numpy.sum(w) (numpy.mean without weights)",
    "ptp": "numpy.max(x) - numpy.min(x)",
    "ediff1d": "numpy.diff(numpy.ravel(x))",
    "astype": "x.astype(numpy.float64), or nothing (traced values are float64)",
    "isposinf": "x == numpy.inf",
    "isneginf": "x == -numpy.inf",
    "heaviside": "numpy.where(x > 0, 1.0, numpy.where(x == 0, h, 0.0))",
    "logical_xor": "a != b (of two conditions)",
    "copyto": "item assignment, dst[...] = src",
    "fill_diagonal": "numpy.where(numpy.eye(n, dtype=bool), v, x)",
    "diagflat": "numpy.diag(numpy.ravel(v))",
    "resize": "numpy.tile and numpy.reshape",
    "unstack": "x[0], x[1], ... (or numpy.split)",
    "array_str": "print values outside the traced function (traced values are not numbers yet)",
    "array_repr": "print values outside the traced function (traced values are not numbers yet)",
}


# --- what is supported, read from the tables -----------------------------------------------------
def _linalg_name(func):
    """``'linalg.<name>'`` for a function of numpy.linalg, else its NumPy name."""
    return trace._qualname(func).partition(".")[2]


def _kind(name, func):
    if name in _KIND_OF:
        return _KIND_OF[name]
    if name.startswith("linalg."):
        return "linalg"
    if isinstance(func, np.ufunc):
        return "ufuncs"
    return "other"


def _traced_attribute(name):
    """Whether Tracer defines ``name`` itself, other than as a method that refuses."""
    value = inspect.getattr_static(trace.ArrayTracer, name, None)  # arrays: every method
    return value is not None and not getattr(value, "_gradc_refuses", False)


def supported_api():
    """Kind -> sorted tuple of the NumPy names gradc traces: the :data:`KINDS` of function,
    then ``"methods and attributes"`` (of ndarray) and ``"operators"``. A kind ``"other"``
    appears only for a rule not classified in :data:`_KIND_OF` (a defect that
    tests/test_surface.py reports). A new dict each call; the tables are read once."""
    return dict(_supported_api())


@functools.lru_cache(maxsize=None)
def _supported_api():
    found = {}
    for name in trace.TRACED_UFUNCS:
        func = getattr(np, name, None)
        if isinstance(func, np.ufunc):
            found[name] = func
    for func in (*trace._FUNCTIONS, *numpy_api.RULES):
        found.setdefault(_linalg_name(func), func)
    by_kind = {}
    for name, func in found.items():
        by_kind.setdefault(_kind(name, func), set()).add(name)
    api = {kind: tuple(sorted(by_kind.pop(kind, ()))) for kind in KINDS}
    if by_kind.get("other"):
        api["other"] = tuple(sorted(by_kind.pop("other")))
    api["methods and attributes"] = tuple(sorted(
        name for name in dir(np.ndarray) if not name.startswith("_") and _traced_attribute(name)))
    api["operators"] = tuple(
        spelling for spelling, method in _OPERATORS if _traced_attribute(method))
    return api


@functools.lru_cache(maxsize=None)
def _supported_names():
    api = supported_api()
    return frozenset(name for kind in api if kind not in ("methods and attributes", "operators")
                     for name in api[kind])


def traces(name):
    """Whether ``numpy.<name>`` (``"abs"``, ``"linalg.norm"``) is a function gradc traces:
    listed in :func:`supported_api` under its own name or under NumPy's name for the same
    object (``numpy.abs`` is ``numpy.absolute``)."""
    obj = np
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return name in _supported_names() or _linalg_name(obj) in _supported_names()


@functools.lru_cache(maxsize=None)
def _reasons():
    return {name: why for names, why in UNSUPPORTED for name in names}


#: How alike (difflib's ratio) a refused name and a supported one must be to be suggested.
_NEAR = 0.8


# --- refusal messages ----------------------------------------------------------------------------
def refusal_hint(name, methods=False):
    """What to say after "numpy.<name> is not supported by gradc" (or, with ``methods``,
    after ".<name> of a NumPy array is not supported"): why, what to use instead, or the
    nearest supported spelling; ``""`` when there is nothing to add.

    ``name`` is NumPy's name (``"argmax"``, ``"linalg.svd"``).
    """
    bare = name.rpartition(".")[2]
    why = _reasons().get(name) or (_reasons().get(bare) if methods else None)
    if why:
        return f": {why}"
    if name in INSTEAD:
        return f"; use {INSTEAD[name]} instead"
    if methods and name in _supported_names():  # x.take(...): numpy.take is traced
        return f"; numpy.{name}(x, ...) is traced: use it instead"
    pool = supported_api()["methods and attributes"] if methods else sorted(_supported_names())
    if bare != name and bare in pool:  # numpy.linalg.outer: numpy.outer is traced
        return f"; numpy.{bare} is traced: use it instead"
    # a near miss: names of 5 letters or more spelled alike (shorter ones match by chance:
    # "long" and "log")
    spelled = {n.rpartition(".")[2]: n for n in pool}  # "cholesky" -> "linalg.cholesky"
    near = [spelled[n] for n in difflib.get_close_matches(bare, sorted(spelled), n=3, cutoff=_NEAR)
            if len(n) >= 5] if len(bare) >= 5 else []
    if near:
        prefix = "." if methods else "numpy."
        return "; the nearest supported spelling: " + " or ".join(prefix + n for n in near)
    return ""


@functools.lru_cache(maxsize=None)
def listing():
    """The supported NumPy functions by kind, for error messages: ``"ufuncs: absolute, add,
    ...; reductions: ...; ..."``."""
    api = supported_api()
    return "; ".join(f"{kind}: {', '.join(api[kind])}" for kind in KINDS if api[kind])


@functools.lru_cache(maxsize=None)
def method_listing():
    """The ndarray methods and attributes traced values have, for error messages."""
    return ", ".join(supported_api()["methods and attributes"])


# --- the README section ---------------------------------------------------------------------------
_HEADING = "## Supported NumPy"


def markdown():
    """The README's "Supported NumPy" section (from its heading to the blank line after it)."""
    api = supported_api()
    lines = [
        _HEADING,
        "",
        "Generated from gradc's op table and trace rules by `python -m gradc.surface --markdown`",
        "(`tests/test_surface.py` checks that this section is what it prints). The functions take",
        "NumPy's arguments and refuse by name those gradc does not implement (`out=`, `dtype=`,",
        "`where=`, ...). NumPy's other spellings of them (`np.abs` for `np.absolute`, `np.acos`",
        "for `np.arccos`, `np.concat` for `np.concatenate`, `np.pow` for `np.power`) are the same",
        "objects, traced too. Everything else raises `gradc.UnsupportedFunctionError` naming your",
        "file and line, saying why and, where there is one, the nearest supported spelling;",
        "`tests/test_numpy_sweep.py` calls every public callable of `numpy` and `numpy.linalg` on",
        "traced values to check that none is silently ignored.",
        "",
        "| kind | names |",
        "| --- | --- |",
    ]
    for kind in (*KINDS, *(k for k in api if k not in KINDS)):
        if api.get(kind):
            prefix = "." if kind == "methods and attributes" else ""
            names = " ".join(_code(prefix + n) for n in api[kind])
            lines.append(f"| {kind} | {names} |")
    lines += [
        "",
        "Deliberately unsupported, and why:",
        "",
        "| names | why |",
        "| --- | --- |",
    ]
    for names, why in (*UNSUPPORTED, *UNSUPPORTED_PYTHON):
        lines.append(f"| {' '.join(_code(n) for n in names)} | {why} |")
    return "\n".join(lines) + "\n"


def _code(text):
    """``text`` as Markdown code in a table cell (a ``|`` would end the cell)."""
    return "`" + text.replace("|", "\\|") + "`"


def readme_section(text):
    """The "Supported NumPy" section of a README's text (heading to the next ``## ``
    heading, trailing blank lines dropped), or None where it has none."""
    lines = text.splitlines()
    try:
        start = lines.index(_HEADING)
    except ValueError:
        return None
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
    section = lines[start:end]
    while section and not section[-1].strip():
        section.pop()
    return "\n".join(section) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--markdown"]:
        print("usage: python -m gradc.surface --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())


trace.install_surface(sys.modules[__name__])  # the tracer's refusal messages quote this module
