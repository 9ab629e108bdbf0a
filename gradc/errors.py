"""gradc's exceptions and warnings, and how they find the user's source line.

Every failure a user can cause is a :class:`GradcError`. Its message names the
user's file and line (the innermost stack frame outside gradc, NumPy and numba)
and says what to do instead.
"""
from __future__ import annotations

import linecache
import os
import sys

import numpy as np

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Frames inside these trees are never "the user's line".
_SKIP_PREFIXES = tuple(
    os.path.dirname(os.path.abspath(mod.__file__))
    for mod in (sys.modules.get("numpy"),)
    if mod is not None and getattr(mod, "__file__", None)
) + (_PACKAGE_DIR,)


class GradcError(Exception):
    """Base class of every error gradc raises on purpose."""


class TracingError(GradcError):
    """The traced function did something gradc cannot follow."""


class ControlFlowError(TracingError):
    """Python ``if``/``while``/``bool()`` was applied to a traced value."""


class MathModuleError(TracingError):
    """A ``math.*`` function (or ``float()``) was applied to a traced value."""


class UnsupportedFunctionError(TracingError):
    """A NumPy function or ufunc that gradc has no rule for."""


class ArgumentError(GradcError, TypeError):
    """Wrong number or kind of arguments to a gradc function."""


class LinAlgError(GradcError, np.linalg.LinAlgError):
    """numpy.linalg refused the arguments of a call (a singular matrix, one that is not
    positive definite) as NumPy refuses them in the same function; ``except
    numpy.linalg.LinAlgError`` catches it too."""


class CompileWarning(UserWarning):
    """numba could not compile gradc's loop code for a call; NumPy-level code ran instead."""


class CacheWarning(UserWarning):
    """The disk cache was corrupt or unwritable; gradc recovered."""


def user_frame(skip_gradc=True):
    """The innermost frame that belongs to the user (not gradc, NumPy or the stdlib runpy)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not (skip_gradc and filename.startswith(_SKIP_PREFIXES)) and not filename.startswith("<frozen"):
            return frame
        frame = frame.f_back
    return None


def where(frame=None):
    """``'file.py:12'`` for the user's frame, with the line's text when it is available."""
    frame = frame or user_frame()
    if frame is None:
        return "<unknown location>"
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    text = linecache.getline(filename, lineno).strip()
    return f"{filename}:{lineno}" + (f"  ({text})" if text else "")


def source_line(frame=None):
    """The stripped source text of the user's current line, or ``''``."""
    frame = frame or user_frame()
    if frame is None:
        return ""
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()


class ShapeError(TracingError):
    """Array shapes that do not fit an operation (both shapes are named)."""
