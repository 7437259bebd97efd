"""The infinite ensemble of infinitely wide networks trained by gradient flow on MSE."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from .._entry import kernel
from ..layers._base import AbstractLayer
from ._common import (
    Get,
    Layout,
    canonicalize_get,
    check_nonnegative,
    from_matrix,
    kernel_array,
    shape_of,
    targets,
    to_matrix,
)
from ._gp import Gaussian, Prediction, Predictions
from ._linalg import EigenFactor, check_definite, decay, eigen_factor, growth, growth_over, symmetrized
from ._mse import Times, scaled_times


KernelFn = Callable[..., Any]


def _kernels(
    kernel_fn: AbstractLayer | KernelFn, x1: ArrayLike, x2: ArrayLike | None, compute_ntk: bool
) -> Any:
    if isinstance(kernel_fn, AbstractLayer):
        return kernel(kernel_fn, x1, x2, compute_ntk=compute_ntk)
    return kernel_fn(x1, x2, ("nngp", "ntk") if compute_ntk else ("nngp",))


class GradientDescentMSEEnsemble(eqx.Module):
    r"""Mean and covariance of an infinite ensemble trained on MSE, from `gradient_descent_mse_ensemble`.

    Holds the network (or kernel function), the training data, and the
    eigendecompositions of the regularised train-train NNGP and NTK. Call it as
    `predictor(t=None, x_test=None, get=None, compute_cov=False)`.

    **Fields:**

    - `kernel_fn`: the kernelalg layer (or a function `kernel_fn(x1, x2, get)`).
    - `x_train`, `y_train`: the training data (targets in the kernels' dtype).
    - `nngp_train`: $\mathcal{K}_{dd}$ as an $N \times N$ matrix (unregularised).
    - `nngp`, `ntk`: `EigenFactor`s of $\mathcal{K}_{dd} + \epsilon I$ and
      $\Theta_{dd} + \epsilon I$ (`ntk` is `None` without `compute_ntk`).
    - `learning_rate`: $\eta$.
    - `layout`: how the targets' axes split into kernel axes and `trace_axes`.
    """

    kernel_fn: AbstractLayer | KernelFn
    x_train: Float[Array, "n ..."]
    y_train: Float[Array, "..."]
    nngp_train: Float[Array, "n n"]
    nngp: EigenFactor
    ntk: EigenFactor | None
    learning_rate: Float[Array, ""]
    layout: Layout = eqx.field(static=True)

    def __call__(
        self,
        t: Times = None,
        x_test: Float[ArrayLike, "m ..."] | None = None,
        get: Get = None,
        compute_cov: bool = False,
        *,
        batch_size: int | None = None,
    ) -> Prediction | Predictions:
        r"""Ensemble mean (and covariance) on `x_test` at time(s) `t`.

        Outputs at initialisation are $f_0 \sim \mathcal{GP}(0, \mathcal{K})$; training
        with kernel $K$ ($\Theta$ for `"ntk"`, $\mathcal{K}$ for `"nngp"`, i.e. only the
        last layer trained) for time $\tau = \eta t / |Y|$ gives, with
        $G_\tau = K_{dd}^{-1}(I - e^{-K_{dd}\tau})$ (Lee et al. 2019, arXiv:1902.06720,
        eqs. 13-16),

        $$\mu_x = K_{xd} G_\tau Y, \qquad
        \Sigma_{xx} = \mathcal{K}_{xx} - (K_{xd} G_\tau \mathcal{K}_{dx} + \text{h.c.})
        + K_{xd} G_\tau \mathcal{K}_{dd} G_\tau^\top K_{dx}.$$

        For `"nngp"` this simplifies to $\mathcal{K}_{xx} - \mathcal{K}_{xd}
        G_{2\tau} \mathcal{K}_{dx}$. On the training set (`x_test=None`) the mean is
        $(I - e^{-K_{dd}\tau}) Y$ and the covariance $e^{-K_{dd}\tau} \mathcal{K}_{dd}
        e^{-K_{dd}\tau}$.

        **Arguments:**

        - `t`: a time or an array of times (leading axes of the outputs), in units of
          the learning rate; `None` is $t = \infty$ (the `gp_inference` posterior).
        - `x_test`: test inputs; `None` predicts on the training inputs (without
          regularisation; pass `x_test=x_train` for the regularised one).
        - `get`: `"nngp"`, `"ntk"` or a tuple; `None` means `("nngp", "ntk")`.
        - `compute_cov`: also compute the covariance.
        - `batch_size`: predict the means on `x_test` in blocks of this many inputs, so
          that only a `(batch_size, n_train)` test kernel is held at a time (all blocks
          share one compilation). Not with `compute_cov`, which couples the blocks.
          Beyond neural-tangents.

        **Returns:** for one `get`, the mean or a `Gaussian(mean, covariance)`; for a
        tuple, a `Predictions` of them.
        """
        single, gets = canonicalize_get(get, ("nngp", "ntk"))
        if not isinstance(compute_cov, bool):
            raise TypeError(f"`compute_cov` must be a bool; got {compute_cov!r}.")
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"`batch_size` must be a positive int or None; got {batch_size!r}.")
            if compute_cov:
                raise ValueError(
                    "`batch_size` predicts blocks of `x_test` independently, so it needs "
                    "`compute_cov=False`: a covariance couples the blocks."
                )
            if x_test is not None and shape_of(x_test, "x_test")[0] > batch_size:
                return self._in_blocks(t, x_test, gets if not single else gets[0], batch_size)
        if "ntk" in gets and self.ntk is None:
            raise ValueError(
                "NTK predictions were asked for, but the predictor was built with "
                "`compute_ntk=False`: rebuild it with `compute_ntk=True` or use `get='nngp'`."
            )
        lay = self.layout
        dtype = self.nngp.evals.dtype
        ktd: dict[str, Array] = {}
        ktt = None
        x_shape = lay.x_shape
        if x_test is not None:
            k = _kernels(self.kernel_fn, x_test, self.x_train, "ntk" in gets)
            for g in gets + (("nngp",) if compute_cov else ()):
                if g not in ktd:
                    ktd[g] = kernel_array(k, g, "kernel_fn(x_test, x_train)")
                    x_shape = lay.test_shape(ktd[g], "kernel_fn(x_test, x_train)")
            if compute_cov:
                ktt = kernel_array(_kernels(self.kernel_fn, x_test, None, False), "nngp", "kernel_fn(x_test)")
                lay.test_test_shape(ktt, x_shape, "kernel_fn(x_test)")
            if any(a.dtype != dtype for a in ktd.values()):
                raise TypeError(
                    f"`x_test` gives {next(iter(ktd.values())).dtype} kernels but the training "
                    f"kernels are {dtype}: pass `x_test` in the precision of `x_train`."
                )
        tau = None if t is None else scaled_times(t, dtype)
        out, singular = _ensemble_outputs(self, gets, tau, ktd, ktt, x_shape, compute_cov)
        if t is None:
            for g in gets:
                eig = self.nngp if g == "nngp" else self.ntk
                assert eig is not None
                name = f"kernel_fn(x_train).{g}"
                out = check_definite(out, eig, singular[g], name)
        if single:
            return out[gets[0]]
        return Predictions(**out, get=gets)

    def _in_blocks(
        self, t: Times, x_test: Float[ArrayLike, "m ..."], get: str | tuple[str, ...], size: int
    ) -> Prediction | Predictions:
        n = x_test.shape[0]
        lead = 0 if t is None else np.ndim(t)  # outputs have the time axes first
        parts = [self(t, block, get) for block in _blocks_of(x_test, size)]

        def join(*blocks):
            return jax.lax.slice_in_dim(jnp.concatenate(blocks, axis=lead), 0, n, axis=lead)

        if isinstance(parts[0], Predictions):
            fields = {g: join(*(getattr(p, g) for p in parts)) for g in parts[0].get}
            return Predictions(**fields, get=parts[0].get)
        return join(*parts)


def _blocks_of(x: Any, size: int) -> list[Any]:
    """`x` split along its first axis into blocks of `size`, the last one padded by repetition."""
    xp = jnp if isinstance(x, jax.Array) else np  # keep device arrays on their device
    n = x.shape[0]
    pad = -n % size
    if pad:
        x = xp.concatenate([x, xp.repeat(x[-1:], pad, axis=0)])
    return [x[i : i + size] for i in range(0, n + pad, size)]


@eqx.filter_jit
def _ensemble_outputs(
    p: GradientDescentMSEEnsemble,
    gets: tuple[str, ...],
    t: Array | None,
    ktd: dict[str, Array],
    ktt: Array | None,
    x_shape: tuple[int, ...],
    compute_cov: bool,
) -> tuple[dict[str, Prediction], dict[str, Array]]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        lay = p.layout
        y_flat = lay.flatten(p.y_train)
        ktd2 = {g: to_matrix(a) for g, a in ktd.items()}
        on_train = not ktd
        t_shape = () if t is None else t.shape
        tau = None if t is None else (t * p.learning_rate / p.y_train.size).reshape(-1, 1)

        def mean_out(m):
            m = lay.unflatten(m, x_shape, lead=1)
            return m.reshape(t_shape + m.shape[1:])

        def cov_out(c):
            c = from_matrix(c, x_shape, x_shape, lead=1)
            return c.reshape(t_shape + c.shape[1:])

        out: dict[str, Prediction] = {}
        singular = {}
        for g in gets:
            eig = p.nngp if g == "nngp" else p.ntk
            assert eig is not None
            singular[g] = ~eig.positive_definite()
            v, evals = eig.evecs, eig.evals
            v_y = v.T @ y_flat
            if on_train:
                mean = jnp.einsum("ji,ti,ic->tjc", v, growth(evals, tau), v_y)
            else:
                mean = jnp.einsum("mi,ti,ic->tmc", ktd2[g] @ v, growth_over(evals, tau), v_y)
            if not compute_cov:
                out[g] = mean_out(mean)
                continue
            nngp_dd = p.nngp_train
            if on_train:
                e = decay(evals, tau)
                if g == "nngp":
                    cov = jnp.einsum("ji,ti,ki->tjk", v, jnp.maximum(evals, 0)[None] * e**2, v)
                else:
                    ev = jnp.einsum("ji,ti,ki->tjk", v, e, v)
                    cov = ev @ nngp_dd @ ev
            else:
                assert ktt is not None
                ktt2 = to_matrix(ktt)[None]
                ktd_v = ktd2[g] @ v
                if g == "nngp":
                    tau2 = None if tau is None else 2 * tau
                    cov = ktt2 - jnp.einsum("mi,ti,li->tml", ktd_v, growth_over(evals, tau2), ktd_v)
                else:
                    # term_1 = G_tau Theta_dx (train x test), term_2 = Theta_xd G_tau K_dx.
                    term_1 = jnp.einsum("ji,ti,li->tjl", v, growth_over(evals, tau), ktd_v)
                    term_2 = jnp.swapaxes(jnp.einsum("ml,tlk->tmk", ktd2["nngp"], term_1), 1, 2)
                    cov = (
                        jnp.swapaxes(term_1, 1, 2) @ nngp_dd @ term_1
                        - term_2
                        - jnp.swapaxes(term_2, 1, 2)
                        + ktt2
                    )
            out[g] = Gaussian(mean_out(mean), cov_out(cov))
        return out, singular


def gradient_descent_mse_ensemble(
    kernel_fn: AbstractLayer | KernelFn,
    x_train: Float[ArrayLike, "n ..."],
    y_train: Float[ArrayLike, "..."],
    *,
    learning_rate: Real[ArrayLike, ""] = 1.0,
    diag_reg: Real[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: int | tuple[int, ...] = (-1,),
    compute_ntk: bool = True,
    auto_jitter: bool = False,
) -> GradientDescentMSEEnsemble:
    r"""Infinite ensemble of wide networks trained on MSE (`nt.predict.gradient_descent_mse_ensemble`).

    The Gaussian process over outputs obtained by marginalising the initialisation of
    networks trained by gradient flow (see `GradientDescentMSEEnsemble.__call__`).
    Computes the train-train kernels with `kernelalg.kernel(kernel_fn, x_train)` and
    their eigendecompositions here; test kernels are computed at each call.

    **Arguments:**

    - `kernel_fn`: a kernelalg layer (where neural-tangents took its `kernel_fn`), or
      a function `kernel_fn(x1, x2, get)` returning an object with `nngp` (and `ntk`)
      for `get=("nngp", "ntk")`; bind extra arguments (e.g. `params`) with
      `functools.partial`.
    - `x_train`: training inputs.
    - `y_train`: training targets.
    - `learning_rate`: $\eta$; times are in units of it.
    - `diag_reg`, `diag_reg_absolute_scale`, `trace_axes`, `auto_jitter`: as in
      `gradient_descent_mse`.
    - `compute_ntk`: also compute the NTK (needed for `get="ntk"`); `False` saves its
      computation and factorisation when only NNGP predictions are wanted.

    **Returns:** a `GradientDescentMSEEnsemble`.

    Precision follows the kernels, hence `x_train`: float32 inputs give float32
    kernels and float32 eigendecompositions, with the diagnostics of
    `gradient_descent_mse` (a definiteness test only for `t=None`).
    """
    check_nonnegative(diag_reg, "diag_reg")
    check_nonnegative(learning_rate, "learning_rate")
    if not (isinstance(kernel_fn, AbstractLayer) or callable(kernel_fn)):
        raise TypeError(
            f"`kernel_fn` must be a kernelalg layer or a function `kernel_fn(x1, x2, get)`; got "
            f"{type(kernel_fn).__name__}."
        )
    layout = Layout.of(shape_of(y_train, "y_train"), trace_axes)
    shape_of(x_train, "x_train")
    x_train = jnp.asarray(x_train)
    k = _kernels(kernel_fn, x_train, None, compute_ntk)
    kernels = {}
    for g in ("nngp", "ntk") if compute_ntk else ("nngp",):
        kernels[g] = kernel_array(k, g, "kernel_fn(x_train)")
        layout.train_shape(kernels[g], f"kernel_fn(x_train).{g}")
    nngp = symmetrized(kernels["nngp"], "kernel_fn(x_train).nngp")
    nngp_eig = eigen_factor(nngp, diag_reg, diag_reg_absolute_scale, auto_jitter, "kernel_fn(x_train).nngp")
    ntk_eig = None
    if compute_ntk:
        ntk_eig = eigen_factor(
            kernels["ntk"], diag_reg, diag_reg_absolute_scale, auto_jitter, "kernel_fn(x_train).ntk"
        )
    y = targets(y_train, "y_train", nngp.dtype)
    return GradientDescentMSEEnsemble(
        kernel_fn, x_train, y, nngp, nngp_eig, ntk_eig, jnp.asarray(learning_rate, nngp.dtype), layout
    )
