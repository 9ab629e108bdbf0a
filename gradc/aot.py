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
- ``ext``: a native extension ``<module>.<abi>.so`` (via :mod:`gradc.aot_pycc`;
  needs only numpy at run time);
- ``c``: ``lib<module>.so`` and ``<module>.h`` (via :mod:`gradc.aot_c`): one
  allocation-free kernel per function, scalars by value, arrays and outputs by
  pointer, an ``int`` status return.

This module holds the marking, the collection of marked functions, the sources
(the Python module, the out-parameter kernels, the C header) and the build
transaction: everything is built in a temporary directory and moved into
``OUTDIR`` only when all of it succeeded.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

import numpy as np

from . import __version__, errors
from .emit import statements, assign_names, literal
from .ir import ArrayOut, leaves

FORMATS = ("python", "ext", "c")
KINDS = ("value", "grad", "value_and_grad")
_ARG = re.compile(r"^\s*f8\s*(?:\[\s*(\d+(?:\s*,\s*\d+)*)\s*\])?\s*$")
_C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern
    float for goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false
    asm typeof alignas alignof""".split())


class BuildError(errors.GradcError):
    """An ahead-of-time build cannot be done: nothing marked, a bad spec, no C compiler..."""


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
    """Import the user's module from ``path`` (its directory on sys.path while importing)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise BuildError(f"gradc build: no such file {path!r}.")
    name = "_gradc_build_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except errors.GradcError:
        raise
    except Exception as exc:
        raise BuildError(f"gradc build: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(os.path.dirname(path))
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


# --- the Python module (format "python", and the source pycc compiles) -----------------
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


def _numba_type(shape):
    return "float64" if shape is None else "float64[" + ", ".join(":" * len(shape)) + "]"


def _describe(k, params):
    what = {"value": "The value", "grad": "The gradient",
            "value_and_grad": "The value and gradient"}[k.kind]
    args = ", ".join(f"{p}: f8" + ("" if s is None else str(list(s)))
                     for p, s in zip(params, k.shapes))
    return f"{what} of {k.fn_name}({args}) from {k.origin[0]}, line {k.origin[1]}."


def python_source(kernels, module_name, source_name):
    """One readable module: every kernel under ``@njit(cache=True)`` with its signature."""
    aliases, blocks = {"np"}, []
    for k in kernels:
        text, alias, params = _function_text(k.source, k.func_name)
        aliases.add(alias)
        types = [_numba_type(s) for s in k.shapes]
        sig = f"({types[0]},)" if len(types) == 1 else f"({', '.join(types)})"  # a tuple
        doc = f'    """{_describe(k, params)}"""'
        arrays = [(p, s) for p, s in zip(params, k.shapes) if s is not None]
        if not arrays:  # the emitted function itself, renamed, is the public one
            lines = text.split("\n")
            lines[0] = lines[0].replace(f"def {k.func_name}(", f"def {k.public}(", 1)
            blocks.append(f'@njit({sig}, cache=True, error_model="numpy")\n'
                          + "\n".join([lines[0], doc] + lines[1:]))
            continue
        inner = f"_{k.public}"  # array arguments: a public wrapper checks shapes first
        body = text.replace(f"def {k.func_name}(", f"def {inner}(", 1)
        checks = []
        for p, s in arrays:
            cond = " or ".join(f"{p}.shape[{i}] != {d}" for i, d in enumerate(s))
            checks += [f"    if {cond}:",
                       f'        raise ValueError("{k.public}: {p} must have shape {s}")']
        wrapper = "\n".join([f'@njit({sig}, cache=True, error_model="numpy")',
                             f"def {k.public}({', '.join(params)}):", doc, *checks,
                             f"    return {inner}({', '.join(params)})"])
        blocks.append('@njit(cache=True, error_model="numpy")\n' + body + "\n\n\n" + wrapper)
    imports = [f"import numpy as {a}" for a in sorted(aliases)]
    head = [
        f"# Generated by gradc {__version__} from {source_name}: an ahead-of-time module.",
        "# Needs numpy and numba at run time, not gradc. Scalar arguments are float64, array",
        "# arguments float64 arrays of the exported shape. Rebuild with `gradc build`.",
        f'"""Ahead-of-time derivatives from {source_name}: '
        f'{", ".join(k.public for k in kernels)}."""',
        *imports,
        "from numba import float64, njit",
        "",
        f"__all__ = [{', '.join(repr(k.public) for k in kernels)}]",
    ]
    return "\n".join(head) + "\n\n\n" + "\n\n\n".join(blocks) + "\n"


# --- out-parameter kernels (format "c") ------------------------------------------------
def _c_names(k):
    """C parameter names: the inputs, then one output per leaf of the result, with labels."""
    taken, names = set(_C_KEYWORDS), []

    def fresh(wanted):
        name, i = wanted, 0
        while name in taken:
            i += 1
            name = f"{wanted}_{i}"
        taken.add(name)
        return name

    for i, (p, _) in enumerate(k.graph.params):
        names.append(fresh(p if p.isascii() and p.isidentifier() else f"arg{i}"))
    outs = []
    if k.kind != "grad":
        outs.append((fresh("value"), None, f"{k.fn_name}({', '.join(names)})"))
    if k.kind != "value":
        for p, s in zip(names, k.shapes):
            outs.append((fresh(f"d{p}"), s, f"d{k.fn_name}/d{p}"))
    return names, outs


def kernel_source(k, func_name):
    """The out-parameter form of ``k``: ``def f(<inputs>, <outputs>)`` writing every result
    into caller arrays (arrays as flat C-order pointers) and returning 0. No allocation."""
    g = k.graph
    if getattr(g, "whole_params", None) or any(getattr(n, "shape", ()) for n in g.nodes):
        raise BuildError(f"gradc build --format c: {k.public} uses whole-array (NumPy-level) "
                         "code; the C format supports element-wise (unrolled) graphs only.")
    names, absorbed, namer = assign_names(g, g.name)
    np_alias = namer.fresh("np")
    params = names["params"]
    out_leaves = list(leaves(g.out_tree))
    outs = [namer.fresh(f"out{i}") for i in range(len(out_leaves))]
    lines = [f"def {func_name}({', '.join(params + outs)}):"]
    uses = g.users()

    def text(node):
        return literal(node.attrs[0], np_alias) if node.op == "const" else names[node.id]

    for node in g.inputs:
        _, _, p, index = node.attrs
        if index is not None and uses[node.id]:
            flat = int(np.ravel_multi_index(index, g.params[p][1]))
            lines.append(f"    {names[node.id]} = {params[p]}[{flat}]")
    # the body is the same statements the JIT path emits
    lines.extend("    " + line for line in statements(g, names, absorbed, namer, np_alias))
    for out, leaf in zip(outs, out_leaves):
        if isinstance(leaf, ArrayOut):
            for j, i in enumerate(leaf.indices):
                lines.append(f"    {out}[{j}] = {text(g.outputs[i])}")
        else:
            lines.append(f"    {out}[0] = {text(g.outputs[leaf])}")
    lines.append("    return 0")
    return f"import numpy as {np_alias}\n\n\n" + "\n".join(lines) + "\n"


def c_header(kernels, module_name, source_name):
    """``<module>.h``: one documented prototype per kernel."""
    guard = f"GRADC_{module_name.upper()}_H"
    out = [
        f"/* {module_name}.h: generated by gradc {__version__} from {source_name}.",
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
            doc.append(f" *   out  {n}[{size}]: {what}{layout}")
        kind = {"value": "the value", "grad": "the gradient",
                "value_and_grad": "the value and gradient"}[k.kind]
        out += ["", f"/* {k.public}: {kind} of {k.fn_name} ({k.origin[0]}, line {k.origin[1]}).",
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


def build(path, outdir, fmt, name=None):
    """Build every marked function of the module at ``path`` into ``outdir``; return the files.

    Nothing is written to ``outdir`` unless the whole build succeeds.
    """
    if fmt not in FORMATS:
        raise BuildError(f"gradc build: --format must be one of {FORMATS}, not {fmt!r}.")
    name = name or os.path.splitext(os.path.basename(path))[0]
    if not (name.isascii() and name.isidentifier()) or name in _C_KEYWORDS:
        raise BuildError(f"gradc build: {name!r} cannot name a module; pass --name NAME "
                         "(an ASCII identifier).")
    if fmt != "python":
        cc = c_compiler()
        if fmt == "ext" and not os.path.isfile(
                os.path.join(sysconfig.get_paths()["include"], "Python.h")):
            raise BuildError("gradc build --format ext needs the Python development headers "
                             "(Python.h); install python3-dev or use --format python.")
    kernels = lower_module(import_path(path))
    source_name = os.path.basename(path)
    outdir = os.path.abspath(outdir)
    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".gradc-build-")
    try:
        stage = os.path.join(tmp, "out")
        work = os.path.join(tmp, "work")
        os.makedirs(stage)
        os.makedirs(work)
        if fmt == "python":
            _write(os.path.join(stage, f"{name}.py"), python_source(kernels, name, source_name))
        elif fmt == "ext":
            from .aot_pycc import build_extension

            src = os.path.join(work, f"_gradc_aot_{name}.py")
            _write(src, python_source(kernels, name, source_name))
            build_extension(src, name, [k.public for k in kernels], stage, work)
        else:
            from .aot_c import build_library

            _write(os.path.join(stage, f"{name}.h"), c_header(kernels, name, source_name))
            build_library(kernels, name, stage, work, cc)
        files = sorted(os.listdir(stage))
        if any(os.path.join(outdir, f) == os.path.abspath(path) for f in files):
            raise BuildError(f"gradc build: the output would overwrite {path}; choose another "
                             "-o directory or --name.")
        os.makedirs(outdir, exist_ok=True)
        for f in files:
            os.replace(os.path.join(stage, f), os.path.join(outdir, f))
        return [os.path.join(outdir, f) for f in files]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
