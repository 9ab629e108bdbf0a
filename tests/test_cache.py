"""The disk cache: a second process loads numba's machine code; corrupt or unwritable caches recover."""
import glob
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    sys.path.insert(0, {root!r})
    import gradc

    def J(a, b, c):
        u = b * c
        v = a + u
        return 3 * v

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = gradc.value_and_grad(J)
        result = f(5.0, 3.0, 2.0)
    info = f.cache_info()
    print(json.dumps({{"result": result, "hits": info["cache_hits"], "misses": info["cache_misses"],
                      "path": info["path"],
                      "warnings": [str(w.message) for w in caught
                                   if issubclass(w.category, gradc.CacheWarning)]}}))
""").format(root=ROOT)


def run(cache_dir):
    env = {**os.environ, "GRADC_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_from_disk_cache(tmp_path):
    first = run(tmp_path)
    assert first["result"] == [33.0, [3.0, 6.0, 9.0]]
    assert (first["hits"], first["misses"]) == (0, 1)
    second = run(tmp_path)
    assert second["result"] == first["result"]
    assert (second["hits"], second["misses"]) == (1, 0)  # no numba compile in the second process
    assert second["path"] == first["path"] and second["warnings"] == []


def test_cache_directory_is_created_private(tmp_path):
    cache = tmp_path / "new" / "gradc"
    run(cache)
    assert os.stat(cache).st_mode & 0o777 == 0o700


def test_corrupt_cache_entries_are_rebuilt_with_a_warning(tmp_path):
    run(tmp_path)
    entries = glob.glob(str(tmp_path / "__pycache__" / "*.nb*"))
    assert entries
    for path in entries:
        with open(path, "wb") as fh:
            fh.write(b"\x80garbage")  # truncated pickle
    again = run(tmp_path)
    assert again["result"] == [33.0, [3.0, 6.0, 9.0]]
    assert any("unreadable" in w for w in again["warnings"]), again
    healed = run(tmp_path)
    assert (healed["hits"], healed["misses"], healed["warnings"]) == (1, 0, [])


def test_corrupt_source_file_is_rewritten(tmp_path):
    first = run(tmp_path)
    with open(first["path"], "w") as fh:
        fh.write("this is not python(")
    again = run(tmp_path)
    assert again["result"] == first["result"]


def test_unwritable_cache_directory_falls_back_with_a_warning(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = run(blocker / "cache")  # cannot be created, even by root
    assert out["result"] == [33.0, [3.0, 6.0, 9.0]]
    assert any("cannot write its cache directory" in w for w in out["warnings"])


def test_concurrent_first_calls_corrupt_nothing(tmp_path):
    env = {**os.environ, "GRADC_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    assert all(r["result"] == [33.0, [3.0, 6.0, 9.0]] and r["warnings"] == [] for r in results)
    assert sum(r["misses"] for r in results) == 1  # the lock let one process compile
    assert run(tmp_path)["hits"] == 1
