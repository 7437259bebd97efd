import math

import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._layout import spatial_diagonal
from ._base import AbstractFinite, AbstractLayer, check_in_shape, map_masks, with_shapes


class Flatten(AbstractLayer):
    r"""Flatten each example to a vector of `prod(shape)` features.

    A following affine layer averages over positions and channels, so the kernel is
    the mean over the spatial diagonal:
    $\mathcal{K}'(x, x') = \frac{1}{|S|}\sum_{s \in S}\mathcal{K}(x_s, x'_s)$
    (Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs"). It needs
    only the spatial diagonal of its input, so a CNN ending in `Flatten` runs in
    $O(N^2 |S|)$ rather than $O(N^2|S|^2)$. The output is not a Gaussian kernel of the
    flattened entries (it is their average), so a nonlinearity may not follow directly.
    neural-tangents: `stax.Flatten`.
    """

    def __call__(self, k: Kernel) -> Kernel:
        if len(k.shape1) <= 2:
            return k

        def mean_diag(x, batch_axes):
            if x is None:
                return None
            if not k.diagonal_spatial:
                x = spatial_diagonal(x, batch_axes)
            return jnp.mean(x, axis=tuple(range(batch_axes, x.ndim)))

        b = 1 if k.diagonal_batch else 2
        return with_shapes(
            k,
            self,
            nngp=mean_diag(k.nngp, 2),
            ntk=mean_diag(k.ntk, 2),
            cov1=mean_diag(k.cov1, b),
            cov2=mean_diag(k.cov2, b),
            diagonal_spatial=False,
            is_gaussian=False,
            is_input=False,
            **map_masks(k, lambda m: jnp.all(m.reshape(m.shape[0], -1), axis=1)),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteFlatten":
        check_in_shape("Flatten", in_shape)
        return FiniteFlatten()

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(check_in_shape("Flatten", in_shape)),)

    def requires(self, out: Diagonals) -> Diagonals:
        return out.any_spatial()


class FiniteFlatten(AbstractFinite):
    """Finite twin of `Flatten`."""

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        return x.reshape(-1)
