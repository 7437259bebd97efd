"""What is computed on one block of inputs, and how its outputs are laid out.

A block function maps a block of `x1` rows and a block of `x2` rows (or `None`: the
rows of `x1` with themselves) to a pytree of arrays. Each array leaf has a role:

- `pair`: axes `(b1, b2, ...)`, one entry per pair of rows (`nngp`, `ntk`, empirical
  kernels); with a permutation of its trailing axes that transposes it (the zipped
  spatial pairs swap), or None when the layout is unknown;
- `row1` / `row2`: axes `(b1, ...)` / `(b2, ...)`, one entry per row of `x1` / `x2`
  (`cov1`, `cov2`, masks);
- `alias`: the same array as the pair leaf `source` (`cov1` of `x1` with itself and
  `diagonal_batch=False` is `nngp`).
"""

import abc
import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from .._empirical._api import AbstractEmpiricalFn
from .._entry import kernel
from .._kernel import Kernel
from .._monte_carlo import MonteCarloKernelFn
from ..layers._base import AbstractLayer


class Leaf(NamedTuple):
    """Static description of one output array of a block function."""

    name: str
    role: str  # "pair" | "row1" | "row2" | "alias"
    tail: tuple[int, ...]  # shape after the batch axes
    dtype: str
    perm: tuple[int, ...] | None = None  # pair leaves: trailing-axis permutation of a transpose
    source: str | None = None  # alias leaves: the pair leaf they equal


def leaf_name(path) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", jax.tree_util.keystr(path)).strip("_")
    return name or "kernel"


def _pair_swaps(n_pairs: int) -> tuple[int, ...]:
    """Trailing axes `(a1, b1, a2, b2, ...)` → `(b1, a1, b2, a2, ...)`."""
    perm = []
    for p in range(n_pairs):
        perm += [2 * p + 1, 2 * p]
    return tuple(perm)


def _zip_rule_perm(ndim_tail: int, trace_axes, diagonal_axes) -> tuple[int, ...] | None:
    """Transposing permutation of an empirical kernel's trailing axes (neural-tangents'
    "zip" rule: per output axis after the batch, nothing if traced, one axis if
    diagonal, a pair otherwise), or None if the axes do not fit the shape."""
    nd, nt = len(diagonal_axes), len(trace_axes)
    if (ndim_tail - nd) % 2 or ndim_tail < nd:
        return None
    d = 1 + nt + nd + (ndim_tail - nd) // 2  # axes of f's batched output
    trace = {a % d for a in trace_axes}
    diag = {a % d for a in diagonal_axes}
    if 0 in trace or 0 in diag:
        return None
    perm, pos = [], 0
    for p in range(1, d):
        if p in trace:
            continue
        if p in diag:
            perm.append(pos)
            pos += 1
        else:
            perm += [pos + 1, pos]
            pos += 2
    return tuple(perm) if pos == ndim_tail else None


class AbstractBlockFn(eqx.Module):
    """A kernel computation on one block `(xa, xb)`; `xb=None` is `xa` with itself."""

    @abc.abstractmethod
    def __call__(self, xa: ArrayLike, xb: ArrayLike | None) -> PyTree[Array]:
        raise NotImplementedError

    @abc.abstractmethod
    def leaves(self, template: PyTree, b1: int, b2: int, symmetric: bool) -> list[Leaf]:
        """Describe the array leaves of an output `template` (from `jax.eval_shape`)."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def traceable(self) -> bool:
        """Whether the function can run under `jax.jit`/`shard_map` (one program
        per device); otherwise blocks are called one by one on concrete arrays."""
        raise NotImplementedError


class LayerBlocks(AbstractBlockFn):
    """`kernelalg.kernel(layer, xa, xb, ...)` on batch-first, channels-last blocks."""

    layer: AbstractLayer
    compute_ntk: bool = eqx.field(static=True)
    diagonal_batch: bool = eqx.field(static=True)
    diagonal_spatial: bool = eqx.field(static=True)
    mask_constant: float | None = eqx.field(static=True)

    def __call__(self, xa: ArrayLike, xb: ArrayLike | None) -> Kernel:
        return kernel(
            self.layer,
            xa,
            xb,
            compute_ntk=self.compute_ntk,
            diagonal_batch=self.diagonal_batch,
            diagonal_spatial=self.diagonal_spatial,
            mask_constant=self.mask_constant,
        )

    @property
    def traceable(self) -> bool:
        return True

    def leaves(self, template: Kernel, b1: int, b2: int, symmetric: bool) -> list[Leaf]:
        spatial = len(template.shape1) - 2
        perm = tuple(range(spatial)) if template.diagonal_spatial else _pair_swaps(spatial)
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
            name = leaf_name(path)
            if name in ("nngp", "ntk"):
                out.append(Leaf(name, "pair", tuple(leaf.shape[2:]), str(leaf.dtype), perm=perm))
            elif name in ("cov1", "mask1") and not (name == "cov1" and not template.diagonal_batch):
                out.append(Leaf(name, "row1", tuple(leaf.shape[1:]), str(leaf.dtype)))
            elif name == "cov1":
                # diagonal_batch=False is only accepted for x1 with itself (checked by
                # the caller), where the covariance of x1 with itself is nngp.
                out.append(Leaf(name, "alias", tuple(leaf.shape[2:]), str(leaf.dtype), source="nngp"))
            elif name in ("cov2", "mask2"):
                out.append(Leaf(name, "row2", tuple(leaf.shape[1:]), str(leaf.dtype)))
            else:  # pragma: no cover - Kernel has no other array fields
                raise AssertionError(name)
        return out


class FnBlocks(AbstractBlockFn):
    """`fn(xa, xb, *args, **kwargs)` for a neural-tangents-style kernel function.

    Extra arguments are held here (array leaves, such as `params`, travel to every
    device as replicated inputs) because a wrapped function's signature is the
    user's: this is the one place where arguments are forwarded unnamed.
    """

    fn: Callable
    args: tuple
    kwargs: dict[str, Any]

    def __call__(self, xa: ArrayLike, xb: ArrayLike | None) -> PyTree[Array]:
        return self.fn(xa, xb, *self.args, **self.kwargs)

    @property
    def traceable(self) -> bool:
        # Monte Carlo kernel functions loop over networks in Python and spread them
        # over devices themselves.
        inner = self.fn
        while isinstance(inner, (eqx.Partial, functools.partial)):
            inner = inner.func
        return not isinstance(inner, MonteCarloKernelFn)

    def leaves(self, template: PyTree, b1: int, b2: int, symmetric: bool) -> list[Leaf]:
        axes, inner = None, self.fn
        while isinstance(inner, (eqx.Partial, functools.partial)):
            inner = inner.func
        if isinstance(inner, (AbstractEmpiricalFn, MonteCarloKernelFn)):
            axes = (inner.trace_axes, inner.diagonal_axes)
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
            name = leaf_name(path)
            shape = tuple(getattr(leaf, "shape", ()))
            if shape[:2] != (b1, b2):
                raise ValueError(
                    f"`kernel_fn` returned `{name}` of shape {shape} for blocks of {b1} and {b2} "
                    f"examples; blocks need outputs of shape (n1, n2, ...). A kernel traced over "
                    "the batch axis or diagonal in it (`trace_axes`/`diagonal_axes` containing 0) "
                    "cannot be computed in blocks."
                )
            perm = None if axes is None else _zip_rule_perm(len(shape) - 2, *axes)
            out.append(Leaf(name, "pair", shape[2:], str(np.dtype(leaf.dtype)), perm=perm))
        return out


def symmetric_ok(leaves: list[Leaf]) -> bool:
    """Whether the lower triangle can be filled by transposing the upper one."""
    return all(l.perm is not None for l in leaves if l.role == "pair")


def finish_tree(tree: PyTree, n1: int, n2: int) -> PyTree:
    """An output assembled in the structure of a block's output, with the full sizes
    in its static fields (a `Kernel`'s `shape1`, `shape2`)."""
    if isinstance(tree, Kernel):
        return tree.replace(
            shape1=(n1,) + tree.shape1[1:], shape2=(n1 if tree.cov2 is None else n2,) + tree.shape2[1:]
        )
    return tree
