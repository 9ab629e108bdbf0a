"""What `pip install gradc` declares: the metadata `pip show` lists, and core dependencies that
are exactly what gradc imports (every module of gradc imports with nothing else installed)."""
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import PathDistribution
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"numpy", "numba", "llvmlite"}


def _name(requirement):
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    """The distribution the checkout's pyproject.toml describes (not an older installed copy's),
    its metadata made by setuptools' egg_info, which needs no wheel package and no network."""
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("metadata")
    done = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                           "egg_info", "--egg-base", str(out)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return PathDistribution(Path(out) / "gradc.egg-info")


def test_pip_show_lists_home_page_source_issues_and_classifiers(distribution):
    metadata = distribution.metadata
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert set(urls) >= {"Homepage", "Source", "Issues"}
    assert all(u.startswith("https://") for u in urls.values())
    assert urls["Issues"].startswith(urls["Source"])  # the issues of the same repository
    classifiers = metadata.get_all("Classifier")
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3") for c in classifiers)


def test_core_dependencies_are_what_gradc_imports_and_extras_have_the_rest(distribution):
    requires = distribution.requires
    core = {_name(r) for r in requires if "extra ==" not in r}
    assert core == CORE  # scipy and sympy are the user's: gradc never imports them itself
    extras = {}
    for r in requires:
        m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", r)
        if m:
            extras.setdefault(m.group(1), set()).add(_name(r))
    assert {"scipy", "sympy", "dask", "import-linter", "pytest"} <= extras["test"]
    assert any("dask[distributed]" in r.replace(" ", "") and "test" in r for r in requires)
    assert extras["dask"] == {"dask"} and extras["draw"] == {"graphviz"}
    assert {"scipy", "sympy"} <= extras["examples"]


BLOCKED_IMPORT = textwrap.dedent("""
    import importlib, importlib.abc, importlib.metadata as md, json, pkgutil, re, sys
    before = {{m.split(".")[0] for m in sys.modules}}  # site's .pth files ran before this
    sys.path.insert(0, {root!r})
    core = set({core!r})

    def name(req):
        return re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")

    # The core dependencies and what they need in turn (not their extras).
    allowed, todo = set(), list(core)
    while todo:
        dist = todo.pop()
        if dist in allowed:
            continue
        allowed.add(dist)
        try:
            todo += [name(r) for r in md.requires(dist) or () if "extra ==" not in r]
        except md.PackageNotFoundError:
            pass
    installed = md.packages_distributions()  # top-level module -> distributions
    blocked = {{top for top, dists in installed.items()
               if not {{name(d) for d in dists}} & allowed}}
    blocked.discard("gradc")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"{{fullname}} is not a core dependency of gradc",
                                          name=fullname)
            return None

    sys.meta_path.insert(0, Blocker())
    import gradc
    modules = sorted(m.name for m in pkgutil.walk_packages(gradc.__path__, "gradc.")
                     if m.name != "gradc.__main__")  # __main__ runs the command
    for module in modules:
        importlib.import_module(module)
    # And a derivative computed and compiled, on the paths every user takes.
    J = gradc.value_and_grad(lambda a, b, c: 3 * (a + b * c))
    assert J(5.0, 3.0, 2.0) == (33.0, (3.0, 6.0, 9.0)), J(5.0, 3.0, 2.0)
    third_party = sorted(({{m.split(".")[0] for m in sys.modules}} - before) & set(installed))
    print(json.dumps({{"modules": modules, "blocked": sorted(blocked), "loaded": third_party}}))
""")


def test_every_module_imports_with_only_the_core_dependencies(tmp_path):
    env = {**os.environ, "GRADC_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT.format(root=ROOT, core=CORE)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "gradc.jit" in report["modules"] and "gradc.nn.train" in report["modules"]
    assert len(report["modules"]) >= 20
    # The blocker really blocked the extras this environment has (the test proves nothing
    # where none are installed), and none of them was loaded.
    assert {"scipy", "sympy"} & set(report["blocked"]), report["blocked"]
    assert not set(report["loaded"]) & set(report["blocked"])
