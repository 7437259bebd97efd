"""Public entry points: `empirical_nngp_fn`, `empirical_ntk_fn`, `empirical_kernel_fn`."""

import enum
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, PyTree

from . import _compute
from ._axes import check_axes
from ._target import VMAP_MESSAGE, batch_independence_violation, check_has_parameters, make_target


class NtkImplementation(enum.IntEnum):
    r"""How `empirical_ntk_fn` computes $\Theta = J_1 J_2^\top$, $J = \partial f /
    \partial \theta$ (Novak, Sohl-Dickstein and Schoenholz 2022, "Fast Finite Width
    Neural Tangent Kernel"). All four give the same kernel up to round-off.

    - `AUTO` (`0`): the cheapest of the three below for the shapes at hand, by the cost
      model described in `empirical_ntk_fn`.
    - `JACOBIAN_CONTRACTION` (`1`): Jacobians by reverse mode (forward mode when the
      outputs outnumber the parameters), one example at a time when `vmap_axes`
      allows, then contracted over parameters. Cost about $(N_1 + N_2)\,O\,[\text{VJP}]
      + N_1 N_2 O^2 P$ for $O$ outputs per example and $P$ parameters; memory
      $(N_1 + N_2) O P$. The reference: the simplest and the default.
    - `NTK_VECTOR_PRODUCTS` (`2`): row $e$ of $\Theta$ is the JVP of $f(x_2)$ along the
      VJP $J_1^\top e$; no Jacobian is formed and nothing is contracted over
      parameters. Cost about $N_1 O\,[\text{VJP}] + N_1 O\,[\text{JVP on } N_2]$.
      Suits networks with a cheap forward pass relative to their parameter count.
    - `STRUCTURED_DERIVATIVES` (`3`): like `JACOBIAN_CONTRACTION`, but Dense-like layers
      (kernelalg's finite `Dense`, `equinox.nn.Linear`) found in the model's pytree
      contribute $c^2 \langle x_1, x_2\rangle \langle g_1, g_2\rangle$ from their inputs
      $x$ and output cotangents $g$ instead of weight-sized Jacobians: $O(n)$ instead
      of $O(n^2)$ per pair for a width-$n$ layer. Public JAX APIs only; other
      parameters (and layers it cannot see, e.g. called under an inner `jax.vmap`)
      fall back to Jacobian contraction. Plain functions `f(params, x)` whose
      parameters are arrays have no layers to recognise, and get exactly
      `JACOBIAN_CONTRACTION`.

    neural-tangents: `nt.NtkImplementation` (whose `STRUCTURED_DERIVATIVES` interpreted
    jaxprs through private JAX internals).
    """

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


class EmpiricalKernel(eqx.Module):
    """Empirical kernels returned by `EmpiricalKernelFn` when `get` is a tuple or None.

    **Fields:**

    - `nngp`: the empirical NNGP (a pytree like `f`'s outputs, one kernel per output
      leaf), or None if not requested.
    - `ntk`: the empirical NTK, likewise.
    """

    nngp: PyTree[Array] | None
    ntk: PyTree[Array] | None


def _check_implementation(implementation) -> NtkImplementation:
    if isinstance(implementation, bool) or not isinstance(implementation, numbers.Integral):
        raise TypeError(
            f"`implementation` must be an `NtkImplementation` (or 0, 1, 2, 3); got {implementation!r}."
        )
    try:
        return NtkImplementation(int(implementation))
    except ValueError:
        raise ValueError(
            "`implementation` must be one of "
            f"{[f'{i.name} ({i.value})' for i in NtkImplementation]}; got {implementation!r}."
        ) from None


def _check_axes_arg(name: str, axes) -> tuple[int, ...]:
    # Ranges are checked against the outputs at call time; here only the type.
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        return (int(axes),)
    if not isinstance(axes, (tuple, list)) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"`{name}` must be an int or a tuple of ints; got {axes!r}.")
    if len(set(axes)) != len(axes):
        raise ValueError(f"`{name}={tuple(axes)}` names the same output axis twice.")
    return tuple(int(a) for a in axes)


def _canonical_get(get) -> tuple[tuple[str, ...], bool]:
    """`(kinds, single)`."""
    if get is None:
        return ("nngp", "ntk"), False
    if isinstance(get, str):
        kinds, single = (get,), True
    elif isinstance(get, (tuple, list)):
        kinds, single = tuple(get), False
    else:
        raise TypeError(f'`get` must be "nngp", "ntk", a tuple of them, or None; got {get!r}.')
    bad = [g for g in kinds if g not in ("nngp", "ntk")]
    if bad or not kinds:
        raise ValueError(f'`get` must name "nngp" and/or "ntk"; got {get!r}.')
    return kinds, single


def _compute_kernels(f, trace_axes, diagonal_axes, vmap_axes, implementation, owner, x1, x2, kinds, params):
    if "ntk" in kinds and (params is not None or isinstance(f, eqx.Module)):
        check_has_parameters(f if params is None else params, owner)
    target = make_target(f, params, vmap_axes, x1, x2, owner)
    tree = target.tree
    check = target.per_example and not target.model_mode
    values = "nngp" in kinds or check
    forward = target.call if values else (lambda t, x: eqx.filter_eval_shape(target.call, t, x))
    fx1 = forward(tree, x1)
    fx2 = fx1 if x2 is None else forward(tree, x2)
    s1 = [tuple(l.shape) for l in jax.tree_util.tree_leaves(fx1)]
    s2 = [tuple(l.shape) for l in jax.tree_util.tree_leaves(fx2)]
    if len(s1) != len(s2):
        raise ValueError(f"`{owner}`: `f(x1)` and `f(x2)` must have the same pytree structure of outputs.")
    trace_diag = [check_axes(trace_axes, diagonal_axes, a, b) for a, b in zip(s1, s2)]
    treedef = jax.tree_util.tree_structure(fx1)
    out = {}
    if "nngp" in kinds:
        out["nngp"] = jax.tree_util.tree_unflatten(treedef, _compute.nngp(fx1, fx2, trace_diag))
    if "ntk" in kinds:
        impl = implementation
        if impl == NtkImplementation.AUTO:
            from ._auto import choose

            impl = choose(target, tree, x1, x2, fx1, fx2, trace_diag)
        if impl == NtkImplementation.NTK_VECTOR_PRODUCTS:
            leaves = _compute.ntk_vector_products(target, tree, x1, x2, fx1, fx2, trace_diag)
        else:
            structured = impl == NtkImplementation.STRUCTURED_DERIVATIVES
            leaves = _compute.ntk_jacobian(target, tree, x1, x2, fx1, fx2, trace_diag, structured=structured)
        out["ntk"] = jax.tree_util.tree_unflatten(treedef, leaves)
    if check:
        bad = batch_independence_violation(target, tree, x1, fx1)
        if x2 is not None:
            bad = bad | batch_independence_violation(target, tree, x2, fx2)
        out = eqx.error_if(out, bad, VMAP_MESSAGE)
    return out


_jit_compute = eqx.filter_jit(_compute_kernels)


class AbstractEmpiricalFn(eqx.Module):
    """Shared by the empirical kernel functions: the network and the output axes."""

    f: eqx.AbstractVar[Callable]
    trace_axes: eqx.AbstractVar[tuple[int, ...]]
    diagonal_axes: eqx.AbstractVar[tuple[int, ...]]


def _run(
    fn, owner, x1, x2, kinds, params, vmap_axes=None, implementation=NtkImplementation.JACOBIAN_CONTRACTION
):
    return _jit_compute(
        fn.f, fn.trace_axes, fn.diagonal_axes, vmap_axes, implementation, owner, x1, x2, kinds, params
    )


class EmpiricalNngpFn(AbstractEmpiricalFn):
    r"""The empirical NNGP of a network: $\hat{\mathcal K}(x_1, x_2) = \frac{1}{|T|}
    \sum_{t \in T} f(x_1)_t \, f(x_2)_t$, made by `empirical_nngp_fn`.

    Call as `nngp_fn(x1, x2, params)` for `f(params, x)`, or `nngp_fn(x1, x2)` for an
    equinox model; `x2=None` means `x2 = x1`. Returns one kernel per output leaf, of
    shape given by the "zip" rule (see `empirical_ntk_fn`).
    """

    f: Callable
    trace_axes: tuple[int, ...] = eqx.field(static=True)
    diagonal_axes: tuple[int, ...] = eqx.field(static=True)

    def __call__(
        self, x1: PyTree[ArrayLike], x2: PyTree[ArrayLike] | None = None, params: PyTree | None = None
    ) -> PyTree[Array]:
        return _run(self, "empirical_nngp_fn", x1, x2, ("nngp",), params)["nngp"]


class EmpiricalNtkFn(AbstractEmpiricalFn):
    r"""The empirical NTK of a network: $\hat\Theta(x_1, x_2) = \frac{1}{|T|}
    \sum_{t\in T} \sum_\theta \frac{\partial f(x_1)_t}{\partial\theta}
    \frac{\partial f(x_2)_t}{\partial\theta}$, made by `empirical_ntk_fn`.

    Call as `ntk_fn(x1, x2, params)` for `f(params, x)`, or `ntk_fn(x1, x2)` for an
    equinox model; `x2=None` means `x2 = x1`.
    """

    f: Callable
    trace_axes: tuple[int, ...] = eqx.field(static=True)
    diagonal_axes: tuple[int, ...] = eqx.field(static=True)
    vmap_axes: PyTree
    implementation: NtkImplementation = eqx.field(static=True)

    def __call__(
        self, x1: PyTree[ArrayLike], x2: PyTree[ArrayLike] | None = None, params: PyTree | None = None
    ) -> PyTree[Array]:
        return _run(self, "empirical_ntk_fn", x1, x2, ("ntk",), params, self.vmap_axes, self.implementation)[
            "ntk"
        ]


class EmpiricalKernelFn(AbstractEmpiricalFn):
    r"""Empirical NNGP and NTK together, made by `empirical_kernel_fn`.

    Call as `kernel_fn(x1, x2, get, params)` for `f(params, x)`, or
    `kernel_fn(x1, x2, get)` for an equinox model. `get` is `"nngp"` or `"ntk"` (returns
    that kernel), a tuple of them, or None for both (returns an `EmpiricalKernel`).
    """

    f: Callable
    trace_axes: tuple[int, ...] = eqx.field(static=True)
    diagonal_axes: tuple[int, ...] = eqx.field(static=True)
    vmap_axes: PyTree
    implementation: NtkImplementation = eqx.field(static=True)

    def __call__(
        self,
        x1: PyTree[ArrayLike],
        x2: PyTree[ArrayLike] | None = None,
        get: str | tuple[str, ...] | None = None,
        params: PyTree | None = None,
    ) -> PyTree[Array] | EmpiricalKernel:
        kinds, single = _canonical_get(get)
        out = _run(self, "empirical_kernel_fn", x1, x2, kinds, params, self.vmap_axes, self.implementation)
        if single:
            return out[kinds[0]]
        return EmpiricalKernel(nngp=out.get("nngp"), ntk=out.get("ntk"))


def _check_f(f, owner):
    if not callable(f):
        raise TypeError(
            f"`{owner}(f=...)` must be a function `f(params, x)` or an equinox model; got {type(f).__name__}."
        )


def _check_vmap_axes(vmap_axes):
    if isinstance(vmap_axes, bool):
        raise TypeError(
            f"`vmap_axes` must be None, an int, or `(in_axes, out_axes, kwargs_axes)`; got {vmap_axes!r}."
        )
    if (
        isinstance(vmap_axes, tuple)
        and len(vmap_axes) == 3
        and isinstance(vmap_axes[2], dict)
        and not vmap_axes[2]
    ):
        return (vmap_axes[0], vmap_axes[1], None)  # `{}` is not hashable under jit
    return vmap_axes


def empirical_nngp_fn(
    f: Callable, trace_axes: int | tuple[int, ...] = (-1,), diagonal_axes: int | tuple[int, ...] = ()
) -> EmpiricalNngpFn:
    r"""The empirical NNGP kernel of a finite network, $\hat{\mathcal K}(x_1, x_2) =
    \frac{1}{|T|}\sum_{t \in T} f(x_1)_t\, f(x_2)_t$ (one sample, not an expectation).

    **Arguments:**

    - `f`: a function `f(params, x)` of a batch `x` (neural-tangents style), or an
      equinox model acting on one example (its array leaves are the parameters).
    - `trace_axes`: output axes $T$ summed over in pairs and divided by their size:
      $\frac{1}{|T|}\sum_{t\in T} k(x_1, x_2)_{tt}$. Default `(-1,)`, the channels (or
      logits), whose covariance is a multiple of the identity at infinite width.
    - `diagonal_axes`: output axes kept once: only the entries with equal indices on
      both sides (e.g. `(0,)` for per-example variances).

    **Returns:** an `EmpiricalNngpFn`, called as `nngp_fn(x1, x2, params)` (or
    `nngp_fn(x1, x2)` for a model). neural-tangents: `nt.empirical_nngp_fn`.
    """
    _check_f(f, "empirical_nngp_fn")
    return EmpiricalNngpFn(
        f, _check_axes_arg("trace_axes", trace_axes), _check_axes_arg("diagonal_axes", diagonal_axes)
    )


def empirical_ntk_fn(
    f: Callable,
    trace_axes: int | tuple[int, ...] = (-1,),
    diagonal_axes: int | tuple[int, ...] = (),
    vmap_axes: PyTree = None,
    implementation: NtkImplementation | int = NtkImplementation.JACOBIAN_CONTRACTION,
) -> EmpiricalNtkFn:
    r"""The empirical neural tangent kernel of a finite network (Jacot et al. 2018):

    $$\hat\Theta(x_1, x_2) = \frac{1}{|T|}\sum_{t \in T}\sum_{\theta}
      \frac{\partial f(x_1)_t}{\partial \theta}\,\frac{\partial f(x_2)_t}{\partial \theta},$$

    the kernel of gradient descent on the linearised network
    $f(\theta_0) + J(\theta - \theta_0)$ (see `linearize`).

    **Output shape (neural-tangents' "zip" rule).** For outputs of shapes
    $(a_0, \dots, a_{d-1})$ and $(b_0, \dots, b_{d-1})$, the kernel has, axis by axis,
    nothing for a traced axis, $a_p$ for a diagonal axis, and $(a_p, b_p)$ otherwise:
    `trace_axes=(-1,)` on `(N1, C)` outputs gives `(N1, N2)`; `trace_axes=()` gives
    `(N1, N2, C, C)`; `diagonal_axes=(0,)` gives `(N1,)` (requires `N1 == N2`). Traced
    and diagonal axes must have equal sizes on both sides.

    **Parameters.** For `f(params, x)`, the floating-point array leaves of `params`
    (integer leaves are held fixed). For an equinox model, called without `params`,
    its floating-point array leaves, except those inside a kernelalg layer held by a
    finite twin (an activation's coefficients are hyperparameters, as in
    neural-tangents where they are constants). A model acts on one example; the batch
    is vmapped over.

    **Arguments:**

    - `f`: `f(params, x)` (neural-tangents style), or an equinox model.
    - `trace_axes`: output axes $T$ summed over in pairs and divided by their size:
      $\frac{1}{|T|}\sum_{t\in T} k(x_1, x_2)_{tt}$. Default `(-1,)`, the channels (or
      logits), whose covariance is a multiple of the identity at infinite width.
    - `diagonal_axes`: output axes kept once: only the entries with equal indices on
      both sides (e.g. `(0,)` for per-example variances).
    - `vmap_axes`: for `f(params, x)`: `None` (default), or the axis (an int, or
      `(in_axes, out_axes, kwargs_axes)` with empty `kwargs_axes`) along which `f` is a
      batch of independent examples, so that Jacobians are taken one example at a time.
      kernelalg checks this claim: a function that mixes examples (batch
      normalisation) raises an error instead of returning a wrong kernel. Models are
      always one example at a time; leave `vmap_axes` as None or 0.
    - `implementation`: an `NtkImplementation`. `AUTO` estimates the floating-point
      operations and the memory traffic of each implementation from the shapes (the
      forward pass's cost from XLA's analysis of the unoptimised program, which counts
      every dot product, unlike the optimised CPU/GPU programs neural-tangents
      analysed), converts them to time with rates measured on CPU, and picks the
      fastest that fits in memory.

    **Returns:** an `EmpiricalNtkFn`, called as `ntk_fn(x1, x2, params)` (or
    `ntk_fn(x1, x2)` for a model), `x2=None` meaning `x1`.

    Keyword arguments of `f` (neural-tangents' `**apply_fn_kwargs`) are not threaded
    through; bind them with `functools.partial`. neural-tangents: `nt.empirical_ntk_fn`.
    """
    _check_f(f, "empirical_ntk_fn")
    return EmpiricalNtkFn(
        f,
        _check_axes_arg("trace_axes", trace_axes),
        _check_axes_arg("diagonal_axes", diagonal_axes),
        _check_vmap_axes(vmap_axes),
        _check_implementation(implementation),
    )


def empirical_kernel_fn(
    f: Callable,
    trace_axes: int | tuple[int, ...] = (-1,),
    diagonal_axes: int | tuple[int, ...] = (),
    vmap_axes: PyTree = None,
    implementation: NtkImplementation | int = NtkImplementation.JACOBIAN_CONTRACTION,
) -> EmpiricalKernelFn:
    r"""Empirical NNGP and NTK of a finite network in one function; see
    `empirical_nngp_fn` and `empirical_ntk_fn` for the definitions, the arguments and
    the output shapes. `vmap_axes` and `implementation` apply to the NTK.

    **Returns:** an `EmpiricalKernelFn`, called as `kernel_fn(x1, x2, get, params)` (or
    `kernel_fn(x1, x2, get)` for a model): `get="ntk"` returns the array (a pytree for
    pytree outputs); a tuple such as `("nngp", "ntk")` or None returns an
    `EmpiricalKernel` with fields `nngp` and `ntk`.

    ```python
    kernel_fn = ka.empirical_kernel_fn(f, trace_axes=(), vmap_axes=0)
    k = kernel_fn(x_test, x_train, ("nngp", "ntk"), params)   # k.ntk: (5, 20, 10, 10)
    ```

    neural-tangents: `nt.empirical_kernel_fn`.
    """
    _check_f(f, "empirical_kernel_fn")
    return EmpiricalKernelFn(
        f,
        _check_axes_arg("trace_axes", trace_axes),
        _check_axes_arg("diagonal_axes", diagonal_axes),
        _check_vmap_axes(vmap_axes),
        _check_implementation(implementation),
    )
