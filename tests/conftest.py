"""tests/: the suite removes the cache directory it made.

The repository's root conftest.py gives the session one private cache directory
(``GRADC_TEST_CACHE_DIR``, made with ``tempfile.mkdtemp`` unless the variable is
already set). This removes it when the session ends, unless it came from the
environment the process started with: a directory the user chose (to reuse
compiled functions across runs) or one a parent test session owns.
"""
import os
import shutil
import tempfile


def _started_with(name):
    """Whether ``name`` was in this process's environment when it started: True, False, or
    None where that cannot be known (no /proc). ``os.environ`` cannot tell: it is changed in
    place, the root conftest.py's own assignment included."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            initial = fh.read().split(b"\0")
    except OSError:
        return None
    return any(item.startswith(name.encode() + b"=") for item in initial)


def _made_by_this_session(directory):
    """The root conftest's mkdtemp directory, made in this process (not inherited)."""
    if not directory or _started_with("GRADC_TEST_CACHE_DIR") is not False:
        return False
    parent, name = os.path.split(os.path.abspath(directory))
    return (name.startswith("gradc-test-cache-")
            and os.path.samefile(parent, tempfile.gettempdir()) and os.path.isdir(directory))


def pytest_sessionfinish(session, exitstatus):
    directory = os.environ.get("GRADC_TEST_CACHE_DIR")
    if _made_by_this_session(directory):
        shutil.rmtree(directory, ignore_errors=True)
