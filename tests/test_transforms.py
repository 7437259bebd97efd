"""jit, vmap, grad and pmap over hyperparameters and inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl


X = jr.normal(jr.key(1), (5, 4))
X2 = jr.normal(jr.key(2), (3, 4))


def net(w, b=0.1, activation=None):
    act = kl.Relu() if activation is None else activation
    return kl.Serial(kl.Dense(16, W_std=w, b_std=b), act, kl.Dense(1, W_std=w, b_std=b))


def test_jit_of_kernel_equals_eager():
    f = eqx.filter_jit(lambda n, x: ka.kernel(n, x, X2))
    k_jit, k = f(net(1.3), X), ka.kernel(net(1.3), X, X2)
    np.testing.assert_allclose(k_jit.nngp, k.nngp, rtol=1e-13)
    np.testing.assert_allclose(k_jit.ntk, k.ntk, rtol=1e-13)


def test_jit_of_layer_on_kernel():
    k0 = ka.Kernel.from_inputs(X, X2)
    layer = net(1.1)
    a, b = eqx.filter_jit(layer)(k0), layer(k0)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-13)


def test_vmap_over_W_std_equals_loop():
    ws = jnp.array([0.5, 1.0, 1.7])
    batched = jax.vmap(lambda w: ka.kernel(net(w), X).ntk)(ws)
    for i, w in enumerate(ws):
        np.testing.assert_allclose(batched[i], ka.kernel(net(float(w)), X).ntk, rtol=1e-12)


def test_pmap_over_hyperparameter_settings():
    n = jax.local_device_count()
    assert n >= 2, "tests/conftest.py asks for 4 CPU devices"
    ws = jnp.linspace(0.5, 2.0, n)
    out = jax.pmap(lambda w: ka.kernel(net(w, activation=kl.Erf()), X).nngp)(ws)
    for i in range(n):
        np.testing.assert_allclose(out[i], ka.kernel(net(ws[i], activation=kl.Erf()), X).nngp, rtol=1e-12)


@pytest.mark.parametrize(
    "activation",
    [kl.Relu(), kl.Erf(), kl.Gelu(), kl.Abs(), kl.LeakyRelu(0.2), kl.Sin(), kl.RectifiedMonomial(2)],
    ids=lambda a: type(a).__name__,
)
def test_grad_wrt_W_std_matches_finite_differences(activation):
    def loss(w):
        k = ka.kernel(net(w, activation=activation), X, X2)
        return jnp.sum(k.nngp**2) + jnp.sum(k.ntk)

    w0, h = 1.3, 1e-5
    g = jax.grad(loss)(w0)
    fd = (loss(w0 + h) - loss(w0 - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6)


@pytest.mark.parametrize(
    "activation",
    [kl.Relu(), kl.Erf(), kl.Abs(), kl.Sign(), kl.ABRelu(-0.3, 1.2), kl.RectifiedMonomial(1), kl.Gelu()],
    ids=lambda a: type(a).__name__,
)
def test_grad_wrt_inputs_finite_at_perfect_correlation(activation):
    # x with itself: the diagonal sits at correlation exactly 1, where the arc-cosine
    # dual has an infinite-slope square root (google/neural-tangents #88).
    def loss(x):
        k = ka.kernel(kl.Serial(kl.Dense(8, W_std=1.5, b_std=0.2), activation, kl.Dense(1)), x)
        return jnp.sum(k.nngp) + jnp.sum(k.ntk)

    g = jax.grad(loss)(X)
    assert bool(jnp.all(jnp.isfinite(g)))
    # Directional finite difference along a random direction.
    d = jr.normal(jr.key(3), X.shape)
    h = 1e-6
    fd = (loss(X + h * d) - loss(X - h * d)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(g * d), fd, rtol=1e-5, atol=1e-7)


def test_grad_through_activation_parameter():
    def loss(b):
        return jnp.sum(ka.kernel(net(1.2, activation=kl.Erf(b=b)), X).nngp)

    g = jax.grad(loss)(0.8)
    fd = (loss(0.8 + 1e-5) - loss(0.8 - 1e-5)) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_float32_inputs_give_float32_kernels_under_x64():
    k = ka.kernel(net(1.0, activation=kl.Erf()), X.astype(jnp.float32))
    assert k.nngp.dtype == jnp.float32 and k.ntk.dtype == jnp.float32 and k.cov1.dtype == jnp.float32
    k64 = ka.kernel(net(1.0, activation=kl.Erf()), X)
    np.testing.assert_allclose(k.nngp, k64.nngp, rtol=1e-5)


def test_repeat_scans_and_equals_serial():
    block = kl.Serial(kl.Dense(7, W_std=1.4, b_std=0.1), kl.Erf())
    a = ka.kernel(kl.Serial(kl.Dense(7), kl.Repeat(block, 4)), X, X2)
    b = ka.kernel(kl.Serial(kl.Dense(7), block, block, block, block), X, X2)
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-12)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-12)
