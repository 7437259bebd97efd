"""Gradient flow on the mean squared error, in closed form; the largest stable learning rate."""

import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from ._common import (
    KernelLike,
    Layout,
    check_nonnegative,
    checked_finite,
    count_nonfinite,
    kernel_array,
    outputs,
    same_dtype,
    shape_of,
    targets,
    to_matrix,
)
from ._linalg import EigenFactor, check_definite, eigen_factor, growth, growth_over, symmetrized


Times = None | Real[ArrayLike, "*t"]


def scaled_times(t: Real[ArrayLike, "*t"], dtype: Any) -> Float[Array, "*t"]:
    """`t` as an array of the kernels' dtype."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(
        t, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"`t` must be None, a real scalar or an array of times; got {type(t).__name__}.")
    return jnp.asarray(t, dtype)


def check_predict_inputs(fx_train_0: object, fx_test_0: object, k_test_train: object) -> None:
    if fx_train_0 is None and fx_test_0 is None:
        raise ValueError(
            "Both `fx_train_0` and `fx_test_0` are None: nothing to predict. Pass the "
            "initial train outputs (0. for a zero-mean start) and/or the test outputs."
        )
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError(
            "`fx_test_0` was given without `k_test_train`: test predictions need the "
            "kernel between the test and the training inputs."
        )


def ntk_matrix(k: KernelLike, name: str) -> Array:
    """The NTK of `k` (the array itself if `k` is an array)."""
    return kernel_array(k, "ntk", name)


class GradientDescentMSE(eqx.Module):
    r"""Outputs of a network trained by gradient flow on MSE, returned by `gradient_descent_mse`.

    Holds the eigendecomposition of the regularised train-train kernel, from which
    every time is a matrix function. Call it as
    `predictor(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`.

    **Fields:**

    - `y_train`: the targets, in the kernel's dtype.
    - `eigen`: `EigenFactor` of $\Theta + \epsilon I$.
    - `learning_rate`: $\eta$.
    - `layout`: how the targets' axes split into kernel axes and `trace_axes`.
    """

    y_train: Float[Array, "..."]
    eigen: EigenFactor
    learning_rate: Float[Array, ""]
    layout: Layout = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        fx_train_0: Float[ArrayLike, "..."] | float | None = 0.0,
        fx_test_0: Float[ArrayLike, "..."] | float | None = None,
        k_test_train: KernelLike | None = None,
    ) -> Float[Array, "..."] | tuple[Float[Array, "..."], Float[Array, "..."]]:
        r"""Train and/or test outputs at time(s) `t`.

        With $\tau = \eta t / |Y|$ ($|Y|$ = `y_train.size`, as neural-tangents
        normalises the MSE):

        $$f_d(t) = Y + e^{-\Theta_{dd} \tau} (f_d(0) - Y), \qquad
        f_x(t) = f_x(0) - \Theta_{xd} \Theta_{dd}^{-1} (I - e^{-\Theta_{dd} \tau})
        (f_d(0) - Y),$$

        computed in the eigenbasis of $\Theta_{dd} + \epsilon I$
        (Lee et al. 2019, arXiv:1902.06720, eqs. 9-10). Zero eigenvalues take the limit
        $(1 - e^{-\lambda\tau})/\lambda \to \tau$, so singular kernels are fine at finite
        times.

        **Arguments:**

        - `t`: a time or an array of times of any shape, in units of the learning rate
          (fractional steps); outputs get `t.shape` as leading axes. `None` is
          $t = \infty$: train outputs are `y_train` and test outputs use
          $\Theta_{dd}^{-1}$, which must then be positive definite.
        - `fx_train_0`: train outputs at $t = 0$ (a scalar broadcasts); `None` skips
          the train predictions.
        - `fx_test_0`: test outputs at $t = 0$; `None` skips the test predictions.
        - `k_test_train`: test-train NTK (an array, or a `Kernel` whose `ntk` is used),
          needed for test predictions.

        **Returns:** `fx_train_t`, `fx_test_t`, or `(fx_train_t, fx_test_t)` when both
        initial outputs are given.
        """
        check_predict_inputs(fx_train_0, fx_test_0, k_test_train)
        lay, eig = self.layout, self.eigen
        dtype = eig.evals.dtype
        f0 = None if fx_train_0 is None else outputs(fx_train_0, self.y_train.shape, "fx_train_0", dtype)
        ktd = g0 = None
        x_shape = lay.x_shape
        if k_test_train is not None and fx_test_0 is not None:
            ktd = ntk_matrix(k_test_train, "k_test_train")
            same_dtype({"k_train_train": eig.evals, "k_test_train": ktd})
            x_shape = lay.test_shape(ktd, "k_test_train")
            g0 = outputs(fx_test_0, lay.out_shape(x_shape), "fx_test_0", dtype)
        tau = None if t is None else scaled_times(t, dtype)
        (fx_train, fx_test), singular, nonfinite = _mse_outputs(self, tau, f0, g0, ktd, x_shape)
        out = checked_finite(_pack(fx_train, fx_test), nonfinite)
        if t is None and ktd is not None:
            out = check_definite(out, eig, singular, "k_train_train")
        return out


@eqx.filter_jit
def _mse_outputs(
    p: GradientDescentMSE,
    t: Array | None,
    f0: Array | None,
    g0: Array | None,
    ktd: Array | None,
    x_shape: tuple[int, ...],
) -> tuple[tuple[Array | None, Array | None], Array, dict[str, Array]]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        lay, eig, y = p.layout, p.eigen, p.y_train
        f0 = None if f0 is None else jnp.broadcast_to(f0, y.shape)
        g0 = None if g0 is None else jnp.broadcast_to(g0, lay.out_shape(x_shape))
        nonfinite = {} if ktd is None else {"k_test_train": count_nonfinite(ktd)}
        ktd2 = None if ktd is None else to_matrix(ktd)
        rhs = lay.flatten(-y if f0 is None else f0 - y)
        v = eig.evecs
        v_rhs = v.T @ rhs
        singular = ~eig.positive_definite()
        if t is None:
            fx_test = None
            if ktd2 is not None and g0 is not None:
                d = ktd2 @ (v @ (v_rhs / eig.evals[:, None]))
                fx_test = g0 - lay.unflatten(d, x_shape)
            return (None if f0 is None else y, fx_test), singular, nonfinite

        tau = (t * p.learning_rate / y.size).reshape(-1, 1)

        def shaped(d, x_shape, start):
            d = lay.unflatten(d, x_shape, lead=1)
            return jnp.expand_dims(start, tuple(range(t.ndim))) + d.reshape(t.shape + d.shape[1:])

        fx_train = fx_test = None
        if f0 is not None:
            d = jnp.einsum("ji,ti,ic->tjc", v, -growth(eig.evals, tau), v_rhs)
            fx_train = shaped(d, lay.x_shape, f0)
        if ktd2 is not None and g0 is not None:
            d = jnp.einsum("mi,ti,ic->tmc", ktd2 @ v, -growth_over(eig.evals, tau), v_rhs)
            fx_test = shaped(d, x_shape, g0)
        return (fx_train, fx_test), singular, nonfinite


def _pack(fx_train, fx_test):
    if fx_test is None:
        return fx_train
    if fx_train is None:
        return fx_test
    return fx_train, fx_test


def gradient_descent_mse(
    k_train_train: KernelLike,
    y_train: Float[ArrayLike, "..."],
    *,
    learning_rate: Real[ArrayLike, ""] = 1.0,
    diag_reg: Real[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: int | tuple[int, ...] = (-1,),
    auto_jitter: bool = False,
) -> GradientDescentMSE:
    r"""Closed-form gradient flow on MSE in function space (`nt.predict.gradient_descent_mse`).

    The outputs of a network linearised around its initialisation (or of an infinitely
    wide one), trained by continuous-time gradient descent on
    $\frac{1}{2|Y|} \lVert f(x_d) - Y \rVert^2$ with NTK $\Theta$: see
    `GradientDescentMSE.__call__` for the formulas. The eigendecomposition of
    $\Theta_{dd} + \epsilon I$ is computed once, here.

    **Arguments:**

    - `k_train_train`: the train-train NTK: an array, or a `Kernel` (or any object with
      an `ntk` attribute) whose `ntk` is used. Shape: the non-traced axes of `y_train`,
      each twice and zipped.
    - `y_train`: training targets.
    - `learning_rate`: $\eta$; times are in units of it ($\eta t$ is what matters).
    - `diag_reg`: $\epsilon \ge 0$ added to the diagonal, relative to the mean
      diagonal unless `diag_reg_absolute_scale`.
    - `diag_reg_absolute_scale`: read `diag_reg` in absolute units.
    - `trace_axes`: output axes along which the kernel is a multiple of the identity.
    - `auto_jitter`: make $\Theta_{dd} + \epsilon I$ positive definite to working
      precision by adding the smallest sufficient jitter (see `gp_inference`),
      reported as `predictor.eigen.jitter`. Only `t=None` needs it.

    **Returns:** a `GradientDescentMSE`.

    Unlike neural-tangents, which factors lazily on the first call (Cholesky for
    `t=None`, eigendecomposition otherwise), the one eigendecomposition serves every
    `t`, including `t=None`. When only the infinite-time prediction from zero
    initial outputs is needed, `gp_inference(...)(get="ntk")` gives it from a
    cheaper Cholesky factorisation.

    Computations run in the kernel's dtype (float32 kernels: a float32
    eigendecomposition, also with `jax_enable_x64` on). The kernel is checked for
    finiteness and symmetry; finite times invert nothing, so no definiteness test is
    made for them: eigenvalues that round-off made negative count as zero and each mode
    enters through $(1 - e^{-\lambda\tau})/\lambda \le \tau$. `t=None` inverts
    $\Theta_{dd} + \epsilon I$ and raises if its smallest eigenvalue is below
    $10 \varepsilon \lambda_{max}$ (condition number beyond about $8 \cdot 10^5$ in
    float32): raise `diag_reg`, pass `auto_jitter=True`, or work in float64
    ("Precision" in the documentation).
    """
    check_nonnegative(diag_reg, "diag_reg")
    check_nonnegative(learning_rate, "learning_rate")
    layout = Layout.of(shape_of(y_train, "y_train"), trace_axes)
    k = ntk_matrix(k_train_train, "k_train_train")
    layout.train_shape(k, "k_train_train")
    eig = eigen_factor(k, diag_reg, diag_reg_absolute_scale, auto_jitter, "k_train_train")
    y = targets(y_train, "y_train", k.dtype)
    return GradientDescentMSE(y, eig, jnp.asarray(learning_rate, k.dtype), layout)


def max_learning_rate(
    ntk_train_train: KernelLike,
    y_train_size: int | None = None,
    momentum: Real[ArrayLike, ""] = 0.0,
    eps: float = 1e-12,
) -> Float[Array, ""]:
    r"""Largest learning rate for which gradient descent on MSE converges (`nt.predict.max_learning_rate`).

    For the loss $\frac{1}{2|Y|} \lVert f - Y \rVert^2$ a step
    $f \leftarrow f - \frac{\eta}{|Y|} \Theta (f - Y)$ contracts iff
    $\eta < 2|Y| / \lambda_{max}(\Theta)$; heavy-ball momentum $\mu$ extends this to
    $2(1 + \mu)|Y| / \lambda_{max}$ (Goh 2017, "Why momentum really works").

    **Arguments:**

    - `ntk_train_train`: the train-train NTK (an array, zipped if it has output axes,
      or a `Kernel` whose `ntk` is used).
    - `y_train_size`: $|Y|$ = `y_train.size`; `None` takes the kernel's side length
      (right for `trace_axes=()`).
    - `momentum`: $\mu$.
    - `eps`: added to $\lambda_{max}$ to avoid dividing by zero.

    **Returns:** $2(1 + \mu)|Y| / (\lambda_{max} + \text{eps})$, a scalar array.
    """
    k = ntk_matrix(ntk_train_train, "ntk_train_train")
    if k.ndim % 2 or k.shape[::2] != k.shape[1::2]:
        raise ValueError(
            f"`ntk_train_train` must be a train-train kernel (each axis twice, zipped); got shape {k.shape}."
        )
    if y_train_size is not None and (isinstance(y_train_size, bool) or not isinstance(y_train_size, int)):
        raise TypeError(f"`y_train_size` must be an int or None; got {y_train_size!r}.")
    check_nonnegative(momentum, "momentum")
    m = symmetrized(k, "ntk_train_train")
    size = m.shape[0] if y_train_size is None else y_train_size
    return _max_learning_rate(m, jnp.asarray(momentum, m.dtype), jnp.asarray(eps, m.dtype), size)


@eqx.filter_jit
def _max_learning_rate(m: Array, momentum: Array, eps: Array, size: int) -> Array:
    return 2 * (1 + momentum) * size / (jnp.linalg.eigvalsh(m)[-1] + eps)
