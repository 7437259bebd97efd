r"""Assertions that a kernel is a kernel, and that it is the kernel of its finite twin.

`assert_monte_carlo_agreement` is the independent oracle for every layer: it samples
finite networks from `layer.init`, averages their empirical NNGP and NTK, and compares
the averages to `kernelalg.kernel` with a tolerance derived from the samples
themselves (their standard error) and from the width (the finite-width bias), rather
than a fixed constant.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._entry import kernel as _kernel
from ..layers._base import AbstractLayer
from ..ops._layout import zip_axes


def _eps(dtype) -> float:
    return float(jnp.finfo(jnp.dtype(dtype)).eps)


def default_rtol(dtype) -> float:
    r"""$\sqrt{\epsilon}$ of `dtype` ($1.5 \cdot 10^{-8}$ in float64, $3.5 \cdot
    10^{-4}$ in float32).

    Arc-cosine type duals have an infinite slope at perfect correlation, so an entry
    that is exact up to round-off $\epsilon$ in $c$ can be off by $\sqrt\epsilon$
    after one such layer; this is the relative accuracy every kernel can promise.
    """
    return math.sqrt(_eps(dtype))


def assert_symmetric_psd(matrix: Float[ArrayLike, "n n"], *, rtol: float | None = None) -> None:
    r"""Assert that `matrix` is symmetric positive semi-definite, up to round-off.

    Checks $|M - M^\top| \le \text{rtol} \cdot \max|M|$ entrywise and
    $\lambda_{\min}(\tfrac12(M + M^\top)) \ge -\text{rtol} \cdot n \cdot
    \max(\lambda_{\max}, 0)$: the eigenvalues of a perturbation $M + E$ of a PSD matrix
    move by at most $\|E\|_2 \le n \max|E_{ij}|$ (Weyl), so with entries accurate to
    `rtol` relative to the largest, no eigenvalue of an exactly PSD matrix can appear
    below this bound.

    **Arguments:**

    - `matrix`: a square matrix, e.g. `kernel.nngp` of `x` with itself (no spatial
      axes).
    - `rtol`: relative accuracy of the entries; defaults to `default_rtol(dtype)`,
      $\sqrt\epsilon$.

    **Raises:** `AssertionError` naming the asymmetry or the negative eigenvalue.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"`matrix` must be square; got shape {m.shape}.")
    if rtol is None:
        rtol = default_rtol(m.dtype)
    if not np.all(np.isfinite(m)):
        raise AssertionError(f"matrix has non-finite entries:\n{m}")
    m = m.astype(np.float64)
    scale = float(np.max(np.abs(m), initial=0.0))
    asym = float(np.max(np.abs(m - m.T), initial=0.0))
    if asym > rtol * scale:
        raise AssertionError(
            f"matrix is not symmetric: max |M - M^T| = {asym:.3e} > rtol * max|M| = {rtol:.1e} * {scale:.3e}."
        )
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    bound = -rtol * m.shape[0] * max(float(eig[-1]), 0.0)
    if eig[0] < bound:
        raise AssertionError(
            f"matrix is not positive semi-definite: smallest eigenvalue {eig[0]:.3e} < "
            f"{bound:.3e} (-rtol * n * largest eigenvalue {eig[-1]:.3e})."
        )


class MonteCarloReport(eqx.Module):
    r"""What `assert_monte_carlo_agreement` observed.

    **Fields:**

    - `nngp_z`, `ntk_z`, `cov_z`: the largest $|\hat{\mathcal K} - \mathcal K| / \mathrm{se}$
      over the entries of the cross kernel, its NTK, and the variances `cov1`/`cov2`
      (entries whose standard error is at round-off level, e.g. a deterministic NTK,
      are left out; they are checked against round-off alone). `ntk_z` is `None`
      when the NTK was not compared.
    - `nngp`, `ntk`: the Monte Carlo estimates on the concatenated inputs
      $[x_1; x_2]$, shape `(n1 + n2, n1 + n2, *spatial)`.
    - `nngp_se`, `ntk_se`: their standard errors.
    - `n_samples`: the number of finite networks averaged.
    """

    nngp_z: float
    ntk_z: float | None
    cov_z: float
    nngp: Array
    nngp_se: Array
    ntk: Array | None
    ntk_se: Array | None
    n_samples: int = eqx.field(static=True)


def _parameter_spec(model: eqx.Module):
    # The parameters of a finite twin are its weight and bias arrays. Array leaves that
    # sit inside an `AbstractLayer` held by the twin (an activation's `a`, `b`, ...)
    # are hyperparameters, as in neural-tangents where they are Python constants: they
    # are not differentiated. (FiniteDense's `W_std`/`b_std` are read through
    # stop_gradient and contribute zero either way.)
    def is_layer(node):
        return isinstance(node, AbstractLayer)

    return jax.tree_util.tree_map(
        lambda node: False if is_layer(node) else eqx.is_inexact_array(node), model, is_leaf=is_layer
    )


def _channel_mean_outer(a: Array, b: Array) -> Array:
    # a: (N, *S, C), b: (M, *S, C) -> (N, M, *zipped S): mean over channels of a b.
    n, m, c = a.shape[0], b.shape[0], a.shape[-1]
    spatial = a.shape[1:-1]
    out = jnp.tensordot(a, b, axes=((a.ndim - 1,), (b.ndim - 1,)), precision=jax.lax.Precision.HIGHEST)
    # tensordot gives (N, *S, M, *S): move M next to N, then zip the spatial axes.
    out = jnp.moveaxis(out, 1 + len(spatial), 1) / c
    return zip_axes(out, 2) if spatial else out.reshape(n, m)


def _network_kernels(model: eqx.Module, x: Array, compute_ntk: bool, ntk_units: int | None):
    """Empirical NNGP and NTK of one finite network on the batch `x`."""
    params, static = eqx.partition(model, _parameter_spec(model))

    def apply(p, xi):
        return eqx.combine(p, static)(xi)

    y = jax.vmap(lambda xi: apply(params, xi))(x)
    nngp = _channel_mean_outer(y, y)
    if not compute_ntk:
        return nngp, None
    if not jax.tree_util.tree_leaves(params):
        return nngp, jnp.zeros_like(nngp)  # no parameters, no tangent kernel
    units = y.shape[-1] if ntk_units is None else min(ntk_units, y.shape[-1])

    # The empirical NTK of output unit k is sum_p df_k(x)/dp df_k(x')/dp. Each
    # example's Jacobian is taken separately (vmap over examples), so the cost is
    # N * units reverse passes through one example, not through the whole batch.
    def jac(xi):
        return jax.jacrev(lambda p: apply(p, xi)[..., :units])(params)

    jacs = jax.vmap(jac)(x)  # leaves: (N, *S, units, *leaf)
    lead = y.ndim
    ntk = jnp.zeros(nngp.shape, nngp.dtype)
    for leaf in jax.tree_util.tree_leaves(jacs):
        ntk = ntk + _unit_gram(leaf.reshape(leaf.shape[:lead] + (-1,)))
    return nngp, ntk


@eqx.filter_jit
def _chunk_kernels(models, n, x, compute_ntk, ntk_units, batch_size):
    # The index rides along so that `lax.map` has a leading axis to map over even when
    # the twin has no parameters at all (`Identity`, `Flatten`).
    index = jnp.arange(n)

    def one(args):
        _, model = args
        return _network_kernels(model, x, compute_ntk, ntk_units)

    return jax.lax.map(one, (index, models), batch_size=batch_size)


# Budget, in array entries, for the parameters of the networks held at once and for the
# Jacobians computed at once: 2^24 float64 entries are 128 MiB.
_MEMORY = 2**24


def _largest_divisor(n: int, at_most: int) -> int:
    at_most = max(1, min(n, at_most))
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def _sample_kernels(layer, x, keys, compute_ntk: bool, ntk_units: int | None, chunk, batch_size):
    # Networks are sampled outside jit: `init` then runs primitive by primitive, each
    # compiled once per shape and cached across layers, where a jitted `init` would
    # recompile the PRNG (slow to compile on CPU) for every layer structure.
    in_shape = tuple(x.shape[1:])
    n = keys.shape[0]
    shapes = jax.eval_shape(lambda k: layer.init(k, in_shape), keys[0])
    n_params = max(1, sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes)))
    out_size = math.prod(layer.out_shape(in_shape)[:-1]) * (ntk_units or layer.out_shape(in_shape)[-1])
    if chunk is None:
        chunk = _largest_divisor(n, _MEMORY // n_params)
    if batch_size is None:
        per_network = x.shape[0] * out_size * n_params if compute_ntk else n_params
        batch_size = _largest_divisor(chunk, _MEMORY // per_network)
    nngps, ntks = [], []
    for start in range(0, n, chunk):
        models = eqx.filter_vmap(lambda k: layer.init(k, in_shape))(keys[start : start + chunk])
        nngp, ntk = _chunk_kernels(models, chunk, x, compute_ntk, ntk_units, batch_size)
        nngps.append(nngp)
        ntks.append(ntk)
    return jnp.concatenate(nngps), None if not compute_ntk else jnp.concatenate(ntks)


def _unit_gram(flat: Array) -> Array:
    # flat: (N, *S, u, P). Returns mean over units of the (N, N, *zipped S) Gram matrix.
    n, u = flat.shape[0], flat.shape[-2]
    spatial = flat.shape[1:-2]
    a = jnp.moveaxis(flat, -2, 0)  # (u, N, *S, P)
    a = a.reshape((u, -1, a.shape[-1]))  # (u, N*S, P)
    g = jnp.einsum("uip,ujp->ij", a, a, precision=jax.lax.Precision.HIGHEST) / u
    g = g.reshape((n,) + spatial + (n,) + spatial)
    g = jnp.moveaxis(g, 1 + len(spatial), 1)
    return zip_axes(g, 2) if spatial else g


def _batch_diag(x: Array) -> Array:
    return jnp.moveaxis(jnp.diagonal(x, axis1=0, axis2=1), -1, 0)


def assert_monte_carlo_agreement(
    layer: AbstractLayer,
    x1: Float[ArrayLike, "n1 ..."],
    x2: Float[ArrayLike, "n2 ..."] | None = None,
    *,
    key: PRNGKeyArray,
    n_samples: int,
    width: int | None = None,
    bias_coef: float = 1.0,
    z: float = 5.0,
    compute_ntk: bool = True,
    ntk_units: int | None = 2,
    chunk: int | None = None,
    batch_size: int | None = None,
) -> MonteCarloReport:
    r"""Assert that finite networks sampled from `layer.init` have, on average, the
    kernels `kernelalg.kernel(layer, x1, x2)` computes.

    **The estimate.** For $S$ = `n_samples` networks $f^{(s)}$ with $C$ output
    channels, on the concatenated inputs $X = [x_1; x_2]$,

    $$\hat{\mathcal K}^{(s)}(x, x') = \frac1C \sum_{k=1}^{C} f^{(s)}_k(x) f^{(s)}_k(x'),
    \qquad
    \hat\Theta^{(s)}(x, x') = \frac1U \sum_{k=1}^{U} \sum_{p}
      \frac{\partial f^{(s)}_k(x)}{\partial p}\frac{\partial f^{(s)}_k(x')}{\partial p},$$

    where $p$ runs over the twin's weight and bias arrays (array hyperparameters of
    activations held by the twin are not parameters, as in neural-tangents) and $U$ =
    `ntk_units` output channels enter the NTK. Output channels of a final affine layer
    are i.i.d. given the layers below, so each is a sample of the NNGP; for the NTK,
    channels share every layer but the readout, so a few (`U`) carry almost all the
    information at a fraction of the cost of all $C$. Spatial outputs give the
    covariance of every position pair, in kernelalg's zipped order.

    **The tolerance.** The $S$ per-network estimates are i.i.d., so their mean
    $\bar{\mathcal K}$ has standard error $\mathrm{se} = s/\sqrt S$ with $s$ their
    sample standard deviation, entry by entry; by the central limit theorem
    $(\bar{\mathcal K} - \mathbb E\hat{\mathcal K})/\mathrm{se}$ is approximately
    standard normal (Student-$t_{S-1}$). Every entry must satisfy

    $$|\bar{\mathcal K} - \mathcal K| \le z\,\mathrm{se} + \texttt{bias\_coef}\,
      \frac{\kappa}{\texttt{width}} + \sqrt{\epsilon}\,\kappa,\qquad
      \kappa = \max_x \bar{\mathcal K}(x, x) \ \ge\ \max_{x,x'}|\mathcal K(x, x')|$$

    (the last by Cauchy–Schwarz; $\sqrt\epsilon$ is round-off, see `default_rtol`).
    With $S \ge 100$, $z = 5$ makes a false alarm on any of a hundred entries rarer
    than $10^{-4}$ under normality (heavier tails, e.g. of $x^3$, call for more
    samples), and the seed is fixed, so a test either always passes or always fails.

    *Finite-width bias.* If every nonlinearity acts on pre-activations that are exactly
    Gaussian given the inputs (one hidden nonlinear layer, possibly in several
    independent branches, residual sums with an identity, products of independent
    branches), $\mathbb E\hat{\mathcal K}$ and $\mathbb E\hat\Theta$ equal the
    infinite-width kernels at any width: each is a sum of products of independent
    factors whose expectations are the dual activations. Pass `width=None` (no bias
    term). With $L \ge 2$ nonlinear layers, layer $l+1$ sees the empirical covariance
    $\hat K_l = K_l + \delta$ of width-$n$ layer $l$, with $\mathbb E\delta = 0$ and,
    by Wick's theorem, $\mathrm{Var}\,\delta_{ij} = (K_{ii}K_{jj} + K_{ij}^2)/n
    \le 2\kappa^2/n$. A second-order expansion of the next dual $\hat\phi$ gives
    $\mathbb E\hat\phi(\hat K) - \hat\phi(K) = \tfrac12 \mathrm{tr}(H\,\mathrm{Var}\,\delta)
    + O(n^{-2})$, i.e. $O(\kappa/n)$ per layer for duals whose Hessian is
    $O(1/\kappa)$ (homogeneous duals such as ReLU's, or smooth ones on unit-scale
    variances); the errors of successive layers add to first order. So the bias is
    at most `bias_coef` $\kappa/n$ with `bias_coef` proportional to $L - 1$ (Yaida
    2020; Hanin & Nica 2019 for the $1/n$ corrections). Measured with $8192$ networks
    of widths 16 and 32, ReLU, erf and sine networks of depth $L \le 4$ have
    $|\text{bias}| \le 0.25\,(L - 1)\,\kappa/n$ on every entry of both kernels, so
    `bias_coef = L - 1` has a margin of four. Pass the narrowest hidden `width`.

    **Arguments:**

    - `layer`: a kernelalg layer whose finite twin has `layer.init`.
    - `x1`, `x2`: inputs (batch first, channels last); `x2=None` compares $x_1$ with
      itself.
    - `key`: PRNG key for the networks.
    - `n_samples`: number of finite networks $S$ (at least 2; 32 or more for a
      reliable standard error).
    - `width`: narrowest hidden width of the finite twin, for the bias term; `None`:
      no bias (see above).
    - `bias_coef`: the bias constant: the number of nonlinear layers less one.
    - `z`: allowed multiple of the standard error.
    - `compute_ntk`: also compare the NTK.
    - `ntk_units`: output channels entering $\hat\Theta$ (`None`: all).
    - `chunk`: networks held in memory at once (`None`: as many as fit in 128 MiB,
      dividing `n_samples`).
    - `batch_size`: networks whose Jacobians are computed at once, dividing `chunk`
      (`None`: as many Jacobians of `n1 + n2` examples by `ntk_units` outputs as fit
      in 128 MiB).

    **Returns:** a `MonteCarloReport` with the observed largest $z$-scores.

    **Raises:** `AssertionError` listing the worst entry of each failing kernel.
    """
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"`n_samples` must be an int >= 2 to estimate a standard error; got {n_samples!r}.")
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"`width` must be a positive int or None; got {width!r}.")
    x1 = jnp.asarray(x1)
    exact = _kernel(layer, x1, x2, compute_ntk=compute_ntk, diagonal_batch=True)
    n1 = x1.shape[0]
    x = x1 if x2 is None else jnp.concatenate([x1, jnp.asarray(x2, x1.dtype)], axis=0)
    keys = jax.random.split(key, n_samples)
    nngp_s, ntk_s = _sample_kernels(layer, x, keys, compute_ntk, ntk_units, chunk, batch_size)

    def stats(samples):
        mean = jnp.mean(samples, axis=0)
        se = jnp.std(samples, axis=0, ddof=1) / math.sqrt(n_samples)
        return np.asarray(mean), np.asarray(se)

    dtype = exact.nngp.dtype
    roundoff = default_rtol(dtype)
    failures = []

    def check(name, mc, se, want, kappa):
        want = np.asarray(want)
        if not (np.all(np.isfinite(want)) and np.all(np.isfinite(mc)) and np.isfinite(kappa)):
            failures.append(
                f"{name}: non-finite values (kernel finite: {np.all(np.isfinite(want))}, "
                f"Monte Carlo finite: {np.all(np.isfinite(mc))})."
            )
            return float("nan")
        bias = 0.0 if width is None else bias_coef * kappa / width
        slack = bias + roundoff * kappa
        err = np.abs(mc - want)
        excess = err - (z * se + slack)
        random = se > roundoff * kappa
        zs = np.where(random, err / np.where(random, se, 1.0), 0.0)
        worst = float(np.max(zs, initial=0.0))
        if np.any(excess > 0):
            i = np.unravel_index(np.argmax(excess), err.shape)
            failures.append(
                f"{name}: Monte Carlo {mc[i]:.6g} ± {se[i]:.2g} (se) vs kernel {want[i]:.6g} at "
                f"index {tuple(int(j) for j in i)}; |diff| = {err[i]:.3g} > {z} se + bias "
                f"{bias:.2g} + round-off {roundoff * kappa:.2g}. Largest z-score {worst:.2f}."
            )
        return worst

    def cross(a):
        return a[:n1, :n1] if x2 is None else a[:n1, n1:]

    nngp, nngp_se = stats(nngp_s)
    diag = _batch_diag(jnp.asarray(nngp))
    kappa = float(np.max(np.abs(np.asarray(diag))))
    nngp_z = check("nngp", cross(nngp), cross(nngp_se), exact.nngp, kappa)
    d, dse = np.asarray(diag), np.asarray(_batch_diag(jnp.asarray(nngp_se)))
    cov_z = check("cov1", d[:n1], dse[:n1], exact.cov1, kappa)
    if exact.cov2 is not None:
        cov_z = max(cov_z, check("cov2", d[n1:], dse[n1:], exact.cov2, kappa))
    ntk = ntk_se = None
    ntk_z = None
    if compute_ntk:
        ntk, ntk_se = stats(ntk_s)
        kappa_ntk = float(np.max(np.abs(np.asarray(_batch_diag(jnp.asarray(ntk))))))
        ntk_z = check("ntk", cross(ntk), cross(ntk_se), exact.ntk, kappa_ntk)
    if failures:
        raise AssertionError(
            f"Monte Carlo over {n_samples} finite networks disagrees with `kernelalg.kernel` "
            f"for {type(layer).__name__}:\n  " + "\n  ".join(failures)
        )
    return MonteCarloReport(
        nngp_z=nngp_z,
        ntk_z=ntk_z,
        cov_z=cov_z,
        nngp=jnp.asarray(nngp),
        nngp_se=jnp.asarray(nngp_se),
        ntk=None if ntk is None else jnp.asarray(ntk),
        ntk_se=None if ntk_se is None else jnp.asarray(ntk_se),
        n_samples=n_samples,
    )
