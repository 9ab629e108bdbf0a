# gradc rewrites this file from the traced function; edits here are not kept.
import numpy as np


def J__grad(a, b, c):
    dv = 3.0
    da = dv
    du = dv
    db = du * c
    dc = du * b
    return da, db, dc


def J__grad__entry(a=None, b=None, c=None, *extra):
    # Entry point for numba: defaults and *extra let gradc report wrong arguments.
    return J__grad(a, b, c)
