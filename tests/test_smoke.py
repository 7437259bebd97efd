import jax.numpy as jnp
import jax.random as jr
import numpy as np

import kernelalg as ka
from kernelalg import layers as kl


def test_readme_network_runs_and_is_symmetric():
    x = jr.normal(jr.key(0), (5, 3))
    net = kl.Serial(kl.Dense(8, W_std=1.5, b_std=0.05), kl.Relu(), kl.Dense(1, W_std=1.5, b_std=0.05))
    k = ka.kernel(net, x)
    np.testing.assert_allclose(k.nngp, k.nngp.T, rtol=1e-12)
    np.testing.assert_allclose(jnp.diag(k.nngp), k.cov1, rtol=1e-12)
    assert k.ntk is not None and k.ntk.shape == (5, 5)
