"""Attacks on the disk cache, each really attempted in a child process with its own cache.

numba's cache files are pickles, so a cache directory that someone else can write would run
their code; a swapped source file, a symbolic link or FIFO where gradc expects a file, a full
disk and a stopped process holding the compile lock must not break (or hang) a computation.
Every test plants the hostile thing and asserts that its code did not run (a marker file does
not exist) and that the call still returned the right answer.

J takes numba's route here (gradc.native.MIN_NODES raised in the child): the pickles are numba's.
Scalar programs take the native route by default, whose object code has its own checks
(tests/test_native.py: a directory others can write, a tampered file, another CPU).
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIGHT = [33.0, [3.0, 6.0, 9.0]]

# Each child computes J through gradc once per cache directory given on its command line and
# prints one JSON line per directory: result, path, numba's hits and misses, CacheWarnings.
CHILD = textwrap.dedent("""
    import json, os, sys, warnings
    sys.path.insert(0, {root!r})
    if os.environ.get("TEST_FSIZE"):
        import resource
        limit = int(os.environ["TEST_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import gradc
    import gradc.native
    gradc.native.MIN_NODES = 10 ** 9  # numba's route: its cache files are what is attacked

    def J(a, b, c):
        u = b * c
        v = a + u
        return 3 * v

    for cache in sys.argv[2:]:
        os.environ["GRADC_CACHE_DIR"] = cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            f = gradc.value_and_grad(J, backend=sys.argv[1])
            result = f(5.0, 3.0, 2.0)
        info = f.cache_info()
        print(json.dumps({{"result": result, "path": info["path"],
                          "hits": info.get("cache_hits"), "misses": info.get("cache_misses"),
                          "warnings": [str(w.message) for w in caught
                                       if issubclass(w.category, gradc.CacheWarning)]}}))
""").format(root=ROOT)


def run(backend, *caches, env=None, timeout=120):
    """One child process over ``caches``; a hang fails the test (subprocess timeout)."""
    env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", CHILD, backend, *map(str, caches)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(caches), out.stdout
    return results if len(caches) > 1 else results[0]


def evil_pickle(marker):
    """A pickle whose loading creates ``marker``: what an attacker plants as a cache file."""
    class Evil:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)
    return pickle.dumps(Evil())


def plant(pycache, marker):
    """Replace every numba cache file in ``pycache`` by the hostile pickle."""
    planted = [name for name in os.listdir(pycache) if name.endswith((".nbi", ".nbc"))]
    assert planted
    for name in planted:
        with open(os.path.join(pycache, name), "wb") as fh:
            fh.write(evil_pickle(marker))
    return planted


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A private cache holding J's compiled entries (one numba compile for the whole module)."""
    cache = tmp_path_factory.mktemp("template") / "cache"
    first = run("numba", cache)
    assert first["result"] == RIGHT and first["misses"] == 1
    return cache


def copy_of(template, where):
    shutil.copytree(template, where)
    os.chmod(where, 0o700)
    return where


# --- directories gradc must not trust -------------------------------------------------------

def world_writable(template, base):
    cache = copy_of(template, base / "cache")
    plant(cache / "__pycache__", base / "PWNED")
    os.chmod(cache, 0o777)
    return cache, str(cache)


def owned_by_someone_else(template, base):
    cache = copy_of(template, base / "cache")
    plant(cache / "__pycache__", base / "PWNED")
    for directory, _, files in os.walk(cache):  # root can give it away: uid 65534 (nobody)
        os.chown(directory, 65534, 65534)
        for name in files:
            os.chown(os.path.join(directory, name), 65534, 65534)
    return cache, str(cache)


def symlink_to_world_writable(template, base):
    target = copy_of(template, base / "theirs")
    plant(target / "__pycache__", base / "PWNED")
    os.chmod(target, 0o777)
    link = base / "cache"
    os.symlink(target, link)
    return link, str(target)  # resolved: the warning names the directory it checked


def symlinked_pycache(template, base):
    cache = copy_of(template, base / "cache")
    theirs = base / "theirs"
    shutil.move(cache / "__pycache__", theirs)
    plant(theirs, base / "PWNED")
    os.chmod(theirs, 0o777)
    os.symlink(theirs, cache / "__pycache__")
    return cache, "__pycache__"


def writable_parent(template, base):
    parent = base / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # not sticky: anyone may rename the private cache out of the way
    cache = copy_of(template, parent / "cache")
    plant(cache / "__pycache__", base / "PWNED")
    return cache, str(parent)


UNTRUSTED = [world_writable, owned_by_someone_else, symlink_to_world_writable, symlinked_pycache,
             writable_parent]


@pytest.fixture(scope="module")
def untrusted_runs(template, tmp_path_factory):
    """One child visits every untrusted layout (its fallback then serves J from its own cache)."""
    layouts = {}
    for layout in UNTRUSTED:
        base = tmp_path_factory.mktemp(layout.__name__)
        layouts[layout.__name__] = (base, *layout(template, base))
    results = run("numba", *(cache for _, cache, _ in layouts.values()))
    return {name: (base, named, result)
            for (name, (base, _, named)), result in zip(layouts.items(), results)}


@pytest.mark.parametrize("layout", [layout.__name__ for layout in UNTRUSTED])
def test_untrusted_cache_directory_is_never_loaded_from(untrusted_runs, layout):
    base, named, out = untrusted_runs[layout]
    assert not (base / "PWNED").exists()  # the planted pickle never ran
    assert out["result"] == RIGHT
    assert not out["path"].startswith(str(base))  # computed in the private fallback
    assert len(out["warnings"]) == 1 and named in out["warnings"][0], out["warnings"]
    assert "does not use its cache directory" in out["warnings"][0]


def test_symlinked_private_cache_directory_is_resolved_and_used(template, tmp_path):
    real = copy_of(template, tmp_path / "real")
    os.symlink(real, tmp_path / "link")
    out = run("numba", tmp_path / "link")
    assert out["path"].startswith(str(real) + os.sep) and out["warnings"] == []
    assert (out["hits"], out["misses"]) == (1, 0)


def test_numba_reads_gradc_code_only_from_the_verified_pycache(template, tmp_path):
    """NUMBA_CACHE_DIR is where numba would look first; a pickle planted there must not load."""
    import hashlib

    cache = copy_of(template, tmp_path / "cache")
    names = plant(cache / "__pycache__", tmp_path / "unused")
    shutil.rmtree(cache / "__pycache__")  # gradc's own cache is empty: numba must compile
    numba_dir = tmp_path / "numba"
    real = os.path.realpath(cache)  # numba's UserProvidedCacheLocator layout
    where = numba_dir / f"cache_{hashlib.sha1(real.encode()).hexdigest()}"
    where.mkdir(parents=True)
    for name in names:
        (where / name).write_bytes(evil_pickle(tmp_path / "PWNED"))
    out = run("numba", cache, env={"NUMBA_CACHE_DIR": str(numba_dir)})
    assert not (tmp_path / "PWNED").exists()
    assert out["result"] == RIGHT and out["misses"] == 1 and out["warnings"] == []
    assert sorted(os.listdir(cache / "__pycache__")) == sorted(names)
    assert sorted(os.listdir(where)) == sorted(names)  # numba wrote nothing there either


# --- files in a trusted cache ---------------------------------------------------------------

SWAPPER = textwrap.dedent("""
    import os, sys, threading
    sys.path.insert(0, {root!r})
    import gradc

    def J(a, b, c):
        return 3 * (a + b * c)

    path = gradc.value_and_grad(J, backend="python").path
    hostile = "open({marker!r}, 'w').close()\\n" + open(path).read()
    stop = threading.Event()

    def swap():  # keep replacing the cache file with hostile code while gradc loads it
        n = 0
        while not stop.is_set():
            n += 1
            tmp = f"{{path}}.{{n}}"
            with open(tmp, "w") as fh:
                fh.write(hostile)
            os.replace(tmp, path)

    thread = threading.Thread(target=swap)
    thread.start()
    try:
        results = [gradc.value_and_grad(J, backend="python")(5.0, 3.0, 2.0) for _ in range(40)]
    finally:
        stop.set()
        thread.join()
    # gradc may have rewritten the file after the thread's last swap: leave hostile code there
    # for certain, so the next process meets it
    with open(path + ".last", "w") as fh:
        fh.write(hostile)
    os.replace(path + ".last", path)
    assert all(r == (33.0, (3.0, 6.0, 9.0)) for r in results), results
    print(path)
""")


def test_swapped_source_file_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    script = SWAPPER.format(root=ROOT, marker=str(marker))
    env = {**os.environ, "GRADC_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    with open(out.stdout.split()[-1]) as fh:
        assert fh.read().startswith("open(")  # the thread left hostile code behind ...
    again = run("python", tmp_path / "cache")  # ... and the next process does not run it either
    assert again["result"] == RIGHT and not marker.exists()


def first_entry(tmp_path):
    cache = tmp_path / "cache"
    out = run("python", cache)
    assert out["result"] == RIGHT and out["warnings"] == []
    return cache, out["path"]


def test_symlinked_lock_file_does_not_create_its_target(tmp_path):
    cache, path = first_entry(tmp_path)
    os.remove(path + ".lock")
    target = tmp_path / "created-through-the-link"
    os.symlink(target, path + ".lock")
    out = run("python", cache)
    assert out["result"] == RIGHT and not target.exists()
    assert len(out["warnings"]) == 1 and "symbolic link" in out["warnings"][0]


@pytest.mark.parametrize("suffix", ["", ".lock"])
def test_fifo_in_place_of_a_cache_file_does_not_hang(tmp_path, suffix):
    cache, path = first_entry(tmp_path)
    os.remove(path + suffix)
    os.mkfifo(path + suffix)
    out = run("python", cache, timeout=30)  # opening a FIFO to read would block forever
    assert out["result"] == RIGHT
    if suffix:  # the source file is simply rewritten; the lock is warned about
        assert len(out["warnings"]) == 1 and "not a regular file" in out["warnings"][0]


def leftovers(cache):
    return [os.path.join(d, name) for d, _, files in os.walk(cache) for name in files
            if name.startswith(".tmp-") or ".tmp." in name or name.startswith(".probe-")]


@pytest.mark.parametrize("backend, limit", [("python", 64), ("numba", 4096)])
def test_failed_cache_write_still_computes_with_one_warning(tmp_path, backend, limit):
    """RLIMIT_FSIZE: 64 bytes fails gradc's own source write, 4096 numba's machine-code write."""
    cache = tmp_path / "cache"
    out = run(backend, cache, env={"TEST_FSIZE": str(limit)})
    assert out["result"] == RIGHT
    assert len(out["warnings"]) == 1 and "could not write" in out["warnings"][0], out["warnings"]
    assert leftovers(cache) == []


def test_source_path_replaced_by_a_directory_recovers_with_a_warning(tmp_path):
    cache, path = first_entry(tmp_path)
    os.remove(path)
    os.makedirs(os.path.join(path, "not-empty"))
    out = run("python", cache)
    assert out["result"] == RIGHT and leftovers(cache) == []
    assert len(out["warnings"]) == 1 and "IsADirectoryError" in out["warnings"][0]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_numba_index_that_is_not_a_file_is_rebuilt(template, tmp_path, kind):
    cache = copy_of(template, tmp_path / "cache")
    for name in os.listdir(cache / "__pycache__"):
        if name.endswith(".nbi"):
            index = cache / "__pycache__" / name
            os.remove(index)
            if kind == "fifo":
                os.mkfifo(index)  # numba's open() of it would block forever
            else:
                os.makedirs(index / "not-empty")
    out = run("numba", cache, timeout=60)
    assert out["result"] == RIGHT
    assert len(out["warnings"]) == 1 and "unreadable" in out["warnings"][0]
    healed = run("numba", cache)
    assert (healed["hits"], healed["misses"], healed["warnings"]) == (1, 0, [])


HOLDER = textwrap.dedent("""
    import fcntl, os, signal, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # stopped while holding the compile lock
""")


def test_lock_held_by_a_stopped_process_does_not_block_others(tmp_path):
    cache, path = first_entry(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path + ".lock"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        out = run("python", cache, env={"GRADC_LOCK_TIMEOUT": "0.5"}, timeout=30)
        elapsed = time.monotonic() - start
        assert out["result"] == RIGHT and elapsed < 20
        assert len(out["warnings"]) == 1 and "held gradc's compile lock" in out["warnings"][0]
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
