"""What a function's trace reads besides its arguments, as text to hash, without tracing it.

A warm start (gradc/index.py) finds a large program's compiled entry from a hash. Hashing
the traced graph needs the trace, which at 20,000 nodes is most of a warm start; this
module hashes what the trace *reads* instead: the function's bytecode and constants, its
defaults, the cells it closes over, and the globals its code names, followed into every
Python function it reaches. Where all of that is plain data (numbers, strings, tuples),
code, or a library gradc knows (NumPy, ``math``, ``operator``, gradc itself; by name and
version), the same text means the same trace: the trace of a function is decided by its
code, the values that code reads, and the argument shapes (which the caller adds to the
key). Where anything is not (an object's attributes, a list, a dict, an array, a module of
the user's, an ``import`` inside the function, NumPy's random numbers, ``open``), the answer
is None and the caller traces, as it always may.

Line numbers and file names are not read: a function moved in its file, or a comment
edited above it, keeps its fingerprint.

>>> import math
>>> def model(scale):
...     def f(x):
...         return math.sin(x) * scale
...     return f
>>> of(model(2.0)) == of(model(2.0)), of(model(2.0)) == of(model(3.0))
(True, False)
>>> def reader(path):
...     return lambda x: x * float(open(path).read())
>>> of(reader("k.txt")) is None  # what it reads is in a file
True
"""
from __future__ import annotations

import builtins
import functools
import hashlib
import sys
import types

import numpy as np

#: Modules whose functions are named, not followed: on traced values they run gradc's own
#: code (hashed with gradc's sources by the caller), on constants the library's (version).
LIBRARIES = ("numpy", "math", "cmath", "operator", "gradc", "scipy")
#: Parts of those libraries whose results are not decided by their arguments.
UNDECIDED = ("numpy.random", "random")
#: Builtins whose result is not decided by the code and its values (files, the
#: interpreter's state, the process's memory addresses and hash seed).
UNDECIDED_BUILTINS = frozenset({"open", "input", "eval", "exec", "compile", "__import__",
                                "globals", "locals", "vars", "id", "hash", "breakpoint",
                                "memoryview", "help"})
_IMPORTS = frozenset(op for name, op in __import__("dis").opmap.items()
                     if name in ("IMPORT_NAME", "IMPORT_FROM", "IMPORT_STAR"))
_ABSENT = object()


class _NotPlain(Exception):
    """Something the trace may read is not data, code or a known library."""


def of(fn):
    """The fingerprint of ``fn`` (a hex digest), or None where it cannot be told without
    tracing."""
    try:
        parts = _Walk().run(fn)
    except _NotPlain:
        return None
    h = hashlib.sha256(f"python {sys.version}\nnumpy {np.__version__}\n".encode())
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part)
        h.update(b"\n")
    return h.hexdigest()


def _library(module_name):
    """Whether ``module_name`` belongs to a library whose functions are named, not followed."""
    if not isinstance(module_name, str):
        return False
    top = module_name.split(".")[0]
    if any(module_name == u or module_name.startswith(u + ".") for u in UNDECIDED):
        raise _NotPlain(module_name)
    return top in LIBRARIES


def _version(module_name):
    top = sys.modules.get(module_name.split(".")[0])
    return str(getattr(top, "__version__", ""))


def _names(code):
    """The names ``code`` and the code nested in it (lambdas, comprehensions, inner
    functions, which share its globals) look up, in the order they first appear; refuses
    code that imports (what it imports is not in the function's globals)."""
    found, stack = {}, [code]
    while stack:
        c = stack.pop()
        raw = c.co_code
        if any(raw[i] in _IMPORTS for i in range(0, len(raw), 2)):
            raise _NotPlain("import inside the function")
        for name in c.co_names:
            found.setdefault(name, None)
        stack.extend(k for k in reversed(c.co_consts) if isinstance(k, types.CodeType))
    if "random" in found:  # np.random.<...>: numbers drawn during the trace
        raise _NotPlain("random")
    return list(found)


class _Walk:
    """Depth first over what a function reads, each value once (a value met again is
    written as a reference to where it was first met, so cycles end and sharing shows)."""

    def __init__(self):
        self.parts, self.seen, self.stack = [], {}, []
        self.alive = []  # what ``seen`` holds ids of stays alive: no id is reused meanwhile

    def run(self, root):
        self.stack.append(root)
        while self.stack:
            self.visit(self.stack.pop())
        return self.parts

    def push(self, *values):
        self.stack.extend(reversed(values))

    def visit(self, value):
        if isinstance(value, _Text):
            self.parts.append(value.text)
            return
        plain = _plain_text(value)
        if plain is not None:
            self.parts.append(plain)
            return
        if id(value) in self.seen:
            self.parts.append(f"ref {self.seen[id(value)]}")
            return
        self.seen[id(value)] = len(self.seen)
        self.alive.append(value)
        if isinstance(value, types.FunctionType):
            self.function(value)
        elif isinstance(value, types.CodeType):
            self.code(value)
        elif isinstance(value, tuple):
            self.parts.append(f"tuple {len(value)}")
            self.push(*value)
        elif isinstance(value, frozenset):  # a constant of ``x in {1, 2}``: sorted, as text
            texts = [_plain_text(v) for v in value]
            if None in texts:
                raise _NotPlain("a set of values that are not plain")
            self.parts.append(f"frozenset {sorted(texts)}")
        elif isinstance(value, functools.partial):
            self.parts.append(f"partial {len(value.args)} {sorted(value.keywords)}")
            self.push(value.func, *value.args, *(value.keywords[k] for k in sorted(value.keywords)))
        elif isinstance(value, types.ModuleType):
            if not _library(value.__name__):
                raise _NotPlain(value.__name__)
            self.parts.append(f"module {value.__name__} {_version(value.__name__)}")
        else:
            self.parts.append(_named(value))

    def function(self, fn):
        # A library's own function is named; one it made at run time (a closure, a function
        # defined inside another) may hold anything, a user's function included: followed.
        if _library(getattr(fn, "__module__", None)) and fn.__closure__ is None \
                and "<locals>" not in fn.__qualname__:
            self.parts.append(_named(fn))
            return
        code = fn.__code__
        names = _names(code)
        self.parts.append(f"function {len(names)}")
        cells = [c.cell_contents if _filled(c) else _Text("empty cell")
                 for c in (fn.__closure__ or ())]
        kwdefaults = fn.__kwdefaults__ or {}
        self.push(code, _Text("defaults"), fn.__defaults__ or (), _Text("kwdefaults"),
                  tuple(sorted(kwdefaults)), *(kwdefaults[k] for k in sorted(kwdefaults)),
                  _Text("cells"), *cells)
        for name in names:
            value = fn.__globals__.get(name, _ABSENT)
            if value is not _ABSENT:
                self.push(_Text(f"global {name}"), value)
            elif name in UNDECIDED_BUILTINS:
                raise _NotPlain(name)
            elif hasattr(builtins, name) and fn.__globals__.get("__builtins__") not in (
                    None, builtins, builtins.__dict__):
                raise _NotPlain("replaced builtins")  # (exec'd code with its own builtins)
            else:
                self.parts.append(f"name {name}")  # a builtin, or an attribute's name

    def code(self, code):
        self.parts.append(f"code {code.co_argcount} {code.co_posonlyargcount} "
                          f"{code.co_kwonlyargcount} {code.co_flags} {code.co_names} "
                          f"{code.co_varnames} {code.co_freevars} {code.co_cellvars} "
                          f"{len(code.co_consts)}")
        self.parts.append(code.co_code)
        self.parts.append(code.co_exceptiontable)
        self.push(*code.co_consts)


class _Text:
    """A marker written as it is (the walk's own punctuation)."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _filled(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _plain_text(value):
    """Exact text of a number, string, bytes, None, bool or NumPy scalar; None otherwise."""
    kind = type(value)
    if kind is float:
        return f"float {value.hex()}"
    if kind in (int, bool, str, type(None), complex, bytes, type(Ellipsis)):
        return f"{kind.__name__} {value!r}"
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return f"{value.dtype.str} {value.tobytes().hex()}"
    return None


def _named(value):
    """A library's function, ufunc, type or dtype, by its name; anything else is refused."""
    if isinstance(value, np.ufunc):
        for module in ("numpy", "scipy.special"):
            lib = sys.modules.get(module)
            if lib is not None and getattr(lib, value.__name__, None) is value:
                return f"ufunc {module}.{value.__name__} {_version(module)}"
        raise _NotPlain(value.__name__)
    if isinstance(value, np.dtype):
        return f"dtype {value.str}"
    if isinstance(value, (types.BuiltinFunctionType, types.FunctionType, type)):
        module = getattr(value, "__module__", None)
        if module == "builtins":
            name = value.__qualname__
            if name in UNDECIDED_BUILTINS:
                raise _NotPlain(name)
            return f"builtin {name}"
        if _library(module):
            return f"library {module}.{value.__qualname__} {_version(module)}"
    raise _NotPlain(type(value).__qualname__)
