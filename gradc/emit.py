"""Emission: Graph -> the source of one readable Python function (and its module).

One assignment per node, in graph order; constants are written inline. Names
follow the seed: the user's own variable names where the tracer saw them, the
function's name for its result, ``dv`` for the adjoint of ``v``, and short
counters (``t0``, ``t1``) for the rest. Only identifiers that pass
``str.isidentifier`` and are not keywords ever reach the source; collisions
(an argument called ``np``, a ``dx`` beside an ``x``) are renamed, never merged.

Arrays of results start zeroed and only their nonzero entries are written (see
:func:`stores`). A program past :data:`SCAN_HINT_NODES` operations gets a one-time
:class:`CompileTimeWarning` pointing at ``gradc.scan``.
"""
from __future__ import annotations

import keyword
import math
import warnings

import numpy as np

from . import errors
from .version import __version__
from .ir import ArrayOut, Graph, gc_paused, leaves, structural_zero
from .ops import OPS
from .trace import identifier_or_none


#: A program of more operations than this gets the hint to use gradc.scan: numba compiles
#: unrolled code at a few ms per statement (issue 15: 5,003 nodes took 7.6 s), while a loop
#: kept by gradc.scan compiles its body once.
SCAN_HINT_NODES = 2000
_scan_hint_shown = False  # the hint is shown once per process


class CompileTimeWarning(UserWarning):
    """A program that numba will compile slowly, and how to write it so that it compiles fast."""


def _hint_scan(graph, fn_name, origin):
    """Warn once per process when ``graph`` is past SCAN_HINT_NODES operations (a warning,
    not a log line: it asks for a change to the user's code, and filters can silence it).
    Only for traced Python code (``origin`` known): a SymPy expression has no loop to keep."""
    global _scan_hint_shown
    if _scan_hint_shown or origin is None:
        return
    count = sum(node.op not in ("input", "const", "alias") for node in graph.nodes)
    if count <= SCAN_HINT_NODES:
        return
    _scan_hint_shown = True
    defined = f" (defined at {origin[0]}:{int(origin[1])})" if origin else ""
    message = (
        f"{fn_name}(){defined} traced to {count:,} operations, which numba compiles one "
        "statement at a time (seconds per thousand). If they repeat the steps of a Python "
        "loop, gradc.scan(step, init, xs) keeps the loop a loop and compiles its step once. "
        "gradc shows this hint once per process.")
    frame = errors.user_frame()
    if frame is None:
        warnings.warn(message, CompileTimeWarning, stacklevel=2)
    else:  # attributed to the user's line, so warning filters by module and line apply
        warnings.warn_explicit(message, CompileTimeWarning, frame.f_code.co_filename,
                               frame.f_lineno, module=frame.f_globals.get("__name__"))


def _reserved(name):
    return keyword.iskeyword(name) or name == "__debug__"


class _Namer:
    """Hands out unique identifiers: the wanted name if free, else ``name_1``, ``name_2``...

    Wanted names are taken as Python reads them (NFKC-normalised: ``ℌ`` is ``H``) and
    bounded in length (see :func:`~gradc.trace.identifier_or_none`); one that is no
    identifier, or is a keyword, gets a counter name (``t0``) instead.
    """

    def __init__(self):
        self.taken = set()
        self.counter = 0

    def fresh(self, wanted=None):
        wanted = identifier_or_none(wanted)
        if wanted is None:
            while f"t{self.counter}" in self.taken:
                self.counter += 1
            wanted = f"t{self.counter}"
            self.counter += 1
        name, k = wanted, 0
        while name in self.taken or _reserved(name):
            k += 1
            name = f"{wanted}_{k}"
        self.taken.add(name)
        return name


def assign_names(graph, result_name, namer=None):
    """Node id -> identifier for every non-constant node, and the aliases folded into their targets.

    A loop body shares its enclosing function's ``namer``, so no name is used twice.
    """
    namer, names, absorbed = namer or _Namer(), {}, set()
    uses = graph.users()
    outputs = {o.id for o in graph.outputs}
    params = [namer.fresh(identifier_or_none(name) or f"arg{p}")
              for p, (name, _) in enumerate(graph.params)]
    for node in graph.inputs:
        _, hint, p, index = node.attrs
        names[node.id] = params[p] if index is None else namer.fresh(hint)
    for node in graph.nodes:  # the user's own names first: they win every collision
        hint = graph.names.get(node.id)
        if hint and node.op not in ("input", "const", "alias") and node.id not in names:
            names[node.id] = namer.fresh(hint)
    if graph.outputs:
        value = graph.outputs[0]
        if value.op not in ("input", "const", "alias") and value.id not in names:
            names[value.id] = namer.fresh(result_name)
    for node in graph.nodes:
        if node.op != "alias" or node.id in names:
            continue
        target = node.args[0]
        if (target.op not in ("input", "const", "alias") and target.id not in names
                and uses[target.id] == 1 and target.id not in outputs):
            names[target.id] = names[node.id] = namer.fresh(node.attrs[0])
            absorbed.add(node.id)
        else:
            names[node.id] = namer.fresh(node.attrs[0])
    # keyed by the leaf itself: two array results may carry one name (an unrolled jvp's value
    # and tangent are both "out"), and each needs its own variable
    arrays = {id(leaf): namer.fresh(leaf.name) for leaf in leaves(graph.out_tree)
              if isinstance(leaf, ArrayOut)}
    for node in graph.nodes:
        if node.op not in ("const", "input") and node.id not in names:
            names[node.id] = namer.fresh()
    names["params"], names["arrays"] = params, arrays
    return names, absorbed, namer


def _nested(items, np_alias):
    if isinstance(items, list):
        return "[" + ", ".join(_nested(i, np_alias) for i in items) + "]"
    return literal(items, np_alias)


def literal(value, np_alias="np", as_int=False, dtype="float64"):
    """A Python literal for a constant (negative numbers parenthesised; arrays as np.array).

    In float32 programs, array constants are float32 too. ``as_int`` (an op's
    ``int_args``, the exponent of ``**``) writes a non-negative integral float as an
    int, so numba computes ``x ** 2`` by multiplication. Negative ones stay floats:
    numba's float ** negative int raises ZeroDivisionError at 0.0 (``0.0 ** -2``)
    even under ``error_model="numpy"``, where pow, NumPy and the Python backend give inf.
    """
    if isinstance(value, np.ndarray):
        kind = "bool" if value.dtype == bool else dtype
        suffix = "" if kind == "float64" else f", dtype={np_alias}.{kind}"
        return f"{np_alias}.array({_nested(value.tolist(), np_alias)}{suffix})"
    if isinstance(value, bool):
        return repr(value)
    if math.isnan(value):
        return f"{np_alias}.nan"
    if math.isinf(value):
        return f"{np_alias}.inf" if value > 0 else f"(-{np_alias}.inf)"
    whole = as_int and value.is_integer() and 0 <= value < 2**31
    text = str(int(value)) if whole else repr(value)
    return f"({text})" if text.startswith("-") else text


def _arg_text(arg, names, np_alias, as_int, dtype="float64", strong=False):
    """An argument as source. ``strong``: a scalar constant written ``np.float32(c)`` (or
    ``np.float64(c)``): in a float32 program where it would otherwise make a float64 array
    (np.where, broadcast_to); in scalar code where an op may return it as it is (``where``,
    ``maximum``: a Python float 0.0 would make ``1.0 / t`` raise ZeroDivisionError in the
    Python backend, where numba and NumPy give inf)."""
    if arg.op == "const":
        text = literal(arg.attrs[0], np_alias, as_int, dtype)
        if strong and isinstance(arg.attrs[0], float) and not text.startswith(np_alias):
            return f"{np_alias}.{dtype}({text})"
        return text
    return names[arg.id]


def _return_text(tree, graph, names, np_alias):
    if isinstance(tree, tuple):
        inner = ", ".join(_return_text(t, graph, names, np_alias) for t in tree)
        return f"({inner},)" if len(tree) == 1 else f"({inner})"
    if isinstance(tree, ArrayOut):
        return names["arrays"][id(tree)]
    node = graph.outputs[tree]
    text = _arg_text(node, names, np_alias, False)
    return f"{np_alias}.array({text})" if _borrowed(node) else text


def _borrowed(node):
    """True for an array output that is (a view of) an input, a constant or a read-only broadcast."""
    if not node.shape:
        return False
    while node.op in ("alias", "reshape", "transpose", "getitem"):
        node = node.args[0]
    return node.op in ("input", "const", "broadcast_to")


def _index_text(index):
    return ", ".join(map(str, index))


def stores(graph, leaf):
    """The entries of ArrayOut ``leaf`` that are written, as ``(output index, positions)``.

    Structural zeros are left out. Positions that share an output index (the two halves
    of a symmetric pair in a Hessian) form one group, written from one value; groups come
    in the C order of their first position, so the source is deterministic.
    """
    groups = {}
    for i, index in zip(leaf.indices, np.ndindex(*leaf.shape)):
        if not structural_zero(graph.outputs[i]):
            groups.setdefault(i, []).append(index)
    return list(groups.items())


def _array_lines(graph, names, np_alias, out_params=False):
    """Statements that gather array-valued outputs (gradients, Hessians, Jacobians).

    An array with structural zeros starts zeroed in one statement (``np.zeros``, or
    ``fill(0.0)`` for the caller's array with ``out_params``) and only its other entries
    are written: numba's compile time grows steeply with the number of stores, and a
    Hessian is mostly zeros. An array without any is allocated uninitialised. Entries
    of one value are one chained assignment: ``H[0, 1] = H[1, 0] = t3``.
    """
    lines = []
    for leaf in leaves(graph.out_tree):
        if isinstance(leaf, ArrayOut):
            name = names["arrays"][id(leaf)]
            shape = leaf.shape[0] if len(leaf.shape) == 1 else leaf.shape
            groups = stores(graph, leaf)
            zeroed = sum(len(positions) for _, positions in groups) < len(leaf.indices)
            if not out_params:
                lines.append(f"    {name} = {np_alias}.{'zeros' if zeroed else 'empty'}({shape})")
            elif zeroed:
                lines.append(f"    {name}.fill(0.0)")
            for i, positions in groups:
                value = _arg_text(graph.outputs[i], names, np_alias, False)
                targets = " = ".join(f"{name}[{_index_text(index)}]" for index in positions)
                lines.append(f"    {targets} = {value}")
    return lines


def emit_function(graph, func_name, result_name=None):
    """The ``def`` of the fused function alone (no imports; NumPy is ``np`` unless a
    local takes that name). ``print(graph)`` shows this."""
    return _emit(graph, func_name, result_name or graph.name)[0]


def out_arrays(graph):
    """The ArrayOut leaves of the result, in order: what ``out_params`` turns into parameters."""
    return [leaf for leaf in leaves(graph.out_tree) if isinstance(leaf, ArrayOut)]


def statements(graph, names, absorbed, namer, np_alias):
    """One statement per node (loops: several), unindented."""
    lines = []
    for node in graph.nodes:
        if node.op in ("input", "const") or node.id in absorbed:
            continue
        op = OPS[node.op]
        if node.op in ("scan", "scan_bwd"):
            lines.extend(_loop(graph, node, names, namer, np_alias))
            continue
        # constants an op may pass on as they are (conditional expressions) stay NumPy floats
        selects = " if " in op.template and not node.shape
        strong = (op.shape is not None or op.name == "where") and graph.dtype != "float64" \
            or selects
        args = [_arg_text(a, names, np_alias, i in op.int_args, graph.dtype, strong)
                for i, a in enumerate(node.args)]
        if op.statement:
            text = op.render(args, node.attrs, np_alias, out=names[node.id], dtype=graph.dtype)
            lines.extend(text.split("\n"))
        else:
            text = op.render(args, node.attrs, np_alias, is_array=node.shape != ())
            lines.append(f"{names[node.id]} = {text}")
    return lines


def _loop(graph, node, names, namer, np_alias):
    """A scan as a ``for`` loop storing each step's carry; its reverse as a loop walking them back.

    The body's statements are emitted inside the loop, its parameters bound to
    the carry, this step's slices of ``xs`` and the captured outer values.
    """
    body, length = node.attrs
    g = body.graph
    bnames, babsorbed, _ = assign_names(g, "step", namer)
    text = lambda n, nm=names, gr=graph: _arg_text(n, nm, np_alias, False, gr.dtype, True)  # noqa: E731
    args = [text(a) for a in node.args]
    dt = "" if graph.dtype == "float64" else f", {np_alias}.{graph.dtype}"
    t, out = namer.fresh("t"), names[node.id]
    inner = lambda binds: [f"    {bnames[p.id]} = {b}" for p, b in zip(g.inputs, binds)] + [  # noqa: E731
        "    " + line for line in statements(g, bnames, babsorbed, namer, np_alias)]
    results = [text(o, bnames, g) for o in g.outputs]
    xs = args[1:1 + body.n_xs]
    if node.op == "scan":
        carry, states = namer.fresh(f"{out}_carry"), namer.fresh(f"{out}_states")
        caps = args[1 + body.n_xs:]
        return [f"{carry} = {args[0]}",
                f"{states} = {np_alias}.empty({(length,) + node.args[0].shape}{dt})",
                f"for {t} in range({length}):  # the loop gradc.scan keeps",
                f"    {states}[{t}] = {carry}",
                *inner([carry, *(f"{x}[{t}]" for x in xs), *caps]),
                f"    {carry} = {results[0]}",
                f"{out} = ({carry}, {states})"]
    # scan_bwd: args are (cotangent, init, xs..., captures..., states)
    caps, states = args[2 + body.n_xs:-1], args[-1]
    xs = args[2:2 + body.n_xs]
    dc = namer.fresh(f"{out}_dcarry")
    dxs = [namer.fresh(f"{out}_dx{k}") for k in range(len(xs))]
    dcaps = [namer.fresh(f"{out}_dc{k}") for k in range(len(caps))]
    shapes = [a.shape for a in node.args[2:-1]]
    zeros = lambda shape: f"{np_alias}.zeros({shape}{dt})" if shape else "0.0"  # noqa: E731
    lines = [f"{dc} = {args[0]}"]
    lines += [f"{d} = {zeros(s)}" for d, s in zip(dxs + dcaps, shapes)]
    lines += [f"for {t} in range({length - 1}, -1, -1):  # the reverse of the loop above",
              *inner([f"{states}[{t}]", *(f"{x}[{t}]" for x in xs), *caps, dc]),
              f"    {dc} = {results[0]}"]
    lines += [f"    {d}[{t}] = {r}" for d, r in zip(dxs, results[1:])]
    lines += [f"    {d} = {d} + {r}" for d, r in zip(dcaps, results[1 + len(xs):])]
    lines.append(f"{out} = ({', '.join([dc, *dxs, *dcaps])})")
    return lines


def _emit(graph, func_name, result_name, out_params=False):
    names, absorbed, namer = assign_names(graph, result_name)
    np_alias = namer.fresh("np")
    if out_params:
        names["params"] = names["params"] + [names["arrays"][id(a)] for a in out_arrays(graph)]
    params = ", ".join(names["params"])
    lines = [f"def {func_name}({params}):"]
    uses = graph.users()
    for node in graph.inputs:
        _, _, p, index = node.attrs
        if index is not None and uses[node.id]:
            lines.append(f"    {names[node.id]} = {names['params'][p]}[{_index_text(index)}]")
    lines.extend("    " + line for line in statements(graph, names, absorbed, namer, np_alias))
    lines.extend(_array_lines(graph, names, np_alias, out_params))
    ret = _return_text(graph.out_tree, graph, names, np_alias)
    if isinstance(graph.out_tree, tuple):
        ret = ret[1:-1].rstrip(",") if len(graph.out_tree) > 1 else ret
    lines.append(f"    return {ret}")
    return "\n".join(lines) + "\n", np_alias, namer, names["params"]


def module_header(kind, fn_name, origin=None, how=""):
    """The two comment lines that open every emitted module: what it is, where it came from
    (the origin's file name through ``ascii``, so no user text can end the comment)."""
    where = f" from {ascii(origin[0])}, line {int(origin[1])}" if origin else ""
    return [f"# Generated by gradc {__version__}: {kind} of {fn_name}{where}{how}.",
            "# gradc rewrites this file from the traced function; edits here are not kept."]


@gc_paused
def emit_module(graph, fn_name, kind, origin=None, out_params=False):
    """The full module source: header comment, import, the fused function and its entry point.

    Returns ``(source, function_name, entry_name)``. The entry point has a default
    for every parameter and a ``*extra`` tail so that numba hands a call with the
    wrong number of arguments back to gradc instead of raising its own TypeError;
    it inlines away. With ``out_params`` the gradient arrays are extra parameters
    the function writes into (see :func:`out_arrays`).
    """
    # The name as Python will define it (normalised) and short enough for numba's cache file
    # names; gradc looks the function up under the name returned here.
    func_name = identifier_or_none(f"{fn_name}__{kind}" + ("__out" if out_params else "")) or "f"
    _hint_scan(graph, fn_name, origin)
    body, np_alias, namer, params = _emit(graph, func_name, fn_name, out_params)
    # Module-level names must not be shadowed by any local of either function.
    for p in params:
        namer.taken.add(p)
    if func_name in namer.taken:
        func_name_new = namer.fresh(func_name)
        body = body.replace(f"def {func_name}(", f"def {func_name_new}(", 1)
        func_name = func_name_new
    else:
        namer.taken.add(func_name)
    entry_name = namer.fresh(f"{func_name}__entry")
    extra = namer.fresh("extra")
    defaults = ", ".join(f"{p}=None" for p in params)
    head = f"({defaults}, *{extra})" if params else f"(*{extra})"
    src = [
        *module_header(kind, fn_name, origin),
        f"import numpy as {np_alias}" if np_alias == "np" else f"import numpy as {np_alias}  # `np` is a user name here",
        "",
        "",
        body.rstrip("\n"),
        "",
        "",
        f"def {entry_name}{head}:",
        "    # Entry point for numba: defaults and *extra let gradc report wrong arguments.",
        f"    return {func_name}({', '.join(params)})",
        "",
    ]
    return "\n".join(src), func_name, entry_name


def _paths(tree, prefix=""):
    """``(output index, access path)`` for every leaf: ``(1, "[1][0]")`` for da in (J, (da, db))."""
    if isinstance(tree, tuple):
        for k, sub in enumerate(tree):
            yield from _paths(sub, f"{prefix}[{k}]")
    else:
        yield tree, prefix


def emit_batched(source, graph, func_name, params, batched, parallel=True):
    """Append to ``source`` a loop that applies ``func_name`` at many points.

    ``batched[k]`` says whether parameter k is mapped: an array whose first axis runs
    over the points, so that point ``i`` gets ``x[i]`` (a float of a 1-D array, a row
    view of an ``(N, d)`` one); else it is shared, passed whole to every point (a float
    or an array). Each output leaf gets an out array whose ``[i]`` receives point i's
    result (a float, or an array written into that row).
    Returns ``(source, batched_name)``. The loop is a ``prange``: numba spreads
    it over the cores; in plain Python ``prange`` is ``range``. With
    ``parallel=False`` the loop is a plain ``range`` (and the source differs, so
    numba's cache never confuses the two).
    """
    namer = _Namer()
    namer.taken.update({func_name, "prange", "np"})
    batched_name = namer.fresh(f"{func_name}__batched")
    names = [namer.fresh(p) for p in params]
    n, i, r = namer.fresh("n"), namer.fresh("i"), namer.fresh("r")
    leaves = list(_paths(graph.out_tree))
    outs = [namer.fresh(f"out{k}") for k in range(len(leaves))]
    call_args = ", ".join(f"{p}[{i}]" if b else p for p, b in zip(names, batched))
    lines = [
        "",
        "",
        "try:  # numba spreads prange loops over the cores; plain Python runs them in order",
        "    from numba import prange",
        "except ImportError:",
        "    prange = range",
        "",
        "",
        f"def {batched_name}({', '.join([n, *names, *outs])}):",
        "    # One point per iteration (mapped arguments indexed by it, shared ones whole),",
        "    # results written into the caller's arrays (array results into their rows).",
        f"    for {i} in {'prange' if parallel else 'range'}({n}):",
        f"        {r} = {func_name}({call_args})",
    ]
    lines += [f"        {out}[{i}] = {r}{path}" for out, (_, path) in zip(outs, leaves)]
    return source + "\n".join(lines) + "\n", batched_name


# The IR prints as the program it is (``print(graph)``); it cannot import this module.
Graph.printer = staticmethod(lambda graph: emit_function(graph, graph.name).rstrip("\n"))
