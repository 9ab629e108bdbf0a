"""The disk cache: a second process loads numba's machine code; corrupt or unwritable caches recover.

The small scalar programs here take numba's route (gradc.native.MIN_NODES raised, in the child
processes and by the fixture below): by default scalar programs take the native route, whose
object-code cache and index tests/test_native.py and tests/test_index.py test; numba's cache
serves the fused loops, and scalar programs using an op outside native's table.
"""
import glob
import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def numba_route(monkeypatch):
    from gradc import native

    monkeypatch.setattr(native, "MIN_NODES", 10**9)

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    sys.path.insert(0, {root!r})
    import gradc
    import gradc.native
    gradc.native.MIN_NODES = 10 ** 9  # numba's route (see the module's docstring)

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


# --- the key: what determines the code, not where the function is defined ---------------------

MODEL = "import numpy as np\n\ndef rosen(x, y):\n    return (1 - x) ** 2 + 100.0 * (y - x * x) ** 2\n"


def _compiled_from(text, filename):
    """``value_and_grad`` of the ``rosen`` that ``text`` defines, compiled by numba and called."""
    import gradc

    namespace = {}
    exec(compile(text, filename, "exec"), namespace)
    f = gradc.value_and_grad(namespace["rosen"])
    assert f(0.5, 0.25) == (0.25, (-1.0, 0.0))
    return f


def test_moving_a_function_to_another_line_hits_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path))
    first = _compiled_from(MODEL, str(tmp_path / "model.py"))
    assert (first.cache_info()["cache_hits"], first.cache_info()["cache_misses"]) == (0, 1)
    moved = _compiled_from("# a comment above, and the function three lines down\n\n\n" + MODEL,
                           str(tmp_path / "elsewhere.py"))
    info = moved.cache_info()
    assert (info["cache_hits"], info["cache_misses"]) == (1, 0)  # numba's code, not a compile
    assert info["path"] == first.cache_info()["path"]              # one entry, not two
    assert len(glob.glob(str(tmp_path / "gradc_*.py"))) == 1
    # The header still says where the function is now, in .source and in the file on disk.
    assert "'elsewhere.py'" not in first.source and "elsewhere.py', line 6." in moved.source
    with open(info["path"], encoding="utf-8") as fh:
        assert fh.read() == moved.source


def test_only_leading_comment_lines_are_left_out_of_the_key():
    from gradc.jit import _digest, key_text

    body = "import numpy as np\n\n\ndef f(x):\n    return x\n"
    assert _digest("# from 'a.py', line 1.\n# two\n" + body) == _digest("# b.py, 9\n#\n" + body)
    assert key_text("# a\n# b\n" + body) == "#\n#\n" + body  # same lines: same line numbers
    # Anything else changes the key: the number of header lines (line numbers), a comment
    # after the first code line, and code after a bare carriage return, where Python's line
    # ends but a naive split on "\n" would still see a comment.
    assert _digest("# a\n" + body) != _digest("# a\n# b\n" + body)
    assert _digest(body + "# a\n") != _digest(body + "# b\n")
    assert _digest("# a\rx = 1\n" + body) != _digest("# a\rx = 2\n" + body)
    assert _digest("# a\x0cx = 1\n" + body) != _digest("# a\x0cx = 2\n" + body)


def test_entries_that_share_a_key_share_numbas_stamp():
    """numba throws its index away when the stamp differs: the moved function would compile."""
    from gradc.jit import _Entry

    body = "def f(x):\n    return x\n"
    a, b = _Entry("# from a.py\n" + body, None), _Entry("# from b.py\n" + body, None)
    assert (a.name, a.stamp) == (b.name, b.stamp)
    assert _Entry("# from a.py\ndef f(x):\n    return -x\n", None).stamp != a.stamp


# --- compile notices ---------------------------------------------------------------------------

def _slow_compile(monkeypatch, tmp_path, constant):
    """A numba compile of a function no cache holds, with every compile counted as slow."""
    import gradc
    from gradc import jit

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(jit, "COMPILE_NOTICE_SECONDS", 0.0)
    f = gradc.value_and_grad(eval(f"lambda a, b: a * b + {constant!r}"))
    f(1.0, 2.0)
    return f


def test_a_slow_compile_is_logged_once(monkeypatch, tmp_path, caplog, capfd):
    import gradc

    monkeypatch.setenv("GRADC_VERBOSE", "0")
    with caplog.at_level(logging.INFO, logger="gradc"):
        _slow_compile(monkeypatch, tmp_path, 0.125)
        gradc.value_and_grad(eval("lambda a, b: a * b + 0.125"))(1.0, 2.0)  # loaded: silent
    from gradc import jit

    records = [r for r in caplog.records if r.name == "gradc"]
    assert len(records) == 1, records
    path = re.search(r"\((/.*gradc_[0-9a-f]+\.py)\)", records[0].getMessage()).group(1)
    assert jit.compile_seconds(path) > 0.0 and jit.compile_seconds("elsewhere.py") == 0.0
    message = records[0].getMessage()
    assert re.fullmatch(r"numba compiled lambda__value_and_grad \(9 statements\) in \d+\.\d s "
                        r"\(.*gradc_[0-9a-f]+\.py\)", message), message
    assert capfd.readouterr().err == ""  # not verbose: nothing on stderr


def test_verbose_shows_the_compile_on_stderr(monkeypatch, tmp_path, capfd):
    import gradc

    monkeypatch.delenv("GRADC_VERBOSE", raising=False)
    gradc.config(verbose=True)
    try:
        _slow_compile(monkeypatch, tmp_path, 0.375)
    finally:
        gradc.config(verbose=None)
    err = capfd.readouterr().err
    assert re.fullmatch(r"gradc: numba (is compiling|compiled) lambda__value_and_grad "
                        r"\(9 statements\)(\.\.\. |: )done in \d+\.\d s\n", err), err


def test_gradc_verbose_switches_the_stderr_line(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("GRADC_VERBOSE", "1")
    _slow_compile(monkeypatch, tmp_path, 0.625)
    assert "lambda__value_and_grad (9 statements)" in capfd.readouterr().err


# --- the suite cleans up ----------------------------------------------------------------------

def test_the_suite_removes_the_cache_directory_it_made(tmp_path):
    """A pytest run (here, of one quick test) leaves no gradc-test-cache-* directory behind."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRADC_TEST_CACHE_DIR", "GRADC_CACHE_DIR")}
    env["TMPDIR"] = str(tmp_path)
    quick = "tests/test_cache.py::test_entries_that_share_a_key_share_numbas_stamp"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", quick], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout and not glob.glob(str(tmp_path / "gradc-test-cache-*"))


def test_the_suite_keeps_a_cache_directory_it_was_given(monkeypatch):
    """GRADC_TEST_CACHE_DIR from the environment the process started with is the user's (or a
    parent session's): kept. One set while running (the root conftest.py's) is not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tests_conftest_copy", os.path.join(ROOT, "tests", "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    _started_with = conftest._started_with
    assert _started_with("PATH") is True
    monkeypatch.setenv("GRADC_SET_WHILE_RUNNING", "1")
    assert _started_with("GRADC_SET_WHILE_RUNNING") is False


def test_a_training_steps_header_names_the_users_model_not_gradc():
    """The origin in a gradc.nn step's header is the user's line that built the model (or the
    user's own apply), never gradc/nn/layers.py."""
    import numpy as np

    from gradc import nn

    model = nn.Chain(nn.Scale(), nn.Scale()); line = sys._getframe().f_lineno  # noqa: E702
    step = nn.compile_step(model, model.init(seed=0), np.array([1.0]), np.array([-1.0]), nn.mse,
                           nn.SGD(0.05), backend="python")
    assert f"from {os.path.abspath(__file__)!r}, line {line}." in step.source.splitlines()[0]

    class Mine(nn.Layer):
        def apply(self, params, x):
            return 2.0 * x

    mine = nn.compile_step(Mine(), {}, np.array([1.0]), np.array([-1.0]), nn.mse, nn.SGD(0.05),
                           backend="python")
    header = mine.source.splitlines()[0]
    assert f"line {Mine.apply.__code__.co_firstlineno}." in header and "layers.py" not in header


def test_cache_info_describes_every_specialisation():
    import numpy as np

    import gradc

    def rosen(x):  # with a product, which small arrays run unrolled (api._loops_win)
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) + x @ x

    f = gradc.value_and_grad(rosen)
    f(np.ones(8))
    f(np.ones(1000))
    f(np.ones(1000), out=np.empty(1000))
    info = f.cache_info()
    assert info["runs"] == "numba" and "path_kind" not in info  # the first: unrolled
    specs = info["specialisations"]
    assert [s["signature"] for s in specs] == ["(f8[8])", "(f8[1000])", "(f8[1000]) out="]
    assert [s.get("path_kind") for s in specs] == [None, "loops", "loops"]
    assert all(s["cache_hits"] + s["cache_misses"] >= 1 and s["compile_seconds"] >= 0.0
               for s in specs)
    assert specs[1]["path"] != specs[0]["path"]
