"""The ``gradc`` command.

``gradc demo`` shows the seed's derivation and the code gradc emits for it;
``gradc build MODULE.py -o OUTDIR --format {python,ext,c}`` builds the functions
MODULE marks with ``@gradc.export`` ahead of time (see :mod:`gradc.aot`).
"""
from __future__ import annotations

import argparse
import sys


def demo(out=None):
    """The seed: J = 3(a + b·c) at a=5, b=3, c=2 — its explain table, emitted source and result."""
    import gradc

    out = out or sys.stdout

    def J(a, b, c):
        u = b * c
        v = a + u
        return 3 * v

    print("The seed's computation graph, J(a, b, c) = 3(a + b*c), at a=5, b=3, c=2:\n", file=out)
    gradc.explain(J, 5.0, 3.0, 2.0, file=out)
    f = gradc.value_and_grad(J)
    value, grads = f(5.0, 3.0, 2.0)
    print("\nThe fused forward-and-reverse function gradc emits (and numba compiles):\n", file=out)
    print(f.source, file=out)
    print(f"J(5, 3, 2) = {value}, (dJ/da, dJ/db, dJ/dc) = {grads}", file=out)
    print(f"source file: {f.path}", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gradc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="explain and compile the seed example J = 3(a + b*c)")
    b = sub.add_parser("build", help="build the @gradc.export functions of a module ahead of time")
    b.add_argument("module", help="the Python file that marks functions with @gradc.export")
    b.add_argument("-o", "--outdir", required=True, help="directory to write the result to")
    b.add_argument("--format", choices=("python", "ext", "c"), default="python",
                   help="python: a numba module; ext: a native extension (needs only NumPy); "
                        "c: lib<name>.so and <name>.h (no Python)")
    b.add_argument("--name", help="the module / library name (default: MODULE's file name)")
    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks of a gradc checkout (python -m benchmarks; options pass on)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        demo()
    elif args.command == "build":
        return build(args.module, args.outdir, args.format, args.name)
    return 0


def bench(options):
    """``gradc bench``: ``python -m benchmarks`` in the current directory (a gradc checkout:
    the benchmarks are not installed with the package)."""
    import os
    import subprocess

    if not os.path.isfile(os.path.join("benchmarks", "__main__.py")):
        print("gradc: error: gradc bench runs the benchmarks/ folder of a gradc checkout; "
              "run it from the repository root (or use python -m benchmarks there).",
              file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, "-m", "benchmarks", *options])


def build(module, outdir, fmt, name=None, out=None, err=None):
    """``gradc build``: print the files written, or the gradc error (status 1)."""
    from .aot import build as aot_build
    from .errors import GradcError

    try:
        files = aot_build(module, outdir, fmt, name)
    except GradcError as exc:
        print(f"gradc: error: {exc}", file=err or sys.stderr)
        return 1
    for f in files:
        print(f, file=out or sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
