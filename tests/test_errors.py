"""Bad input gets a clear, early error naming the argument and what was expected."""

import re

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl


X = np.asarray(jr.normal(jr.key(0), (4, 3)))
NET = kl.Serial(kl.Dense(8, W_std=1.2, b_std=0.1), kl.Relu(), kl.Dense(1))


def _nan_x():
    x = X.copy()
    x[1, 2] = np.nan
    return x


CASES = {
    "x1/x2 feature mismatch": (lambda: ka.kernel(NET, X, X[:, :2]), ValueError, "`x1` and `x2` must agree"),
    "x1 1-D": (lambda: ka.kernel(NET, X[0]), ValueError, "`x1` must have a batch axis"),
    "x1 empty": (lambda: ka.kernel(NET, X[:0]), ValueError, "`x1` must not be empty"),
    "x2 of other rank": (lambda: ka.kernel(NET, X, X[:, :, None]), ValueError, "same number of axes"),
    "NaN inputs": (lambda: ka.kernel(NET, _nan_x()), ValueError, "`x1` contains NaN"),
    "complex inputs": (lambda: ka.kernel(NET, X.astype(complex)), TypeError, "`x1` must hold real"),
    "not an array": (lambda: ka.kernel(NET, X.tolist()), TypeError, "`x1` must be a JAX or NumPy array"),
    "batch_axis == channel_axis": (
        lambda: ka.kernel(NET, X, batch_axis=1, channel_axis=-1),
        ValueError,
        "`batch_axis` .* and `channel_axis` .* must differ",
    ),
    "channel_axis out of range": (lambda: ka.kernel(NET, X, channel_axis=5), ValueError, "`channel_axis`"),
    "negative W_std": (
        lambda: kl.Dense(3, W_std=-1.0),
        ValueError,
        r"`Dense\(W_std=...\)` must be non-negative",
    ),
    "negative b_std": (
        lambda: kl.Dense(3, b_std=-0.1),
        ValueError,
        r"`Dense\(b_std=...\)` must be non-negative",
    ),
    "zero width": (lambda: kl.Dense(0), ValueError, r"`Dense\(out_dim=...\)` must be an int >= 1"),
    "float width": (lambda: kl.Dense(2.5), TypeError, r"`Dense\(out_dim=...\)` must be an int"),
    "unknown parameterization": (
        lambda: kl.Dense(3, parameterization="NTK2"),
        ValueError,
        r"`Dense\(parameterization=...\)` must be 'ntk' or 'standard'",
    ),
    "s with ntk parameterization": (lambda: kl.Dense(3, s=(2, 2)), ValueError, r"`Dense\(s=...\)`"),
    "W_std of wrong type": (
        lambda: kl.Dense(3, W_std="1.5"),
        TypeError,
        r"`Dense\(W_std=...\)` must be a real",
    ),
    "W_std not scalar": (lambda: kl.Dense(3, W_std=jnp.ones(2)), ValueError, "must be a scalar"),
    "W_std infinite": (lambda: kl.Dense(3, W_std=float("inf")), ValueError, "must be finite"),
    "nonlinearity on inputs": (
        lambda: ka.kernel(kl.Relu(), X),
        ValueError,
        "`Relu` was applied directly to the inputs",
    ),
    "nonlinearity after Flatten of a spatial kernel": (
        lambda: ka.kernel(kl.Serial(kl.Dense(2), kl.Flatten(), kl.Erf()), X.reshape(4, 3, 1)),
        ValueError,
        "`Erf` was applied to a non-Gaussian kernel",
    ),
    "FanInSum shapes differ": (
        lambda: ka.kernel(kl.FanInSum(kl.Dense(2), kl.Dense(3)), X),
        ValueError,
        "`FanInSum` branches must have equal output shapes",
    ),
    "FanInSum of two non-Gaussian branches": (
        lambda: ka.kernel(kl.Serial(kl.Dense(2), kl.FanInSum(kl.Relu(), kl.Erf())), X),
        ValueError,
        "more than one branch has non-Gaussian",
    ),
    "FanInConcat along batch": (
        lambda: ka.kernel(kl.FanInConcat(kl.Dense(2), kl.Dense(2), axis=0), X),
        ValueError,
        r"`FanInConcat\(axis=0\)`",
    ),
    "Monomial degree negative": (
        lambda: kl.Monomial(-1),
        ValueError,
        r"`Monomial\(degree=...\)` must be an int >= 0",
    ),
    "Monomial degree float": (
        lambda: kl.Monomial(2.0),
        TypeError,
        r"`Monomial\(degree=...\)` must be an int",
    ),
    "RectifiedMonomial degree negative": (
        lambda: kl.RectifiedMonomial(-2),
        ValueError,
        r"`RectifiedMonomial\(degree=...\)`",
    ),
    "Hermite degree negative": (
        lambda: kl.Hermite(-1),
        ValueError,
        r"`Hermite\(degree=...\)` must be an int >= 0",
    ),
    "quadrature degree < 1": (
        lambda: kl.ElementwiseNumerical(jnp.tanh, deg=0),
        ValueError,
        r"`ElementwiseNumerical\(deg=...\)` must be an int >= 1",
    ),
    "quadrature fn not callable": (
        lambda: kl.ElementwiseNumerical("tanh", deg=10),
        TypeError,
        r"`ElementwiseNumerical\(fn=...\)` must be callable",
    ),
    "Polynomial coef a string": (lambda: kl.Polynomial("1 2"), TypeError, r"`Polynomial\(coef=...\)`"),
    "Elementwise with nothing": (lambda: kl.Elementwise(), ValueError, "`Elementwise` needs `fn`"),
    "Repeat n negative": (lambda: kl.Repeat(kl.Dense(2), -1), ValueError, r"`Repeat\(n=...\)`"),
    "Serial of a non-layer": (
        lambda: kl.Serial(kl.Dense(2), jnp.tanh),
        TypeError,
        "`Serial` takes kernelalg layers",
    ),
    "layer not a layer": (lambda: ka.kernel(jnp.tanh, X), TypeError, "`layer` must be a kernelalg layer"),
    "compute_ntk not bool": (
        lambda: ka.kernel(NET, X, compute_ntk="yes"),
        TypeError,
        "`compute_ntk` must be a bool",
    ),
    "init in_shape of wrong rank": (
        lambda: kl.Dense(2).init(jr.key(0), ()),
        ValueError,
        "`Dense` needs inputs with at least 1 axes",
    ),
    "init in_shape not ints": (lambda: NET.init(jr.key(0), (3.0,)), TypeError, "must be a tuple of ints"),
    "ExpNormalized has no finite twin": (
        lambda: kl.ExpNormalized().init(jr.key(0), (3,)),
        ValueError,
        "no finite twin",
    ),
    "negative scale of a kernel": (lambda: -1.0 * ka.kernel(NET, X), ValueError, "non-negative scalar"),
}


# Cases whose message pattern does not start with the argument in backticks.
ARGUMENT = {
    "W_std not scalar": "W_std",
    "Serial of a non-layer": "layers",
    "init in_shape not ints": "in_shape",
}


def _argument(pattern: str) -> str | None:
    m = re.search(r"`(?:\w+\\\()?(\w+)", pattern)
    return m.group(1) if m else None


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_clear_error(name):
    call, exc, pattern = CASES[name]
    # Under the test suite's jaxtyping/beartype hook, a wrongly typed argument is caught
    # by its annotation before our own check; that TypeError names the parameter too.
    with pytest.raises((exc, TypeError)) as info:
        call()
    msg = str(info.value)
    if re.search(pattern, msg):
        assert isinstance(info.value, exc)
        return
    arg = ARGUMENT.get(name) or _argument(pattern)
    assert isinstance(info.value, TypeError), msg
    assert arg is not None and f"parameter '{arg}'" in msg, (pattern, msg)


def test_errors_are_raised_before_any_kernel_arithmetic(monkeypatch):
    # The structural check runs at trace time; a nonlinearity on raw inputs must fail
    # even if computing the input kernel itself would be expensive or broken.
    import kernelalg._entry as entry

    def boom(*args, **kwargs):
        raise AssertionError("kernel arithmetic ran before the structural error")

    monkeypatch.setattr(entry, "_compute", boom)
    with pytest.raises(ValueError, match="`x1` and `x2` must agree"):
        ka.kernel(NET, X, X[:, :2])
    with pytest.raises(ValueError, match="`FanInSum` branches must have equal output shapes"):
        ka.kernel(kl.FanInSum(kl.Dense(2), kl.Dense(3)), X)
