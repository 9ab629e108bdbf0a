"""gradc.nn: layer chains, losses, optimizers fused into one compiled training step, fit."""
import sys

import numpy as np
import pytest

import gradc
from gradc import nn
from gradc.nn import train as nn_train

MODES = ("unroll", "numpy")


def mlp():
    return nn.Chain(nn.Dense(3, 4), nn.Tanh(), nn.Dense(4, 2))


def data(n=5, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 3)).astype(dtype)
    Y = r.normal(size=(n, 2)).astype(dtype)
    return X, Y


def mlp_backward(params, X, dout_of):
    """Hand-written reverse pass of Dense-Tanh-Dense; ``dout_of(out)`` is dL/dout."""
    W0, b0, W2, b2 = params["0.W"], params["0.b"], params["2.W"], params["2.b"]
    h = np.tanh(X @ W0 + b0)
    out = h @ W2 + b2
    dout = dout_of(out)
    dz = (dout @ W2.T) * (1.0 - h * h)
    return {"0.W": X.T @ dz, "0.b": dz.sum(0), "2.W": h.T @ dout, "2.b": dout.sum(0)}


def step_gradients(step, params, X, Y):
    """The gradient inside a fused SGD step, read back as ``p - p_new`` with lr = 1."""
    loss, new, _ = step(params, {}, X, Y, lr=1.0)
    return loss, {k: params[k] - new[k] for k in params}


# --- layers --------------------------------------------------------------------------------
def test_chain_parameters_are_named_and_seeded():
    net = mlp()
    p, q = net.init(seed=3), net.init(seed=3)
    assert list(p) == ["0.W", "0.b", "2.W", "2.b"]
    assert p["0.W"].shape == (3, 4) and p["2.b"].shape == (2,)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert not np.array_equal(p["0.W"], net.init(seed=4)["0.W"])
    assert net.init(seed=3, dtype=np.float32)["0.W"].dtype == np.float32
    w = nn.Scale().init(seed=1)["w"]
    assert w.shape == () and -0.5 <= w <= 0.5


def test_activations_match_numpy():
    x = np.linspace(-3, 3, 7)
    assert np.allclose(nn.Tanh().apply({}, x), np.tanh(x))
    assert np.allclose(nn.Sigmoid().apply({}, x), 1 / (1 + np.exp(-x)))
    assert np.allclose(nn.ReLU().apply({}, x), np.maximum(x, 0))
    assert np.allclose(nn.Softplus().apply({}, x), np.log1p(np.exp(x)))
    assert nn.Sequential is nn.Chain


@pytest.mark.parametrize("mode", MODES)
def test_chain_gradients_match_handwritten_backward(mode):
    net, X, Y = mlp(), *data()
    params = net.init(seed=0)
    step = nn.compile_step(net, params, X, Y, nn.mse, nn.SGD(0.1), arrays=mode, backend="python")
    assert step.whole == (mode == "numpy")
    loss, grads = step_gradients(step, params, X, Y)
    out = nn.predict(net, params, X)
    assert loss == pytest.approx(0.5 * np.sum((out - Y) ** 2) / len(X), rel=1e-12)
    want = mlp_backward(params, X, lambda o: (o - Y) / len(X))
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.Sigmoid(), nn.ReLU(), nn.Softplus()])
def test_activation_gradients_in_a_chain(layer):
    """Each activation's derivative, unrolled and NumPy-level, against its closed form."""
    net = nn.Chain(nn.Dense(3, 2), layer)
    X, Y = data()
    params = net.init(seed=1)
    z = X @ params["0.W"] + params["0.b"]
    deriv = {nn.Sigmoid: lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2,
             nn.ReLU: lambda z: (z > 0).astype(float),
             nn.Softplus: lambda z: 1 / (1 + np.exp(-z))}[type(layer)]
    dz = (net.apply(params, X) - Y) / len(X) * deriv(z)
    for mode in MODES:
        step = nn.compile_step(net, params, X, Y, nn.mse, nn.SGD(0.1), arrays=mode,
                               backend="python")
        _, grads = step_gradients(step, params, X, Y)
        np.testing.assert_allclose(grads["0.W"], X.T @ dz, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads["0.b"], dz.sum(0), rtol=1e-9, atol=1e-12)


def test_layers_trace_with_the_plain_api():
    """A chain is ordinary NumPy code: gradc.value_and_grad differentiates it as it is."""
    net, X, Y = mlp(), *data()
    params = net.init(seed=0)
    keys = list(params)

    def loss(W0, b0, W2, b2):
        return nn.mse(net.apply(dict(zip(keys, (W0, b0, W2, b2))), X), Y)

    f = gradc.value_and_grad(loss, arrays="numpy", backend="python")
    _, grads = f(*params.values())
    want = mlp_backward(params, X, lambda o: (o - Y) / len(X))
    for k, g in zip(keys, grads):
        np.testing.assert_allclose(g, want[k], rtol=1e-9, atol=1e-12)


# --- losses --------------------------------------------------------------------------------
def test_softmax_cross_entropy_value_gradient_and_stability():
    net, (X, _) = mlp(), data()
    labels = np.array([0, 1, 1, 0, 1])
    params = net.init(seed=2)
    Y = nn.softmax_cross_entropy.targets(labels, (2,))
    assert np.array_equal(Y, np.eye(2)[labels])
    step = nn.compile_step(net, params, X, Y, nn.softmax_cross_entropy, nn.SGD(0.1),
                           backend="python")
    loss, grads = step_gradients(step, params, X, Y)
    out = nn.predict(net, params, X)
    logp = out - np.log(np.sum(np.exp(out), axis=1, keepdims=True))
    assert loss == pytest.approx(-np.sum(Y * logp) / len(X), rel=1e-12)
    want = mlp_backward(params, X, lambda o: (np.exp(logp) - Y) / len(X))
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-8, atol=1e-12)
    big = np.array([[1000.0, 0.0], [0.0, 1000.0]])  # exp(1000) overflows; log_softmax does not
    assert nn.softmax_cross_entropy(big, np.eye(2)) == pytest.approx(0.0, abs=1e-12)
    assert nn.softmax_cross_entropy(big, np.eye(2)[::-1]) == pytest.approx(1000.0)
    assert nn.softmax_cross_entropy.accuracy(big, np.array([0, 1])) == 1.0


def test_binary_cross_entropy_from_logits():
    z = np.array([[-2.0], [0.5], [3.0]])
    y = np.array([[0.0], [1.0], [1.0]])
    s = 1 / (1 + np.exp(-z))
    want = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert nn.binary_cross_entropy(z, y) == pytest.approx(want, rel=1e-12)
    assert np.isfinite(nn.binary_cross_entropy(np.array([[1000.0], [-1000.0]]),
                                               np.array([[0.0], [1.0]])))
    assert nn.binary_cross_entropy.accuracy(z, np.array([0, 1, 1])) == 1.0
    net = nn.Chain(nn.Dense(3, 1))
    X, _ = data()
    Y = nn.binary_cross_entropy.targets(np.array([0, 1, 1, 0, 1]), (1,))
    params = net.init(seed=0)
    step = nn.compile_step(net, params, X, Y, nn.binary_cross_entropy, nn.SGD(0.1),
                           backend="python")
    _, grads = step_gradients(step, params, X, Y)
    dz = (1 / (1 + np.exp(-net.apply(params, X))) - Y) / len(X)
    np.testing.assert_allclose(grads["0.W"], X.T @ dz, rtol=1e-9, atol=1e-12)


def test_mse_is_half_squared_error_averaged_over_the_batch():
    assert nn.mse(np.array([[1.0, 2.0], [0.0, 0.0]]), np.zeros((2, 2))) == 0.5 * 5 / 2
    assert nn.mse(2.0, -1.0) == 4.5  # the seed's 1/2 (out - label)^2 on one sample


# --- optimizers, one fused step against hand-written NumPy updates -------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_sgd_momentum_step_matches_numpy(mode):
    net, X, Y = mlp(), *data()
    params = net.init(seed=0)
    r = np.random.default_rng(5)
    opt = nn.SGD(0.1, momentum=0.9)
    state = {"velocity": {k: r.normal(size=v.shape) for k, v in params.items()}}
    step = nn.compile_step(net, params, X, Y, nn.mse, opt, arrays=mode, backend="python")
    loss, new, new_state = step(params, state, X, Y)
    g = mlp_backward(params, X, lambda o: (o - Y) / len(X))
    for k in params:
        v = 0.9 * state["velocity"][k] + g[k]
        np.testing.assert_allclose(new_state["velocity"][k], v, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new[k], params[k] - 0.1 * v, rtol=1e-12, atol=1e-14)
        assert new[k] is not params[k]  # new arrays; the inputs are untouched


@pytest.mark.parametrize("mode", MODES)
def test_adam_step_matches_numpy(mode):
    net, X, Y = mlp(), *data()
    params = net.init(seed=0)
    r = np.random.default_rng(6)
    opt = nn.Adam(0.01, b1=0.8, b2=0.99, eps=1e-7)
    state = {"m": {k: r.normal(size=v.shape) for k, v in params.items()},
             "v": {k: r.uniform(0.1, 1.0, size=v.shape) for k, v in params.items()}, "t": 3.0}
    step = nn.compile_step(net, params, X, Y, nn.mse, opt, arrays=mode, backend="python")
    _, new, new_state = step(params, state, X, Y)
    g = mlp_backward(params, X, lambda o: (o - Y) / len(X))
    assert new_state["t"] == 4.0
    for k in params:
        m = 0.8 * state["m"][k] + 0.2 * g[k]
        v = 0.99 * state["v"][k] + 0.01 * g[k] ** 2
        p = params[k] - 0.01 * (m / (1 - 0.8 ** 4)) / (np.sqrt(v / (1 - 0.99 ** 4)) + 1e-7)
        np.testing.assert_allclose(new_state["m"][k], m, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_state["v"][k], v, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new[k], p, rtol=1e-12, atol=1e-14)


def test_step_is_one_emitted_function_with_lr_as_argument():
    net, X, Y = mlp(), *data()
    params = net.init(seed=0)
    step = nn.compile_step(net, params, X, Y, nn.mse, nn.Adam(0.01), arrays="numpy")
    assert step.source.count("\ndef ") == 2  # the step and its numba entry point
    assert step.arg_names == ("W0", "b0", "W2", "b2", "X", "Y", "lr", "m_W0", "m_b0", "m_W2",
                              "m_b2", "v_W0", "v_b0", "v_W2", "v_b2", "t")
    for name in ("dW0 =", "W0_new =", "m_W0_new =", "t_new ="):
        assert name in step.source
    again = nn.compile_step(net, params, X, Y, nn.mse, nn.Adam(0.5), arrays="numpy")
    assert again is step  # a new learning rate reuses the compiled step


# --- the seed network ------------------------------------------------------------------------
SEED_X, SEED_Y = np.array([1.0, -1.0]), np.array([-1.0, 1.0])


def seed_train(model, params):
    params, history = nn.fit(model, params, SEED_X, SEED_Y, loss=nn.mse, optimizer=nn.SGD(0.05),
                             epochs=160, batch_size=1, shuffle=False, progress=False)
    return params, history


def seed_predict(model, params, x):
    return 1 if nn.predict(model, params, x) > 0 else -1


def test_seed_network_learns_from_a_fixed_init():
    model = nn.Chain(nn.Scale(), nn.Scale(), nn.Scale())
    params, history = seed_train(model, {"0.w": np.array(0.3), "1.w": np.array(-0.2),
                                         "2.w": np.array(0.4)})
    assert seed_predict(model, params, 1.0) == -1 and seed_predict(model, params, -1.0) == 1
    assert history["loss"][-1] < 1e-6 < history["loss"][0]
    step = nn.compile_step(model, params, SEED_X[:1], SEED_Y[:1], nn.mse, nn.SGD(0.05))
    assert not step.whole and "w0_new = w0 - " in step.source  # unrolled, compiled by numba


def test_seed_network_trials_with_exact_gradients():
    model = nn.Chain(nn.Scale(), nn.Scale(), nn.Scale())
    wins = 0
    for trial in range(50):
        params, _ = seed_train(model, model.init(seed=trial))
        wins += seed_predict(model, params, 1.0) == -1 and seed_predict(model, params, -1.0) == 1
    assert wins >= 45


def test_seed_step_matches_the_exact_gradient():
    """One per-sample update against dL/dw_k = (out - y) * x * prod of the other weights."""
    model = nn.Chain(nn.Scale(), nn.Scale(), nn.Scale())
    w = np.array([0.3, -0.2, 0.4])
    params = {f"{k}.w": np.array(v) for k, v in enumerate(w)}
    step = nn.compile_step(model, params, SEED_X[:1], SEED_Y[:1], nn.mse, nn.SGD(0.05))
    loss, new, _ = step(params, {}, SEED_X[:1], SEED_Y[:1])
    err = w.prod() * 1.0 - (-1.0)
    grad = err * np.array([w[1] * w[2], w[0] * w[2], w[0] * w[1]])
    assert loss == pytest.approx(0.5 * err ** 2)
    np.testing.assert_allclose([new[f"{k}.w"] for k in range(3)], w - 0.05 * grad, rtol=1e-14)


# --- fit ---------------------------------------------------------------------------------------
def blobs(n=60, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    labels = r.integers(0, 3, size=n)
    centres = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    return (centres[labels] + 0.5 * r.normal(size=(n, 3))).astype(dtype), labels


def test_fit_loss_falls_and_accuracy_rises():
    X, labels = blobs()
    net = nn.Chain(nn.Dense(3, 8), nn.ReLU(), nn.Dense(8, 3))
    params = net.init(seed=0)
    trained, history = nn.fit(net, params, X, labels, loss=nn.softmax_cross_entropy,
                              optimizer=nn.Adam(0.05), epochs=15, batch_size=16, seed=1,
                              progress=False)
    assert len(history["loss"]) == len(history["accuracy"]) == 15
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] >= 0.9
    assert history["steps"] == 15 * 4 and history["state"]["t"] == 60.0
    assert not np.array_equal(trained["0.W"], params["0.W"])  # params itself is untouched
    assert np.array_equal(params["0.W"], net.init(seed=0)["0.W"])


def test_fit_is_deterministic_and_compiles_once_per_batch_shape():
    X, labels = blobs(n=10)
    net = nn.Chain(nn.Dense(3, 3))
    runs = [nn.fit(net, net.init(seed=0), X, labels, loss=nn.softmax_cross_entropy,
                   optimizer=nn.SGD(0.1, momentum=0.5), epochs=3, batch_size=4, seed=7,
                   progress=False) for _ in range(2)]
    assert runs[0][1]["loss"] == runs[1][1]["loss"]
    other = nn.fit(net, net.init(seed=0), X, labels, loss=nn.softmax_cross_entropy,
                   optimizer=nn.SGD(0.1, momentum=0.5), epochs=3, batch_size=4, seed=8,
                   progress=False)
    assert other[1]["loss"] != runs[0][1]["loss"]  # another shuffle
    assert len(nn_train._STEPS[net]) == 2  # batches of 4 and the last batch of 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_float32_and_float64(dtype):
    X, labels = blobs(dtype=dtype)
    net = nn.Chain(nn.Dense(3, 8), nn.Tanh(), nn.Dense(8, 3))
    params = net.init(seed=0, dtype=dtype)
    trained, history = nn.fit(net, params, X, labels, loss=nn.softmax_cross_entropy,
                              optimizer=nn.Adam(0.05), epochs=10, batch_size=20, progress=False)
    assert all(v.dtype == dtype for v in trained.values())
    assert all(v.dtype == dtype for v in history["state"]["m"].values())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    if dtype == np.float32:  # the same run in float64 agrees to float32 precision
        _, h64 = nn.fit(net, net.init(seed=0), X.astype(np.float64), labels,
                        loss=nn.softmax_cross_entropy, optimizer=nn.Adam(0.05), epochs=10,
                        batch_size=20, progress=False)
        np.testing.assert_allclose(history["loss"], h64["loss"], rtol=1e-3)
        step = nn.compile_step(net, params, X[:20], np.eye(3, dtype=dtype)[labels[:20]],
                               nn.softmax_cross_entropy, nn.Adam(0.05))
        assert step.whole and "float64" not in step.source


@pytest.mark.parametrize("have_tqdm", [False, True])
def test_fit_progress_bar_is_optional(have_tqdm, monkeypatch, capsys):
    if have_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, labels = blobs(n=20)
    net = nn.Chain(nn.Dense(3, 3))
    _, history = nn.fit(net, net.init(), X, labels, loss=nn.softmax_cross_entropy,
                        optimizer=nn.SGD(0.1), epochs=2, batch_size=10, progress=True)
    assert len(history["loss"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("epoch" in captured.err) == have_tqdm
    nn.fit(net, net.init(), X, labels, loss=nn.softmax_cross_entropy, optimizer=nn.SGD(0.1),
           epochs=2, batch_size=10, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_regression_with_column_output():
    r = np.random.default_rng(0)
    X = r.normal(size=(40, 2))
    y = X @ np.array([1.5, -2.0]) + 0.3  # a vector of labels for a one-column output
    net = nn.Chain(nn.Dense(2, 1))
    trained, history = nn.fit(net, net.init(), X, y, loss="mse", optimizer=nn.SGD(0.2),
                              epochs=40, batch_size=8, progress=False)
    assert history["accuracy"] is None
    np.testing.assert_allclose(trained["0.W"][:, 0], [1.5, -2.0], atol=1e-3)
    np.testing.assert_allclose(trained["0.b"], [0.3], atol=1e-3)


def test_repeat_is_one_loop_and_equals_the_unrolled_chain():
    from gradc import nn

    block = nn.Repeat(nn.Chain(nn.Dense(3, 3), nn.Tanh()), 5)
    stacked = block.init(seed=2)
    twin = nn.Chain(*[nn.Chain(nn.Dense(3, 3), nn.Tanh()) for _ in range(5)])
    X = np.random.default_rng(0).normal(size=(4, 3))

    def rolled(W, b):
        return 0.5 * np.sum(block.apply({"0.W": W, "0.b": b}, X) ** 2)

    def unrolled(W, b):
        params = {f"{i}.0.{n}": v[i] for i in range(5) for n, v in (("W", W), ("b", b))}
        return 0.5 * np.sum(twin.apply(params, X) ** 2)

    f = gradc.value_and_grad(rolled, backend="python")
    g = gradc.value_and_grad(unrolled, backend="python", arrays="numpy")
    (v1, (dW1, db1)), (v2, (dW2, db2)) = f(stacked["0.W"], stacked["0.b"]), g(stacked["0.W"],
                                                                              stacked["0.b"])
    assert v1 == pytest.approx(v2, rel=1e-13)
    np.testing.assert_allclose(dW1, dW2, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(db1, db2, rtol=1e-11, atol=1e-14)
    assert f.source.count("np.tanh(") == 2 and g.source.count("np.tanh(") >= 5
    assert block.apply(stacked, X) == pytest.approx(twin.apply(
        {f"{i}.0.{n}": stacked[f"0.{n}"][i] for i in range(5) for n in "Wb"}, X))


def test_repeat_step_compiles_its_loop_with_numba():
    from gradc import nn

    model = nn.Chain(nn.Dense(3, 4), nn.Tanh(), nn.Repeat(nn.Chain(nn.Dense(4, 4), nn.Tanh()), 6),
                     nn.Dense(4, 1))
    params = model.init(seed=1)
    X = np.random.default_rng(1).normal(size=(8, 3))
    Y = np.sin(X.sum(axis=1, keepdims=True))
    step = nn.compile_step(model, params, X, Y, nn.mse, nn.SGD(0.1))
    assert step.whole and "for t in range(6)" in step.source
    assert type(step.raw).__name__ == "CPUDispatcher"  # the loop runs compiled
    reference = nn.compile_step(model, params, X, Y, nn.mse, nn.SGD(0.1), backend="python")
    loss, new, _ = step(params, {}, X, Y)
    loss_py, new_py, _ = reference(params, {}, X, Y)
    assert loss == pytest.approx(loss_py, rel=1e-12)
    for k in new:
        np.testing.assert_allclose(new[k], new_py[k], rtol=1e-10, atol=1e-14)


def test_a_step_of_whole_arrays_runs_as_fused_loops_and_agrees_with_numpy_level_code():
    rng = np.random.default_rng(11)
    model = nn.Chain(nn.Dense(32, 24), nn.Tanh(), nn.Dense(24, 5))
    params = model.init_params(rng, np.float64) if not hasattr(model, "init") else model.init(rng)
    X = rng.random((16, 32))
    Y = nn.softmax_cross_entropy.targets(rng.integers(0, 5, 16), (5,))
    for opt in (nn.SGD(0.05, momentum=0.9), nn.Adam(0.01)):
        loops = nn.compile_step(model, params, X, Y, nn.softmax_cross_entropy, opt)
        plain = nn.compile_step(model, params, X, Y, nn.softmax_cross_entropy, opt,
                                backend="python")
        assert ", as loops." in loops.source.splitlines()[0]
        state = opt.init(params) if hasattr(opt, "init") else {}
        _assert_trees_close(loops(params, state, X, Y), plain(params, state, X, Y))


def _assert_trees_close(got, want):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for k in want:
            _assert_trees_close(got[k], want[k])
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_trees_close(g, w)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# --- every layer and loss, traced whole at every batch size ----------------------------------
def _layer_models():
    return {
        "Dense": nn.Chain(nn.Dense(3, 2)),
        "Scale": nn.Chain(nn.Dense(3, 2), nn.Scale()),
        "Tanh": nn.Chain(nn.Dense(3, 2), nn.Tanh()),
        "Sigmoid": nn.Chain(nn.Dense(3, 2), nn.Sigmoid()),
        "ReLU": nn.Chain(nn.Dense(3, 2), nn.ReLU()),
        "Softplus": nn.Chain(nn.Dense(3, 2), nn.Softplus()),
        "Repeat": nn.Chain(nn.Dense(3, 2), nn.Repeat(nn.Chain(nn.Dense(2, 2), nn.Tanh()), 2)),
    }


def _central_differences(model, loss, params, X, Y, h=1e-6):
    def value(p):
        return float(loss(model.apply(p, X), Y))

    grads = {}
    for k, v in params.items():
        g = np.zeros(np.shape(v))
        for idx in np.ndindex(*np.shape(v)):
            up, down = dict(params), dict(params)
            up[k], down[k] = np.array(v, dtype=float), np.array(v, dtype=float)
            up[k][idx] += h
            down[k][idx] -= h
            g[idx] = (value(up) - value(down)) / (2 * h)
        grads[k] = g
    return grads


def _check_step(model, loss, batch):
    params = model.init(seed=batch)
    r = np.random.default_rng(batch)
    X = r.normal(size=(batch, 3))
    Y = loss.targets(r.integers(0, 2, size=batch), (2,)) if loss.kind == "multiclass" else \
        r.uniform(0.0, 1.0, size=(batch, 2))
    step = nn.compile_step(model, params, X, Y, loss, nn.SGD(1.0), backend="python")
    value, grads = step_gradients(step, params, X, Y)
    assert value == pytest.approx(float(loss(model.apply(params, X), Y)), rel=1e-12)
    want = _central_differences(model, loss, params, X, Y)
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-5, atol=1e-8, err_msg=k)
    return step


@pytest.mark.parametrize("batch", [1, 7, 300])
@pytest.mark.parametrize("layer", list(_layer_models()))
def test_every_layers_step_is_exact_at_every_batch_size(layer, batch):
    step = _check_step(_layer_models()[layer], nn.mse, batch)
    if batch == 300:  # past the unroll limit: arrays whole
        assert step.whole


@pytest.mark.parametrize("batch", [1, 7, 300])
@pytest.mark.parametrize("loss", [nn.mse, nn.softmax_cross_entropy, nn.binary_cross_entropy],
                         ids=lambda loss: loss.name)
def test_every_losss_step_is_exact_at_every_batch_size(loss, batch):
    step = _check_step(nn.Chain(nn.Dense(3, 4), nn.Tanh(), nn.Dense(4, 2)), loss, batch)
    if batch in (1, 300):  # one sample unrolls (log_softmax's max too); 300 stays whole
        assert step.whole == (batch == 300)


def test_step_graph_unrolls_through_the_unroll_pass_or_says_why_not():
    model = nn.Chain(nn.Dense(3, 2), nn.Tanh())
    params = model.init(seed=0)
    shapes = [np.shape(v) for v in params.values()]
    args = (model, nn.mse, nn.SGD(0.1), list(params), shapes, (2, 3), (2, 2))
    whole, scalar = nn.step_graph(*args), nn.step_graph(*args, whole=False)
    assert whole.whole_params and not scalar.whole_params
    assert [name for name, _ in whole.params] == [name for name, _ in scalar.params]
    deep = nn.Chain(nn.Dense(3, 2), nn.Repeat(nn.Dense(2, 2), 3))  # a scan: no scalar form
    deep_params = deep.init(seed=0)
    with pytest.raises(gradc.UnsupportedFunctionError, match="no element-by-element form"):
        nn.step_graph(deep, nn.mse, nn.SGD(0.1), list(deep_params),
                      [np.shape(v) for v in deep_params.values()], (2, 3), (2, 2), whole=False)
