"""gradc benchmarks: gradc side by side with hand-written baselines and other AD tools.

Run ``python -m benchmarks --help``.  Modules:

- ``harness``   timing (warm-up, repeats, median/min/spread), thread pinning, machine description
- ``workloads`` the workloads W1-W3 (function, hand-written numba adjoint, hand-written NumPy/Python)
- ``tools``     one adapter per tool (gradc, JAX, PyTorch, autograd, SymPy, SymEngine, CasADi, PyTensor)
- ``compile_cost`` workload C: decoration to first result in fresh subprocesses (cold / warm cache)
- ``report``    Markdown tables and PNG plots
"""
