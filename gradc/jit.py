"""Backends: run emitted source from gradc's disk cache, plain or compiled with numba.

The source is written to ``<cache>/gradc_<hash>.py`` (content-hashed, written to
a temporary file and moved into place) and then executed **from memory**: the
text gradc generated is compiled under that file name, so tracebacks, ``inspect``
and numba see a real file, but no second read of the file can swap the code.
numba's ``cache=True`` then keeps its machine code in ``<cache>/__pycache__``,
so a second process loads it instead of compiling again.

The cache is trusted only as far as it is private. numba's cache files are
pickles, and unpickling runs code, so gradc uses a cache directory only if it
(its ``__pycache__`` too) is a real directory owned by the current user that
nobody else can write, under parents that nobody else can rename it out of
(checked with ``lstat``; a symbolic link is resolved and its target checked).
Otherwise gradc warns (:class:`~gradc.errors.CacheWarning`) and uses a private
temporary directory for the process. numba itself is pointed at that verified
``__pycache__`` only (not at ``NUMBA_CACHE_DIR`` or a user-wide directory), and
its index is stamped with the hash of the in-memory source.

A broken cache never breaks a computation: corrupt entries are deleted and
rebuilt, a failed write (a full disk, a file-size limit, a directory where a file
should be) is warned about once and the function is computed without the disk
cache, lock and source files are opened without following symbolic links and
must be regular files, and a compile lock held too long (by a stopped process)
is given up on after ``GRADC_LOCK_TIMEOUT`` seconds, with a warning.

The cache directory is ``$GRADC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradc``,
else ``~/.cache/gradc``; gradc creates it readable by the user only.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import linecache
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import types
import warnings

from .version import __version__
from .config import verbose_enabled
from .errors import CacheWarning, GradcError

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent first calls may compile twice, harmlessly
    fcntl = None

#: Seconds to wait for another process's compile lock before compiling independently
#: (``GRADC_LOCK_TIMEOUT`` overrides it). A compile takes seconds; a process that holds the
#: lock longer is most likely stopped (``kill -STOP``, a debugger, a frozen container).
LOCK_TIMEOUT = 60.0

#: A numba compile of a gradc module that takes longer than this many seconds says so: once,
#: to the ``gradc`` logger, and as one progress line on stderr when verbose (see
#: :mod:`gradc.config`). numba itself is silent during a compile of a minute.
COMPILE_NOTICE_SECONDS = 1.0

_log = logging.getLogger("gradc")

_UID = os.geteuid() if hasattr(os, "geteuid") else None  # None: Windows, where ACLs rule
# Open flags for files in the cache: never follow a symbolic link, never block on a FIFO.
_SAFE_OPEN = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_fallback_dir = None
_warned = set()
_entries = {}  # file name the code was compiled under -> its _Entry (numba's cache looks it up)
_BUILD_LOCK = threading.RLock()  # numba serialises compiles anyway (its global compiler lock)


def default_cache_dir():
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gradc")


# --- warnings ------------------------------------------------------------------------------

def _warn(message):
    """A CacheWarning attributed to the first caller outside gradc and numba."""
    internal = (_PACKAGE_DIR,)
    numba = sys.modules.get("numba")
    if numba is not None and getattr(numba, "__file__", None):
        internal += (os.path.dirname(os.path.abspath(numba.__file__)),)
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CacheWarning, stacklevel=level)


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        _warn(message)


def _warn_write_failed(directory, exc):
    """Once per process and directory: writing the cache failed, so gradc computes without it."""
    _warn_once(("write", directory),
               f"gradc could not write its cache in {directory!r} ({type(exc).__name__}: {exc}); "
               "functions whose cache entry cannot be written are compiled without the disk "
               "cache (this warning is shown once).")


# --- which directories are trusted ---------------------------------------------------------

def _untrusted_reason(path):
    """Why ``path`` is not a directory that only this user can change; None when it is.

    ``lstat``, so a symbolic link is reported as one instead of being followed.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if _UID is None:
        return None
    if st.st_uid != _UID:
        return f"is owned by uid {st.st_uid}, not by you (uid {_UID})"
    if st.st_mode & 0o022:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _parents_reason(path):
    """Why a parent of ``path`` would let someone else replace it; None when none would.

    gradc and numba open cache files by path, so the path must keep naming the directory
    that was checked: every parent must be owned by this user or root and, where others may
    write it, be sticky (as /tmp is), so that nobody else can rename entries in it.
    """
    if _UID is None:
        return None
    parent = os.path.dirname(path)
    while True:
        try:
            st = os.lstat(parent)
        except OSError as exc:
            return f"has a parent {parent!r} that cannot be examined ({exc.strerror})"
        if st.st_uid not in (_UID, 0):
            return f"has a parent {parent!r} owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return (f"has a parent {parent!r} that others can write "
                    f"(mode {stat.S_IMODE(st.st_mode):o}, not sticky)")
        if os.path.dirname(parent) == parent:
            return None
        parent = os.path.dirname(parent)


def _trust_problem(directory):
    """Why gradc must not read code from ``directory`` (a resolved path); None when it may."""
    problem = _untrusted_reason(directory) or _parents_reason(directory)
    if problem:
        return problem
    problem = _untrusted_reason(os.path.join(directory, "__pycache__"))
    return f"has a __pycache__ that {problem}" if problem else None


def _prepare_dir(wanted):
    """``(directory, None)``: ``wanted`` resolved, created, verified and writable; else
    ``(None, (kind, why))`` with kind "untrusted" or "unwritable"."""
    try:
        os.makedirs(wanted, mode=0o700, exist_ok=True)
    except OSError as exc:
        return None, ("unwritable", f"it cannot be created ({exc.strerror})")
    real = os.path.realpath(wanted)  # a symbolic link is resolved; its target is checked
    problem = _untrusted_reason(real) or _parents_reason(real)
    if not problem:  # __pycache__ is made only in a directory that is already trusted
        try:
            os.mkdir(os.path.join(real, "__pycache__"), 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            return None, ("unwritable", f"it cannot be written ({exc.strerror})")
        problem = _trust_problem(real)
    if problem:
        return None, ("untrusted", f"{real!r} {problem}" if real != wanted else f"it {problem}")
    try:
        fd, probe = tempfile.mkstemp(dir=real, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return None, ("unwritable", f"it cannot be written ({exc.strerror})")
    return real, None


def _private_fallback():
    """This process's private cache directory (created by mkdtemp: mode 0700); None if unusable."""
    global _fallback_dir
    if _fallback_dir is None:
        try:
            _fallback_dir = tempfile.mkdtemp(prefix="gradc-cache-")
        except OSError:
            return None
        atexit.register(shutil.rmtree, _fallback_dir, ignore_errors=True)  # nobody reuses it
    return _prepare_dir(_fallback_dir)[0]


def cache_dir():
    """The verified directory gradc caches in now: the configured one, else a private fallback
    (with a CacheWarning); None when neither is usable (gradc then works in memory)."""
    wanted = default_cache_dir()
    directory, problem = _prepare_dir(wanted)
    if directory is not None:
        return directory
    fallback = _private_fallback()
    kind, why = problem
    instead = (f"compiled functions are cached in {fallback!r} for this process only"
               if fallback else "compiled functions are not cached on disk")
    if kind == "untrusted":
        message = (f"gradc does not use its cache directory {wanted!r}: {why}, so someone else "
                   "could plant code in it (numba's cache files are pickles, which run code "
                   f"when loaded). Instead, {instead}. Use a directory that only you own and "
                   "can write (chmod 700), or set GRADC_CACHE_DIR to one.")
    else:
        message = (f"gradc cannot write its cache directory {wanted!r} ({why}); {instead}. Set "
                   "GRADC_CACHE_DIR to a writable directory to keep them between runs.")
    _warn_once(("dir", wanted), message)
    return fallback


# --- cache entries -------------------------------------------------------------------------

def key_text(source):
    """The part of an emitted source that determines its compiled code: ``source`` with each
    comment line that opens it blanked to ``#``. The header names the function's origin (its
    file and line); moving the function, or editing a comment above it, changes that header but
    not the code, so it must not change the cache key (a 20k-statement model costs ~a minute).

    Only whole physical lines are blanked: leading lines that start with ``#`` and end with
    ``\n``, split by ``str.splitlines``, which breaks at every line end Python's tokenizer
    knows and more. So a piece never holds a line end Python would see: ``# x\rimport os``
    is two lines for Python, and for splitlines a piece that ends in ``\r``, which stops the
    blanking (it and everything after stay in the key verbatim).
    Each blanked line is still one line: line numbers, which compiled code records, are
    unchanged.

    Why sharing an entry is sound (see also ``_Entry.stamp``): two sources with the same key
    text differ only inside comments on the same lines, so Python compiles them, under the same
    file name (it comes from the key), to equal code objects, and numba's machine code for one
    is the machine code for the other.
    """
    lines = source.splitlines(keepends=True)
    blank = 0
    while blank < len(lines) and lines[blank].startswith("#") and lines[blank].endswith("\n"):
        blank += 1
    return "#\n" * blank + "".join(lines[blank:])


def _digest(source):
    """The cache key of an emitted source: its :func:`key_text` and the versions of everything
    that turns it into machine code."""
    key = "\n".join((key_text(source), __version__, _numba_version(), sys.version))
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _numba_version():
    try:
        from importlib.metadata import version

        return version("numba")
    except Exception:  # numba absent: the python backend still works
        return "none"


class _Entry:
    """One emitted module: the verified source gradc holds in memory, and where it is cached.

    ``directory`` is a verified cache directory, or None for a module that lives in memory
    only; its ``path`` is then a pseudo file name such as ``<in memory: gradc_1f2e.py>``.
    """

    def __init__(self, source, directory):
        self.source = source
        self.data = source.encode("utf-8")
        self.name = f"gradc_{_digest(source)}"
        self.directory = directory
        if directory is None:
            self.path, self.pycache = f"<in memory: {self.name}.py>", None
        else:
            self.path = os.path.join(directory, self.name + ".py")
            self.pycache = os.path.join(directory, "__pycache__")
        # numba stamps its index with the sha256 of the source file, and throws the index away
        # when the stamp differs. gradc's stamp is taken from the verified text in memory rather
        # than from whatever the file holds when numba looks, and from its key_text rather than
        # all of it: sources that share this entry differ only in their header comments, compile
        # to the same code (see key_text), and so may share numba's machine code, which a stamp
        # of the whole text would throw away and rebuild whenever the header changed. The file on
        # disk holds whichever of them was written last (_write_source rewrites it when its bytes
        # differ); it is never executed and never hashed, so another origin's header there is
        # only a comment out of date.
        self.stamp = hashlib.sha256(key_text(source).encode("utf-8")).digest()
        self.label = self.name  # what a compile notice calls it (load_numba names the function)

    def in_memory(self):
        return _Entry(self.source, None)


def _entry(source):
    return _Entry(source, cache_dir())


def _read_regular(path, limit):
    """Up to ``limit`` bytes of the regular file at ``path``; None for anything else (missing,
    a symbolic link, a FIFO, a directory). Never blocks: O_NONBLOCK, which does not affect reads
    of regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | _SAFE_OPEN)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_source(path, data):
    """Make ``path`` hold ``data``, atomically, unless it already does; raises OSError.

    The temporary file is created with O_EXCL (mkstemp) and removed if anything fails;
    ``os.replace`` swaps the name itself, so a symbolic link or FIFO at ``path`` is replaced,
    never followed.
    """
    if _read_regular(path, len(data) + 1) == data:
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mark_used(path):
    """Set the source file's modification time to now: an entry's age (``gradc cache info``,
    ``gradc cache clear --older-than``) is the time since a process last loaded it, not since
    it was first written. The file was just written or verified; the link itself is touched,
    never followed."""
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(path, follow_symlinks=False)


def _load(entry):
    """``(entry, module)``: the entry's file written (a failed write: warned once, and the entry
    moves to memory) and its verified in-memory source executed as a fresh module."""
    if entry.directory is not None:
        try:
            _write_source(entry.path, entry.data)
        except OSError as exc:
            _warn_write_failed(entry.directory, exc)
            entry = entry.in_memory()
        else:
            _mark_used(entry.path)
    _entries[entry.path] = entry
    return entry, _execute(entry)


def _execute(entry):
    """A new module named after the entry, made by executing the source gradc holds; the file
    is never read back. linecache gets the same text, so tracebacks and inspect show it."""
    code = compile(entry.source, entry.path, "exec")
    module = types.ModuleType(entry.name)
    module.__file__ = entry.path
    linecache.cache[entry.path] = (len(entry.source), None, entry.source.splitlines(True),
                                   entry.path)  # mtime None: never checked against the disk
    exec(code, module.__dict__)
    sys.modules[entry.name] = module
    return module


# --- looking after the cache: gradc cache info / clear ------------------------------------

_ENTRY_FILE = re.compile(r"gradc_([0-9a-f]{24})\.py(\.lock)?\Z")   # a source and its lock
_NUMBA_FILE = re.compile(r"gradc_([0-9a-f]{24})\.")               # numba's .nbi / .nbc files
_TEMP_FILE = re.compile(r"\.(tmp|probe)-")                         # an unfinished write


def _existing_problem(directory):
    """As :func:`_trust_problem` for a directory that exists, where a missing ``__pycache__``
    is no problem (gradc makes it at its first compile)."""
    if not os.path.lexists(os.path.join(directory, "__pycache__")):
        return _untrusted_reason(directory) or _parents_reason(directory)
    return _trust_problem(directory)


def _regular_files(folder, pattern):
    """``(name, lstat)`` of the regular files in ``folder`` whose names match ``pattern``
    (links are not followed, so a link is never counted or removed through)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        if pattern.match(name):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(st.st_mode):
                    found.append((name, st))
    return found


def _entry_files(directory):
    """The cache's entries: hash -> ``[(path, lstat), ...]`` for its source, lock and numba
    files; and the unfinished temporary files, as ``[(path, lstat)]``."""
    entries = {}
    for folder, pattern in ((directory, _ENTRY_FILE), (os.path.join(directory, "__pycache__"),
                                                       _NUMBA_FILE)):
        for name, st in _regular_files(folder, pattern):
            entries.setdefault(pattern.match(name).group(1), []).append(
                (os.path.join(folder, name), st))
    temporary = [(os.path.join(directory, name), st)
                 for name, st in _regular_files(directory, _TEMP_FILE)]
    return entries, temporary


def _last_used(files):
    """When an entry was last loaded or written: its source file's time (see _mark_used), else
    (numba's files without their source) the newest of its files."""
    sources = [st.st_mtime for path, st in files if path.endswith(".py")]
    return max(sources) if sources else max(st.st_mtime for _, st in files)


def cache_summary(directory=None):
    """What ``gradc cache info`` reports, as a dict: ``directory`` (the configured one by
    default), ``exists``, ``problem`` (why gradc would not use it, or None), ``entries``
    (compiled functions' modules), ``bytes`` (regular files in it and its ``__pycache__``)
    and ``oldest`` (the time, in seconds since the epoch, since which the least recently
    used entry has not been loaded; None without entries). Reads only; creates nothing."""
    directory = os.path.realpath(directory or default_cache_dir())
    info = {"directory": directory, "exists": os.path.isdir(directory), "problem": None,
            "entries": 0, "bytes": 0, "oldest": None}
    if not info["exists"]:
        return info
    info["problem"] = _existing_problem(directory)
    entries, _ = _entry_files(directory)
    info["entries"] = len(entries)
    everything = re.compile(r".")
    info["bytes"] = sum(st.st_size for folder in (directory, os.path.join(directory, "__pycache__"))
                        for _, st in _regular_files(folder, everything))
    if entries:
        info["oldest"] = min(_last_used(files) for files in entries.values())
    return info


def clear_cache(directory=None, older_than_days=None):
    """Remove gradc's entries from the cache: all of them, or those not used for more than
    ``older_than_days`` days. Returns ``(entries removed, bytes freed)``.

    Only gradc's own files go (its sources and locks, numba's files of them, unfinished
    temporary files); the directory, its ``__pycache__`` and anything else stay. A directory
    gradc would not trust is left alone (a GradcError says why): its ``__pycache__`` might be
    planted to make gradc remove someone else's files. A process using an entry meanwhile
    still runs: it holds its source in memory, and numba compiles again if its machine code
    went.
    """
    directory = os.path.realpath(directory or default_cache_dir())
    if not os.path.isdir(directory):
        return 0, 0
    problem = _existing_problem(directory)
    if problem:
        raise GradcError(f"gradc does not clear {directory!r}: it {problem}, so gradc does not "
                         "use it either. Remove it yourself if it is yours.")
    cutoff = None if older_than_days is None else time.time() - 86400.0 * older_than_days
    entries, temporary = _entry_files(directory)
    removed, freed = 0, 0
    for files in entries.values():
        if cutoff is not None and _last_used(files) >= cutoff:
            continue
        removed += 1
        freed += _unlink_all(files)
    freed += _unlink_all([(path, st) for path, st in temporary
                          if cutoff is None or st.st_mtime < cutoff])
    return removed, freed


def _unlink_all(files):
    freed = 0
    for path, st in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # removes a name: a link swapped in meanwhile is not followed
            freed += st.st_size
    return freed


# --- the compile lock ----------------------------------------------------------------------

def _lock_timeout():
    value = os.environ.get("GRADC_LOCK_TIMEOUT")
    if not value:
        return LOCK_TIMEOUT
    try:
        return max(0.0, float(value))
    except ValueError:
        _warn_once(("timeout-env", value), f"GRADC_LOCK_TIMEOUT={value!r} is not a number of "
                   f"seconds; gradc waits {LOCK_TIMEOUT:g} s for a compile lock.")
        return LOCK_TIMEOUT


def _open_lock(entry):
    """A descriptor of the entry's regular ``.lock`` file, or None (warned) when there is none
    to use: a symbolic link is not followed (its target is never created), a FIFO is refused
    without blocking."""
    lock = entry.path + ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _SAFE_OPEN, 0o600)
    except OSError as exc:
        problem = ("is a symbolic link" if os.path.islink(lock)
                   else f"cannot be opened ({exc.strerror})")
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        problem = "is not a regular file"
    _warn_once(("lock", lock), f"gradc's lock file {lock!r} {problem}; gradc compiles without "
               "the lock (concurrent first calls may compile twice). Delete it to restore the "
               "lock.")
    return None


def _acquire(fd, lock):
    """Take the lock, waiting at most the lock timeout; False (warned) when it was not taken."""
    timeout = _lock_timeout()
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:  # e.g. no locks on this file system
            _warn_once(("lock", lock), f"gradc cannot lock {lock!r} ({exc.strerror}); it "
                       "compiles without the lock.")
            return False
        now = time.monotonic()
        if now >= deadline:
            _warn_once(("timeout", lock), f"another process has held gradc's compile lock "
                       f"{lock!r} for {timeout:g} s (is it stopped, or in a debugger?); this "
                       "process compiles the function itself instead of waiting longer. "
                       "GRADC_LOCK_TIMEOUT sets the wait in seconds.")
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(2 * delay, 0.1)


@contextlib.contextmanager
def _locked(entry):
    """Hold the entry's compile lock while writing and compiling it, so that concurrent first
    calls compile once; a lock that cannot be used or is held too long is warned about and
    done without (writes are atomic, so compiling twice is only wasted time)."""
    fd = _open_lock(entry) if entry.directory is not None and fcntl is not None else None
    try:
        if fd is not None:
            _acquire(fd, entry.path + ".lock")
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def load_python(source, func_name):
    """The emitted function, plain Python, executed from gradc's verified source."""
    entry = _entry(source)
    with _locked(entry):
        entry, module = _load(entry)
    return getattr(module, func_name), entry.path


# --- numba's cache for gradc's modules -----------------------------------------------------

_numba_cache_class = None


def _gradc_numba_cache():
    """The numba cache class for gradc's modules (defined on first use: numba loads lazily).

    numba's own ``FunctionCache`` picks a directory from a list of locators, the first being
    ``NUMBA_CACHE_DIR`` and a later one a user-wide directory, none of which gradc has checked.
    This one reads and writes only the entry's verified ``__pycache__``, re-checks it before
    reading, deletes entries it cannot read, and turns a failed write into a warning.
    """
    global _numba_cache_class
    if _numba_cache_class is not None:
        return _numba_cache_class
    from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

    class Locator(_CacheLocator):
        def __init__(self, entry, lineno):
            self.entry, self._py_file, self._lineno = entry, entry.path, lineno

        def ensure_cache_path(self):  # before every write
            problem = _untrusted_reason(self.entry.pycache)
            if problem:
                raise OSError(f"{self.entry.pycache!r} {problem}")
            super().ensure_cache_path()

        def get_cache_path(self):
            return self.entry.pycache

        def get_source_stamp(self):
            return self.entry.stamp

        def get_disambiguator(self):
            return str(self._lineno)

    class Impl(CompileResultCacheImpl):
        def __init__(self, py_func):  # numba's searches its locator list; this one has one
            code = py_func.__code__
            self._lineno = code.co_firstlineno
            entry = _entries[code.co_filename]
            self._locator = Locator(entry, self._lineno)
            self._filename_base = self.get_filename_base(f"{entry.name}.{py_func.__qualname__}",
                                                         getattr(sys, "abiflags", ""))

    class GradcFunctionCache(FunctionCache):
        _impl_class = Impl

        def load_overload(self, sig, target_context):
            entry = self._impl.locator.entry
            problem = _trust_problem(entry.directory)  # checked again when it is used
            if problem:
                _warn_once(("untrusted-now", entry.directory), f"gradc's cache directory "
                           f"{entry.directory!r} {problem}; numba's cache is not read from it.")
                self.disable()
                return None
            base = self._impl.filename_base
            try:
                irregular = _irregular_cache_file(entry.pycache, base)
                if irregular:  # numba would open it: a FIFO would block, a link be followed
                    raise OSError(f"{irregular!r} is not a regular file")
                return super().load_overload(sig, target_context)
            except Exception as exc:  # a truncated pickle, a directory where a file should be
                _warn_once(("unreadable", entry.path), f"gradc's cache entry for {entry.path} was "
                           f"unreadable ({type(exc).__name__}: {exc}); it was deleted and is "
                           "being rebuilt.")
                _remove_cache_files(entry.pycache, base)
                return None

        def save_overload(self, sig, data):
            try:
                super().save_overload(sig, data)
            except Exception as exc:  # a full disk, an unpicklable result: numba removed its
                # temporary file; the function is compiled, only not cached
                _warn_write_failed(self._impl.locator.entry.directory, exc)
                self.disable()

    _numba_cache_class = GradcFunctionCache
    return GradcFunctionCache


def _cache_files(pycache, filename_base):
    """numba's index and data files of one function (``<base>.nbi``, ``<base>.<n>.nbc``)."""
    return glob.glob(glob.escape(os.path.join(pycache, filename_base)) + ".*")


def _irregular_cache_file(pycache, filename_base):
    """The first of one function's cache files that is not a regular file, or None."""
    for path in _cache_files(pycache, filename_base):
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return path
    return None


def _remove_cache_files(pycache, filename_base):
    """Delete numba's index and data files of one function (a directory in their place too)."""
    for path in _cache_files(pycache, filename_base):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _function_cache_for(py_func):
    """What numba's ``enable_caching`` gets while gradc builds: gradc's cache for gradc's
    modules (none for a module in memory), numba's own for any other function."""
    from numba.core.caching import FunctionCache, NullCache

    entry = _entries.get(py_func.__code__.co_filename)
    if entry is None:
        return FunctionCache(py_func)
    if entry.directory is None:
        return NullCache()
    return _gradc_numba_cache()(py_func)


@contextlib.contextmanager
def _gradc_caches():
    """Let ``njit(cache=True)`` calls made while gradc builds use :func:`_function_cache_for`.

    numba's dispatchers create their cache with the name ``FunctionCache`` of
    ``numba.core.dispatcher`` when ``cache=True`` (cfuncs: of ``numba.core.ccallback``); both
    are swapped for the duration of a build
    (the builders, the batched one included, keep calling plain ``njit(cache=True)``). Builds
    are serialised, so the swap is never seen half-undone; other functions compiled meanwhile
    get numba's own cache.
    """
    from numba.core import ccallback, dispatcher

    with _BUILD_LOCK:
        _listen_to_compiles()
        saved = dispatcher.FunctionCache, ccallback.FunctionCache
        # cfuncs (gradc/fastcall.py's wrappers) look the name up in their own module
        dispatcher.FunctionCache = ccallback.FunctionCache = _function_cache_for
        try:
            yield
        finally:
            dispatcher.FunctionCache, ccallback.FunctionCache = saved


# --- compile notices -----------------------------------------------------------------------

def _statements(source):
    """The statement count a notice quotes: emitted code writes one statement a line."""
    return sum(1 for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#"))


class _CompileNotice:
    """News of one numba compile of a gradc module, for a compile that takes long.

    Created when numba starts compiling; :meth:`finish` when it is done. Past
    :data:`COMPILE_NOTICE_SECONDS` the compile is logged once (logger ``gradc``, INFO:
    name, statements, seconds). When verbose, a timer thread writes ``gradc: numba is
    compiling NAME (N statements)...`` to stderr as that time passes, and :meth:`finish`
    ends the same line with ``done in T s``, so the user learns what is happening while it
    happens, not after.
    """

    def __init__(self, entry):
        self.entry, self.start = entry, time.perf_counter()
        self.lock, self.announced, self.done = threading.Lock(), False, False
        self.timer = None
        if verbose_enabled():
            self.timer = threading.Timer(COMPILE_NOTICE_SECONDS, self._announce)
            self.timer.daemon = True
            self.timer.start()

    def _what(self):
        return f"{self.entry.label} ({_statements(self.entry.source):,} statements)"

    def _announce(self):  # on the timer's thread, while numba compiles
        with self.lock:
            if not self.done:
                self.announced = True
                _stderr_write(f"gradc: numba is compiling {self._what()}... ")

    def finish(self, failed):
        seconds = time.perf_counter() - self.start
        _compile_seconds[self.entry.path] = _compile_seconds.get(self.entry.path, 0.0) + seconds
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.done = True
            outcome = "failed" if failed else "done"
            if self.announced:
                _stderr_write(f"{outcome} in {seconds:.1f} s\n")
            elif self.timer is not None and seconds >= COMPILE_NOTICE_SECONDS:  # timer was late
                _stderr_write(f"gradc: numba compiled {self._what()}: {outcome} in "
                              f"{seconds:.1f} s\n")
        if seconds >= COMPILE_NOTICE_SECONDS:
            _log.info("numba %s %s in %.1f s (%s)", "failed to compile" if failed else "compiled",
                      self._what(), seconds, self.entry.path)


def _stderr_write(text):
    with contextlib.suppress(Exception):  # a closed or missing stderr never breaks a compile
        sys.stderr.write(text)
        sys.stderr.flush()


_compiles = threading.local()  # per thread: the notices of the numba compiles under way
_compile_seconds = {}  # cache file -> seconds numba spent compiling its functions here


def compile_seconds(path):
    """Seconds numba has spent compiling the functions of cache file ``path`` in this process
    (every signature, each outermost compile once); 0.0 when all came from the disk cache."""
    return _compile_seconds.get(path, 0.0)
_listening = False


def _listen_to_compiles():
    """Register, once per process, a listener for numba's ``numba:compile`` events.

    numba sends one around every real compile (never for a cache load), and a compile of one
    of gradc's entry points nests the compile of the function it calls; only the outermost
    compile of a gradc module gets a notice. Events of other numba functions are passed by
    at the cost of a dictionary lookup.
    """
    global _listening
    if _listening:
        return
    from numba.core import event

    class Listener(event.Listener):
        # numba calls these inside its compile: whatever goes wrong here is news lost, never
        # a compile broken, so both swallow their errors (and keep the stack balanced).
        def on_start(self, ev):
            stack = _compiles.__dict__.setdefault("stack", [])
            stack.append(None)
            with contextlib.suppress(Exception):
                entry = _entries.get(_code_file(ev.data.get("dispatcher")))
                if entry is not None and not any(stack):
                    stack[-1] = _CompileNotice(entry)

        def on_end(self, ev):
            stack = getattr(_compiles, "stack", None)
            notice = stack.pop() if stack else None
            if notice is not None:
                with contextlib.suppress(Exception):
                    # Event.is_failed reads its own field inverted (numba 0.68): the field
                    # itself is None unless the compile raised.
                    notice.finish(failed=getattr(ev, "_exc_details", None) is not None)

    event.register("numba:compile", Listener())
    _listening = True


def _code_file(dispatcher):
    code = getattr(getattr(dispatcher, "py_func", None), "__code__", None)
    return getattr(code, "co_filename", None)


def jit_inner(module, func_name):
    """Compile the fused function lazily, in place in its module, so that the entry point or
    the batched loop that calls it (a module global) calls the compiled one."""
    from numba import njit

    setattr(module, func_name, njit(cache=True, error_model="numpy")(getattr(module, func_name)))


def _njit_lazy(module, func_name):
    jit_inner(module, func_name)
    return getattr(module, func_name)


def load_numba_lazy(source, func_name):
    """``(dispatcher, path)`` for ``func_name`` of ``source``, a numba dispatcher that compiles
    per argument types on first call (loop code takes arrays of any length: one compile per
    rank and dtype), cached on disk like :func:`load_numba`'s."""
    return load_numba(source, func_name, None, None,
                      build=lambda module: _njit_lazy(module, func_name))


def _njit_all(module, func_name, entry_name, shapes, dtype="float64", layout="A"):
    from numba import float64, njit, types

    jit_inner(module, func_name)
    element = getattr(types, dtype)
    signature = tuple(float64 if shape is None else types.Array(element, len(shape), layout)
                      for shape in shapes) + (types.StarArgTuple(()),)  # *extra is always empty
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():  # '@ is faster on contiguous arrays': transposes are views
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return njit(signature, cache=True, error_model="numpy")(getattr(module, entry_name))


def use_threading_layer():
    """Steer numba's threading layer to ``tbb`` where it loads, else ``workqueue``; never ``omp``.

    On small machines the OpenMP layer spin-waits between parallel regions
    (measured: 8 ms instead of 1 ms for a 1e6-point prange loop on 2 vCPUs).
    ``tbb`` (``pip install tbb``) does not, is thread- and fork-safe, and its
    launches are cheaper (~0.01 ms against ~0.08 ms for 1e3 points,
    ``benchmarks/vmap_threads.py``); ``workqueue`` always loads but is not
    thread-safe, so :mod:`gradc.batch` runs its launches one at a time. numba
    itself tries the layers in ``THREADING_LAYER_PRIORITY`` order at the first
    parallel launch and skips those that do not load; gradc only reorders them.
    ``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY`` (or setting
    ``numba.config`` first) choose otherwise.
    """
    import numba

    user_chose = ("NUMBA_THREADING_LAYER" in os.environ
                  or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ
                  or numba.config.THREADING_LAYER != "default")
    if not user_chose:
        # numba insists on a permutation of all three; omp last is never reached, since
        # workqueue is built into numba and always loads.
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
    try:
        numba.get_num_threads()  # loads the layer now (once), so a missing one is named here
    except ValueError as exc:  # "No threading layer could be loaded": the user asked for one
        from .errors import where

        hint = " ".join(str(exc).split())
        raise GradcError(
            f"{where()}: numba's threading layer {numba.config.THREADING_LAYER!r} (chosen by "
            f"NUMBA_THREADING_LAYER or numba.config) does not load here ({hint}). Install it, "
            "choose another layer, or use gradc.vmap(..., parallel=False).") from exc


def load_numba(source, func_name, entry_name, shapes, build=None, dtype="float64", layout="A"):
    """The numba dispatcher of the entry point, compiled once per machine and cached on disk.

    ``layout`` is the array layout of the signature: "A" (any) for unrolled code,
    which reads elements; "C" for NumPy-level code, whose reshapes need C order.
    """
    build = build or (lambda module: _njit_all(module, func_name, entry_name, shapes, dtype,
                                               layout))
    entry = _entry(source)
    with _locked(entry):
        entry, module = _load(entry)
        entry.label = func_name  # what a compile notice calls it
        try:
            with _gradc_caches():
                return build(module), entry.path
        except GradcError:
            raise
        except Exception as exc:  # cache failures are handled inside; this is numba refusing
            raise GradcError(
                f"numba could not compile the emitted source {entry.path}: {exc}. This is a "
                "gradc bug; please report it with that source (the function's .source). "
                "backend='python' runs the same source without numba.") from exc
