"""Test-session set-up shared by tests/ and the doctests in gradc/.

One private cache directory for the whole session: numba compiles cost 0.3-3 s
each, and tests that compile the same source reuse each other's work.
"""
import os
import tempfile

collect_ignore = ["gradc/__main__.py", "benchmarks", "examples"]

if "GRADC_TEST_CACHE_DIR" not in os.environ:
    os.environ["GRADC_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradc-test-cache-")
os.environ["GRADC_CACHE_DIR"] = os.environ["GRADC_TEST_CACHE_DIR"]
