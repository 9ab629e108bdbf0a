"""Optimizers: update rules written with operators, so the same code runs on NumPy arrays
and on gradc's traced values — where it becomes part of the one compiled training step.

An optimizer has per-parameter state ``slots`` (arrays shaped like each
parameter), ``scalars`` (global state such as Adam's step count) and
``update(params, grads, slots, scalars, lr)``, which returns the new parameters,
slots and scalars. The learning rate is an *argument* of the compiled step (a
new ``lr`` does not recompile); ``momentum``, ``b1``, ``b2`` and ``eps`` are
constants written into the emitted code (each value compiles its own step).

>>> import numpy as np
>>> opt = SGD(0.1, momentum=0.9)
>>> p, s, _ = opt.update([np.array([1.0])], [np.array([2.0])], {"velocity": [np.zeros(1)]}, {}, 0.1)
>>> p[0], s["velocity"][0]
(array([0.8]), array([2.]))
"""
from __future__ import annotations

import numpy as np


class Optimizer:
    name = "optimizer"
    slots: tuple = ()      # per-parameter state, each shaped like its parameter, starting at 0
    scalars: tuple = ()    # global scalar state, starting at 0

    def __init__(self, lr):
        self.lr = float(lr)

    def key(self):
        """What the compiled step depends on (the constants baked into it)."""
        return (type(self).__name__,)

    def init(self, params):
        """Fresh state for ``params`` (a dict): ``{slot: {key: zeros}, scalar: 0.0}``."""
        state = {slot: {k: np.zeros_like(np.asarray(v)) for k, v in params.items()}
                 for slot in self.slots}
        state.update({name: 0.0 for name in self.scalars})
        return state

    def update(self, params, grads, slots, scalars, lr):
        raise NotImplementedError


class SGD(Optimizer):
    """Gradient descent, with optional (heavy-ball) momentum in PyTorch's form:
    ``velocity = momentum * velocity + g``; ``p = p - lr * velocity``.

    With ``momentum=0`` it is the seed's ``w = w - lr * dL/dw`` and keeps no state.
    """

    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.0):
        super().__init__(lr)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), not {momentum}")
        self.slots = ("velocity",) if self.momentum else ()

    def key(self):
        return ("SGD", self.momentum)

    def update(self, params, grads, slots, scalars, lr):
        if not self.momentum:
            return [p - lr * g for p, g in zip(params, grads)], {}, {}
        velocity = [self.momentum * v + g for v, g in zip(slots["velocity"], grads)]
        return [p - lr * v for p, v in zip(params, velocity)], {"velocity": velocity}, {}

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum})"


class Adam(Optimizer):
    """Adam (Kingma & Ba), with bias correction:

    ``t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """

    name = "adam"
    slots = ("m", "v")
    scalars = ("t",)

    def __init__(self, lr=0.001, b1=0.9, b2=0.999, eps=1e-8):
        super().__init__(lr)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def key(self):
        return ("Adam", self.b1, self.b2, self.eps)

    def update(self, params, grads, slots, scalars, lr):
        t = scalars["t"] + 1.0
        # The two corrections are scalars computed once per step and shared by every parameter.
        c1 = 1.0 / (1.0 - self.b1 ** t)
        c2 = 1.0 / (1.0 - self.b2 ** t)
        new_p, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, slots["m"], slots["v"]):
            m = self.b1 * m + (1.0 - self.b1) * g
            v = self.b2 * v + (1.0 - self.b2) * (g * g)
            new_p.append(p - lr * (m * c1) / (np.sqrt(v * c2) + self.eps))
            new_m.append(m)
            new_v.append(v)
        return new_p, {"m": new_m, "v": new_v}, {"t": t}

    def __repr__(self):
        return f"Adam(lr={self.lr}, b1={self.b1}, b2={self.b2}, eps={self.eps})"
