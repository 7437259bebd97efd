import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ._base import AbstractFinite, AbstractLayer, check_in_shape, remask_kernel
from ._combinators import _check_layers


class AbstractFanIn(AbstractLayer):
    r"""Branches applied to the same input, then combined.

    Branches are assumed independent given the input: each should hold its own
    affine layer (`Dense`, `Conv`, ...). Two parameter-free branches (say two
    `Identity()`) are perfectly correlated and the kernel would be wrong, as in
    neural-tangents.
    """

    branches: eqx.AbstractVar[tuple[AbstractLayer, ...]]

    def _branch_kernels(self, k: Kernel) -> list[Kernel]:
        return [remask_kernel(b(k)) for b in self.branches]

    def _and_masks(self, ks: list[Kernel]) -> dict:
        # A position of the combined output is masked only where every branch masks it.
        def combine(attr):
            masks = [getattr(kk, attr) for kk in ks if getattr(kk, attr) is not None]
            return functools.reduce(jnp.logical_and, masks) if masks else None

        return {"mask1": combine("mask1"), "mask2": combine("mask2")}

    def requires(self, out: Diagonals) -> Diagonals:
        return functools.reduce(Diagonals.meet, [b.requires(out) for b in self.branches])

    def _branch_shapes(self, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        in_shape = check_in_shape(type(self).__name__, in_shape)
        return [b.out_shape(in_shape) for b in self.branches]

    def _init_branches(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> tuple[eqx.Module, ...]:
        in_shape = check_in_shape(type(self).__name__, in_shape)
        keys = jax.random.split(key, len(self.branches))
        return tuple(b.init(k, in_shape) for b, k in zip(self.branches, keys))


def _same_shapes(name: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError(f"`{name}` branches must have equal output shapes; got {shapes}.")
    return shapes[0]


def _branches(name: str, branches) -> tuple[AbstractLayer, ...]:
    if len(branches) == 0:
        raise ValueError(f"`{name}` needs at least one branch.")
    return _check_layers(name, branches)


class FanInSum(AbstractFanIn):
    r"""Sum of branches: $\mathcal{K} = \sum_i \mathcal{K}_i$,
    $\Theta = \sum_i \Theta_i$. Residual block:
    `FanInSum(Identity(), Serial(Dense(...), Relu(), Dense(...)))`.

    Cross terms vanish only if at most one branch has a non-zero mean (is not
    Gaussian): a mean-zero Gaussian branch ending in an affine layer is uncorrelated
    with everything else. neural-tangents: `serial(FanOut(n), parallel(...), FanInSum())`.
    """

    branches: tuple[AbstractLayer, ...]

    def __init__(self, *branches: AbstractLayer):
        self.branches = _branches("FanInSum", branches)

    def __call__(self, k: Kernel) -> Kernel:
        ks = self._branch_kernels(k)
        _same_shapes("FanInSum", [kk.shape1 for kk in ks])
        if sum(not kk.is_gaussian for kk in ks) > 1:
            raise ValueError(
                "`FanInSum`: more than one branch has non-Gaussian (non-zero-mean) outputs, "
                "so their cross-covariances do not vanish and the sum has no closed form. "
                "End all but one branch with an affine layer (`Dense`, `Conv`, ...)."
            )
        return functools.reduce(lambda a, b: a + b, ks).replace(
            is_gaussian=all(kk.is_gaussian for kk in ks),
            is_input=all(kk.is_input for kk in ks),
            **self._and_masks(ks),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteFanIn":
        self.out_shape(in_shape)
        return FiniteFanIn(self._init_branches(key, in_shape), "sum", -1)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return _same_shapes("FanInSum", self._branch_shapes(in_shape))


class FanInProd(AbstractFanIn):
    r"""Elementwise product of independent branches:
    $\mathcal{K} = \prod_i \mathcal{K}_i$,
    $\Theta = \sum_i \Theta_i \prod_{j \ne i}\mathcal{K}_j$ (product rule).
    neural-tangents: `FanInProd()`."""

    branches: tuple[AbstractLayer, ...]

    def __init__(self, *branches: AbstractLayer):
        self.branches = _branches("FanInProd", branches)

    def __call__(self, k: Kernel) -> Kernel:
        ks = self._branch_kernels(k)
        _same_shapes("FanInProd", [kk.shape1 for kk in ks])
        nngp, ntk = ks[0].nngp, ks[0].ntk
        for kk in ks[1:]:
            if ntk is not None:
                ntk = ntk * kk.nngp + nngp * kk.ntk
            nngp = nngp * kk.nngp
        prod = functools.partial(functools.reduce, jnp.multiply)
        return ks[0].replace(
            nngp=nngp,
            ntk=ntk,
            cov1=prod([kk.cov1 for kk in ks]),
            cov2=None if ks[0].cov2 is None else prod([kk.cov2 for kk in ks]),
            is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
            is_input=False,
            **self._and_masks(ks),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteFanIn":
        self.out_shape(in_shape)
        return FiniteFanIn(self._init_branches(key, in_shape), "prod", -1)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return _same_shapes("FanInProd", self._branch_shapes(in_shape))


def _concat(
    mats: list[Array | None], kernel_axis: int, batch_axes: int, diagonal_spatial: bool, widths: list[int]
) -> Array | None:
    # `kernel_axis`: 0 for channels, i >= 1 for the i-th spatial axis.
    if mats[0] is None:
        return None
    if kernel_axis == 0:
        if all(w == widths[0] for w in widths):
            widths = [1] * len(widths)
        return sum(m * w for m, w in zip(mats, widths)) / sum(widths)
    if diagonal_spatial:
        return jnp.concatenate(mats, axis=batch_axes + kernel_axis - 1)
    # Full spatial covariance: positions from different branches are uncorrelated,
    # so the result is block diagonal along the doubled axis pair.
    a = batch_axes + 2 * (kernel_axis - 1)
    sizes = [m.shape[a] for m in mats]
    rows = []
    for i, m in enumerate(mats):
        pad = [(0, 0)] * m.ndim
        pad[a + 1] = (sum(sizes[:i]), sum(sizes[i + 1 :]))
        rows.append(jnp.pad(m, pad))
    return jnp.concatenate(rows, axis=a)


class FanInConcat(AbstractFanIn):
    r"""Concatenation of branches along `axis` (of the batched output; `-1` is the
    channel axis, `0` the batch axis, which is not supported).

    Along channels, the kernel is the width-weighted mean
    $\mathcal{K} = \sum_i n_i \mathcal{K}_i / \sum_i n_i$ (Novak et al. 2020). Along a
    spatial axis, positions are concatenated; positions from different branches are
    uncorrelated, which needs every branch Gaussian. neural-tangents: `FanInConcat`.
    """

    branches: tuple[AbstractLayer, ...]
    axis: int = eqx.field(static=True)

    def __init__(self, *branches: AbstractLayer, axis: int = -1):
        self.branches = _branches("FanInConcat", branches)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"`FanInConcat(axis=...)` must be an int; got {axis!r}.")
        self.axis = axis

    def _example_axis(self, ndim: int) -> int:
        # `ndim`: axes of one example. Returns the axis in the per-example shape.
        full = ndim + 1
        if not -full <= self.axis < full:
            raise ValueError(f"`FanInConcat(axis={self.axis})` is out of range for outputs with {full} axes.")
        axis = self.axis % full
        if axis == 0:
            raise ValueError(
                "`FanInConcat(axis=0)` concatenates along the batch axis, which changes "
                "the examples rather than their features; concatenate the inputs instead."
            )
        return axis - 1

    def __call__(self, k: Kernel) -> Kernel:
        ks = self._branch_kernels(k)
        shapes = [kk.shape1[1:] for kk in ks]
        out = self.out_shape(k.shape1[1:])
        ax = self._example_axis(len(out))
        kernel_axis = 0 if ax == len(out) - 1 else ax + 1
        if kernel_axis != 0 and not all(kk.is_gaussian for kk in ks):
            raise ValueError(
                "`FanInConcat` along a spatial axis needs every branch Gaussian (ending in "
                "an affine layer) so that positions from different branches are uncorrelated."
            )
        widths = [s[-1] for s in shapes]
        cat = functools.partial(
            _concat, kernel_axis=kernel_axis, diagonal_spatial=k.diagonal_spatial, widths=widths
        )
        b = 1 if k.diagonal_batch else 2
        return ks[0].replace(
            nngp=cat([kk.nngp for kk in ks], batch_axes=2),
            ntk=cat([kk.ntk for kk in ks], batch_axes=2),
            cov1=cat([kk.cov1 for kk in ks], batch_axes=b),
            cov2=cat([kk.cov2 for kk in ks], batch_axes=b),
            shape1=(k.shape1[0],) + out,
            shape2=(k.shape2[0],) + out,
            is_gaussian=kernel_axis != 0,
            is_input=False,
            **(
                self._and_masks(ks)
                if kernel_axis == 0
                else {
                    name: None
                    if getattr(ks[0], name) is None
                    else jnp.concatenate([getattr(kk, name) for kk in ks], axis=kernel_axis)
                    for name in ("mask1", "mask2")
                }
            ),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteFanIn":
        out = self.out_shape(in_shape)
        return FiniteFanIn(self._init_branches(key, in_shape), "concat", self._example_axis(len(out)))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = self._branch_shapes(in_shape)
        if any(len(s) != len(shapes[0]) for s in shapes):
            raise ValueError(f"`FanInConcat` branches must have outputs of equal rank; got {shapes}.")
        ax = self._example_axis(len(shapes[0]))
        rest = [s[:ax] + s[ax + 1 :] for s in shapes]
        if any(r != rest[0] for r in rest):
            raise ValueError(
                f"`FanInConcat(axis={self.axis})` branches must agree on every other axis; got {shapes}."
            )
        return shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1 :]


class FiniteFanIn(AbstractFinite):
    """Finite twin of the fan-in layers."""

    branches: tuple[eqx.Module, ...]
    mode: Literal["sum", "prod", "concat"] = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        keys = [None] * len(self.branches) if key is None else jax.random.split(key, len(self.branches))
        ys = [b(x, key=k) for b, k in zip(self.branches, keys)]
        if self.mode == "sum":
            return functools.reduce(jnp.add, ys)
        if self.mode == "prod":
            return functools.reduce(jnp.multiply, ys)
        return jnp.concatenate(ys, axis=self.axis)
