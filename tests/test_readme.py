"""Every code block in README.md runs, so the README cannot drift from the code.

```python blocks are executed, each in a fresh namespace (a reader copies one block at a time)
in a temporary working directory; ```bash / ```sh blocks are run by bash with ``gradc`` standing
for ``python -m gradc`` of this checkout and a private cache directory. A block whose fence says
``not-run (why)`` after the language is not run, visibly: the README says why, and this test
checks that it does. Fences without a language are program output and file listings, not code;
any other language must be marked, so nothing is skipped silently.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(.*)$")


def blocks():
    """``(line, language, marker, text)`` for every fenced block of the README."""
    found, current = [], None
    with open(README, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            m = FENCE.match(line.rstrip("\n"))
            if m is None:
                if current is not None:
                    current[3].append(line)
                continue
            if current is None:
                language, _, marker = m.group(1).strip().partition(" ")
                current = (number, language, marker.strip(), [])
            else:
                found.append(current[:3] + ("".join(current[3]),))
                current = None
    assert current is None, f"README.md:{current[0]}: a code block is never closed"
    return found


BLOCKS = blocks()


def _selected(languages, run):
    return [pytest.param(line, text, id=f"README.md:{line}")
            for line, language, marker, text in BLOCKS
            if language in languages and bool(marker) != run]


def test_every_block_is_run_or_says_why_not():
    for line, language, marker, _ in BLOCKS:
        where = f"README.md:{line}"
        if marker:
            assert re.fullmatch(r"not-run \(.+\)", marker), \
                f"{where}: after the language write 'not-run (the reason)', not {marker!r}"
        else:
            assert language in ("", "python", "bash", "sh"), \
                f"{where}: a ```{language} block is neither run nor marked not-run (why)"
    assert len(_selected(("python",), run=True)) >= 10  # the parsing found the README's code


@pytest.mark.parametrize("line, text", _selected(("python",), run=True))
def test_python_block_runs(line, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (pictures)
    code = compile("\n" * line + text, README, "exec")  # tracebacks name README.md's lines
    try:
        exec(code, {"__name__": "__readme__"})
    except Exception as exc:
        if type(exc).__name__ == "DrawingUnavailable":  # gradc.draw without Graphviz's dot
            pytest.skip(f"this block draws, and Graphviz is not installed here: {exc}")
        raise


#: Commands a shell block may not run from a test, marked or not: installing, or the test
#: suite itself (which would run this test again).
NEVER_RUN = re.compile(r"\b(pip|pytest|sudo|apt(-get)?|brew|conda)\b")


@pytest.mark.parametrize("line, text", _selected(("bash", "sh"), run=True))
def test_shell_block_runs(line, text, tmp_path):
    found = NEVER_RUN.search(text)
    assert found is None, (f"a shell block runs {found.group(0)!r}: mark it 'not-run (why)' "
                           "after the language; it was not run")
    script = f'set -euo pipefail\ngradc() {{ "{sys.executable}" -m gradc "$@"; }}\n{text}'
    env = {**os.environ, "PYTHONPATH": ROOT, "GRADC_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
