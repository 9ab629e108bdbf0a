"""`gradc demo` and `python -m gradc demo` print the seed's table, the emitted source and the result."""
import os
import subprocess
import sys

from gradc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_prints_table_source_and_result(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "db = du * c   = 6" in out
    assert "def J__value_and_grad(a, b, c):" in out
    assert "J(5, 3, 2) = 33.0, (dJ/da, dJ/db, dJ/dc) = (3.0, 6.0, 9.0)" in out


def test_python_dash_m_gradc_demo():
    out = subprocess.run([sys.executable, "-m", "gradc", "demo"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "dc = du * b   = 9" in out and "(3.0, 6.0, 9.0)" in out


def test_bench_outside_a_checkout_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 1
    assert "repository root" in capsys.readouterr().err
