"""`empirical_ntk_vp_fn`: NTK-vector products without the NTK."""

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, PyTree

from ._target import check_has_parameters, make_target, split_parameters


class NtkVectorProductFn(eqx.Module):
    r"""$v \mapsto \hat\Theta(x_1, x_2)\, v = J_1 J_2^\top v$ for cotangents $v$ shaped
    like $f(x_2)$, returning an array (pytree) shaped like $f(x_1)$; made by
    `empirical_ntk_vp_fn`. One VJP through $f(x_2)$ and one JVP through $f(x_1)$: the
    cost of about three forward passes, the memory of one VJP. Use it for iterative
    solvers (conjugate gradients, Lanczos) on kernels too large to form.
    """

    f: Callable
    x1: PyTree[Array]
    x2: PyTree[Array] | None
    params: PyTree | None

    def __call__(self, cotangents: PyTree[ArrayLike]) -> PyTree[Array]:
        return _ntk_vp(self.f, self.x1, self.x2, self.params, cotangents)


@eqx.filter_jit
def _ntk_vp(f, x1, x2, params, cotangents):
    target = make_target(f, params, None, x1, x2, "empirical_ntk_vp_fn")
    diff, static = split_parameters(target.tree)

    def f_on(x):
        return lambda d: target.call(eqx.combine(d, static), x)

    out2, vjp2 = jax.vjp(f_on(x1 if x2 is None else x2), diff)
    if jax.tree_util.tree_structure(cotangents) != jax.tree_util.tree_structure(out2) or any(
        c.shape != o.shape
        for c, o in zip(jax.tree_util.tree_leaves(cotangents), jax.tree_util.tree_leaves(out2))
    ):
        raise ValueError(
            "`ntk_vp_fn(cotangents)`: the cotangents must have the structure and shapes of "
            f"`f(x2)`, {jax.tree_util.tree_map(lambda o: o.shape, out2)}; got "
            f"{jax.tree_util.tree_map(lambda c: jax.numpy.shape(c), cotangents)}."
        )
    cotangents = jax.tree_util.tree_map(lambda c, o: jax.numpy.asarray(c, o.dtype), cotangents, out2)
    (t,) = vjp2(cotangents)
    return jax.jvp(f_on(x1), (diff,), (t,))[1]


def empirical_ntk_vp_fn(
    f: Callable,
    x1: PyTree[ArrayLike],
    x2: PyTree[ArrayLike] | None = None,
    params: PyTree | None = None,
) -> NtkVectorProductFn:
    r"""The empirical NTK as a linear map, $v \mapsto J(x_1) J(x_2)^\top v$, without
    forming it (Novak et al. 2022, section L): one VJP and one JVP per product.

    **Arguments:**

    - `f`: `f(params, x)` (neural-tangents style), or an equinox model acting on one
      example (called without `params`).
    - `x1`, `x2`: the inputs; `x2=None` means `x1`.
    - `params`: the parameters of `f`; None for a model.

    **Returns:** an `NtkVectorProductFn`, called on cotangents shaped like `f(x2)`;
    the result is shaped like `f(x1)`. With `trace_axes=()`, this is `ntk @ v`
    contracted over `f(x2)`'s axes. neural-tangents: `nt.empirical_ntk_vp_fn`.
    """
    if not callable(f):
        raise TypeError(f"`empirical_ntk_vp_fn(f=...)` must be callable; got {type(f).__name__}.")
    target = make_target(f, params, None, x1, x2, "empirical_ntk_vp_fn")
    check_has_parameters(target.tree, "empirical_ntk_vp_fn")
    return NtkVectorProductFn(f, x1, x2, params)
