"""The seed's layer chain, trained with gradc's exact gradients.

Three one-weight ``Scale`` layers (output = w3 * w2 * w1 * x), data [1, -1], labels
[-1, 1], loss 1/2 (output - label)^2, 160 epochs of per-sample gradient descent
(batch size 1, data order) with learning rate 0.05. ``predict`` is the sign of the
output; the network has learned the task when predict(1) = -1 and predict(-1) = 1.

The step — forward, backward and ``w <- w - lr * dL/dw`` — is one emitted function
(print it with ``--source``), compiled by numba once and reused by every trial.

Run: python examples/seed_network.py [--trials N] [--source]
"""
import argparse
import sys
import time

import numpy as np

from gradc import nn

DATA = np.array([1.0, -1.0])
LABELS = np.array([-1.0, 1.0])
LEARNING_RATE = 0.05
EPOCHS = 160


def network():
    return nn.Chain(nn.Scale(), nn.Scale(), nn.Scale())


def train(model, params):
    """The seed's ``Network.train``: per-sample updates in data order."""
    params, _ = nn.fit(model, params, DATA, LABELS, loss=nn.mse, optimizer=nn.SGD(LEARNING_RATE),
                       epochs=EPOCHS, batch_size=1, shuffle=False, progress=False)
    return params


def predict(model, params, x):
    """The seed's ``Network.predict``: 1 if the output is positive, else -1."""
    return 1 if nn.predict(model, params, x) > 0 else -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=0,
                        help="repeat from N random initialisations (weights uniform in "
                             "[-0.5, 0.5], seeds 0..N-1) and print the success count")
    parser.add_argument("--source", action="store_true", help="print the compiled step's source")
    args = parser.parse_args(argv)
    model = network()

    params = train(model, model.init(seed=0))
    print("weights:", ", ".join(f"{k}={float(v):+.4f}" for k, v in params.items()))
    print("predict(1) =", predict(model, params, 1.0))
    print("predict(-1) =", predict(model, params, -1.0))
    if args.source:
        print()
        print(nn.compile_step(model, params, DATA[:1], LABELS[:1], nn.mse,
                              nn.SGD(LEARNING_RATE)).source)
    if args.trials:
        start = time.perf_counter()
        successes = 0
        for trial in range(args.trials):
            trained = train(model, model.init(seed=trial))
            successes += predict(model, trained, 1.0) == -1 and predict(model, trained, -1.0) == 1
        seconds = time.perf_counter() - start
        print(f"success: {successes}/{args.trials}")
        print(f"({seconds:.2f} s for {args.trials} trials of {EPOCHS * len(DATA)} steps)",
              file=sys.stderr)  # stdout stays the same from run to run


if __name__ == "__main__":
    main()
