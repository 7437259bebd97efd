import abc
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray, Real

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._layout import remask


class AbstractLayer(eqx.Module):
    """A layer of an infinitely wide network, paired with its finite twin.

    One definition is three things:

    - `layer(k)`: the kernel transform `Kernel -> Kernel` of the infinite-width layer;
    - `layer.init(key, in_shape)`: a finite `eqx.Module` with sampled parameters,
      acting on one example of shape `in_shape` (no batch axis, channels last);
    - `layer.out_shape(in_shape)`: the finite twin's output shape, without running it.

    `layer.requires(out)` says which diagonals the input kernel may drop, given which
    the output may drop (see `kernelalg.Diagonals`).
    """

    @abc.abstractmethod
    def __call__(self, k: Kernel) -> Kernel:
        """The kernel of this layer's outputs, given that of its inputs."""

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> eqx.Module:
        """Sample the finite twin for inputs of shape `in_shape` (one example)."""

    @abc.abstractmethod
    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the finite twin's output for one example of shape `in_shape`."""

    @abc.abstractmethod
    def requires(self, out: Diagonals) -> Diagonals:
        """Diagonals the input kernel may drop, given those the output may drop."""


class AbstractFinite(eqx.Module):
    """A finite-width network built by `AbstractLayer.init`: one example per call."""

    @abc.abstractmethod
    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """Apply the network to one example `x` (no batch axis, channels last)."""


def lift_channels(v: Array, ndim: int) -> Array:
    """`v` (a bias of shape `(c,)`, or `(*spatial, c)` for unshared ones) with leading unit
    axes up to rank `ndim`, to add to channels-last outputs.

    Explicit, because kernelalg runs (and is tested) under `jax_numpy_rank_promotion='raise'`,
    which users of strict JAX set too.
    """
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def layer_name(layer: AbstractLayer) -> str:
    return type(layer).__name__


def hyperparameter(
    owner: str,
    name: str,
    value: Real[ArrayLike, ""],
    *,
    nonnegative: bool = False,
    positive: bool = False,
) -> Array:
    """Check a continuous hyperparameter and store it as a weakly typed array leaf.

    Weak typing keeps float32 kernels float32 when a Python float multiplies them;
    arrays (including tracers under `vmap`/`grad`) are kept as they are. Range checks
    run only on concrete values, so transformations over hyperparameters still work.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(
            f"`{owner}({name}=...)` must be a real number or a scalar array; got "
            f"{type(value).__name__} {value!r}."
        )
    if isinstance(value, numbers.Real) and not isinstance(value, (np.ndarray, np.generic)):
        arr = jnp.asarray(float(value))
    else:
        arr = jnp.asarray(value)
        if arr.shape != ():
            raise ValueError(
                f"`{owner}({name}=...)` must be a scalar; got an array of shape {arr.shape}. "
                "To compute kernels for many settings, `jax.vmap` over the layer."
            )
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            if jnp.issubdtype(arr.dtype, jnp.integer):
                arr = arr.astype(jnp.result_type(float))
            else:
                raise TypeError(f"`{owner}({name}=...)` must be real; got dtype {arr.dtype}.")
    if not isinstance(arr, jax.core.Tracer):
        v = float(arr)
        if not np.isfinite(v):
            raise ValueError(f"`{owner}({name}=...)` must be finite; got {v}.")
        if positive and v <= 0:
            raise ValueError(f"`{owner}({name}=...)` must be positive; got {v}.")
        if nonnegative and v < 0:
            raise ValueError(f"`{owner}({name}=...)` must be non-negative; got {v}.")
    return arr


def check_int(owner: str, name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral)):
        raise TypeError(f"`{owner}({name}=...)` must be an int; got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{owner}({name}=...)` must be an int >= {minimum}; got {value}.")
    return int(value)


def check_in_shape(owner: str, in_shape: tuple[int, ...], *, min_ndim: int = 1) -> tuple[int, ...]:
    """Validate the shape of one example (no batch axis) given to `init`/`out_shape`."""
    if not isinstance(in_shape, (tuple, list)) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in in_shape
    ):
        raise TypeError(f"`{owner}.init/out_shape(in_shape=...)` must be a tuple of ints; got {in_shape!r}.")
    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) < min_ndim:
        raise ValueError(
            f"`{owner}` needs inputs with at least {min_ndim} axes per example (channels "
            f"last, no batch axis); got `in_shape={in_shape}`."
        )
    if any(d <= 0 for d in in_shape):
        raise ValueError(f"`{owner}`: every axis of `in_shape` must be positive; got {in_shape}.")
    return in_shape


def with_shapes(k: Kernel, layer: AbstractLayer, **changes) -> Kernel:
    """`k.replace(...)` with `shape1`/`shape2` advanced through `layer.out_shape`."""
    return k.replace(
        shape1=(k.shape1[0],) + layer.out_shape(k.shape1[1:]),
        shape2=(k.shape2[0],) + layer.out_shape(k.shape2[1:]),
        **changes,
    )


def remask_kernel(k: Kernel) -> Kernel:
    """Zero every kernel entry that involves a masked position (neural-tangents'
    `remask_kernel`), so that pooling and attention see masked positions as absent."""
    if k.mask1 is None and k.mask2 is None:
        return k
    m1 = k.mask1
    m2 = m1 if k.cov2 is None else k.mask2
    b = 1 if k.diagonal_batch else 2
    ds = k.diagonal_spatial
    return k.replace(
        nngp=remask(k.nngp, m1, m2, ds, 2),
        ntk=remask(k.ntk, m1, m2, ds, 2),
        cov1=remask(k.cov1, m1, m1, ds, b),
        cov2=remask(k.cov2, m2, m2, ds, b),
    )


def map_masks(k: Kernel, fn) -> dict:
    """`mask1=fn(mask1), mask2=fn(mask2)` for `Kernel.replace`, skipping `None`."""
    return {
        "mask1": None if k.mask1 is None else fn(k.mask1),
        "mask2": None if k.mask2 is None else fn(k.mask2),
    }
