"""Ahead-of-time modules (``gradc build``): every format's results equal the JIT path's.

Each format is built once per test module (pycc takes seconds). The ``python``
module is imported where gradc cannot be; the ``ext`` module where neither numba
nor gradc can be (``python -I`` plus an import blocker); the C library is called
from the example driver compiled with the system ``cc``, and through ctypes.
"""
import ast
import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc.aot import BuildError, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "examples", "aot", "model.py")
DRIVER = os.path.join(ROOT, "examples", "aot", "driver.c")
X = np.linspace(-1.2, 0.7, 20)  # the driver's x: -1.2 + 0.1 * i
HAVE_CC = shutil.which("cc") is not None

# A second model: a matrix argument beside a scalar, conditions, and several ops.
MIXED = textwrap.dedent("""
    import numpy as np
    import gradc

    @gradc.export(args=("f8[2,3]", "f8"), build=("value", "grad", "value_and_grad"))
    def g(A, s):
        t = np.sum(np.tanh(A @ np.array([1.0, -2.0, 0.5]))) * s
        return t + gradc.where(s > 0, np.exp(s), np.log1p(s * s)) + np.hypot(A[1, 2], s) ** 3
""")
A = np.array([[0.1, -0.4, 0.9], [1.3, 0.2, -0.7]])

# What every child script starts with (see _child): the modules argv[2] names unimportable,
# the built module's folder (argv[1]) first on the path.
_ISOLATION = textwrap.dedent("""
    import json, sys
    BLOCK = set(sys.argv[2].split(",")) - {""}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, Blocker())
    sys.path.insert(0, sys.argv[1])
""")

# Runs in a child: block numba, llvmlite and gradc, import the module, print its results.
CHILD = textwrap.dedent("""
    import numpy as np
    import model
    x = np.linspace(-1.2, 0.7, 20)
    def plain(v):
        if isinstance(v, tuple):
            return [plain(t) for t in v]
        return v.tolist() if isinstance(v, np.ndarray) else v
    out = {"J_value": model.J_value(5.0, 3.0, 2.0), "J_grad": model.J_grad(5, 3, 2),
           "J_value_and_grad": model.J_value_and_grad(5.0, 3.0, 2.0),
           "rosen_value_and_grad": model.rosen_value_and_grad(x)}
    try:
        model.rosen_value_and_grad(np.zeros(3))
    except ValueError as exc:
        out["shape_error"] = str(exc)
    out["imported"] = sorted(m for m in BLOCK if m in sys.modules)
    print(json.dumps({k: plain(v) for k, v in out.items()}))
""")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return _load(MODEL, "_aot_model_for_tests")


@pytest.fixture(scope="module")
def jit(model):
    """The JIT reference: name -> result, for the same calls as the child and the driver."""
    vg = gradc.value_and_grad(model.J)
    return {"J_value": gradc.compile(model.J)(5.0, 3.0, 2.0),
            "J_grad": gradc.grad(model.J)(5.0, 3.0, 2.0),
            "J_value_and_grad": vg(5.0, 3.0, 2.0),
            "rosen_value_and_grad": gradc.value_and_grad(model.rosen)(X)}


def _flat(v):
    if isinstance(v, (tuple, list)):
        return np.concatenate([_flat(t) for t in v]) if v else np.zeros(0)
    return np.ravel(np.asarray(v, dtype=float))


def _same(got, want):
    np.testing.assert_allclose(_flat(got), _flat(want), rtol=1e-13, atol=1e-12)


def _child(outdir, block, script=CHILD):
    """Run ``script`` in an isolated child with the modules ``block`` names unimportable;
    its JSON output."""
    done = subprocess.run([sys.executable, "-I", "-c", _ISOLATION + script, outdir,
                           ",".join(block)],
                          capture_output=True, text=True, cwd=outdir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- the marking -----------------------------------------------------------------------
def test_export_returns_the_function_and_records_the_spec(model):
    assert model.J(5.0, 3.0, 2.0) == 33.0  # still plain Python
    assert model.J.__gradc_export__.args == (None, None, None)
    assert model.J.__gradc_export__.build == ("value", "grad", "value_and_grad")
    assert model.rosen.__gradc_export__.args == ((20,),)

    @gradc.export(args="f8[3, 4]", build="grad")
    def f(m):
        return m

    assert f.__gradc_export__.args == ((3, 4),) and f.__gradc_export__.build == ("grad",)


@pytest.mark.parametrize("kwargs", [dict(args=("f4",)), dict(args=("f8[0]",)),
                                    dict(args=("f8",), build=("hessian",)),
                                    dict(args=("f8", "f8"))])
def test_export_rejects_unsupported_signatures(kwargs):
    with pytest.raises(BuildError) as info:
        gradc.export(**kwargs)(lambda x: x)
    assert isinstance(info.value, gradc.GradcError) and "test_aot.py" in str(info.value)


# --- the formats -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = {}
    for fmt in ("python", "ext", "c"):
        if fmt != "python" and not HAVE_CC:
            continue
        outdir = str(tmp_path_factory.mktemp(fmt) / "out")
        out[fmt] = (outdir, build(MODEL, outdir, fmt))
    return out


def test_python_module_needs_numba_not_gradc(built, jit):
    outdir, files = built["python"]
    assert [os.path.basename(f) for f in files] == ["model.py"]
    text = open(files[0]).read()
    imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(text))
                if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(text))
                 if isinstance(node, ast.ImportFrom)}
    assert imported == {"numbers", "numpy", "numba"}  # the code never imports gradc
    assert "@njit((float64, float64, float64), cache=True" in text
    got = _child(outdir, ["gradc"])
    for name, want in jit.items():
        _same(got[name], want)
    assert got["shape_error"] == "rosen_value_and_grad: x must have shape (20,), not (3,)"
    assert got["imported"] == []


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_ext_module_runs_without_numba_and_gradc(built, jit):
    outdir, files = built["ext"]
    assert files == [os.path.join(outdir, "model")]  # a package: checks in Python, kernels in C
    inside = sorted(os.listdir(files[0]))
    assert inside[0] == "__init__.py" and inside[1].startswith("_gradc_kernels.") and len(inside) == 2
    got = _child(outdir, ["numba", "llvmlite", "gradc"])
    for name, want in jit.items():
        _same(got[name], want)
    assert got["J_value_and_grad"] == [33.0, [3.0, 6.0, 9.0]]
    assert got["shape_error"] == "rosen_value_and_grad: x must have shape (20,), not (3,)"
    assert got["imported"] == []


# Runs in a child: every call that once crashed pycc's wrappers or gave a wrong answer; prints
# each outcome, a value or the exception's type. A crash ends the child with a signal instead.
BAD_CALLS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import model
    x = np.linspace(-1.2, 0.7, 20)
    ro = x.copy()
    ro.setflags(write=False)
    rosen, J = model.rosen_value_and_grad, model.J_value
    calls = {
        "float32": lambda: rosen(np.zeros(20, np.float32)),
        "int64": lambda: rosen(np.arange(20)),
        "column": lambda: rosen(np.zeros((20, 1))),
        "list": lambda: rosen([0.0] * 20),
        "None": lambda: rosen(None),
        "complex": lambda: rosen(np.zeros(20, complex)),
        "bool": lambda: rosen(np.zeros(20, bool)),
        "object": lambda: rosen(np.zeros(20, object)),
        "strided": lambda: rosen(np.repeat(x, 2)[::2]),
        "big-endian": lambda: rosen(x.astype(">f8")),
        "read-only": lambda: rosen(ro),
        "scalar None": lambda: J(None, 3.0, 2.0),
        "scalar complex": lambda: J(5 + 1j, 3.0, 2.0),
        "scalar bool": lambda: J(True, 3.0, 2.0),
        "scalar str": lambda: J("5", 3.0, 2.0),
        "scalar array": lambda: J(np.zeros(2), 3.0, 2.0),
        "scalar huge int": lambda: J(10 ** 400, 3.0, 2.0),
        "numpy scalars": lambda: J(np.float32(5), np.int64(3), np.array(2.0)),
        "keywords": lambda: J(c=2.0, b=3.0, a=5.0),
    }
    out = {}
    for name, call in calls.items():
        try:
            value = call()
            out[name] = value[0] if isinstance(value, tuple) else value
        except (TypeError, ValueError) as exc:
            out[name] = type(exc).__name__
    print(json.dumps(out))
""")


@pytest.mark.parametrize("fmt", ["python", "ext"])
def test_every_argument_is_checked_or_converted(built, fmt):
    if fmt not in built:
        pytest.skip("no C compiler")
    outdir, _ = built[fmt]
    done = subprocess.run([sys.executable, "-I", "-c", BAD_CALLS, outdir],
                          capture_output=True, text=True, cwd=outdir)
    assert done.returncode == 0, (done.returncode, done.stderr)  # never a signal
    got = json.loads(done.stdout)
    want_x = 100.0 * np.sum((X[1:] - X[:-1] ** 2) ** 2) + np.sum((1 - X[:-1]) ** 2)
    want = {
        "float32": 19.0, "int64": 37213286.0, "column": "ValueError", "list": "TypeError",
        "None": "TypeError", "complex": "TypeError", "bool": "TypeError", "object": "TypeError",
        "strided": want_x, "big-endian": want_x, "read-only": want_x,
        "scalar None": "TypeError", "scalar complex": "TypeError", "scalar bool": "TypeError",
        "scalar str": "TypeError", "scalar array": "TypeError", "scalar huge int": "ValueError",
        "numpy scalars": 33.0, "keywords": 33.0}
    assert got.keys() == want.keys()
    for key, value in want.items():  # error names exactly, numbers to 1e-13
        assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-13)), key


def _driver_results(outdir, tmp_path):
    exe = str(tmp_path / "driver")
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-I", outdir, DRIVER, "-L", outdir, "-lmodel",
                    f"-Wl,-rpath,{outdir}", "-lm", "-o", exe], check=True)
    lines = subprocess.run([exe], capture_output=True, text=True, check=True).stdout.splitlines()
    return {line.split()[0]: [float(t) for t in line.split()[1:]] for line in lines}


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_c_library_from_the_example_driver(built, jit, tmp_path):
    outdir, files = built["c"]
    assert sorted(os.path.basename(f) for f in files) == ["libmodel.so", "model.h"]
    got = _driver_results(outdir, tmp_path)
    assert got["status"] == [0.0]
    _same(got["J_value"], jit["J_value"])
    _same(got["J_grad"], jit["J_grad"])
    _same(got["J_value_and_grad"] + got["J_value_and_grad.grad"], jit["J_value_and_grad"])
    _same(got["rosen_value_and_grad"] + got["rosen_value_and_grad.grad"],
          jit["rosen_value_and_grad"])
    header = open(os.path.join(outdir, "model.h")).read()
    assert "int rosen_value_and_grad(const double *x, double *value, double *dx);" in header
    assert "dx[20]: drosen/dx, shape (20,) in C order" in header


@pytest.mark.skipif(shutil.which("nm") is None or not HAVE_CC, reason="needs nm and cc")
def test_c_library_needs_only_libm(built):
    outdir, _ = built["c"]
    lib = os.path.join(outdir, "libmodel.so")
    nm = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True,
                        check=True).stdout
    undefined = {line.split()[-1].split("@")[0] for line in nm.splitlines()
                 if line.split()[0] == "U"}
    assert undefined <= {"exp", "log", "pow", "sin", "cos", "tanh", "log1p", "hypot"}, undefined
    defined = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                             check=True).stdout
    assert {line.split()[-1] for line in defined.splitlines() if " T " in line} == {
        "J_value", "J_grad", "J_value_and_grad", "rosen_value_and_grad"}


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_matrix_and_scalar_arguments_in_c_and_python(tmp_path):
    src = tmp_path / "mixed.py"
    src.write_text(MIXED)
    mod = _load(str(src), "_aot_mixed_for_tests")
    c_out, py_out = str(tmp_path / "c"), str(tmp_path / "py")
    build(str(src), c_out, "c")
    build(str(src), py_out, "python")
    lib = ctypes.CDLL(os.path.join(c_out, "libmixed.so"))
    dp = ctypes.POINTER(ctypes.c_double)
    py = _load(os.path.join(py_out, "mixed.py"), "_aot_mixed_built")
    for s in (0.7, -0.3):
        want_v, (want_dA, want_ds) = gradc.value_and_grad(mod.g)(A, s)
        value, dA, ds = np.zeros(1), np.zeros((2, 3)), np.zeros(1)
        fn = lib.g_value_and_grad
        fn.argtypes = [dp, ctypes.c_double, dp, dp, dp]
        assert fn(A.ctypes.data_as(dp), s, value.ctypes.data_as(dp), dA.ctypes.data_as(dp),
                  ds.ctypes.data_as(dp)) == 0
        _same((value, dA, ds), (want_v, want_dA, want_ds))
        _same(py.g_value_and_grad(A, s), (want_v, want_dA, want_ds))
        _same(py.g_grad(A, s), gradc.grad(mod.g)(A, s))
        _same(py.g_value(A, s), gradc.compile(mod.g)(A, s))
        lib.g_value.argtypes = [dp, ctypes.c_double, dp]
        assert lib.g_value(A.ctypes.data_as(dp), s, value.ctypes.data_as(dp)) == 0
        _same(value, want_v)


# --- errors: a gradc error and nothing written -----------------------------------------
def test_nothing_marked_is_an_error_and_writes_nothing(tmp_path):
    src = tmp_path / "plain.py"
    src.write_text("def f(x):\n    return x * x\n")
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="marks no function for export"):
        build(str(src), str(out), "python")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["plain.py"]


def test_missing_c_compiler_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc-gradc")
    out = tmp_path / "out"
    for fmt in ("c", "ext"):
        with pytest.raises(BuildError, match="no C compiler"):
            build(MODEL, str(out), fmt)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_failure_after_lowering_leaves_no_output(tmp_path, monkeypatch):
    import gradc.aot_c

    def boom(*args):
        raise BuildError("linking failed (simulated)")

    monkeypatch.setattr(gradc.aot_c, "build_library", boom)
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="simulated"):
        build(MODEL, str(out), "c")
    assert os.listdir(tmp_path) == []


def test_cli_build_and_cli_error(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gradc", "build", MODEL, "-o", str(out),
                           "--format", "python", "--name", "shipped"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "shipped.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    done = subprocess.run([sys.executable, "-m", "gradc", "build", str(empty), "-o", str(out),
                           "--format", "c"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "gradc: error:" in done.stderr
    assert "marks no function" in done.stderr and "Traceback" not in done.stderr
