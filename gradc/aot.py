"""Ahead-of-time modules: ``@gradc.export`` marks functions, :func:`build` ships them.

Mark the functions of a module with the argument kinds and what to build::

    @gradc.export(args=("f8", "f8", "f8"), build=("value", "grad", "value_and_grad"))
    def J(a, b, c): ...

    @gradc.export(args=("f8[20]",))          # build defaults to ("value_and_grad",)
    def rosen(x): ...

``"f8"`` is a float argument, ``"f8[20]"`` (``"f8[3,4]"``) a float64 array of that
fixed shape. The decorator returns the function itself (with the spec in its
``__gradc_export__`` attribute), so the module still runs as plain Python.
``gradc build model.py -o OUTDIR --format F`` then writes, for every marked
function and every kind it names, a function ``<name>_<kind>`` (``J_value``,
``J_grad``, ``rosen_value_and_grad``) that returns what ``gradc.<kind>`` returns
(``value`` is ``gradc.compile``), gradients taken with respect to every argument:

- ``python``: ``<module>.py``, the emitted sources under ``@njit(cache=True)``
  with explicit signatures (needs numpy and numba, not gradc);
- ``ext``: a package ``<module>/``: the kernels compiled by ``numba.pycc`` into
  the extension ``_gradc_kernels.<abi>.so`` (via :mod:`gradc.aot_pycc`) and an
  ``__init__.py`` that defines the public functions (needs only numpy at run time);
- ``c``: ``lib<module>.so`` and ``<module>.h`` (via :mod:`gradc.aot_c`): one
  allocation-free kernel per function, scalars by value, arrays and outputs by
  pointer, an ``int`` status return.

In both Python formats each public function checks (or converts) its arguments
before the compiled kernel sees them, with the same generated code
(``_ARGUMENT_CHECKS``): floats and ints for scalars, float or int arrays of the
exported shape (made C-contiguous float64) for arrays, TypeError or ValueError
for anything else. The kernels have private names that no public name can take.

Text from the user (file, function and parameter names) reaches generated
sources only through :func:`plain_text` (comments, docstrings) and
:func:`py_str` (string literals), so no file name can become code.

This module holds the marking, the collection of marked functions, the sources
(the Python module, the pycc source, the C header) and the build transaction:
everything is built in a temporary directory and moved into ``OUTDIR`` only
when all of it succeeded, all or nothing. It is the top of the build: the
builders it calls (:mod:`gradc.aot_pycc`; :mod:`gradc.aot_c`, which also writes
the C format's out-parameter kernels) and :class:`BuildError`
(:mod:`gradc.aot_errors`) lie below it and never import it
(``.importlinter``'s ``aot`` contract).
"""
from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import importlib.util
import inspect
import keyword
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

import numpy as np

from . import errors
from .aot_errors import BuildError
from .version import __version__

FORMATS = ("python", "ext", "c")
KINDS = ("value", "grad", "value_and_grad")
_ARG = re.compile(r"^\s*f8\s*(?:\[\s*(\d+(?:\s*,\s*\d+)*)\s*\])?\s*$")
_C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern
    float for goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false
    asm typeof alignas alignof""".split())
_C_MACROS = frozenset("""NULL EOF BUFSIZ FILENAME_MAX stdin stdout stderr errno assert EXIT_SUCCESS
    EXIT_FAILURE RAND_MAX NAN INFINITY HUGE_VAL HUGE_VALF HUGE_VALL FP_NAN FP_INFINITE FP_ZERO
    FP_SUBNORMAL FP_NORMAL M_E M_LOG2E M_LOG10E M_LN2 M_LN10 M_PI M_PI_2 M_PI_4 M_1_PI M_2_PI
    M_2_SQRTPI M_SQRT2 M_SQRT1_2 MATH_ERRNO MATH_ERREXCEPT math_errhandling complex imaginary I
    EDOM ERANGE EILSEQ CHAR_BIT INT_MAX INT_MIN DBL_MAX DBL_MIN DBL_EPSILON""".split())


# --- marking ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSpec:
    """What ``@gradc.export`` recorded: one shape per argument (None: a float) and the kinds."""

    args: tuple
    build: tuple
    arg_text: tuple


def parse_arg(text):
    """``"f8"`` -> None (a float); ``"f8[20]"`` -> ``(20,)``; ``"f8[3,4]"`` -> ``(3, 4)``."""
    m = _ARG.match(text) if isinstance(text, str) else None
    if m is None:
        raise BuildError(
            f"{errors.where()}: export argument {text!r} is not supported; use 'f8' for a "
            "float or 'f8[n]' / 'f8[n,m]' for a float64 array of fixed shape.")
    if m.group(1) is None:
        return None
    shape = tuple(int(d) for d in m.group(1).split(","))
    if any(d <= 0 for d in shape):
        raise BuildError(f"{errors.where()}: export argument {text!r} has an empty dimension.")
    return shape


def export(*, args, build=("value_and_grad",)):
    """Mark a function for ``gradc build``; returns the function unchanged.

    ``args``: one ``"f8"`` or ``"f8[shape]"`` per positional parameter.
    ``build``: any of ``"value"``, ``"grad"``, ``"value_and_grad"``.
    """
    if isinstance(args, str):
        args = (args,)
    if isinstance(build, str):
        build = (build,)
    shapes = tuple(parse_arg(a) for a in args)
    kinds = tuple(dict.fromkeys(build))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise BuildError(f"{errors.where()}: export build={build!r}; choose from {KINDS}.")
    spec = ExportSpec(shapes, kinds, tuple(a.replace(" ", "") for a in args))

    def mark(fn):
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            params = None
        if params is not None and (
                len(params) != len(shapes)
                or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)):
            raise BuildError(
                f"{errors.where()}: @gradc.export names {len(shapes)} argument(s) but "
                f"{getattr(fn, '__name__', fn)!r} takes ({', '.join(map(str, params))}); give one "
                "'f8' or 'f8[shape]' per positional parameter.")
        fn.__gradc_export__ = spec
        return fn

    return mark


def marked_functions(module):
    """The functions defined in ``module`` that carry ``@gradc.export``, in definition order."""
    found, seen = [], set()
    for obj in vars(module).values():
        spec = getattr(obj, "__gradc_export__", None)
        if isinstance(spec, ExportSpec) and getattr(obj, "__module__", None) == module.__name__ \
                and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)
    return found


def import_path(path):
    """Import the user's module from ``path`` (its directory on sys.path while importing).

    Whatever the import raises becomes a BuildError naming the module, ``sys.exit()``
    included (it would otherwise end ``gradc build`` silently); KeyboardInterrupt still
    interrupts."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise BuildError(f"gradc build: no such file {path!r}.")
    name = "_gradc_build_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except errors.GradcError:
        raise
    except SystemExit as exc:
        raise BuildError(f"gradc build: importing {path} called sys.exit({exc.code!r}); code that "
                         "should not run on import belongs under `if __name__ == \"__main__\":`."
                         ) from exc
    except Exception as exc:
        raise BuildError(f"gradc build: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:  # the module may have edited sys.path itself
            sys.path.remove(folder)
        sys.modules.pop(name, None)
    return module


# --- lowering --------------------------------------------------------------------------
@dataclass
class Kernel:
    """One function to ship: ``public`` name, the lowered graph and the emitted source."""

    public: str
    kind: str
    fn_name: str
    shapes: tuple
    graph: object
    source: str
    func_name: str
    origin: tuple


def lower_module(module):
    """Every marked function of ``module`` lowered once per kind it asks for."""
    from .api import GradcFunction, function_name

    fns = marked_functions(module)
    if not fns:
        raise BuildError(
            f"gradc build: {module.__file__} marks no function for export; decorate one with "
            "@gradc.export(args=(\"f8\", ...), build=(\"value_and_grad\",)).")
    kernels, publics = [], set()
    for fn in fns:
        spec = fn.__gradc_export__
        name = function_name(fn)
        code = fn.__code__
        origin = (os.path.basename(code.co_filename), code.co_firstlineno)
        for kind in spec.build:
            public = f"{name}_{kind}"
            if not public.isascii():
                raise BuildError(f"gradc build: exported names must be ASCII (C symbols, "
                                 f"extension functions); rename {name!r}.")
            if public in publics:
                raise BuildError(f"gradc build: two exported functions are both named {public!r}.")
            publics.add(public)
            gkind = "compile" if kind == "value" else kind
            graph, source, func_name, _ = GradcFunction(fn, gkind, None, "python").lower(spec.args)
            kernels.append(Kernel(public, kind, name, spec.args, graph, source, func_name, origin))
    return kernels


# --- user text in generated sources -----------------------------------------------------
# Generated modules, pycc sources and C headers mention the user's file name, function and
# parameter names in comments, docstrings and error messages. None of that text may end a
# comment or a string: it goes into comments and docstrings only through plain_text, and into
# Python string literals only through py_str. Identifiers are checked where they are made.
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7f)) - set("\\\"'*`")


def plain_text(text):
    """``text`` with every character that could end or escape a comment or a string replaced
    by ``?``: all but printable ASCII, and backslash, quotes, backquote and ``*``. The result
    is safe inside a Python comment, a Python string or docstring and a C block comment
    (no newline, no ``*/``, no ``/*``)."""
    return "".join(c if c in _PLAIN else "?" for c in str(text))


def py_str(text):
    """A Python string literal (ASCII only, one line) whose value is ``text``."""
    return ascii(str(text))


# --- the generated Python modules (format "python", the pycc source, format "ext") -------
# The checks every exported function runs on its arguments before the compiled kernel sees
# them: the kernels are compiled for float64 scalars and C-contiguous float64 arrays of one
# shape, and pycc's wrappers do not check what they are handed (a float32 array was read as
# float64 memory). Both Python-facing formats include this text, so they check alike.
_ARGUMENT_CHECKS = '''
_GRADC_FLOAT64 = np.dtype(np.float64)


def _gradc_float(value, what):
    """``value`` as a float: a real number (ints are taken as floats), else TypeError."""
    if type(value) is float:
        return value
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number (a float or an int), "
                        f"not {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what} is too large for a float64") from None


def _gradc_array(value, shape, what):
    """``value`` as a C-contiguous, writable float64 array of ``shape``: float and int arrays
    are converted (copied only when they must be); anything else raises TypeError or
    ValueError."""
    if type(value) is np.ndarray and value.dtype is _GRADC_FLOAT64 and value.shape == shape:
        flags = value.flags
        if flags.c_contiguous and flags.writeable:  # the usual call: nothing to convert
            return value
    if not isinstance(value, np.ndarray):
        hint = " (pass numpy.asarray(...))" if isinstance(value, (list, tuple)) else ""
        raise TypeError(f"{what} must be a numpy array of shape {shape}, "
                        f"not {type(value).__name__}{hint}")
    if value.dtype.kind not in "iuf":
        raise TypeError(f"{what} must be a float (or int) array, not {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, not {value.shape}")
    value = np.ascontiguousarray(value, dtype=np.float64)
    return value if value.flags.writeable else value.copy()
'''.strip("\n")
# The generated modules' own module-level names (besides the public functions, the kernels and
# the numpy aliases of the emitted code): reserved before any kernel is named.
_MODULE_NAMES = ("numbers", "np", "float64", "njit", "_GRADC_FLOAT64", "_gradc_float",
                 "_gradc_array", "__all__")


@dataclass
class _Part:
    """One kernel as the generated modules hold it."""

    kernel: Kernel
    text: str        # the emitted ``def``, renamed to ``name``
    alias: str       # the numpy alias that text uses
    params: list     # its parameter names (the user's)
    name: str        # the private kernel name, never a public one


def _function_text(source, func_name):
    """The ``def`` of ``func_name`` in emitted module ``source``, its numpy alias and parameters."""
    tree = ast.parse(source)
    alias = "np"
    for node in tree.body:
        if isinstance(node, ast.Import):
            alias = next(a.asname or a.name for a in node.names if a.name == "numpy")
        if isinstance(node, ast.FunctionDef) and node.name == func_name:
            text = ast.get_source_segment(source, node)
            return text, alias, [a.arg for a in node.args.args]
    raise BuildError(f"gradc internal error: {func_name} not found in the emitted source.")


def _parts(kernels):
    """Every kernel with its private name, from a namer that reserves every public name (and
    the generated module's own names) first: a helper can never take a public name, as
    ``_x_value`` (the helper of ``x_value``) once took the public ``_x_value``."""
    found = [(k, *_function_text(k.source, k.func_name)) for k in kernels]
    taken = set(_MODULE_NAMES) | {alias for _, _, alias, _ in found}
    for k in kernels:
        if k.public in taken:
            raise BuildError(f"gradc build: the exported name {k.public!r} is a name the "
                             "generated module needs for itself; rename the function.")
        taken.add(k.public)
    parts = []
    for k, text, alias, params in found:
        name = _fresh(f"_gradc_kernel_{k.public}", taken)
        text = text.replace(f"def {k.func_name}(", f"def {name}(", 1)
        parts.append(_Part(k, text, alias, params, name))
    return parts


def _fresh(wanted, taken):
    """``wanted``, or ``wanted_1``, ``wanted_2``, ... : the first not in ``taken`` (now taken)."""
    name, i = wanted, 0
    while name in taken:
        i += 1
        name = f"{wanted}_{i}"
    taken.add(name)
    return name


def _numba_type(shape):
    """The numba type of an argument: float64, or a C-contiguous float64 array of its ndim."""
    if shape is None:
        return "float64"
    return "float64[" + ", ".join([":"] * (len(shape) - 1) + ["::1"]) + "]"


def _describe(k, params):
    what = {"value": "The value", "grad": "The gradient",
            "value_and_grad": "The value and gradient"}[k.kind]
    args = ", ".join(f"{p}: f8" + ("" if s is None else str(list(s)))
                     for p, s in zip(params, k.shapes))
    return plain_text(f"{what} of {k.fn_name}({args}) from {k.origin[0]}, line {k.origin[1]}.")


def _kernel_block(part, cache):
    """The emitted function under ``@njit`` with its explicit signature."""
    types = [_numba_type(s) for s in part.kernel.shapes]
    sig = f"({types[0]},)" if len(types) == 1 else f"({', '.join(types)})"  # a tuple
    flags = "cache=True, " if cache else ""
    return f'@njit({sig}, {flags}error_model="numpy")\n{part.text}'


def _wrapper_block(part):
    """The public function: checks (or converts) every argument, then calls the kernel."""
    k = part.kernel
    taken = {"_gradc_float", "_gradc_array", part.name}  # what the body calls: never shadowed
    params = [_fresh(p, taken) for p in part.params]
    args = []
    for p, shown, s in zip(params, part.params, k.shapes):
        what = py_str(f"{k.public}: {shown}")
        args.append(f"_gradc_float({p}, {what})" if s is None
                    else f"_gradc_array({p}, {tuple(s)!r}, {what})")
    return "\n".join([f"def {k.public}({', '.join(params)}):",
                      f'    """{_describe(k, part.params)}"""',
                      f"    return {part.name}(",
                      *[f"        {a}," for a in args],
                      "    )"])


def _head(kernels, source_name, what, needs):
    """The comment and docstring that open a generated module."""
    names = ", ".join(k.public for k in kernels)
    return [
        f"# Generated by gradc {__version__} from {plain_text(source_name)}: {what}.",
        f"# Needs {needs} at run time, not gradc. Every exported function checks its arguments:",
        "# floats (ints are taken as floats), float or int NumPy arrays of the exported shape",
        "# (converted to C-contiguous float64); anything else raises TypeError or ValueError.",
        "# Rebuild with `gradc build`; edits here are not kept.",
        f'"""Ahead-of-time derivatives from {plain_text(source_name)}: {names}."""',
    ]


def _all(kernels):
    return f"__all__ = [{', '.join(py_str(k.public) for k in kernels)}]"


def python_source(kernels, module_name, source_name):
    """Format ``python``: one readable module, every kernel under ``@njit(cache=True)`` with
    its signature, behind a public function that checks its arguments."""
    parts = _parts(kernels)
    aliases = sorted({"np"} | {p.alias for p in parts})
    lines = [*_head(kernels, source_name, "an ahead-of-time module", "numpy and numba"),
             "import numbers", "",
             *[f"import numpy as {a}" for a in aliases],
             "from numba import float64, njit", "", _all(kernels)]
    blocks = [_ARGUMENT_CHECKS]
    for part in parts:
        blocks += [_kernel_block(part, cache=True), _wrapper_block(part)]
    return "\n".join(lines) + "\n\n\n" + "\n\n\n".join(blocks) + "\n"


def kernels_source(kernels, source_name):
    """The module ``numba.pycc`` compiles for format ``ext``: the kernels alone, under their
    private names, with explicit signatures (pycc exports them without argument checks)."""
    parts = _parts(kernels)
    aliases = sorted({"np"} | {p.alias for p in parts})
    lines = [f"# Generated by gradc {__version__} from {plain_text(source_name)}: the kernels "
             "that numba.pycc compiles.",
             *[f"import numpy as {a}" for a in aliases], "from numba import float64, njit"]
    return "\n".join(lines) + "\n\n\n" + "\n\n\n".join(
        _kernel_block(p, cache=False) for p in parts) + "\n"


def ext_init_source(kernels, module_name, source_name, extension):
    """Format ``ext``: the package's ``__init__.py``, which imports the compiled kernels from
    the extension module ``extension`` beside it and defines the checking public functions."""
    parts = _parts(kernels)
    lines = [*_head(kernels, source_name, "an ahead-of-time extension package", "numpy"),
             "import numbers", "", "import numpy as np", "",
             f"from .{extension} import (", *[f"    {p.name}," for p in parts], ")", "",
             _all(kernels)]
    blocks = [_ARGUMENT_CHECKS] + [_wrapper_block(p) for p in parts]
    return "\n".join(lines) + "\n\n\n" + "\n\n\n".join(blocks) + "\n"


def kernel_names(kernels):
    """The private names the generated modules give the kernels, in kernel order."""
    return [p.name for p in _parts(kernels)]


# --- the C header (format "c") -------------------------------------------------------
def _c_identifier(p, i):
    """A C parameter name for parameter ``i`` named ``p``: ``p`` when C may use it as it is
    (ASCII, not reserved to the implementation), else ``arg<i>``."""
    if not (p.isascii() and p.isidentifier()) or p.startswith("__") or (
            p.startswith("_") and p[1:2].isupper()):
        return f"arg{i}"
    return p


def _c_names(k):
    """C parameter names: the inputs, then one output per leaf of the result, with labels.
    Keywords and the object-like macros of the standard headers a caller includes before
    ours (``NAN``, ``errno``, ...) are renamed, as a prototype naming them would not compile."""
    taken, names = set(_C_KEYWORDS) | _C_MACROS, []
    for i, (p, _) in enumerate(k.graph.params):
        names.append(_fresh(_c_identifier(p, i), taken))
    outs = []
    if k.kind != "grad":
        outs.append((_fresh("value", taken), None, f"{k.fn_name}({', '.join(names)})"))
    if k.kind != "value":
        for p, s in zip(names, k.shapes):
            outs.append((_fresh(f"d{p}", taken), s, f"d{k.fn_name}/d{p}"))
    return names, outs


def c_header(kernels, module_name, source_name):
    """``<module>.h``: one documented prototype per kernel."""
    guard = f"GRADC_{module_name.upper()}_H"
    out = [
        f"/* {module_name}.h: generated by gradc {__version__} from {plain_text(source_name)}.",
        " *",
        f" * Link with -l{module_name} -lm. No Python is needed at run time. Every function is",
        " * allocation-free and thread-safe: scalar arguments are passed by value, array",
        " * arguments as pointers to float64 in C (row-major) order, and every result is written",
        " * to a caller-provided array (a single value to an array of length 1; a gradient to an",
        " * array laid out like its argument). Outputs must not overlap inputs. Each function",
        " * returns 0 on success (any other status is reserved for errors). Floating-point",
        " * rules are NumPy's: log(-1) gives nan, 1/0 gives inf, no errno is relied on.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
    ]
    for k in kernels:
        names, outs = _c_names(k)
        params, doc = [], []
        for n, s in zip(names, k.shapes):
            if s is None:
                params.append(f"double {n}")
                doc.append(f" *   in   {n}: double")
            else:
                params.append(f"const double *{n}")
                doc.append(f" *   in   {n}[{int(np.prod(s))}]: float64 array of shape {s}, C order")
        for n, s, what in outs:
            size = 1 if s is None else int(np.prod(s))
            params.append(f"double *{n}")
            layout = "" if s is None else f", shape {s} in C order"
            doc.append(f" *   out  {n}[{size}]: {plain_text(what)}{layout}")
        kind = {"value": "the value", "grad": "the gradient",
                "value_and_grad": "the value and gradient"}[k.kind]
        about = plain_text(f"{kind} of {k.fn_name} ({k.origin[0]}, line {k.origin[1]})")
        out += ["", f"/* {k.public}: {about}.",
                *doc, " *   returns 0 on success.", " */",
                f"int {k.public}({', '.join(params)});"]
    out += ["", "#ifdef __cplusplus", "}", "#endif", "", f"#endif  /* {guard} */", ""]
    return "\n".join(out)


# --- the build transaction -------------------------------------------------------------
def c_compiler():
    """The C compiler command (``$CC``, else ``cc``) or a BuildError saying how to get one."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        raise BuildError(
            f"gradc build: no C compiler found ({cc!r} is not on PATH). Install gcc or clang, "
            "or set CC to a C compiler; formats 'ext' and 'c' need one (format 'python' does not).")
    return cc


def _check_request(path, outdir, fmt, name):
    """The module name to build, once the format, the name and ``-o`` are known to be usable."""
    if fmt not in FORMATS:
        raise BuildError(f"gradc build: --format must be one of {FORMATS}, not {fmt!r}.")
    name = name or os.path.splitext(os.path.basename(path))[0]
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name) \
            or name in _C_KEYWORDS:
        raise BuildError(f"gradc build: {name!r} cannot name a module; pass --name NAME "
                         "(an ASCII identifier that is not a Python or C keyword).")
    if os.path.lexists(outdir) and not os.path.isdir(outdir):
        raise BuildError(f"gradc build: -o {outdir} is a file, not a directory; give a directory "
                         "(it is created if it does not exist).")
    return name


def _check_toolchain(fmt):
    """The C compiler for formats that need one (None for ``python``), or a BuildError."""
    if fmt == "python":
        return None
    cc = c_compiler()
    if fmt == "ext" and not os.path.isfile(
            os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        raise BuildError("gradc build --format ext needs the Python development headers "
                         "(Python.h); install python3-dev or use --format python.")
    return cc


def build(path, outdir, fmt, name=None):
    """Build every marked function of the module at ``path`` into ``outdir``; return the
    paths written (for ``ext``, the package directory).

    Everything is built in a temporary directory and moved into ``outdir`` only when the
    whole build succeeded; the move itself is all or nothing (see :func:`_install`).
    """
    outdir = os.path.abspath(outdir)
    name = _check_request(path, outdir, fmt, name)
    cc = _check_toolchain(fmt)
    entries = _entries(fmt, name)
    remove = _install_plan(fmt, name, outdir, os.path.abspath(path), entries)  # before the work
    kernels = lower_module(import_path(path))
    source_name = os.path.basename(path)
    try:
        # beside the results-to-be, so that every move below is a rename on one file system
        base = outdir if os.path.isdir(outdir) else os.path.dirname(outdir)
        os.makedirs(base, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=base, prefix=".gradc-build-")
    except OSError as exc:
        raise BuildError(f"gradc build: cannot write to {outdir}: {exc}") from exc
    keep_tmp = False
    try:
        stage, work, aside = (os.path.join(tmp, d) for d in ("out", "work", "old"))
        for d in (stage, work, aside):
            os.makedirs(d)
        _build_format(fmt, kernels, name, source_name, stage, work, cc)
        if sorted(os.listdir(stage)) != entries:
            raise BuildError(f"gradc internal error: the build wrote {sorted(os.listdir(stage))}, "
                             f"not {entries}.")
        try:
            _install(entries, remove, stage, outdir, aside)
        except _RollbackFailed:
            keep_tmp = True
            raise
        return [os.path.join(outdir, e) for e in entries]
    except OSError as exc:
        raise BuildError(f"gradc build: writing {outdir} failed: {exc}") from exc
    finally:
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _build_format(fmt, kernels, name, source_name, stage, work, cc):
    """Write format ``fmt``'s results for module ``name`` into ``stage``."""
    if fmt == "python":
        _write(os.path.join(stage, f"{name}.py"), python_source(kernels, name, source_name))
    elif fmt == "ext":
        from .aot_pycc import build_extension

        src = os.path.join(work, f"_gradc_aot_{name}.py")
        _write(src, kernels_source(kernels, source_name))
        package = os.path.join(stage, name)
        os.makedirs(package)
        build_extension(src, _EXTENSION, kernel_names(kernels), package, work)
        _write(os.path.join(package, "__init__.py"),
               ext_init_source(kernels, name, source_name, _EXTENSION))
    else:
        from .aot_c import build_library

        _write(os.path.join(stage, f"{name}.h"), c_header(kernels, name, source_name))
        build_library(kernels, name, stage, work, cc)


# The ext package's compiled kernels: <name>/_gradc_kernels.<abi>.so beside <name>/__init__.py.
_EXTENSION = "_gradc_kernels"


def _entries(fmt, name):
    """The entries of the output directory that a build of module ``name`` writes, sorted."""
    return sorted({"python": [f"{name}.py"], "ext": [name],
                   "c": [f"lib{name}.so", f"{name}.h"]}[fmt])


def _is_gradc_package(folder):
    """True when ``folder`` holds exactly what an ``ext`` build writes (and Python's caches)."""
    try:
        entries = set(os.listdir(folder))
        with open(os.path.join(folder, "__init__.py"), encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("# Generated by gradc ") and all(
        e in ("__init__.py", "__pycache__") or e.startswith(_EXTENSION + ".") for e in entries)


def _install_plan(fmt, name, outdir, source, entries):
    """The entries of ``outdir`` to remove besides those the build replaces, after checking
    that installing ``entries`` destroys neither the source nor anything gradc did not write.

    A module is imported from a package ``<name>/`` or an extension ``<name>.<abi>.so``
    before ``<name>.py``: a ``python`` build replaces an earlier ``ext`` package and refuses
    to write a module that another file would shadow."""
    remove = []
    for e in entries:
        dst = os.path.join(outdir, e)
        if os.path.isdir(dst) and not os.path.islink(dst) and not _is_gradc_package(dst):
            raise BuildError(f"gradc build: {dst} is a directory gradc did not write; remove it "
                             "or choose another -o directory or --name.")
    if fmt == "python":
        package = os.path.join(outdir, name)
        if os.path.isdir(package) and _is_gradc_package(package):
            remove.append(name)
        shadows = [os.path.join(outdir, name + s) for s in importlib.machinery.EXTENSION_SUFFIXES]
        shadows += [package] if os.path.isdir(package) and not remove else []
        for shadow in shadows:
            if os.path.lexists(shadow):
                raise BuildError(f"gradc build: {shadow} would be imported instead of the new "
                                 f"{name}.py; remove it or choose another -o directory or --name.")
    for e in entries + remove:
        dst = os.path.join(outdir, e)
        if source == dst or source.startswith(dst + os.sep):
            raise BuildError(f"gradc build: the output would overwrite {source}; choose another "
                             "-o directory or --name.")
    return remove


class _RollbackFailed(BuildError):
    """Installing failed, and so did putting the old entries back (they are kept aside)."""


def _install(entries, remove, stage, outdir, aside):
    """Move ``stage/<e>`` to ``outdir/<e>`` for every entry, and ``remove`` out of the way:
    all or nothing. Old entries are first moved aside (renames within one file system); if
    any move fails, the new entries are taken back out and the old ones put back (and an
    output directory made here removed again)."""
    created = not os.path.isdir(outdir)
    os.makedirs(outdir, exist_ok=True)
    moved, placed = [], []
    try:
        for e in entries + remove:
            if os.path.lexists(os.path.join(outdir, e)):
                os.replace(os.path.join(outdir, e), os.path.join(aside, e))
                moved.append(e)
        for e in entries:
            os.replace(os.path.join(stage, e), os.path.join(outdir, e))
            placed.append(e)
    except BaseException as exc:
        failed = _roll_back(placed, moved, stage, outdir, aside)
        if failed:
            raise _RollbackFailed(
                f"gradc build: installing into {outdir} failed ({exc}), and restoring "
                f"{', '.join(failed)} failed too; the previous files are in {aside}.") from exc
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(outdir)
        raise


def _roll_back(placed, moved, stage, outdir, aside):
    """Undo :func:`_install`'s moves, newest first; the entries that could not be restored."""
    failed = []
    for e in reversed(placed):
        try:
            os.replace(os.path.join(outdir, e), os.path.join(stage, e))
        except OSError:
            if e not in moved:  # a new entry stays where there was none (an old one is put back)
                failed.append(e)
    for e in reversed(moved):
        try:
            os.replace(os.path.join(aside, e), os.path.join(outdir, e))
        except OSError:
            failed.append(e)
    return failed


def _write(path, text):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
