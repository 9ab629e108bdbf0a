"""The IR: an ordered, hash-consed SSA graph of scalar operations.

A :class:`Graph` is a list of :class:`Node` in definition order. Building the
same ``(op, inputs, attrs)`` twice returns the same node, so common
subexpressions are shared by construction — across the forward sweep and the
adjoints alike. Everything is ordered (lists, insertion-ordered dicts, counters),
so the same program always gives the same graph and byte-identical source.

>>> g = Graph("f")
>>> x, y = g.input("x"), g.input("y")
>>> a = g.add("mul", (x, y)); b = g.add("mul", (x, y))
>>> a is b
True
>>> g.set_outputs([g.add("add", (a, g.const(1.0)))], 0)
>>> print(g)
def f(x, y):
    t0 = x * y
    f = t0 + 1.0
    return f
"""
from __future__ import annotations

import functools
import gc
from dataclasses import dataclass

import numpy as np

from .ops import OPS


class Node:
    """One SSA value: ``op`` applied to ``args`` (nodes) with ``attrs`` (hashable constants).

    Special ops: ``input`` (attrs: position, name, parameter number, element index or None)
    and ``const`` (attrs: value).
    """

    __slots__ = ("id", "op", "args", "attrs", "result", "shape")

    def __init__(self, id, op, args, attrs, result, shape=()):
        self.id, self.op, self.args, self.attrs, self.result = id, op, args, attrs, result
        self.shape = shape  # () for a scalar; arrays traced whole carry their shape

    @property
    def value(self):
        """The constant this node stands for (seeing through aliases), or None."""
        node = self
        while node.op == "alias":
            node = node.args[0]
        return node.attrs[0] if node.op == "const" else None

    def __repr__(self):
        return f"Node({self.id}, {self.op}, {[a.id for a in self.args]}, {self.attrs})"


def resolve(node):
    """The node an alias chain stands for (aliases only carry names)."""
    while node.op == "alias":
        node = node.args[0]
    return node


def gc_paused(fn):
    """``fn`` with Python's cycle collector paused while it runs (restored after, nesting
    allowed). Graph passes build hundreds of thousands of acyclic objects (nodes, keys,
    tuples), and each full collection walks every live one: measured on a 100,000-node
    program, a third of the passes' time went to the collector. Reference counting still
    frees everything as usual; cycles wait for the next collection after the pass."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
    return paused


def _shape_of(spec, attrs, args):
    """The shape of ``spec``'s result on ``args``. An elementwise op of arguments of one shape
    (scalars above all) has that shape; NumPy's broadcasting rules decide the rest."""
    if spec.shape is None and args:
        first = args[0].shape
        for a in args:
            if a.shape != first:
                break
        else:
            return first
    return spec.shape_of(attrs, [a.shape for a in args])


def structural_zero(node):
    """True for a node that is the constant +0.0 whatever the arguments: an entry of an
    array result that is never stored (the array starts zeroed; see gradc.emit) and
    that a sparse result leaves out (gradc.higher). -0.0 is stored: its sign survives."""
    value = node.value
    return isinstance(value, float) and value == 0.0 and not np.signbit(value)


@dataclass(frozen=True)
class ArrayOut:
    """A leaf of ``Graph.out_tree``: an array of ``shape`` built from ``outputs[i] for i in indices``
    (C order), named ``name`` in emitted source."""

    name: str
    shape: tuple
    indices: tuple


class Body:
    """A graph used as an op's attribute (a loop body): hashed by identity, printed by name.

    ``reverse`` is the body's reverse-mode graph (a Body), which :mod:`gradc.ad` gives it
    before the loop's vjp rule runs: the op table sits below ``ad`` and cannot import it.
    """

    __slots__ = ("graph", "n_xs", "reverse")

    def __init__(self, graph, n_xs=0):
        self.graph, self.n_xs = graph, n_xs  # parameters: carry, n_xs per-step slices, captures
        self.reverse = None

    def run(self, args):
        """The body's outputs at ``args`` (NumPy semantics): the loop ops' interpreter."""
        values = evaluate(self.graph, args)
        return [values[o.id] for o in self.graph.outputs]

    def __repr__(self):
        return f"<body {self.graph.name}>"


def evaluate(graph, args):
    """Node id -> value of every node of ``graph`` at ``args`` (one value per parameter),
    computed in Python with NumPy semantics (the interpreter behind ``explain``)."""
    values = {}
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            if node.op == "input":
                _, _, p, index = node.attrs
                values[node.id] = (np.float64(args[p]) if not node.shape and index is None
                                   else args[p] if index is None else np.float64(args[p][index]))
            elif node.op == "const":
                values[node.id] = node.attrs[0]
            else:
                values[node.id] = OPS[node.op].compute([values[a.id] for a in node.args],
                                                       node.attrs)
    return values


def leaves(tree):
    """The leaves of an ``out_tree`` (ints and ArrayOuts), in order, nested tuples flattened."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(reversed(item))
        else:
            yield item


class Graph:
    """An ordered SSA program with inputs, outputs and name hints.

    ``outputs`` is a flat list; ``out_tree`` says how they nest in the return
    value: an int indexes ``outputs``, a tuple is a Python tuple.
    ``names`` maps node ids to the user's variable names, where known.
    ``params`` lists the function's parameters as ``(name, shape)``; shape None is
    a scalar (one input node), an array parameter has one input node per element.
    """

    def __init__(self, name="f", origin=None):
        self.name = name
        self.origin = origin            # (filename, lineno) of the traced function, or None
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.params: list[tuple] = []
        self.whole_params: set[int] = set()  # array parameters traced whole (NumPy-level)
        self.dtype = "float64"  # of the array arguments: "float32" keeps NumPy-level code in float32
        self.outputs: list[Node] = []
        self.out_tree = 0
        self.names: dict[int, str] = {}
        self._memo: dict[tuple, Node] = {}
        self.parent = None                   # a loop body's enclosing graph, while it is traced
        self.captures: list[Node] = []       # outer nodes a body uses: its parameters after xs
        # NumPy arrays the traced function reads from outside its arguments, each a hidden
        # parameter passed at call time (trace.CapturedArray: position, array, lookup)
        self.captured_arrays: list = []

    # --- building -------------------------------------------------------------------
    def _new(self, op, args, attrs, result, shape=()):
        node = Node(len(self.nodes), op, args, attrs, result, shape)
        self.nodes.append(node)
        return node

    def param(self, name, shape=None, whole=False):
        """Declare a parameter: its input node, or (for an array) its element nodes in C order.

        With ``whole``, an array parameter is one input node of its shape (the
        NumPy-level form) instead of one node per element (the unrolled form).
        """
        p = len(self.params)
        self.params.append((name, None if shape is None else tuple(shape)))
        if shape is None:
            return self._input(name, p, None)
        if whole:
            self.whole_params.add(p)
            return self._input(name, p, None, tuple(shape))
        return [self._input(f"{name}_{'_'.join(map(str, i))}", p, i) for i in np.ndindex(*shape)]

    def input(self, name):
        """A scalar parameter."""
        return self.param(name)

    def leaf_shape(self, leaf):
        """The shape of a leaf of ``out_tree``: an :class:`ArrayOut`'s, or its output node's
        (``()`` for a float)."""
        return tuple(leaf.shape if isinstance(leaf, ArrayOut) else self.outputs[leaf].shape)

    def param_inputs(self, p):
        """The input nodes of parameter ``p``."""
        return [n for n in self.inputs if n.attrs[2] == p]

    def _input(self, name, p, index, shape=()):
        node = self._new("input", (), (len(self.inputs), name, p, index), "float", shape)
        self.inputs.append(node)
        self.names[node.id] = name
        return node

    def const(self, value):
        """A constant: a float, a bool, or a (read-only copy of an) array."""
        if isinstance(value, np.ndarray) and value.shape != ():
            value = np.array(value, dtype=bool if value.dtype == bool else np.float64)
            value.setflags(write=False)
            key = ("const", value.dtype.str, value.shape, value.tobytes())
            result, shape = ("bool" if value.dtype == bool else "float"), value.shape
        else:
            if isinstance(value, np.ndarray):
                value = value.item()
            value = bool(value) if isinstance(value, (bool, np.bool_)) else float(value)
            key = ("const", type(value).__name__, repr(value))
            result, shape = ("bool" if isinstance(value, bool) else "float"), ()
        node = self._memo.get(key)
        if node is None:
            node = self._memo[key] = self._new("const", (), (value,), result, shape)
        return node

    def add(self, op, args, attrs=()):
        """The node for ``op(*args)``, reusing an existing one when it is the same value.

        Aliases are seen through in the key: ``du * c`` and ``dv * c`` are one
        node when ``du`` is an alias of ``dv``.
        """
        spec = OPS[op]
        if spec.arity is not None and len(args) != spec.arity:
            raise ValueError(f"{op} takes {spec.arity} arguments, got {len(args)}")
        return self._add(spec, op, args, attrs)

    def _add(self, spec, op, args, attrs):
        """:meth:`add` for arguments already checked (a replayed node's)."""
        # Every node of every pass is built here: keep it free of per-node NumPy calls.
        if op == "alias":
            key = (op, (args[0].id,), attrs)
        else:
            key = (op, tuple([a.id if a.op != "alias" else resolve(a).id for a in args]), attrs)
        node = self._memo.get(key)
        if node is None:
            node = self._memo[key] = self._new(op, tuple(args), attrs, spec.result,
                                               _shape_of(spec, attrs, args))
        return node

    def set_outputs(self, outputs, out_tree):
        self.outputs, self.out_tree = list(outputs), out_tree

    def name_of(self, node):
        return self.names.get(node.id)

    # --- passes ---------------------------------------------------------------------
    @gc_paused
    def rebuild(self, rule=None, keep=None):
        """A new graph made by replaying this one node by node.

        ``rule(new_graph, node, new_args)`` may return a replacement node (or None
        to keep the op); ``keep`` (a set of node ids) drops every other non-input
        node. Replaying through the hash-consing builder also merges duplicates.
        """
        new = Graph(self.name, self.origin)
        new.params, new.whole_params = list(self.params), set(self.whole_params)
        new.dtype, new.captures = self.dtype, list(self.captures)
        new.captured_arrays = list(self.captured_arrays)
        mapped: dict[int, Node] = {}
        for node in self.nodes:
            if node.op == "input":
                out = new._input(*node.attrs[1:], node.shape)
            elif keep is not None and node.id not in keep:
                continue
            elif node.op == "const":
                out = new.const(node.attrs[0])
            else:
                args = tuple([mapped[a.id] for a in node.args])
                out = rule(new, node, args) if rule else None
                if out is None:
                    out = new._add(OPS[node.op], node.op, args, node.attrs)
            mapped[node.id] = out
            hint = self.names.get(node.id)
            if hint is not None and out.op not in ("input", "const"):
                new.names.setdefault(out.id, hint)
        new.set_outputs([mapped[o.id] for o in self.outputs], self.out_tree)
        return new

    def copy(self):
        return self.rebuild()

    def users(self):
        """Node id -> number of uses (by other nodes and as outputs)."""
        count = {n.id: 0 for n in self.nodes}
        for n in self.nodes:
            for a in n.args:
                count[a.id] += 1
        for o in self.outputs:
            count[o.id] += 1
        return count

    #: ``printer(graph) -> str``: gradc.emit installs its emitter here (emit sits above the IR,
    #: so the IR cannot import it); without it a graph prints as a plain list of nodes.
    printer = None

    def __str__(self):
        if Graph.printer is None:
            return "\n".join(map(repr, self.nodes))
        return Graph.printer(self)

    __repr__ = __str__
