"""The warm-start index: a program -> the compiled C entry it lowered to.

A second process calling a large scalar program used to trace it, differentiate,
optimize, unroll and emit it again only to find its cache entry (the cache is keyed
by the emitted source): at 16,677 nodes that was 1.2 s of a 2.0 s warm start. The index
maps a hash to what gradc/native.py needs to load the body's object code and put its C
entry in front of it (:func:`read`, :func:`write`). Two hashes find an entry:

- :func:`code_key`, told without tracing: the function's code and every value it reads
  (gradc/fingerprint.py), where those are all plain data, code or known libraries. A warm
  start that finds it does not trace at all (at 20,000 nodes the trace was 0.18 s of 0.3 s);
- :func:`key`, told from the trace, for the functions whose reads cannot be told without
  running them (a method reading its object's attributes): the traced graph, hashed.

Either way nothing is differentiated, optimized or emitted on a hit; the graph and the
emitted source are built only if someone asks for them (``f.graph``, ``f.source``,
``explain``), and a call the C entry does not take traces then.

What keys an entry: gradc's own code (a hash of its source files: a changed pass
never meets an entry an older one wrote), the transformation's settings (with the
argument shapes), and either the fingerprint or every node of the traced graph (op,
arguments, attributes, shape, the user's names for it), its parameters, outputs and
result structure. A graph whose attributes are not plain data (a loop body, a user's
derivative rule) is not indexed. The origin (file, line) is in neither: a function
moved in its file still hits.

An entry is JSON (integers, names and shapes: nothing in it is ever executed), read
and written only in gradc's verified cache directory through :mod:`gradc.jit`'s file
helpers; an entry that does not parse, or whose object code is gone or fails its own
checks (gradc/native.py), is a miss, and the program is built as on a cold start.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np

from . import fingerprint, jit

#: Bump when what an entry holds changes.
FORMAT = 1
_PLAIN = (int, float, bool, str, type(None))
_code_digest = None


def _gradc_code_digest():
    """The hash of gradc's own source files, once per process."""
    global _code_digest
    if _code_digest is None:
        h = hashlib.sha256(f"index {FORMAT}\n".encode())
        root = os.path.dirname(os.path.abspath(__file__))
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    h.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as fh:
                        h.update(hashlib.sha256(fh.read()).digest())
        _code_digest = h.hexdigest()
    return _code_digest


def _attr_text(value):
    """An attribute as exact text, or None where it is not plain data."""
    if isinstance(value, float):
        return value.hex() if value == value else "nan"
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, tuple):
        parts = [_attr_text(v) for v in value]
        return None if None in parts else "(" + ",".join(parts) + ")"
    if isinstance(value, slice):
        return _attr_text((value.start, value.stop, value.step))
    if isinstance(value, np.ndarray):
        return f"array{value.dtype.str}{value.shape}{hashlib.sha256(value.tobytes()).hexdigest()}"
    return None


def key(graph, settings):
    """The index key of a traced ``graph`` under ``settings`` (a tuple of plain data: the
    transformation, its options, the argument shapes), or None where it is not indexed."""
    settings_text = _attr_text(tuple(settings))
    if settings_text is None or graph.captured_arrays:
        return None
    h = hashlib.sha256()
    h.update(_gradc_code_digest().encode())
    h.update(settings_text.encode())
    h.update(repr((graph.name, graph.dtype, graph.params, sorted(graph.whole_params),
                   [n.id for n in graph.outputs], graph.out_tree)).encode())
    names = graph.names
    for node in graph.nodes:
        attrs = _attr_text(node.attrs)
        if attrs is None:
            return None
        h.update(f"{node.op}|{','.join(str(a.id) for a in node.args)}|{attrs}|{node.shape}|"
                 f"{names.get(node.id, '')}\n".encode())
    return h.hexdigest()


def code_key(fn, settings):
    """The index key of ``fn`` under ``settings`` told from its code and the values it reads,
    without tracing it (gradc/fingerprint.py), or None where that cannot be told."""
    settings_text = _attr_text(tuple(settings))
    found = fingerprint.of(fn) if settings_text is not None else None
    if found is None:
        return None
    h = hashlib.sha256(b"code\n")  # (never equal to a trace's key: another first line)
    h.update(_gradc_code_digest().encode())
    h.update(settings_text.encode())
    h.update(found.encode())
    return h.hexdigest()


def _path(digest):
    """Beside the object code in the verified cache's __pycache__, named as gradc's cache
    files are, so that ``gradc cache clear`` removes it with them."""
    directory = jit.cache_dir()
    if directory is None or jit._trust_problem(directory):
        return None
    return os.path.join(directory, "__pycache__", f"gradc_{digest[:24]}.index.json")


def read(digest):
    """The entry stored under ``digest`` (a dict), or None."""
    path = _path(digest)
    data = jit._read_regular(path, 1 << 22) if path else None
    if not data:
        return None
    try:
        entry = json.loads(data)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != digest:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a name in the verified directory: a link is removed, not followed
        return None
    return entry


def write(digest, entry):
    """Store ``entry`` (JSON data) under ``digest``; a failed write only warns (jit's rule)."""
    path = _path(digest)
    if path is None:
        return
    data = json.dumps(dict(entry, format=FORMAT, key=digest), sort_keys=True).encode()
    try:
        jit._write_source(path, data)
    except OSError as exc:
        jit._warn_write_failed(os.path.dirname(os.path.dirname(path)), exc)


def tuples(value):
    """JSON's lists back into the tuples they were (shapes, result trees)."""
    if isinstance(value, list):
        return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    return value
