r"""Spatial layers against Monte Carlo over their finite twins.

Every convolution, pooling, normalisation and reshaping layer is checked inside a
small CNN: finite networks are sampled from `layer.init`, each one's empirical NNGP and
NTK on the concatenated inputs $X = [x_1; x_2]$ are computed, and their mean is
compared with `kernelalg.kernel` entry by entry, every position pair included.

**Estimates.** For a network with $C$ output channels,
$\hat{\mathcal K}(x, p; x', q) = \frac1C\sum_k f_k(x)_p f_k(x')_q$ (output channels are
i.i.d. given the layers below, so each is one more sample of the NNGP), and
$\hat\Theta = \frac1U\sum_{k \le U}\langle\partial_\theta f_k(x)_p,
\partial_\theta f_k(x')_q\rangle$ over the twin's parameters, with $U$ = `ntk_units`
output channels (channels share every layer but the readout, so one carries almost
all the information for a fraction of the cost; Dropout on the outputs is the
exception, see its case). The NNGP needs no Jacobian, so it is estimated from 8 times
as many networks as the NTK.

**Tolerance.** The $S$ per-network estimates are i.i.d.: their mean has standard error
$\mathrm{se} = s/\sqrt S$ entrywise, and by the central limit theorem the error over
`se` is approximately Student-$t_{S-1}$. Each entry must satisfy
$|\bar{\mathcal K} - \mathcal K| \le z\,\mathrm{se} + \beta\,\kappa/n +
\sqrt{\epsilon}\,\kappa$ with $z = 5$: $P(|t_{47}| > 5) \approx 10^{-5}$ per entry, so
below 1% for a test's thousand-odd (strongly correlated) entries, and seeds are
fixed. $\kappa$ is the largest variance, $n$ the narrowest hidden width and $\beta$ the
finite-width coefficient:

- $\beta = 0$ for networks with at most one nonlinear layer: its pre-activations are
  exact Gaussians (an affine map of the inputs) and the readout weights are
  independent of them, so $\mathbb E\hat{\mathcal K}$ and $\mathbb E\hat\Theta$ are
  exactly the kernels at any width (pooling, dropout and reshaping are linear in the
  features or independent of the weights, and keep this).
- $\beta = L - 1$ for $L$ nonlinear layers, the $O(1/n)$ bias of deep networks (Yaida
  2020). Measured here for the two-ReLU CNN with 2048 networks of width 4: at most
  $0.15\,\kappa/n$ (NNGP) and $0.07\,\kappa/n$ (NTK).
- $\beta = 1$ for `LayerNorm`: it divides by an empirical variance over $n$ channels,
  so the output covariance is an empirical correlation coefficient, biased by
  $\rho(1 - \rho^2)/(2n)$ (Fisher 1915), plus the $1/n$ of the mean subtraction.
  Measured with 2048 networks of width 4: at most $0.29\,\kappa/n$ (NNGP) and
  $0.23\,\kappa/n$ (NTK, `LayerNorm` then `Relu`).

**Resolution.** Each test prints its largest z-score and its largest tolerance
relative to $\kappa$: about 0.05-0.1 for the NNGP and 0.2-0.3 for the NTK with the
default sample sizes (the fluctuation of a finite hidden layer dominates). Structural
mistakes (padding, strides, shapes, a missing factor) are far larger: a 'SAME' twin
against a 'CIRCULAR' kernel is off by half, a 10% change of $\sigma_W^2$ or of the
Dropout rate is caught.

**Why a local helper** rather than `kernelalg.testing.assert_monte_carlo_agreement`
(whose statistics this mirrors): the `Dropout` twin needs a PRNG key per example; the
finite `Conv`/`ConvTranspose` twins with a bias currently rely on rank promotion
(pinned by `test_finite_conv_bias_without_rank_promotion`), and only their sampling,
not the kernel, may be allowed it; and CNN Jacobians are costly on CPU, so all
networks of a test are sampled and contracted in one compiled `lax.map`, one network
at a time (vmapping a convolution over its weights makes a grouped convolution, three
times slower here).

**Cost.** The NTK Jacobian of a CNN costs $O(N^2 |S|^2 U P)$ per network, so the
hidden layers where it is taken have 16 channels (64 before `LayerNorm`, 32 in the
two-ReLU CNN) and the readout is wide (its channels are free NNGP samples). Each test
is dominated by XLA compilation (2-5 s of CPU per network structure). The default set
is two networks; `slow` (KERNELALG_SLOW=1) has every layer, padding, stride,
dimension and parameterization.
"""

import contextlib
import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import kernelalg as ka
from kernelalg import layers as kl


Z = 5.0


def _inputs(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jr.normal(jr.key(seed, impl="rbg"), shape, jnp.float64)


X1_2D, X2_2D = _inputs(1, (2, 4, 4, 2)), _inputs(2, (1, 4, 4, 2))
X1_1D, X2_1D = _inputs(3, (2, 6, 2)), _inputs(4, (1, 6, 2))
X1_3D, X2_3D = _inputs(5, (2, 3, 3, 2, 2)), _inputs(6, (1, 3, 3, 2, 2))


# --- the Monte Carlo helper -----------------------------------------------------------


def _zip(g: jax.Array, n_spatial: int) -> jax.Array:
    # (N, *S, M, *S) -> (N, M, s1, s1', s2, s2', ...): kernelalg's zipped layout.
    perm = [0, 1 + n_spatial]
    for i in range(n_spatial):
        perm += [1 + i, 2 + n_spatial + i]
    return jnp.transpose(g, perm)


def _gram(a: jax.Array, b: jax.Array, n_spatial: int) -> jax.Array:
    # a: (N, *S, C), b: (M, *S, C) -> mean over the last axis of a b, zipped.
    g = jnp.tensordot(a, b, axes=((a.ndim - 1,), (b.ndim - 1,)), precision=jax.lax.Precision.HIGHEST)
    return _zip(g, n_spatial) / a.shape[-1]


def _uses_rank_promotion(net: kl.AbstractLayer) -> bool:
    # FiniteConv adds a `(C,)` bias to `(*spatial, C)` outputs by rank promotion (see
    # test_finite_conv_bias_without_rank_promotion); only the twin may be allowed it.
    def biased(layer):
        return isinstance(layer, (kl.Conv, kl.ConvTranspose)) and layer.b_std is not None

    leaves = jax.tree_util.tree_leaves(net, is_leaf=biased)
    return any(biased(leaf) for leaf in leaves)


@eqx.filter_jit
def _sample(net, x, keys, ntk_units, keyed):
    """Per-network empirical NNGP `(S, N, N, *zipped)` and NTK (or None)."""
    in_shape = tuple(x.shape[1:])

    def one(key):
        k_init, k_drop = jr.split(key)
        model = net.init(k_init, in_shape)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        # One dropout key per example: the masks of different examples are independent.
        ex_keys = jr.split(k_drop, x.shape[0]) if keyed else None

        def f(p, xi, ki):
            return eqx.combine(p, static)(xi, key=ki)

        axes = (None, 0, 0 if keyed else None)
        y = jax.vmap(f, in_axes=axes)(params, x, ex_keys)
        n_spatial = y.ndim - 2
        nngp = _gram(y, y, n_spatial)
        if not ntk_units:
            return nngp, None
        jac = jax.vmap(jax.jacrev(lambda p, xi, ki: f(p, xi, ki)[..., :ntk_units]), in_axes=axes)(
            params, x, ex_keys
        )
        ntk = jnp.zeros_like(nngp)
        for leaf in jax.tree_util.tree_leaves(jac):
            # (N, *S, U, *leaf) -> (U, N |S|, P): gram over parameters, mean over units.
            flat = jnp.moveaxis(leaf.reshape(y.shape[:-1] + (ntk_units, -1)), -2, 0)
            flat = flat.reshape(ntk_units, -1, flat.shape[-1])
            g = jnp.einsum("uip,ujp->ij", flat, flat, precision=jax.lax.Precision.HIGHEST) / ntk_units
            g = g.reshape(y.shape[:-1] + y.shape[:-1])
            ntk = ntk + _zip(g, n_spatial)
        return nngp, ntk

    return jax.lax.map(one, keys)


def _batch_blocks(a: jax.Array, n1: int):
    return a[:n1, n1:], a[:n1, :n1], a[n1:, n1:]


def _check(
    net,
    x1,
    x2,
    *,
    n_samples,
    nngp_samples=None,
    width=None,
    bias_coef=0.0,
    seed=0,
    ntk_units=1,
    keyed=False,
    label="",
):
    """Assert Monte Carlo agreement of `net`'s twin with `kernelalg.kernel`.

    The NTK is estimated from `n_samples` networks; the NNGP, which needs no Jacobian,
    from `nngp_samples` (default `8 * n_samples`) others, for a tighter check at little
    cost. Returns the largest z-scores `{"nngp": .., "ntk": ..}` over entries whose
    standard error is above round-off, and the resolution: the largest tolerance
    relative to the largest variance.
    """
    exact = ka.kernel(net, x1, x2, compute_ntk=ntk_units > 0, diagonal_batch=False)
    n1 = x1.shape[0]
    x = jnp.concatenate([x1, x2])
    nngp_samples = 8 * n_samples if nngp_samples is None else nngp_samples

    def sample(n, units, stream):
        keys = jr.split(jr.fold_in(jr.key(seed, impl="rbg"), stream), n)
        allow = jax.numpy_rank_promotion("allow") if _uses_rank_promotion(net) else contextlib.nullcontext()
        with allow:
            return _sample(net, x, keys, units, keyed)

    nngp_s = sample(nngp_samples, 0, 0)[0]
    ntk_s = sample(n_samples, ntk_units, 1)[1] if ntk_units else None
    roundoff = math.sqrt(float(jnp.finfo(x.dtype).eps))
    failures, zs, resolution = [], {}, {}

    def compare(name, samples, wants):
        mc = np.asarray(jnp.mean(samples, axis=0))
        se = np.asarray(jnp.std(samples, axis=0, ddof=1)) / math.sqrt(samples.shape[0])
        diag = np.stack([mc[i, i] for i in range(mc.shape[0])])
        kappa = float(np.max(np.abs(diag)))
        bias = 0.0 if width is None else bias_coef * kappa / width
        slack = bias + roundoff * kappa
        worst, res = 0.0, 0.0
        for block, (m, s), want in zip(
            ("x1-x2", "x1-x1", "x2-x2"), zip(_batch_blocks(mc, n1), _batch_blocks(se, n1)), wants
        ):
            if want is None:
                continue
            want = np.asarray(want)
            assert m.shape == want.shape, (name, block, m.shape, want.shape)
            err = np.abs(m - want)
            random = s > roundoff * kappa
            z = np.where(random, err / np.where(random, s, 1.0), 0.0)
            worst = max(worst, float(np.max(z, initial=0.0)))
            res = max(res, float(np.max(Z * s + slack)) / kappa)
            bad = err > Z * s + slack
            if np.any(bad) or not np.all(np.isfinite(want)):
                i = np.unravel_index(np.argmax(np.where(bad, err - Z * s - slack, -np.inf)), err.shape)
                failures.append(
                    f"{name} {block} at {tuple(int(j) for j in i)}: Monte Carlo {m[i]:.6g} ± {s[i]:.2g} "
                    f"vs kernel {want[i]:.6g}; |diff| {err[i]:.3g} > {Z} se + bias {bias:.2g} + "
                    f"round-off {roundoff * kappa:.2g}"
                )
        zs[name], resolution[name] = worst, res

    compare("nngp", nngp_s, (exact.nngp, exact.cov1, exact.cov2))
    if ntk_units:
        compare("ntk", ntk_s, (exact.ntk, None, None))
    ntk_z, ntk_res = zs.get("ntk", math.nan), resolution.get("ntk", math.nan)
    print(
        f"{label} max z: nngp {zs['nngp']:.2f}, ntk {ntk_z:.2f}; largest tolerance / kappa: "
        f"nngp {resolution['nngp']:.3f}, ntk {ntk_res:.3f}"
    )
    assert not failures, f"{nngp_samples} (NNGP) and {n_samples} (NTK) networks, {label}:\n  " + "\n  ".join(
        failures
    )
    return zs


# --- cases ----------------------------------------------------------------------------

H = 16  # hidden channels below the readout: the NTK Jacobian grows with them
C = 64  # readout channels: free NNGP samples
SAME, VALID, CIRC = "SAME", "VALID", "CIRCULAR"


def _body(layer: kl.AbstractLayer, filter_shape=(2, 2), padding=SAME) -> kl.Serial:
    """`Conv -> Relu -> layer`: Gaussian features with a random NTK (one nonlinear
    layer, so no finite-width bias) feeding the layer under test."""
    return kl.Serial(kl.Conv(H, filter_shape, padding=padding, W_std=1.3, b_std=0.2), kl.Relu(), layer)


def _pooled(pool: kl.AbstractLayer, filter_shape=(2, 2)) -> kl.Serial:
    """`Conv -> Relu -> Conv -> pool`: the pool sees a random, non-trivial NNGP and NTK."""
    return _body(kl.Serial(kl.Conv(C, filter_shape, padding=SAME, W_std=1.1, b_std=0.1), pool), filter_shape)


# name -> (network, x1, x2, keyword arguments of _check)
CASES = {
    # Conv: one layer on the inputs (NNGP random, NTK the same for every network: it
    # is checked to round-off), then inside a network.
    "conv2d_one_layer_standard": (
        kl.Conv(256, (3, 3), padding=SAME, W_std=1.3, b_std=0.2, parameterization="standard"),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv2d_same": (_body(kl.Conv(C, (3, 3), padding=SAME, W_std=1.1, b_std=0.1)), X1_2D, X2_2D, {}),
    "conv2d_valid_strides": (
        _body(kl.Conv(C, (2, 2), strides=(2, 1), padding=VALID, W_std=1.2, b_std=0.3), (3, 3), VALID),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv2d_circular_strides": (
        kl.Serial(
            kl.Conv(H, (3, 3), strides=(2, 1), padding=CIRC, W_std=1.3, b_std=0.2),
            kl.Relu(),
            kl.Conv(C, (3, 3), padding=CIRC, W_std=0.9, b_std=0.2),
        ),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv2d_no_bias": (_body(kl.Conv(C, (2, 3), padding=SAME, W_std=1.4)), X1_2D, X2_2D, {}),
    "conv2d_standard_s": (
        kl.Serial(
            kl.Conv(
                H // 2, (2, 2), padding=SAME, W_std=1.3, b_std=0.2, parameterization="standard", s=(1, 2)
            ),
            kl.Relu(),
            kl.Conv(C, (3, 3), padding=SAME, W_std=1.1, b_std=0.1, parameterization="standard", s=(2, 1)),
        ),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv1d_same": (_body(kl.Conv(C, (3,), padding=SAME, W_std=1.1, b_std=0.1), (3,)), X1_1D, X2_1D, {}),
    "conv1d_valid_stride2": (
        _body(kl.Conv(C, (3,), strides=(2,), padding=VALID, W_std=1.1, b_std=0.1), (2,), VALID),
        X1_1D,
        X2_1D,
        {},
    ),
    "conv1d_circular_stride2": (
        _body(kl.Conv(C, (3,), strides=(2,), padding=CIRC, W_std=1.1, b_std=0.1), (4,), CIRC),
        X1_1D,
        X2_1D,
        {},
    ),
    "conv3d": (
        _body(kl.Conv(C, (2, 1, 2), padding=VALID, W_std=1.1, b_std=0.1), (2, 2, 2), SAME),
        X1_3D,
        X2_3D,
        {},
    ),
    "conv3d_circular_strides": (
        _body(kl.Conv(C, (2, 2, 2), strides=(2, 1, 1), padding=CIRC, W_std=1.1, b_std=0.1), (3, 2, 1), CIRC),
        X1_3D,
        X2_3D,
        {},
    ),
    # ConvLocal: unshared weights, zero covariance between different positions.
    "conv_local2d": (
        kl.Serial(
            kl.ConvLocal(H, (3, 3), padding=SAME, W_std=1.3, b_std=0.2),
            kl.Relu(),
            kl.ConvLocal(C, (2, 2), padding=VALID, W_std=1.1, b_std=0.1),
        ),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv_local1d_strides_standard": (
        kl.Serial(
            kl.ConvLocal(
                H, (3,), strides=(2,), padding=CIRC, W_std=1.3, b_std=0.2, parameterization="standard"
            ),
            kl.Relu(),
            kl.ConvLocal(C, (2,), padding=SAME, W_std=1.1, b_std=0.1, parameterization="standard"),
        ),
        X1_1D,
        X2_1D,
        {},
    ),
    # ConvTranspose.
    "conv_transpose1d_one_layer_circular_stride2": (
        kl.ConvTranspose(256, (3,), strides=(2,), padding=CIRC, W_std=1.3, b_std=0.2),
        X1_1D,
        X2_1D,
        {},
    ),
    "conv_transpose2d_valid": (
        _body(kl.ConvTranspose(C, (2, 3), padding=VALID, W_std=1.1, b_std=0.1)),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv_transpose2d_same_strides": (
        _body(kl.ConvTranspose(C, (3, 2), strides=(2, 1), padding=SAME, W_std=1.1, b_std=0.1)),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv_transpose2d_circular": (
        _body(kl.ConvTranspose(C, (3, 3), padding=CIRC, W_std=1.1, b_std=0.1)),
        X1_2D,
        X2_2D,
        {},
    ),
    "conv_transpose1d_circular_stride2_standard": (
        _body(
            kl.ConvTranspose(
                C, (4,), strides=(2,), padding=CIRC, W_std=1.1, b_std=0.1, parameterization="standard"
            ),
            (3,),
        ),
        X1_1D,
        X2_1D,
        {},
    ),
    "conv_transpose1d_valid_stride3": (
        _body(kl.ConvTranspose(C, (2,), strides=(3,), padding=VALID, W_std=1.1, b_std=0.1), (3,)),
        X1_1D,
        X2_1D,
        {},
    ),
    "conv_transpose1d_valid_stride3_global_pool": (
        _body(
            kl.Serial(
                kl.ConvTranspose(C, (2,), strides=(3,), padding=VALID, W_std=1.1, b_std=0.1),
                kl.GlobalAvgPool(),
            ),
            (3,),
        ),
        X1_1D,
        X2_1D,
        {},
    ),
    # Pooling.
    "avg_pool_valid_strides": (_pooled(kl.AvgPool((2, 2), strides=(2, 2))), X1_2D, X2_2D, {}),
    "avg_pool_same_normalize_edges": (
        _pooled(kl.AvgPool((3, 3), padding=SAME, normalize_edges=True)),
        X1_2D,
        X2_2D,
        {},
    ),
    "avg_pool_same_strides": (_pooled(kl.AvgPool((3, 2), strides=(2, 1), padding=SAME)), X1_2D, X2_2D, {}),
    "avg_pool_circular": (_pooled(kl.AvgPool((3, 3), strides=(2, 1), padding=CIRC)), X1_2D, X2_2D, {}),
    "avg_pool1d_same_normalize_edges_stride2": (
        _pooled(kl.AvgPool((3,), strides=(2,), padding=SAME, normalize_edges=True), (3,)),
        X1_1D,
        X2_1D,
        {},
    ),
    "sum_pool_same": (_pooled(kl.SumPool((2, 2), padding=SAME)), X1_2D, X2_2D, {}),
    "sum_pool_valid_strides": (_pooled(kl.SumPool((3, 2), strides=(1, 2))), X1_2D, X2_2D, {}),
    "global_avg_pool": (_pooled(kl.GlobalAvgPool()), X1_2D, X2_2D, {}),
    "global_sum_pool": (_pooled(kl.GlobalSumPool()), X1_2D, X2_2D, {}),
    "global_avg_pool3d": (_pooled(kl.GlobalAvgPool(), (2, 2, 1)), X1_3D, X2_3D, {}),
    # Normalisation: the normaliser is an empirical variance over finite channels.
    "layer_norm_channels": (
        kl.Serial(
            kl.Conv(64, (2, 2), padding=SAME, W_std=1.3, b_std=0.2),
            kl.LayerNorm(-1),
            kl.Conv(C, (2, 2), padding=SAME, W_std=1.1, b_std=0.1),
        ),
        X1_2D,
        X2_2D,
        {"width": 64, "bias_coef": 1.0},
    ),
    "layer_norm_spatial_and_channels": (
        kl.Serial(
            kl.Conv(64, (2, 2), padding=SAME, W_std=1.3, b_std=0.2),
            kl.LayerNorm((1, 2, 3), eps=0.1),
            kl.Conv(C, (2, 2), padding=SAME, W_std=1.1, b_std=0.1),
        ),
        X1_2D,
        X2_2D,
        {"width": 64, "bias_coef": 1.0},
    ),
    "layer_norm_then_relu": (
        kl.Serial(
            kl.Conv(64, (2,), padding=SAME, W_std=1.3, b_std=0.2),
            kl.LayerNorm((1, 2)),
            kl.Relu(),
            kl.Conv(C, (3,), padding=SAME, W_std=1.1, b_std=0.1),
        ),
        X1_1D,
        X2_1D,
        {"width": 64, "bias_coef": 2.0},
    ),
    # Dropout: every example, position and channel has its own mask.
    "dropout_train": (
        _body(kl.Serial(kl.Dropout(0.7), kl.Conv(C, (2, 2), padding=SAME, W_std=1.1, b_std=0.1))),
        X1_2D,
        X2_2D,
        {"keyed": True},
    ),
    # Dropout on the output units: each unit's NTK estimate is a two-valued product of
    # masks, far from Gaussian, so 8 units enter it (the NNGP averages all C).
    "dropout_train_after_readout": (
        kl.Serial(kl.Conv(C, (2, 2), padding=SAME, W_std=1.1, b_std=0.1), kl.Dropout(0.6)),
        X1_2D,
        X2_2D,
        {"keyed": True, "ntk_units": 8},
    ),
    # Flatten: a CNN without pooling.
    "flatten_after_conv": (
        _body(
            kl.Serial(
                kl.Conv(H, (2, 2), padding=VALID, W_std=1.1, b_std=0.1), kl.Flatten(), kl.Dense(C, 1.2, 0.1)
            ),
            (3, 3),
        ),
        X1_2D,
        X2_2D,
        {},
    ),
    # Two nonlinear layers: the O(1/width) bias is allowed for.
    "deep_myrtle_like": (
        kl.Serial(
            kl.Conv(32, (3, 3), padding=SAME, W_std=1.4, b_std=0.1),
            kl.Relu(),
            kl.Conv(32, (3, 3), padding=SAME, W_std=1.4, b_std=0.1),
            kl.Relu(),
            kl.AvgPool((2, 2), strides=(2, 2)),
            kl.Conv(C, (2, 2), padding=CIRC, W_std=1.0, b_std=0.1),
            kl.GlobalAvgPool(),
        ),
        X1_2D,
        X2_2D,
        {"width": 32, "bias_coef": 1.0},
    ),
}


# The default (unmarked) set: one pooled CNN (Conv SAME, Relu, Conv SAME, GlobalAvgPool;
# full spatial covariances of every layer, a random NTK) and the PRNG-keyed Dropout twin.
FAST = {"global_avg_pool", "dropout_train_after_readout"}
N_FAST, N_SLOW = 48, 128


def _params():
    for name in CASES:
        marks = [pytest.mark.slow] if name not in FAST else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_monte_carlo(name):
    net, x1, x2, kwargs = CASES[name]
    _check(net, x1, x2, n_samples=N_FAST if name in FAST else N_SLOW, label=name, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv2d_same", "conv_transpose2d_circular", "avg_pool_circular"])
def test_monte_carlo_same_inputs(name):
    # x2 = x1 as a separate batch: the cross kernel of identical examples equals cov1.
    net, x1, _, kwargs = CASES[name]
    _check(net, x1, x1, n_samples=N_SLOW, seed=1, label=name, **kwargs)


# --- regressions ---------------------------------------------------------------------------


def test_avg_pool_normalize_edges_under_jit():
    # The edge counts come from static shapes: computing them must not touch tracers.
    ka.kernel(kl.AvgPool((3,), padding=SAME, normalize_edges=True), X1_1D)


@pytest.mark.parametrize("cls", [kl.Conv, kl.ConvTranspose])
def test_finite_conv_bias_without_rank_promotion(cls):
    # Traced, not run: rank promotion (forbidden here) would fail at trace time.
    layer = cls(3, (2, 2), padding=SAME, b_std=0.1)
    out = jax.eval_shape(lambda x: layer.init(jr.key(0, impl="rbg"), (4, 4, 2))(x), X1_2D[0])
    assert out.shape == (4, 4, 3)


# --- bad input ---------------------------------------------------------------------------

X2D = np.asarray(X1_2D)
X1D = np.asarray(X1_1D)
XFC = np.asarray(X1_2D[:, 0, 0, :])


def _gaussian_2d(*layers):
    return kl.Serial(kl.Conv(2, (2, 2), padding=SAME), *layers)


BAD = {
    "2-D filter on a 1-D sequence": (
        lambda: ka.kernel(kl.Conv(2, (3, 3)), X1D),
        ValueError,
        r"`Conv` has a 2-D window.*in_shape=\(6, 2\)",
    ),
    "2-D transposed filter on a 1-D sequence": (
        lambda: ka.kernel(kl.ConvTranspose(2, (3, 3)), X1D),
        ValueError,
        "`ConvTranspose` has a 2-D window",
    ),
    "2-D filter, init on a 1-D sequence": (
        lambda: kl.ConvLocal(2, (3, 3)).init(jr.key(0), (6, 2)),
        ValueError,
        "`ConvLocal` has a 2-D window",
    ),
    "filter larger than the input with VALID": (
        lambda: ka.kernel(kl.Conv(2, (5, 3)), X2D),
        ValueError,
        r"`Conv`: filter \(5, 3\) with padding='VALID' is larger than the input",
    ),
    "local filter larger than the input with VALID": (
        lambda: ka.kernel(kl.ConvLocal(2, (1, 5)), X2D),
        ValueError,
        "`ConvLocal`: filter .* is larger",
    ),
    "pool window larger than the input with VALID": (
        lambda: ka.kernel(_gaussian_2d(kl.AvgPool((5, 5))), X2D),
        ValueError,
        "`AvgPool`: window .* is larger",
    ),
    "unknown padding": (
        lambda: kl.Conv(2, (3, 3), padding="same "),
        ValueError,
        r"`Conv\(padding=...\)` must be one of",
    ),
    "unknown pool padding": (
        lambda: kl.AvgPool((2,), padding="FULL"),
        ValueError,
        r"`AvgPool\(padding=...\)` must be one of",
    ),
    "padding not a string": (
        lambda: kl.ConvTranspose(2, (2,), padding=3),
        ValueError,
        r"`ConvTranspose\(padding=...\)`",
    ),
    "strides of the wrong length": (
        lambda: kl.Conv(2, (3, 3), strides=(1,)),
        ValueError,
        r"`Conv\(strides=...\)` must have 2 entries",
    ),
    "filter of zero size": (
        lambda: kl.Conv(2, (0, 3)),
        ValueError,
        r"`Conv\(filter_shape=...\)` must be a non-empty tuple",
    ),
    "filter not a tuple": (lambda: kl.Conv(2, 3), TypeError, r"`Conv\(filter_shape=...\)`"),
    "2-D pool on a 1-D sequence": (
        lambda: ka.kernel(kl.Serial(kl.Conv(2, (2,)), kl.AvgPool((2, 2))), X1D),
        ValueError,
        "`AvgPool` has a 2-D window",
    ),
    "2-D sum pool on a 1-D sequence": (
        lambda: ka.kernel(kl.Serial(kl.Conv(2, (2,)), kl.SumPool((2, 2))), X1D),
        ValueError,
        "`SumPool` has a 2-D window",
    ),
    "GlobalAvgPool without spatial axes": (
        lambda: ka.kernel(kl.Serial(kl.Dense(2), kl.GlobalAvgPool()), XFC),
        ValueError,
        "`GlobalAvgPool` needs inputs with at least 2 axes",
    ),
    "GlobalSumPool without spatial axes": (
        lambda: ka.kernel(kl.GlobalSumPool(), XFC),
        ValueError,
        "`GlobalSumPool` needs inputs with at least 2",
    ),
    "diagonal_spatial with AvgPool": (
        lambda: ka.kernel(_gaussian_2d(kl.AvgPool((2, 2)), kl.Flatten()), X2D, diagonal_spatial=True),
        ValueError,
        "`diagonal_spatial=True` was requested, but `AvgPool` needs covariances between",
    ),
    "diagonal_spatial with GlobalAvgPool": (
        lambda: ka.kernel(_gaussian_2d(kl.Relu(), kl.GlobalAvgPool()), X2D, diagonal_spatial=True),
        ValueError,
        "`diagonal_spatial=True` was requested, but `GlobalAvgPool`",
    ),
    "diagonal_spatial with SumPool in a branch": (
        lambda: ka.kernel(
            _gaussian_2d(kl.FanInSum(kl.Identity(), kl.SumPool((1, 1))), kl.Flatten()),
            X2D,
            diagonal_spatial=True,
        ),
        ValueError,
        "`diagonal_spatial=True` was requested, but `SumPool`",
    ),
    "mask_constant a string": (
        lambda: ka.kernel(kl.Conv(2, (2, 2)), X2D, mask_constant="pad"),
        TypeError,
        "`mask_constant` must be",
    ),
    "mask_constant an array": (
        lambda: ka.kernel(kl.Conv(2, (2, 2)), X2D, mask_constant=jnp.zeros(2)),
        TypeError,
        "`mask_constant` must be",
    ),
    "mask_constant complex": (
        lambda: ka.kernel(kl.Conv(2, (2, 2)), X2D, mask_constant=1j),
        TypeError,
        "`mask_constant` must be",
    ),
    "Dropout on the inputs": (
        lambda: ka.kernel(kl.Dropout(0.5), X2D),
        ValueError,
        "`Dropout` cannot be applied to the inputs",
    ),
    "Dropout first in a network": (
        lambda: ka.kernel(kl.Serial(kl.Dropout(0.5), kl.Conv(2, (2, 2))), X2D),
        ValueError,
        "`Dropout` cannot be applied to the inputs",
    ),
    "Dropout rate 0": (lambda: kl.Dropout(0.0), ValueError, r"`Dropout\(rate=...\)` must be positive"),
    "Dropout rate negative": (
        lambda: kl.Dropout(-0.2),
        ValueError,
        r"`Dropout\(rate=...\)` must be positive",
    ),
    "Dropout rate above 1": (
        lambda: kl.Dropout(1.5),
        ValueError,
        r"`Dropout\(rate=...\)` is a keep probability in \(0, 1\]",
    ),
    "Dropout unknown mode": (lambda: kl.Dropout(0.5, mode="eval"), ValueError, r"`Dropout\(mode=...\)`"),
    "LayerNorm over spatial axes only": (
        lambda: ka.kernel(_gaussian_2d(kl.LayerNorm(axis=(1, 2))), X2D),
        ValueError,
        r"`LayerNorm\(axis=\(1, 2\)\)` must include the channel axis",
    ),
    "LayerNorm over one spatial axis": (
        lambda: ka.kernel(_gaussian_2d(kl.LayerNorm(axis=1)), X2D),
        ValueError,
        r"`LayerNorm\(axis=\(1,\)\)` must include the channel axis",
    ),
    "LayerNorm axis out of range": (
        lambda: ka.kernel(_gaussian_2d(kl.LayerNorm(axis=(5, -1))), X2D),
        ValueError,
        r"`LayerNorm\(axis=\(5, -1\)\)` is out of range",
    ),
}


def _argument(pattern: str) -> str | None:
    m = re.search(r"`(?:\w+\\\()?(\w+)", pattern)
    return m.group(1) if m else None


# Arguments that jaxtyping/beartype's TypeError names where kernelalg's own check would
# have named the layer.
ARGUMENT = {
    "unknown padding": "padding",
    "unknown pool padding": "padding",
    "padding not a string": "padding",
    "filter not a tuple": "filter_shape",
    "Dropout unknown mode": "mode",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_clear_error(name):
    call, exc, pattern = BAD[name]
    # Under the suite's jaxtyping/beartype hook a wrongly typed argument is caught by its
    # annotation before kernelalg's own check; that TypeError names the parameter too.
    with pytest.raises((exc, TypeError)) as info:
        call()
    msg = str(info.value)
    if re.search(pattern, msg):
        assert isinstance(info.value, exc), (type(info.value), msg)
        return
    arg = ARGUMENT.get(name) or _argument(pattern)
    assert isinstance(info.value, TypeError), msg
    assert arg is not None and f"parameter '{arg}'" in msg, (pattern, msg)
