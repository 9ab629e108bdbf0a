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


# --- numerically stable composites (built from the ops above; they trace like user code) ---
def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` along ``axis``, computed as ``m + log(sum(exp(x - m)))`` with m = max."""
    import numpy as np

    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.sum(out, axis=axis)  # drops the kept unit axes


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the maximum so it cannot overflow."""
    import numpy as np

    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """``log(softmax(x))`` along ``axis``, without forming the softmax."""
    import numpy as np

    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


__all__ += ["logsumexp", "softmax", "log_softmax"]


# --- rounding to decimals: numpy.round's own steps, from the table's rint ----------------------
def _power_of_ten(n):
    """``10.0 ** n`` as NumPy's round computes it (exact to 1e8, then times 10 repeatedly),
    so gradc rounds to the same floats."""
    if n < 9:
        return 10.0 ** n
    scale = 1e9
    for _ in range(n - 9):
        scale *= 10.0
    return scale


def round(x, decimals=0):  # noqa: A001  (NumPy's name; kept out of __all__, see below)
    """``numpy.round(x, decimals)``, traceable: half to even, derivative zero.

    ``decimals=0`` is the ``rint`` op; otherwise NumPy's own steps, ``rint(x * 10**d) / 10**d``
    (``rint(x / 10**-d) * 10**-d`` for negative ``d``), so the results are NumPy's floats.
    """
    import numbers

    from . import errors

    if isinstance(decimals, bool) or not isinstance(decimals, numbers.Integral):
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: round(x, decimals) needs decimals to be a constant int, "
            f"got {type(decimals).__name__}; gradc does not round to a traced number of digits.")
    decimals = int(decimals)
    if decimals == 0:
        return apply("rint", x)
    scale = _power_of_ten(abs(decimals))
    if decimals > 0:
        return apply("div", apply("rint", apply("mul", x, scale)), scale)
    return apply("mul", apply("rint", apply("div", x, scale)), scale)


around = round
# ``from gradc.math import *`` must not replace the builtin round (NumPy's __all__ leaves
# out its round for the same reason); gradc.math.round and gradc.math.around are public.
__all__ += ["around"]
