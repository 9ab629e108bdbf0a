"""Route 3 of gradc/native.py runs without numba: each test is a fresh process that must not
import it (``import numba`` and its target refresh cost ~0.9 s, more than a whole compile).

- A program that calls every helper of the generated table compiles (helpers from the
  table, target machine from llvmlite, object code behind gradc.shim's C entry) and gives
  the values numba's ordinary path gives, bit for bit.
- A second process loads the body's object code from the cache, compiling nothing.
- A numba setting of the target (NUMBA_CPU_NAME) is numba's to apply: that process does
  import numba, and compiles for the CPU named.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gradc import jit, native
from gradc.emit import emit_module

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

pytestmark = pytest.mark.skipif(native._helper_table() is None,
                                reason="the helper table is for another numba or llvmlite")


def run_fresh(script, cache, **env):
    """Run ``script`` in a new interpreter with its cache in ``cache``; its last stdout line,
    parsed as JSON."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    environ.update(env, GRADC_CACHE_DIR=str(cache))
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=environ,
                          capture_output=True, text=True, timeout=120, cwd=str(cache.parent))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


EVERY_HELPER = """
    import json, sys
    import numpy as np
    from gradc import native, shim
    from gradc.emit import emit_module
    from test_native import every_helper_graph, _points

    graph = every_helper_graph()
    source, func_name, _ = emit_module(graph, "every_helper", "value")
    entry, path = native.compile_graph(graph, func_name, source, (None, None), min_nodes=0,
                                       c_entry=True)
    assert isinstance(entry, shim.Entry), entry
    bits = [[int(np.float64(v).view(np.uint64)) for v in entry.function(x, y)]
            for x, y in _points()[::3]]
    print(json.dumps({"numba": "numba" in sys.modules, "bits": bits}))
"""


def test_every_helper_compiles_and_runs_without_numba_as_numba_computes(tmp_path):
    from test_native import _points, every_helper_graph, same

    got = run_fresh(EVERY_HELPER, tmp_path / "cache")
    assert got["numba"] is False
    graph = every_helper_graph()
    source, func_name, entry = emit_module(graph, "every_helper", "value")
    ordinary, _ = jit.load_numba(source, func_name, entry, (None, None))
    wrong = []
    for (x, y), bits in zip(_points()[::3], got["bits"]):
        values = np.array(bits, dtype=np.uint64).view(np.float64)
        for k, (a, b) in enumerate(zip(values, ordinary(x, y))):
            if not same(a, b):
                wrong.append((k, x, y, a, b))
    assert len(got["bits"]) == len(_points()[::3]) and not wrong, wrong[:10]


SECOND_PROCESS = """
    import json, sys
    import numpy as np
    import gradc
    from gradc import native

    def chain(p):
        h = 0.3
        for i in range(30):
            h = np.tanh(p[2 * i] * h + p[2 * i + 1])
        return 0.5 * (h - 0.5) ** 2

    J = gradc.value_and_grad(chain, arrays="unroll", backend="python")
    graph, source, func_name, _ = J.lower(((60,),))
    compiled = []
    native._compile_object = lambda *a, c=native._compile_object: compiled.append(1) or c(*a)
    entry, path = native.compile_graph(graph, func_name, source, ((60,),), c_entry=True)
    value, grad = entry.function(np.linspace(0.5, 1.5, 60))
    print(json.dumps({"numba": "numba" in sys.modules, "compiled": len(compiled),
                      "path": path, "nodes": len(graph.nodes), "value": value,
                      "grad": grad.tolist()}))
"""


def test_a_second_process_calls_the_cached_body_without_compiling_or_numba(tmp_path):
    cache = tmp_path / "cache"
    first, second = run_fresh(SECOND_PROCESS, cache), run_fresh(SECOND_PROCESS, cache)
    assert first["nodes"] >= native.MIN_NODES  # compile_graph's default threshold applies
    assert first["compiled"] == 1 and second["compiled"] == 0
    assert first["numba"] is second["numba"] is False
    assert first["path"] == second["path"] and first["path"].startswith(str(cache))
    assert first["value"] == second["value"] and first["grad"] == second["grad"]


TARGET = """
    import json, sys
    import llvmlite.binding as llvm
    from gradc import native

    host = native._host_target()
    llvm.initialize_native_target()
    print(json.dumps({"numba": "numba" in sys.modules, "cpu": host["cpu"],
                      "features": host["features"], "llvm_cpu": llvm.get_host_cpu_name(),
                      "identity": native._machine_identity(1)["cpu"]}))
"""


def test_numbas_target_settings_are_honoured_and_the_default_needs_no_numba(tmp_path):
    default = run_fresh(TARGET, tmp_path / "cache")
    assert default["numba"] is False and default["cpu"] == default["llvm_cpu"]
    generic = run_fresh(TARGET, tmp_path / "cache", NUMBA_CPU_NAME="generic")
    assert generic["numba"] is True  # numba's config decides what its settings mean
    assert generic["cpu"] == generic["identity"] == "generic" and generic["features"] == ""
