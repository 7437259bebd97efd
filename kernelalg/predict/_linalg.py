"""Factorisations of a train-train kernel, with diagnostics instead of silent NaNs."""

import abc
import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from ._common import Layout, check, finite_message, is_concrete, to_matrix


_CAUSES = (
    "Likely causes and fixes: (1) duplicate or nearly duplicate training inputs with "
    "`diag_reg=0`: remove them or pass a positive `diag_reg` (e.g. 1e-6; it is relative "
    "to the mean diagonal unless `diag_reg_absolute_scale=True`); (2) float32 round-off "
    "({dtype} kernel): compute the kernel from float64 inputs with "
    "`jax.config.update('jax_enable_x64', True)`, or raise `diag_reg`; (3) a matrix that "
    "is not a covariance (not positive semi-definite): check how it was computed. "
    "`auto_jitter=True` adds the smallest sufficient jitter automatically and reports "
    "it as `.jitter`."
)


def regularizer(
    a: Float[Array, "n n"], diag_reg: Real[ArrayLike, ""], diag_reg_absolute_scale: bool
) -> Float[Array, ""]:
    r"""The diagonal added to `a`: `diag_reg`, times $\operatorname{tr}(a)/n$ unless absolute."""
    reg = jnp.asarray(diag_reg, a.dtype)
    if diag_reg_absolute_scale:
        return reg
    return reg * jnp.trace(a) / a.shape[0]


# A condition number beyond 1 / (10 eps) is "singular to working precision", as
# LAPACK's and MATLAB's rcond < eps test, with a factor 10 so that exactly singular
# matrices (duplicate inputs), whose computed smallest eigenvalue is a few eps
# lambda_max of either sign, are caught. A stricter sqrt(N) eps lambda_max flagged
# float32 kernels of condition 1e5 at N = 4096 whose solves are good to 1e-2.
_SINGULAR = 10.0


def _threshold(n: int, dtype: Any, scale: Array) -> Array:
    # Eigenvalues are held to _SINGULAR eps lambda_max; for Cholesky, the squared pivots
    # (each >= lambda_min) to the same bound with the Frobenius norm (>= lambda_max).
    del n
    return float(_SINGULAR * np.finfo(dtype).eps) * scale


def _jitter_levels(n: int, dtype: Any, scale: Array) -> Array:
    """Automatic jitters to try after the requested one: $10^k \\cdot 10 \\epsilon s$ up to $s/10$."""
    del n
    base = float(_SINGULAR * np.finfo(dtype).eps)
    count = max(1, math.ceil(math.log10(0.1 / base))) if base < 0.1 else 1
    return scale * base * 10.0 ** jnp.arange(1, count + 1, dtype=dtype)


class _Diagnosis(NamedTuple):
    """What the compiled factorisations measure, for the checks made outside them."""

    # Flags are computed in the compiled call, so that checking them on concrete
    # values needs no further (compiled) operation.
    nonfinite: Int[Array, ""]  # entries that are NaN or infinite
    asymmetric: Bool[Array, ""]  # max |a - a.T| > sqrt(eps) max |a|
    asymmetry: Float[Array, ""]  # max |a - a.T|
    scale: Float[Array, ""]  # max |a|
    failed: Bool[Array, ""]  # not positive definite to working precision
    max_jitter: Float[Array, ""]  # the largest jitter `auto_jitter` would try


def _measure(a: Array) -> tuple[Array, _Diagnosis]:
    """`a` symmetrised (NaNs zeroed), and what the checks need (`failed` left False)."""
    finite = jnp.isfinite(a)
    nonfinite = jnp.sum(~finite)
    # NaNs are zeroed only so that the factorisation below runs; the check on
    # `nonfinite` raises before anything computed from them is returned.
    a = jnp.where(finite, a, 0)
    asym, scale = jnp.max(jnp.abs(a - a.T)), jnp.max(jnp.abs(a))
    asymmetric = asym > np.sqrt(np.finfo(a.dtype).eps) * scale
    d = _Diagnosis(nonfinite, asymmetric, asym, scale, jnp.array(False), jnp.zeros((), a.dtype))
    return (a + a.T) / 2, d


def _mean_diagonal(a: Array) -> Array:
    return jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(a))), jnp.finfo(a.dtype).tiny)


def _diagnosed(anchor: Any, d: _Diagnosis, name: str, size: int, dtype: Any) -> Any:
    """`anchor`, after checking finiteness and symmetry (in this order)."""
    anchor = check(
        anchor,
        np.asarray(d.nonfinite) > 0 if is_concrete(d.nonfinite) else d.nonfinite > 0,
        finite_message(name),
        lambda: f": {int(d.nonfinite)} of its {size} entries are NaN or infinite",
    )
    return check(
        anchor,
        d.asymmetric,
        f"`{name}` is not symmetric{{detail}}. A train-train kernel is the covariance of "
        "x_train with itself: compute it with `x2=None` (or the same inputs twice), and "
        "do not pass a test-train kernel in its place.",
        lambda: f": max |K - K^T| = {float(d.asymmetry):.3g} against max |K| = {float(d.scale):.3g}",
    )


@eqx.filter_jit
def _measure_kernel(k: Array) -> tuple[Array, _Diagnosis]:
    return _measure(to_matrix(k))


def symmetrized(a: Float[Array, "..."], name: str) -> Float[Array, "n n"]:
    """The kernel `a` as a symmetrised matrix, after checking that it is finite and symmetric."""
    sym, d = _measure_kernel(a)
    return _diagnosed(sym, d, name, a.size, a.dtype)


class AbstractFactor(eqx.Module):
    r"""A train-train kernel $K$ prepared for solves with $K + \epsilon I$.

    Subclassed by `CholeskyFactor` (dense factorisation) and `CGFactor` (conjugate
    gradients); `gp_inference` works with either.
    """

    kernel: eqx.AbstractVar[Float[Array, "n n"]]
    jitter: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def solve_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "n k"], Bool[Array, ""]]:
        r"""$(K + \epsilon I)^{-1} b$, and whether the solve failed."""

    def solve(self, b: Float[Array, "n k"]) -> Float[Array, "n k"]:
        r"""$(K + \epsilon I)^{-1} b$."""
        return self.solve_checked(b)[0]

    @abc.abstractmethod
    def quadratic_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "k k"], Bool[Array, ""]]:
        r"""$b^\top (K + \epsilon I)^{-1} b$ (symmetric), and whether the solve failed."""


class CholeskyFactor(AbstractFactor):
    r"""Cholesky factorisation of a regularised train-train kernel.

    $K + \epsilon I = L L^\top$ with $L$ lower triangular, where $K$ is the (symmetrised)
    kernel matrix and $\epsilon$ the `jitter`: `diag_reg` (scaled by the mean diagonal
    $\operatorname{tr}(K)/N$ unless `diag_reg_absolute_scale`) plus any jitter added by
    `auto_jitter=True`.

    **Fields:**

    - `kernel`: $K$, the symmetrised kernel flattened to an $N \times N$ matrix, without
      regularisation.
    - `cholesky`: $L$.
    - `jitter`: $\epsilon$, the total diagonal that was added.
    """

    kernel: Float[Array, "n n"]
    cholesky: Float[Array, "n n"]
    jitter: Float[Array, ""]

    def solve_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "n k"], Bool[Array, ""]]:
        r"""$(K + \epsilon I)^{-1} b$; a Cholesky solve does not fail once the factor exists."""
        return jsl.cho_solve((self.cholesky, True), b), jnp.array(False)

    def quadratic_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "k k"], Bool[Array, ""]]:
        r"""$b^\top (K + \epsilon I)^{-1} b = V^\top V$ with $V = L^{-1} b$: symmetric by construction."""
        v = self.half_solve(b)
        return v.T @ v, jnp.array(False)

    def half_solve(self, b: Float[Array, "n k"]) -> Float[Array, "n k"]:
        r"""$L^{-1} b$, so that $b^\top (K + \epsilon I)^{-1} b = \lVert L^{-1} b \rVert^2$."""
        return jsl.solve_triangular(self.cholesky, b, lower=True)

    def logdet(self) -> Float[Array, ""]:
        r"""$\log\det(K + \epsilon I) = 2 \sum_i \log L_{ii}$."""
        return 2 * jnp.sum(jnp.log(jnp.diagonal(self.cholesky)))


def _attempt(a: Array, jitter: Array) -> tuple[Array, Bool[Array, ""]]:
    n = a.shape[0]
    m = a + jitter * jnp.eye(n, dtype=a.dtype)
    chol = jnp.linalg.cholesky(m)
    pivots = jnp.diagonal(chol)
    ok = jnp.all(jnp.isfinite(chol)) & (
        jnp.min(pivots) ** 2 > _threshold(n, a.dtype, jnp.sqrt(jnp.sum(m**2)))
    )
    return chol, ok


@eqx.filter_jit
def _cholesky_core(
    k: Float[Array, "..."],
    diag_reg: Float[Array, ""],
    absolute: bool,
    auto: bool,
    rhs: Array | None,
    layout: Layout | None,
) -> tuple[CholeskyFactor, _Diagnosis, Array | None]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        a = to_matrix(k)
        sym, d = _measure(a)
        n = a.shape[0]
        jitter = regularizer(sym, diag_reg, absolute)
        chol, ok = _attempt(sym, jitter)
        levels = jax.lax.stop_gradient(_jitter_levels(n, a.dtype, _mean_diagonal(sym)))
        if auto:
            # The search is not differentiated: the jitter it finds is a constant, and the
            # factor is recomputed outside the loop so that gradients flow through `a` and
            # `diag_reg` (reverse-mode cannot go through a while loop).
            fixed, base = jax.lax.stop_gradient(sym), jax.lax.stop_gradient(jitter)

            def cond(state):
                k, ok = state
                return (~ok) & (k < levels.shape[0])

            def body(state):
                k, _ = state
                return k + 1, _attempt(fixed, base + levels[k])[1]

            k, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), jax.lax.stop_gradient(ok)))
            extra = jnp.where(k == 0, jnp.zeros((), a.dtype), levels[jnp.maximum(k - 1, 0)])
            jitter = jitter + extra
            chol, ok = jax.lax.cond(k == 0, lambda: (chol, ok), lambda: _attempt(sym, jitter))
        fac = CholeskyFactor(sym, chol, jitter)
        solved = None if rhs is None or layout is None else fac.solve(layout.flatten(rhs))
        return fac, d._replace(failed=~ok, max_jitter=levels[-1]), solved


def cholesky_factor(
    a: Float[Array, "..."],
    diag_reg: Real[ArrayLike, ""],
    diag_reg_absolute_scale: bool,
    auto_jitter: bool,
    name: str,
    rhs: Float[Array, "..."] | None = None,
    layout: Layout | None = None,
) -> tuple[CholeskyFactor, Float[Array, "n c"] | None]:
    r"""Check, regularise and factor the kernel `a` (zipped or a matrix); raise with fixes on failure.

    Also returns $(K + \epsilon I)^{-1}$ `layout.flatten(rhs)` (if given), from the same
    compiled call.
    """
    reg = jnp.asarray(diag_reg, a.dtype)
    fac, d, solved = _cholesky_core(a, reg, diag_reg_absolute_scale, auto_jitter, rhs, layout)
    out = _diagnosed((fac, solved), d, name, a.size, a.dtype)

    def detail():
        tried = f", after trying automatic jitter up to {float(d.max_jitter):.3g}" if auto_jitter else ""
        return f" (with diagonal jitter {float(fac.jitter):.3g}{tried})"

    return check(
        out,
        d.failed,
        f"`{name}` is not positive definite to working precision{{detail}}: its Cholesky "
        "factorisation failed or has a squared pivot below 10 eps |K|_F (condition number "
        "beyond about 1 / (10 eps)). " + _CAUSES.format(dtype=a.dtype),
        detail,
    )


class EigenFactor(eqx.Module):
    r"""Eigendecomposition of a regularised train-train kernel.

    $K + \epsilon I = V \operatorname{diag}(\lambda) V^\top$, with $\epsilon$ the `jitter`
    as in `CholeskyFactor`. Functions of the matrix act in this basis:
    $f(K + \epsilon I)\, b = V \operatorname{diag}(f(\lambda)) V^\top b$. Eigenvalues that
    round-off made negative are treated as zero by the predictors, as in
    neural-tangents.

    **Fields:**

    - `evals`: $\lambda$, ascending.
    - `evecs`: $V$, eigenvectors in columns.
    - `jitter`: $\epsilon$, the total diagonal that was added.
    """

    evals: Float[Array, " n"]
    evecs: Float[Array, "n n"]
    jitter: Float[Array, ""]

    def positive_definite(self) -> Bool[Array, ""]:
        """Whether the smallest eigenvalue is above $10 \\epsilon \\lambda_{max}$ (solves are meaningful)."""
        n = self.evals.shape[0]
        return self.evals[0] > _threshold(n, self.evals.dtype, jnp.max(jnp.abs(self.evals)))


def check_definite(anchor: Any, factor: EigenFactor, singular: Bool[ArrayLike, ""], name: str) -> Any:
    """`anchor`, after checking that `factor` can be inverted (`singular`, measured in a compiled call)."""

    def detail():
        return (
            f" (smallest eigenvalue {float(factor.evals[0]):.3g}, largest "
            f"{float(factor.evals[-1]):.3g}, jitter {float(factor.jitter):.3g})"
        )

    return check(
        anchor,
        singular,
        f"`{name}` is singular to working precision{{detail}}, so the infinite-time "
        "(`t=None`) prediction, which inverts it, is undefined. " + _CAUSES.format(dtype=factor.evals.dtype),
        detail,
    )


@eqx.filter_jit
def _eigen_core(
    k: Float[Array, "..."], diag_reg: Float[Array, ""], absolute: bool, auto: bool
) -> tuple[EigenFactor, _Diagnosis]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        a = to_matrix(k)
        sym, d = _measure(a)
        n = a.shape[0]
        jitter = regularizer(sym, diag_reg, absolute)
        evals, evecs = jnp.linalg.eigh(sym + jitter * jnp.eye(n, dtype=a.dtype))
        levels = jax.lax.stop_gradient(_jitter_levels(n, a.dtype, _mean_diagonal(sym)))
        if auto:
            # A shift of the diagonal shifts every eigenvalue and keeps the eigenvectors:
            # the smallest sufficient level of the schedule is found without refactoring.
            candidates = jnp.concatenate([jnp.zeros((1,), a.dtype), levels])
            top = jnp.max(jnp.abs(evals))
            good = jax.lax.stop_gradient(evals[0] + candidates > _threshold(n, a.dtype, top + candidates))
            extra = candidates[jnp.where(jnp.any(good), jnp.argmax(good), candidates.shape[0] - 1)]
            evals = evals + extra
            jitter = jitter + extra
        factor = EigenFactor(evals, evecs, jitter)
        return factor, d._replace(failed=~factor.positive_definite(), max_jitter=levels[-1])


def eigen_factor(
    a: Float[Array, "..."],
    diag_reg: Real[ArrayLike, ""],
    diag_reg_absolute_scale: bool,
    auto_jitter: bool,
    name: str,
) -> EigenFactor:
    """Check, regularise and eigendecompose the kernel `a` (zipped, or a matrix)."""
    fac, d = _eigen_core(a, jnp.asarray(diag_reg, a.dtype), diag_reg_absolute_scale, auto_jitter)
    return _diagnosed(fac, d, name, a.size, a.dtype)


# ------------------------------------------------------------ functions of the spectrum
# Gradient flow on the MSE $\frac{1}{2 |Y|} \lVert f - Y \rVert^2$ with kernel $K$ has
# $f_t - Y = e^{-K \tau} (f_0 - Y)$, $\tau = \eta t / |Y|$: the predictors need, per
# eigenvalue $\lambda$ and time, the three functions below. `tau=None` is
# $\tau = \infty$, where the caller has checked that $K$ is positive definite.
# Negative eigenvalues (round-off) count as zero.


def growth(evals: Float[Array, " n"], tau: Float[Array, "t 1"] | None) -> Float[Array, "t n"]:
    r"""$1 - e^{-\lambda \tau}$."""
    lam = jnp.maximum(evals, 0)
    if tau is None:
        return jnp.ones_like(lam)[None]
    return -jnp.expm1(-lam[None] * tau)


def growth_over(evals: Float[Array, " n"], tau: Float[Array, "t 1"] | None) -> Float[Array, "t n"]:
    r"""$(1 - e^{-\lambda \tau}) / \lambda$, equal to $\tau$ at $\lambda = 0$ (its limit)."""
    lam = jnp.maximum(evals, 0)
    if tau is None:
        return (1 / evals)[None]
    positive = lam > 0
    # Double `where` so that the unused branch has a finite gradient at lambda = 0.
    safe = jnp.where(positive, lam, 1)
    return jnp.where(positive[None], -jnp.expm1(-safe[None] * tau) / safe[None], tau)


def decay(evals: Float[Array, " n"], tau: Float[Array, "t 1"] | None) -> Float[Array, "t n"]:
    r"""$e^{-\lambda \tau}$."""
    lam = jnp.maximum(evals, 0)
    if tau is None:
        return jnp.zeros_like(lam)[None]
    return jnp.exp(-lam[None] * tau)
