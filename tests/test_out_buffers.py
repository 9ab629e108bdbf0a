"""f(x, out=dx): the gradient is written into the caller's buffer, on every path.

Unrolled code (small arrays) and fused loops (large ones) write straight into it; a second
call of the same types takes a quick path that still checks the buffer.
"""
import numpy as np
import pytest

import gradc

RNG = np.random.default_rng(3)
W = RNG.random(3000)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def weighted(x):
    return np.sum(W * np.sin(x) ** 2)


@pytest.mark.parametrize("fn, n", [(rosen, 16), (rosen, 3000), (weighted, 3000)])
def test_out_writes_the_gradient_into_the_buffer(fn, n):
    vg = gradc.value_and_grad(fn)
    ref = gradc.value_and_grad(fn, backend="python")
    for _ in range(2):  # the full path, then the quick one
        x = RNG.uniform(-1, 1, n)
        dx = np.full(n, np.nan)
        value, grad = vg(x, out=dx)
        assert grad is dx
        want = ref(x)
        assert value == pytest.approx(want[0], rel=1e-13)
        np.testing.assert_allclose(dx, want[1], rtol=1e-12, atol=1e-12)


def test_large_arrays_write_from_the_fused_loop_itself():
    vg = gradc.value_and_grad(rosen)
    x, dx = RNG.uniform(-1, 1, 3000), np.empty(3000)
    vg(x, out=dx)
    out_specs = [s for k, s in vg._specs.items() if len(k) == 3 and k[-1] == "out"]
    assert out_specs and "def rosen__value_and_grad__loops__out(x, dx):" in out_specs[0].source


def test_the_quick_path_still_refuses_a_wrong_buffer():
    vg = gradc.value_and_grad(rosen)
    x = RNG.uniform(-1, 1, 3000)
    vg(x, out=np.empty(3000))
    for bad in (np.empty(2999), np.empty(6000)[::2], np.empty(3000, np.float32)):
        with pytest.raises(gradc.ArgumentError, match="out="):
            vg(x, out=bad)
    readonly = np.empty(3000)
    readonly.setflags(write=False)
    with pytest.raises(gradc.ArgumentError, match="writable"):
        vg(x, out=readonly)


def test_out_sees_a_captured_array_changed_in_place():
    vg = gradc.value_and_grad(weighted)
    x, dx = RNG.uniform(-1, 1, 3000), np.empty(3000)
    vg(x, out=dx)
    saved = W.copy()
    try:
        W[:] = 2.0 * saved
        vg(x, out=dx)
        want = gradc.value_and_grad(lambda x, w: np.sum(w * np.sin(x) ** 2), argnums=0,
                                    backend="python")(x, W)[1]
    finally:
        W[:] = saved
    np.testing.assert_allclose(dx, want, rtol=1e-12)
