"""Marginal likelihood of GP regression with a network kernel."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from ._common import KernelLike, Layout, check_nonnegative, kernel_array, shape_of, targets
from ._linalg import CholeskyFactor, cholesky_factor


def marginal_log_likelihood(
    k_train_train: KernelLike,
    y_train: Float[ArrayLike, "..."],
    *,
    get: Literal["nngp", "ntk"] = "nngp",
    diag_reg: Real[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: int | tuple[int, ...] = (-1,),
    auto_jitter: bool = False,
) -> Float[Array, ""]:
    r"""Log marginal likelihood of the targets under the GP with this kernel.

    With $K$ the regularised $N \times N$ kernel ($K_{dd} + \epsilon I$) and the $C$
    traced output columns $y_c$ independent given $K$ (the kernel is read as
    $K \otimes I_C$):

    $$\log p(Y) = -\frac{1}{2} \sum_{c=1}^{C} y_c^\top K^{-1} y_c
    - \frac{C}{2} \log\det K - \frac{N C}{2} \log 2\pi$$

    (Rasmussen & Williams 2006, eq. 2.30), computed from one Cholesky factorisation.
    Differentiable with respect to the kernel (hence, through `kernelalg.kernel`, to
    the layers' hyperparameters: `W_std`, `b_std`, activation parameters), the targets
    and `diag_reg`; maximise it to select hyperparameters (empirical Bayes). The jitter
    found by `auto_jitter` is held constant under differentiation.

    **Arguments:**

    - `k_train_train`: kernel of the training inputs with themselves (a `Kernel`, an
      object with `nngp`/`ntk`, or an array).
    - `y_train`: training targets.
    - `get`: which kernel of a `Kernel` is the prior covariance: `"nngp"` (the Bayesian
      network) or `"ntk"` (the NTKGP); ignored for arrays.
    - `diag_reg`: $\epsilon$, relative to the mean diagonal unless
      `diag_reg_absolute_scale`; it is the variance of observation noise, in those
      units.
    - `diag_reg_absolute_scale`: read `diag_reg` in absolute units.
    - `trace_axes`: output axes along which the kernel is a multiple of the identity.
    - `auto_jitter`: as in `gp_inference`.

    **Returns:** $\log p(Y)$, a scalar. A kernel that is not positive definite to
    working precision raises (listing causes and fixes) rather than returning NaN.
    """
    if get not in ("nngp", "ntk"):
        raise ValueError(f"`get` must be 'nngp' or 'ntk'; got {get!r}.")
    check_nonnegative(diag_reg, "diag_reg")
    layout = Layout.of(shape_of(y_train, "y_train"), trace_axes)
    name = "k_train_train" if isinstance(k_train_train, (np.ndarray, np.generic)) else f"k_train_train.{get}"
    k = kernel_array(k_train_train, get, "k_train_train")
    layout.train_shape(k, name)
    fac, _ = cholesky_factor(k, diag_reg, diag_reg_absolute_scale, auto_jitter, name)
    return _mll(fac, targets(y_train, "y_train", k.dtype), layout)


@eqx.filter_jit
def _mll(fac: CholeskyFactor, y: Array, layout: Layout) -> Array:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        y = layout.flatten(y)
        n, c = y.shape
        fit = jnp.sum(fac.half_solve(y) ** 2)
        return -0.5 * fit - 0.5 * c * fac.logdet() - 0.5 * n * c * jnp.log(2 * jnp.asarray(np.pi, y.dtype))
