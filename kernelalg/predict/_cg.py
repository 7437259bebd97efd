"""Conjugate gradients for train-train kernels too large to factor, through lineax."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from ._common import Layout, check, to_matrix
from ._linalg import AbstractFactor, _diagnosed, _Diagnosis, _measure, regularizer


class CGFactor(AbstractFactor):
    r"""A regularised train-train kernel solved by preconditioned conjugate gradients.

    Solves $(K + \epsilon I) x = b$ with lineax's `CG` and a Jacobi (diagonal)
    preconditioner, one right-hand side at a time (vectorised). Nothing is factored:
    memory is the kernel itself, and time $O(s N^2)$ for $s$ iterations, about
    $\sqrt{\kappa}$ for condition number $\kappa$, against $O(N^3)$ for Cholesky. The
    relative residual of the training weights is `GPInference.residual`.

    **Fields:**

    - `kernel`: $K$, the symmetrised kernel as an $N \times N$ matrix (unregularised).
    - `jitter`: $\epsilon$, the diagonal added.
    - `solver`: the `lineax.CG` (its `rtol`, `atol`, `max_steps`).
    """

    kernel: Float[Array, "n n"]
    jitter: Float[Array, ""]
    solver: lx.CG

    def _operators(self) -> tuple[lx.AbstractLinearOperator, lx.AbstractLinearOperator]:
        m = self.kernel + self.jitter * jnp.eye(self.kernel.shape[0], dtype=self.kernel.dtype)
        op = lx.MatrixLinearOperator(m, lx.positive_semidefinite_tag)
        pre = lx.TaggedLinearOperator(
            lx.DiagonalLinearOperator(1 / jnp.diagonal(m)), lx.positive_semidefinite_tag
        )
        return op, pre

    def solve_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "n k"], Bool[Array, ""]]:
        r"""$(K + \epsilon I)^{-1} b$ column by column, and whether CG failed to converge."""
        op, pre = self._operators()

        def one(column):
            sol = lx.linear_solve(op, column, self.solver, options={"preconditioner": pre}, throw=False)
            return sol.value, sol.result != lx.RESULTS.successful

        x, failed = jax.vmap(one, in_axes=1, out_axes=(1, 0))(b)
        return x, jnp.any(failed)

    def quadratic_checked(self, b: Float[Array, "n k"]) -> tuple[Float[Array, "k k"], Bool[Array, ""]]:
        r"""$b^\top (K + \epsilon I)^{-1} b$, symmetrised, and whether CG failed."""
        x, failed = self.solve_checked(b)
        q = b.T @ x
        return (q + q.T) / 2, failed


def cg_message(name: str) -> str:
    return (
        f"Conjugate gradients on `{name}` did not reach the tolerance within the solver's "
        "`max_steps`: the regularised kernel is ill-conditioned (CG needs about the square "
        "root of the condition number in steps) or not positive definite. Raise "
        "`diag_reg`, raise `lineax.CG(max_steps=...)` or loosen its `rtol`/`atol`, or use "
        "the default Cholesky solver (`solver='cholesky'`), which reports singular kernels "
        "precisely."
    )


@eqx.filter_jit
def _cg_core(
    k: Float[Array, "..."],
    diag_reg: Float[Array, ""],
    absolute: bool,
    rhs: Array,
    layout: Layout,
    solver: lx.CG,
) -> tuple[CGFactor, _Diagnosis, Array, Array]:
    with jax.default_matmul_precision("highest"):
        sym, d = _measure(to_matrix(k))
        fac = CGFactor(sym, regularizer(sym, diag_reg, absolute), solver)
        x, failed = fac.solve_checked(layout.flatten(rhs))
        return fac, d, x, failed


def cg_factor(
    a: Float[Array, "..."],
    diag_reg: Real[ArrayLike, ""],
    diag_reg_absolute_scale: bool,
    name: str,
    rhs: Float[Array, "..."],
    layout: Layout,
    solver: lx.CG,
) -> tuple[CGFactor, Float[Array, "n c"]]:
    """Check and regularise the kernel `a`, and solve for `layout.flatten(rhs)` by CG."""
    fac, d, x, failed = _cg_core(
        a, jnp.asarray(diag_reg, a.dtype), diag_reg_absolute_scale, rhs, layout, solver
    )
    out = _diagnosed((fac, x), d, name, a.size, a.dtype)
    return check(out, failed, cg_message(name))
