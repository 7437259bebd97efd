"""Every layer against Monte Carlo over its finite twin.

`kernelalg.testing.assert_monte_carlo_agreement` samples finite networks from
`layer.init` and compares their average empirical NNGP and NTK with
`kernelalg.kernel`, to within a tolerance derived from the samples' standard error
(and, for networks with two or more nonlinear layers, the O(1/width) finite-width
bias). Each layer is tested inside a network that makes its kernel observable: a
nonlinearity between a `Dense` that makes its input Gaussian and a `Dense` readout.

Networks with a single nonlinear layer have no finite-width bias (see the helper's
docstring), so small widths and many networks are the cheapest way to a small
standard error. Seeds are fixed. The default set takes about a second per layer and
resolves errors of about 10% in any term of a kernel (a 2 for a pi, a missing 1/2, a
dropped bias: every such mutation of the duals, Dense and the fan-in layers was
caught); the `slow` set (KERNELALG_SLOW=1) has 8x the networks (about 3%), deeper
networks and wider layers.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from jax.scipy.special import erf

from kernelalg import layers as kl
from kernelalg.testing import assert_monte_carlo_agreement


WIDTH = 64
N_SAMPLES = 256


def _inputs(seed: int, n: int, shape: tuple[int, ...] = (6,)) -> jax.Array:
    return jr.normal(jr.key(seed, impl="rbg"), (n,) + shape, jnp.float64)


X1 = _inputs(1, 4)
X2 = _inputs(2, 3)


def _check(layer, x1=X1, x2=X2, *, n_samples=N_SAMPLES, seed=0, **kwargs):
    # 'rbg' keys: threefry is slow to compile on CPU and would dominate the runtime.
    report = assert_monte_carlo_agreement(
        layer, x1, x2, key=jr.key(seed, impl="rbg"), n_samples=n_samples, **kwargs
    )
    ntk_z = "-" if report.ntk_z is None else f"{report.ntk_z:.2f}"
    print(f"max z: nngp {report.nngp_z:.2f}, ntk {ntk_z}, cov {report.cov_z:.2f}")
    return report


def _mlp(act: kl.AbstractLayer, width: int = WIDTH) -> kl.Serial:
    return kl.Serial(kl.Dense(width, 1.3, 0.2), act, kl.Dense(width, 1.1, 0.1))


def _erf_nngp(c, v1, v2):
    # Williams (1997), written independently of kernelalg.ops.erf_dual (arcsin form).
    return 2 / math.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * v1) * (1 + 2 * v2)))


ELEMENTWISE = {
    "Relu": kl.Relu(),
    "ABRelu": kl.ABRelu(-0.4, 1.2),
    "LeakyRelu": kl.LeakyRelu(0.1),
    "Abs": kl.Abs(),
    "Sign": kl.Sign(),
    "Erf": kl.Erf(1.2, 0.8, 0.3),
    "Sigmoid_like": kl.Sigmoid_like(),
    "Gelu": kl.Gelu(),
    "Sin": kl.Sin(1.1, 0.9, 0.4),
    "Cos": kl.Cos(0.9, 1.2, -0.3),
    "Rbf": kl.Rbf(0.5),
    "Gabor": kl.Gabor(),
    "Exp": kl.Exp(0.8, 0.4),
    "Gaussian": kl.Gaussian(1.2, -0.4),
    "Polynomial": kl.Polynomial((0.1, -0.5, 0.3, 0.2)),
    "Monomial": kl.Monomial(3),
    **{f"RectifiedMonomial{n}": kl.RectifiedMonomial(n) for n in range(4)},
    "Tanh": kl.Tanh(),
    "Softplus": kl.Softplus(),
    "Silu": kl.Silu(),
    "Elu": kl.Elu(0.7),
    "Selu": kl.Selu(),
    "ElementwiseNumerical": kl.ElementwiseNumerical(lambda x: jnp.tanh(2 * x) + 0.1 * x, deg=48),
    "Elementwise": kl.Elementwise(fn=erf, nngp_fn=_erf_nngp),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise(name):
    _check(_mlp(ELEMENTWISE[name]))


def test_elementwise_same_inputs():
    # x2=None: the symmetric kernel of x1 with itself, diagonal included.
    _check(_mlp(kl.Relu()), X1, None)


def _unit_variance(x):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True))


@pytest.mark.parametrize(
    "degree", [2, pytest.param(1, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)]
)
def test_hermite_on_unit_variance(degree):
    # Hermite's kernel assumes unit-variance pre-activations: inputs of norm sqrt(d)
    # through Dense(W_std=1, no bias) give exactly that.
    net = kl.Serial(kl.Dense(WIDTH, 1.0), kl.Hermite(degree), kl.Dense(WIDTH, 1.1, 0.1))
    _check(net, _unit_variance(X1), _unit_variance(X2))


def test_exp_normalized_has_no_finite_twin():
    with pytest.raises(ValueError, match="no finite"):
        kl.ExpNormalized().init(jr.key(0), (6,))


def test_dense_ntk_parameterization():
    # The NNGP of one Dense layer is random (one product per output unit); its NTK is
    # the same for every network, so only round-off is allowed there.
    _check(kl.Dense(WIDTH, 1.5, 0.3))


def test_dense_no_bias():
    _check(kl.Serial(kl.Dense(WIDTH, 1.4), kl.Erf(), kl.Dense(WIDTH, 0.8)))


def test_dense_standard_parameterization():
    net = kl.Serial(
        kl.Dense(WIDTH, 1.2, 0.3, parameterization="standard"),
        kl.Relu(),
        kl.Dense(WIDTH, 0.9, 0.2, parameterization="standard"),
    )
    _check(net)


def test_dense_standard_parameterization_s():
    # s = (s_in, s_out): the first layer has 2 * WIDTH/2 outputs, the second divides
    # its fan-in by 2.
    net = kl.Serial(
        kl.Dense(WIDTH // 2, 1.2, 0.3, parameterization="standard", s=(1, 2)),
        kl.Erf(),
        kl.Dense(WIDTH, 0.9, None, parameterization="standard", s=(2, 1)),
    )
    _check(net)


def test_identity_alone():
    # No parameters: the NNGP is that of the inputs for every network, the NTK is 0.
    _check(kl.Identity())


def test_identity_in_network():
    _check(kl.Serial(kl.Dense(WIDTH, 1.2, 0.1), kl.Identity(), kl.Relu(), kl.Dense(WIDTH, 1.0, 0.2)))


def test_serial_nested():
    net = kl.Serial(kl.Serial(kl.Dense(WIDTH, 1.2, 0.1), kl.Gelu()), kl.Serial(kl.Dense(WIDTH, 0.8, 0.3)))
    _check(net)


def test_fan_in_sum_residual():
    block = kl.FanInSum(kl.Identity(), kl.Serial(kl.Relu(), kl.Dense(WIDTH, 1.1, 0.2)))
    _check(kl.Serial(kl.Dense(WIDTH, 1.2, 0.1), block, kl.Dense(WIDTH, 0.9, 0.1)))


def test_fan_in_sum_branches():
    net = kl.FanInSum(_mlp(kl.Relu()), kl.Dense(WIDTH, 0.7, 0.2))
    _check(net)


def test_fan_in_prod():
    branches = (
        kl.Serial(kl.Dense(WIDTH, 1.1, 0.2), kl.Erf()),
        kl.Serial(kl.Dense(WIDTH, 0.9, 0.1), kl.Relu()),
    )
    _check(kl.Serial(kl.FanInProd(*branches), kl.Dense(WIDTH, 1.2, 0.1)))


def test_fan_in_concat_channels():
    # Unequal widths: the kernel is the width-weighted mean of the branches'.
    branches = (
        kl.Serial(kl.Dense(WIDTH, 1.1, 0.2), kl.Relu()),
        kl.Serial(kl.Dense(WIDTH // 2, 0.9), kl.Erf()),
    )
    _check(kl.Serial(kl.FanInConcat(*branches), kl.Dense(WIDTH, 1.2, 0.1)))


def test_fan_in_concat_spatial():
    # Concatenating positions: the output covariance is block diagonal in space.
    x1, x2 = _inputs(3, 3, (2, 4)), _inputs(4, 2, (2, 4))
    cat = kl.FanInConcat(kl.Dense(WIDTH, 1.2, 0.1), _mlp(kl.Erf()), axis=1)
    _check(cat, x1, x2)


def test_spatial_outputs():
    # Dense acts on the channel axis of every position: the NNGP and NTK of every
    # position pair, in kernelalg's zipped order.
    x1, x2 = _inputs(5, 3, (3, 4)), _inputs(6, 2, (3, 4))
    _check(_mlp(kl.Relu()), x1, x2)


def test_flatten():
    x1, x2 = _inputs(7, 3, (3, 4)), _inputs(8, 2, (3, 4))
    net = kl.Serial(kl.Dense(WIDTH, 1.2, 0.2), kl.Relu(), kl.Flatten(), kl.Dense(WIDTH, 1.0, 0.1))
    _check(net, x1, x2)


def test_repeat():
    # Two nonlinear layers: the finite-width bias is O(1/width) (see the helper).
    net = kl.Serial(kl.Repeat(kl.Serial(kl.Dense(WIDTH, 1.3, 0.1), kl.Relu()), 2), kl.Dense(WIDTH, 1.0, 0.1))
    _check(net, width=WIDTH, bias_coef=1.0)  # L - 1 = 1


# --- slow: 8x the networks (about 3x tighter), and deep or wide networks --------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_many_samples(name):
    _check(_mlp(ELEMENTWISE[name]), n_samples=8 * N_SAMPLES, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "layer", [kl.Monomial(0), kl.Monomial(1), kl.Monomial(2), kl.Erf(0.7, 1.3, -0.2), kl.Sigmoid_like()]
)
def test_elementwise_more(layer):
    _check(_mlp(layer), X1, None, n_samples=8 * N_SAMPLES, seed=5)


@pytest.mark.slow
def test_hermite_degree_zero():
    net = kl.Serial(kl.Dense(WIDTH, 1.0), kl.Hermite(0), kl.Dense(WIDTH, 1.1, 0.1))
    _check(net, _unit_variance(X1), _unit_variance(X2), n_samples=8 * N_SAMPLES)


@pytest.mark.slow
def test_deep_mixed():
    width = 512
    net = kl.Serial(
        kl.Dense(width, 1.4, 0.1),
        kl.Relu(),
        kl.Dense(width, 1.2, 0.2, parameterization="standard"),
        kl.Erf(),
        kl.Dense(width, 1.1, 0.1),
        kl.Gelu(),
        kl.Dense(64, 1.0, 0.1),
    )
    _check(net, n_samples=128, width=width, bias_coef=2.0, seed=2)  # L - 1 = 2


@pytest.mark.slow
def test_repeat_deep():
    width = 512
    net = kl.Serial(kl.Repeat(kl.Serial(kl.Dense(width, 1.4, 0.1), kl.Relu()), 4), kl.Dense(64, 1.0, 0.1))
    _check(net, n_samples=128, width=width, bias_coef=3.0, seed=3)  # L - 1 = 3


@pytest.mark.slow
def test_resnet():
    width = 256

    def block():
        return kl.FanInSum(
            kl.Identity(),
            kl.Serial(kl.Relu(), kl.Dense(width, 1.0, 0.1), kl.Relu(), kl.Dense(width, 0.7, 0.1)),
        )

    net = kl.Serial(kl.Dense(width, 1.0, 0.1), block(), block(), kl.Dense(64, 1.0, 0.1))
    _check(net, n_samples=256, width=width, bias_coef=3.0, seed=4)  # L - 1 = 3
