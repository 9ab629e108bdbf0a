"""The ``gradc`` command: ``gradc demo`` shows the seed's derivation and the code gradc emits for it."""
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
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
