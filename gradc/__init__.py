"""gradc: exact, fast derivatives of Python functions, emitted as readable code and compiled by numba.

>>> import gradc
>>> J = gradc.value_and_grad(lambda a, b, c: 3 * (a + b * c), backend="python")
>>> J(5.0, 3.0, 2.0)
(33.0, (3.0, 6.0, 9.0))
"""
from .version import __version__

from . import gmath as math  # noqa: E402  (gradc.math.exp, gradc.math.sigmoid, ...)
from .aot import BuildError, export  # noqa: E402
from .api import GradcFunction, compile, grad, value_and_grad  # noqa: E402
from .batch import vmap  # noqa: E402
from .config import config  # noqa: E402  (the function; gradc/config.py is the module)
from .errors import (  # noqa: E402
    ArgumentError, CacheWarning, CompileWarning, ControlFlowError, GradcError, LinAlgError,
    MathModuleError, ShapeError, TracingError, UnsupportedFunctionError)
from .explain import explain  # noqa: E402
from .draw import draw  # noqa: E402  (graphviz is imported when a picture is rendered)
from .higher_api import hessian, hvp, jacobian, jvp, value_grad_hessian  # noqa: E402
from .custom import custom_jvp, custom_vjp  # noqa: E402  (user-defined derivative rules)
from .symbolic import from_sympy, to_sympy  # noqa: E402
from .trace import scan, where  # noqa: E402
from . import constructors, numpy_api, surface  # noqa: E402,F401  (they install into gradc.trace)
from . import nn  # noqa: E402  (gradc.nn: layers, losses, optimizers, fit)

__all__ = [
    "value_and_grad", "grad", "compile", "jit", "vmap", "nn", "explain", "draw", "where", "scan", "math", "from_sympy", "to_sympy",
    "GradcFunction", "export", "BuildError", "config",
    "hessian", "value_grad_hessian", "hvp", "jvp", "jacobian", "custom_vjp", "custom_jvp",
    "GradcError", "TracingError", "ControlFlowError", "MathModuleError",
    "UnsupportedFunctionError", "ArgumentError", "ShapeError", "LinAlgError", "CacheWarning", "CompileWarning",
    "__version__",
]


import types as _types  # noqa: E402

from . import jit  # noqa: E402  (the numba backend module)


class _JitModule(_types.ModuleType):
    """gradc/jit.py, the numba backend, also answers JAX's ``gradc.jit(f)`` (= ``gradc.compile``).

    The name ``gradc.jit`` is the backend module's, which other modules import
    (``from gradc import jit``); rebinding it to the function would hand them the function.
    So the module itself is made callable: ``gradc.jit.load_numba`` and ``gradc.jit(f,
    static_argnums=1)`` both work.
    """

    def __call__(self, fn=None, **options):
        return compile(fn, **options)


jit.__class__ = _JitModule
