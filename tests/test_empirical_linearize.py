"""`linearize` and `taylor_expand`: training a wide network and its linearisation with
optax, the exact kernel dynamics of the linearised model, and Taylor expansions of
growing degree."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import kernelalg as ka
from kernelalg import layers as kl


KEY = jr.key(0, impl="rbg")
X = jr.normal(jr.key(1, impl="rbg"), (8, 4))
X_TEST = jr.normal(jr.key(2, impl="rbg"), (5, 4))
Y = jnp.sin(X[:, :2])


def _train(model, steps: int, learning_rate: float):
    """Full-batch gradient descent on the mean squared error with optax, the same loop
    for any model."""
    opt = optax.sgd(learning_rate)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    def loss(m):
        return 0.5 * jnp.mean((jax.vmap(m)(X) - Y) ** 2)

    @eqx.filter_jit
    def run(model, state):
        def step(carry, _):
            model, state = carry
            grads = eqx.filter_grad(loss)(model)
            updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
            return (eqx.apply_updates(model, updates), state), None

        params, static = eqx.partition(model, eqx.is_inexact_array)

        def step_params(carry, x):
            (p, s), _ = step((eqx.combine(carry[0], static), carry[1]), x)
            return (eqx.filter(p, eqx.is_inexact_array), s), None

        (params, state), _ = jax.lax.scan(step_params, (params, state), None, length=steps)
        return eqx.combine(params, static)

    return run(model, state)


def test_linearized_wide_network_stays_close_to_the_network():
    # Relu: the twin of an activation with coefficients (Erf(a, b, c)) holds them as
    # array leaves that `eqx.filter(model, eqx.is_inexact_array)` would train too.
    net = kl.Serial(kl.Dense(1024, 1.5, 0.1), kl.Relu(), kl.Dense(2, 1.5, 0.1))
    model = net.init(KEY, (4,))
    lin = ka.linearize(model)
    trained, trained_lin = _train(model, 100, 1.0), _train(lin, 100, 1.0)
    f, f_lin = jax.vmap(trained)(X_TEST), jax.vmap(trained_lin)(X_TEST)
    moved = jax.vmap(trained)(X_TEST) - jax.vmap(model)(X_TEST)
    rmse = float(jnp.sqrt(jnp.mean((f - f_lin) ** 2)))
    scale = float(jnp.sqrt(jnp.mean(moved**2)))
    print(
        f"RMSE(network, linearised) on test points after training: {rmse:.2e} (outputs moved by {scale:.2e})"
    )
    # Training moved the outputs by O(1); at width 1024 the two differ by O(1/sqrt(width)) of that.
    assert scale > 0.1 and rmse < 0.05 * scale
    # The base is frozen: training moved `delta` only.
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(jnp.all(a == b)),
            eqx.filter(trained_lin.base, eqx.is_array),
            eqx.filter(model, eqx.is_array),
        )
    )


def test_linearized_follows_the_empirical_ntk_exactly():
    # Gradient descent on the MSE of a linear model: f_{t+1} - y = (I - lr/m * Theta)(f_t - y),
    # Theta the full empirical NTK (trace_axes=()) flattened over (example, output), m = Y.size.
    model = kl.Serial(kl.Dense(16, 1.3, 0.2), kl.Relu(), kl.Dense(2, 1.0, 0.1)).init(KEY, (4,))
    lr, steps = 0.5, 20
    trained = _train(ka.linearize(model), steps, lr)
    theta = ka.empirical_ntk_fn(model, trace_axes=())(X)  # (8, 8, 2, 2): i j a b
    theta = jnp.transpose(theta, (0, 2, 1, 3)).reshape(Y.size, Y.size)
    residual = (jax.vmap(model)(X) - Y).reshape(-1)
    step = jnp.eye(Y.size) - lr / Y.size * theta
    for _ in range(steps):
        residual = step @ residual
    np.testing.assert_allclose(jax.vmap(trained)(X) - Y, residual.reshape(Y.shape), rtol=1e-10, atol=1e-12)


def test_taylor_degree_one_is_linearize_and_degrees_converge():
    model = kl.Serial(kl.Dense(8, 1.3, 0.2), kl.Erf(), kl.Dense(2, 1.0, 0.1)).init(KEY, (4,))
    lin = ka.linearize(model)
    delta = jax.tree_util.tree_map(lambda a: 0.05 * jr.normal(jr.key(3, impl="rbg"), a.shape), lin.delta)
    moved = eqx.apply_updates(model, delta)

    def expansions(model, delta):
        out = [jax.vmap(eqx.tree_at(lambda e: e.delta, ka.linearize(model), delta))(X)]
        for d in range(5):
            t = eqx.tree_at(lambda e: e.delta, ka.taylor_expand(model, degree=d), delta)
            out.append(jax.vmap(t)(X))
        return out, jax.vmap(moved)(X)

    (f_lin, *f_taylor), f = eqx.filter_jit(expansions)(model, delta)
    np.testing.assert_allclose(f_taylor[1], f_lin, rtol=1e-13, atol=1e-14)
    errors = [float(jnp.max(jnp.abs(t - f))) for t in f_taylor]
    assert all(b < a / 3 for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-3 * errors[0], errors


def test_function_style_matches_nt_semantics():
    def f(params, x):
        w1, w2, n = params
        return jnp.tanh(x @ w1) @ w2 * n.astype(x.dtype)

    p0 = (jr.normal(KEY, (4, 6)), jr.normal(jr.key(4, impl="rbg"), (6, 2)), jnp.asarray(2))  # an int leaf
    p1 = jax.tree_util.tree_map(lambda a: a + 0.01 if jnp.issubdtype(a.dtype, jnp.floating) else a, p0)
    f_lin = ka.linearize(f, p0)
    f_1 = ka.taylor_expand(f, p0, 1)
    want = (
        f(p0, X)
        + jax.jvp(lambda p: f((p[0], p[1], p0[2]), X), ((p0[0], p0[1]),), ((p1[0] - p0[0], p1[1] - p0[1]),))[
            1
        ]
    )
    np.testing.assert_allclose(f_lin(p1, X), want, rtol=1e-12)
    np.testing.assert_allclose(f_1(p1, X), want, rtol=1e-12)
    assert float(jnp.max(jnp.abs(ka.taylor_expand(f, p0, 3)(p1, X) - f(p1, X)))) < 1e-6
