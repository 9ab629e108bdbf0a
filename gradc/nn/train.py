"""The fused training step, ``fit`` and ``predict``.

:func:`step_graph` is a pure ``Graph -> Graph`` pipeline: trace the loss over
``(params..., X, Y)``, take ``ad.value_and_grad`` with respect to the parameters,
then build the optimizer's update on the gradient nodes *in the same graph*
(through :class:`~gradc.trace.Tracer` operators) and make the loss, the new
parameters and the new optimizer state the outputs. The optimizer's inputs —
the learning rate, then its state — are new parameters appended after ``Y``.
One emitted function therefore does forward, backward and update:

    loss__<opt>_step(W0, b0, ..., X, Y, lr, <state>...) -> (loss, W0_new, ..., <state>_new...)

It returns new arrays; its arguments are never written to.

Arrays are traced whole (one node per array op) at every batch size, as
``gradc.value_and_grad`` traces them, and which code is emitted follows
``gradc.value_and_grad(..., arrays=...)``: small float64 problems (every array
argument together at most ``UNROLL_MAX_ELEMENTS`` elements, unrolled program at
most ``UNROLL_MAX_NODES`` nodes) are unrolled by the pure pass ``gradc.unroll``
into straight-line scalar code compiled by numba — the seed's three ``Scale``
layers on one sample are a dozen statements — and everything else is lowered to
fused loops and BLAS calls (gradc/lower.py) compiled by numba, or, where the
lowering has no rule for an op, runs as NumPy-level code in NumPy (float32 stays
float32 there).
"""
from __future__ import annotations

import os
import re
import time
import unicodedata
import weakref

import numpy as np

from .. import ad, errors, jit
from ..api import ARRAY_MODES, GradcFunction, numba_layout, numba_runs
from ..emit import emit_module
from ..lower import LoweringError, lower_module
from ..optimize import optimize
from ..trace import Tracer, identifier_or_none, trace
from ..unroll import UnrollError, unroll
from .losses import as_loss
from .optim import Optimizer


# --- names ------------------------------------------------------------------------------
def param_identifiers(keys):
    """Identifiers for parameter keys in emitted source: ``"0.W"`` -> ``W0``,
    ``"1.0.b"`` -> ``b1_0``.

    Keys are user text: they are read as Python reads identifiers (NFKC: ``"ℌ"`` is
    ``H``, so a key cannot pose as ``X``) and bounded in length by ``identifier_or_none``.
    """
    out, taken = [], set()
    for key in keys:
        *where, last = unicodedata.normalize("NFKC", str(key)).split(".")
        base = re.sub(r"\W", "_", last) + "_".join(re.sub(r"\W", "_", w) for w in where)
        ident = identifier_or_none(base)
        if ident is None or ident in ("X", "Y", "lr", "loss"):
            ident = identifier_or_none("p_" + base)
        base = ident or f"p_{len(out)}"  # a \w character that is no identifier character
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        out.append(name)
    return out


# --- the step graph ---------------------------------------------------------------------
def _output(graph, value, name, outputs):
    """Append ``value``'s node to ``outputs`` (named ``name`` unless it is an input or a
    constant); return its index, the output tree's leaf."""
    node = Tracer(graph, graph.inputs[0])._lift(value)
    if node.op not in ("input", "const"):
        graph.names.setdefault(node.id, name)
    outputs.append(node)
    return len(outputs) - 1


def step_graph(model, loss, optimizer, keys, shapes, x_shape, y_shape, whole=True,
               dtype="float64"):
    """The fused training step as a Graph (see the module docstring).

    ``shapes`` has one entry per parameter (None for a 0-d parameter, traced as a
    float). Arrays are traced whole; ``whole=False`` returns the same step unrolled
    into one scalar node per element (gradc/unroll.py), or a GradcError where an op
    of the step has no element-by-element form.
    """
    loss = as_loss(loss)
    names = param_identifiers(keys)
    n = len(keys)

    def loss_fn(*args):
        # One expression, no locals: the names in the step are the user's and gradc's
        # (dW0, W0_new), not this wrapper's (its frame's locals would name the nodes).
        return loss(model.apply(dict(zip(keys, args[:n])), args[n]), args[n + 1])

    specs = [(nm, s, True) for nm, s in zip(names, shapes)]
    specs += [("X", x_shape, True), ("Y", y_shape, True)]
    traced = trace(loss_fn, specs, "loss", _origin(model))
    traced.dtype = dtype
    graph = add_update(ad.value_and_grad(traced, tuple(range(n))), optimizer, n)
    if whole:
        return graph
    try:
        return unroll(graph)
    except UnrollError as exc:
        raise errors.UnsupportedFunctionError(
            f"{errors.where()}: this training step has no element-by-element form ({exc}); "
            "use arrays='auto', which keeps its arrays whole.") from None


def add_update(graph, optimizer, n_params):
    """``graph`` (from ``ad.value_and_grad`` over its first ``n_params`` parameters, traced
    with arrays whole) with the optimizer's update appended: new parameters ``lr``, then the
    state; outputs ``(loss, new params..., new slots..., new scalars...)``.
    """
    g = graph.copy()
    loss_node = g.outputs[g.out_tree[0]]
    grad_leaves = g.out_tree[1]
    shapes = [g.params[p][1] for p in range(n_params)]
    names = [g.params[p][0] for p in range(n_params)]
    for p, shape in enumerate(shapes):
        if shape is not None and p not in g.whole_params:
            raise errors.ArgumentError(
                f"add_update takes a graph traced with arrays whole; parameter {names[p]!r} "
                "is traced element by element (trace it as (name, shape, True)).")
    params = [Tracer(g, g.param_inputs(p)[0]) for p in range(n_params)]
    grads = [Tracer(g, g.outputs[leaf]) for leaf in grad_leaves]
    lr = Tracer(g, g.param("lr"))
    slots = {slot: [Tracer(g, g.param(f"{slot}_{names[p]}", shapes[p], whole=True))
                    for p in range(n_params)]  # shaped like its parameter (a float: a float)
             for slot in optimizer.slots}
    scalars = {name: Tracer(g, g.param(name)) for name in optimizer.scalars}
    new_params, new_slots, new_scalars = optimizer.update(params, grads, slots, scalars, lr)

    outputs = [loss_node]
    tree = [0]
    for p in range(n_params):
        tree.append(_output(g, new_params[p], f"{names[p]}_new", outputs))
    for slot in optimizer.slots:
        for p in range(n_params):
            tree.append(_output(g, new_slots[slot][p], f"{slot}_{names[p]}_new", outputs))
    for name in optimizer.scalars:
        tree.append(_output(g, new_scalars[name], f"{name}_new", outputs))
    g.set_outputs(outputs, tuple(tree))
    return g


def _origin(model):
    """Where the user's model comes from, for the step's header: the ``apply`` the user wrote
    (a layer class of their own, or any object with ``apply``), else the user's line that
    built the model (gradc's own layers record it), never gradc/nn/layers.py."""
    code = getattr(getattr(type(model), "apply", None), "__code__", None)
    if code is not None and not _in_gradc(code.co_filename):
        return code.co_filename, code.co_firstlineno
    return getattr(model, "_made_at", None)


def _in_gradc(filename):
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(filename).startswith(package + os.sep)


# --- compiled steps ---------------------------------------------------------------------
class TrainStep:
    """One compiled training step for one signature (parameter shapes, batch shapes, dtype).

    ``step(params, state, X, Y)`` -> ``(loss, new_params, new_state)`` with dicts
    like :meth:`Optimizer.init`'s; ``step.raw`` is the emitted function itself
    (flat positional arguments, see :attr:`arg_names`), for hot loops.
    Attributes: ``source``, ``graph``, ``path``, ``whole`` (arrays whole: fused loops or
    NumPy-level code; False: unrolled scalar code).
    """

    def __init__(self, model, loss, optimizer, keys, shapes, x_shape, y_shape, dtype="float64",
                 arrays="auto", backend="numba"):
        if arrays not in ARRAY_MODES:
            raise errors.ArgumentError(f"arrays must be one of {ARRAY_MODES}, not {arrays!r}.")
        self.model, self.loss, self.optimizer = model, as_loss(loss), optimizer
        self.keys, self.shapes, self.dtype = tuple(keys), tuple(shapes), dtype
        self.x_shape, self.y_shape = tuple(x_shape), tuple(y_shape)
        graph = optimize(step_graph(model, self.loss, optimizer, keys, shapes, x_shape, y_shape,
                                    True, dtype))
        # Optimizer slots are parameter-shaped arguments too: count them like api.lower does.
        arg_shapes = [s for _, s in graph.params]
        graph = _unrolled_if_small(graph, arg_shapes, dtype, arrays)
        self.whole = bool(graph.whole_params)
        self.graph = graph
        kind = f"{optimizer.name}_step"
        self.source, self.func_name, entry = emit_module(self.graph, "loss", kind,
                                                         self.graph.origin)
        self.arg_names = tuple(name for name, _ in self.graph.params)
        self._scalar = np.float32 if dtype == "float32" else np.float64
        self.raw = None
        if backend == "numba" and self.whole and arrays in ("auto", "loops"):
            self._compile_loops(kind, arrays)  # fused loops and BLAS calls, as value_and_grad
        if self.raw is None and backend == "numba" and numba_runs(self.graph, arg_shapes, arrays):
            try:
                self.raw, self.path = jit.load_numba(
                    self.source, self.func_name, entry, arg_shapes, dtype=dtype,
                    layout=numba_layout(self.graph))
            except errors.GradcError:
                if not self.whole or arrays == "numba":
                    raise  # arrays="auto": NumPy runs what numba cannot compile
        if self.raw is None:
            func, self.path = jit.load_python(self.source, self.func_name)
            self.raw = _quiet(func)

    def _compile_loops(self, kind, arrays):
        """The step as fused loops (gradc/lower.py) compiled by numba, where the lowering has
        rules for it: NumPy-level code spends most of a small model's step in NumPy's
        per-call dispatch (benchmarks/profile_w5.py)."""
        try:
            source, func_name = lower_module(self.graph, "loss", kind, self.graph.origin)
        except LoweringError as exc:
            if arrays == "loops":
                raise errors.UnsupportedFunctionError(
                    f"arrays='loops' cannot compile this step ({exc}); use arrays='auto'.") from None
            return
        self.raw, self.path = jit.load_numba_lazy(source, func_name)
        self.source, self.func_name = source, func_name
        # float64: compile now, for C-order arrays of the step's shapes, so that fit compiles
        # before its first epoch (and its step times are steps). A float32 model may be fed
        # float64 batches, so its step compiles for what it is given, at the first call.
        if self.dtype == "float64":
            from numba import typeof

            samples = [np.float64(0) if shape is None else np.zeros(shape)
                       for _, shape in self.graph.params]
            self.raw.compile(tuple(typeof(v) for v in samples))

    def flatten(self, params, state):
        """The emitted function's arguments after X, Y and lr's place: parameters, then state."""
        ps = [self._arg(params[k]) for k in self.keys]
        st = [self._arg(state[slot][k]) for slot in self.optimizer.slots for k in self.keys]
        st += [self._scalar(state[name]) for name in self.optimizer.scalars]
        return ps, st

    def _arg(self, value):
        value = np.asarray(value)
        return self._scalar(value) if value.shape == () else value

    def unflatten(self, values):
        """``(params, state)`` dicts from the emitted function's outputs after the loss."""
        n = len(self.keys)
        as_array = lambda v: np.asarray(v, dtype=self.dtype)  # noqa: E731  (floats -> 0-d arrays)
        params = {k: as_array(v) for k, v in zip(self.keys, values[:n])}
        state, at = {}, n
        for slot in self.optimizer.slots:
            state[slot] = {k: as_array(v) for k, v in zip(self.keys, values[at:at + n])}
            at += n
        for name in self.optimizer.scalars:
            state[name] = float(values[at])
            at += 1
        return params, state

    def __call__(self, params, state, X, Y, lr=None):
        ps, st = self.flatten(params, state)
        lr = self.optimizer.lr if lr is None else lr
        out = self.raw(*ps, np.asarray(X, self.dtype), np.asarray(Y, self.dtype), self._scalar(lr),
                       *st)
        new_params, new_state = self.unflatten(out[1:])
        return float(out[0]), new_params, new_state


def _unrolled_if_small(graph, arg_shapes, dtype, arrays):
    """The whole-array step ``graph`` unrolled into scalar code where ``gradc.value_and_grad``
    would unroll a function of these arguments (one policy for both: api's, by element and
    node counts; arrays="unroll" forces it), else ``graph`` as it is."""
    policy = GradcFunction(_unrolled_if_small, "value_and_grad", backend="python", arrays=arrays)
    return policy._unrolled_if_small(graph, arg_shapes, dtype)


def _quiet(func):
    """NumPy-level code under NumPy's float rules: inf/nan propagate without warnings."""

    def call(*args):
        with np.errstate(all="ignore"):
            return func(*args)

    call.__wrapped__ = func
    return call


_STEPS = weakref.WeakKeyDictionary()  # model -> {signature: TrainStep}


def compile_step(model, params, X, Y, loss, optimizer, arrays="auto", backend="numba"):
    """The compiled step for ``model`` on batches shaped like ``X`` and ``Y`` (cached per
    model and signature; the source is cached on disk like every gradc function).

    ``Y`` must already be targets (see :meth:`Loss.targets`).
    """
    loss = as_loss(loss)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a gradc.nn optimizer (SGD, Adam), not {optimizer!r}")
    keys = tuple(params)
    shapes = tuple(None if np.ndim(v) == 0 else tuple(np.shape(v)) for v in params.values())
    dtype = _dtype_of(params)
    key = (loss.fn, optimizer.key(), keys, shapes, tuple(np.shape(X)), tuple(np.shape(Y)), dtype,
           arrays, backend)
    try:
        cache = _STEPS.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: no reuse across calls
        cache = {}
    step = cache.get(key)
    if step is None:
        step = cache[key] = TrainStep(model, loss, optimizer, keys, shapes, np.shape(X),
                                      np.shape(Y), dtype, arrays, backend)
    return step


def _dtype_of(params):
    """``"float32"`` when every parameter is float32, else ``"float64"`` (as gradc's arrays)."""
    dtypes = {np.asarray(v).dtype for v in params.values()}
    return "float32" if dtypes == {np.dtype(np.float32)} else "float64"


# --- fit and predict --------------------------------------------------------------------
def predict(model, params, X):
    """The model's output on ``X``: the forward pass in plain NumPy (no compilation)."""
    dtype = _dtype_of(params) if params else "float64"
    with np.errstate(all="ignore"):
        return model.apply(params, np.asarray(X, dtype=dtype))


def _progress(iterable, enabled, total):
    """A tqdm bar when asked for and tqdm is installed; else the plain iterable."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, unit="epoch")
    return iterable


def fit(model, params, X, Y, loss="mse", optimizer=None, epochs=1, batch_size=32, seed=0,
        shuffle=True, progress=True, arrays="auto", backend="numba"):
    """Train ``params`` of ``model`` on ``(X, Y)``; return ``(params, history)``.

    - Each epoch visits the samples in an order drawn from ``seed`` (``shuffle=False``:
      data order) in mini-batches of ``batch_size``; the last batch may be smaller and
      gets its own compiled step (one per distinct batch shape, compiled before the
      first epoch and reused).
    - ``loss``: a gradc.nn loss (or its name, or any ``f(output, target)``); labels are
      converted by :meth:`Loss.targets` (class indices are fine for cross-entropy).
    - ``optimizer``: SGD or Adam (default ``SGD(0.01)``), fused into the step.
    - ``history``: ``"loss"`` per epoch (the mean of that epoch's batch losses, weighted
      by batch size, computed before each update), ``"accuracy"`` per epoch (on the
      training data after the epoch; classification losses only, else None),
      ``"state"`` (the final optimizer state), ``"steps"`` and ``"step_time"`` (mean
      seconds per compiled step call).
    - ``progress``: a tqdm bar over epochs, when tqdm is installed.

    ``params`` is not modified; the returned dict holds new arrays.
    """
    loss = as_loss(loss)
    optimizer = optimizer if optimizer is not None else _default_optimizer()
    params = {k: np.asarray(v) for k, v in params.items()}
    dtype = _dtype_of(params)
    X = np.ascontiguousarray(X, dtype=dtype)
    n = len(X)
    if n == 0:
        raise ValueError("fit needs at least one sample")
    if len(Y) != n:
        raise ValueError(f"X has {n} samples but Y has {len(Y)}")
    out_shape = np.shape(predict(model, params, X[:1]))[1:]
    targets = loss.targets(Y, out_shape, dtype)
    batch_size = max(1, min(int(batch_size), n))

    full = compile_step(model, params, X[:batch_size], targets[:batch_size], loss, optimizer,
                        arrays, backend)
    rest = n % batch_size
    last = (compile_step(model, params, X[:rest], targets[:rest], loss, optimizer, arrays,
                         backend) if rest else full)
    state = optimizer.init(params)
    ps, st = full.flatten(params, state)
    values, n_params = ps + st, len(ps)
    lr = full._scalar(optimizer.lr)
    rng = np.random.default_rng(seed)
    starts = range(0, n, batch_size)
    history = {"loss": [], "accuracy": [] if loss.kind != "regression" else None}
    step_seconds, steps = 0.0, 0
    bar = _progress(range(epochs), progress, epochs)
    for _ in bar:
        order = rng.permutation(n) if shuffle else None
        total = 0.0
        for start in starts:
            stop = min(start + batch_size, n)
            if order is None:  # slices: views, no copies
                xb, yb = X[start:stop], targets[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = X[idx], targets[idx]
            step = full if stop - start == batch_size else last
            t0 = time.perf_counter()
            out = step.raw(*values[:n_params], xb, yb, lr, *values[n_params:])
            step_seconds += time.perf_counter() - t0
            steps += 1
            total += float(out[0]) * (stop - start)
            values = out[1:]
        history["loss"].append(total / n)
        if history["accuracy"] is not None:
            params, _ = full.unflatten(values)
            history["accuracy"].append(loss.accuracy(predict(model, params, X), Y))
        if hasattr(bar, "set_postfix"):
            postfix = {"loss": f"{history['loss'][-1]:.4g}"}
            if history["accuracy"] is not None:
                postfix["acc"] = f"{history['accuracy'][-1]:.3f}"
            bar.set_postfix(postfix)
    if hasattr(bar, "close"):
        bar.close()
    params, state = full.unflatten(values)
    history.update(state=state, steps=steps, step_time=step_seconds / max(steps, 1))
    return params, history


def _default_optimizer():
    from .optim import SGD

    return SGD(0.01)
