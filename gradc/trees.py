"""Trees of arguments and results: tuples, lists, dicts and None, nested, around leaves.

gradc's graphs are flat: one parameter per float or array, one output per float or
array. JAX users pass and return *trees* (``loss(params, X, y)`` with ``params`` a dict
of arrays; ``return loss, {"acc": acc}``). This module turns a tree into its leaves
and a :class:`TreeDef` (a hashable description of the structure), and back, so the
API layer (gradc/api.py) traces flat functions and hands results back in the user's
structure.

The order is deterministic and JAX's: tuples and lists in order, dicts by sorted key,
``None`` an empty node (no leaves); namedtuples keep their type. Everything else is a
leaf (what a leaf may be is the caller's business).

>>> leaves, tree = flatten({"b": (1.0, 2.0), "a": [3.0], "c": None})
>>> leaves
[3.0, 1.0, 2.0]
>>> unflatten(tree, ["x", "y", "z"])
{'a': ['x'], 'b': ('y', 'z'), 'c': None}
"""
from __future__ import annotations

from . import errors

#: The structure of a leaf.
LEAF = "*"


class TreeDef(tuple):
    """A tree's structure: ``(kind, detail, children)``, or :data:`LEAF`. Hashable and
    comparable, so it can key a cache of compiled specialisations.

    ``kind`` is ``"tuple"``, ``"list"``, ``"dict"`` (``detail``: the sorted keys),
    ``"namedtuple"`` (``detail``: the class) or ``"none"``.
    """

    __slots__ = ()

    @property
    def kind(self):
        return self[0]

    @property
    def children(self):
        return self[2]

    def __repr__(self):
        return f"TreeDef({describe(self)})"


def _is_namedtuple(value):
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _sorted_keys(d):
    """A dict's keys in JAX's order (sorted); a gradc error when they cannot be sorted."""
    try:
        return tuple(sorted(d))
    except TypeError:
        kinds = sorted({type(k).__name__ for k in d})
        raise errors.ArgumentError(
            f"{errors.where()}: gradc orders a dict's entries by sorted key, and these keys "
            f"({', '.join(kinds)}) cannot be compared; use keys of one type (strings).") from None


def flatten(tree):
    """``(leaves, treedef)``: the leaves of ``tree`` in order, and its structure."""
    leaves = []
    return leaves, _flatten(tree, leaves)


def _flatten(value, leaves):
    if value is None:
        return TreeDef(("none", None, ()))
    if type(value) is dict:  # noqa: E721  (subclasses such as OrderedDict are leaves)
        keys = _sorted_keys(value)
        return TreeDef(("dict", keys, tuple(_flatten(value[k], leaves) for k in keys)))
    if _is_namedtuple(value):
        return TreeDef(("namedtuple", type(value), tuple(_flatten(v, leaves) for v in value)))
    if type(value) in (tuple, list):
        return TreeDef((type(value).__name__, None, tuple(_flatten(v, leaves) for v in value)))
    leaves.append(value)
    return LEAF


def unflatten(treedef, leaves):
    """The tree of structure ``treedef`` holding ``leaves`` (in :func:`flatten`'s order)."""
    it = iter(leaves)
    tree = _build(treedef, it)
    if next(it, _END) is not _END:
        raise ValueError("unflatten: more leaves than the structure holds")
    return tree


_END = object()


def _build(treedef, it):
    if treedef == LEAF:
        value = next(it, _END)
        if value is _END:
            raise ValueError("unflatten: fewer leaves than the structure holds")
        return value
    kind, detail, children = treedef
    items = [_build(c, it) for c in children]
    if kind == "none":
        return None
    if kind == "dict":
        return dict(zip(detail, items))
    if kind == "namedtuple":
        return detail(*items)
    return tuple(items) if kind == "tuple" else items


def leaves_like(treedef, tree):
    """The values of ``tree`` at the leaf positions of ``treedef``, where anything (None
    too) may stand at a leaf: how ``out=`` buffers mirror a gradient. ValueError when
    ``tree`` has another structure."""
    if treedef == LEAF:
        return [tree]
    kind, detail, children = treedef
    if kind == "none":
        if tree is not None:
            raise ValueError("not None")
        return []
    if kind == "dict":
        if not isinstance(tree, dict) or tuple(sorted(tree)) != detail:
            raise ValueError("other keys")
        items = [tree[k] for k in detail]
    else:
        if not isinstance(tree, (tuple, list)) or len(tree) != len(children):
            raise ValueError("other length")
        items = list(tree)
    found = []
    for child, item in zip(children, items):
        found.extend(leaves_like(child, item))
    return found


def leaf_count(treedef):
    """How many leaves a tree of this structure holds."""
    if treedef == LEAF:
        return 1
    return sum(leaf_count(c) for c in treedef[2])


def paths(treedef, prefix=""):
    """Each leaf's path as Python would index it (``"['W'][0]"``), in leaf order."""
    if treedef == LEAF:
        return [prefix]
    kind, detail, children = treedef
    keys = detail if kind == "dict" else range(len(children))
    out = []
    for key, child in zip(keys, children):
        out.extend(paths(child, f"{prefix}[{key!r}]"))
    return out


def describe(treedef):
    """A short text of the structure, for messages: ``{'W': *, 'b': *}``, ``(*, [*])``."""
    if treedef == LEAF:
        return LEAF
    kind, detail, children = treedef
    inner = [describe(c) for c in children]
    if kind == "none":
        return "None"
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(detail, inner)) + "}"
    if kind == "list":
        return "[" + ", ".join(inner) + "]"
    name = detail.__name__ if kind == "namedtuple" else ""
    return name + "(" + ", ".join(inner) + ("," if len(inner) == 1 and not name else "") + ")"


def _offsets(shapes):
    """``[(start, stop, shape)]`` of leaves of these shapes (``()``: a float) laid end to end."""
    found, start = [], 0
    for shape in shapes:
        size = _size(shape)
        found.append((start, start + size, tuple(shape)))
        start += size
    return found


def _size(shape):
    size = 1
    for d in shape:
        size *= int(d)
    return size


def _leaf(values, shape):
    """A block as a leaf: a float for shape ``()``, else a C-order array of ``shape``."""
    return float(values.reshape(-1)[0]) if shape == () else values.reshape(shape)


def split(vector, shapes):
    """The leaves of these shapes (``()``: a float) read one after another from ``vector``
    (flat, C order): how a flat result goes back into a tree's leaves.

    >>> import numpy as np
    >>> split(np.arange(4.0), [(), (3,)])
    [0.0, array([1., 2., 3.])]
    """
    vector = vector.reshape(-1)
    return [_leaf(vector[a:b], shape) for a, b, shape in _offsets(shapes)]


def blocks(matrix, row_shapes, col_shapes):
    """The blocks of a 2-d ``matrix`` whose rows are the leaves of ``row_shapes`` and whose
    columns those of ``col_shapes``, flattened in C order: ``out[r][c]`` has shape
    ``row_shapes[r] + col_shapes[c]`` (a float where both are ``()``), JAX's layout of a
    Jacobian block between an output leaf and an input leaf.

    >>> import numpy as np
    >>> [[b.shape if hasattr(b, "shape") else b for b in row]
    ...  for row in blocks(np.arange(6.0).reshape(3, 2), [(), (2,)], [(), ()])]
    [[0.0, 1.0], [(2,), (2,)]]
    """
    rows, cols = _offsets(row_shapes), _offsets(col_shapes)
    return [[_leaf(matrix[ra:rb, ca:cb], rs + cs) for ca, cb, cs in cols]
            for ra, rb, rs in rows]
