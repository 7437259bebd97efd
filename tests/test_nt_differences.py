"""Where kernelalg deliberately differs from neural-tangents 0.6.5, and why we are right."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np

import kernelalg as ka
from kernelalg import layers as kl


def test_sign_full_batch_cov1_is_the_kernel_of_x1_with_itself():
    # NT sets every off-diagonal entry of a full-batch cov1 to 1 after Sign
    # (conformance case fc_004); the covariance of sign(u_i) and sign(u_j) is
    # 1 - 2 theta_ij / pi, as nngp(x1, x1) says. Checked here against the nngp and
    # against a Monte Carlo average over 2e5 hidden units.
    x = jr.normal(jr.key(0), (4, 3))
    net = kl.Serial(kl.Dense(8, W_std=0.6, b_std=0.5), kl.Sign())
    k = ka.kernel(net, x, diagonal_batch=False, compute_ntk=False)
    np.testing.assert_allclose(k.cov1, k.nngp, rtol=1e-12)
    assert float(jnp.min(k.cov1)) < 0.9  # the off-diagonal is not 1
    n = 200_000
    w = np.asarray(jr.normal(jr.key(1), (3, n)))
    b = np.asarray(jr.normal(jr.key(2), (n,)))
    z = 0.6 * np.asarray(x) @ w / math.sqrt(3) + 0.5 * b
    s = np.sign(z)
    mc = s @ s.T / n
    # Entries of mc are means of n bounded (+-1) variables: standard error <= 1/sqrt(n).
    np.testing.assert_allclose(mc, k.cov1, atol=5 / math.sqrt(n))


def test_rectified_monomial_variances_are_finite_and_exact():
    # NT returns NaN variances for every degree; E[max(u, 0)^(2n)] = (2n-1)!! v^n / 2.
    x = jr.normal(jr.key(3), (3, 5))
    for degree in range(4):
        k = ka.kernel(kl.Serial(kl.Dense(4, W_std=1.3), kl.RectifiedMonomial(degree)), x)
        v = 1.3**2 * jnp.sum(x * x, axis=1) / 5
        double_factorial = math.prod(range(2 * degree - 1, 0, -2))
        np.testing.assert_allclose(k.cov1, double_factorial * v**degree / 2, rtol=1e-12)
        np.testing.assert_allclose(jnp.diag(k.nngp), k.cov1, rtol=1e-12)
