"""The error every part of ``gradc build`` raises: :class:`BuildError` (``gradc.BuildError``).

It sits below the build (gradc/aot.py) and both of its native builders
(gradc/aot_pycc.py, gradc/aot_c.py), which all raise it, so that none of them
imports another to name it: the builders import nothing above them.
"""
from __future__ import annotations

from .errors import GradcError


class BuildError(GradcError):
    """An ahead-of-time build cannot be done: nothing marked, a bad spec, no C compiler..."""
