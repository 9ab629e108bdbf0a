"""``gradc.nn``: layer chains trained with one compiled step that fuses forward, backward
and the optimizer's update.

>>> import numpy as np
>>> from gradc import nn
>>> model = nn.Chain(nn.Scale(), nn.Scale(), nn.Scale())       # the seed's network
>>> params = model.init(seed=1)
>>> X, Y = np.array([1.0, -1.0]), np.array([-1.0, 1.0])
>>> params, history = nn.fit(model, params, X, Y, loss=nn.mse, optimizer=nn.SGD(0.05),
...                          epochs=160, batch_size=1, shuffle=False, progress=False)
>>> [int(np.sign(nn.predict(model, params, x))) for x in (1.0, -1.0)]
[-1, 1]
"""
from .layers import Chain, Dense, Layer, ReLU, Repeat, Scale, Sequential, Sigmoid, Softplus, Tanh
from .losses import Loss, binary_cross_entropy, mse, softmax_cross_entropy
from .optim import SGD, Adam, Optimizer
from .train import TrainStep, add_update, compile_step, fit, predict, step_graph

__all__ = [
    "Layer", "Chain", "Sequential", "Repeat", "Dense", "Scale", "Tanh", "Sigmoid", "ReLU", "Softplus",
    "Loss", "mse", "softmax_cross_entropy", "binary_cross_entropy",
    "Optimizer", "SGD", "Adam",
    "fit", "predict", "compile_step", "TrainStep", "step_graph", "add_update",
]
