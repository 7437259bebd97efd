"""kernelalg.predict.gradient_descent (the ODE) against closed forms and an independent solver."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl

from kernelalg import predict as kp


N, M, C = 8, 5, 2
_a = np.asarray(jr.normal(jr.key(10), (N + M, 12)))
_k = _a @ _a.T / 12  # a PSD joint kernel over train and test points
K_DD, K_TD = _k[:N, :N], _k[N:, :N]
Y = np.asarray(jr.normal(jr.key(11), (N, C)))
F0 = np.asarray(jr.normal(jr.key(12), (N, C)))
G0 = np.asarray(jr.normal(jr.key(13), (M, C)))
T = np.array([0.0, 0.5, 4.0, 30.0])


def mse(fx, y):
    return 0.5 * jnp.mean((fx - y) ** 2)


def cross_entropy(fx, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(fx) * y, -1))


def test_mse_ode_equals_closed_form():
    ode = kp.gradient_descent(mse, K_DD, Y, learning_rate=0.8)
    closed = kp.gradient_descent_mse(K_DD, Y, learning_rate=0.8)
    a_train, a_test = ode(T, F0, G0, K_TD)
    b_train, b_test = closed(T, F0, G0, K_TD)
    assert a_train.shape == (4, N, C) and a_test.shape == (4, M, C)
    np.testing.assert_allclose(a_train, b_train, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a_test, b_test, rtol=1e-6, atol=1e-7)
    # t = 0 returns the initial outputs.
    np.testing.assert_allclose(a_train[0], F0, rtol=1e-12)
    np.testing.assert_allclose(a_test[0], G0, rtol=1e-12)


def test_momentum_equals_linear_second_order_solution():
    # With MSE, heavy-ball flow is linear: d/dt (f - y, q) = A (f - y, q) with
    # A = [[0, I], [-K / |Y|, (mu - 1) / sqrt(eta)]], in time units of sqrt(eta).
    lr, mu = 0.5, 0.9
    ode = kp.gradient_descent(mse, K_DD, Y, learning_rate=lr, momentum=mu)
    zeros = kp.ODEState(F0, G0, np.zeros_like(F0), np.zeros_like(G0))
    state = ode(T, zeros, None, K_TD)
    assert isinstance(state, kp.ODEState) and state.qx_train.shape == (4, N, C)
    friction = (mu - 1) / np.sqrt(lr)
    k = np.block(
        [[K_DD, np.zeros((N, M))], [K_TD, np.zeros((M, M))]]
    )  # test outputs follow the train residual
    size = N + M
    a = np.block([[np.zeros((size, size)), np.eye(size)], [-k / Y.size, friction * np.eye(size)]])
    y_all = np.concatenate([Y, np.zeros((M, C))])
    x0 = np.concatenate([np.concatenate([F0, G0]) - y_all, np.zeros((size, C))])
    for i, t in enumerate(T):
        x = sl.expm(a * t * np.sqrt(lr)) @ x0
        f = x[:size] + y_all
        # Test outputs are not pulled towards anything: only their increments follow.
        np.testing.assert_allclose(state.fx_train[i], f[:N], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state.fx_test[i], f[N:], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state.qx_train[i], x[size : size + N], rtol=1e-6, atol=1e-7)
    # Resuming from a state continues the same trajectory.
    mid = jax.tree_util.tree_map(lambda v: v[2], state)
    resumed = ode(np.array([0.0, 0.0, 0.0, T[3] - T[2]]), mid, None, K_TD)
    np.testing.assert_allclose(resumed.fx_train[3], state.fx_train[3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.qx_test[3], state.qx_test[3], rtol=1e-6, atol=1e-7)


def test_cross_entropy_matches_scipy():
    labels = np.eye(C)[np.arange(N) % C]
    ode = kp.gradient_descent(cross_entropy, K_DD, labels, learning_rate=2.0)
    got_train, got_test = ode(T, F0, G0, K_TD)

    grad = jax.jit(jax.grad(lambda f: cross_entropy(f, labels)))

    def rhs(_, z):
        f = z[: N * C].reshape(N, C)
        g = np.asarray(grad(f))
        return -2.0 * np.concatenate([(K_DD @ g).ravel(), (K_TD @ g).ravel()])

    sol = si.solve_ivp(
        rhs, (0, T[-1]), np.concatenate([F0.ravel(), G0.ravel()]), t_eval=T, rtol=1e-10, atol=1e-10
    )
    want = sol.y.T
    np.testing.assert_allclose(got_train.reshape(4, -1), want[:, : N * C], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_test.reshape(4, -1), want[:, N * C :], rtol=1e-6, atol=1e-6)


def test_steady_state_and_one_sided_outputs():
    ode = kp.gradient_descent(mse, K_DD, Y, learning_rate=4.0)
    train = ode(None, F0)
    np.testing.assert_allclose(train, Y, atol=1e-5)
    test_only = ode(T, None, G0, K_TD)
    _, both_test = ode(T, np.zeros_like(F0), G0, K_TD)
    np.testing.assert_allclose(test_only, both_test, rtol=1e-12)


@pytest.mark.slow  # compiling the adjoint of the adaptive solver takes tens of seconds
def test_gradient_through_the_ode():
    def final_loss(scale):
        ode = kp.gradient_descent(mse, scale * K_DD, Y)
        return jnp.sum(ode(3.0, F0) ** 2)

    f = jax.jit(jax.value_and_grad(final_loss))
    np.testing.assert_allclose(f(1.0)[1], (f(1.0 + 1e-5)[0] - f(1.0 - 1e-5)[0]) / 2e-5, rtol=1e-4)
