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
