"""The ``gradc`` command: the seed's demo, the emitted source and derivation of your own
functions, ahead-of-time builds, the disk cache, and the benchmarks.

Every subcommand is a small function here that prints what the library returns;
``main(argv)`` parses the arguments and returns the exit status (0, or 1 with a
``gradc: error: ...`` line on stderr for anything a user can get wrong).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Plain text: argparse prints it as it is (no reST markup in --help).
DESCRIPTION = """\
gradc: exact derivatives of Python functions, emitted as readable code and compiled by numba.

  gradc demo                                   the seed J = 3(a + b*c): derivation, code, picture
  gradc show model.py:rosen --args f8[20]      the source gradc emits for your function
  gradc explain model.py:J 5 3 2               the derivation table of your function at a point
  gradc build model.py -o build/aot            ahead-of-time builds of @gradc.export functions
  gradc cache info                             where the disk cache is, its entries and size
  gradc cache clear [--older-than DAYS]        empty the disk cache
  gradc bench                                  the benchmarks (from a gradc checkout)

show, explain and build import MODULE.py, which runs its top-level code: use them only on
files you trust.
"""

KINDS = ("value_and_grad", "grad", "value", "hessian", "value_grad_hessian", "hvp", "jvp",
         "jacobian")


def make_parser():
    from . import __version__

    # The description as written (its table of commands); the subcommands' help is wrapped.
    parser = argparse.ArgumentParser(prog="gradc", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="explain, compile and draw the seed example J = 3(a + b*c)",
                       description="The seed J(a, b, c) = 3(a + b*c) at a=5, b=3, c=2: its "
                                   "derivation table, the code gradc emits, the result, and "
                                   "(with Graphviz) a picture of the graph, seed.svg.")
    d.add_argument("--out", default=".", metavar="DIR",
                   help="folder to write seed.svg to (default: the current folder)")

    s = sub.add_parser("show", help="print the source gradc emits for MODULE.py:FUNC",
                       description="Print the module gradc emits for FUNC of MODULE.py at the "
                                   "given argument types, without compiling it. Imports "
                                   "MODULE.py, which runs its code: use it on files you trust.")
    s.add_argument("target", metavar="MODULE.py:FUNC")
    s.add_argument("--kind", choices=KINDS, default="value_and_grad",
                   help="what to emit (default: value_and_grad)")
    s.add_argument("--args", metavar="TYPES",
                   help="one type per positional argument, comma-separated: f8 for a float, "
                        "f8[n] or f8[n,m] for a float64 array of that shape (default: f8 for "
                        "every parameter). hvp and jvp take a tangent per argument after them.")

    e = sub.add_parser("explain", help="print the derivation table of MODULE.py:FUNC at a point",
                       description="Print how FUNC's value and gradient are computed at the given "
                                   "floats (as gradc.explain). Imports MODULE.py, which runs its "
                                   "code: use it on files you trust.")
    e.add_argument("target", metavar="MODULE.py:FUNC")
    e.add_argument("values", metavar="X", nargs="+", type=float, help="the arguments, floats")

    b = sub.add_parser("build", help="build the @gradc.export functions of a module ahead of time",
                       description="Build the functions MODULE.py marks with @gradc.export. "
                                   "Imports MODULE.py, which runs its code: use it on files you "
                                   "trust.")
    b.add_argument("module", help="the Python file that marks functions with @gradc.export")
    b.add_argument("-o", "--outdir", required=True, help="directory to write the result to")
    b.add_argument("--format", choices=("python", "ext", "c"), default="python",
                   help="python: a numba module; ext: a native extension (needs only NumPy); "
                        "c: lib<name>.so and <name>.h (no Python)")
    b.add_argument("--name", help="the module / library name (default: MODULE's file name)")

    c = sub.add_parser("cache", help="the disk cache: info, clear",
                       description="gradc's disk cache: $GRADC_CACHE_DIR, else "
                                   "$XDG_CACHE_HOME/gradc, else ~/.cache/gradc.")
    c.set_defaults(print_help=c.print_help)  # a bare `gradc cache` shows its actions
    cache = c.add_subparsers(dest="action", metavar="ACTION")
    cache.add_parser("info", help="where the cache is, how many entries, size, oldest entry")
    clear = cache.add_parser("clear", help="remove gradc's entries (all, or old ones)")
    clear.add_argument("--older-than", type=_days, metavar="DAYS",
                       help="only entries no process has loaded for more than DAYS days")

    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks of a gradc checkout (python -m benchmarks; options pass on)")
    return parser


def _days(text):
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0 or more)")
    return days


def main(argv=None):
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:  # a bare `gradc`: what it can do, not an error
        parser.print_help()
        return 0
    from .errors import GradcError

    try:
        if args.command == "demo":
            return demo(out_dir=args.out)
        if args.command == "build":
            return build(args.module, args.outdir, args.format, args.name)
        if args.command == "show":
            return show(args.target, args.kind, args.args)
        if args.command == "explain":
            return explain(args.target, args.values)
        if args.command == "cache":
            if args.action is None:
                args.print_help()
                return 0
            return cache_info() if args.action == "info" else cache_clear(args.older_than)
    except GradcError as exc:
        print(f"gradc: error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)  # pragma: no cover - argparse allows no other


# --- demo ---------------------------------------------------------------------------------

DRAW_HINT = ('For a picture of the graph: pip install "gradc[draw]" and Graphviz\'s dot program '
             "(apt install graphviz, brew install graphviz or conda install graphviz), then run "
             "gradc demo again.")


def demo(out=None, out_dir="."):
    """The seed: J = 3(a + b·c) at a=5, b=3, c=2 — its explain table, emitted source, result,
    and its picture as ``seed.svg`` in ``out_dir`` where Graphviz is installed."""
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
    print("\nThe fused forward-and-reverse function gradc emits (and compiles):\n", file=out)
    print(f.source, file=out)
    print(f"J(5, 3, 2) = {value}, (dJ/da, dJ/db, dJ/dc) = {grads}", file=out)
    # a scalar program runs natively (LLVM from numba's own lowering, no numba import): its
    # cache file is the object code; programs numba compiles keep the emitted source there
    info = f.cache_info()
    kind = "object code" if info["runs"] == "native" else "source"
    print(f"compiled by: {info['runs']}; cache file ({kind}): {f.path}", file=out)
    print(_draw_seed(J, out_dir), file=out)
    return 0


def _draw_seed(J, out_dir):
    """Write the seed's picture to ``out_dir/seed.svg``; the line that says where, or how to
    get pictures when Graphviz (or gradc's drawing module) is not installed."""
    try:
        from .draw import DrawingUnavailable, draw
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.draw":
            raise  # gradc.draw is there but broken: a bug, shown as one
        return DRAW_HINT
    path = os.path.abspath(os.path.join(out_dir, "seed.svg"))
    try:
        draw(J, 5.0, 3.0, 2.0).save(path)
    except DrawingUnavailable as exc:
        return f"No picture: {exc.reason}"
    except OSError as exc:
        return f"No picture: gradc could not write {path} ({exc.strerror or exc}); pass --out DIR."
    return f"picture of the graph: {path}"


# --- show and explain: the user's own functions --------------------------------------------

def _load_target(target):
    """The function named by ``MODULE.py:FUNC``, its module imported from the file (which runs
    the module's code, as the user asked). A function already wrapped by gradc is unwrapped."""
    from .aot import BuildError, import_path
    from .api import GradcFunction
    from .errors import ArgumentError

    path, sep, name = target.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ArgumentError(f"{target!r} is not MODULE.py:FUNC (a file, a colon, a function "
                            "name), e.g. model.py:rosen.")
    if not os.path.isfile(path):
        raise ArgumentError(f"no such file {path!r} (from {target!r}).")
    try:
        module = import_path(path)
    except BuildError as exc:  # its message speaks of `gradc build`; say it for this command
        cause = exc.__cause__
        what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise ArgumentError(f"importing {path} failed: {what}") from exc
    fn = getattr(module, name, None)
    if isinstance(fn, GradcFunction):
        fn = fn.__wrapped__
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and not isinstance(v, type))
        raise ArgumentError(f"{path} has no function {name!r}"
                            + (f"; it has {', '.join(found)}." if found else "."))
    return fn


def _split_types(text):
    """``"f8,f8[3,4]"`` -> ``["f8", "f8[3,4]"]``: commas inside brackets belong to a shape."""
    parts, depth, current = [], 0, ""
    for ch in text.replace(" ", ""):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _positional(fn):
    """The number of positional parameters of ``fn``; None when it takes ``*args`` or its
    signature cannot be read."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _shapes(fn, kind, types):
    """One shape per argument (None: a float) from ``--args``, else a float per parameter;
    hvp and jvp take a tangent per argument too, so twice as many."""
    from .aot import BuildError, parse_arg
    from .errors import ArgumentError

    wanted = _positional(fn)
    if wanted is not None and kind in ("hvp", "jvp"):
        wanted *= 2
    if types is None:
        if wanted is None:
            raise ArgumentError("gradc cannot tell how many arguments this function takes; "
                                "give their types with --args.")
        return (None,) * wanted
    shapes = []
    for part in _split_types(types):
        try:
            shapes.append(parse_arg(part))
        except BuildError:
            raise ArgumentError(f"--args {types!r}: {part!r} is not a type gradc knows; use f8 "
                                "for a float or f8[n] / f8[n,m] for a float64 array of that "
                                "shape, comma-separated.") from None
    if wanted is not None and len(shapes) != wanted:
        raise ArgumentError(f"--args {types!r} gives {len(shapes)} type(s), but gradc {kind} of "
                            f"this function takes {wanted} argument(s).")
    return tuple(shapes)


def show(target, kind="value_and_grad", types=None, out=None):
    """``gradc show``: the module gradc emits for ``target`` at ``types``, not compiled.

    It is the module ``.source`` shows and ``backend="python"`` runs; numba compiles the same
    text (arrays traced whole may run as fused loops instead, see the README's *Arrays*)."""
    import gradc

    fn = _load_target(target)
    make = {"value": gradc.compile}.get(kind) or getattr(gradc, kind)
    source = make(fn).lower(_shapes(fn, kind, types))[1]
    print(source, file=out or sys.stdout, end="" if source.endswith("\n") else "\n")
    return 0


def explain(target, values, out=None):
    """``gradc explain``: gradc.explain's table for ``target`` at the float ``values``."""
    import gradc

    gradc.explain(_load_target(target), *values, file=out or sys.stdout)
    return 0


# --- the cache -------------------------------------------------------------------------------

def _size(n):
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0


def _age(seconds):
    days = seconds / 86400.0
    if days >= 1:
        return f"{days:.1f} days ago"
    hours = seconds / 3600.0
    return f"{hours:.1f} hours ago" if hours >= 1 else f"{max(seconds, 0) / 60:.0f} minutes ago"


def cache_info(out=None):
    """``gradc cache info``: where the cache is, its entries, size and oldest entry."""
    from . import jit

    out = out or sys.stdout
    info = jit.cache_summary()
    print(f"cache directory: {info['directory']}", file=out)
    if not info["exists"]:
        print("  (not created yet: gradc makes it at its first compile)", file=out)
    if info["problem"]:
        print(f"  gradc does not use it: it {info['problem']}; it caches in a private "
              "temporary directory for each process instead.", file=out)
    print(f"entries: {info['entries']:,} (one per compiled module; numba's machine code in "
          "__pycache__)", file=out)
    print(f"size on disk: {_size(info['bytes'])}", file=out)
    if info["oldest"] is None:
        print("oldest entry: none", file=out)
    else:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["oldest"]))
        print(f"oldest entry: last used {when} ({_age(time.time() - info['oldest'])})", file=out)
    return 0


def cache_clear(older_than=None, out=None):
    """``gradc cache clear [--older-than DAYS]``: remove gradc's entries from the cache."""
    from . import jit

    removed, freed = jit.clear_cache(older_than_days=older_than)
    which = "" if older_than is None else f" not used for {older_than:g} days"
    print(f"removed {removed:,} entries{which} ({_size(freed)}) from {jit.default_cache_dir()}",
          file=out or sys.stdout)
    return 0


# --- build and bench -------------------------------------------------------------------------

def bench(options):
    """``gradc bench``: ``python -m benchmarks`` in the current directory (a gradc checkout:
    the benchmarks are not installed with the package)."""
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
