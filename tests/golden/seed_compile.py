# gradc rewrites this file from the traced function; edits here are not kept.
import numpy as np


def J__value(a, b, c):
    u = b * c
    v = a + u
    J = 3.0 * v
    return J


def J__value__entry(a=None, b=None, c=None, *extra):
    # Entry point for numba: defaults and *extra let gradc report wrong arguments.
    return J__value(a, b, c)
