"""What a function's trace reads, told without tracing it (gradc/fingerprint.py): the same
code and values give the same fingerprint wherever the function is defined; any change of what
the trace reads gives another; whatever cannot be told without running the function gives None
(the warm-start index then finds the program by its trace)."""
import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradc
from gradc import fingerprint


def define(source, name="f", namespace=None):
    """The function ``name`` that ``source`` defines, in a namespace of its own (a module)."""
    namespace = {"np": np, "__name__": "model"} if namespace is None else namespace
    exec(compile(textwrap.dedent(source), "model.py", "exec"), namespace)
    return namespace[name]


F = """
def f(x):
    return np.sin(x) * SCALE + helper(x)

def helper(x):
    return x ** 2 + OFFSET

SCALE = 2.0
OFFSET = 1.0
"""


def test_the_same_code_and_values_agree_wherever_they_are_defined():
    a = fingerprint.of(define(F))
    assert a is not None and a == fingerprint.of(define("\n\n# moved down\n" + F))


@pytest.mark.parametrize("edit", [
    ("SCALE = 2.0", "SCALE = 2.5"),                    # a global the function reads
    ("OFFSET = 1.0", "OFFSET = 1"),                    # ... the same number, another type
    ("x ** 2 + OFFSET", "x ** 3 + OFFSET"),            # the code of a function it calls
    ("np.sin(x)", "np.cos(x)"),                        # a library function it calls
    ("return np.sin", "y = x\n    return np.sin"),     # its local names (they name the nodes)
])
def test_any_change_of_what_the_trace_reads_is_another_fingerprint(edit):
    assert fingerprint.of(define(F)) != fingerprint.of(define(F.replace(*edit)))


def test_closures_defaults_and_nested_code_are_read():
    def make(k, d):
        def f(x, y=d):
            return (lambda t: t * k + LIMIT)(x) + y  # LIMIT: a global of the nested lambda
        return f

    base = fingerprint.of(make(1.0, 2.0))
    assert base == fingerprint.of(make(1.0, 2.0))
    assert base != fingerprint.of(make(1.5, 2.0))   # a cell
    assert base != fingerprint.of(make(1.0, 2.5))   # a default
    global LIMIT
    LIMIT = 4.0
    assert fingerprint.of(make(1.0, 2.0)) != base   # the global the lambda reads


LIMIT = 3.0


@pytest.mark.parametrize("source", [
    "X = np.ones(3)\ndef f(w): return X @ w",                       # an array it closes over
    "C = [1.0, 2.0]\ndef f(x): return x * C[0]",                     # a mutable list
    "C = {'a': 1.0}\ndef f(x): return x * C['a']",                   # a dict
    "class S: k = 1.0\ns = S()\ndef f(x): return x * s.k",           # an object's attribute
    "import json\ndef f(x): return x * len(json.dumps(1))",          # a module of no library
    "def f(x):\n    import math\n    return math.sin(x)",            # an import inside
    "def f(x): return x * np.random.rand()",                         # random numbers
    "def f(x): return x * float(open('k').read())",                  # a file
    "def f(x): return x * (hash('a') % 3)",                          # the hash seed
    "def f(x): return x * (id(x) % 3)",                              # memory addresses
])
def test_what_cannot_be_told_without_running_the_function_is_none(source):
    assert fingerprint.of(define(source)) is None


def test_a_gradc_function_or_a_bound_method_is_not_followed():
    g = gradc.grad(lambda x: x * x)
    assert fingerprint.of(define("def f(x): return g(x)", namespace={"g": g})) is None

    class Model:
        def loss(self, x):
            return x * x
    assert fingerprint.of(Model().loss) is None


def test_library_names_partials_sets_and_numpy_scalars_are_plain():
    f = define("def f(x, mode='a'):\n    return np.float64(2.0) * x if mode in {'a', 'b'} "
               "else x")
    assert fingerprint.of(f) is not None
    assert fingerprint.of(functools.partial(f, mode="b")) != fingerprint.of(f)
    assert fingerprint.of(define("K = np.float32(2)\ndef f(x): return x * K")) is not None


def test_recursion_and_long_call_chains_end():
    assert fingerprint.of(define("def f(x):\n    return x if x < 1 else f(x / 2)")) is not None
    # 3,000 functions each calling the next: the walk is a loop, not Python recursion
    source = "\n".join(f"def f{i}(x): return f{i + 1}(x) + 1.0" for i in range(3000))
    source += "\ndef f3000(x): return x\n"
    assert fingerprint.of(define(source, "f0")) is not None


def test_exec_with_other_builtins_is_not_told():
    namespace = {"np": np, "__builtins__": {"len": lambda v: 3}}
    assert fingerprint.of(define("def f(x): return x * len(x)", namespace=namespace)) is None


def test_the_fingerprint_is_the_same_in_another_process_with_another_hash_seed():
    script = textwrap.dedent("""
        import numpy as np
        from gradc import fingerprint
        K = 2.0
        def f(x, mode="a"):
            return np.tanh(x) * K if mode in {"a", "b", "c"} else x
        print(fingerprint.of(f))
    """)
    found = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        found.add(out.stdout.strip())
    assert len(found) == 1 and "None" not in found


def test_a_closure_a_library_makes_is_followed_not_named():
    # a function gradc (or NumPy) makes at run time around a user's function or values holds
    # them in its cells: naming it by its module and qualname would key two models alike
    namespace = {"__name__": "gradc.nn.made_here"}
    exec(compile(textwrap.dedent("""
        def make(user_fn):
            def wrapper(x):
                return user_fn(x)
            return wrapper
    """), "made_here.py", "exec"), namespace)
    make = namespace["make"]
    one = fingerprint.of(make(define("def f(x): return x * 2.0")))
    two = fingerprint.of(make(define("def f(x): return x * 3.0")))
    assert one is not None and two is not None and one != two
