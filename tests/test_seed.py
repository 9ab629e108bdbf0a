"""The seed, exactly: J = 3(a + b*c) at (5, 3, 2), its adjoints, its explain table and its emitted source."""
import os
import re
import subprocess
import sys

import pytest

import gradc


def J(a, b, c):
    u = b * c
    v = a + u
    return 3 * v


GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_value_and_grad(backend):
    f = gradc.value_and_grad(J, backend=backend)
    assert f(5.0, 3.0, 2.0) == (33.0, (3.0, 6.0, 9.0))
    assert f(5, 3, 2) == (33.0, (3.0, 6.0, 9.0))  # ints are taken as floats
    assert isinstance(f(5, 3, 2)[0], float)


@pytest.mark.parametrize("argnums, expected", [
    (None, (3.0, 6.0, 9.0)), (0, 3.0), (1, 6.0), (2, 9.0), (-1, 9.0),
    ((1,), (6.0,)), ((0, 2), (3.0, 9.0)), ((2, 0), (9.0, 3.0)),
])
def test_argnums(argnums, expected):
    assert gradc.grad(J, argnums=argnums, backend="python")(5.0, 3.0, 2.0) == expected
    assert gradc.value_and_grad(argnums=argnums, backend="python")(J)(5.0, 3.0, 2.0) == (33.0, expected)


def test_decorator_forms_and_single_argument():
    @gradc.grad
    def square(x):
        return x * x

    @gradc.value_and_grad(backend="python")
    def cube(x):
        return x ** 3

    assert square(3.0) == 6.0  # one argument: the gradient comes bare
    assert cube(2.0) == (8.0, 12.0)
    assert gradc.compile(J)(5.0, 3.0, 2.0) == 33.0
    assert gradc.grad(lambda x, y: x * y, backend="python")(2.0, 5.0) == (5.0, 2.0)


def test_explain_table(capsys):
    gradc.explain(J, 5, 3, 2)
    rows = dict(re.findall(r"^\s+(\w+)\s+=.*=\s+(\S+)$", capsys.readouterr().out, re.M))
    assert rows == {"u": "6", "v": "11", "J": "33",
                    "dJ": "1", "dv": "3", "da": "3", "du": "3", "db": "6", "dc": "9"}


def test_explain_order(capsys):
    gradc.explain(J, 5, 3, 2)
    names = re.findall(r"^\s+(\w+)\s+=", capsys.readouterr().out, re.M)
    assert names == ["u", "v", "J", "dJ", "dv", "da", "du", "db", "dc"]  # the seed's order


def _without_header(source):
    return "\n".join(line for line in source.splitlines() if not line.startswith("# Generated"))


@pytest.mark.parametrize("kind", ["value_and_grad", "grad", "compile"])
def test_golden_source(kind):
    f = getattr(gradc, kind)(J, backend="python")
    path = os.path.join(GOLDEN, f"seed_{kind}.py")
    if os.environ.get("GRADC_UPDATE_GOLDEN"):
        with open(path, "w") as fh:
            fh.write(_without_header(f.source) + "\n")
    with open(path) as fh:
        assert _without_header(f.source) + "\n" == fh.read()


def test_source_is_deterministic_across_processes():
    code = ("import sys; sys.path.insert(0, {root!r}); import gradc\n"
            "def J(a, b, c):\n    u = b * c\n    v = a + u\n    return 3 * v\n"
            "print(gradc.value_and_grad(J, backend='python').source)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = {
        subprocess.run([sys.executable, "-c", code.format(root=root)], capture_output=True,
                       text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1
    assert "db = du * c" in outs.pop()


def test_graph_prints_as_program():
    text = str(gradc.value_and_grad(J, backend="python").graph)
    assert text.splitlines()[0] == "def J(a, b, c):"
    assert "    return J, (da, db, dc)" in text


def test_explain_second_order(capsys):
    def K(a, b, c):
        u = b * c
        v = a + u
        return 3 * v * u

    gradc.explain(gradc.hessian(K), 5, 3, 2)
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\s+(\w+)\s+=.*=\s+(\S+)$", out, re.M))
    H = gradc.hessian(K, backend="python")(5.0, 3.0, 2.0)
    assert "second order, forward over reverse" in out
    assert float(rows["dda_db"]) == H[0, 1] and float(rows["ddb_dc"]) == H[1, 2]
    assert float(rows["ddc_dc"]) == H[2, 2] and float(rows["db"]) == 102


def test_explain_array_arguments(capsys):
    import numpy as np

    gradc.explain(lambda x: np.sum(x ** 2), np.arange(3.0))
    out = capsys.readouterr().out
    assert "lambda(x=[0., 1., 2.]) = 5" in out
    assert re.search(r"dx_2 = .* = 4$", out, re.M)
