"""What an empirical kernel differentiates: a function `f(params, x)` or an equinox
model, its parameters, and (when known) how it factors over examples."""

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..layers._base import AbstractFinite, AbstractLayer


def _is_layer(node) -> bool:
    return isinstance(node, AbstractLayer)


# Fields of kernelalg's finite twins that hold hyperparameters read through
# `stop_gradient` (`FiniteDense.W_std`, ...): they are not parameters.
_TWIN_HYPERPARAMETERS = ("W_std", "b_std")


def _is_twin_hyperparameter(tree, path) -> bool:
    if not path or not isinstance(path[-1], jax.tree_util.GetAttrKey):
        return False
    if path[-1].name not in _TWIN_HYPERPARAMETERS:
        return False
    node = tree
    for key in path[:-1]:
        if isinstance(key, jax.tree_util.GetAttrKey):
            node = getattr(node, key.name, None)
        elif isinstance(key, (jax.tree_util.SequenceKey, jax.tree_util.DictKey)):
            try:
                node = node[key.idx if isinstance(key, jax.tree_util.SequenceKey) else key.key]
            except (KeyError, IndexError, TypeError):
                return False
        else:
            return False
    return isinstance(node, AbstractFinite)


def parameter_spec(tree, frozen: Callable[[Any], bool] = lambda node: False):
    """`True` at the parameters of `tree`: its floating-point array leaves, except
    hyperparameters of kernelalg layers and finite twins (an activation's coefficients
    held by a twin, `FiniteDense.W_std`: in neural-tangents these are Python constants)
    and leaves inside nodes for which `frozen` is true. Returns a filter spec for
    `eqx.partition` (a prefix of `tree`)."""

    def spec(path, node):
        if _is_layer(node) or frozen(node):
            return False
        return eqx.is_inexact_array(node) and not _is_twin_hyperparameter(tree, path)

    return jax.tree_util.tree_map_with_path(spec, tree, is_leaf=lambda n: _is_layer(n) or frozen(n))


def split_parameters(tree, frozen: Callable[[Any], bool] = lambda node: False):
    """`(params, static)` with `eqx.combine(params, static) == tree`."""
    return eqx.partition(tree, parameter_spec(tree, frozen))


def check_has_parameters(tree, owner: str) -> None:
    """A model whose only arrays are integers has nothing to differentiate: say so
    rather than return a kernel of zeros."""
    params, _ = split_parameters(tree)
    if jax.tree_util.tree_leaves(params):
        return
    arrays = [
        leaf
        for leaf in jax.tree_util.tree_leaves(tree, is_leaf=_is_layer)
        if not _is_layer(leaf) and eqx.is_array(leaf)
    ]
    if arrays:
        dtypes = sorted({str(jnp.asarray(a).dtype) for a in arrays})
        raise ValueError(
            f"`{owner}`: the parameters have no floating-point arrays to differentiate "
            f"(array leaves have dtypes {dtypes}). Parameters are the inexact (float or "
            "complex) array leaves; cast integer weights to float, e.g. "
            "`jax.tree_util.tree_map(lambda a: a.astype(float), params)`."
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """A network to differentiate.

    - `tree`: the parameter pytree (NT style) or the model (equinox style).
    - `call(tree, x)`: outputs on a batch.
    - `call_one(tree, xi)`: outputs on one example, or None when the network is not
      known to act on examples independently. `jax.vmap(call_one, (None, in_axes),
      out_axes)` equals `call`.
    """

    tree: Any
    call: Callable
    call_one: Callable | None
    in_axes: Any
    out_axes: Any
    model_mode: bool

    @property
    def per_example(self) -> bool:
        return self.call_one is not None


def _model_call(model, x):
    return jax.vmap(lambda xi: model(xi))(x)


def _model_call_one(model, xi):
    return model(xi)


def _expand(x, axes):
    return jax.tree_util.tree_map(lambda a, ax: a if ax is None else jnp.expand_dims(a, ax), x, axes)


def _broadcast_axes(axes, tree, name: str):
    """An int (or None) for every leaf of `tree`, negative axes made non-negative."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if axes is None or (isinstance(axes, numbers.Integral) and not isinstance(axes, bool)):
        axes_leaves = [axes] * len(leaves)
    else:
        try:
            axes_leaves = treedef.flatten_up_to(axes)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"`vmap_axes`: the {name} axes {axes!r} must be an int, None, or a pytree with "
                f"the structure of the {name} ({treedef})."
            ) from e
    out = []
    for a, leaf in zip(axes_leaves, leaves):
        if a is None:
            out.append(None)
            continue
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"`vmap_axes`: {name} axes must be ints or None; got {a!r}.")
        ndim = np.ndim(leaf) if not hasattr(leaf, "ndim") else leaf.ndim
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`vmap_axes`: {name} axis {a} is out of range for a {name} leaf of shape {leaf.shape}."
            )
        out.append(int(a) % ndim)
    return jax.tree_util.tree_unflatten(treedef, out)


def _split_vmap_axes(vmap_axes):
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        in_axes, out_axes, kw_axes = vmap_axes
        if kw_axes not in (None, {}) and not (isinstance(kw_axes, dict) and not kw_axes):
            raise ValueError(
                "`vmap_axes=(in_axes, out_axes, kwargs_axes)`: kernelalg passes no keyword "
                "arguments to `f` (bind them with `functools.partial`), so `kwargs_axes` must "
                f"be empty; got {kw_axes!r}."
            )
        return in_axes, out_axes
    return vmap_axes, vmap_axes


def _batch_size(x, in_axes, name: str) -> int:
    axes = jax.tree_util.tree_leaves(in_axes, is_leaf=lambda v: v is None)
    sizes = {leaf.shape[a] for leaf, a in zip(jax.tree_util.tree_leaves(x), axes) if a is not None}
    if len(sizes) != 1:
        raise ValueError(
            f"`vmap_axes`: the batched axes of `{name}` must all have one size; got sizes "
            f"{sorted(sizes)} (or no batched axis)."
        )
    return sizes.pop()


def make_target(f, params, vmap_axes, x1, x2, owner: str) -> Target:
    """Validate `f`, `params` and `vmap_axes` and describe the network to differentiate."""
    if params is None:
        if not isinstance(f, eqx.Module):
            raise TypeError(
                f"`{owner}`: `params` is required when `f` is a function `f(params, x)`; got "
                f"`params=None` with `f` a {type(f).__name__}. To use the array leaves of a "
                "model as its parameters, pass an `equinox.Module` acting on one example."
            )
        if vmap_axes not in (None, 0):
            raise ValueError(
                f"`{owner}`: an equinox model acts on one example at a time, so the batch is "
                f"always axis 0 of its inputs and outputs; `vmap_axes` must be None or 0, got "
                f"{vmap_axes!r}. For a model that mixes examples, pass `f(params, x)` with "
                "`params, static = eqx.partition(model, eqx.is_inexact_array)` and "
                "`f = lambda p, x: eqx.combine(p, static)(x)`."
            )
        fx = eqx.filter_eval_shape(_model_call, f, x1)
        out_axes = jax.tree_util.tree_map(lambda _: 0, fx)
        return Target(f, _model_call, _model_call_one, 0, out_axes, True)
    if not callable(f):
        raise TypeError(f"`{owner}`: `f` must be callable as `f(params, x)`; got {type(f).__name__}.")
    if vmap_axes is None:
        return Target(params, f, None, None, None, False)
    in_axes, out_axes = _split_vmap_axes(vmap_axes)
    in_axes = _broadcast_axes(in_axes, x1, "input")
    fx1 = eqx.filter_eval_shape(f, params, x1)
    out_axes = _broadcast_axes(out_axes, fx1, "output")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        n = _batch_size(x, in_axes, name)
        fx = fx1 if name == "x1" else eqx.filter_eval_shape(f, params, x)
        for leaf, a in zip(jax.tree_util.tree_leaves(fx), jax.tree_util.tree_leaves(out_axes)):
            if leaf.shape[a] != n:
                raise ValueError(
                    f"`vmap_axes` certifies that `f(params, {name})` is a batch of {n} independent "
                    f"outputs along axis {a}, but that axis of an output of shape {leaf.shape} has "
                    f"size {leaf.shape[a]}. Fix `vmap_axes`, or pass `vmap_axes=None` for a "
                    "function that mixes examples."
                )

    def call_one(p, xi):
        xi = _expand(xi, in_axes)
        fx = f(p, xi)
        return jax.tree_util.tree_map(lambda a, ax: jnp.squeeze(a, ax), fx, out_axes)

    return Target(params, f, call_one, in_axes, out_axes, False)


def batch_independence_violation(target: Target, tree, x, fx) -> jax.Array:
    """True (a traced bool) when `fx`, the outputs of `target.call` on `x`, differ from
    the outputs on each example alone, which is what `vmap_axes` certifies. Catches
    functions that mix examples (batch normalisation, means over the batch)."""
    per = jax.vmap(target.call_one, (None, target.in_axes), target.out_axes)(tree, x)
    bad = jnp.asarray(False)
    for a, b in zip(jax.tree_util.tree_leaves(fx), jax.tree_util.tree_leaves(per)):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            bad = bad | jnp.any(a != b)
            continue
        # Batched and one-example evaluations may round differently (another blocking
        # of the same dot products); mixing examples changes outputs at O(1).
        tol = float(np.sqrt(jnp.finfo(a.dtype).eps))
        scale = jnp.max(jnp.abs(a), initial=0.0)
        bad = bad | (jnp.max(jnp.abs(a - b), initial=0.0) > tol * scale)
    return bad


VMAP_MESSAGE = (
    "`vmap_axes` certifies that `f(params, x)` acts on each example independently, but its "
    "outputs on the whole batch differ from its outputs on one example at a time (the "
    "function mixes examples, e.g. batch normalisation or a mean over the batch), so the "
    "kernel would be wrong. Pass `vmap_axes=None`."
)
