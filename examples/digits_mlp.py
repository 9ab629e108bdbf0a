"""A multilayer perceptron on scikit-learn's bundled 8x8 digits, trained with gradc.nn.

64 pixels -> Dense(64, 64) -> Tanh -> Dense(64, 10) logits, softmax cross-entropy,
Adam, mini-batches of 32 shuffled from a fixed seed. Each training step — forward,
backward and the Adam update of every parameter — is one emitted NumPy-level
function (print it with ``--source``). The data ships with scikit-learn: nothing
is downloaded.

Run: python examples/digits_mlp.py [--epochs N] [--float32] [--no-progress] [--source]
(needs scikit-learn; the progress bar needs tqdm)
"""
import argparse

import numpy as np

from gradc import nn


def load(seed=0, test_fraction=0.25):
    """Pixels scaled to [0, 1] and class labels, split into train and test sets by ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--float32", action="store_true", help="train in float32")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--source", action="store_true", help="print the compiled step's source")
    args = parser.parse_args(argv)

    X_train, y_train, X_test, y_test = load()
    model = nn.Chain(nn.Dense(64, 64), nn.Tanh(), nn.Dense(64, 10))
    params = model.init(seed=0, dtype=np.float32 if args.float32 else np.float64)
    optimizer = nn.Adam(args.lr)
    params, history = nn.fit(model, params, X_train, y_train, loss=nn.softmax_cross_entropy,
                             optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                             seed=0, progress=not args.no_progress)
    test_accuracy = nn.softmax_cross_entropy.accuracy(nn.predict(model, params, X_test), y_test)
    print(f"train samples {len(X_train)}, test samples {len(X_test)}, "
          f"{args.epochs} epochs, {history['steps']} steps")
    print(f"final training loss {history['loss'][-1]:.4f}, "
          f"training accuracy {history['accuracy'][-1]:.4f}")
    print(f"test accuracy {test_accuracy:.4f}")
    print(f"time per training step {history['step_time'] * 1e6:.0f} us "
          f"(batch of {args.batch_size}, {'float32' if args.float32 else 'float64'})")
    if args.source:
        step = nn.compile_step(model, params, X_train[:args.batch_size],
                               np.eye(10)[y_train[:args.batch_size]], nn.softmax_cross_entropy,
                               optimizer)
        print()
        print(step.source)


if __name__ == "__main__":
    main()
