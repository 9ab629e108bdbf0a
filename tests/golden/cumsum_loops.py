def cumsum_loss__value_and_grad(x):
    n = x.shape[0]
    t0 = np.empty((n,))
    acc = -0.0
    for i in range(n):
        acc += x[i]
        t0[i] = acc
    cumsum_loss = 0.0
    t2 = np.empty((n,))
    acc_1 = -0.0
    for i in range(n):
        t1 = t0[i] ** 2
        cumsum_loss += t1
        t3 = 2.0 * t0[-i + n - 1]
        acc_1 += t3
        t2[i] = acc_1
    dx = np.empty((n,))
    for i in range(n):
        dx[i] = t2[-i + n - 1]
    return cumsum_loss, dx
