"""The core's stages import downward only (import-linter's layers contract in .importlinter).

A back-arrow — the op table importing the IR or ``ad``, the IR importing the emitter, a
stage importing the ``gradc`` package (which imports everything) — fails here, with
import-linter's report of the chain that breaks the contract.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pipeline_stages_import_downward_only():
    import importlinter  # noqa: F401  (a test dependency: the contract must be checked)

    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--config", ".importlinter", "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_back_arrow_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the config with two layers swapped is reported."""
    with open(os.path.join(ROOT, ".importlinter")) as fh:
        config = fh.read()
    swapped = config.replace("    gradc.ir\n    gradc.ops\n", "    gradc.ops\n    gradc.ir\n")
    assert swapped != config
    path = tmp_path / "swapped.ini"
    path.write_text(swapped)
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--config", str(path), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "gradc.ir is not allowed to import gradc.ops" in run.stdout
