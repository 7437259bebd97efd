"""Bad input to the empirical-kernel, linearisation and Monte Carlo functions: each is
a clear error naming the argument and the fix, raised before anything is computed
(or, for a function that mixes examples despite `vmap_axes`, when it runs)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import kernelalg as ka
from kernelalg import layers as kl


KEY = jr.key(0, impl="rbg")
X1 = jr.normal(jr.key(1, impl="rbg"), (4, 3))
X2 = jr.normal(jr.key(2, impl="rbg"), (2, 3))
NET = kl.Serial(kl.Dense(4, 1.0, 0.1), kl.Relu(), kl.Dense(2))
MODEL = NET.init(KEY, (3,))
W = jr.normal(jr.key(3, impl="rbg"), (3, 2))


class IntegerModel(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return x * jnp.sum(self.weight).astype(x.dtype)


def linear(params, x):
    return x @ params


def mixes_examples(params, x):
    return (x - jnp.mean(x, axis=0, keepdims=True)) @ params


def transposed(params, x):
    return (x @ params).T  # the batch is axis 1 of the output


CASES = {
    "integer leaves only (model)": (
        lambda: ka.empirical_ntk_fn(IntegerModel(jnp.arange(3)))(X1),
        ValueError,
        "no floating-point arrays",
    ),
    "integer leaves only (params)": (
        lambda: ka.empirical_ntk_fn(linear)(X1, X2, jnp.ones((3, 2), int)),
        ValueError,
        "no floating-point arrays",
    ),
    "integer leaves only (linearize)": (
        lambda: ka.linearize(IntegerModel(jnp.arange(3))),
        ValueError,
        "cast integer weights to float",
    ),
    "trace axes of different sizes": (
        lambda: ka.empirical_ntk_fn(MODEL, trace_axes=(0,))(X1, X2),
        ValueError,
        r"`trace_axes` pairs output axis 0 .* \(size 4\) .* \(size 2\)",
    ),
    "diagonal axes of different sizes": (
        lambda: ka.empirical_kernel_fn(MODEL, diagonal_axes=(0,))(X1, X2, "nngp"),
        ValueError,
        "`diagonal_axes` pairs output axis 0",
    ),
    "trace axis out of range": (
        lambda: ka.empirical_ntk_fn(MODEL, trace_axes=(2,))(X1, X2),
        ValueError,
        "axis 2 is out of range for outputs with 2 axes",
    ),
    "axis both traced and diagonal": (
        lambda: ka.empirical_ntk_fn(MODEL, trace_axes=(-1,), diagonal_axes=(1,))(X1),
        ValueError,
        "in both `trace_axes",
    ),
    "duplicate trace axes": (lambda: ka.empirical_ntk_fn(MODEL, trace_axes=(1, 1)), ValueError, "twice"),
    "vmap_axes with a function that mixes examples": (
        lambda: jax.block_until_ready(ka.empirical_ntk_fn(mixes_examples, vmap_axes=0)(X1, X2, W)),
        Exception,  # raised at run time by `eqx.error_if`
        "mixes examples",
    ),
    "vmap_axes naming an axis that is not the batch": (
        lambda: ka.empirical_ntk_fn(transposed, trace_axes=(), vmap_axes=0)(X1, X2, W),
        ValueError,
        "along axis 0, but that axis of an output of shape \\(2, 4\\) has size 2",
    ),
    "vmap_axes for a model": (
        lambda: ka.empirical_ntk_fn(MODEL, vmap_axes=1)(X1),
        ValueError,
        "acts on one example at a time",
    ),
    "vmap_axes with keyword axes": (
        lambda: ka.empirical_ntk_fn(linear, vmap_axes=(0, 0, {"pattern": 0}))(X1, X2, W),
        ValueError,
        "kwargs_axes",
    ),
    "function without params": (
        lambda: ka.empirical_ntk_fn(linear)(X1, X2),
        TypeError,
        "`params` is required",
    ),
    "unknown implementation": (
        lambda: ka.empirical_ntk_fn(MODEL, implementation=7),
        ValueError,
        "STRUCTURED_DERIVATIVES",
    ),
    "unknown get": (
        lambda: ka.empirical_kernel_fn(MODEL)(X1, X2, "cov"),
        ValueError,
        '`get` must name "nngp"',
    ),
    "cotangents of the wrong shape": (
        lambda: ka.empirical_ntk_vp_fn(MODEL, X1, X2)(jnp.ones((4, 2))),
        ValueError,
        "shapes of `f\\(x2\\)`",
    ),
    "taylor_expand(model, degree) positionally": (
        lambda: ka.taylor_expand(MODEL, 3),
        TypeError,
        "degree=3",
    ),
    "taylor_expand without degree": (lambda: ka.taylor_expand(MODEL), TypeError, "needs `degree"),
    "negative degree": (lambda: ka.taylor_expand(MODEL, degree=-1), ValueError, "int >= 0"),
    "linearize a function without params": (lambda: ka.linearize(linear), TypeError, "`params` is required"),
    "monte carlo without key": (
        lambda: ka.monte_carlo_kernel_fn(NET, n_samples=2),
        TypeError,
        "needs `key",
    ),
    "monte carlo with zero samples": (
        lambda: ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=0),
        ValueError,
        "positive",
    ),
    "monte carlo with decreasing counts": (
        lambda: ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=[4, 2]),
        ValueError,
        "strictly increasing",
    ),
    "monte carlo layer with apply_fn": (
        lambda: ka.monte_carlo_kernel_fn(NET, linear, KEY, 2),
        ValueError,
        "leave `apply_fn` as None",
    ),
    "monte carlo blocks that do not divide the batch": (
        lambda: ka.monte_carlo_kernel_fn(NET, key=KEY, n_samples=2, batch_size=3)(X1, X2),
        ValueError,
        "must divide the batch sizes",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_error(case):
    run, kind, match = CASES[case]
    with pytest.raises(kind, match=match):
        run()
