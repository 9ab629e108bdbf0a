"""``gradc.config``: process-wide options (today one: ``verbose``).

>>> import gradc
>>> gradc.config(verbose=True)["verbose"]
True
>>> gradc.config(verbose=None)["verbose"] == verbose_enabled()   # GRADC_VERBOSE again
True

``verbose`` prints a one-line progress message on stderr while numba compiles a
function for longer than about a second (:data:`gradc.jit.COMPILE_NOTICE_SECONDS`):
its name, statement count and time. The same news always goes to the ``gradc``
logger (``logging.getLogger("gradc")``, level INFO), verbose or not.

``gradc.config`` is the function; ``from gradc.config import verbose_enabled`` reaches this
module (``gradc/__init__.py`` binds the name ``config`` to the function, as
``gradc.math`` names the module ``gradc/gmath.py``).
"""
from __future__ import annotations

import os

from .errors import ArgumentError

__all__ = ["config", "verbose_enabled"]

_FALSE = ("", "0", "false", "no", "off")
_settings = {"verbose": None}  # None: follow the environment variable GRADC_VERBOSE


def config(*, verbose=...):
    """Set gradc's options for this process and return all of them as a dict.

    ``verbose=True`` / ``False`` turns compile progress messages on stderr on or off;
    ``verbose=None`` follows ``GRADC_VERBOSE`` again (set and not ``0``/``false``/``no``/
    ``off``: on). An option not given is left as it is.
    """
    if verbose is not ...:
        if verbose not in (None, True, False):
            raise ArgumentError(f"gradc.config(verbose=...) takes True, False or None (follow "
                                f"GRADC_VERBOSE), not {verbose!r}.")
        _settings["verbose"] = verbose
    return {"verbose": verbose_enabled()}


def verbose_enabled():
    """Whether compile progress messages go to stderr now."""
    chosen = _settings["verbose"]
    if chosen is not None:
        return chosen
    return os.environ.get("GRADC_VERBOSE", "").strip().lower() not in _FALSE
