import math
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops import _conv as conv_ops
from ..ops._layout import masked_counts
from ._base import AbstractFinite, AbstractLayer, check_in_shape, map_masks, with_shapes
from ._conv import Padding, check_padding, check_spatial_input, check_window


class AbstractPool(AbstractLayer):
    r"""Average or sum pooling over windows.

    $y_i = \frac{1}{W}\sum_{d} x_{s i + d}$ (average) gives, per spatial dimension,
    $\mathcal{K}'[i, j] = \frac{1}{W^2}\sum_{d, d'} \mathcal{K}[s i + d, s j + d']$:
    a window sum along each axis of the pair (`kernelalg.ops.pool_pair`), $2W$ adds
    per dimension. The same map applies to $\Theta$ (no parameters). It reads
    covariances between different positions, so it needs the full spatial kernel.
    """

    window_shape: eqx.AbstractVar[tuple[int, ...]]
    strides: eqx.AbstractVar[tuple[int, ...]]
    padding: eqx.AbstractVar[str]

    def _divisor(self, size: int, window: int, stride: int) -> np.ndarray | float:
        return 1.0

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        name = type(self).__name__
        in_shape = check_spatial_input(name, in_shape, len(self.window_shape))
        out = []
        for size, w, st in zip(in_shape[:-1], self.window_shape, self.strides):
            o = conv_ops.out_size(size, w, st, self.padding)
            if o <= 0:
                raise ValueError(
                    f"`{name}`: window {self.window_shape} with padding='{self.padding}' is larger than the "
                    f"input's spatial shape {in_shape[:-1]}."
                )
            out.append(o)
        return tuple(out) + in_shape[-1:]

    def requires(self, out: Diagonals) -> Diagonals:
        return out.full_spatial(type(self).__name__)

    def __call__(self, k: Kernel) -> Kernel:
        name = type(self).__name__
        self.out_shape(k.shape1[1:])
        if k.diagonal_spatial:
            raise ValueError(f"`{name}` needs the full spatial covariance; got a diagonal_spatial kernel.")

        def pool(x, batch):
            if x is None:
                return None
            for i, (size, w, st) in enumerate(zip(k.shape1[1:-1], self.window_shape, self.strides)):
                axis = batch + 2 * i
                x = conv_ops.pool_pair(x, axis, w, st, self.padding)
                div = np.asarray(self._divisor(size, w, st), dtype=float)
                if div.ndim:
                    shape = [1] * x.ndim
                    shape[axis] = div.shape[0]
                    row = jnp.asarray(div.reshape(shape), x.dtype)
                    col = jnp.asarray(
                        div.reshape(shape[:axis] + [1, div.shape[0]] + shape[axis + 2 :]), x.dtype
                    )
                    x = x / row / col
                elif div != 1.0:
                    x = x / float(div) ** 2
            return x

        def mask(m):
            for i, (w, st) in enumerate(zip(self.window_shape, self.strides)):
                m = conv_ops.pool_mask(m, 1 + i, w, st, self.padding)
            return m

        b = 1 if k.diagonal_batch else 2
        return with_shapes(
            k,
            self,
            **map_masks(k, mask),
            nngp=pool(k.nngp, 2),
            ntk=pool(k.ntk, 2),
            cov1=pool(k.cov1, b),
            cov2=pool(k.cov2, b),
            is_input=False,
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FinitePool":
        in_shape = check_spatial_input(type(self).__name__, in_shape, len(self.window_shape))
        self.out_shape(in_shape)
        divisors = tuple(
            tuple(np.atleast_1d(np.asarray(self._divisor(size, w, st), dtype=float)).tolist())
            for size, w, st in zip(in_shape[:-1], self.window_shape, self.strides)
        )
        return FinitePool(self.window_shape, self.strides, self.padding, divisors)


def _pool_init(owner, window_shape, strides, padding):
    window_shape = check_window(owner, "window_shape", window_shape)
    strides = (
        (1,) * len(window_shape)
        if strides is None
        else check_window(owner, "strides", strides, len(window_shape))
    )
    return window_shape, strides, check_padding(owner, padding)


class AvgPool(AbstractPool):
    __doc__ = (
        AbstractPool.__doc__
        + """
    **Arguments:**

    - `window_shape`: window per spatial axis.
    - `strides`: per spatial axis; default 1 (as neural-tangents; pass
      `strides=window_shape` for non-overlapping windows).
    - `padding`: `'VALID'`, `'SAME'` or `'CIRCULAR'`.
    - `normalize_edges`: with `'SAME'` padding, divide by the number of real (not
      padded) inputs in each window rather than by $W$.

    neural-tangents: `stax.AvgPool`.
    """
    )

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    normalize_edges: bool = eqx.field(static=True)

    def __init__(
        self,
        window_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        normalize_edges: bool = False,
    ):
        self.window_shape, self.strides, self.padding = _pool_init("AvgPool", window_shape, strides, padding)
        self.normalize_edges = bool(normalize_edges)

    def _divisor(self, size, window, stride):
        if self.normalize_edges and self.padding == "SAME":
            return conv_ops.edge_counts(size, window, stride, self.padding)
        return float(window)


class SumPool(AbstractPool):
    __doc__ = (
        "Sum pooling: `AvgPool` without the division, $\\mathcal{K}' = \\sum_{d,d'}"
        " \\mathcal{K}[s i + d, s j + d']$. Arguments as `AvgPool`. neural-tangents: "
        "`stax.SumPool`."
    )

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)

    def __init__(
        self, window_shape: Sequence[int], strides: Sequence[int] | None = None, padding: Padding = "VALID"
    ):
        self.window_shape, self.strides, self.padding = _pool_init("SumPool", window_shape, strides, padding)


class FinitePool(AbstractFinite):
    """Finite twin of `AvgPool`/`SumPool`: window sums divided per output position."""

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    divisors: tuple[tuple[float, ...], ...] = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        for axis, (w, st, div) in enumerate(zip(self.window_shape, self.strides, self.divisors)):
            x = conv_ops.window_sum(x, axis, w, st, self.padding)
            shape = [1] * x.ndim
            shape[axis] = len(div)
            x = x / jnp.asarray(np.asarray(div).reshape(shape), x.dtype)
        return x


class AbstractGlobalPool(AbstractLayer):
    r"""Pooling over all positions: $y = \frac{1}{|S|}\sum_p x_p$ (average) or
    $\sum_p x_p$ (sum), so $\mathcal{K}' = \frac{1}{|S|^2}\sum_{p,q}\mathcal{K}[p,q]$
    (or the plain sum); likewise $\Theta$. Needs the full spatial covariance."""

    mode: eqx.AbstractClassVar[Literal["avg", "sum"]]

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape(type(self).__name__, in_shape, min_ndim=2)
        return in_shape[-1:]

    def requires(self, out: Diagonals) -> Diagonals:
        return out.full_spatial(type(self).__name__)

    def __call__(self, k: Kernel) -> Kernel:
        name = type(self).__name__
        self.out_shape(k.shape1[1:])
        if k.diagonal_spatial:
            raise ValueError(f"`{name}` needs the full spatial covariance; got a diagonal_spatial kernel.")
        size = math.prod(k.shape1[1:-1])
        m1 = k.mask1
        m2 = m1 if k.cov2 is None else k.mask2
        # With masks, the average runs over unmasked positions only; masked entries are
        # already zero, so only the counts change. A fully masked example gives 0.
        c1 = masked_counts(m1, k.shape1[0], size).astype(k.nngp.dtype)
        c2 = masked_counts(m2, k.shape2[0], size).astype(k.nngp.dtype)

        def pool(x, batch, ca, cb):
            if x is None:
                return None
            out = jnp.sum(x, axis=tuple(range(batch, x.ndim)))
            if self.mode == "sum":
                return out
            denom = ca * cb
            return jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1), 0)

        b = 1 if k.diagonal_batch else 2
        outer = (c1[:, None], c2[None, :])
        self1 = (c1, c1) if k.diagonal_batch else (c1[:, None], c1[None, :])
        self2 = (c2, c2) if k.diagonal_batch else (c2[:, None], c2[None, :])
        return with_shapes(
            k,
            self,
            nngp=pool(k.nngp, 2, *outer),
            ntk=pool(k.ntk, 2, *outer),
            cov1=pool(k.cov1, b, *self1),
            cov2=pool(k.cov2, b, *self2),
            is_input=False,
            **map_masks(k, lambda m: jnp.all(m.reshape(m.shape[0], -1), axis=1)),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteGlobalPool":
        self.out_shape(in_shape)
        return FiniteGlobalPool(self.mode)


class GlobalAvgPool(AbstractGlobalPool):
    __doc__ = AbstractGlobalPool.__doc__ + "\n\n    Average. neural-tangents: `stax.GlobalAvgPool`.\n    "
    mode = "avg"


class GlobalSumPool(AbstractGlobalPool):
    __doc__ = AbstractGlobalPool.__doc__ + "\n\n    Sum. neural-tangents: `stax.GlobalSumPool`.\n    "
    mode = "sum"


class FiniteGlobalPool(AbstractFinite):
    """Finite twin of the global pooling layers."""

    mode: str = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        axes = tuple(range(x.ndim - 1))
        return jnp.mean(x, axes) if self.mode == "avg" else jnp.sum(x, axes)
