r"""Taylor expansions of finite networks in their parameters: `linearize` and
`taylor_expand`, for equinox models and for neural-tangents-style `f(params, x)`."""

import abc
import math
import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

from ._empirical._target import check_has_parameters, split_parameters


def _taylor(g: Callable[[Any], Any], params0, delta, degree: int):
    r"""$\sum_{k=0}^{d} \frac{1}{k!} D^k g(\theta_0)[\delta, \dots, \delta]$ by nested
    JVPs: $D^k g[\delta^k]$ is the JVP along $\delta$ of $D^{k-1} g[\delta^{k-1}]$."""
    if degree == 1:
        y, dy = jax.jvp(g, (params0,), (delta,))
        return jax.tree_util.tree_map(lambda a, b: a + b, y, dy)
    derivatives = [g]
    for _ in range(degree):
        prev = derivatives[-1]
        derivatives.append(lambda p, prev=prev: jax.jvp(prev, (p,), (delta,))[1])
    total = None
    for k, d in enumerate(derivatives):
        term = jax.tree_util.tree_map(lambda a, k=k: a / math.factorial(k), d(params0))
        total = term if total is None else jax.tree_util.tree_map(lambda a, b: a + b, total, term)
    return total


def _check_degree(degree, owner: str) -> int:
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or degree < 0:
        raise ValueError(f"`{owner}(degree=...)` must be an int >= 0; got {degree!r}.")
    return int(degree)


def _check_delta(delta, params0, owner: str):
    def shapes(t):
        return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)

    if jax.tree_util.tree_structure(delta) != jax.tree_util.tree_structure(params0) or shapes(
        delta
    ) != shapes(params0):
        raise ValueError(
            f"`{owner}.delta` must have the structure, shapes and dtypes of the base model's "
            "parameters (`eqx.filter(base, eqx.is_inexact_array)`), as it has after optax "
            "updates; it was replaced by something else."
        )


class AbstractExpandedModel(eqx.Module):
    r"""A Taylor expansion of an equinox model in its parameters about $\theta_0$:
    $f(\theta_0 + \delta, x) \approx \sum_{k \le d} \frac{1}{k!} D^k_\theta
    f(\theta_0, x)[\delta, \dots, \delta]$.

    `base` is the model at $\theta_0$, read through `stop_gradient`; `delta` (the
    parameters' pytree, zeros at first) is what training moves. Train it like the
    original model: `eqx.filter_grad`, `optax` and `eqx.apply_updates` work unchanged
    (`base` gets zero gradients; with an optimiser that decays weights, partition so
    that only `delta` is optimised). The model at $\theta_0 + \delta$ itself is
    `eqx.apply_updates(expanded.base, expanded.delta)`.
    """

    base: eqx.AbstractVar[eqx.Module]
    delta: eqx.AbstractVar[PyTree]

    @abc.abstractmethod
    def order(self) -> int:
        """The degree $d$ of the expansion."""

    def __call__(self, *args, **kwargs):
        # A transparent stand-in for the model: whatever it accepts is passed through.
        # Everything in `base` is constant: parameters and hyperparameters alike.
        params0, static = split_parameters(_stop_gradient(self.base))
        _check_delta(self.delta, params0, type(self).__name__)
        return _taylor(lambda p: eqx.combine(p, static)(*args, **kwargs), params0, self.delta, self.order())


def _stop_gradient(tree):
    return jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, tree)


def _zeros_delta(model):
    params0, _ = split_parameters(model)
    return jax.tree_util.tree_map(lambda a: jax.numpy.zeros_like(a), params0)


class Linearized(AbstractExpandedModel):
    r"""An equinox model linearised in its parameters:
    $f_{\text{lin}}(x) = f(\theta_0, x) + J_\theta f(\theta_0, x)\,\delta$, made by
    `linearize`. Trained by gradient descent on the squared loss, it follows the
    empirical-NTK dynamics of `kernelalg.empirical_ntk_fn(base)` exactly (Lee et al.
    2019, "Wide neural networks of any depth evolve as linear models").

    **Fields:** `base` (the model at $\theta_0$) and `delta` (the parameter offset).
    """

    base: eqx.Module
    delta: PyTree

    def __init__(self, base: eqx.Module, delta: PyTree | None = None):
        self.base = base
        self.delta = _zeros_delta(base) if delta is None else delta

    def order(self) -> int:
        return 1


class TaylorExpanded(AbstractExpandedModel):
    r"""An equinox model expanded to degree `degree` in its parameters, made by
    `taylor_expand`: $\sum_{k=0}^{d} \frac{1}{k!} D^k_\theta f(\theta_0, x)[\delta^{\otimes
    k}]$, by nested JVPs. Degree 1 equals `Linearized`.

    **Fields:** `base`, `delta` and the static `degree`.
    """

    base: eqx.Module
    delta: PyTree
    degree: int = eqx.field(static=True)

    def __init__(self, base: eqx.Module, degree: int, delta: PyTree | None = None):
        self.base = base
        self.degree = _check_degree(degree, "TaylorExpanded")
        self.delta = _zeros_delta(base) if delta is None else delta

    def order(self) -> int:
        return self.degree


class TaylorExpandedFn(eqx.Module):
    r"""A neural-tangents-style function expanded in its parameters about `params`:
    `f_taylor(p, *args)` is $\sum_{k \le d} \frac{1}{k!} D^k f(\theta_0, \cdot)
    [(p - \theta_0)^{\otimes k}]$, with the signature of `f`. Made by `linearize`
    (`degree=1`) and `taylor_expand`. Only floating-point leaves are expanded; the
    other leaves of `params` are used as they are.
    """

    f: Callable
    params: PyTree
    degree: int = eqx.field(static=True)

    def __call__(self, p: PyTree, *args, **kwargs):
        # Same signature as `f`, whatever it is: arguments are passed through.
        params0, static = split_parameters(self.params)
        new, _ = eqx.partition(
            p, jax.tree_util.tree_map(lambda a: a is not None, params0, is_leaf=lambda a: a is None)
        )
        delta = jax.tree_util.tree_map(lambda a, b: a - b, new, params0)
        return _taylor(lambda q: self.f(eqx.combine(q, static), *args, **kwargs), params0, delta, self.degree)


def linearize(f: Callable, params: PyTree | None = None) -> Linearized | TaylorExpandedFn:
    r"""Linearise a network in its parameters about their current values $\theta_0$:

    $$f_{\text{lin}}(\theta, x) = f(\theta_0, x) + J_\theta f(\theta_0, x)\,(\theta - \theta_0).$$

    Gradient descent on $f_{\text{lin}}$ is kernel regression with the empirical NTK of
    $f$ at $\theta_0$ (`empirical_ntk_fn`), and close to training $f$ itself when $f$ is
    wide (Lee et al. 2019).

    **Arguments:**

    - `f`: an equinox model (its floating-point array leaves are the parameters), or a
      function `f(params, *args)`.
    - `params`: for a function, the expansion point $\theta_0$; leave as None for a model.

    **Returns:** for a model, a `Linearized` model (the original as `base`, a zero
    `delta` to train); for a function, a `TaylorExpandedFn` `f_lin(params, *args)` with
    the signature of `f`. neural-tangents: `nt.linearize(f, params)`.
    """
    return taylor_expand(f, params, degree=1)


def taylor_expand(
    f: Callable, params: PyTree | None = None, degree: int | None = None
) -> Linearized | TaylorExpanded | TaylorExpandedFn:
    r"""Expand a network to degree $d$ in its parameters about their current values:

    $$f_d(\theta, x) = \sum_{k=0}^{d} \frac{1}{k!}\, D^k_\theta f(\theta_0, x)
      [(\theta - \theta_0)^{\otimes k}],$$

    computed by nested forward-mode derivatives (cost about $2^d$ forward passes).

    **Arguments:**

    - `f`: an equinox model, or a function `f(params, *args)`.
    - `params`: for a function, the expansion point $\theta_0$; None for a model.
    - `degree`: $d \ge 0$ (required).

    **Returns:** for a model, `Linearized` if `degree == 1`, else `TaylorExpanded`;
    for a function, a `TaylorExpandedFn`. neural-tangents:
    `nt.taylor_expand(f, params, degree)`.
    """
    owner = "linearize" if degree == 1 else "taylor_expand"
    if isinstance(f, eqx.Module) and isinstance(params, numbers.Number):
        raise TypeError(
            f"`{owner}(model, {params!r})`: the second argument is the parameters of a function "
            f"`f(params, x)`; for an equinox model pass the degree by keyword: "
            f"`taylor_expand(model, degree={params!r})`."
        )
    if degree is None:
        raise TypeError("`taylor_expand` needs `degree=...`, an int >= 0.")
    degree = _check_degree(degree, owner)
    if params is None:
        if not isinstance(f, eqx.Module):
            raise TypeError(
                f"`{owner}`: `params` is required when `f` is a function `f(params, x)`; got "
                f"`params=None` with `f` a {type(f).__name__}. Pass an equinox model to "
                "expand in its own array leaves."
            )
        check_has_parameters(f, owner)
        return Linearized(f) if degree == 1 else TaylorExpanded(f, degree)
    if not callable(f):
        raise TypeError(f"`{owner}`: `f` must be callable as `f(params, x)`; got {type(f).__name__}.")
    check_has_parameters(params, owner)
    return TaylorExpandedFn(f, params, degree)
