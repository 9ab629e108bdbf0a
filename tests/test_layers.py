"""gradc's modules import downward only: import-linter's layers contracts in .importlinter,
and no import circle anywhere in the package.

A back-arrow — the op table importing the IR or ``ad``, the IR importing the emitter, a
stage importing the ``gradc`` package (which imports everything), a builder of ``gradc
build`` importing the build, gradc.draw importing gradc.explain — fails here, with
import-linter's report of the chain that breaks the contract. Any other pair of modules
that import each other (inside a function or not) fails the circle check below.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lint(config):
    """import-linter's run over the tree with the config file ``config``."""
    import importlinter  # noqa: F401  (a test dependency: the contracts must be checked)

    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--config", str(config), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_pipeline_aot_and_explain_import_downward_only():
    run = lint(".importlinter")
    assert run.returncode == 0, run.stdout + run.stderr


# Each contract with two of its layers swapped, and the back-arrow import-linter must report.
# aot's arrow is an import inside a function (aot's _build_format imports the C builder).
SWAPS = {
    "pipeline": ("    gradc.ir\n    gradc.ops\n", "    gradc.ops\n    gradc.ir\n",
                 "gradc.ir is not allowed to import gradc.ops"),
    "aot": ("    gradc.aot\n    gradc.aot_c | gradc.aot_pycc\n",
            "    gradc.aot_c | gradc.aot_pycc\n    gradc.aot\n",
            "gradc.aot is not allowed to import gradc.aot_c"),
    "explain": ("    gradc.draw\n    gradc.derivation\n", "    gradc.derivation\n    gradc.draw\n",
                "gradc.draw is not allowed to import gradc.derivation"),
}


@pytest.mark.parametrize("contract", sorted(SWAPS))
def test_a_back_arrow_breaks_the_contract(tmp_path, contract):
    """Each contract can fail: a copy of the config with two of its layers swapped is reported."""
    with open(os.path.join(ROOT, ".importlinter")) as fh:
        config = fh.read()
    layers, swapped_layers, message = SWAPS[contract]
    assert config.count(layers) == 1
    swapped = config.replace(layers, swapped_layers)
    path = tmp_path / "swapped.ini"
    path.write_text(swapped)
    run = lint(path)
    assert run.returncode != 0
    assert message in run.stdout


# --- no import circles anywhere in gradc ----------------------------------------------------
# import-linter checks the layers named in .importlinter; this checks every module, named or
# not, for circles: a module that imports another which (through any chain) imports it back,
# counting imports inside functions, which run later but still tie the two modules together.


def module_files(package_dir):
    """``{dotted module name: file}`` for every ``.py`` file of the package at ``package_dir``
    (its subpackages included; a package is named by its ``__init__.py``)."""
    root = os.path.dirname(os.path.abspath(package_dir))
    found = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _imported(module, path, modules):
    """The modules of ``modules`` that ``module`` (the file at ``path``) imports anywhere in
    its text (functions included), each named once; ``from . import x`` names module ``x``
    where there is one, else the package."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                        for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # gradc.ir.Graph -> gradc.ir
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(package_dir):
    """``{module: the package's modules it imports}`` for the package at ``package_dir``."""
    modules = module_files(package_dir)
    return {m: _imported(m, path, modules) for m, path in sorted(modules.items())}


def circles(graph):
    """The import circles of ``graph``: its strongly connected components of more than one
    module (Tarjan's algorithm), each as a sorted list, in a deterministic order."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the first of its component: pop the component
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_gradc_modules_import_each_other_in_a_circle():
    found = circles(import_graph(os.path.join(ROOT, "gradc")))
    assert not found, ("these gradc modules import each other in a circle (imports inside "
                       f"functions count): {found}; move what both need into a module below both")


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    """The check can fail: a package whose two modules import each other, one of them only
    inside a function, is reported; its third module, importing downward, is not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "build.py").write_text("from .errors import Failed\n\n\ndef run():\n"
                                      "    from .native import make\n    return make()\n")
    (package / "native.py").write_text("def make():\n    from .build import Failed\n"
                                       "    raise Failed()\n")
    (package / "errors.py").write_text("class Failed(Exception):\n    pass\n")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("from .. import native  # downward\n")
    graph = import_graph(str(package))
    assert graph["pkg.sub"] == {"pkg.native"}
    assert circles(graph) == [["pkg.build", "pkg.native"]]
