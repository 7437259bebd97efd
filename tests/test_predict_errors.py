"""Bad input to kernelalg.predict gets a clear error naming the argument and the fix."""

import collections

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl, predict as kp


_a = np.asarray(jr.normal(jr.key(20), (13, 12)))
_k = _a @ _a.T / 12
K, KT, KTT = _k[:8, :8], _k[8:, :8], _k[8:, 8:]
Y = np.asarray(jr.normal(jr.key(21), (8, 2)))
G0 = np.zeros((5, 2))
Pair = collections.namedtuple("Pair", "nngp ntk")
NO_NTK = ka.kernel(kl.Dense(1), jr.normal(jr.key(22), (8, 10)), compute_ntk=False)
NET = kl.Serial(kl.Dense(4, W_std=1.3, b_std=0.2), kl.Relu(), kl.Dense(1))


def _with(k, i, j, value):
    k = k.copy()
    k[i, j] = value
    return k


def _duplicates():
    k = K.copy()
    k[7], k[:, 7] = k[0], k[:, 0]
    k[7, 7] = k[0, 0]
    return k


# Wrong types are caught by the library's own checks, or first by the jaxtyping/beartype
# checker when it is on (as in this test suite): either message names the argument.
TYPE = "`{0}` must be|parameter '{0}'"


def mse(fx, y):
    return 0.5 * jnp.mean((fx - y) ** 2)


def gp():
    return kp.gp_inference(K, Y)


def ode():
    return kp.gradient_descent(mse, K, Y)


CASES = {
    # Shapes of kernels against targets.
    "train kernel vs targets (gp)": (
        lambda: kp.gp_inference(K, Y[:6]),
        ValueError,
        r"`k_train_train` has shape \(8, 8\)",
    ),
    "train kernel vs targets (mse)": (
        lambda: kp.gradient_descent_mse(K, Y[:6]),
        ValueError,
        "`k_train_train` has shape",
    ),
    "train kernel vs targets (ode)": (
        lambda: kp.gradient_descent(mse, K, Y[:6]),
        ValueError,
        "`k_train_train` has shape",
    ),
    "train kernel vs targets (mll)": (
        lambda: kp.marginal_log_likelihood(K, Y[:6]),
        ValueError,
        "`k_train_train` has shape",
    ),
    "test kernel vs train": (
        lambda: gp()(get="nngp", k_test_train=KT[:, :6]),
        ValueError,
        "`k_test_train` has shape",
    ),
    "test-test kernel vs test": (
        lambda: gp()(get="nngp", k_test_train=KT, k_test_test=K),
        ValueError,
        "`k_test_test` has shape",
    ),
    "initial outputs shape": (
        lambda: kp.gradient_descent_mse(K, Y)(1.0, np.zeros((8, 3))),
        ValueError,
        "`fx_train_0` has shape",
    ),
    "max_learning_rate of a test kernel": (
        lambda: kp.max_learning_rate(KT),
        ValueError,
        "train-train kernel",
    ),
    # Regularisation.
    "negative diag_reg (gp)": (
        lambda: kp.gp_inference(K, Y, diag_reg=-1e-3),
        ValueError,
        "`diag_reg` must be non-negative",
    ),
    "negative diag_reg (mse)": (
        lambda: kp.gradient_descent_mse(K, Y, diag_reg=-1.0),
        ValueError,
        "`diag_reg`",
    ),
    "negative diag_reg (ensemble)": (
        lambda: kp.gradient_descent_mse_ensemble(NET, np.ones((8, 3)), Y, diag_reg=-1.0),
        ValueError,
        "`diag_reg`",
    ),
    "negative diag_reg (mll)": (
        lambda: kp.marginal_log_likelihood(K, Y, diag_reg=-1.0),
        ValueError,
        "`diag_reg`",
    ),
    "negative learning_rate": (
        lambda: kp.gradient_descent_mse(K, Y, learning_rate=-1.0),
        ValueError,
        "`learning_rate`",
    ),
    # Times of the ODE.
    "non-increasing times": (
        lambda: ode()(np.array([0.0, 2.0, 1.0]), Y),
        ValueError,
        "`t` must be finite, non-negative and non-decreasing.*got \\[0.0, 2.0, 1.0\\]",
    ),
    "negative time": (lambda: ode()(-1.0, Y), ValueError, "non-negative"),
    "no times": (lambda: ode()(np.zeros((0,)), Y), ValueError, "at least one time"),
    "times of the wrong type": (lambda: ode()("1.0", Y), TypeError, TYPE.format("t")),
    # A kernel without the NTK when NTK predictions are asked for.
    "no NTK in gp_inference": (
        lambda: kp.gp_inference(NO_NTK, Y)(get="ntk", k_test_train=NO_NTK),
        ValueError,
        r"`k_train_train.ntk` was missing.*compute_ntk=True",
    ),
    "no NTK in the test kernel": (
        lambda: kp.gp_inference(Pair(K, K), Y)(get="ntk", k_test_train=Pair(KT, None)),
        ValueError,
        r"`k_test_train.ntk` is missing .*compute_ntk=True",
    ),
    "no NTK for gradient descent": (
        lambda: kp.gradient_descent_mse(NO_NTK, Y),
        ValueError,
        r"`k_train_train.ntk` is missing",
    ),
    "no NTK for max_learning_rate": (lambda: kp.max_learning_rate(Pair(K, None)), ValueError, "ntk"),
    "ensemble without NTK": (
        lambda: kp.gradient_descent_mse_ensemble(NET, np.eye(8, 3), Y, compute_ntk=False)(get="ntk"),
        ValueError,
        "compute_ntk=False",
    ),
    # Non-finite, non-symmetric, singular kernels.
    "NaN train kernel (gp)": (
        lambda: kp.gp_inference(_with(K, 2, 3, np.nan), Y),
        ValueError,
        "`k_train_train` is not finite: 1 of",
    ),
    "inf train kernel (mse)": (
        lambda: kp.gradient_descent_mse(_with(K, 1, 1, np.inf), Y),
        ValueError,
        "is not finite",
    ),
    "NaN train kernel (ode)": (
        lambda: kp.gradient_descent(mse, _with(K, 0, 0, np.nan), Y),
        ValueError,
        "is not finite",
    ),
    "NaN test kernel": (
        lambda: gp()(get="nngp", k_test_train=_with(KT, 0, 0, np.nan)),
        ValueError,
        r"`k_test_train.nngp` is not finite",
    ),
    "NaN nngp in a pair": (
        lambda: kp.gp_inference(Pair(_with(K, 2, 3, np.nan), K), Y),
        ValueError,
        r"`k_train_train.nngp` is not finite",
    ),
    "non-symmetric train kernel": (
        lambda: kp.gp_inference(_with(K, 0, 1, 5.0), Y),
        ValueError,
        "is not symmetric",
    ),
    "singular train kernel": (
        lambda: kp.gp_inference(_duplicates(), Y),
        ValueError,
        "not positive definite.*duplicate.*float32.*auto_jitter",
    ),
    "singular kernel at t=None": (
        lambda: kp.gradient_descent_mse(_duplicates(), Y)(None, 0.0, G0, KT),
        ValueError,
        "singular to working precision",
    ),
    # Arguments that make no sense together.
    "test outputs without test kernel": (lambda: ode()(1.0, Y, G0), ValueError, "`k_test_train`"),
    "nothing to predict": (
        lambda: kp.gradient_descent_mse(K, Y)(1.0, None, None),
        ValueError,
        "Both `fx_train_0`",
    ),
    "ODEState and fx_test_0": (
        lambda: ode()(1.0, kp.ODEState(Y, G0), G0, KT),
        ValueError,
        "must be None when an `ODEState`",
    ),
    "momentum state without momentum": (
        lambda: ode()(1.0, kp.ODEState(Y, None, Y)),
        ValueError,
        "`momentum=None`",
    ),
    "trace_axes with the batch axis": (
        lambda: kp.gp_inference(K, Y, trace_axes=(0,)),
        ValueError,
        "batch axis",
    ),
    "trace_axes out of range": (lambda: kp.gp_inference(K, Y, trace_axes=(2,)), ValueError, "`trace_axes`"),
    "unknown get": (lambda: gp()(get="nngpp"), ValueError, "`get` entries must be among"),
    "repeated get": (lambda: gp()(get=("nngp", "nngp")), ValueError, "unique"),
    "ntkgp in the ensemble": (
        lambda: kp.gradient_descent_mse_ensemble(NET, np.eye(8, 3), Y)(get="ntkgp"),
        ValueError,
        "`get` entries",
    ),
    "k_test_test=True with a test kernel": (
        lambda: gp()(get="nngp", k_test_train=KT, k_test_test=True),
        TypeError,
        "`k_test_test` must be a kernel",
    ),
    "mixed precision": (
        lambda: gp()(get="nngp", k_test_train=KT.astype(np.float32)),
        TypeError,
        "share one dtype",
    ),
    "targets not an array": (
        lambda: kp.gp_inference(K, Y.tolist()),
        TypeError,
        TYPE.format("y_train"),
    ),
    "kernel of the wrong type": (lambda: kp.gp_inference("K", Y), TypeError, TYPE.format("k_train_train")),
    "loss not callable": (lambda: kp.gradient_descent(1.0, K, Y), TypeError, TYPE.format("loss")),
    "mll get": (
        lambda: kp.marginal_log_likelihood(K, Y, get="ntkgp"),
        (ValueError, TypeError),
        "`get` must be 'nngp' or 'ntk'|parameter 'get'",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_clear_error(case):
    fn, exc, pattern = CASES[case]
    with pytest.raises(exc, match=pattern):
        fn()
