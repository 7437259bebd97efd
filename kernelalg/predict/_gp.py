"""Exact GP inference with the NNGP, the NTK and the NTKGP."""

from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Real

from ._cg import CGFactor, cg_factor, cg_message
from ._common import (
    Get,
    KernelLike,
    Layout,
    canonicalize_get,
    check,
    check_nonnegative,
    checked_finite,
    count_nonfinite,
    from_matrix,
    has,
    is_array,
    kernel_array,
    same_dtype,
    shape_of,
    targets,
    to_matrix,
)
from ._linalg import AbstractFactor, cholesky_factor


class Gaussian(NamedTuple):
    r"""A Gaussian `(mean, covariance)`, as returned by the predictors (neural-tangents' `Gaussian`).

    **Fields:**

    - `mean`: shaped like the network's outputs (with leading time axes when several
      times were asked for).
    - `covariance`: shaped like the corresponding test-test kernel: the non-traced
      output axes twice, zipped, as `kernelalg.Kernel.nngp`.
    """

    mean: Float[Array, "..."]
    covariance: Float[Array, "..."]


Prediction = Gaussian | Float[Array, "..."]


class Predictions(eqx.Module):
    """Predictions for several kernels at once, as asked for with `get=(...)`.

    Attribute access (`p.nngp`, `p.ntk`, `p.ntkgp`) gives each prediction (a
    `Gaussian` when a covariance was asked for, else the mean); those not asked for are
    `None`. Like neural-tangents' namedtuples it also unpacks and indexes in the order
    of `get`: `nngp, ntk = predictor(get=("nngp", "ntk"), ...)`.
    """

    nngp: Prediction | None = None
    ntk: Prediction | None = None
    ntkgp: Prediction | None = None
    get: tuple[str, ...] = eqx.field(static=True, default=())

    def __iter__(self) -> Iterator[Prediction]:
        return iter([getattr(self, g) for g in self.get])

    def __len__(self) -> int:
        return len(self.get)

    def __getitem__(self, i: int) -> Prediction:
        return getattr(self, self.get[i])


def _factor(factors: dict[str, AbstractFactor | None], g: str, name: str) -> AbstractFactor:
    f = factors[g]
    if f is None:
        hint = "`compute_ntk=True`" if g == "ntk" else "a kernel that has its NNGP"
        raise ValueError(
            f"`{name}.{g}` was missing (None), but the prediction asked for needs it: pass "
            f"{hint} to the predictor's constructor."
        )
    return f


class GPInference(eqx.Module):
    r"""Posterior of a GP with the NNGP, the NTK or the NTKGP, returned by `gp_inference`.

    Holds the Cholesky factorisations of the regularised train-train kernels and the
    weights $(K + \epsilon I)^{-1} Y$, so that calls on new test sets only multiply.
    Call it as `predictor(get=None, k_test_train=None, k_test_test=None)`.

    **Fields:**

    - `y_train`: the targets, in the kernels' dtype.
    - `nngp`, `ntk`: `CholeskyFactor`s (or `CGFactor`s) of $\mathcal{K}$ and $\Theta$
      (`None` when that kernel was not given); with a plain array both are the same.
    - `nngp_weights`, `ntk_weights`: $(K + \epsilon I)^{-1} Y$ with $Y$ the targets
      flattened to $N \times C$.
    - `layout`: how the targets' axes split into kernel axes and `trace_axes`.
    """

    y_train: Float[Array, "..."]
    nngp: AbstractFactor | None
    ntk: AbstractFactor | None
    nngp_weights: Float[Array, "n c"] | None
    ntk_weights: Float[Array, "n c"] | None
    layout: Layout = eqx.field(static=True)

    def residual(self, get: Literal["nngp", "ntk"] = "nngp") -> Float[Array, ""]:
        r"""Relative residual $\lVert (K + \epsilon I) W - Y \rVert_F / \lVert Y \rVert_F$ of the weights.

        Round-off for Cholesky; the achieved tolerance for conjugate gradients.
        """
        fac = _factor({"nngp": self.nngp, "ntk": self.ntk}, get, "k_train_train")
        weights = self.nngp_weights if get == "nngp" else self.ntk_weights
        assert weights is not None
        return _residual(fac, weights, self.y_train, self.layout)

    def __call__(
        self,
        get: Get = None,
        k_test_train: KernelLike | None = None,
        k_test_test: KernelLike | bool | None = None,
    ) -> Prediction | Predictions:
        r"""Posterior mean (and covariance) on a test set.

        With $K$ the kernel of the chosen GP, $\mathcal{K}$ the NNGP, $\Theta$ the NTK,
        $d$ the training set, $x$ the test set and $\epsilon$ the jitter:

        - `"nngp"`: the Bayesian posterior of the infinitely wide network,
          $\mu = \mathcal{K}_{xd} (\mathcal{K}_{dd} + \epsilon)^{-1} Y$,
          $\Sigma = \mathcal{K}_{xx} - \mathcal{K}_{xd} (\mathcal{K}_{dd} + \epsilon)^{-1}
          \mathcal{K}_{dx}$.
        - `"ntk"`: the infinite ensemble of networks trained to convergence by gradient
          flow on MSE (Lee et al. 2019, arXiv:1902.06720, eq. 16),
          $\mu = \Theta_{xd} \Theta_{dd}^{-1} Y$,
          $\Sigma = \mathcal{K}_{xx} - (\Theta_{xd} \Theta_{dd}^{-1} \mathcal{K}_{dx} +
          \text{h.c.}) + \Theta_{xd} \Theta_{dd}^{-1} \mathcal{K}_{dd} \Theta_{dd}^{-1}
          \Theta_{dx}$ (with $\Theta_{dd} + \epsilon$ in place of $\Theta_{dd}$).
        - `"ntkgp"`: the GP posterior with the NTK as prior covariance (He et al. 2020,
          arXiv:2007.05864): the `"nngp"` formulas with $\Theta$ for $\mathcal{K}$.

        **Arguments:**

        - `get`: `"nngp"`, `"ntk"`, `"ntkgp"` or a tuple of them; `None` means
          `("nngp", "ntk")`. A string returns that prediction alone, a tuple a
          `Predictions`.
        - `k_test_train`: kernel between the test and the training inputs (a `Kernel`,
          an object with `nngp`/`ntk`, or an array). `None` predicts on the training
          set itself, which is `N(y_train, 0)` (without regularisation), as in
          neural-tangents; for regularised train-set predictions pass
          `k_test_train=k_train_train`.
        - `k_test_test`: kernel of the test inputs with themselves; given, the
          covariance is computed too. With `k_test_train=None` any non-`None` value
          (e.g. `True`) asks for the (zero) train-set covariance.

        **Returns:** a `Gaussian` (with `k_test_test`) or the mean, for one `get`; a
        `Predictions` of them for a tuple.
        """
        single, gets = canonicalize_get(get, ("nngp", "ntk", "ntkgp"))
        factors = {"nngp": self.nngp, "ntk": self.ntk}
        lay = self.layout
        # Everything that depends only on shapes is checked here; the arithmetic runs
        # in one compiled call (`_posterior`).
        ktd: dict[str, Array] = {}
        ktt: dict[str, Array] = {}
        x_shape = lay.x_shape
        train_cov = k_test_train is None and k_test_test is not None
        for g in gets:
            kg = "nngp" if g == "nngp" else "ntk"
            fac = _factor(factors, kg, "k_train_train")
            if k_test_train is None:
                continue
            needed = [kg]
            if k_test_test is not None:
                if isinstance(k_test_test, bool):
                    raise TypeError(
                        "`k_test_test` must be a kernel when `k_test_train` is given (`True` "
                        "only asks for the train-set covariance, with `k_test_train=None`)."
                    )
                prior = "ntk" if g == "ntkgp" else "nngp"
                if g == "ntk":
                    _factor(factors, "nngp", "k_train_train")
                    needed.append("nngp")
                if prior not in ktt:
                    ktt[prior] = kernel_array(k_test_test, prior, "k_test_test")
            for h in needed:
                if h not in ktd:
                    ktd[h] = kernel_array(k_test_train, h, "k_test_train")
                    x_shape = lay.test_shape(ktd[h], "k_test_train")
            same_dtype({"k_train_train": fac.kernel, **{f"k_test_train.{h}": a for h, a in ktd.items()}})
        for h, a in ktt.items():
            lay.test_test_shape(a, x_shape, "k_test_test")
            same_dtype({"k_train_train": self.y_train, f"k_test_test.{h}": a})
        out, nonfinite, failed = _posterior(self, gets, ktd, ktt, x_shape, train_cov)
        out = checked_finite(out, nonfinite)
        for g, bad in failed.items():
            if isinstance(self.nngp if g == "nngp" else self.ntk, CGFactor):
                out = check(out, bad, cg_message(f"k_train_train.{'nngp' if g == 'nngp' else 'ntk'}"))
        if single:
            return out[gets[0]]
        return Predictions(**out, get=gets)


@eqx.filter_jit
def _residual(fac: AbstractFactor, weights: Array, y: Array, layout: Layout) -> Array:
    with jax.default_matmul_precision("highest"):
        y = layout.flatten(y)
        m = fac.kernel @ weights + fac.jitter * weights
        return jnp.linalg.norm(m - y) / jnp.linalg.norm(y)


@eqx.filter_jit
def _posterior(
    p: GPInference,
    gets: tuple[str, ...],
    ktd: dict[str, Array],
    ktt: dict[str, Array],
    x_shape: tuple[int, ...],
    train_cov: bool,
) -> tuple[dict[str, Prediction], dict[str, Array], dict[str, Array]]:
    # float32 matrix products at full precision (not TF32 on GPUs): predictions
    # multiply kernels that were solved against, where 1e-3 errors are amplified.
    with jax.default_matmul_precision("highest"):
        lay = p.layout
        nonfinite = {f"k_test_train.{h}": count_nonfinite(a) for h, a in ktd.items()}
        nonfinite.update({f"k_test_test.{h}": count_nonfinite(a) for h, a in ktt.items()})
        ktd2 = {h: to_matrix(a) for h, a in ktd.items()}
        ktt2 = {h: to_matrix(a) for h, a in ktt.items()}
        out: dict[str, Prediction] = {}
        failed: dict[str, Array] = {}
        for g in gets:
            kg = "nngp" if g == "nngp" else "ntk"
            fac = p.nngp if kg == "nngp" else p.ntk
            weights = p.nngp_weights if kg == "nngp" else p.ntk_weights
            assert fac is not None and weights is not None  # checked by the caller
            if not ktd:
                if train_cov:
                    zeros = jnp.zeros((lay.n, lay.n), p.y_train.dtype)
                    out[g] = Gaussian(p.y_train, from_matrix(zeros, lay.x_shape, lay.x_shape))
                else:
                    out[g] = p.y_train
                continue
            mean = lay.unflatten(ktd2[kg] @ weights, x_shape)
            if not ktt:
                out[g] = mean
                continue
            if g in ("nngp", "ntkgp"):
                quad, bad = fac.quadratic_checked(ktd2[kg].T)
                failed[g] = bad
                cov = ktt2[kg] - quad
            else:
                assert p.nngp is not None
                a, failed[g] = fac.solve_checked(ktd2["ntk"].T)  # Theta_dd^-1 Theta_dx
                cross = ktd2["nngp"] @ a
                cov = ktt2["nngp"] - cross - cross.T + a.T @ p.nngp.kernel @ a
            out[g] = Gaussian(mean, from_matrix(cov, x_shape, x_shape))
        return out, nonfinite, failed


def gp_inference(
    k_train_train: KernelLike,
    y_train: Float[ArrayLike, "..."],
    *,
    diag_reg: Real[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: int | tuple[int, ...] = (-1,),
    auto_jitter: bool = False,
    solver: Literal["cholesky"] | lx.CG = "cholesky",
) -> GPInference:
    r"""GP posterior of the NNGP, the NTK and the NTKGP on the training data (`nt.predict.gp_inference`).

    Factors the train-train kernel(s) once; the returned `GPInference` is called as
    `predictor(get=None, k_test_train=None, k_test_test=None)` (see
    `GPInference.__call__` for the formulas of each posterior).

    **Arguments:**

    - `k_train_train`: kernel of the training inputs with themselves: a
      `kernelalg.Kernel`, any object with `nngp`/`ntk` attributes, or an array (then
      used as both). Its shape is that of the non-traced axes of `y_train`, each twice
      and zipped: `(n, n)` for targets `(n, k)` with `trace_axes=(-1,)`. Every kernel
      present is factored.
    - `y_train`: training targets, `(n, ...)`.
    - `diag_reg`: $\epsilon \ge 0$ added to the diagonal before factoring, in units of
      the mean diagonal $\operatorname{tr}(K)/N$ ...
    - `diag_reg_absolute_scale`: ... unless this is `True`.
    - `trace_axes`: output axes along which the kernel is a multiple of the identity
      (absent from the kernel): the kernel is read as $K \otimes I$.
    - `auto_jitter`: if the regularised kernel is not positive definite to working
      precision, add jitter $10^{k+1} \varepsilon \bar{K}_{ii}$ ($k = 1, 2, \dots$, up to
      a tenth of the mean diagonal) until it is; the total is reported as
      `predictor.nngp.jitter` / `predictor.ntk.jitter`. Without it, such a kernel
      raises a `ValueError` listing causes and fixes.
    - `solver`: `"cholesky"` (dense factorisation, $O(N^3)$) or a `lineax.CG` (e.g.
      `lineax.CG(rtol=1e-6, atol=1e-6, max_steps=1000)`): Jacobi-preconditioned
      conjugate gradients, $O(\sqrt{\kappa} N^2)$ and no memory beyond the kernel,
      for training sets too large to factor; it needs `diag_reg > 0` in practice, and
      reports its residual through `GPInference.residual`. Beyond neural-tangents.

    **Returns:** a `GPInference`.

    Computations run in the kernels' dtype: float32 kernels are factored and solved in
    float32 even with `jax_enable_x64` on (targets are cast to it), with matrix
    products at `"highest"` precision. In float32 a Cholesky factorisation loses about
    $\log_{10}\kappa$ of its 7 digits ($\kappa$ the condition number); a squared
    Cholesky pivot below $10 \varepsilon \lVert K \rVert_F$ (a condition number beyond
    about $1/(10\varepsilon) \approx 8 \cdot 10^5$, as LAPACK's `rcond < eps`) is
    reported as a failure rather than returned as noise; the fixes are a larger
    `diag_reg` (relative, it guarantees $\kappa \le 1 + N/$`diag_reg`), `auto_jitter`,
    or float64. There is no float64 option for float32 kernels: with x64 off JAX has no
    float64 arrays; "Precision" in the documentation shows the scoped
    `jax.enable_x64` recipe.
    """
    check_nonnegative(diag_reg, "diag_reg")
    if not (solver == "cholesky" or isinstance(solver, lx.CG)):
        raise ValueError(f"`solver` must be 'cholesky' or a `lineax.CG`; got {solver!r}.")
    if auto_jitter and isinstance(solver, lx.CG):
        raise ValueError("`auto_jitter=True` needs `solver='cholesky'`: with CG, set `diag_reg` instead.")
    layout = Layout.of(shape_of(y_train, "y_train"), trace_axes)

    def prepare(m, name, y):
        if isinstance(solver, lx.CG):
            return cg_factor(m, diag_reg, diag_reg_absolute_scale, name, y, layout, solver)
        return cholesky_factor(m, diag_reg, diag_reg_absolute_scale, auto_jitter, name, y, layout)

    if is_array(k_train_train):
        m = kernel_array(k_train_train, "nngp", "k_train_train")
        layout.train_shape(m, "k_train_train")
        y = targets(y_train, "y_train", m.dtype)
        f, w = prepare(m, "k_train_train", y)
        return GPInference(y, f, f, w, w, layout)
    present = {
        g: kernel_array(k_train_train, g, "k_train_train") for g in ("nngp", "ntk") if has(k_train_train, g)
    }
    if not present:
        kernel_array(k_train_train, "nngp", "k_train_train")  # raises: names what is missing
    dtype = same_dtype({f"k_train_train.{g}": k for g, k in present.items()})
    y = targets(y_train, "y_train", dtype)
    factors: dict[str, Any] = {"nngp": None, "ntk": None}
    weights: dict[str, Any] = {"nngp": None, "ntk": None}
    for g, m in present.items():
        name = f"k_train_train.{g}"
        layout.train_shape(m, name)
        factors[g], weights[g] = prepare(m, name, y)
    return GPInference(y, factors["nngp"], factors["ntk"], weights["nngp"], weights["ntk"], layout)
