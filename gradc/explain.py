"""``gradc.explain``: the seed's derivation as a table — forward values left to right, adjoints right to left.

The table is read off the un-optimized reverse-mode graph, evaluated node by
node in Python, so every adjoint the seed names (``dJ = 1`` included) appears
with the expression that produced it. :func:`derive` (gradc/derivation.py)
computes that derivation (graph, values, names, adjoints, rows) once;
:func:`explain` prints it as a table and ``gradc.draw`` (gradc/draw.py) draws it
as a picture. This module is above both: it imports them, neither imports it
(``.importlinter``'s ``explain`` contract).

Arrays are traced whole, as every gradc transformation traces them (one node per
array op). The derivation is then shown in one of two views of that one graph:

- element by element (``x_0``, ``dx_2``): the whole-array graph unrolled by the
  pure pass ``gradc.unroll``, then differentiated as the seed's scalars are. This
  is the right-to-left derivation of a small model, and what explain shows while
  that table has at most ``ELEMENT_ROWS`` rows;
- arrays whole (``t3 = t0 - t2 = [0.29, 0.41, ...]``, ``dx = t45 + t46``): one row
  per array op. Past ``ELEMENT_ROWS`` rows this reads better: Rosenbrock at
  n = 5 is 96 rows element by element and 26 rows whole, each row one step a
  reader recognises from the code (``x[1:]``, ``x[:-1] ** 2``, a scatter back
  into ``dx``), at any n.

``elements=True`` / ``False`` asks for either view. Second order (Hessians) is
element by element: its entries are built one scalar input at a time.
"""
from __future__ import annotations

import re
import sys
import warnings

import numpy as np

from .derivation import ELEMENT_ROWS, Derivation, Step, derive
from .draw import DrawingUnavailable, draw

# derive, Derivation, Step and ELEMENT_ROWS live in gradc/derivation.py (below gradc.draw,
# which draws the same derivation); they are still gradc.explain's names, as they were.
__all__ = ["explain", "Explanation", "derive", "Derivation", "Step", "ELEMENT_ROWS"]


def _number(v):
    if np.ndim(v):  # on one line, whatever the rank: the table keeps one row per step
        text = np.array2string(np.asarray(v), precision=6, threshold=8, separator=", ")
        return re.sub(r"\n\s*", " ", text)
    v = float(v)
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class Explanation:
    """What :func:`explain` returns: the table as ``text``, the derivation behind it as
    ``derivation``, ``draw()`` for its picture; Jupyter displays it as that picture."""

    def __init__(self, f, args, derivation, text):
        self._f, self._args, self.derivation, self.text = f, args, derivation, text

    def draw(self, **options):
        """The picture of the same graph: ``gradc.draw(f, *args, **options)``."""
        return draw(self._f, *self._args, **options)

    def _repr_svg_(self):
        try:
            return self.draw().svg()
        except DrawingUnavailable as exc:  # the table was printed; say why no picture follows
            warnings.warn(str(exc), stacklevel=2)
            return None

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"<gradc.explain of {self.text.splitlines()[0]}: .text, .draw()>"


def explain(f, *args, file=None, elements=None):
    """Print how ``f``'s value and gradient at ``args`` are computed, one named step a line.

    Returns an :class:`Explanation` (the table as ``.text``, ``.draw()`` for the picture,
    which Jupyter shows by itself). Arrays are shown element by element while that table
    is short, else whole (``elements=True`` / ``False`` chooses; see the module).

    >>> def J(a, b, c):
    ...     u = b * c
    ...     v = a + u
    ...     return 3 * v
    >>> explain(J, 5, 3, 2)  # doctest: +NORMALIZE_WHITESPACE
    J(a=5, b=3, c=2) = 33
    forward, left to right:
      u  = b * c      = 6
      v  = a + u      = 11
      J  = 3.0 * v    = 33
    reverse, right to left (dvar = dJ/dvar):
      dJ = 1.0        = 1
      dv = dJ * 3.0   = 3
      da = dv         = 3
      du = dv         = 3
      db = du * c     = 6
      dc = du * b     = 9
    <gradc.explain of J(a=5, b=3, c=2) = 33: .text, .draw()>
    """
    d = derive(f, *args, elements=elements)
    rows = [(s.name, s.expr) for s in d.rows]
    w_name = max((len(r[0]) for r in rows), default=1)
    w_expr = max((len(r[1]) for r in rows), default=1)

    def fmt(step):
        return f"  {step.name:<{w_name}} = {step.expr:<{w_expr}} = {_number(d.value(step.node))}"

    params = ", ".join(f"{p}={_number(v)}" for p, v in zip(d.params, d.args))
    lines = [f"{d.name}({params}) = {_number(d.values[d.graph.outputs[0].id])}",
             "forward, left to right:", *map(fmt, d.forward),
             "reverse, right to left (dvar = d{0}/dvar):".format(d.name), *map(fmt, d.reverse)]
    if d.second:
        lines += ["second order, forward over reverse (ddv_dx = d(dv)/dx; "
                  "dda_db is the Hessian entry for a, b):", *map(fmt, d.order2)]
    text = "\n".join(lines)
    print(text, file=file or sys.stdout)
    return Explanation(f, args, d, text)
