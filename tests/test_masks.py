"""Variable-length inputs: positions equal to `mask_constant` are absent."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl


MC = -999.0


def _net():
    # Filter size 1: no position sees a neighbour, so padding and truncation agree.
    return kl.Serial(
        kl.Conv(8, (1,), W_std=1.3, b_std=0.2),
        kl.Erf(),
        kl.Conv(8, (1,), W_std=1.1, b_std=0.1),
        kl.Relu(),
        kl.GlobalAvgPool(),
        kl.Dense(1, W_std=1.2, b_std=0.1),
    )


@pytest.mark.parametrize("length", [2, 3, 5])
def test_masked_sequence_equals_truncated_sequence(length):
    x = jr.normal(jr.key(0), (2, 5, 3))
    padded = x.at[:, length:].set(MC)
    k_masked = ka.kernel(_net(), padded, mask_constant=MC)
    k_short = ka.kernel(_net(), x[:, :length])
    np.testing.assert_allclose(k_masked.nngp, k_short.nngp, rtol=1e-12)
    np.testing.assert_allclose(k_masked.ntk, k_short.ntk, rtol=1e-12)
    np.testing.assert_allclose(k_masked.cov1, k_short.cov1, rtol=1e-12)


def test_values_at_masked_positions_do_not_matter():
    x = jr.normal(jr.key(1), (3, 6, 2))
    a = x.at[0, 4:].set(MC)
    b = a.at[1, 5].set(MC)
    net = kl.Serial(
        kl.Conv(4, (3,), padding="SAME", W_std=1.2, b_std=0.1), kl.Relu(), kl.GlobalAvgPool(), kl.Dense(1)
    )
    ka_ = ka.kernel(net, a, mask_constant=MC)
    kb = ka.kernel(net, b, mask_constant=MC)
    # Example 2 has no masked position in either input: its variance is unchanged.
    np.testing.assert_allclose(ka_.cov1[2], kb.cov1[2], rtol=1e-12)
    assert bool(jnp.all(jnp.isfinite(kb.nngp)))


def test_fully_masked_example_gives_zero_not_nan():
    x = jr.normal(jr.key(2), (2, 4, 3)).at[1].set(MC)
    k = ka.kernel(_net(), x, mask_constant=MC)
    assert bool(jnp.all(jnp.isfinite(k.nngp)))
    # An example with every position masked is absent altogether (as in NT): its row
    # and column are 0, the other example is unaffected.
    np.testing.assert_allclose(k.nngp[1], 0.0, atol=0)
    k0 = ka.kernel(_net(), x[:1])
    np.testing.assert_allclose(k.nngp[0, 0], k0.nngp[0, 0], rtol=1e-12)


def test_nan_as_mask_constant():
    x = jr.normal(jr.key(3), (2, 5, 3))
    a = ka.kernel(_net(), x.at[:, 3:].set(jnp.nan), mask_constant=float("nan"))
    b = ka.kernel(_net(), x[:, :3])
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-12)


def test_mask_constant_of_wrong_type():
    with pytest.raises(TypeError, match="mask_constant"):
        ka.kernel(_net(), jnp.ones((2, 3, 1)), mask_constant="pad")
