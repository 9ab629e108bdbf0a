def rosen__value_and_grad(x):
    n = x.shape[0]
    rosen = 0.0
    dx = np.zeros((n,))
    for i in range(n - 1):
        t0 = x[i] ** 2
        t1 = x[i + 1] - t0
        t2 = t1 ** 2
        t3 = 100.0 * t2
        t4 = 1.0 - x[i]
        t5 = t4 ** 2
        t6 = t3 + t5
        rosen += t6
        t7 = 2.0 * t4
        t8 = -t7
        t9 = 200.0 * t1
        t10 = -t9
        t11 = t10 * 2.0
        t12 = t11 * x[i]
        t13 = t8 + t12
        dx[i] += t13
        dx[i + 1] += t9
    return rosen, dx
