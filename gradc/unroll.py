"""Unrolling, a pure ``Graph -> Graph`` pass: arrays traced whole become scalar code.

An array of a fixed, small shape is cheapest as one scalar variable per element: numba
keeps them in registers, and a Hessian or a Jacobian is built entry by entry from them.
This pass turns a graph whose arrays are traced whole (nodes with shapes) into the same
program over scalars: each array parameter becomes one input per element (C order), each
array node an object array of scalar nodes, each op its scalar form element by element
(``sum`` a chain of additions, ``@`` sums of products, slicing and broadcasting pure index
bookkeeping). Tracing has one mode; whether a program runs unrolled is this pass's
caller's choice, by size.

An element that no write reaches (the zeros a ``scatter`` starts from) is *absent*, not a
0.0 node: adding it is no operation, so the adjoint of ``x[1:]`` and ``x[:-1]`` sums only
the two contributions each element really has. It becomes 0.0 only where a value needs it.
So an unrolled gradient can read -0.0 where the array code (0.0 + -0.0) reads +0.0.

>>> import numpy as np
>>> from gradc.trace import trace
>>> g = trace(lambda x: np.sum(x[1:] * x[:-1]), [("x", (3,), True)], "f")
>>> print(unroll(g))
def f(x):
    x_0 = x[0]
    x_1 = x[1]
    x_2 = x[2]
    t0 = x_1 * x_0
    t1 = x_2 * x_1
    f = t0 + t1
    return f
"""
from __future__ import annotations

import numpy as np

from .ir import ArrayOut, Graph, gc_paused
from .ops import OPS, python_index


class UnrollError(Exception):
    """The graph holds an op this pass has no scalar form for (the caller keeps it whole)."""


_ELEMENTWISE = {name for name, op in OPS.items()
                if op.shape is None and op.arity and op.result != "tuple"}
_STRUCTURAL = {"getitem", "broadcast_to", "fill", "transpose", "reshape", "scatter",
               "concatenate", "stack", "pack", "setitem", "zeros", "sum", "max", "min",
               "matmul", "count", "custom"}  # a user-defined rule: one scalar custom node per element


def size_of(graph):
    """How many scalar nodes the unrolled program would hold at most (one per element)."""
    return sum(int(np.prod(n.shape)) if n.shape else 1 for n in graph.nodes)


def _without_scalar_form(graph):
    """The ops of ``graph`` this pass has no scalar form for, sorted."""
    return sorted({n.op for n in graph.nodes if not (
        n.op in ("input", "const", "alias") or n.op in _ELEMENTWISE or n.op in _STRUCTURAL)})


def can_unroll(graph):
    """True when every op of ``graph`` has a scalar form here."""
    return not _without_scalar_form(graph)


@gc_paused
def unroll(graph):
    """``graph`` with every array traced whole unrolled into scalar nodes (see the module)."""
    bad = _without_scalar_form(graph)
    if bad:
        raise UnrollError(f"no scalar form for {', '.join(bad)}")
    return _Unroller(graph).run()


class _Unroller:
    def __init__(self, graph):
        self.src = graph
        self.g = Graph(graph.name, graph.origin)
        self.g.dtype = graph.dtype
        self.g.captured_arrays = list(graph.captured_arrays)
        self.value = {}  # source node id -> new scalar node, or object array of them (None: absent)
        self._uses = graph.users()  # how many nodes read each value: a sum may reuse a dead one's
        self._flat_ids = {}         # shape -> its flat indices as an array (scatter's positions)

    def run(self):
        src, g = self.src, self.g
        for p, (name, shape) in enumerate(src.params):
            made = g.param(name, shape)
            inputs = src.param_inputs(p)
            if shape is None or p not in src.whole_params:  # already scalar inputs
                for old, new in zip(inputs, [made] if shape is None else made):
                    self.value[old.id] = new
            else:
                self.value[inputs[0].id] = _array(made, shape)
        for node in src.nodes:
            if node.op != "input":
                value = self._node(node)
                # a scalar is its node (index bookkeeping may leave it in a 0-d array)
                self.value[node.id] = value if node.shape else _result(value)
        self._name_elements()
        return self._outputs()

    # --- one node -------------------------------------------------------------------------
    def _node(self, node):
        g, op = self.g, node.op
        if op == "const":
            v = node.attrs[0]
            if not node.shape:
                return g.const(v)
            return _array([g.const(x.item()) for x in v.reshape(-1)], node.shape)
        args = [self.value[a.id] for a in node.args]
        if op == "alias":
            return self._alias(node, args[0])
        if op in _ELEMENTWISE:
            return self._elementwise(node, args)
        return getattr(self, "_" + op)(node, *args)

    def _alias(self, node, x):
        if not node.shape:
            return self.g.add("alias", (self._present(x),), node.attrs)
        return x  # an array's name: its elements are named when the outputs are made

    def _elementwise(self, node, args):
        g, op = self.g, node.op
        if not node.shape:
            return g.add(op, tuple(self._present(a) for a in args), node.attrs)
        if op in ("add", "sub") and all(isinstance(a, _Sparse) and a.shape == node.shape
                                        for a in args):
            return self._sparse_sum(node, op, *args)
        spread = [np.broadcast_to(_as_array(a), node.shape) for a in args]
        if op in ("add", "sub"):
            return self._sum_of_parts(op, *spread)
        out = np.empty(node.shape, dtype=object)
        for idx in np.ndindex(*node.shape):
            items = [a[idx] for a in spread]
            out[idx] = self._scalar_op(op, items, node.attrs)
        return out

    def _sum_of_parts(self, op, a, b):
        """``a + b`` or ``a - b`` element by element, where absent elements cost nothing: the
        adjoint of many reads (``x[i]`` in a Python loop) is a sum of scatters that each write
        one element, so only the elements both write become nodes (found by NumPy, not by a
        Python loop over every element: that made unrolling quadratic in the array's size)."""
        a_absent, b_absent = np.equal(a, None), np.equal(b, None)
        out = np.where(b_absent, a, b if op == "add" else None)
        if op == "sub":
            for k in np.flatnonzero(a_absent & ~b_absent):
                out.flat[k] = self.g.add("neg", (b.flat[k],))
        for k in np.flatnonzero(~a_absent & ~b_absent):
            out.flat[k] = self.g.add(op, (a.flat[k], b.flat[k]))
        return out

    def _sparse_sum(self, node, op, a, b):
        """``a + b`` or ``a - b`` of two sparse arrays (see _Sparse), at a cost of the elements
        ``b`` writes: the adjoint of many reads is a chain ``((s0 + s1) + s2) + ...`` of
        scatters, and each link adds one element to the sum so far. The sum so far is
        extended in place when nothing else reads it (the chain's links); else copied.
        Nodes are made in the order _sum_of_parts makes them (flat order: for ``a - b`` the
        negations first), so both give the same program."""
        left = node.args[0]
        own = (a.owner == left.id and self._uses[left.id] == 1
               and left.id not in self.src.names and left not in self.src.outputs)
        items = a.items if own else dict(a.items)
        both = sorted(k for k in b.items if k in items)
        if op == "sub":
            for k in sorted(k for k in b.items if k not in items):
                items[k] = self.g.add("neg", (b.items[k],))
        else:
            for k, v in b.items.items():
                if k not in items:
                    items[k] = v
        for k in both:
            items[k] = self.g.add(op, (items[k], b.items[k]))
        return _Sparse(node.shape, items, node.id)

    def _scalar_op(self, op, items, attrs):
        if op in ("add", "sub") and items[1] is None:
            return items[0]            # x + (absent) is x
        if op == "add" and items[0] is None:
            return items[1]
        if op == "neg" and items[0] is None:
            return None
        return self.g.add(op, tuple(self._present(x) for x in items), attrs)

    def _present(self, x):
        """An element as a node: an absent one is 0.0 where a value needs it."""
        return self.g.const(0.0) if x is None else x

    # --- structure: pure index bookkeeping on object arrays ---------------------------------
    def _getitem(self, node, x):
        return _result(_as_array(x)[python_index(node.attrs[0])])

    def _broadcast_to(self, node, x):
        return np.array(np.broadcast_to(_as_array(x), node.attrs[0]), dtype=object)

    def _fill(self, node, x):
        return np.array(np.broadcast_to(_as_array(x), node.attrs[0]), dtype=object)

    def _transpose(self, node, x):
        return np.transpose(_as_array(x), node.attrs[0])

    def _reshape(self, node, x):
        return _result(np.reshape(_as_array(x), node.attrs[0]))

    def _scatter(self, node, g):
        """``g`` written into zeros of the node's shape, as a _Sparse array (cost: the
        elements written, not the array's size)."""
        index, shape = node.attrs
        ids = self._flat_ids.get(shape)
        if ids is None:
            ids = self._flat_ids[shape] = np.arange(int(np.prod(shape))).reshape(shape)
        positions = ids[python_index(index)]  # a view: basic indexing
        if not isinstance(positions, np.ndarray):  # one element (the adjoint of x[i])
            g = _result(g)
            return _Sparse(tuple(shape), {} if g is None else {int(positions): g}, node.id)
        values = np.broadcast_to(_as_array(g), positions.shape)
        items = {k: v for k, v in zip(positions.reshape(-1).tolist(), values.reshape(-1))
                 if v is not None}
        return _Sparse(tuple(shape), dict(sorted(items.items())), node.id)

    def _pack(self, node, *xs):
        """The vector of scalars: its elements are the scalars themselves."""
        return _array(list(xs), node.shape)

    def _setitem(self, node, x, v):
        """``x`` with ``v`` written at the index (item assignment, ``y[0] = t``): a copy of
        ``x``'s elements with ``v``'s broadcast into the indexed part (``x`` may be a view
        other nodes read, so it is never written itself)."""
        out = np.array(_as_array(x), dtype=object)  # a copy
        index = python_index(node.attrs[0])
        part = out[index]
        if isinstance(part, np.ndarray):
            out[index] = np.broadcast_to(_as_array(v), part.shape)
        else:  # one element (an object array would store a 0-d array as the element)
            out[index] = _result(_as_array(v))
        return out

    def _concatenate(self, node, *xs):
        return np.concatenate([_as_array(x) for x in xs], axis=node.attrs[0])

    def _stack(self, node, *xs):
        return np.stack([_as_array(x) for x in xs], axis=node.attrs[0])

    def _custom(self, node, value, *xs):
        """``custom(value, *xs)`` (gradc/custom.py) element by element: each element of the
        value is a scalar ``custom`` node over every argument element, carrying the rule of its
        element, so the program can still be differentiated (hessian and jacobian unroll first)."""
        args = [e for x, n in zip(xs, node.args[1:]) for e in self._elements_of(x, n)]
        made = node.attrs[0].element_nodes(self.g, self._elements_of(value, node), args)
        return _array(made, node.shape) if node.shape else made[0]

    def _elements_of(self, value, node):
        """The scalar nodes of ``node``'s unrolled ``value``, in C order (absent ones as 0.0)."""
        if not node.shape:
            return [self._present(value)]
        return [self._present(e) for e in _as_array(value).reshape(-1)]

    def _count(self, node, x):
        return self.g.const(node.attrs[1])  # the shape is fixed here: the number itself

    def _zeros(self, node):
        return _Sparse(tuple(node.shape), {}, node.id)

    def _sum(self, node, x):
        return self._reduce(node, x, "add")

    def _max(self, node, x):
        return self._reduce(node, x, "maximum")

    def _min(self, node, x):
        return self._reduce(node, x, "minimum")

    def _reduce(self, node, x, op):
        """A chain of ``op`` along the reduced axes, in C order (NaN-propagating for max/min)."""
        axis, keepdims = node.attrs
        x = _as_array(x)
        axes = tuple(range(x.ndim)) if axis is None else tuple(axis)
        kept = [i for i in range(x.ndim) if i not in axes]
        moved = np.transpose(x, kept + list(axes))
        lead = moved.shape[:len(kept)]
        flat = moved.reshape(lead + (-1,))
        out = np.empty(lead, dtype=object)
        for idx in np.ndindex(*lead):
            items = [v for v in flat[idx]]
            out[idx] = self._chain(op, items)
        shape = node.shape
        return _result(out.reshape(shape)) if shape else out.reshape(())[()]

    def _chain(self, op, items):
        if op == "add":
            items = [v for v in items if v is not None]
            if not items:
                return None
        total = self._present(items[0])
        for v in items[1:]:
            total = self.g.add(op, (total, self._present(v)))
        return total

    def _matmul(self, node, a, b):
        a, b = _as_array(a), _as_array(b)
        a2 = a if a.ndim == 2 else a.reshape(1, -1)
        b2 = b if b.ndim == 2 else b.reshape(-1, 1)
        out = np.empty((a2.shape[0], b2.shape[1]), dtype=object)
        for i in range(a2.shape[0]):
            for j in range(b2.shape[1]):
                terms = [self._scalar_op("mul", [a2[i, k], b2[k, j]], ())
                         if a2[i, k] is not None and b2[k, j] is not None else None
                         for k in range(a2.shape[1])]
                out[i, j] = self._chain("add", terms)
        return _result(out.reshape(node.shape)) if node.shape else out.reshape(())[()]

    # --- outputs and names ------------------------------------------------------------------
    def _name_elements(self):
        """The user's name of an array, on its elements: ``dx`` -> ``dx_0, dx_1, ...``."""
        for node in self.src.nodes:
            name = self.src.names.get(node.id)
            if node.op == "alias" and node.shape:
                name = node.attrs[0]
            if not name or not node.shape:
                if name and not node.shape:
                    v = self.value[node.id]
                    if v is not None and v.op not in ("input", "const"):
                        self.g.names.setdefault(v.id, name)
                continue
            value = _as_array(self.value[node.id])
            for idx in np.ndindex(*node.shape):
                v = value[idx]
                if v is not None and v.op not in ("input", "const"):
                    self.g.names.setdefault(v.id, f"{name}_{'_'.join(map(str, idx))}")

    def _outputs(self):
        src, g = self.src, self.g
        outputs, remap = [], {}
        for k, o in enumerate(src.outputs):
            v = self.value[o.id]
            if not o.shape:
                remap[k] = len(outputs)
                outputs.append(self._present(v))
                continue
            first = len(outputs)
            outputs.extend(self._present(e) for e in _as_array(v).reshape(-1))
            name = src.names.get(o.id) or (o.attrs[0] if o.op == "alias" else "out")
            remap[k] = ArrayOut(name, tuple(o.shape), tuple(range(first, len(outputs))))

        def tree(t):
            if isinstance(t, tuple):
                return tuple(tree(s) for s in t)
            if isinstance(t, ArrayOut):  # already element by element: its indices move
                return ArrayOut(t.name, t.shape, tuple(_index(remap, i) for i in t.indices))
            return remap[t]

        g.set_outputs(outputs, tree(src.out_tree))
        return g


def _index(remap, i):
    found = remap[i]
    if isinstance(found, ArrayOut):
        raise UnrollError("an array output inside an element-by-element output")
    return found


def _array(items, shape):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


class _Sparse:
    """An array value most of whose elements are absent (a ``scatter`` into zeros, and sums
    of them): ``items`` maps flat C-order positions to nodes. ``owner`` is the id of the
    source node that made it (only that node's value may be extended in place)."""

    __slots__ = ("shape", "items", "owner")

    def __init__(self, shape, items, owner):
        self.shape, self.items, self.owner = shape, items, owner

    def dense(self):
        out = np.full(self.shape, None, dtype=object)
        flat = out.reshape(-1)  # a view: C order
        for k, v in self.items.items():
            flat[k] = v
        return out


def _as_array(x):
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, _Sparse):
        return x.dense()
    box = np.empty((), dtype=object)
    box[()] = x
    return box


def _result(x):
    """An indexing result: a 0-d array is its element."""
    if isinstance(x, _Sparse) and x.shape == ():
        return x.items.get(0)
    return x[()] if isinstance(x, np.ndarray) and x.shape == () else x

