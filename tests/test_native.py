"""The native path (gradc/native.py) computes what the ordinary numba path computes, bit for bit.

One program holds every scalar op of the table (and the forms the emitter gives them:
int and float exponents, conditions inside ``where``, ``and``/``or``/``not``); it is
compiled three ways, natively, by numba from the emitted source, and run by the
Python backend, and the three are compared at special values (signed zeros,
infinities, NaN) and ordinary ones: bitwise, NaN equal to NaN. Each route is held to
this: 1 (the body inside numba), 2 (object code behind numba's wrapper) and 3 (object
code behind gradc.shim's C entry). A random program of 5,000 nodes is compared with
the Python backend; a second process must find the native code in the disk cache;
graphs the native path does not lower are refused. (What runs without numba, in a
fresh process, is in test_native_numba_free.py.)
"""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc import jit, native
from gradc.emit import emit_module
from gradc.ir import Graph
from gradc.ops import OPS, _TABLE

SPECIAL = [-0.0, 0.0, np.inf, -np.inf, np.nan, 1.0, -2.5, 0.5, 0.3, 3.0]
CONDITIONS = ("lt", "le", "gt", "ge", "eq", "ne")
#: Ops whose numba lowering calls the C library (or NumPy's loops differ from it): the
#: Python backend runs NumPy's own loops there, which may differ in the last bit from the
#: C library both compiled paths call. For these the native path is held to numba's.
LIBM = {"exp", "log", "log1p", "expm1", "sin", "cos", "tan", "arcsin", "arccos", "arctan",
        "arctan2", "sinh", "cosh", "tanh", "hypot", "pow", "sigmoid", "softplus"}


def same(a, b):
    """Bitwise equal floats, except that every NaN equals every NaN."""
    a, b = np.float64(a), np.float64(b)
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    return bool(a == b and np.signbit(a) == np.signbit(b))


#: Ops whose numba implementation is not self-contained: their graphs take route 1.
ROUTE1_ONLY = {"hypot", "softplus"}


def _all_ops_graph(route=1):
    """A graph of x, y with one output per case: (name, node) for every scalar op (route 2:
    those it lowers as object code)."""
    g = Graph("ops")
    x, y = g.input("x"), g.input("y")
    cases = []
    for op in _TABLE:
        if op.shape is not None or op.statement or op.name in ("alias", "and", "or", "not"):
            continue  # and, or, not: of conditions, below
        if op.name not in native.SUPPORTED_OPS:
            continue  # the native path refuses graphs with other ops (the last test)
        if route == 2 and op.name in ROUTE1_ONLY:
            continue
        if op.result == "bool":  # a condition is used by where, as the emitter writes it
            cond = g.add(op.name, (x, y)[:op.arity])
            cases.append((op.name, g.add("where", (cond, x, y))))
        elif op.name == "where":
            cases.append(("where", g.add("where", (g.add("lt", (x, y)), x, y))))
            cases.append(("where-float", g.add("where", (x, y, g.const(2.0)))))
        else:
            cases.append((op.name, g.add(op.name, (x, y)[:op.arity])))
    for k in (0.0, 1.0, 2.0, 3.0, 7.0, 0.5, -1.0, -2.0, 2.5):  # ints print as int literals
        cases.append((f"pow-{k}", g.add("pow", (x, g.const(k)))))
    cases.append(("pow-base-2", g.add("pow", (g.const(2.0), x))))
    lt, gt0 = g.add("lt", (x, y)), g.add("gt", (x, g.const(0.0)))
    for name in ("and", "or"):
        cases.append((name, g.add("where", (g.add(name, (lt, gt0)), x, y))))
    cases.append(("not", g.add("where", (g.add("not", (lt,)), x, y))))
    g.set_outputs([n for _, n in cases], tuple(range(len(cases))))
    return g, [name for name, _ in cases]


def route_of(path):
    """Which route compiled what ``path`` names: route 3 returns the object file, routes 1
    and 2 numba's wrapper source (its header says which)."""
    with open(path, "rb") as fh:
        first = fh.readline()
    if first == native._OBJECT_MAGIC:
        return 3
    return 2 if b"native object body" in first else 1


def native_compile(graph, func_name, source, shapes, route, **kwargs):
    """``(callable, path)`` of ``graph`` through compile_graph, on ``route`` (1 or 2: the
    dispatcher, 3: the C entry's function)."""
    compiled, path = native.compile_graph(graph, func_name, source, shapes,
                                          c_entry=route == 3, **kwargs)
    assert route_of(path) == route, path
    return (compiled.function if route == 3 else compiled), path


ROUTES = pytest.mark.parametrize("route", [1, 2, 3],
                                 ids=["route1-intrinsic", "route2-object", "route3-c-entry"])


@pytest.fixture(scope="module", params=[1, 2, 3],
                ids=["route1-intrinsic", "route2-object", "route3-c-entry"])
def three_ways(request):
    """The all-ops program natively (each route), through numba's ordinary path, in Python."""
    graph, names = _all_ops_graph(min(request.param, 2))
    source, func_name, entry = emit_module(graph, "ops", "value")
    compiled, _ = native_compile(graph, func_name, source, (None, None), request.param,
                                 min_nodes=0)
    ordinary, _ = jit.load_numba(source, func_name, entry, (None, None))
    python, _ = jit.load_python(source, func_name)
    return names, compiled, ordinary, python


def _points():
    rng = np.random.default_rng(1)
    ordinary = [tuple(map(float, p)) for p in rng.uniform(-3.0, 3.0, (40, 2))]  # floats: what
    # the C entry takes itself (it gives NumPy scalars to its fallback)
    return list(itertools.product(SPECIAL, repeat=2)) + ordinary


def test_native_matches_numba_on_every_op_bit_for_bit(three_ways):
    names, compiled, ordinary, _ = three_ways
    covered = {n.split("-")[0] for n in names}
    scalar_ops = {op.name for op in _TABLE if op.shape is None and not op.statement}
    expected = scalar_ops & native.SUPPORTED_OPS - {"alias"}
    if "hypot" not in covered:  # route 2's table: all but the ops without helpers
        expected -= ROUTE1_ONLY
    assert expected <= covered  # every op the route lowers
    wrong = []
    for x, y in _points():
        for name, a, b in zip(names, compiled(x, y), ordinary(x, y)):
            if not same(a, b):
                wrong.append((name, x, y, a, b))
    assert not wrong, wrong[:10]


def test_native_matches_the_python_backend(three_ways):
    """Exact ops agree with the emitted source run in Python everywhere; the C library's
    functions agree at the special values (where their results are defined exactly)."""
    names, compiled, _, python = three_ways
    wrong = []
    for x, y in _points():
        with np.errstate(all="ignore"):
            expected = python(np.float64(x), np.float64(y))
        special = x in SPECIAL and y in SPECIAL and all(
            v in (0.0, np.inf, -np.inf) or np.isnan(v) for v in (x, y))
        for name, a, b in zip(names, compiled(x, y), expected):
            if name.split("-")[0] in LIBM and not special:
                continue
            if not same(a, b):
                wrong.append((name, x, y, a, b))
    assert not wrong, wrong[:10]


def _random_program(n_nodes, seed=0, binary=("add", "sub", "mul", "div", "maximum", "minimum",
                                                "hypot")):
    """A random straight-line program over four inputs using the exactly rounded ops (so the
    Python backend is a bitwise oracle): arithmetic, sqrt, abs, sign, int powers, selections."""
    rng = np.random.default_rng(seed)
    g = Graph("rand")
    pool = [g.input(f"x{i}") for i in range(4)]
    unary = ["neg", "abs", "sqrt", "sign", "relu"]
    while len(g.nodes) < n_nodes:
        a, b = (pool[int(i)] for i in rng.integers(max(0, len(pool) - 60), len(pool), 2))
        kind = rng.random()
        if kind < 0.55:
            node = g.add(binary[int(rng.integers(len(binary)))], (a, b))
        elif kind < 0.75:
            node = g.add(unary[int(rng.integers(len(unary)))], (a,))
        elif kind < 0.85:
            node = g.add("pow", (a, g.const(float(rng.integers(0, 4)))))
        elif kind < 0.95:
            cond = g.add(CONDITIONS[int(rng.integers(len(CONDITIONS)))], (a, b))
            node = g.add("where", (cond, a, b))
        else:
            node = g.add("mul", (a, g.const(float(rng.uniform(-2, 2)))))
        pool.append(node)
    outs = pool[-5:]
    g.set_outputs(outs, (0, tuple(range(1, len(outs)))))
    return g


@ROUTES
def test_native_matches_python_on_a_random_5000_node_program(route):
    binary = ("add", "sub", "mul", "div", "maximum", "minimum") + (("hypot",) * (route == 1))
    graph = _random_program(5000, binary=binary)
    assert len(graph.nodes) >= 5000
    source, func_name, _ = emit_module(graph, "rand", "value")
    compiled, path = native_compile(graph, func_name, source, (None,) * 4, route)
    python, _ = jit.load_python(source, func_name)
    for point in [(0.5, -1.25, 2.0, 0.75), (-0.0, np.inf, 1.0, np.nan), (3.0, 1e-300, -7.5, 2.0)]:
        with np.errstate(all="ignore"):
            expected = python(*map(np.float64, point))
        got = compiled(*point)
        flat = lambda r: [r[0], *r[1]]  # noqa: E731
        assert all(same(a, b) for a, b in zip(flat(got), flat(expected))), point


@pytest.mark.parametrize("route", [2, 3])
def test_array_arguments_and_gradients_match_the_ordinary_path(route):
    def chain(p):
        h = 0.3
        for i in range(6):
            h = np.tanh(p[2 * i] * h + p[2 * i + 1])
        return 0.5 * (h - 0.5) ** 2

    shapes = ((12,),)
    graph, source, func_name, entry = gradc.value_and_grad(
        chain, arrays="unroll", backend="python").lower(shapes)
    compiled, _ = native_compile(graph, func_name, source, shapes, route, min_nodes=0)
    ordinary, _ = jit.load_numba(source, func_name, entry, shapes)
    p = np.linspace(-1.0, 1.5, 24)[::2]  # a strided view: the "A" layout reads strides
    (v1, g1), (v2, g2) = compiled(p), ordinary(p)
    assert same(v1, v2) and g1.shape == (12,)
    assert np.array_equal(g1, g2) and np.array_equal(np.signbit(g1), np.signbit(g2))


@pytest.mark.parametrize("route", [2, 3])
def test_matrix_views_and_matrix_results_match_the_ordinary_path(route):
    def f(m):
        return np.sum(np.sin(m) * m[::-1])

    shapes = ((3, 2),)
    J = gradc.value_and_grad(f, arrays="unroll", backend="python")
    graph, source, func_name, entry = J.lower(shapes)
    compiled, path = native_compile(graph, func_name, source, shapes, route, min_nodes=0)
    ordinary, _ = jit.load_numba(source, func_name, entry, shapes)
    m = np.arange(1.0, 25.0).reshape(4, 6)[::-1, ::2][:3, :2]  # strides of both signs
    assert m.shape == (3, 2) and not m.flags.c_contiguous
    (v1, g1), (v2, g2) = compiled(m), ordinary(m)
    assert same(v1, v2) and g1.shape == (3, 2) and np.array_equal(g1, g2)


def _compile_small(cache, monkeypatch):
    """A small program through route 2 with its cache in ``cache``."""
    monkeypatch.setenv("GRADC_CACHE_DIR", str(cache))
    J = gradc.value_and_grad(lambda a, b: a * b + a ** 3 - b / a, backend="python")
    graph, source, func_name, _ = J.lower((None, None))
    return graph, source, func_name


def _plant(cache, graph, source, func_name, payload=None, **header):
    """Write an object file where routes 2 and 3 look for this program's body; by default the
    object code of another program (returning 42.0 everywhere) under this program's symbol."""
    symbol = native._symbol(source)
    if payload is None:
        g = Graph("evil")
        g.input("a"), g.input("b")
        c = g.const(42.0)
        g.set_outputs([c, c, c], (0, (1, 2)))
        payload = native._compile_object(native._module_text(g, symbol, []), 1)
    os.makedirs(cache / "__pycache__", exist_ok=True)
    path = native._object_path(str(cache), symbol)
    native._write_object(path, symbol, payload, native._codegen_opt(graph))
    if header:
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(data.replace(*header["replace"]))
    return path


@pytest.mark.parametrize("route", [2, 3])
def test_object_code_from_a_directory_others_can_write_is_never_run(tmp_path, monkeypatch,
                                                                      route):
    cache = tmp_path / "shared"
    graph, source, func_name = _compile_small(cache, monkeypatch)
    jit.cache_dir()  # makes it, private
    _plant(cache, graph, source, func_name)
    symbol = native._symbol(source)
    native._loaded.pop(symbol, None)
    payload = native._read_object(native._object_path(str(cache), symbol), symbol,
                                  str(cache), native._codegen_opt(graph))
    assert payload is not None  # the planted file passes every check but the directory's
    os.chmod(cache, 0o777)  # now anyone could have planted that file
    with pytest.warns(gradc.CacheWarning):
        d, path = native_compile(graph, func_name, source, (None, None), route, min_nodes=0)
    assert not path.startswith(str(cache))
    assert d(2.0, 3.0)[0] == 2.0 * 3.0 + 8.0 - 1.5  # not the planted 42.0


@pytest.mark.parametrize("route", [2, 3])
def test_a_tampered_object_file_is_deleted_and_rebuilt(tmp_path, monkeypatch, route):
    cache = tmp_path / "cache"
    graph, source, func_name = _compile_small(cache, monkeypatch)
    jit.cache_dir()
    path = _plant(cache, graph, source, func_name, replace=(b"ELF", b"ELG"))  # hash now wrong
    native._loaded.pop(native._symbol(source), None)
    d, _ = native_compile(graph, func_name, source, (None, None), route, min_nodes=0)
    assert d(2.0, 3.0)[0] == 2.0 * 3.0 + 8.0 - 1.5
    with open(path, "rb") as fh:  # rewritten with the real body
        assert native._OBJECT_MAGIC in fh.read(100)
    assert native._read_object(path, native._symbol(source), str(cache),
                               native._codegen_opt(graph)) is not None


def test_a_second_process_loads_native_code_from_the_cache(tmp_path):
    script = textwrap.dedent("""
        import gradc
        from gradc import native
        J = gradc.value_and_grad(lambda a, b: a * b + a ** 3, backend="python")
        graph, source, func_name, _ = J.lower((None, None))
        compiled = []
        native._compile_object = lambda *a, c=native._compile_object: compiled.append(1) or c(*a)
        d, path = native.compile_graph(graph, func_name, source, (None, None), min_nodes=0)
        assert d(2.0, 3.0) == (14.0, (15.0, 2.0)), d(2.0, 3.0)
        assert "native object body" in open(path).readline()
        print(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()), len(compiled))
    """)
    env = dict(os.environ, GRADC_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout.split() == ["0", "1", "1"]  # compiled (wrapper and body), and saved
    assert runs[1].stdout.split() == ["1", "0", "0"]  # loaded: neither compiled again


def test_graphs_outside_the_scalar_table_are_refused():
    whole = gradc.value_and_grad(lambda x: np.sum(x * x), arrays="numpy", backend="python")
    graph, source, func_name, _ = whole.lower(((3,),))
    assert not native.supports(graph)
    assert native.compile_graph(graph, func_name, source, ((3,),), min_nodes=0) is None
    g = Graph("f")
    x = g.input("x")
    g.set_outputs([g.add("and", (x, x))], 0)  # Python's `x and x` of a float is a float
    assert not native.supports(g)
    source, func_name, _ = emit_module(g, "f", "value")
    assert native.compile_graph(g, func_name, source, (None,), min_nodes=0) is None


def test_small_programs_take_the_native_route_and_compute_what_numba_computes(monkeypatch):
    def f(a, b):
        return a * np.sin(b) + 3.0 * a / b

    J = gradc.value_and_grad(f, argnums=(0, 1))
    got = J(0.7, 1.3)
    assert J.cache_info()["runs"] == "native" and len(J.graph.nodes) < 30
    monkeypatch.setattr(native, "MIN_NODES", 10**9)  # what they took before: numba's route
    K = gradc.value_and_grad(f, argnums=(0, 1))
    assert K(0.7, 1.3) == got and K.cache_info()["runs"] == "numba"  # bit for bit
    graph, source, func_name, _ = K.lower((None, None))
    assert native.compile_graph(graph, func_name, source, (None, None)) is None


def test_supported_ops_are_ops_of_the_table():
    assert native.SUPPORTED_OPS <= set(OPS)


# --- gradc's own stages stay linear in the program's size (issue 15) ---------------------------

def _sparse_sums_graph():
    """Whole-array sums of scatters as the adjoint of reads builds them, one of them read twice
    (it must not be extended in place), sums that overlap and a difference with elements only
    its right side has."""
    g = Graph("sums")
    x = g.param("x", (5,), whole=True)
    a = g.add("getitem", (x,), ((("i", 1),),))
    b = g.add("getitem", (x,), ((("i", 3),),))
    s1 = g.add("scatter", (a,), ((("i", 1),), (5,)))
    s2 = g.add("scatter", (b,), ((("i", 3),), (5,)))
    s3 = g.add("scatter", (a,), ((("i", 3),), (5,)))
    t = g.add("add", (s1, s2))
    u = g.add("add", (t, s3))     # overlaps t at 3
    v = g.add("sub", (t, s1))     # reads t after u: u must have copied it
    w = g.add("sub", (s2, u))     # element 1 only on the right: a negation
    z = g.add("add", (g.add("zeros", (), ((5,), "float64")), s3))
    outs = [u, v, w, z]
    g.set_outputs(outs, tuple(range(len(outs))))
    return g


def test_unrolled_sums_of_scatters_match_the_whole_array_program():
    from gradc.ir import evaluate
    from gradc.unroll import unroll

    g = _sparse_sums_graph()
    x = np.array([0.5, -1.25, 2.0, 3.5, -0.75])
    whole = evaluate(g, [x])
    flat = unroll(g)
    values = evaluate(flat, [x])
    got = [values[o.id] for o in flat.outputs]
    want = np.concatenate([np.asarray(whole[o.id]).reshape(-1) for o in g.outputs])
    assert len(got) == len(want) == 20
    assert all(same(a, b) for a, b in zip(got, want)), (got, want)


# the chain is unrolled on purpose: no "use gradc.scan" hint
@pytest.mark.filterwarnings("ignore::gradc.emit.CompileTimeWarning")
def test_the_adjoint_of_many_reads_unrolls_without_dense_arrays(monkeypatch):
    """2,000 reads of p: the gradient's chain of 2,000 sums of scatters is built element by
    element; a dense array per link made unrolling quadratic (22 s at 100,000 nodes)."""
    from gradc import unroll as unroll_module

    made = []
    dense = unroll_module._Sparse.dense
    monkeypatch.setattr(unroll_module._Sparse, "dense",
                        lambda self: made.append(self.shape) or dense(self))

    def chain(p):
        h = 0.3
        for i in range(1000):
            h = np.tanh(p[2 * i] * h + p[2 * i + 1])
        return h

    J = gradc.value_and_grad(chain, arrays="unroll", backend="python")
    graph = J.lower(((2000,),))[0]
    assert len(graph.nodes) > 8000
    assert len(made) <= 2, made  # the finished gradient, once: not once per read
    p = np.linspace(0.5, 1.5, 2000)
    value, grad = J(p)
    assert np.isclose(value, chain(p))
    q = p.copy()
    q[7] += 1e-6
    assert np.isclose((chain(q) - chain(p)) / 1e-6, grad[7], rtol=1e-4, atol=1e-9)


def test_optimize_with_fewer_replays_gives_the_three_pass_result():
    """optimize folds and simplifies in one replay and skips rounds that cannot fire; the
    result is the three passes' (fold, simplify, dce, until the size stays) on each program."""
    from gradc.optimize import dce, fold, optimize, simplify
    from gradc.trace import trace

    def three_passes(graph, max_rounds=4):
        for _ in range(max_rounds):
            before = len(graph.nodes)
            graph = dce(simplify(fold(graph)))
            if len(graph.nodes) == before:
                break
        return graph

    programs = [
        lambda x, y: (x * 1.0 - 0.0) * (2.0 * 3.0) + y * 0.0,
        lambda x, y: x ** 0.0 + 2.0 + (-(-y)) + x * -1.0,     # x**0 is 1: folds next round
        lambda x, y: (x + -0.5) * (y / 1.0) + (-0.0 - x) ** 1.0,
        lambda x, y: np.where(x > y, x, y) * 1.0 + np.where(True, y, x),
        lambda x, y: x * y,                                   # nothing to do
    ]
    for f in programs:
        g = trace(f, ["x", "y"], "f")
        assert str(optimize(g)) == str(three_passes(g))
    dead = trace(lambda x, y: x * y, ["x", "y"], "f")
    dead.add("sin", (dead.inputs[0],))                        # no rule fires; dead all the same
    assert "sin" not in str(optimize(dead)) and len(optimize(dead).nodes) == 3


def test_shapes_of_replayed_nodes_follow_broadcasting():
    from gradc.errors import ShapeError

    g = Graph("f")
    x, s = g.param("x", (3,), whole=True), g.input("s")
    assert g.add("mul", (x, s)).shape == (3,) and g.add("mul", (s, s)).shape == ()
    assert g.add("add", (x, x)).shape == (3,)
    y = g.param("y", (4,), whole=True)
    with pytest.raises(ShapeError):
        g.add("add", (x, y))


def test_graph_passes_pause_the_cycle_collector_and_restore_it():
    """The passes run with Python's cycle collector off (its full collections walked every
    node of large programs), and leave it as they found it, after an error too."""
    import gc

    from gradc.ir import gc_paused

    seen = []
    g = Graph("f")
    x = g.input("x")
    g.set_outputs([g.add("sin", (x,))], 0)
    g.rebuild(lambda new, node, args: seen.append(gc.isenabled()))
    assert seen == [False] and gc.isenabled()

    @gc_paused
    def fails():
        raise KeyError("x")

    with pytest.raises(KeyError):
        fails()
    assert gc.isenabled()
    gc.disable()
    try:
        g.rebuild()
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_a_body_in_many_parts_computes_every_op_as_in_one(monkeypatch):
    """Route 2 cuts the body into parts of CHUNK_NODES nodes (one basic block of 16,677
    nodes took LLVM 1.7 s to generate code for, parts of 1,000 0.13 s): with parts of 3
    nodes, every value of the all-ops program (floats, conditions, aliases, constants)
    crosses parts, and the results are numba's ordinary ones bit for bit."""
    graph, names = _all_ops_graph(route=2)
    monkeypatch.setattr(native, "CHUNK_NODES", 3)
    keys = native._helper_keys(graph)
    text = native._module_text(graph, "gradc_body_parts_test", keys)
    computed = sum(n.op not in ("const", "alias") for n in graph.nodes)
    assert text.count('define internal void @"gradc_body_parts_test.part') == -(-computed // 3)
    source, func_name, entry = emit_module(graph, "ops_in_parts", "value")
    compiled, path = native_compile(graph, func_name, source, (None, None), 2, min_nodes=0)
    ordinary, _ = jit.load_numba(source, func_name, entry, (None, None))
    wrong = [(name, x, y, a, b) for x, y in _points()[::7]
             for name, a, b in zip(names, compiled(x, y), ordinary(x, y)) if not same(a, b)]
    assert not wrong, wrong[:10]


def _rosen_with(k):
    """A function named ``rosen`` whose body has the constant ``k``: what a user gets by
    editing the function between two runs (same name, same shapes, another program)."""
    namespace = {"np": np}
    exec(compile(textwrap.dedent(f"""
        def rosen(x):
            return np.sum({k!r} * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        """), "<edited rosen>", "exec"), namespace)
    return namespace["rosen"]


@pytest.mark.parametrize("route", ["object", "intrinsic"])
def test_an_edited_function_never_runs_the_body_compiled_before(route, monkeypatch):
    # The wrappers of the two versions read alike (name, shapes); only the body differs. With
    # the body's symbol only in the header comment, which the cache key blanks, the second
    # version loaded the first one's compiled wrapper: a wrong value in one process, a crash
    # (a call of a body never loaded) in the next.
    if route == "intrinsic":
        monkeypatch.setattr(native, "_helper_keys", lambda graph: None)
    x = np.linspace(-1.0, 1.0, 16)
    k1, k2 = (100.0, 50.0) if route == "object" else (99.0, 49.0)
    results = []
    for k in (k1, k2):
        f = gradc.value_and_grad(_rosen_with(k), arrays="unroll")
        value, grad = f(x)
        # route 3 where gradc/api.py asks for the C entry (its path: the object file)
        assert route_of(f.path) in ({1} if route == "intrinsic" else {2, 3})
        expected = gradc.value_and_grad(_rosen_with(k), backend="python", arrays="unroll")(x)
        assert value == pytest.approx(expected[0], rel=1e-14)
        np.testing.assert_allclose(grad, expected[1], rtol=1e-13)
        results.append(value)
    assert results[0] != results[1]


# --- the generated helper table and the host target, without numba (issue 15) -----------------

#: Tests of what the generated helper table holds: they need the table of the installed numba
#: and llvmlite (test_the_helper_table_is_what_the_installed_numba_generates says otherwise).
needs_table = pytest.mark.skipif(native._helper_table() is None,
                                 reason="gradc/native_helpers.py is for another numba or llvmlite")


def every_helper_graph():
    """A graph of x, y that calls every helper the generated table holds (each op with each
    kind of argument it has a helper for, every tabled int exponent, a float's truth), each
    one output (a condition through ``where``): its helper keys are the table's."""
    table = native._helper_table() or {}
    g = Graph("every_helper")
    x, y = g.input("x"), g.input("y")
    by_kind = {"f": (x, y), "b": (g.add("lt", (x, y)), g.add("gt", (y, g.const(0.5))))}
    outs = []
    for (op, kinds, k), helper in sorted(table.items(), key=repr):
        if helper is None or op == "truth":
            continue
        args = [by_kind[kind][i] for i, kind in enumerate(kinds)]
        if k is not None:
            args = [args[0], g.const(float(k))]
        node = g.add(op, tuple(args))
        outs.append(g.add("where", (node, x, y)) if node.result == "bool" else node)
    outs.append(g.add("where", (x, x, y)))  # the truth of a float
    g.set_outputs(outs, tuple(range(len(outs))))
    return g


def test_the_helper_table_is_what_the_installed_numba_generates():
    """gradc/native_helpers.py is regenerated here and compared with the file: a recipe
    changed in native.py, or another numba, without regenerating fails this test."""
    from gradc import native_helpers

    if native_helpers.STAMP != native._installed_stamp():
        # another numba or llvmlite than the table's: it must not be used, numba builds
        assert native._helper_table() is None
        assert native._helper(("exp", "f", None)) == native._build_helper(("exp", "f", None))
        return
    with open(native_helpers.__file__, encoding="utf-8") as fh:
        assert fh.read() == native.helper_table_text()
    assert native._helper_table() is native_helpers.HELPERS


@needs_table
def test_the_helper_table_holds_every_key_a_program_can_need():
    graph = every_helper_graph()
    table = native._helper_table()
    assert table is not None
    keys = set(native._helper_keys(graph))
    assert keys == {key for key, helper in table.items() if helper is not None}
    assert keys >= set(native._helper_keys(_all_ops_graph(route=2)[0]))
    assert ("pow", "f", native.MAX_TABLE_EXPONENT) in keys and ("truth", "f", None) in keys


def test_a_helper_table_of_other_versions_is_never_used(monkeypatch):
    """A stamp that is not the installed packages' (an upgraded numba): every helper is built
    with numba, and a program compiles and computes as before."""
    from gradc import native_helpers

    monkeypatch.setattr(native_helpers, "STAMP", dict(native_helpers.STAMP, numba="0.0.1"))
    monkeypatch.setattr(native, "_table", None)
    monkeypatch.setattr(native, "_helper_cache", {})
    built = []
    monkeypatch.setattr(native, "_build_helper",
                        lambda key, build=native._build_helper: built.append(key) or build(key))
    assert native._helper_table() is None
    graph = _random_program(300, seed=3, binary=("add", "mul", "div", "maximum"))
    text = native._module_text(graph, "gradc_body_stale_table", native._helper_keys(graph))
    assert built and set(built) == set(native._helper_keys(graph))
    assert 'define internal double @"gradc.div.ff"' in text


@needs_table
def test_an_exponent_past_the_table_is_built_with_numba(monkeypatch):
    key = ("pow", "f", native.MAX_TABLE_EXPONENT + 1)
    assert key not in native._helper_table()
    monkeypatch.setattr(native, "_helper_cache", {})
    assert native._helper(key) == native._build_helper(key) is not None


def test_the_host_target_is_the_one_numba_compiles_for(monkeypatch):
    """The target machine native.py makes with llvmlite alone (numba not loaded: the default
    configuration reproduced) has the CPU name and features numba's JIT codegen uses."""
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    with_numba = native._host_target()
    monkeypatch.setattr(native, "_host", None)
    monkeypatch.setattr(native, "_numba_config", lambda: None)  # as in a process without numba
    alone = native._host_target()
    for host in (with_numba, alone):
        assert host["cpu"] == codegen._get_host_cpu_name()
        assert host["features"] == codegen._tm_features
    assert str(native._machine(1).target_data) == str(codegen._tm.target_data)
    identity = native._machine_identity(1)
    assert identity["cpu"] == alone["cpu"] and identity["features"] == alone["features"]



def test_a_c_entry_the_shim_cannot_build_leaves_numbas_wrapper_in_charge(monkeypatch, caplog):
    """The shim refusing this process (its layout probes failed) is logged, and the same
    body is called through numba's wrapper (route 2): never a crash, never a wrong value."""
    from gradc import shim

    def refuse(*args, **kwargs):
        raise shim.ShimUnavailable("a layout this test pretends not to know")

    monkeypatch.setattr(shim, "make_entry", refuse)
    J = gradc.value_and_grad(lambda a, b: a * b - b / a + a ** 5, backend="python")
    graph, source, func_name, _ = J.lower((None, None))
    with caplog.at_level("WARNING", logger="gradc"):
        compiled, path = native.compile_graph(graph, func_name, source, (None, None),
                                              min_nodes=0, c_entry=True)
    assert route_of(path) == 2 and "no C entry" in caplog.text
    assert compiled(2.0, 3.0) == (2.0 * 3.0 - 1.5 + 32.0, (3.0 + 0.75 + 80.0, 2.0 - 0.5))


def test_an_edited_program_never_runs_the_c_entry_of_the_one_before():
    """Two programs of one name and signature (a function edited between two compiles):
    each C entry calls its own body (the symbol keys on the emitted source)."""
    results = []
    for k in (3.0, 4.0):
        g = Graph("edited")
        x, y = g.input("x"), g.input("y")
        g.set_outputs([g.add("mul", (g.add("add", (x, y)), g.const(k)))], 0)
        source, func_name, _ = emit_module(g, "edited", "value")
        f, _ = native_compile(g, func_name, source, (None, None), 3, min_nodes=0)
        results.append(f(1.0, 2.0))
    assert results == [9.0, 12.0]


@needs_table
@pytest.mark.parametrize("opt", [0, 1])
def test_helpers_written_in_place_compile_to_the_code_of_the_inlined_calls(monkeypatch, opt):
    """A helper of one instruction (fadd, fmul, fcmp...) is written where the body would call
    it: the object code is byte for byte the one of calling every helper and inlining it."""
    graph = every_helper_graph()
    keys = native._helper_keys(graph)
    in_place = [key for key in keys if native._in_place(key) is not None]
    assert {("mul", "ff", None), ("add", "ff", None), ("truth", "f", None)} <= set(in_place)
    assert native._in_place(("div", "ff", None)) is None  # numba's zero check: a branch
    written = native._compile_object(native._module_text(graph, "gradc_body_in_place", keys), opt)
    monkeypatch.setattr(native, "_in_place", lambda key: None)
    text = native._module_text(graph, "gradc_body_in_place", keys)
    assert 'call double @"gradc.mul.ff"' in text
    assert native._compile_object(text, opt) == written


def test_object_code_for_another_cpu_is_never_run(tmp_path, monkeypatch):
    """The object file's header names the CPU and features it was compiled for (as numba
    would choose them here); a file that names another CPU is deleted and rebuilt."""
    cache = tmp_path / "cache"
    graph, source, func_name = _compile_small(cache, monkeypatch)
    jit.cache_dir()
    cpu = native._host_target()["cpu"]
    path = _plant(cache, graph, source, func_name,
                  replace=(f'"cpu": "{cpu}"'.encode(), b'"cpu": "another-cpu"'))
    with open(path, "rb") as fh:
        assert b'"cpu": "another-cpu"' in fh.read(2000)
    native._loaded.pop(native._symbol(source), None)
    f, _ = native_compile(graph, func_name, source, (None, None), 3, min_nodes=0)
    assert f(2.0, 3.0)[0] == 2.0 * 3.0 + 8.0 - 1.5  # not the planted 42.0
    with open(path, "rb") as fh:
        assert f'"cpu": "{cpu}"'.encode() in fh.read(2000)


def test_gradc_cache_clear_removes_the_object_code(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    graph, source, func_name = _compile_small(cache, monkeypatch)
    native._loaded.pop(native._symbol(source), None)  # compiled again, into this cache
    _, path = native_compile(graph, func_name, source, (None, None), 3, min_nodes=0)
    assert os.path.dirname(path) == str(cache / "__pycache__") and os.path.isfile(path)
    removed, _ = jit.clear_cache(str(cache))
    assert removed >= 1 and not os.path.exists(path)


def test_without_a_cache_directory_the_c_entry_works_in_memory(monkeypatch):
    """No usable cache directory (jit.cache_dir() is None): the body is compiled, not saved,
    and the path says so."""
    monkeypatch.setattr(jit, "cache_dir", lambda: None)
    g = Graph("nowhere")
    x, y = g.input("x"), g.input("y")
    g.set_outputs([g.add("sub", (g.add("mul", (x, x)), y))], 0)
    source, func_name, _ = emit_module(g, "nowhere", "value")
    entry, path = native.compile_graph(g, func_name, source, (None, None), min_nodes=0,
                                       c_entry=True)
    assert path.startswith("<in memory: ") and entry.function(3.0, 1.5) == 7.5


def test_scalar_code_over_an_array_argument_takes_the_native_route_at_any_length():
    # a chain reading p[2 * i] has no array work: as fused loops it is straight-line code for
    # numba (2.2 s cold at 100 parameters, 8.6 s at 400), unrolled the native route (0.1-0.3 s)
    def chain(p):
        h = 0.3
        for i in range(p.shape[0] // 2):
            h = np.tanh(p[2 * i] * h + p[2 * i + 1])
        return 0.5 * (h - 0.5) ** 2

    p = np.linspace(-0.5, 0.9, 400)  # past UNROLL_MAX_ELEMENTS: the length is not the rule
    f = gradc.value_and_grad(chain)
    value, grad = f(p)
    assert f.cache_info()["runs"] == "native"
    want_value, want_grad = gradc.value_and_grad(chain, backend="python")(p)
    assert value == pytest.approx(want_value, rel=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-13, atol=1e-300)

    def rosen(x):  # array work: stays fused loops
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    r = gradc.value_and_grad(rosen)
    r(p)
    assert r.cache_info()["specialisations"][0]["path_kind"] == "loops"
