"""A model to ship ahead of time: the seed's J and the Rosenbrock function of 20 variables.

Still a plain Python module (``@gradc.export`` only marks). Build it with, for example:

    gradc build examples/aot/model.py -o build/aot --format c       # libmodel.so + model.h
    gradc build examples/aot/model.py -o build/aot --format ext     # import model (NumPy only)
    gradc build examples/aot/model.py -o build/aot --format python  # model.py for numba
"""
import numpy as np

import gradc


@gradc.export(args=("f8", "f8", "f8"), build=("value", "grad", "value_and_grad"))
def J(a, b, c):
    u = b * c
    v = a + u
    return 3 * v


@gradc.export(args=("f8[20]",), build=("value_and_grad",))
def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
