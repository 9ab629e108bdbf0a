"""Losses: ``loss(output, target) -> float``, the mean over the batch (the first axis).

Each is plain NumPy code that gradc traces, and a :class:`Loss` object that also
knows how to turn the user's labels into the targets the traced code takes
(``targets``) and how to score predictions (``accuracy``; None for regression).

- :data:`mse` — the seed's ``1/2 (output - label)^2``, summed over output
  features, averaged over the batch.
- :data:`softmax_cross_entropy` — ``-sum(y * log_softmax(logits))``; the model
  outputs *logits* (no softmax layer). Targets are one-hot rows; ``fit`` and
  ``targets`` also accept integer class indices and one-hot encode them (the
  traced code indexes only with constants, so the encoding happens outside).
- :data:`binary_cross_entropy` — from *logits* ``z`` (no sigmoid layer):
  ``softplus(z) - y z``, which is ``-y log s - (1 - y) log(1 - s)`` for
  ``s = sigmoid(z)`` without ever forming ``log(0)``. Targets are in [0, 1].

>>> import numpy as np
>>> float(mse(np.array([1.0, 3.0]), np.array([0.0, 1.0])))   # (1/2)(1 + 4) / 2
1.25
"""
from __future__ import annotations

import numpy as np

from .. import gmath
from .layers import _activation


def _batch_size(out):
    """The number of samples in ``out`` (1 for a single scalar output)."""
    return out.shape[0] if np.ndim(out) else 1


def _mse(out, y):
    d = out - y
    return 0.5 * np.sum(d * d) / _batch_size(out)


def _softmax_cross_entropy(logits, y):
    # log_softmax shifts by the row maximum: no overflow for large logits.
    return -np.sum(y * gmath.log_softmax(logits, axis=-1)) / _batch_size(logits)


def _binary_cross_entropy(logits, y):
    # softplus is logaddexp(0, z): finite for every finite z.
    return np.sum(_activation("softplus", logits) - y * logits) / _batch_size(logits)


class Loss:
    """A loss function with its target encoding and its accuracy (None: not a classifier).

    Calling it computes the loss (on arrays or traced values). ``kind`` is
    ``"regression"``, ``"multiclass"`` or ``"binary"``.
    """

    def __init__(self, fn, name, kind="regression"):
        self.fn, self.name, self.kind = fn, name, kind
        self.__name__ = name

    def __call__(self, output, target):
        return self.fn(output, target)

    def targets(self, labels, out_shape, dtype=np.float64):
        """Labels as the float array the traced loss takes, shaped ``(n,) + out_shape``.

        ``out_shape`` is the model's output shape for one sample. Integer class
        indices become one-hot rows for :data:`softmax_cross_entropy`; a vector of
        labels for a one-column output becomes a column.
        """
        labels = np.asarray(labels)
        if self.kind == "multiclass" and labels.ndim == 1 and labels.dtype.kind in "iub":
            n_classes = out_shape[-1]
            if labels.min() < 0 or labels.max() >= n_classes:
                raise ValueError(f"class labels must lie in [0, {n_classes}) for a model with "
                                 f"{n_classes} outputs")
            return np.eye(n_classes, dtype=dtype)[labels]
        labels = labels.astype(dtype)
        want = (labels.shape[0],) + tuple(out_shape)
        if labels.shape != want and labels.size == int(np.prod(want)):
            labels = labels.reshape(want)
        return np.ascontiguousarray(labels)

    def accuracy(self, output, labels):
        """The fraction of correct predictions (None for a regression loss).

        ``labels`` may be class indices or one-hot rows (multiclass), or 0/1
        values (binary: a logit above 0 predicts 1).
        """
        output, labels = np.asarray(output), np.asarray(labels)
        if self.kind == "multiclass":
            predicted = np.argmax(output, axis=-1)
            truth = labels if labels.ndim == predicted.ndim else np.argmax(labels, axis=-1)
            return float(np.mean(predicted == truth))
        if self.kind == "binary":
            predicted = output.reshape(len(output), -1) > 0
            return float(np.mean(predicted == (labels.reshape(predicted.shape) > 0.5)))
        return None

    def __repr__(self):
        return f"gradc.nn.{self.name}"


mse = Loss(_mse, "mse")
softmax_cross_entropy = Loss(_softmax_cross_entropy, "softmax_cross_entropy", "multiclass")
binary_cross_entropy = Loss(_binary_cross_entropy, "binary_cross_entropy", "binary")


def as_loss(loss):
    """A :class:`Loss` for ``loss``: one of the above, a name, or any ``f(output, target)``."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        known = {l.name: l for l in (mse, softmax_cross_entropy, binary_cross_entropy)}
        if loss not in known:
            raise ValueError(f"unknown loss {loss!r}; known: {', '.join(known)}")
        return known[loss]
    if callable(loss):
        return Loss(loss, getattr(loss, "__name__", "loss"))
    raise TypeError(f"loss must be a gradc.nn loss or a function (output, target), not {loss!r}")
