"""Layers: plain NumPy code on a dict of parameter arrays, so the same forward pass runs
on concrete arrays (``predict``) and on gradc's traced values (the compiled step).

A layer has ``init(seed, dtype)`` -> ``{name: array}`` and ``apply(params, x)``.
Nothing is stored in the layer but its sizes: parameters live in the dict, which
is what the optimizer updates and what the compiled step takes and returns.

>>> import numpy as np
>>> net = Chain(Dense(2, 3), Tanh(), Dense(3, 1))
>>> params = net.init(seed=0)
>>> list(params)
['0.W', '0.b', '2.W', '2.b']
>>> net.apply(params, np.ones((4, 2))).shape
(4, 1)
"""
from __future__ import annotations

import numpy as np

from ..errors import user_frame
from ..trace import apply as _activation  # elementwise on floats, arrays and traced values


class Layer:
    """Base class: a layer with no parameters is the identity.

    Each layer remembers the user's line that made it (``_made_at``: file and line, or
    None), so that a compiled step's header names the user's model rather than this file.
    """

    def __new__(cls, *args, **kwargs):
        layer = super().__new__(cls)
        frame = user_frame()  # the innermost frame outside gradc: where the model is built
        layer._made_at = (frame.f_code.co_filename, frame.f_lineno) if frame else None
        return layer

    def init_params(self, rng, dtype):
        """This layer's parameters drawn from ``rng`` (a ``numpy.random.Generator``)."""
        return {}

    def init(self, seed=0, dtype=np.float64):
        """Fresh parameters, the same for the same ``seed`` on every machine."""
        return self.init_params(np.random.default_rng(seed), np.dtype(dtype))

    def apply(self, params, x):
        return x

    def __repr__(self):
        return f"{type(self).__name__}()"


class Dense(Layer):
    """``x @ W + b`` for ``x`` of shape ``(batch, n_in)``.

    ``W`` is Glorot-uniform (limit ``sqrt(6 / (n_in + n_out))``), ``b`` zero.
    """

    def __init__(self, n_in, n_out):
        self.n_in, self.n_out = int(n_in), int(n_out)

    def init_params(self, rng, dtype):
        limit = np.sqrt(6.0 / (self.n_in + self.n_out))
        W = rng.uniform(-limit, limit, size=(self.n_in, self.n_out)).astype(dtype)
        return {"W": W, "b": np.zeros(self.n_out, dtype)}

    def apply(self, params, x):
        return x @ params["W"] + params["b"]

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out})"


class Scale(Layer):
    """The seed's one-neuron layer: ``w * x`` with one weight ``w`` (a 0-d array).

    ``w`` starts uniform in [-0.5, 0.5], as the seed's ``random.random() - 0.5``.
    """

    def init_params(self, rng, dtype):
        return {"w": np.asarray(rng.uniform(-0.5, 0.5), dtype=dtype)}

    def apply(self, params, x):
        return params["w"] * x


class Tanh(Layer):
    def apply(self, params, x):
        return _activation("tanh", x)


class Sigmoid(Layer):
    def apply(self, params, x):
        return _activation("sigmoid", x)


class ReLU(Layer):
    """``max(x, 0)``; its derivative at 0 is 0."""

    def apply(self, params, x):
        return _activation("relu", x)


class Softplus(Layer):
    """``log(1 + exp(x))``, computed as ``logaddexp(0, x)`` (no overflow)."""

    def apply(self, params, x):
        return _activation("softplus", x)


class Chain(Layer):
    """Layers applied one after the other. Parameters are named ``"<position>.<name>"``
    (``"0.W"``, ``"2.b"``; nested chains give ``"1.0.W"``).

    The chain unrolls when traced: each layer's ops appear in the emitted code.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for layer in layers:
            if not hasattr(layer, "apply"):
                raise TypeError(f"Chain takes layers (with .apply), not {type(layer).__name__}")
        self.layers = tuple(layers)

    def init_params(self, rng, dtype):
        # One generator drawn in layer order: the same seed gives the same network,
        # and two layers of one chain never get the same numbers.
        params = {}
        for i, layer in enumerate(self.layers):
            for name, value in layer.init_params(rng, dtype).items():
                params[f"{i}.{name}"] = value
        return params

    def apply(self, params, x):
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            x = layer.apply(own, x)
        return x

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        return f"Chain({', '.join(map(repr, self.layers))})"


#: Keras/PyTorch spelling of :class:`Chain`.
Sequential = Chain


class Repeat(Layer):
    """``layer`` applied ``n`` times with ``n`` sets of parameters, as one loop.

    The parameters are stacked along a new first axis (``"W"`` of shape ``(n, k, k)``)
    and the forward pass is a :func:`gradc.scan` over them, so the emitted code — and
    its reverse pass — is one loop however deep the stack: compile time does not grow
    with ``n``. The layer must map its input shape to itself (``Dense(k, k)``, or a
    ``Chain(Dense(k, k), Tanh())``).

    >>> block = Repeat(Chain(Dense(3, 3), Tanh()), 4)
    >>> params = block.init(seed=0)
    >>> params["0.W"].shape
    (4, 3, 3)
    >>> block.apply(params, np.ones((2, 3))).shape
    (2, 3)
    """

    def __init__(self, layer, n):
        if n < 1:
            raise ValueError("Repeat needs n >= 1")
        self.layer, self.n = layer, int(n)

    def init_params(self, rng, dtype):
        draws = [self.layer.init_params(rng, dtype) for _ in range(self.n)]
        return {name: np.stack([d[name] for d in draws]) for name in draws[0]}

    def apply(self, params, x):
        from ..trace import scan

        names = list(params)
        if not names:
            for _ in range(self.n):
                x = self.layer.apply({}, x)
            return x
        step = lambda h, slices: self.layer.apply(dict(zip(names, slices)), h)  # noqa: E731
        return scan(step, x, tuple(params[name] for name in names))

    def __repr__(self):
        return f"Repeat({self.layer!r}, {self.n})"
