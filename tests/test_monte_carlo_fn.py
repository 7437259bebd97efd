"""`monte_carlo_kernel_fn`: agreement with the analytic kernels within its own
standard errors, exact means and standard errors against a loop over networks, and
the same numbers whatever the batching (steps, blocks, devices)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl


KEY = jr.key(0, impl="rbg")

X1 = jr.normal(jr.key(1, impl="rbg"), (4, 3))
X2 = jr.normal(jr.key(2, impl="rbg"), (2, 3))
# One hidden nonlinear layer: E[empirical kernel] is the analytic kernel at any width
# (see kernelalg.testing.assert_monte_carlo_agreement), so the only error is sampling.
NET = kl.Serial(kl.Dense(16, 1.3, 0.2), kl.Relu(), kl.Dense(4, 1.1, 0.1))


def test_agrees_with_the_analytic_kernel_within_its_standard_errors():
    exact = ka.kernel(NET, X1, X2)
    estimates = ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=[16, 256])(X1, X2)
    assert [e.n_samples for e in estimates] == [16, 256]
    for e in estimates:
        for mean, se, want in ((e.nngp, e.nngp_se, exact.nngp), (e.ntk, e.ntk_se, exact.ntk)):
            z = np.abs(np.asarray(mean) - np.asarray(want)) / np.asarray(se)
            assert np.all(z < 5), z  # 8 entries; a false alarm is rarer than 1e-4
    # The standard error shrinks like 1/sqrt(n).
    ratio = np.median(np.asarray(estimates[0].ntk_se) / np.asarray(estimates[1].ntk_se))
    assert 2.5 < ratio < 6.5, ratio


def test_means_and_standard_errors_equal_a_loop_over_networks():
    n = 5
    mc = ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=[1, 3, n], samples_per_step=2, trace_axes=())
    one, three, five = mc(X1, X2)
    assert np.all(np.isinf(one.ntk_se))
    keys = jr.split(KEY, n)
    samples = [ka.empirical_kernel_fn(NET.init(k, (3,)), trace_axes=())(X1, X2) for k in keys]
    for got, m in ((three, 3), (five, n)):
        for name in ("nngp", "ntk"):
            s = np.stack([np.asarray(getattr(k, name)) for k in samples[:m]])
            np.testing.assert_allclose(getattr(got, name), s.mean(0), rtol=1e-12, atol=1e-14)
            se = s.std(0, ddof=1) / np.sqrt(m)
            np.testing.assert_allclose(getattr(got, f"{name}_se"), se, rtol=1e-9, atol=1e-14)


def test_batching_does_not_change_the_estimate():
    base = ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=8, device_count=0)(X1, X2)
    for kwargs in (
        dict(samples_per_step=3, batch_size=2),
        dict(device_count=-1, samples_per_step=4, store_on_device=False),
    ):
        other = ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=8, **kwargs)(X1, X2)
        for name in ("nngp", "ntk", "nngp_se", "ntk_se"):
            np.testing.assert_allclose(getattr(other, name), getattr(base, name), rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_diagonal_blocks_and_nt_style_init_apply():
    def init_fn(key, shape):
        k1, k2 = jr.split(key)
        return (shape[0], 1), (jr.normal(k1, (shape[-1], 8)), jr.normal(k2, (8, 1)))

    def apply_fn(params, x):
        w1, w2 = params
        return jnp.maximum(x @ w1 / np.sqrt(x.shape[-1]), 0) @ w2 / np.sqrt(8)

    mc = ka.monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 16, diagonal_axes=(0,), vmap_axes=0)
    diag = mc(X1, None, "ntk")
    blocked = ka.monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 16, batch_size=2, diagonal_axes=(0,))(
        X1, None, "ntk"
    )
    full = ka.monte_carlo_kernel_fn(init_fn, apply_fn, KEY, 16)(X1, None, "ntk")
    assert diag.shape == (4,) and full.shape == (4, 4)
    np.testing.assert_allclose(diag, jnp.diagonal(full), rtol=1e-12)
    np.testing.assert_allclose(blocked, diag, rtol=1e-12)
