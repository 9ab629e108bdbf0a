"""gradc.surface: the supported NumPy API, generated from the tables that implement it.

The README's "Supported NumPy" section must be what ``python -m gradc.surface --markdown``
prints; every name it lists as supported must trace, every name it lists as deliberately
unsupported must be refused with the reason it gives, and every suggestion in a refusal
must name something gradc traces.
"""
import re
from pathlib import Path

import numpy as np
import pytest

import gradc
from gradc import surface
from gradc.ir import Graph, evaluate
from gradc.trace import _traced_param

README = Path(__file__).resolve().parent.parent / "README.md"
FUNCTION_KINDS = surface.KINDS


def _numpy_object(name):
    """The NumPy object behind a surface name (``"linalg.svd"``), or None."""
    obj = np
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _traced(shape=(3, 3)):
    graph = Graph("f")
    return graph, _traced_param(graph, "x", shape, whole=True), _traced_param(graph, "t", None)


def test_the_readme_table_is_the_generated_one():
    generated = surface.markdown()
    section = surface.readme_section(README.read_text(encoding="utf-8"))
    assert section == generated, (
        "README.md's 'Supported NumPy' section differs from what gradc generates; replace it "
        "with the output of `python -m gradc.surface --markdown`:\n\n" + generated)


def test_the_command_prints_the_generated_section(capsys):
    assert surface.main(["--markdown"]) == 0
    assert capsys.readouterr().out == surface.markdown()
    assert surface.main([]) == 2


def test_the_readme_section_is_found_between_headings():
    text = "# t\n\n## Supported NumPy\n\nbody\n\n\n## Next\n"
    assert surface.readme_section(text) == "## Supported NumPy\n\nbody\n"
    assert surface.readme_section("# no such section\n") is None


def test_every_traced_function_has_a_kind():
    api = surface.supported_api()
    assert "other" not in api, (
        f"classify these NumPy functions in gradc/surface.py _KIND_OF: {api['other']}")
    assert list(api) == [*FUNCTION_KINDS, "methods and attributes", "operators"]


def test_every_listed_function_is_a_numpy_function_the_trace_rules_dispatch_on():
    from gradc import numpy_api, trace

    rules = {*trace._FUNCTIONS, *numpy_api.RULES}
    for kind in FUNCTION_KINDS:
        for name in surface.supported_api()[kind]:
            obj = _numpy_object(name)
            assert obj is not None, name
            assert obj in rules or isinstance(obj, np.ufunc) and name in trace.TRACED_UFUNCS, name


@pytest.mark.parametrize("name", surface.supported_api()["ufuncs"])
def test_every_listed_ufunc_traces_to_numpys_value(name):
    ufunc = getattr(np, name)
    graph, _, t = _traced()
    traced = ufunc(*([t] * ufunc.nin))
    for point in (0.375, 1.625):  # inside the domains of arctanh and of arccosh
        with np.errstate(all="ignore"):
            expected = ufunc(*([point] * ufunc.nin))
        values = evaluate(graph, [np.zeros((3, 3)), point])
        got = tuple(values[r.node.id] for r in traced) if isinstance(traced, tuple) else \
            values[traced.node.id]
        assert np.allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float),
                           equal_nan=True), point


def test_methods_and_operators_gradc_refuses_are_not_listed():
    api = surface.supported_api()
    assert {"sum", "T", "astype", "dtype"} <= set(api["methods and attributes"])
    assert not {"argmax", "tobytes", "view", "imag", "nonzero"} & set(api["methods and attributes"])
    assert {"+", "@", "x[i] = v"} <= set(api["operators"])
    assert not {"<<", ">>", "^"} & set(api["operators"])


def _refusal(obj, x):
    """The GradcError that calling ``obj`` on the traced array raises (trying one, then two
    arguments, as NumPy needs), or None where one of the calls gave a value."""
    error = None
    for args in ((x,), (x, x)):
        try:
            obj(*args)
        except gradc.GradcError as exc:
            return exc
        except TypeError as exc:  # a missing argument: try the next pattern
            error = exc
            continue
        return None
    raise AssertionError(f"{obj} raised {error!r}")


@pytest.mark.parametrize("names, why", surface.UNSUPPORTED)
def test_every_deliberately_unsupported_name_is_refused_with_its_reason(names, why):
    _, x, _ = _traced()
    for name in names:
        obj = _numpy_object(name)
        assert obj is not None, f"numpy.{name} does not exist"
        assert not surface.traces(name)
        exc = _refusal(obj, x)
        assert exc is not None, f"numpy.{name} traced, but the README lists it as unsupported"
        message = str(exc)
        assert "test_surface.py:" in message
        if f"numpy.{name} is not supported by gradc" in message:
            assert why in message, message
        else:  # numpy.asarray and friends: refused when NumPy asks for the array
            assert "numpy.asarray" in message, message


def _python_constructs():
    """A call per UNSUPPORTED_PYTHON entry, by its first spelling: each must be refused."""
    def truth(x):
        if x[0] > 0:
            return x
        return -x

    def write_through_transpose(x):
        x.T[0] = 1.0

    return {
        "float(x)": lambda x: float(x[0]),
        "if x > 0:": truth,
        "x[x > 0]": lambda x: x[x > 0],
        "x.T[0] = v": write_through_transpose,
    }


def test_every_python_construct_listed_unsupported_is_refused():
    calls = _python_constructs()
    assert set(calls) == {spellings[0] for spellings, _ in surface.UNSUPPORTED_PYTHON}
    for spelling, call in calls.items():
        _, x, _ = _traced()
        with pytest.raises(gradc.GradcError):
            call(x)


def _named_functions(text):
    """The ``numpy.<name>`` functions a hint names (``numpy.linalg.eigh`` as ``linalg.eigh``)."""
    return [m.group(1) for m in re.finditer(r"numpy\.((?:linalg\.)?[a-z_0-9]+)", text)]


def test_every_suggestion_names_functions_gradc_traces():
    texts = [why for _, why in (*surface.UNSUPPORTED, *surface.UNSUPPORTED_PYTHON)]
    texts += list(surface.INSTEAD.values())
    named = [name for text in texts for name in _named_functions(text)]
    assert "cumsum" in named and "linalg.eigvalsh" in named
    for name in named:
        # constants and what builds them (a numpy.eye mask), and numpy.array of traced
        # scalars (the asarray hint: that works)
        if name in ("inf", "float64", "eye", "array"):
            assert _numpy_object(name) is not None
        else:
            assert surface.traces(name), f"a hint suggests numpy.{name}, which gradc does not trace"


def test_names_with_a_suggestion_are_refused_numpy_names():
    reasons = {name for names, _ in surface.UNSUPPORTED for name in names}
    for name in surface.INSTEAD:
        assert not surface.traces(name) and name not in reasons, name
        obj = _numpy_object(name)
        if obj is None:
            continue  # newer than this NumPy (numpy.cumulative_sum is NumPy 2.1)
        _, x, _ = _traced()
        exc = _refusal(obj, x)
        assert exc is not None and surface.INSTEAD[name] in str(exc), name
