"""``gradc.draw``: the computation graph as a picture, with each forward value and adjoint on it.

``draw(f, *args)`` derives ``f`` at ``args`` exactly as ``gradc.explain`` does
(:func:`gradc.derivation.derive`: arrays traced whole, then unrolled into their
elements by the pure pass ``gradc.unroll``) and lays the graph out left to right
in forward order: one box per step, showing its op over the user's own names
(``u = b * c``), its value (``u = 6``) and its adjoint (``du = 3``). With
``reverse=True`` the reverse sweep's own steps (the adjoint graph) are drawn
too, each under the value it is the adjoint of, flowing right to left.

A graph of more than ``max_nodes`` boxes is drawn collapsed: the optimized IR
gradc compiles, with arrays traced whole (one box per array op, one per
loop), forward and reverse sweep framed apart; runs of unnamed steps still
over the limit become one box that counts their ops.

Graphviz is optional (``pip install "gradc[draw]"`` and the ``dot`` program).
:func:`dot_source` needs neither; :func:`draw` and rendering do, and without
them raise :class:`DrawingUnavailable`, which says how to install them.
``import gradc`` never imports graphviz.
"""
from __future__ import annotations

import html
import shutil
from pathlib import Path

import numpy as np

from .derivation import derive, expression, live_ids, steps
from .errors import ArgumentError, GradcError, where

MAX_NODES = 200  # more boxes than this are unreadable on a page: collapse

INSTALL = ('install the Python package with  pip install "gradc[draw]"  (or pip install graphviz) '
           "and the dot program with  apt-get install graphviz  (Debian, Ubuntu),  brew install "
           "graphviz  (macOS) or  conda install graphviz")

# Colours: values in blue, adjoints in red, as the seed's two sweeps; ink and frames in greys.
FONT = "Helvetica,Arial,sans-serif"
INK, MUTED, FRAME = "#1f2328", "#6e7781", "#8c959f"
VALUE_BG, VALUE_INK = "#e7f0fb", "#0b4f9c"
ADJOINT_BG, ADJOINT_INK = "#fdebe9", "#b3261e"
INPUT_BG = "#f3f4f6"
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
PNG_DPI = 200  # a PNG sharp enough for a slide; SVG scales by itself


class DrawingUnavailable(GradcError):
    """Graphviz (the ``graphviz`` Python package or its ``dot`` program) is not installed.
    ``reason`` is the message without the caller's file and line (for ``gradc demo``)."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason or message


def _graphviz():
    """The graphviz module, checked to find ``dot``; or DrawingUnavailable saying what to install."""
    try:
        import graphviz
    except ImportError:
        reason = ("gradc.draw renders with Graphviz, and the graphviz Python package is not "
                  f"installed: {INSTALL}.")
        raise DrawingUnavailable(f"{where()}: {reason}", reason) from None
    if shutil.which("dot") is None:
        reason = f"gradc.draw renders with Graphviz, and its dot program is not on PATH: {INSTALL}."
        raise DrawingUnavailable(f"{where()}: {reason}", reason)
    return graphviz


class Drawing:
    """A rendered-on-demand picture of a graph: ``source`` (the DOT text), ``svg()``,
    ``png()``, ``save(path)``; Jupyter displays it through ``_repr_svg_``."""

    def __init__(self, source):
        self.source = source
        self._svg = None

    def _render(self, fmt):
        graphviz = _graphviz()
        source = self.source
        if fmt == "png":  # the DOT text stays resolution-free; only the bitmap gets a dpi
            head, rest = source.split("\n", 1)
            source = f"{head}\n  graph [dpi={PNG_DPI}];\n{rest}"
        try:
            return graphviz.Source(source).pipe(format=fmt, engine="dot")
        except graphviz.ExecutableNotFound:
            raise DrawingUnavailable(f"{where()}: Graphviz's dot program was not found: "
                                     f"{INSTALL}.") from None
        except graphviz.CalledProcessError as exc:  # a bug in the DOT text gradc wrote
            raise GradcError(f"{where()}: Graphviz could not render the drawing "
                             f"(dot said: {exc.stderr!r}); please report it.") from None

    def svg(self):
        """The picture as SVG text."""
        if self._svg is None:
            self._svg = self._render("svg").decode("utf-8")
        return self._svg

    def png(self):
        """The picture as PNG bytes."""
        return self._render("png")

    def save(self, path):
        """Write the picture to ``path``, in the format its suffix names (.svg, .png, .pdf);
        returns the path as a :class:`pathlib.Path`."""
        path = Path(path)
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ArgumentError(f"{where()}: Drawing.save writes {', '.join(FORMATS)} files; "
                                f"{str(path)!r} has no such suffix.")
        path.write_bytes(self.svg().encode("utf-8") if fmt == "svg" else self._render(fmt))
        return path

    def _repr_svg_(self):
        return self.svg()

    def __repr__(self):
        return f"<gradc.Drawing: {self.source.count(' [label=<')} boxes; .svg(), .save(path)>"


def draw(f, *args, adjoints=True, reverse=False, collapse=None, max_nodes=MAX_NODES):
    """A picture of ``f``'s computation graph at ``args`` (a :class:`Drawing`).

    ``f`` is a plain function or a gradc function. Each box shows a step's op,
    its name, its value and (``adjoints=True``) its adjoint ``dvar = dJ/dvar``.
    ``reverse=True`` also draws the reverse sweep's steps. ``collapse``: None
    collapses graphs of more than ``max_nodes`` boxes, True always, False never.
    Raises :class:`DrawingUnavailable` where Graphviz is not installed.

    >>> def J(a, b, c):
    ...     u = b * c
    ...     v = a + u
    ...     return 3 * v
    >>> print(dot_source(J, 5, 3, 2).splitlines()[0])
    digraph J {
    """
    _graphviz()
    return Drawing(dot_source(f, *args, adjoints=adjoints, reverse=reverse, collapse=collapse,
                              max_nodes=max_nodes))


def dot_source(f, *args, adjoints=True, reverse=False, collapse=None, max_nodes=MAX_NODES):
    """The DOT text :func:`draw` renders (deterministic; needs no Graphviz)."""
    from .api import GradcFunction

    if collapse not in (None, True, False):
        raise ArgumentError(f"{where()}: collapse must be None, True or False, not {collapse!r}.")
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1:
        raise ArgumentError(f"{where()}: max_nodes must be a positive int, not {max_nodes!r}.")
    kind = getattr(f, "_kind", "value_and_grad")
    adjoints = adjoints and kind != "compile"  # gradc.compile: values only
    fn = f._fn if isinstance(f, GradcFunction) else f
    values_in = GradcFunction(fn, "value_and_grad", backend="python")._bind(args, {})
    elements = sum(np.size(v) for v in values_in if not isinstance(v, float))
    if collapse or collapse is None and elements > max_nodes:  # unrolling would be too big
        return _Collapsed(fn, values_in, adjoints, max_nodes).dot()
    # Every step's box: the whole-array trace unrolled into its elements (gradc/unroll.py),
    # which is the seed's picture of a small graph; arrays stay whole where an op has no
    # element form (one box per array op, each showing its array's first and last values).
    full = _Full(derive(f, *args, order=1, elements=True), adjoints, reverse)
    if collapse is None and full.size() > max_nodes:
        return _Collapsed(fn, values_in, adjoints, max_nodes).dot()
    return full.dot()


# --- text --------------------------------------------------------------------------------

def _short(value, digits=6):
    """A value as a slide shows it: integers bare, 6 significant digits (4 in arrays, which
    show their first and last elements)."""
    if np.ndim(value):  # one line, whatever the shape: its first and last elements
        flat = np.asarray(value).ravel()
        items = [_short(v, 4) for v in flat] if flat.size <= 4 else \
            [_short(flat[0], 4), _short(flat[1], 4), "…", _short(flat[-1], 4)]
        return f"[{', '.join(items)}]"
    if isinstance(value, (bool, np.bool_)):
        return repr(bool(value))
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return repr(int(value))
    return f"{value:.{digits}g}"


def _clip(text, width=48):
    return text if len(text) <= width else text[:width - 1] + "…"


def _cell(text, bg=None, ink=INK, bold=False, size=None, escape=True):
    body = html.escape(text) if escape else text
    if bold:
        body = f"<B>{body}</B>"
    size_attr = f' POINT-SIZE="{size}"' if size else ""
    bg_attr = f' BGCOLOR="{bg}"' if bg else ""
    return f'<TR><TD ALIGN="LEFT" STYLE="rounded"{bg_attr}><FONT COLOR="{ink}"{size_attr}>{body}</FONT></TD></TR>'


def _box(rows, border=FRAME, width=1):
    """An HTML-like Graphviz label: a rounded table of rows (each from :func:`_cell`)."""
    return (f'<<TABLE BORDER="{width}" COLOR="{border}" STYLE="rounded" CELLBORDER="0" '
            f'CELLSPACING="2" CELLPADDING="5">{"".join(rows)}</TABLE>>')


def _title(node_expr, op):
    """A box's first row: ``u = b * c`` in bold and the op's name in small grey."""
    text = f"<B>{html.escape(_clip(node_expr))}</B>"
    if op:
        text += f'  <FONT COLOR="{MUTED}" POINT-SIZE="10">{html.escape(op)}</FONT>'
    return f'<TR><TD ALIGN="LEFT"><FONT COLOR="{INK}">{text}</FONT></TD></TR>'


class _Dot:
    """Accumulates DOT statements in order (so the text is deterministic)."""

    def __init__(self, name, caption):
        self.lines = [
            f"digraph {name} {{",
            f'  graph [rankdir=LR, nodesep=0.35, ranksep=0.6, fontname="{FONT}", '
            f'labelloc=t, labeljust=l, label=<{caption}>];',
            f'  node [shape=plain, fontname="{FONT}", fontsize=14];',
            f'  edge [color="{FRAME}", arrowsize=0.7, penwidth=1.2];',
        ]

    def node(self, key, label, indent="  "):
        self.lines.append(f"{indent}{key} [label={label}];")

    def edge(self, a, b, attrs="", indent="  "):
        self.lines.append(f"{indent}{a} -> {b}" + (f" [{attrs}]" if attrs else "") + ";")

    def open_frame(self, name, title):
        """Start a framed, titled group of boxes (a Graphviz cluster)."""
        self.lines.append(f"  subgraph {name} {{")
        self.lines.append(f'    graph [label=<<FONT COLOR="{MUTED}" POINT-SIZE="12">'
                          f'{html.escape(title)}</FONT>>, style="rounded,dashed", '
                          f'color="{FRAME}", labeljust=l];')

    def close_frame(self):
        self.lines.append("  }")

    def text(self):
        return "\n".join(self.lines + ["}"]) + "\n"


def _caption(headline, legend):
    return (f'<FONT POINT-SIZE="16"><B>{html.escape(headline)}</B></FONT><BR ALIGN="LEFT"/>'
            f'<FONT POINT-SIZE="11" COLOR="{MUTED}">{legend}</FONT><BR ALIGN="LEFT"/>')


def _legend(adjoints, name):
    parts = [f'<FONT COLOR="{VALUE_INK}">forward values, left to right</FONT>']
    if adjoints:
        parts.append(f'<FONT COLOR="{ADJOINT_INK}">adjoints dvar = d{html.escape(name)}/dvar, '
                     f'right to left</FONT>')
    return "   ·   ".join(parts)


def _headline(name, params, args, value):
    shown = ", ".join(f"{p}={_short(v) if isinstance(v, float) else _shape(v)}"
                      for p, v in zip(params, args))
    return f"{name}({shown}) = {_short(value)}"


def _shape(value):
    value = np.asarray(value)
    return f"{value.dtype}[{', '.join(map(str, value.shape))}]"


# --- every step: the traced program with its values and adjoints ---------------------------

class _Full:
    """The picture of a derivation: the traced program, one box per step."""

    def __init__(self, d, adjoints, reverse):
        self.d, self.adjoints, self.reverse = d, adjoints, reverse
        live = live_ids(d.graph)
        self.forward = [n for n in d.graph.nodes[:d.n_traced]
                        if n.op == "input" or n.op != "const" and n.id in live]
        self.output = d.graph.outputs[0]

    def size(self):
        return len(self.forward) + (len(self.d.reverse) if self.reverse else 0)

    def _adjoint_row(self, node):
        d = self.d
        adj = d.adjoint.get(node.id)
        if adj is None:  # an input nothing flowed back to has gradient 0; others show none
            return [_cell(f"d{d.names[node.id]} = 0", ADJOINT_BG, ADJOINT_INK)] \
                if node.op == "input" else []
        label = d.names[adj.id] if adj.op == "alias" else f"d{d.names[node.id]}"
        return [_cell(f"{label} = {_short(d.values[adj.id])}", ADJOINT_BG, ADJOINT_INK)]

    def _forward_box(self, node):
        d = self.d
        name = d.names[node.id]
        if node.op == "input":
            rows = [_title(name, "input")]
        else:
            rows = [_title(f"{name} = {expression(node, d.names)}", node.op)]
        rows.append(_cell(f"{name} = {_short(d.values[node.id])}", VALUE_BG, VALUE_INK))
        if self.adjoints and not self.reverse:  # else the reverse sweep's boxes show them
            rows += self._adjoint_row(node)
        is_output = node.id == self.output.id
        return _box(rows, border=INK if is_output else FRAME, width=2 if is_output else 1)

    def dot(self):
        d = self.d
        dot = _Dot(d.name, _caption(_headline(d.name, d.params, d.args, d.value(self.output)),
                                    _legend(self.adjoints, d.name)))
        key = {n.id: f"n{n.id}" for n in self.forward}
        inputs = [n for n in self.forward if n.op == "input"]
        if self.reverse:  # two frames; newrank lets an adjoint share its value's column
            dot.lines.append("  newrank=true;")
            self._reverse_sweep(dot, key)
            dot.open_frame("cluster_forward", "forward sweep: values, left to right")
        dot.lines.append("  { rank=min; " + " ".join(key[n.id] for n in inputs) + " }")
        for node in self.forward:
            dot.node(key[node.id], self._forward_box(node))
        if self.reverse:
            dot.close_frame()
        for node in self.forward:
            for src in _unique(a for a in node.args if a.id in key):
                dot.edge(key[src.id], key[node.id])
        return dot.text()

    def _reverse_sweep(self, dot, key):
        """The adjoint graph's steps, in red, each in the column of the value it is the
        adjoint of; their edges point right to left, as the sweep runs."""
        d = self.d
        forward_ids = set(key)
        primal = {adj.id: p for p, adj in d.adjoint.items() if p in forward_ids}
        for step in d.reverse:
            key[step.node.id] = key[step.computed.id] = f"r{step.node.id}"
        dot.open_frame("cluster_reverse", "reverse sweep: adjoints dvar, right to left")
        for step in d.reverse:
            rows = [_title(f"{step.name} = {step.expr}", None),
                    _cell(f"{step.name} = {_short(d.value(step.node))}", ADJOINT_BG, ADJOINT_INK)]
            dot.node(key[step.node.id], _box(rows, border=ADJOINT_INK))
        dot.close_frame()
        for step in d.reverse:
            p = primal.get(step.node.id)
            if p is not None:  # in its value's column of the left-to-right layout
                dot.lines.append(f"  {{ rank=same; {key[p]}; {key[step.node.id]} }}")
        for step in d.reverse:
            here = key[step.node.id]
            for src in _unique(a for a in step.computed.args if a.id in key):
                there = key[src.id]
                # Forward values the sweep reads (c in db = du * c) are named in the box; an
                # edge from each would cross the whole picture.
                if src.id not in forward_ids and there != here:
                    # drawn consumer-first, so the sweep runs right to left
                    dot.edge(here, there, f'dir=back, color="{ADJOINT_INK}"')


def _unique(nodes):
    seen, out = set(), []
    for n in nodes:
        if n.id not in seen:
            seen.add(n.id)
            out.append(n)
    return out


# --- collapsed: the optimized IR, arrays whole ----------------------------------------------

class _Box:
    """One box of a collapsed picture: its DOT key, the node it shows, its label rows, the
    keys of the boxes it reads, which sweep it belongs to, and the keys merged into it."""

    def __init__(self, key, node, rows, sources, forward):
        self.key, self.node, self.rows, self.sources, self.forward = key, node, rows, sources, forward
        self.members = {key}


class _Collapsed:
    """The picture of a big graph: the optimized IR gradc compiles (arrays traced whole),
    forward and reverse sweep framed apart, runs of unnamed steps merged past ``max_nodes``."""

    def __init__(self, fn, values_in, adjoints, max_nodes):
        from .api import GradcFunction, function_name
        from .emit import assign_names
        from .ir import evaluate

        kind = "value_and_grad" if adjoints else "compile"
        probe = GradcFunction(fn, kind, backend="python", arrays="numpy")
        shapes = [None if isinstance(v, float) else v.shape for v in values_in]
        self.graph = g = probe.lower(shapes)[0]
        self.name, self.args, self.max_nodes = function_name(fn), values_in, max_nodes
        self.values = evaluate(g, values_in)
        self.names, absorbed, _ = assign_names(g, self.name)
        self.steps = steps(g, self.names, absorbed, live_ids(g))
        value = g.outputs[0]
        self.forward = {value.id}  # what the value needs; the rest is the reverse sweep
        for node in reversed(g.nodes):
            if node.id in self.forward:
                self.forward.update(a.id for a in node.args)

    def _boxes(self):
        """One box per input and per step of the optimized graph, in graph order."""
        boxes, key = [], {}
        for node in self.graph.inputs:
            key[node.id] = f"n{node.id}"
            boxes.append(_Box(key[node.id], node, [_title(self.names[node.id], "input")], [], True))
        reads = []
        for step in self.steps:
            key[step.node.id] = key[step.computed.id] = f"n{step.node.id}"
            op = "loop" if step.computed.op in ("scan", "scan_bwd") else step.computed.op
            boxes.append(_Box(key[step.node.id], step.node, [_title(f"{step.name} = {step.expr}", op)],
                              [], step.node.id in self.forward))
            reads.append(step.computed.args)
        for box, args in zip(boxes[len(self.graph.inputs):], reads):
            box.sources = list(dict.fromkeys(key[a.id] for a in args if a.id in key))
        for box in boxes:
            box.rows += self._value_rows(box.node)
        return boxes

    def _value_rows(self, node):
        value = self.values.get(node.id)
        if value is None or isinstance(value, tuple):  # a loop's tuple: its parts show values
            return []
        bg, ink = (VALUE_BG, VALUE_INK) if node.id in self.forward else (ADJOINT_BG, ADJOINT_INK)
        rows = [_cell(f"{self.names[node.id]} = {_short(value)}", bg, ink)]
        if np.ndim(value):
            rows.insert(0, _cell(_shape(value), size=10, ink=MUTED))
        return rows

    def _merge(self, boxes):
        """Past ``max_nodes``: each connected run of unnamed steps (in one sweep) as one box
        that counts its ops; inputs, outputs, the user's names and loops keep their boxes."""
        if len(boxes) <= self.max_nodes:
            return boxes
        g = self.graph
        named = {o.id for o in g.outputs} | set(g.names)
        keep = {b.key for b in boxes if b.node.op in ("input", "scan", "scan_bwd")
                or b.node.id in named}
        parent = {b.key: b.key for b in boxes}

        def root(k):
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        sweep = {b.key: b.forward for b in boxes}
        for b in boxes:
            for src in b.sources:
                if b.key not in keep and src not in keep and sweep[src] == sweep[b.key]:
                    parent[root(src)] = root(b.key)
        groups = {}
        for b in boxes:
            groups.setdefault(root(b.key), []).append(b)
        merged, rename = [], {}
        for members in groups.values():
            if len(members) == 1:
                merged.append(members[0])
                continue
            ops = {}
            for m in members:
                ops[m.node.op] = ops.get(m.node.op, 0) + 1
            counts = " · ".join(f"{op} ×{k}" for op, k in
                                sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))[:4])
            box = _Box(members[0].key, members[-1].node,
                       [_title(f"{len(members)} unnamed steps", None),
                        _cell(counts, size=11, ink=MUTED)],
                       [s for m in members for s in m.sources], members[0].forward)
            box.members = {m.key for m in members}
            rename.update((k, box.key) for k in box.members)
            merged.append(box)
        for box in merged:
            sources = dict.fromkeys(rename.get(s, s) for s in box.sources)
            box.sources = [s for s in sources if s != box.key]
        return merged

    def dot(self):
        g = self.graph
        boxes = self._merge(self._boxes())
        headline = _headline(self.name, self.names["params"], self.args,
                             self.values[g.outputs[0].id])
        has_reverse = any(not b.forward for b in boxes)
        legend = (f"the optimized program gradc compiles, arrays whole: {len(self.steps)} steps"
                  f" in {len(boxes)} boxes   ·   {_legend(has_reverse, self.name)}")
        dot = _Dot(self.name, _caption(headline, legend))
        for forward, title in ((True, "forward sweep: the value"),
                               (False, "reverse sweep: the adjoints")):
            members = [b for b in boxes if b.forward == forward]
            if not members:
                continue
            dot.open_frame("cluster_forward" if forward else "cluster_reverse", title)
            for b in members:
                output = b.node.id == g.outputs[0].id and len(b.members) == 1
                border = INK if output else FRAME if forward else ADJOINT_INK
                dot.node(b.key, _box(b.rows, border=border, width=2 if output else 1), indent="    ")
            dot.close_frame()
        for b in boxes:
            for src in b.sources:
                dot.edge(src, b.key)
        return dot.text()
