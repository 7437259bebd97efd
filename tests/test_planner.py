"""The memory planner against XLA's memory analysis of compiled block programs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl
from kernelalg._batching._blocks import LayerBlocks


FC = kl.Serial(kl.Dense(64, W_std=1.5), kl.Relu(), kl.Dense(64), kl.Relu(), kl.Dense(1))
# The hard case: pooling keeps the full spatial covariance, (HW)^2 entries per pair.
CNN = kl.Serial(
    kl.Conv(8, (3, 3), padding="SAME"),
    kl.Relu(),
    kl.AvgPool((2, 2)),
    kl.Conv(8, (3, 3), padding="SAME"),
    kl.Relu(),
    kl.GlobalAvgPool(),
    kl.Dense(1),
)


def measured_peak(layer, in_shape, b: int) -> int:
    """Arguments + outputs + temporaries of the compiled block program (XLA's buffer
    assignment: the memory the program needs on the device)."""
    params, static = eqx.partition(LayerBlocks(layer, True, True, False, None), eqx.is_array)
    x = jax.ShapeDtypeStruct((b,) + in_shape, jnp.float64)
    f = jax.jit(lambda p, a, c: eqx.combine(p, static)(a, c))
    m = f.lower(params, x, x).compile().memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


@pytest.mark.parametrize(
    "layer, in_shape, b",
    [(FC, (16,), 32), (CNN, (6, 6, 2), 8)],
    ids=["fc-32", "pooled-cnn-8"],
)
def test_estimate_bounds_measured_peak(layer, in_shape, b):
    measured = measured_peak(layer, in_shape, b)
    estimate = ka.estimate_block_memory(layer, in_shape, b, dtype=jnp.float64)
    assert measured <= estimate <= 2 * measured, (measured, estimate)


def test_pooled_cnn_cost_is_spatial_squared():
    from kernelalg._batching._planner import layer_cost

    pair, row = layer_cost(CNN, (6, 6, 2))
    # nngp[i, j, h1, h2, w1, w2] has 36^2 entries per pair; the largest array is the
    # first convolution's input with one axis pair padded for SAME: (6 + 2)^2 * 6^2.
    assert pair == 8**2 * 6**2
    assert layer_cost(FC, (16,))[0] == 1


def test_plan_is_the_largest_fitting_block():
    budget = 2 * 2**20
    b = ka.plan_block_size(CNN, (6, 6, 2), memory_budget=budget, dtype=np.float64)
    assert ka.estimate_block_memory(CNN, (6, 6, 2), b, dtype=np.float64) <= budget
    assert ka.estimate_block_memory(CNN, (6, 6, 2), b + 1, dtype=np.float64) > budget
    assert ka.plan_block_size(CNN, (6, 6, 2), memory_budget=budget, dtype=np.float64, n=3) == 3
    # float32 halves the bytes: about sqrt(2) times the block size.
    assert ka.plan_block_size(CNN, (6, 6, 2), memory_budget=budget, dtype=np.float32) > b


def test_budget_too_small():
    with pytest.raises(ValueError, match=r"`memory_budget=5000` bytes is too small: .*2304 kernel entries"):
        ka.plan_block_size(CNN, (6, 6, 2), memory_budget=5000, dtype=np.float64)
    with pytest.raises(ValueError, match="`memory_budget` must be a positive number"):
        ka.plan_block_size(CNN, (6, 6, 2), memory_budget=0)


def test_compute_with_a_budget():
    # tests/test_batching.py's network and shapes: its compiled blocks serve here.
    fc = kl.Serial(kl.Dense(16, W_std=1.5, b_std=0.1), kl.Relu(), kl.Dense(1, W_std=1.2, b_std=0.05))
    x = np.asarray(jax.random.normal(jax.random.key(0), (7, 5)))
    budget = ka.estimate_block_memory(fc, (5,), 3, dtype=np.float64)
    result = ka.compute(fc, x, memory_budget=budget, progress=False)
    assert result.block_size == 3
    np.testing.assert_allclose(result["nngp"], ka.kernel(fc, x).nngp, rtol=0, atol=1e-12)
