"""`kernelalg.batch`: blockwise and sharded kernels equal single calls, for any N."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _batching_cases import ATOL, CNN, FC, N1, B, inputs

import kernelalg as ka
from kernelalg import layers as kl


def assert_trees_close(a, b, atol=ATOL):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.mark.parametrize("device_count", [-1, 1], ids=["sharded4", "blockwise"])
@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_fc_equals_single_call(same, device_count):
    x1, x2 = inputs((5,))
    x2 = None if same else x2
    got = ka.batch(FC, B, device_count=device_count)(x1, x2)
    want = ka.kernel(FC, x1, x2)
    assert isinstance(got, ka.Kernel)
    assert got.shape1 == want.shape1 and got.shape2 == want.shape2
    assert got.x1_is_x2 == same
    assert_trees_close(got, want)


@pytest.mark.parametrize("device_count", [-1, 1], ids=["sharded4", "blockwise"])
def test_pooled_cnn_equals_single_call(device_count):
    # Full spatial covariances (AvgPool reads across positions): (n1, n2, h, h, w, w)
    # internally; symmetric fill transposes blocks with their spatial pairs.
    x1, _ = inputs((4, 4, 2))
    got = ka.batch(CNN, B, device_count=device_count)(x1)
    assert_trees_close(got, ka.kernel(CNN, x1))


@pytest.mark.slow
def test_cnn_spatial_output_transposes_zipped_axes():
    # A kernel that keeps its spatial axes: nngp[i, j, h1, h2, w1, w2]. The lower
    # triangle of blocks is the upper one with (i, j) and each (h1, h2) swapped.
    net = kl.Serial(kl.Conv(4, (2, 2), padding="SAME"), kl.Relu(), kl.AvgPool((2, 2), padding="SAME"))
    x1 = jax.random.normal(jax.random.key(3), (N1, 3, 2, 1))
    got = ka.batch(net, B)(x1, compute_ntk=False)
    want = ka.kernel(net, x1, compute_ntk=False)
    assert got.nngp.shape == (N1, N1, 3, 3, 2, 2)
    assert_trees_close(got, want)


@pytest.mark.parametrize(
    "trace_axes", [pytest.param((-1,), marks=pytest.mark.slow), ()], ids=["traced", "zipped"]
)
def test_empirical_equals_single_call(trace_axes):
    model = kl.Serial(kl.Dense(6), kl.Relu(), kl.Dense(2)).init(jax.random.key(1), (5,))
    kernel_fn = ka.empirical_kernel_fn(model, trace_axes=trace_axes)
    x1, x2 = inputs((5,))
    for second in (None, x2):
        got = ka.batch(kernel_fn, B)(x1, second, ("nngp", "ntk"))
        assert isinstance(got, ka.EmpiricalKernel)
        assert_trees_close(got, kernel_fn(x1, second, ("nngp", "ntk")))


@pytest.mark.slow
def test_empirical_nt_style_params_are_forwarded():
    def f(params, x):
        return jnp.tanh(x @ params["w"]) @ params["v"]

    params = {"w": jax.random.normal(jax.random.key(2), (5, 4)), "v": jnp.ones((4, 2))}
    kernel_fn = ka.empirical_kernel_fn(f, vmap_axes=0)
    x1, x2 = inputs((5,))
    got = ka.batch(kernel_fn, B)(x1, x2, "ntk", params)
    np.testing.assert_allclose(got, kernel_fn(x1, x2, "ntk", params), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_monte_carlo_equals_single_call():
    fn = ka.monte_carlo_kernel_fn(FC, key=jax.random.key(4), n_samples=3, samples_per_step=3)
    x1, _ = inputs((5,))
    got = ka.batch(fn, B)(x1, None, "nngp")
    np.testing.assert_allclose(np.asarray(got), np.asarray(fn(x1, None, "nngp")), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_full_batch_covariance_with_itself():
    x1, _ = inputs((5,))
    got = ka.batch(FC, B)(x1, diagonal_batch=False)
    want = ka.kernel(FC, x1, diagonal_batch=False)
    assert got.cov1.shape == (N1, N1)
    assert_trees_close(got, want)


@pytest.mark.slow
def test_batch_axis_channel_axis_and_masks():
    x1, x2 = inputs((5,))
    x1 = x1.at[2, 1:].set(7.0)  # padding marked by mask_constant
    want = ka.kernel(FC, x1.T, x2.T, batch_axis=1, channel_axis=0, mask_constant=7.0)
    got = ka.batch(FC, B)(x1.T, x2.T, batch_axis=1, channel_axis=0, mask_constant=7.0)
    assert_trees_close(got, want)


def test_whole_and_oversized_batches_are_one_block():
    x1, x2 = inputs((5,))
    want = ka.kernel(FC, x1, x2)
    for size in (0, 100):
        assert_trees_close(ka.batch(FC, size)(x1, x2), want)


def test_store_on_host():
    x1, x2 = inputs((5,))
    got = ka.batch(FC, B, store_on_device=False)(x1, x2)
    assert got.nngp.devices() == {jax.devices("cpu")[0]}
    assert_trees_close(got, ka.kernel(FC, x1, x2))


def test_batched_is_a_module():
    batched = ka.batch(FC, B)
    assert isinstance(batched, ka.BatchedKernel) and isinstance(batched, eqx.Module)
    assert isinstance(ka.batch(ka.empirical_ntk_fn(FC.init(jax.random.key(0), (5,))), B), ka.BatchedKernelFn)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=-1), "`batch_size` must be an int >= 0"),
        (dict(batch_size=2, device_count=-2), "`device_count` must be an int >= -1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ka.batch(FC, **kwargs)


def test_bad_calls():
    x1, x2 = inputs((5,))
    with pytest.raises(ValueError, match="`batch\\(device_count=99\\)` but there are 4 local devices"):
        ka.batch(FC, 2, device_count=99)(x1)
    with pytest.raises(ValueError, match="`diagonal_batch=False` needs `x2=None`"):
        ka.batch(FC, 2)(x1, x2, diagonal_batch=False)
    with pytest.raises(TypeError, match="`x1` is traced"):
        jax.jit(lambda x: ka.batch(FC, 2)(x).nngp)(x1)
    with pytest.raises(ValueError, match="`x1` and `x2` must agree on every axis"):
        ka.batch(FC, 2)(x1, x2[:, :3])
    with pytest.raises(ValueError, match="trace_axes"):
        fn = ka.empirical_ntk_fn(FC.init(jax.random.key(0), (5,)), diagonal_axes=(0,))
        ka.batch(fn, 2)(x1, x1)
