from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._layout import outer_variances, set_batch_diagonal, spatial_diagonal, variances
from ._base import AbstractFinite, AbstractLayer, check_in_shape, hyperparameter


class LayerNorm(AbstractLayer):
    r"""Normalisation to zero mean and unit variance over `axis` (axes of the batched
    output, channels included).

    With infinitely many channels the channel mean vanishes and the channel variance
    is the kernel's diagonal, so (Novak et al. 2020) with $n_i(p) = \epsilon +$ the
    mean of $\mathcal{K}(x_i, x_i)[p, p]$ over the normalised positions (and over the
    batch when axis 0 is normalised):
    $\mathcal{K}'[i, j, p, q] = \mathcal{K}[i, j, p, q]/\sqrt{n_i(p)\, n_j(q)}$, the same
    for $\Theta$ (a limit that treats the normaliser as a constant, as
    neural-tangents). Needs Gaussian inputs. neural-tangents: `stax.LayerNorm`.
    """

    axis: tuple[int, ...] = eqx.field(static=True)
    eps: Float[Array, ""]

    def __init__(self, axis: int | Sequence[int] = -1, eps: Real[ArrayLike, ""] = 1e-12):
        axes = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
        if (
            isinstance(axes, (str, bytes))
            or not isinstance(axes, Sequence)
            or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
        ):
            raise TypeError(f"`LayerNorm(axis=...)` must be an int or a tuple of ints; got {axis!r}.")
        self.axis = tuple(axes)
        self.eps = hyperparameter("LayerNorm", "eps", eps, nonnegative=True)

    def _axes(self, ndim: int) -> tuple[bool, tuple[int, ...]]:
        """(normalise over batch?, normalised spatial axes counted from 0) for outputs
        of `ndim` axes (batch included)."""
        axes = set()
        for a in self.axis:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"`LayerNorm(axis={self.axis})` is out of range for outputs with {ndim} axes."
                )
            axes.add(a % ndim)
        if ndim - 1 not in axes:
            raise ValueError(
                f"`LayerNorm(axis={self.axis})` must include the channel axis (-1): normalising over "
                "channels is what makes the infinite-width limit exist."
            )
        return 0 in axes, tuple(sorted(a - 1 for a in axes if 0 < a < ndim - 1))

    def _norms(self, k: Kernel, cov: Array, n: int, mask: Array | None) -> Array:
        r"""$\epsilon$ + variances averaged over the normalised axes (over unmasked
        positions only), shape `(n, *spatial)`."""
        over_batch, spatial = self._axes(len(k.shape1))
        var = variances(cov, k.diagonal_batch, k.diagonal_spatial)
        axes = tuple(1 + a for a in spatial) + ((0,) if over_batch else ())
        if axes:
            if mask is None:
                var = jnp.mean(var, axis=axes, keepdims=True)
            else:
                keep = (~mask).astype(var.dtype)
                count = jnp.sum(keep, axis=axes, keepdims=True)
                var = jnp.sum(var * keep, axis=axes, keepdims=True) / jnp.maximum(count, 1)
        return jnp.broadcast_to(self.eps + var, (n,) + tuple(k.shape1[1:-1]))

    def __call__(self, k: Kernel) -> Kernel:
        self.out_shape(k.shape1[1:])
        if not k.is_gaussian:
            raise ValueError(
                "`LayerNorm` needs Gaussian inputs; put an affine layer (`Dense`, `Conv`, ...) before it."
            )
        n1 = self._norms(k, k.cov1, k.shape1[0], k.mask1)
        n2 = n1 if k.cov2 is None else self._norms(k, k.cov2, k.shape2[0], k.mask2)
        a, b = outer_variances(n1, n2, k.diagonal_spatial, 2)
        scale = jax.lax.rsqrt(a * b)
        nngp = k.nngp * scale
        ntk = None if k.ntk is None else k.ntk * scale

        def self_cov(cov, n):
            a, b = outer_variances(n, n, k.diagonal_spatial, 1 if k.diagonal_batch else 2)
            return cov * jax.lax.rsqrt(a * b)

        cov1 = self_cov(k.cov1, n1)
        if k.cov2 is None:
            # Same denominators for the diagonal of nngp and for cov1: keep them equal.
            nngp = set_batch_diagonal(
                nngp, cov1 if k.diagonal_batch else jnp.moveaxis(jnp.diagonal(cov1, 0, 0, 1), -1, 0)
            )
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=None if k.cov2 is None else self_cov(k.cov2, n2),
            is_input=False,
        )

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("LayerNorm", in_shape)
        self._axes(len(in_shape) + 1)
        return in_shape

    def requires(self, out: Diagonals) -> Diagonals:
        return out

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteLayerNorm":
        in_shape = check_in_shape("LayerNorm", in_shape)
        over_batch, spatial = self._axes(len(in_shape) + 1)
        if over_batch:
            raise ValueError(
                "`LayerNorm` over the batch axis has no finite twin acting on one example; "
                "use it only in `kernelalg.kernel`."
            )
        return FiniteLayerNorm(spatial + (len(in_shape) - 1,), self.eps)


class FiniteLayerNorm(AbstractFinite):
    """Finite twin of `LayerNorm` on one example: `(x - mean) / sqrt(eps + var)`."""

    axes: tuple[int, ...] = eqx.field(static=True)
    eps: Float[Array, ""]

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        mean = jnp.mean(x, axis=self.axes, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=self.axes, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jax.lax.stop_gradient(self.eps) + var)


class Dropout(AbstractLayer):
    r"""Dropout with keep probability `rate` (neural-tangents' and
    `jax.example_libraries.stax`'s convention: `rate` is the probability of *keeping*
    a unit), scaling kept units by `1 / rate`.

    In 'train' mode each unit is an independent mask, so only the variance of a unit
    with itself grows: $\mathcal{K}'[i, i, p, p] = \mathcal{K}[i, i, p, p]/\text{rate}$
    (for $x_1$ with itself) and $\Theta$ likewise; covariances between different
    examples or positions are unchanged. 'test' mode is the identity. Not allowed
    directly on the inputs. neural-tangents: `stax.Dropout`.
    """

    rate: Float[Array, ""]
    mode: str = eqx.field(static=True)

    def __init__(self, rate: Real[ArrayLike, ""], mode: Literal["train", "test"] = "train"):
        if mode not in ("train", "test"):
            raise ValueError(f"`Dropout(mode=...)` must be 'train' or 'test'; got {mode!r}.")
        self.rate = hyperparameter("Dropout", "rate", rate, positive=True)
        if not isinstance(self.rate, jax.core.Tracer) and float(self.rate) > 1:
            raise ValueError(f"`Dropout(rate=...)` is a keep probability in (0, 1]; got {float(self.rate)}.")
        self.mode = mode

    def __call__(self, k: Kernel) -> Kernel:
        if k.is_input:
            raise ValueError("`Dropout` cannot be applied to the inputs; put a layer before it.")
        if self.mode == "test":
            return k
        factor = 1 / self.rate

        def diag_mul(x, batch_diag: bool):
            # Multiply entries with the same example (when batch axes are doubled) and
            # the same position in every spatial dimension.
            if x is None:
                return None
            if k.diagonal_spatial:
                pos = x
            else:
                pos = spatial_diagonal(x, 1 if batch_diag else 2)
            if batch_diag:
                new_pos = pos * factor
            else:
                idx = jnp.arange(pos.shape[0])
                new_pos = pos.at[idx, idx].multiply(factor)
            if k.diagonal_spatial:
                return new_pos
            return x + _embed(new_pos - pos, 1 if batch_diag else 2)

        nngp, ntk = k.nngp, k.ntk
        if k.cov2 is None:
            nngp, ntk = diag_mul(nngp, False), diag_mul(ntk, False)
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=diag_mul(k.cov1, k.diagonal_batch),
            cov2=diag_mul(k.cov2, k.diagonal_batch),
            is_gaussian=False,
            is_input=False,
        )

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return check_in_shape("Dropout", in_shape)

    def requires(self, out: Diagonals) -> Diagonals:
        return out

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteDropout":
        check_in_shape("Dropout", in_shape)
        return FiniteDropout(self.rate, self.mode)


def _embed(diag: Array, batch: int) -> Array:
    from ..ops._conv import embed_diagonal

    return embed_diagonal(diag, batch)


class FiniteDropout(AbstractFinite):
    """Finite twin of `Dropout`: needs a `key` in 'train' mode."""

    rate: Float[Array, ""]
    mode: str = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if self.mode == "test":
            return x
        if key is None:
            raise ValueError("`Dropout` in 'train' mode needs a `key` when called.")
        rate = jax.lax.stop_gradient(self.rate)
        keep = jax.random.bernoulli(key, rate, x.shape)
        return jnp.where(keep, x / rate, 0)
