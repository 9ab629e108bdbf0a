"""``gradc build`` under attack and under failure: hostile names never become code, helper
names never take public names, bad requests are BuildErrors, and the install is all or nothing.

One hostile module is built once per format (pycc takes seconds). Its file name carries a
newline injection and a docstring breakout, each of which creates a marker file if it runs;
its functions are ``x`` and ``_x`` (whose helper and public names once collided) and
``_gradc_kernel_x`` (a public name shaped like a helper name).
"""
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
import tokenize

import numpy as np
import pytest

from gradc import aot
from gradc.aot import BuildError, build
from test_aot import _child  # the isolated child runner, with this file's script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "examples", "aot", "model.py")
HAVE_CC = shutil.which("cc") is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler")

# Old builds ran each payload on import: the newline ends the header comment, the quotes end
# the module docstring. The rest: a backslash, a "*" and non-ASCII.
HOSTILE_FILE = 'm""";open("PWNED_DOC","w");"""\nopen("PWNED_AOT","w")\n#\u00e9*\\.py'
MARKERS = ("PWNED_DOC", "PWNED_AOT")
# The origin of one function (its code's file name), hostile the same way.
HOSTILE_ORIGIN = 'o""";open("PWNED_FN","w");"""\nopen("PWNED_FN","w")\n#.py'
HOSTILE = textwrap.dedent('''
    import numpy as np
    import gradc

    @gradc.export(args=("f8[3]",), build="value")
    def x(v):
        return np.sum(v * v)

    @gradc.export(args=("f8[3]",), build="value")
    def _x(v):
        return np.sum(v) ** 2

    @gradc.export(args=("f8[3]",), build="value")
    def _gradc_kernel_x(v):
        return 3.0 * np.sum(v)

    @gradc.export(args=("f8[2,3]",), build="value")
    def m2(W):
        return np.sum(W * np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))

    # parameters named like the generated module's helpers, and not ASCII
    exec(compile("""
    @gradc.export(args=("f8", "f8"))
    def shadow(_gradc_float, \\u03b1):
        return _gradc_float * \\u03b1
    """, ORIGIN, "exec"))
''').replace("ORIGIN", repr(HOSTILE_ORIGIN))
PUBLICS = ["x_value", "_x_value", "_gradc_kernel_x_value", "m2_value", "shadow_value_and_grad"]

# Runs in a child with the built module's folder as its working directory: imports m0 (numba,
# llvmlite and gradc blocked as given), calls every function, prints the results.
CHILD = textwrap.dedent("""
    import numpy as np
    import m0
    v = np.array([1.0, 2.0, 3.0])
    W = np.asfortranarray(np.arange(6.0).reshape(2, 3))  # not C-contiguous
    value, grads = m0.shadow_value_and_grad(2.0, 3.0)
    print(json.dumps({"x": m0.x_value(v), "_x": m0._x_value(v),
                      "_gradc_kernel_x": m0._gradc_kernel_x_value(v), "m2": m0.m2_value(W),
                      "shadow": [value, list(grads)], "doc": m0.__doc__,
                      "all": m0.__all__, "shadow_doc": m0.shadow_value_and_grad.__doc__}))
""")
WANT = {"x": 14.0, "_x": 36.0, "_gradc_kernel_x": 18.0, "m2": 70.0, "shadow": [6.0, [3.0, 2.0]],
        "all": PUBLICS}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile module built in every format (C formats where ``cc`` exists), with the
    working directory at a scratch folder, so that a payload run by the build lands there."""
    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    src.mkdir()
    path = src / HOSTILE_FILE
    path.write_text(HOSTILE, encoding="utf-8")
    scratch = root / "scratch"
    scratch.mkdir()
    cwd = os.getcwd()
    os.chdir(scratch)
    try:
        outs = {}
        for fmt in ("python", "ext", "c") if HAVE_CC else ("python",):
            outs[fmt] = str(root / fmt)
            build(str(path), outs[fmt], fmt, name="m0")
    finally:
        os.chdir(cwd)
    return root, outs


def _no_markers(*folders):
    for folder in folders:
        assert not [m for m in (*MARKERS, "PWNED_FN") if os.path.exists(os.path.join(folder, m))]


def _run_child(outdir, block):
    return _child(outdir, block, CHILD)


# --- hostile names are text, never code ------------------------------------------------
def test_build_itself_runs_no_code_from_names(hostile):
    root, outs = hostile
    _no_markers(root / "scratch", *outs.values())


@pytest.mark.parametrize("fmt, block", [("python", ["gradc"]),
                                        ("ext", ["numba", "llvmlite", "gradc"])])
def test_hostile_file_name_is_not_run_on_import(hostile, fmt, block):
    root, outs = hostile
    if fmt not in outs:
        pytest.skip("no C compiler")
    got = _run_child(outs[fmt], block)
    _no_markers(outs[fmt])
    # the name is still there to read, every dangerous character replaced
    assert got["doc"].startswith('Ahead-of-time derivatives from m???;open(?PWNED_DOC?,?w?);???'
                                 '?open(?PWNED_AOT?,?w?)?#???.py: ')
    assert got["shadow_doc"] == ("The value and gradient of shadow(_gradc_float: f8, ?: f8) from "
                                 "o???;open(?PWNED_FN?,?w?);????open(?PWNED_FN?,?w?)?#.py, line 2.")


def _printable(text):
    return all(" " <= c <= "~" for c in text)


def test_generated_comments_and_strings_are_printable_ascii(hostile):
    """Identifiers may be the user's (``\u03b1``); every comment and string is plain text."""
    _, outs = hostile
    paths = [os.path.join(outs["python"], "m0.py")]
    if "ext" in outs:
        paths.append(os.path.join(outs["ext"], "m0", "__init__.py"))
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            tokens = list(tokenize.generate_tokens(fh.readline))
        texts = [t.string for t in tokens if t.type in (tokenize.COMMENT, tokenize.STRING)]
        assert all(_printable(line) for t in texts for line in t.split("\n"))
        assert any("PWNED_AOT" in t for t in texts)  # the names are there, as text
    if "c" in outs:
        header = open(os.path.join(outs["c"], "m0.h"), encoding="utf-8").read()
        assert all(_printable(line) for line in header.splitlines()) and "PWNED_AOT" in header


@needs_cc
def test_hostile_header_compiles_as_declarations_only(hostile, tmp_path):
    _, outs = hostile
    main = tmp_path / "main.c"
    main.write_text('#include <math.h>\n#include "m0.h"\nint main(void) { return 0; }\n')
    done = subprocess.run(["cc", "-fsyntax-only", "-Wall", "-Werror", "-I", outs["c"], str(main)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_cc
def test_c_comment_cannot_be_closed_by_user_text(hostile, tmp_path):
    """File names cannot hold ``/``, so ``*/`` cannot reach a header from a real build; the
    header's text escaping is tested directly with the worst text a caller could pass."""
    kernels = aot.lower_module(aot.import_path(os.path.join(hostile[0], "src", HOSTILE_FILE)))
    evil = 'e*/\n#error INJECTED\nint injected;\n/*\\"\u00e9.py'
    for k in kernels:
        k.origin = (evil, 1)
    (tmp_path / "m0.h").write_text(aot.c_header(kernels, "m0", evil), encoding="utf-8")
    main = tmp_path / "main.c"
    main.write_text('#include "m0.h"\nint injected = 1;\nint main(void) { return 0; }\n')
    done = subprocess.run(["cc", "-fsyntax-only", "-Wall", "-Werror", "-Wcomment", "-I",
                           str(tmp_path), str(main)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_plain_text_keeps_only_harmless_characters():
    assert aot.plain_text('a\nb"""c*/d\\e\u00e9\r\x00`\'') == "a?b???c?/d?e?????"
    assert aot.plain_text("model.py (line 3): x[0], y-1") == "model.py (line 3): x[0], y-1"
    assert aot.py_str('a"\n\u00e9') == "'a\"\\n\\xe9'"


# --- helper names never take public names ----------------------------------------------
def test_kernel_names_never_collide_with_public_names(hostile):
    kernels = aot.lower_module(aot.import_path(os.path.join(hostile[0], "src", HOSTILE_FILE)))
    publics = [k.public for k in kernels]
    names = aot.kernel_names(kernels)
    assert publics == PUBLICS
    assert len(set(names)) == len(names) and not set(names) & set(publics)
    assert not set(names) & set(aot._MODULE_NAMES)


@pytest.mark.parametrize("fmt, block", [("python", ["gradc"]),
                                        ("ext", ["numba", "llvmlite", "gradc"])])
def test_x_and_underscore_x_are_different_functions(hostile, fmt, block):
    _, outs = hostile
    if fmt not in outs:
        pytest.skip("no C compiler")
    got = _run_child(outs[fmt], block)
    assert {k: got[k] for k in WANT} == WANT


@needs_cc
def test_x_and_underscore_x_in_the_c_library(hostile):
    _, outs = hostile
    lib = ctypes.CDLL(os.path.join(outs["c"], "libm0.so"))
    v = np.array([1.0, 2.0, 3.0])
    dp = ctypes.POINTER(ctypes.c_double)
    for name, want in [("x_value", 14.0), ("_x_value", 36.0), ("_gradc_kernel_x_value", 18.0)]:
        out = np.zeros(1)
        fn = getattr(lib, name)
        fn.argtypes = [dp, dp]
        assert fn(v.ctypes.data_as(dp), out.ctypes.data_as(dp)) == 0 and out[0] == want
    header = open(os.path.join(outs["c"], "m0.h")).read()
    # the C names of shadow's parameters: the ASCII one kept, the other renamed
    assert "int shadow_value_and_grad(double _gradc_float, double arg1, double *value," in header


# --- bad requests are BuildErrors, printed by the CLI ----------------------------------
def test_output_naming_a_file_is_a_build_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(BuildError, match="is a file, not a directory"):
        build(MODEL, str(target), "python")
    assert target.read_text() == "not a directory"
    done = subprocess.run([sys.executable, "-m", "gradc", "build", MODEL, "-o", str(target)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and done.stderr.startswith("gradc: error: ")
    assert "is a file" in done.stderr and "Traceback" not in done.stderr


def test_sys_exit_on_import_is_a_build_error(tmp_path):
    src = tmp_path / "quits.py"
    src.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(BuildError, match=r"importing .*quits.py called sys.exit\(3\)"):
        build(str(src), str(tmp_path / "out"), "python")
    done = subprocess.run([sys.executable, "-m", "gradc", "build", str(src), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith("gradc: error: ") and "sys.exit(3)" in done.stderr
    assert not (tmp_path / "out").exists()


def test_module_name_must_not_be_a_keyword(tmp_path):
    with pytest.raises(BuildError, match="cannot name a module"):
        build(MODEL, str(tmp_path / "out"), "python", name="class")


# --- the install is all or nothing -----------------------------------------------------
def _fake_library(kernels, name, outdir, workdir, cc):
    """Stands in for the C compile: the transaction is under test, not the kernels."""
    path = os.path.join(outdir, f"lib{name}.so")
    with open(path, "w") as fh:
        fh.write("new library")
    return path


def _snapshot(folder):
    return {f: open(os.path.join(folder, f)).read() for f in sorted(os.listdir(folder))}


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_failed_move_leaves_exactly_the_old_files(tmp_path, monkeypatch, fail_at):
    import gradc.aot_c

    monkeypatch.setattr(gradc.aot_c, "build_library", _fake_library)
    monkeypatch.setenv("CC", sys.executable)  # any program will do: the fake never links
    out = tmp_path / "out"
    out.mkdir()
    old = {"libmodel.so": "old library", "model.h": "old header", "notes.txt": "mine"}
    for f, text in old.items():
        (out / f).write_text(text)
    real, calls = os.replace, []

    def replace(src, dst):
        if str(out) not in (os.path.dirname(dst), os.path.dirname(src)):
            return real(src, dst)  # not the install (a cache write, say)
        calls.append((src, dst))
        if len(calls) == fail_at:  # moves: 2 old entries aside, then 2 new ones in
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(BuildError, match="simulated"):
        build(MODEL, str(out), "c")
    assert _snapshot(out) == old  # nothing new, nothing lost, no temporary left behind
    monkeypatch.setattr(os, "replace", real)
    build(MODEL, str(out), "c")
    new = _snapshot(out)
    assert new["libmodel.so"] == "new library" and new["notes.txt"] == "mine"
    assert new["model.h"].startswith("/* model.h: generated by gradc")
    assert sorted(new) == sorted(old)


def test_failed_move_into_a_new_directory_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    real = os.replace

    def replace(src, dst):
        if os.path.dirname(dst) == str(out):
            raise OSError(13, "Permission denied (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(BuildError, match="simulated"):
        build(MODEL, str(out), "python")
    assert os.listdir(tmp_path / "new") == []


def test_build_never_overwrites_its_source(tmp_path):
    src = tmp_path / "model.py"
    shutil.copy(MODEL, src)
    with pytest.raises(BuildError, match="would overwrite"):
        build(str(src), str(tmp_path), "python")
    assert src.read_text() == open(MODEL).read() and os.listdir(tmp_path) == ["model.py"]


def test_python_build_refuses_a_module_it_would_not_shadow(tmp_path):
    import importlib.machinery

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ("model" + importlib.machinery.EXTENSION_SUFFIXES[0])
    stale.write_text("an old extension module")
    with pytest.raises(BuildError, match="would be imported instead of the new model.py"):
        build(MODEL, str(out), "python")
    assert sorted(os.listdir(out)) == [stale.name]


def test_python_build_replaces_an_ext_package_and_keeps_other_folders(tmp_path):
    out = tmp_path / "out"
    package = out / "model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# Generated by gradc 0.0: an old ext package\n")
    (package / "_gradc_kernels.abi.so").write_text("old kernels")
    build(MODEL, str(out), "python")
    assert sorted(os.listdir(out)) == ["model.py"]
    # a folder gradc did not write is never removed
    mine = out / "model"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2\n")
    with pytest.raises(BuildError, match="would be imported instead"):
        build(MODEL, str(out), "python")
    assert (mine / "data.csv").read_text() == "1,2\n"
