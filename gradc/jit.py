"""Backends: load emitted source from a real file in gradc's cache, and compile it with numba.

The source is written to ``<cache>/gradc_<hash>.py`` (content-hashed, written to
a temporary file and moved into place), imported with importlib, and compiled
with ``njit(cache=True)`` — so a second process loads numba's machine code from
``<cache>/__pycache__`` instead of compiling again. This module owns the guards
numba does not have: corrupt cache entries are deleted and rebuilt (with a
:class:`~gradc.errors.CacheWarning`), an unwritable cache directory falls back
to a private temporary one, and a file lock keeps concurrent first calls from
compiling (and writing) the same entry at once.

The cache directory is ``$GRADC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradc``,
else ``~/.cache/gradc``; gradc creates it readable by the user only.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings

from . import __version__
from .errors import CacheWarning, GradcError

_fallback_dir = None


def default_cache_dir():
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gradc")


def _writable(directory):
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def cache_dir():
    """The directory gradc writes to now (the configured one, or a private fallback)."""
    global _fallback_dir
    wanted = default_cache_dir()
    if _writable(wanted):
        return wanted
    if _fallback_dir is None:
        _fallback_dir = tempfile.mkdtemp(prefix="gradc-cache-")
        warnings.warn(
            f"gradc cannot write its cache directory {wanted!r}; compiled functions are cached "
            f"in {_fallback_dir!r} for this process only. Set GRADC_CACHE_DIR to a writable "
            "directory to keep them between runs.", CacheWarning, stacklevel=3)
    return _fallback_dir


def source_path(source):
    """Where ``source`` lives in the cache: the file name is a hash of its content."""
    key = "\n".join((source, __version__, _numba_version(), sys.version))
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), f"gradc_{digest}.py")


def _numba_version():
    try:
        from importlib.metadata import version

        return version("numba")
    except Exception:  # numba absent: the python backend still works
        return "none"


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path + '.lock'`` (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first calls may compile twice, harmlessly
        yield
        return
    with open(path + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_source(path, source):
    """Write ``source`` to ``path`` atomically unless it is already there, intact."""
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == source:
                return
    except (OSError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(source)
    os.replace(tmp, path)


def load_module(path):
    """Import the module at ``path`` under a unique name (so tracebacks and inspect work)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def load_python(source, func_name):
    """The emitted function, plain Python, imported from its cache file."""
    path = source_path(source)
    with _locked(path):
        write_source(path, source)
        module = load_module(path)
    return getattr(module, func_name), path


def _numba_cache_files(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    pattern = os.path.join(os.path.dirname(path), "__pycache__", f"{stem}.*")
    return sorted(glob.glob(pattern))


def _jit_inner(module, func_name):
    """Compile the fused function lazily, in place in its module, so that the entry point or
    the batched loop that calls it (a module global) calls the compiled one."""
    from numba import njit

    setattr(module, func_name, njit(cache=True, error_model="numpy")(getattr(module, func_name)))


def _njit_all(module, func_name, entry_name, shapes, dtype="float64", layout="A"):
    from numba import float64, njit, types

    _jit_inner(module, func_name)
    element = getattr(types, dtype)
    signature = tuple(float64 if shape is None else types.Array(element, len(shape), layout)
                      for shape in shapes) + (types.StarArgTuple(()),)  # *extra is always empty
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():  # '@ is faster on contiguous arrays': transposes are views
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return njit(signature, cache=True, error_model="numpy")(getattr(module, entry_name))


def _njit_batched(module, func_name, batched_name, batched, n_outputs, parallel):
    from numba import float64, int64, njit, types

    _jit_inner(module, func_name)
    vector = types.Array(float64, 1, "C")  # contiguous loads vectorise: ~1.5x over "A"
    signature = (int64,) + tuple(vector if b else float64 for b in batched) + (vector,) * n_outputs
    if parallel:
        use_threading_layer()
    return njit(signature, cache=True, parallel=parallel, error_model="numpy")(
        getattr(module, batched_name))


def use_threading_layer():
    """Pick numba's ``workqueue`` threading layer unless the user chose one.

    On small machines the default OpenMP layer spin-waits between parallel
    regions (measured: 8 ms instead of 1 ms for a 1e6-point prange loop on 2
    vCPUs). Set ``NUMBA_THREADING_LAYER`` to choose another layer.
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


def load_numba_batched(source, func_name, batched_name, batched, n_outputs, parallel):
    """The numba dispatcher of the batched loop (see :func:`gradc.emit.emit_batched`)."""
    return load_numba(source, func_name, None, None, build=lambda module: _njit_batched(
        module, func_name, batched_name, batched, n_outputs, parallel))


def load_numba(source, func_name, entry_name, shapes, build=None, dtype="float64", layout="A"):
    """The numba dispatcher of the entry point, compiled once per machine and cached on disk.

    ``layout`` is the array layout of the signature: "A" (any) for unrolled code,
    which reads elements; "C" for NumPy-level code, whose reshapes need C order.
    """
    path = source_path(source)
    build = build or (lambda module: _njit_all(module, func_name, entry_name, shapes, dtype,
                                               layout))
    with _locked(path):
        write_source(path, source)
        try:
            return build(load_module(path)), path
        except Exception as first:
            stale = _numba_cache_files(path)
            if not stale:
                raise GradcError(
                    f"numba could not compile the emitted source {path}: {first}. This is a "
                    "gradc bug; please report it with that file. backend='python' runs the "
                    "same source without numba.") from first
            warnings.warn(
                f"gradc's cache entry for {path} was unreadable ({type(first).__name__}: "
                f"{first}); it was deleted and is being rebuilt.", CacheWarning, stacklevel=4)
            for stale_file in stale:
                with contextlib.suppress(OSError):
                    os.remove(stale_file)
            write_source(path, source)
            return build(load_module(path)), path
