"""The warm-start index (gradc/index.py): a second process finds a large scalar program's
compiled C entry from what the function reads (without tracing it) or from its trace, without
differentiating, optimizing or emitting it again.

Each test runs fresh processes on a cache directory of its own: the first compiles (route 3 of
gradc/native.py) and writes the index, the next must find it, and must not when the function
changed, the entry is corrupt or its object code is gone.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gradc import index
from gradc.ir import Graph

pytest.importorskip("llvmlite")

PROGRAM = textwrap.dedent("""
    import json, sys
    import numpy as np
    import gradc
    import gradc.api

    traces = []
    _trace = gradc.api.trace
    gradc.api.trace = lambda *a, **k: traces.append(1) or _trace(*a, **k)

    {prefix}def chain(p):
        h = 0.3
        for i in range(60):
            h = np.tanh(p[2 * i] * h + p[2 * i + 1]) * {scale}
        return 0.5 * (h - 0.5) ** 2

    f = gradc.value_and_grad(chain, arrays="unroll")
    value, grad = f(np.linspace(0.1, 0.9, 120))
    spec = next(iter(f._specs.values()))
    built = spec._graph is not None
    print(json.dumps({{"value": value.hex(), "grad": grad.tobytes().hex(), "built": built,
                       "traced": len(traces), "numba": "numba" in sys.modules,
                       "source": f.source}}))
""")


def run(tmp_path, scale="1.0", prefix=""):
    script = tmp_path / "model.py"
    script.write_text(PROGRAM.format(scale=scale, prefix=prefix))
    env = dict(os.environ, GRADC_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def index_files(tmp_path):
    return sorted((tmp_path / "cache" / "__pycache__").glob("gradc_*.index.json"))


def test_a_second_process_finds_the_program_without_tracing_or_building_it(tmp_path):
    cold = run(tmp_path)
    # two entries: one found by what chain() reads, one by its trace
    assert cold["built"] and not cold["numba"] and len(index_files(tmp_path)) == 2
    warm = run(tmp_path)
    assert not warm["built"]  # the spec came from the index: no graph built until asked
    assert warm["traced"] == 0  # found from chain()'s code and the values it reads
    assert not warm["numba"]
    assert (warm["value"], warm["grad"]) == (cold["value"], cold["grad"])  # bit for bit
    assert warm["source"] == cold["source"]  # .source builds it, and it is the same program


def test_a_function_moved_in_its_file_still_finds_its_entry(tmp_path):
    cold = run(tmp_path)
    moved = run(tmp_path, prefix="\n\n\n")
    assert not moved["built"] and moved["grad"] == cold["grad"]


def test_an_edited_function_never_runs_the_entry_of_the_old_one(tmp_path):
    run(tmp_path)
    edited = run(tmp_path, scale="0.5")
    assert edited["built"]  # a new trace: a new key, built and compiled
    assert float.fromhex(edited["value"]) == pytest.approx(chain_value(0.5), rel=1e-12)
    assert len(index_files(tmp_path)) == 4


def chain_value(scale):
    x = np.linspace(0.1, 0.9, 120)
    h = 0.3
    for i in range(60):
        h = np.tanh(x[2 * i] * h + x[2 * i + 1]) * scale
    return 0.5 * (h - 0.5) ** 2


def test_a_changed_global_the_function_reads_is_a_new_program(tmp_path):
    run(tmp_path, scale="SCALE", prefix="SCALE = 1.0\n")
    changed = run(tmp_path, scale="SCALE", prefix="SCALE = 0.5\n")
    assert changed["built"] and changed["traced"] == 1
    assert float.fromhex(changed["value"]) == pytest.approx(chain_value(0.5), rel=1e-12)


def test_a_function_reading_an_object_is_found_by_its_trace(tmp_path):
    # settings.scale is an attribute of an object: what it is cannot be told without running
    # the function, so the second process traces it, and finds the entry by its trace
    prefix = "class Settings:\n    scale = 1.0\nsettings = Settings()\n"
    cold = run(tmp_path, scale="settings.scale", prefix=prefix)
    assert len(index_files(tmp_path)) == 1
    warm = run(tmp_path, scale="settings.scale", prefix=prefix)
    assert warm["traced"] == 1 and not warm["built"] and warm["grad"] == cold["grad"]


@pytest.mark.parametrize("damage", ["garbage", "other key", "object gone"])
def test_a_broken_entry_is_a_miss_and_the_program_is_built_again(tmp_path, damage):
    cold = run(tmp_path)
    for entry in index_files(tmp_path):  # the entry found by the code and the one by the trace
        if damage == "garbage":
            entry.write_text("{not json")
        elif damage == "other key":
            data = json.loads(entry.read_text())
            entry.write_text(json.dumps(dict(data, key="0" * 64)))
    if damage == "object gone":
        for obj in (tmp_path / "cache" / "__pycache__").glob("*.body.o"):
            obj.unlink()
    again = run(tmp_path)
    assert again["built"] and (again["value"], again["grad"]) == (cold["value"], cold["grad"])


def test_only_plain_data_keys_an_entry():
    g = Graph("f")
    x = g.input("x")
    g.set_outputs([g.add("mul", (x, g.const(2.0)))], 0)
    k = index.key(g, ("value_and_grad", (None,)))
    assert k is not None and k == index.key(g, ("value_and_grad", (None,)))
    assert k != index.key(g, ("grad", (None,)))
    assert index.key(g, ("value_and_grad", object())) is None  # not plain: never indexed
    g.captured_arrays.append(object())
    assert index.key(g, ("value_and_grad", (None,))) is None
