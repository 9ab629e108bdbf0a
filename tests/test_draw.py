"""gradc.draw: the seed's picture (labels, edges, SVG, PNG, Jupyter), collapsing, and a clear
error where Graphviz is missing. Structure is tested on the DOT text, which needs no Graphviz;
rendering tests skip where the ``dot`` program is not installed."""
import re
import shutil
import sys

import numpy as np
import pytest

import gradc
from gradc.draw import DrawingUnavailable, dot_source, draw


def J(a, b, c):
    u = b * c
    v = a + u
    return 3 * v


def _graphviz_or_skip():
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")


def _boxes(source):
    """DOT key -> the texts of its label's rows, tags stripped."""
    out = {}
    for key, label in re.findall(r"^\s*(\w+) \[label=<(.*)>\];$", source, re.M):
        rows = re.findall(r"<TR>(.*?)</TR>", label)
        out[key] = [" ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in rows]
    return out


def _by_name(source):
    """The user's name of each box (``u`` for ``u = b * c``) -> its DOT key."""
    return {rows[0].split()[0]: key for key, rows in _boxes(source).items()}


def _edges(source):
    return set(re.findall(r"^\s*(\w+) -> (\w+)", source, re.M))


def test_seed_picture_labels_each_value_and_adjoint():
    rows = [r for box in _boxes(dot_source(J, 5, 3, 2)).values() for r in box]
    for label in ("u = 6", "v = 11", "J = 33", "dv = 3", "da = 3", "db = 6", "dc = 9",
                  "du = 3", "dJ = 1", "u = b * c mul", "v = a + u add"):
        assert label in rows, label


def test_seed_picture_edges_run_left_to_right_in_forward_order():
    source = dot_source(J, 5, 3, 2)
    key = _by_name(source)
    assert "rankdir=LR" in source
    assert _edges(source) == {(key["b"], key["u"]), (key["c"], key["u"]), (key["u"], key["v"]),
                              (key["a"], key["v"]), (key["v"], key["J"])}


def test_picture_is_deterministic_and_takes_gradc_functions():
    compiled = gradc.value_and_grad(J, backend="python")
    assert dot_source(J, 5, 3, 2) == dot_source(compiled, 5.0, 3.0, 2.0)
    values_only = dot_source(gradc.compile(J, backend="python"), 5, 3, 2)
    assert "J = 33" in values_only and "dv = " not in values_only  # compile: no adjoints


def test_reverse_sweep_draws_the_adjoint_graph_right_to_left():
    source = dot_source(J, 5, 3, 2, reverse=True)
    boxes = _boxes(source)
    key = {rows[0].split()[0]: k for k, rows in boxes.items() if k.startswith("r")}
    assert [boxes[key["db"]][0], boxes[key["dc"]][0]] == ["db = du * c", "dc = du * b"]
    back = set(re.findall(r"^\s*(\w+) -> (\w+) \[dir=back", source, re.M))
    # consumer -> producer with dir=back: dJ feeds dv, dv feeds du and da, du feeds db and dc
    assert back == {(key["dv"], key["dJ"]), (key["da"], key["dv"]), (key["du"], key["dv"]),
                    (key["db"], key["du"]), (key["dc"], key["du"])}
    forward = _by_name(source)
    assert f"{{ rank=same; {forward['u']}; {key['du']} }}" in source  # du under u


def test_large_graph_collapses_to_the_optimized_arrays():
    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    x = np.linspace(0.0, 1.0, 500)
    source = dot_source(rosen, x)
    boxes = _boxes(source)
    assert len(boxes) < 40  # unrolled, this is thousands of nodes
    assert "cluster_forward" in source and "cluster_reverse" in source
    rows = [r for box in boxes.values() for r in box]
    assert "float64[500]" in rows and any(r.startswith("dx = [") for r in rows)
    value = gradc.value_and_grad(rosen, backend="python")(x)[0]
    assert f"rosen(x=float64[500]) = {value:.6g}" in source
    forced = dot_source(J, 5, 3, 2, collapse=True)  # the optimized program, as compiled
    assert "cluster_reverse" in forced and "db = du * c" in forced and "dJ = " not in forced


def test_long_unrolled_loop_merges_unnamed_steps():
    def loop(x):
        for _ in range(100):
            x = 0.5 * x * x + 0.1 * gradc.math.sin(x)
        return x

    rows = [r for box in _boxes(dot_source(loop, 0.3, max_nodes=50)).values() for r in box]
    assert len(rows) < 20
    assert any(re.fullmatch(r"\d+ unnamed steps", r) for r in rows)
    assert any("sin ×100" in r for r in rows)


def test_draw_options_are_checked():
    with pytest.raises(gradc.ArgumentError, match="collapse"):
        dot_source(J, 5, 3, 2, collapse="yes")
    with pytest.raises(gradc.ArgumentError, match="max_nodes"):
        dot_source(J, 5, 3, 2, max_nodes=0)


def test_missing_dot_program_says_how_to_install(monkeypatch, tmp_path):
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no dot on PATH
    with pytest.raises(DrawingUnavailable) as info:
        draw(J, 5, 3, 2)
    message = str(info.value)
    assert isinstance(info.value, gradc.GradcError)
    assert "dot program" in message and "apt-get install graphviz" in message
    assert "brew install graphviz" in message and "test_draw.py" in message


def test_missing_graphviz_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz now fails
    with pytest.raises(DrawingUnavailable, match=r'pip install "gradc\[draw\]"'):
        draw(J, 5, 3, 2)


def test_import_gradc_does_not_import_graphviz():
    import subprocess

    code = "import sys, gradc; print('graphviz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seed_renders_as_svg_with_its_labels(tmp_path):
    _graphviz_or_skip()
    drawing = draw(J, 5, 3, 2)
    svg = drawing.svg()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    texts = [" ".join(t.split()) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    for label in ("u = 6", "v = 11", "J = 33", "dv = 3", "da = 3", "db = 6", "dc = 9"):
        assert label in texts, label
    path = drawing.save(tmp_path / "seed.svg")
    assert path == tmp_path / "seed.svg" and path.read_text() == svg


def test_seed_saves_as_png(tmp_path):
    _graphviz_or_skip()
    path = draw(J, 5, 3, 2).save(str(tmp_path / "seed.png"))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 500  # drawn at slide resolution, wider than tall
    with pytest.raises(gradc.ArgumentError, match="suffix"):
        draw(J, 5, 3, 2).save(tmp_path / "seed.jpeg")


def test_jupyter_displays_drawing_and_explain_as_svg(capsys):
    _graphviz_or_skip()
    assert "J = 33" in draw(J, 5, 3, 2)._repr_svg_()
    result = gradc.explain(J, 5, 3, 2)
    assert "db = du * c" in capsys.readouterr().out  # the table is printed as before
    svg = result._repr_svg_()
    assert "<svg" in svg and "dc = 9" in svg


def test_explain_without_graphviz_keeps_its_table_and_warns(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    result = gradc.explain(J, 5, 3, 2)
    assert result.text == capsys.readouterr().out.rstrip("\n")
    with pytest.warns(UserWarning, match="gradc.draw renders with Graphviz"):
        assert result._repr_svg_() is None


def test_seven_elements_are_drawn_element_by_element_from_the_whole_array_trace():
    def lse(z):
        m = np.max(z)  # the element-by-element tracer refused np.max
        return m + np.log(np.sum(np.exp(z - m)))

    z = np.linspace(-1.0, 2.0, 7)
    _, grad = gradc.value_and_grad(lse, backend="python")(z)
    boxes = _boxes(dot_source(lse, z))
    key = _by_name(dot_source(lse, z))
    for i in range(7):  # one input box per element, its adjoint on it
        rows = boxes[key[f"z_{i}"]]
        assert rows[2] == f"dz_{i} = {float(grad[i]):.6g}".replace("e-0", "e-")
    assert "cluster_reverse" not in dot_source(lse, z)  # the full picture, not collapsed


def test_three_hundred_elements_are_drawn_collapsed_with_arrays_whole():
    def sumsq(x):
        return np.sum(x ** 2)

    source = dot_source(sumsq, np.linspace(0.0, 1.0, 300))
    rows = [r for box in _boxes(source).values() for r in box]
    assert len(_boxes(source)) < 10 and "float64[300]" in rows
    assert any(r.startswith("dx = [0, 0.006689, …, 2]") for r in rows)


def test_an_op_without_an_element_form_is_drawn_with_its_arrays_whole():
    def cs(x):
        return np.sum(np.cumsum(x) ** 2)

    rows = [r for box in _boxes(dot_source(cs, np.arange(1.0, 4.0))).values() for r in box]
    assert "x input" in rows and "x = [1, 2, 3]" in rows  # one box for the array
    assert "dx = [20, 18, 12]" in rows  # dx_k = 2 * (cumsum_k + ... + cumsum_n) for [1, 3, 6]
