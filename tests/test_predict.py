"""kernelalg.predict against closed forms computed here, and its internal identities."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg as sl
from scipy.stats import multivariate_normal

import kernelalg as ka
from kernelalg import layers as kl, predict as kp


def net(w=1.4, b=0.2):
    return kl.Serial(kl.Dense(16, W_std=w, b_std=b), kl.Relu(), kl.Dense(1, W_std=w, b_std=b))


X_TRAIN = np.asarray(jr.normal(jr.key(0), (8, 3)))
X_TEST = np.asarray(jr.normal(jr.key(1), (5, 3)))
Y_TRAIN = np.asarray(jr.normal(jr.key(2), (8, 2)))
K_DD = ka.kernel(net(), X_TRAIN)
K_TD = ka.kernel(net(), X_TEST, X_TRAIN)
K_TT = ka.kernel(net(), X_TEST)


def arr(x):
    return np.asarray(x, dtype=np.float64)


def reg(k, diag_reg):
    return k + diag_reg * np.trace(k) / k.shape[0] * np.eye(k.shape[0])


def closed_posterior(g, diag_reg):
    nngp_dd, ntk_dd = reg(arr(K_DD.nngp), diag_reg), reg(arr(K_DD.ntk), diag_reg)
    nngp_td, ntk_td = arr(K_TD.nngp), arr(K_TD.ntk)
    nngp_tt, ntk_tt = arr(K_TT.nngp), arr(K_TT.ntk)
    if g == "nngp":
        return nngp_td @ np.linalg.solve(nngp_dd, Y_TRAIN), nngp_tt - nngp_td @ np.linalg.solve(
            nngp_dd, nngp_td.T
        )
    if g == "ntkgp":
        return ntk_td @ np.linalg.solve(ntk_dd, Y_TRAIN), ntk_tt - ntk_td @ np.linalg.solve(ntk_dd, ntk_td.T)
    a = np.linalg.solve(ntk_dd, ntk_td.T)  # Theta^-1 Theta_dx
    cross = nngp_td @ a
    cov = nngp_tt - cross - cross.T + a.T @ arr(K_DD.nngp) @ a
    return ntk_td @ np.linalg.solve(ntk_dd, Y_TRAIN), cov


# ------------------------------------------------------------------------ gp_inference
@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
def test_gp_inference_matches_closed_forms(diag_reg):
    predictor = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=diag_reg)
    res = predictor(get=("nngp", "ntk", "ntkgp"), k_test_train=K_TD, k_test_test=K_TT)
    for g in ("nngp", "ntk", "ntkgp"):
        mean, cov = closed_posterior(g, diag_reg)
        np.testing.assert_allclose(getattr(res, g).mean, mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(getattr(res, g).covariance, cov, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(predictor(get=g, k_test_train=K_TD), mean, rtol=1e-9, atol=1e-12)


def test_gp_inference_absolute_regularisation():
    p = kp.gp_inference(K_DD.nngp, Y_TRAIN, diag_reg=0.3, diag_reg_absolute_scale=True)
    want = arr(K_TD.nngp) @ np.linalg.solve(arr(K_DD.nngp) + 0.3 * np.eye(8), Y_TRAIN)
    np.testing.assert_allclose(p(get="nngp", k_test_train=K_TD.nngp), want, rtol=1e-10)
    np.testing.assert_allclose(p.nngp.jitter, 0.3)


def test_gp_inference_train_set_and_unpacking():
    p = kp.gp_inference(K_DD, Y_TRAIN)
    nngp, ntk = p(get=None, k_test_test=True)
    np.testing.assert_array_equal(nngp.mean, Y_TRAIN)
    np.testing.assert_array_equal(ntk.covariance, np.zeros((8, 8)))
    res = p(get=("ntk",), k_test_train=K_TD)
    assert len(res) == 1 and res.nngp is None and res[0] is res.ntk


def test_plain_arrays_and_namedtuples_are_accepted():
    import collections

    pair = collections.namedtuple("Pair", "nngp ntk")
    dd, td, tt = (pair(k.nngp, k.ntk) for k in (K_DD, K_TD, K_TT))
    a = kp.gp_inference(dd, Y_TRAIN)(get="ntk", k_test_train=td, k_test_test=tt)
    b = kp.gp_inference(K_DD, Y_TRAIN)(get="ntk", k_test_train=K_TD, k_test_test=K_TT)
    np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-12)
    # One array serves as both kernels.
    c = kp.gp_inference(np.asarray(K_DD.nngp), Y_TRAIN)(
        get=("nngp", "ntk"), k_test_train=np.asarray(K_TD.nngp)
    )
    np.testing.assert_allclose(c.nngp, c.ntk, rtol=1e-12)


def test_trace_axes_empty_equals_kronecker_identity():
    # trace_axes=() with the kernel K (x) I over the output axis gives the same answer.
    c = Y_TRAIN.shape[1]
    eye = np.eye(c)
    full = lambda k: np.einsum("ij,ab->iajb", arr(k), eye)  # (n, c, n, c)
    zipped = lambda k: np.transpose(full(k), (0, 2, 1, 3))  # (n, n, c, c)
    a = kp.gp_inference(zipped(K_DD.nngp), Y_TRAIN, diag_reg=1e-3, trace_axes=())(
        get="nngp", k_test_train=zipped(K_TD.nngp), k_test_test=zipped(K_TT.nngp)
    )
    b = kp.gp_inference(K_DD.nngp, Y_TRAIN, diag_reg=1e-3)(
        get="nngp", k_test_train=K_TD.nngp, k_test_test=K_TT.nngp
    )
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10)
    want_cov = np.transpose(np.einsum("ij,ab->iajb", arr(b.covariance), eye), (0, 2, 1, 3))
    np.testing.assert_allclose(a.covariance, want_cov, rtol=1e-10, atol=1e-13)


def test_outputs_with_a_spatial_axis():
    # Targets (n, h, k) with a kernel (n, n, h, h): predictions keep the axes in place.
    kx = jr.normal(jr.key(3), (6 * 2, 20))
    k = kx @ kx.T  # (n h) x (n h)
    k4 = jnp.transpose(k.reshape(6, 2, 6, 2), (0, 2, 1, 3))
    # The traced axis in the middle, y (n, k, h), exercises moving it out and back.
    y = jr.normal(jr.key(4), (6, 3, 2))
    mean = kp.gp_inference(k4, y, trace_axes=(1,))(get="nngp", k_test_train=k4[:4])
    np.testing.assert_allclose(mean, y[:4], rtol=1e-8, atol=1e-10)


def test_gp_inference_jit_and_grad():
    def mean_of(w):
        kdd = ka.kernel(net(w), X_TRAIN)
        ktd = ka.kernel(net(w), X_TEST, X_TRAIN)
        return jnp.sum(kp.gp_inference(kdd, Y_TRAIN, diag_reg=1e-3)(get="nngp", k_test_train=ktd))

    # One compiled function gives both the gradient and the values for finite differences.
    value_and_grad = jax.jit(jax.value_and_grad(mean_of))
    g = value_and_grad(1.3)[1]
    fd = (value_and_grad(1.3 + 1e-5)[0] - value_and_grad(1.3 - 1e-5)[0]) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    p = kp.gp_inference(K_DD, Y_TRAIN)
    jitted = eqx.filter_jit(lambda p, k: p(get="ntk", k_test_train=k))(p, K_TD)
    np.testing.assert_allclose(jitted, p(get="ntk", k_test_train=K_TD), rtol=1e-12)


def test_float32_stays_float32():
    k32 = ka.kernel(net(), X_TRAIN.astype(np.float32))
    kt32 = ka.kernel(net(), X_TEST.astype(np.float32), X_TRAIN.astype(np.float32))
    m = kp.gp_inference(k32, Y_TRAIN, diag_reg=1e-4)(get="nngp", k_test_train=kt32)
    assert m.dtype == jnp.float32
    want = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=1e-4)(get="nngp", k_test_train=K_TD)
    np.testing.assert_allclose(m, want, rtol=2e-3, atol=2e-3)


def test_conjugate_gradients_match_cholesky():
    import lineax as lx

    cg = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=1e-2, solver=lx.CG(rtol=1e-12, atol=1e-12, max_steps=200))
    assert isinstance(cg.nngp, kp.CGFactor)
    chol = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=1e-2)
    a = cg(get=("nngp", "ntk"), k_test_train=K_TD, k_test_test=K_TT)
    b = chol(get=("nngp", "ntk"), k_test_train=K_TD, k_test_test=K_TT)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(a, g).mean, getattr(b, g).mean, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(getattr(a, g).covariance, getattr(b, g).covariance, rtol=1e-9, atol=1e-11)
    assert float(cg.residual("ntk")) < 1e-10 and float(chol.residual()) < 1e-12
    # Too few steps for the tolerance: an error that says what to change, not a wrong answer.
    with pytest.raises(ValueError, match="did not reach the tolerance.*diag_reg"):
        kp.gp_inference(K_DD, Y_TRAIN, solver=lx.CG(rtol=1e-14, atol=1e-14, max_steps=2))


# ------------------------------------------------------------------- jitter, diagnostics
def _duplicate_kernel():
    # Two duplicated rows: a singular kernel (same shapes as the others, to reuse compilations).
    x = np.concatenate([X_TRAIN[:6], X_TRAIN[:2]])
    y = np.concatenate([Y_TRAIN[:6], Y_TRAIN[:2]])
    return ka.kernel(net(), x), ka.kernel(net(), X_TEST, x), y


def test_singular_kernel_raises_with_causes():
    kdd, _, y = _duplicate_kernel()
    with pytest.raises(ValueError, match="duplicate") as info:
        kp.gp_inference(kdd, y)
    assert "float64" in str(info.value) and "auto_jitter" in str(info.value)


def test_auto_jitter_escalates_and_reports():
    kdd, ktd, y = _duplicate_kernel()
    p = kp.gp_inference(kdd, y, auto_jitter=True)
    assert 0 < float(p.nngp.jitter) < 1e-2 * float(jnp.mean(jnp.diagonal(kdd.nngp)))
    mean = p(get="nngp", k_test_train=ktd)
    assert np.all(np.isfinite(mean))
    # The reported jitter is what was used: the same as asking for it explicitly.
    ref = kp.gp_inference(kdd, y, diag_reg=p.nngp.jitter, diag_reg_absolute_scale=True)
    np.testing.assert_allclose(mean, ref(get="nngp", k_test_train=ktd), rtol=1e-12)
    # A well-conditioned kernel gets no extra jitter.
    assert float(kp.gp_inference(K_DD, Y_TRAIN, auto_jitter=True).nngp.jitter) == 0.0
    # Same under jit, where the search runs in a while loop.
    pj = eqx.filter_jit(lambda k: kp.gp_inference(k, y, auto_jitter=True))(kdd)
    np.testing.assert_allclose(pj.nngp.jitter, p.nngp.jitter, rtol=1e-12)
    e = kp.gradient_descent_mse(kdd, y, auto_jitter=True)
    assert float(e.eigen.jitter) > 0
    assert all(np.all(np.isfinite(a)) for a in e(None, 0.0, 0.0, ktd))


def test_float32_conditioned_kernel_is_not_called_singular():
    # A near-constant kernel (large top eigenvalue) with condition number ~3e4 is fine
    # in float32; a threshold of N eps lambda_max (instead of 10 eps lambda_max) called
    # it singular.
    n = 512
    k = np.ones((n, n)) + 0.02 * np.eye(n)
    y = np.asarray(jr.normal(jr.key(8), (n, 1)))
    want = kp.gradient_descent_mse(k, y)(None, None, 0.0, k[:4])
    got = kp.gradient_descent_mse(k.astype(np.float32), y)(None, None, 0.0, k[:4].astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


def test_singular_kernel_raises_under_jit():
    kdd, _, y = _duplicate_kernel()
    with pytest.raises(Exception, match="not positive definite"):
        eqx.filter_jit(lambda k: kp.gp_inference(k, y).nngp_weights)(kdd)


# ----------------------------------------------------------------- gradient_descent_mse
def closed_mse(t, f0, g0, lr, diag_reg=0.0):
    k = reg(arr(K_DD.ntk), diag_reg)
    e = sl.expm(-k * t * lr / Y_TRAIN.size)
    train = Y_TRAIN + e @ (f0 - Y_TRAIN)
    test = g0 + arr(K_TD.ntk) @ np.linalg.solve(k, (e - np.eye(8)) @ (f0 - Y_TRAIN))
    return train, test


F0 = np.asarray(jr.normal(jr.key(5), (8, 2)))
G0 = np.asarray(jr.normal(jr.key(6), (5, 2)))


@pytest.mark.parametrize("diag_reg", [0.0, 0.05])
def test_gradient_descent_mse_matches_matrix_exponential(diag_reg):
    p = kp.gradient_descent_mse(K_DD.ntk, Y_TRAIN, learning_rate=0.7, diag_reg=diag_reg)
    ts = np.array([[0.5, 3.0], [20.0, 150.0]])
    train, test = p(ts, F0, G0, K_TD.ntk)
    assert train.shape == (2, 2, 8, 2) and test.shape == (2, 2, 5, 2)
    for idx in np.ndindex(2, 2):
        want_train, want_test = closed_mse(ts[idx], F0, G0, 0.7, diag_reg)
        np.testing.assert_allclose(train[idx], want_train, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(test[idx], want_test, rtol=1e-9, atol=1e-11)


def test_gradient_descent_mse_at_zero_and_infinity():
    p = kp.gradient_descent_mse(K_DD, Y_TRAIN, diag_reg=1e-3)  # a Kernel: its ntk is used
    train0, test0 = p(0.0, F0, G0, K_TD)
    np.testing.assert_allclose(train0, F0, rtol=1e-12)
    np.testing.assert_allclose(test0, G0, rtol=1e-12)
    # t -> infinity: the NTK posterior mean of gp_inference, from zero initial outputs.
    inf_train, inf_test = p(None, 0.0, 0.0, K_TD)
    gp = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=1e-3)(get="ntk", k_test_train=K_TD)
    np.testing.assert_allclose(inf_test, gp, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(inf_train, Y_TRAIN)
    late_train, late_test = p(1e9, 0.0, 0.0, K_TD)
    np.testing.assert_allclose(late_test, inf_test, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(late_train, Y_TRAIN, rtol=1e-7, atol=1e-9)
    # One side only.
    np.testing.assert_allclose(
        p(2.0, None, G0, K_TD), p(2.0, F0 * 0 + 0.0, G0, K_TD)[1] * 0 + p(2.0, None, G0, K_TD)
    )
    assert p(2.0, F0).shape == (8, 2)


def test_gradient_descent_mse_singular_kernel_finite_times():
    # Zero eigenvalues take the limit (1 - e^{-l t}) / l -> t: finite, no NaN.
    kdd, ktd, y = _duplicate_kernel()
    p = kp.gradient_descent_mse(kdd.ntk, y)
    train, test = p(np.array([0.1, 10.0]), 0.0, 0.0, ktd.ntk)
    assert np.all(np.isfinite(train)) and np.all(np.isfinite(test))
    with pytest.raises(ValueError, match="singular to working precision"):
        p(None, 0.0, 0.0, ktd.ntk)


def test_gradient_descent_mse_grad_wrt_time_and_learning_rate():
    def loss(t, lr):
        p = kp.gradient_descent_mse(K_DD.ntk, Y_TRAIN, learning_rate=lr)
        return jnp.sum(p(t, F0, G0, K_TD.ntk)[1] ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    g = value_and_grad(2.0, 0.5)[1]
    fd_t = (value_and_grad(2.0 + 1e-5, 0.5)[0] - value_and_grad(2.0 - 1e-5, 0.5)[0]) / 2e-5
    np.testing.assert_allclose(g[0], fd_t, rtol=1e-6)
    np.testing.assert_allclose(g[1] * 0.5, g[0] * 2.0, rtol=1e-10)  # only eta t matters


def test_max_learning_rate():
    lam = np.linalg.eigvalsh(arr(K_DD.ntk))[-1]
    np.testing.assert_allclose(kp.max_learning_rate(K_DD.ntk), 2 * 8 / (lam + 1e-12), rtol=1e-12)
    np.testing.assert_allclose(
        kp.max_learning_rate(K_DD, y_train_size=16, momentum=0.9), 2 * 1.9 * 16 / (lam + 1e-12), rtol=1e-12
    )
    # Discrete gradient descent on MSE is stable just below it and diverges just above.
    lr_max = float(kp.max_learning_rate(K_DD.ntk, y_train_size=Y_TRAIN.size))
    k = arr(K_DD.ntk)
    for factor, stable in ((0.99, True), (1.01, False)):
        f = np.zeros_like(Y_TRAIN)
        for _ in range(3000):
            f = f - factor * lr_max / Y_TRAIN.size * k @ (f - Y_TRAIN)
        assert (np.abs(f - Y_TRAIN).max() < 1) == stable


# ------------------------------------------------------------ gradient_descent_mse_ensemble
def test_ensemble_at_infinity_is_gp_inference():
    ens = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN, diag_reg=1e-3)
    gp = kp.gp_inference(K_DD, Y_TRAIN, diag_reg=1e-3)
    a = ens(x_test=X_TEST, get=("nngp", "ntk"), compute_cov=True)
    b = gp(get=("nngp", "ntk"), k_test_train=K_TD, k_test_test=K_TT)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(a, g).mean, getattr(b, g).mean, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(getattr(a, g).covariance, getattr(b, g).covariance, rtol=1e-8, atol=1e-10)


def test_ensemble_matches_closed_form_at_finite_time():
    lr, t = 0.5, np.array([1.0, 40.0])
    ens = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN, learning_rate=lr)
    res = ens(t, X_TEST, "ntk", compute_cov=True)
    th, k = arr(K_DD.ntk), arr(K_DD.nngp)
    th_td, k_td, k_tt = arr(K_TD.ntk), arr(K_TD.nngp), arr(K_TT.nngp)
    for i, ti in enumerate(t):
        g = np.linalg.solve(th, np.eye(8) - sl.expm(-th * ti * lr / Y_TRAIN.size))  # G_tau
        np.testing.assert_allclose(res.mean[i], th_td @ g @ Y_TRAIN, rtol=1e-9, atol=1e-11)
        a = g @ th_td.T
        cov = k_tt - k_td @ a - (k_td @ a).T + a.T @ k @ a
        np.testing.assert_allclose(res.covariance[i], cov, rtol=1e-8, atol=1e-10)
    # NNGP on the training set at t = 0: the prior.
    train = ens(0.0, None, "nngp", compute_cov=True)
    np.testing.assert_allclose(train.mean, np.zeros_like(Y_TRAIN), atol=1e-12)
    np.testing.assert_allclose(train.covariance, k, rtol=1e-10, atol=1e-12)


def test_ensemble_covariance_is_psd():
    ens = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN, diag_reg=1e-4)
    ts = np.array([0.0, 0.3, 5.0, 100.0])
    for x_test in (X_TEST, None):
        res = ens(ts, x_test, ("nngp", "ntk"), compute_cov=True)
        for g in ("nngp", "ntk"):
            for cov in getattr(res, g).covariance:
                np.testing.assert_allclose(cov, cov.T, rtol=1e-10, atol=1e-12)
                assert np.linalg.eigvalsh(cov).min() > -1e-9 * np.abs(cov).max()


def test_ensemble_in_blocks_equals_at_once():
    ens = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN, diag_reg=1e-3)
    ts = np.array([1.0, 10.0])
    whole = ens(ts, X_TEST, ("nngp", "ntk"))
    blocks = ens(ts, X_TEST, ("nngp", "ntk"), batch_size=2)  # 5 inputs: blocks of 2, 2, 1 (padded)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(blocks, g), getattr(whole, g), rtol=1e-12)
    np.testing.assert_allclose(ens(None, X_TEST, "ntk", batch_size=3), ens(None, X_TEST, "ntk"), rtol=1e-12)
    with pytest.raises(ValueError, match="needs `compute_cov=False`"):
        ens(ts, X_TEST, "nngp", compute_cov=True, batch_size=2)


def test_ensemble_with_kernel_fn_and_without_ntk():
    def kernel_fn(x1, x2, get):
        return ka.kernel(net(), x1, x2, compute_ntk="ntk" in get)

    a = kp.gradient_descent_mse_ensemble(kernel_fn, X_TRAIN, Y_TRAIN)(2.0, X_TEST, "ntk")
    b = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN)(2.0, X_TEST, "ntk")
    np.testing.assert_allclose(a, b, rtol=1e-12)
    ens = kp.gradient_descent_mse_ensemble(net(), X_TRAIN, Y_TRAIN, compute_ntk=False)
    assert ens.ntk is None
    ens(2.0, X_TEST, "nngp", compute_cov=True)


# ------------------------------------------------------------------ marginal likelihood
def test_marginal_log_likelihood_matches_scipy():
    k = reg(arr(K_DD.nngp), 0.01)
    want = sum(multivariate_normal(np.zeros(8), k).logpdf(Y_TRAIN[:, c]) for c in range(2))
    got = kp.marginal_log_likelihood(K_DD, Y_TRAIN, diag_reg=0.01)
    np.testing.assert_allclose(got, want, rtol=1e-11)
    k = arr(K_DD.ntk) + 0.2 * np.eye(8)
    want = sum(multivariate_normal(np.zeros(8), k).logpdf(Y_TRAIN[:, c]) for c in range(2))
    got = kp.marginal_log_likelihood(K_DD, Y_TRAIN, get="ntk", diag_reg=0.2, diag_reg_absolute_scale=True)
    np.testing.assert_allclose(got, want, rtol=1e-11)


def test_marginal_log_likelihood_gradient_matches_finite_differences():
    def mll(params):
        w, b, a, noise = params
        layer = kl.Serial(kl.Dense(16, W_std=w, b_std=b), kl.Erf(a=a), kl.Dense(1, W_std=w, b_std=b))
        return kp.marginal_log_likelihood(ka.kernel(layer, X_TRAIN), Y_TRAIN, diag_reg=noise)

    p0 = jnp.array([1.3, 0.3, 1.2, 0.05])
    value_and_grad = jax.jit(jax.value_and_grad(mll))
    g = value_and_grad(p0)[1]
    h = 1e-6
    fd = [
        (value_and_grad(p0.at[i].add(h))[0] - value_and_grad(p0.at[i].add(-h))[0]) / (2 * h) for i in range(4)
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    # Gradient with respect to the kernel matrix itself.
    km = arr(K_DD.nngp)
    direction = np.asarray(jr.normal(jr.key(7), (8, 8)))
    direction = direction + direction.T
    f = jax.jit(
        jax.value_and_grad(lambda s: kp.marginal_log_likelihood(km + s * direction, Y_TRAIN, diag_reg=0.01))
    )
    np.testing.assert_allclose(f(0.0)[1], (f(h)[0] - f(-h)[0]) / (2 * h), rtol=1e-6)
