"""GlobalSelfAttention: Monte Carlo over its finite twin, identities, masks, errors.

The Monte Carlo estimator is written here (independently of the library's) so that
what it computes is visible: for each sampled network, the NNGP estimate is the mean
over output channels of $f_k(x) f_k(x')$ at every pair of positions, and the NTK
estimate is $\\sum_p \\partial_p f_k(x)\\, \\partial_p f_k(x')$ averaged over the first
`UNITS` output channels, $p$ running over every array of the twin (hyperparameters are
read through `stop_gradient` and contribute nothing).

Tolerances: the networks are i.i.d., so the mean of their estimates has standard error
`se` = sample std / sqrt(n) entry by entry, and each entry must be within `Z * se` of
the kernel, plus a finite-width bias where one exists (see each test).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kernelalg as ka
from kernelalg import layers as kl
from kernelalg.ops import unzip_axes


Z = 5.0
UNITS = 2
MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")


def _key(seed: int):
    # 'rbg' keys: threefry is slow to compile on CPU.
    return jr.key(seed, impl="rbg")


# ---------------------------------------------------------------- Monte Carlo


def _network_kernels(model, x):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(p, xi):
        return eqx.combine(p, static)(xi)

    y = jax.vmap(lambda xi: f(params, xi))(x)
    nngp = jnp.einsum("ipc,jqc->ijpq", y, y, precision=jax.lax.Precision.HIGHEST) / y.shape[-1]
    jac = jax.vmap(lambda xi: jax.jacrev(lambda p: f(p, xi)[..., :UNITS])(params))(x)
    ntk = jnp.zeros_like(nngp)
    for leaf in jax.tree_util.tree_leaves(jac):
        flat = leaf.reshape(leaf.shape[:3] + (-1,))  # (n, S, units, P)
        ntk = ntk + jnp.einsum("ipuk,jquk->ijpq", flat, flat, precision=jax.lax.Precision.HIGHEST) / UNITS
    return nngp, ntk


@eqx.filter_jit
def _chunk(layer, keys, x):
    models = eqx.filter_vmap(lambda k: layer.init(k, x.shape[1:]))(keys)
    return jax.lax.map(lambda m: _network_kernels(m, x), models)


def monte_carlo(layer, x, *, n_samples, seed=0, chunk=64):
    """Mean and standard error of the empirical NNGP and NTK, `(n, n, S, S)` each."""
    keys = jr.split(_key(seed), n_samples)
    parts = [_chunk(layer, keys[i : i + chunk], x) for i in range(0, n_samples, chunk)]
    out = []
    for kind in range(2):
        s = jnp.concatenate([p[kind] for p in parts])
        out.append((np.asarray(s.mean(0)), np.asarray(s.std(0, ddof=1)) / math.sqrt(n_samples)))
    return out


def check_monte_carlo(layer, x, *, n_samples, bias=0.0, seed=0):
    """Assert |MC - kernel| <= Z se + bias * kappa, entrywise, for NNGP and NTK.

    `bias` is relative to kappa, the largest diagonal entry of the kernel (by
    Cauchy-Schwarz the largest magnitude of any entry).
    """
    k = ka.kernel(layer, x, diagonal_batch=False)
    (nngp, nngp_se), (ntk, ntk_se) = monte_carlo(layer, x, n_samples=n_samples, seed=seed)
    report = {}
    for name, mc, se, want in (("nngp", nngp, nngp_se, k.nngp), ("ntk", ntk, ntk_se, k.ntk)):
        want = np.asarray(want)
        kappa = float(np.max(np.abs(want)))
        err = np.abs(mc - want)
        allowed = Z * se + bias * kappa + 1e-8 * kappa
        report[name] = float(np.max(err / np.maximum(se, 1e-300)))
        i = np.unravel_index(np.argmax(err - allowed), err.shape)
        assert np.all(err <= allowed), (
            f"{name}: Monte Carlo {mc[i]:.5g} ± {se[i]:.2g} vs kernel {want[i]:.5g} at {i}: "
            f"|diff| {err[i]:.3g} > {Z} se + bias {bias * kappa:.3g}"
        )
    print(report)
    return report


def _structured_inputs(n, s, c, seed):
    """Positions alternately aligned and anti-aligned with a per-example direction, so
    that the attention logits are of order one and of both signs, never near 0 (where
    ABS and RELU would turn the O(1/sqrt(d_k)) noise of finite keys into a bias of the
    same order)."""
    k1, k2 = jr.split(_key(seed))
    u = jr.normal(k1, (n, 1, c), jnp.float64)
    e = jr.normal(k2, (n, s, c), jnp.float64)
    signs = jnp.asarray([(-1.0) ** p * 0.8 for p in range(s)])[None, :, None]
    return signs * u + 0.6 * e


def test_monte_carlo_identity_square_root_scaling_is_exact_at_any_width():
    # With 1/sqrt(d_k) scaling, independent queries and raw inputs, every entry of the
    # empirical NNGP and NTK is a sum of products of independent Gaussian factors with
    # their limiting means: E[G G'] = (s_Q s_K)^2 K[p, p'] K[q, q'] exactly for any d_k.
    # So the expected estimates equal the kernel at width 4: no bias term.
    layer = kl.GlobalSelfAttention(
        8,
        4,
        4,
        2,
        linear_scaling=False,
        W_key_std=1.2,
        W_query_std=0.9,
        W_value_std=1.1,
        W_out_std=0.8,
        b_std=0.3,
        attention_mechanism="IDENTITY",
    )
    x = jr.normal(_key(1), (3, 3, 4), jnp.float64)
    check_monte_carlo(layer, x, n_samples=512)


def test_monte_carlo_softmax_with_dense_in_front():
    # Softmax of logits s_Q s_K K-hat, K-hat the empirical covariance of the Dense
    # outputs seen through d_k random keys: K-hat = K + delta, E delta = 0 and
    # Var delta = O(kappa^2 (1/width + 1/d_k)). The softmax is smooth with second
    # derivative bounded by (s_Q s_K)^2 / 4 per logit, so the bias is second order,
    # O(S (s_Q s_K)^2 (1/width + 1/d_k)) relative: 4 * 2 * (1/64 + 1/128) < 0.2 with
    # the widths below; measured with 8192 networks it is 0.004, so 0.02 keeps a
    # margin of five.
    dense = kl.Dense(64, W_std=1.1)
    attention = kl.GlobalSelfAttention(
        8, 128, 8, 2, W_key_std=1.1, W_query_std=1.2, W_value_std=1.1, W_out_std=0.9, b_std=0.2
    )
    x = jr.normal(_key(2), (3, 4, 3), jnp.float64)
    check_monte_carlo(kl.Serial(dense, attention), x, n_samples=256, bias=0.02)


_GRID = [
    (mech, pos, val)
    for mech in MECHANISMS
    for pos, val in (("NONE", False), ("SUM", True), ("CONCAT", False), ("CONCAT", True))
]


@pytest.mark.slow
@pytest.mark.parametrize("mech,pos,val", _GRID)
def test_monte_carlo_grid(mech, pos, val):
    # Wide keys (d_k = 1024) and wide inputs/embeddings (128, 64 channels) keep the two
    # finite-width biases small: the key noise in the logits (Var O(1/d_k)), which for
    # IDENTITY/ABS/RELU also leaves an O(S/d_k) NTK contribution from the key weights,
    # and the embedding noise (cross terms x . e / C, O(1/C)). Measured: below 1 % of
    # kappa with these widths; the allowance is 3 %.
    decay = (lambda d: jnp.exp(-0.5 * d)) if pos == "CONCAT" and val else None
    layer = kl.GlobalSelfAttention(
        8,
        1024,
        8,
        2,
        W_key_std=1.3,
        W_query_std=0.9,
        W_value_std=1.1,
        W_out_std=0.8,
        b_std=0.2,
        attention_mechanism=mech,
        pos_emb_type=pos,
        val_pos_emb=val,
        W_pos_emb_std=0.7,
        n_chan_pos_emb=64 if pos == "CONCAT" else None,
        pos_emb_decay_fn=decay,
        pos_emb_p_norm=1.0,
    )
    x = _structured_inputs(4, 3, 128, seed=3)
    check_monte_carlo(layer, x, n_samples=256, bias=0.03)


# ---------------------------------------------------------------- identities


def _input_kernel(x1, x2=None, diagonal_batch=True):
    return ka.kernel(kl.Identity(), x1, x2, diagonal_batch=diagonal_batch)


def _matrix(k):
    """`(n, n, S, S)` (1-D positions) -> `(n S, n S)`."""
    n, s = k.shape[0], k.shape[2]
    return np.asarray(jnp.transpose(k, (0, 2, 1, 3)).reshape(n * s, n * s))


def _assert_symmetric_psd(m):
    scale = np.max(np.abs(m))
    np.testing.assert_allclose(m, m.T, atol=1e-12 * scale)
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    assert eig[0] >= -1e-10 * m.shape[0] * eig[-1], eig


_configs = st.fixed_dictionaries(
    {
        "attention_mechanism": st.sampled_from(MECHANISMS),
        "pos_emb_type": st.sampled_from(("NONE", "SUM", "CONCAT")),
        "val_pos_emb": st.booleans(),
        "W_query_std": st.floats(0.3, 2.0),
        "b_std": st.one_of(st.none(), st.floats(0.0, 0.5)),
    }
)


def _layer(cfg, linear_scaling=True):
    if not linear_scaling:
        cfg = dict(cfg, attention_mechanism="IDENTITY")
    return kl.GlobalSelfAttention(4, 4, 4, 2, linear_scaling=linear_scaling, W_key_std=1.1, **cfg)


# One kernel per drawn configuration, of a batch holding x and x with its positions
# permuted, checked for three identities at once. Layers are called eagerly: each op
# compiles once per shape and is reused across examples, where `kernelalg.kernel`
# would compile every drawn layer structure anew.
@settings(max_examples=10)
@given(cfg=_configs, linear=st.booleans(), seed=st.integers(0, 2**16))
def test_symmetric_psd_and_permutation_equivariant(cfg, linear, seed):
    layer = kl.Serial(kl.Dense(4, 1.2), _layer(cfg, linear))
    k1, k2 = jr.split(_key(seed))
    x = jr.normal(k1, (2, 5, 3), jnp.float64)
    perm = jr.permutation(k2, 5)
    k = layer(_input_kernel(jnp.concatenate([x, x[:, perm]]), diagonal_batch=False))
    # NNGP and NTK of inputs with themselves are symmetric PSD (over examples and
    # positions together); cov1 is the NNGP of x with itself.
    _assert_symmetric_psd(_matrix(k.nngp))
    _assert_symmetric_psd(_matrix(k.ntk))
    np.testing.assert_allclose(k.cov1, k.nngp, rtol=1e-12, atol=1e-14)
    # Without a decay function the embedding covariance is the identity, which every
    # permutation of positions preserves: attention is then permutation equivariant.
    # Embeddings stay attached to positions, so permuting x2 alone permutes the cross
    # kernel only without them.
    for kern in (k.nngp, k.ntk):
        want = kern[:2, :2][:, :, perm][:, :, :, perm]
        np.testing.assert_allclose(kern[2:, 2:], want, rtol=1e-10, atol=1e-12)
        if cfg["pos_emb_type"] == "NONE":
            want = kern[:2, :2][:, :, :, perm]
            np.testing.assert_allclose(kern[:2, 2:], want, rtol=1e-10, atol=1e-12)


def test_swapping_x1_and_x2_transposes_the_kernel():
    layer = kl.Serial(kl.Dense(4, 1.2, 0.1), _layer({"pos_emb_type": "SUM", "val_pos_emb": True}))
    x1 = jr.normal(_key(4), (2, 3, 3), jnp.float64)
    x2 = jr.normal(_key(5), (3, 3, 3), jnp.float64)
    k12, k21 = ka.kernel(layer, x1, x2), ka.kernel(layer, x2, x1)
    np.testing.assert_allclose(k21.nngp, jnp.transpose(k12.nngp, (1, 0, 3, 2)), rtol=1e-12)
    np.testing.assert_allclose(k21.ntk, jnp.transpose(k12.ntk, (1, 0, 3, 2)), rtol=1e-12)
    np.testing.assert_allclose(k21.cov1, k12.cov2, rtol=1e-12)


@pytest.mark.parametrize("pos", ["NONE", "SUM"])
def test_two_spatial_axes_equal_flattened_positions(pos):
    # Global attention sees positions only through their pairwise covariances (and
    # an identity embedding covariance), so an image is the sequence of its pixels;
    # this pins the zipped layout nngp[i, j, h1, h2, w1, w2].
    layer = kl.Serial(kl.Dense(4, 1.2, 0.1), _layer({"pos_emb_type": pos, "val_pos_emb": True}))
    x1 = jr.normal(_key(6), (2, 2, 3, 3), jnp.float64)
    x2 = jr.normal(_key(7), (3, 2, 3, 3), jnp.float64)
    k = layer(_input_kernel(x1, x2, diagonal_batch=False))
    kf = layer(_input_kernel(x1.reshape(2, 6, 3), x2.reshape(3, 6, 3), diagonal_batch=False))
    for got, want, b in ((k.nngp, kf.nngp, 2), (k.ntk, kf.ntk, 2), (k.cov1, kf.cov1, 2)):
        got = unzip_axes(got, b)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-12)


def test_positional_covariance_with_decay():
    # R[p, q] = decay(sum_a |p_a - q_a|^p_norm), checked against a direct loop on 2-D
    # positions: the kernel of zero inputs with CONCAT embeddings and identity
    # attention is a known function of R.
    from kernelalg.ops._attention import positional_covariance

    R = positional_covariance((2, 3), jnp.asarray(1.5), lambda d: jnp.exp(-d), jnp.float64)
    pos = [(h, w) for h in range(2) for w in range(3)]
    want = [[math.exp(-(abs(a[0] - b[0]) ** 1.5 + abs(a[1] - b[1]) ** 1.5)) for b in pos] for a in pos]
    np.testing.assert_allclose(R, want, rtol=1e-14)


def test_diagonal_batch_agrees_with_full_batch():
    layer = kl.Serial(kl.Dense(4, 1.2, 0.1), _layer({"pos_emb_type": "CONCAT", "val_pos_emb": True}))
    x = jr.normal(_key(8), (3, 4, 3), jnp.float64)
    kd, kf = ka.kernel(layer, x, diagonal_batch=True), ka.kernel(layer, x, diagonal_batch=False)
    np.testing.assert_allclose(kd.nngp, kf.nngp, rtol=1e-12)
    np.testing.assert_allclose(kd.cov1, jnp.moveaxis(jnp.diagonal(kf.cov1, 0, 0, 1), -1, 0), rtol=1e-12)


def test_out_shape_matches_finite_twin_and_lowercase_strings():
    layer = kl.GlobalSelfAttention(
        7, 3, 5, 2, attention_mechanism="relu", pos_emb_type="concat", n_chan_pos_emb=2, val_pos_emb=True
    )
    assert layer.attention_mechanism == "RELU" and layer.pos_emb_type == "CONCAT"
    model = layer.init(_key(9), (2, 3, 4))
    y = jax.eval_shape(model, jax.ShapeDtypeStruct((2, 3, 4), jnp.float64))
    assert y.shape == layer.out_shape((2, 3, 4)) == (2, 3, 7)
    assert model.W_key.shape == (2, 6, 3) and model.W_value.shape == (2, 6, 5)
    assert model.W_out.shape == (10, 7) and model.W_query is None


def test_jit_and_grad_over_hyperparameters():
    x = jr.normal(_key(10), (2, 3, 3), jnp.float64)
    k0 = _input_kernel(x)

    def nngp_sum(w):
        layer = kl.GlobalSelfAttention(
            4,
            4,
            4,
            1,
            W_key_std=w,
            pos_emb_type="SUM",
            pos_emb_decay_fn=lambda d: jnp.exp(-d),
            pos_emb_p_norm=1.0,
        )
        return jnp.sum(layer(k0).nngp)

    g = jax.jit(jax.grad(nngp_sum))(1.3)
    eps = 1e-6
    fd = (nngp_sum(1.3 + eps) - nngp_sum(1.3 - eps)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    assert np.isfinite(g)


# ---------------------------------------------------------------- masks


def _masked(layer, x, lengths):
    s = x.shape[1]
    mask = jnp.arange(s)[None, :] >= jnp.asarray(lengths)[:, None]
    k = _input_kernel(jnp.where(mask[..., None], 0.0, x), diagonal_batch=False)
    return layer(k.replace(mask1=mask)), mask


@pytest.mark.parametrize("mech", MECHANISMS)
@pytest.mark.parametrize("linear", [True, False])
def test_masked_kernel_equals_kernel_of_truncated_sequences(mech, linear):
    # Masked keys are ignored: on the unmasked positions the kernel of a padded
    # sequence is that of the truncated sequence; entries involving padding are 0.
    if not linear and mech != "IDENTITY":
        pytest.skip("no closed form")
    layer = kl.GlobalSelfAttention(
        4,
        4,
        4,
        2,
        linear_scaling=linear,
        attention_mechanism=mech,
        pos_emb_type="SUM",
        val_pos_emb=True,
        b_std=0.2,
        W_key_std=1.2,
    )
    x = jr.normal(_key(11), (2, 5, 3), jnp.float64)
    k, mask = _masked(layer, x, [3, 5])
    short = layer(_input_kernel(x[:1, :3], diagonal_batch=False))
    np.testing.assert_allclose(k.nngp[0, 0, :3, :3], short.nngp[0, 0], rtol=1e-12)
    np.testing.assert_allclose(k.ntk[0, 0, :3, :3], short.ntk[0, 0], rtol=1e-12)
    np.testing.assert_allclose(k.cov1[0, 0, :3, :3], short.cov1[0, 0], rtol=1e-12)
    assert np.all(np.asarray(k.nngp)[0, :, 3:] == 0) and np.all(np.asarray(k.nngp)[:, 0, :, 3:] == 0)
    assert k.mask1 is mask


@pytest.mark.parametrize("pos", ["NONE", "SUM", "CONCAT"])
def test_masked_finite_twin_equals_twin_on_truncated_sequence(pos):
    layer = kl.GlobalSelfAttention(
        4, 4, 4, 2, attention_mechanism="SOFTMAX", pos_emb_type=pos, val_pos_emb=True, n_chan_pos_emb=None
    )
    x = jr.normal(_key(12), (5, 3), jnp.float64)
    mask = jnp.arange(5) >= 3
    full = layer.init(_key(13), (5, 3))
    short = eqx.tree_at(
        lambda m: m.pos_emb,
        full,
        None if full.pos_emb is None else full.pos_emb[:3],
        is_leaf=lambda v: v is None,
    )
    y = full(x.at[3:].set(123.0), mask=mask)
    np.testing.assert_allclose(y[:3], short(x[:3]), rtol=1e-12)
    # A mask given per channel (as neural-tangents' apply_fn takes it) is the same.
    y2 = full(x.at[3:].set(123.0), mask=jnp.broadcast_to(mask[:, None], (5, 3)))
    np.testing.assert_allclose(y2, y, rtol=1e-14)


# ---------------------------------------------------------------- errors


def _attention(**kw):
    args = dict(n_chan_out=4, n_chan_key=4, n_chan_val=4, n_heads=2)
    return kl.GlobalSelfAttention(**{**args, **kw})


ERRORS = {
    "no spatial axes (kernel)": (
        lambda: ka.kernel(_attention(), np.ones((3, 5))),
        ValueError,
        "at least one spatial axis",
    ),
    "no spatial axes (init)": (
        lambda: _attention().init(_key(0), (5,)),
        ValueError,
        "at least one spatial axis",
    ),
    "bad mechanism": (lambda: _attention(attention_mechanism="SOFTMAXX"), ValueError, "attention_mechanism"),
    "bad pos_emb_type": (lambda: _attention(pos_emb_type="ADD"), ValueError, "pos_emb_type"),
    "n_heads < 1": (lambda: _attention(n_heads=0), ValueError, r"n_heads=...\)` must be an int >= 1"),
    "float n_chan_key": (lambda: _attention(n_chan_key=2.0), TypeError, "n_chan_key"),
    "negative W_value_std": (lambda: _attention(W_value_std=-1.0), ValueError, "W_value_std"),
    "zero pos_emb_p_norm": (lambda: _attention(pos_emb_p_norm=0.0), ValueError, "pos_emb_p_norm"),
    "decay fn not callable": (lambda: _attention(pos_emb_decay_fn=2.0), TypeError, "pos_emb_decay_fn"),
    "SUM with other width": (
        lambda: _attention(pos_emb_type="SUM", n_chan_pos_emb=3).out_shape((4, 5)),
        ValueError,
        "n_chan_pos_emb",
    ),
    "no closed form": (
        lambda: ka.kernel(_attention(linear_scaling=False), np.ones((2, 3, 2))),
        NotImplementedError,
        "linear_scaling=True",
    ),
    "diagonal_spatial requested": (
        lambda: ka.kernel(_attention(), np.ones((2, 3, 2)), diagonal_spatial=True),
        ValueError,
        "GlobalSelfAttention",
    ),
    "decay fn not positive definite": (
        lambda: _attention(pos_emb_type="SUM", pos_emb_decay_fn=lambda d: jnp.ones_like(d)).init(
            _key(0), (3, 2)
        ),
        ValueError,
        "positive definite",
    ),
    "mask of wrong shape": (
        lambda: _attention().init(_key(0), (3, 2))(jnp.ones((3, 2)), mask=jnp.zeros((4,), bool)),
        ValueError,
        "mask",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_raises_clear_error(name):
    call, exc, pattern = ERRORS[name]
    # Under the suite's beartype hook a wrongly typed argument may be caught by its
    # annotation first; that TypeError names the parameter as well.
    with pytest.raises((exc, TypeError)) as info:
        call()
    assert isinstance(info.value, exc) or "parameter" in str(info.value), info.value
    if isinstance(info.value, exc):
        import re

        assert re.search(pattern, str(info.value)), str(info.value)
