"""``gradc.math``: the traceable math functions, usable on floats, arrays and traced values alike.

Each name is an op of the table (``gradc.math.exp`` is the ``exp`` op); on
concrete numbers it computes with NumPy, so a model written with it runs
unchanged outside gradc.
"""
from __future__ import annotations

from .ops import MATH_FUNCTIONS, op_for
from .trace import apply, where  # noqa: F401  (re-exported)


def _public(name):
    op = op_for(name)

    def function(*args):
        if len(args) != op.arity:
            raise TypeError(f"gradc.math.{name} takes {op.arity} argument(s), got {len(args)}")
        return apply(op.name, *args)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"``{op.template.format(*'xyz'[:op.arity], np='numpy')}`` — traceable."
    return function


for _name in MATH_FUNCTIONS:
    globals()[_name] = _public(_name)

__all__ = list(MATH_FUNCTIONS) + ["where"]
