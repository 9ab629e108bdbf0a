"""The ``ext`` format: a native extension module through ``numba.pycc``.

``numba.pycc`` is pending deprecation; this module is the only place that uses
it, so another extension builder can replace it behind :func:`build_extension`.
The module it builds needs NumPy at run time, neither numba nor gradc.

pycc's wrappers convert Python arguments to the exported signature without any
check (a float32 array is read as float64 memory, ``None`` as an array crashes),
so the functions compiled here are private kernels: the package
:func:`gradc.aot.build` writes around them checks every argument in Python first.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import warnings

from .aot_errors import BuildError


def build_extension(source_path, module_name, names, outdir, workdir):
    """Compile the functions ``names`` of the generated Python module at ``source_path``
    (``@njit`` dispatchers with explicit argument types) into extension ``module_name``
    in ``outdir``, exported under the same names with the signatures numba inferred.
    The callers must check arguments: the extension does not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumbaPendingDeprecationWarning for pycc itself
        from numba.pycc import CC

        mod_name = os.path.splitext(os.path.basename(source_path))[0]
        spec = importlib.util.spec_from_file_location(mod_name, source_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # compiles each function for its declared arguments
        cc = CC(module_name)
        cc.output_dir = outdir
        cc.verbose = False
        for name in names:
            dispatcher = getattr(module, name)
            cc.export(name, dispatcher.nopython_signatures[0])(dispatcher.py_func)
        log = io.StringIO()
        cwd = os.getcwd()
        try:
            os.chdir(workdir)  # distutils writes its temporary objects relative to here
            with contextlib.redirect_stdout(log):
                cc.compile()
        except Exception as exc:
            raise BuildError(f"gradc build --format ext: numba.pycc failed: {type(exc).__name__}: "
                             f"{exc}\n{log.getvalue()[-2000:]}") from exc
        finally:
            os.chdir(cwd)
            sys.modules.pop(mod_name, None)
