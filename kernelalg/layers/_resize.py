from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._linear import apply_matrix, resize_matrix
from ._axes import canonical_order
from ._base import AbstractFinite, AbstractLayer, check_in_shape, map_masks, remask_kernel, with_shapes


ResizeMethodName = Literal[
    "nearest",
    "linear",
    "bilinear",
    "trilinear",
    "triangle",
    "cubic",
    "bicubic",
    "tricubic",
    "lanczos3",
    "lanczos5",
]

_METHODS = {
    "nearest": "nearest",
    "linear": "linear",
    "bilinear": "linear",
    "trilinear": "linear",
    "triangle": "linear",
    "cubic": "cubic",
    "bicubic": "cubic",
    "tricubic": "cubic",
    "lanczos3": "lanczos3",
    "lanczos5": "lanczos5",
}


def _check_method(method) -> str:
    if isinstance(method, jax.image.ResizeMethod):
        method = method.name.lower()
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(
            "`ImageResize(method=...)` must be 'nearest', 'linear' (or 'bilinear', 'trilinear', "
            f"'triangle'), 'cubic', 'lanczos3', 'lanczos5' or a `jax.image.ResizeMethod`; got {method!r}."
        )
    return _METHODS[method.lower()]


class ImageResize(AbstractLayer):
    r"""Resizing of the spatial axes by interpolation, as `jax.image.resize`.

    Resizing is linear and separable: along spatial axis $d$ it is a fixed matrix
    $R_d$ (`n_out` by `n_in`; a triangle filter for 'linear', antialiased when
    downsampling, one-hot rows for 'nearest'), applied to every channel alike. The
    kernel is therefore, per spatial dimension,
    $$\mathcal{K}'[o_1, o_2] = \sum_{p_1, p_2} R_d[o_1, p_1]\, R_d[o_2, p_2]\,
    \mathcal{K}[p_1, p_2],$$
    $R_d \mathcal{K} R_d^\top$ on each zipped pair of axes, and the same for $\Theta$
    (no parameters). 'linear' (and 'cubic', 'lanczos*') read covariances between
    different positions, so they need the full spatial covariance; 'nearest' picks one
    input per output, $\mathcal{K}'[o, o] = \mathcal{K}[\pi(o), \pi(o)]$, and works on
    the spatial diagonal too.

    Masks (variable-length inputs): an output position is masked only when every input
    it reads is masked (neural-tangents' convention: content wins over the mask).

    **Arguments:**

    - `shape`: the output shape of the batched array, one entry per axis (batch and
      channels included, in the layout given by `batch_axis`, `channel_axis`); `-1`
      keeps an axis. The batch and channel entries must be `-1`: resizing examples or
      (infinitely many) channels has no infinite-width limit.
    - `method`: 'linear' (aliases 'bilinear', 'trilinear', 'triangle'), 'nearest', or
      a `jax.image.ResizeMethod`. 'cubic', 'lanczos3' and 'lanczos5' are linear maps
      too and are supported as well (neural-tangents' kernel has only 'linear' and
      'nearest').
    - `antialias`: antialiasing filter when downsampling ('linear', 'cubic',
      'lanczos*'); no effect when upsampling or for 'nearest'.
    - `precision`: of the contractions, in the finite twin and the kernel.
    - `batch_axis`, `channel_axis`: where `shape` has its batch and channel entries; use
      the values given to `kernelalg.kernel`. The layer itself works on kernelalg's
      canonical layout (batch first, channels last) and stores `shape` in it.

    neural-tangents: `stax.ImageResize`.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True)
    antialias: bool = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)

    def __init__(
        self,
        shape: Sequence[int],
        method: ResizeMethodName | jax.image.ResizeMethod,
        antialias: bool = True,
        precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST,
        batch_axis: int = 0,
        channel_axis: int = -1,
    ):
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise TypeError(f"`ImageResize(shape=...)` must be a tuple of ints; got {shape!r}.")
        shape = tuple(shape)
        if not all(isinstance(s, int) and not isinstance(s, bool) and (s == -1 or s > 0) for s in shape):
            raise ValueError(
                f"`ImageResize(shape=...)` must hold positive ints or -1 (keep the axis); got {shape!r}."
            )
        if len(shape) < 2:
            raise ValueError(
                "`ImageResize(shape=...)` needs one entry per axis of the batched input (batch, "
                f"spatial axes, channels); got {shape!r}."
            )
        order = canonical_order(len(shape), batch_axis, channel_axis, "ImageResize")
        if shape[order[0]] != -1:
            raise ValueError(
                f"`ImageResize(shape={shape})` resizes the batch axis {batch_axis}: interpolating "
                "between examples is not a layer of a network. Set `shape[batch_axis] = -1`."
            )
        if shape[order[-1]] != -1:
            raise ValueError(
                f"`ImageResize(shape={shape})` resizes the channel axis {channel_axis}, which is not "
                "defined in the infinite-width limit (neural-tangents refuses it too). Set "
                "`shape[channel_axis] = -1`, or change the width with a `Dense`/`Conv` layer."
            )
        self.shape = tuple(shape[a] for a in order)
        self.method = _check_method(method)
        if not isinstance(antialias, bool):
            raise TypeError(f"`ImageResize(antialias=...)` must be a bool; got {antialias!r}.")
        self.antialias = antialias
        if precision is not None and not isinstance(precision, jax.lax.Precision):
            raise TypeError(f"`ImageResize(precision=...)` must be a `jax.lax.Precision`; got {precision!r}.")
        self.precision = precision

    def _resized(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial sizes of the output for one example of shape `in_shape`."""
        return tuple(s if t == -1 else t for s, t in zip(in_shape[:-1], self.shape[1:-1]))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("ImageResize", in_shape)
        if len(in_shape) + 1 != len(self.shape):
            raise ValueError(
                f"`ImageResize(shape=...)` has {len(self.shape)} entries (batch, spatial axes, channels), "
                f"but its inputs have {len(in_shape) + 1} axes (examples of shape {in_shape}); give one "
                "entry per axis of the batched input."
            )
        return self._resized(in_shape) + in_shape[-1:]

    def _changes_positions(self) -> bool:
        return any(s != -1 for s in self.shape[1:-1])

    def requires(self, out: Diagonals) -> Diagonals:
        if self.method == "nearest" or not self._changes_positions():
            return out
        return out.full_spatial("ImageResize")

    def __call__(self, k: Kernel) -> Kernel:
        in_spatial = k.shape1[1:-1]
        out_spatial = self.out_shape(k.shape1[1:])[:-1]
        if not self._changes_positions():
            return k
        if k.diagonal_spatial and self.method != "nearest":
            raise ValueError(
                f"`ImageResize(method='{self.method}')` needs the full spatial covariance; got a "
                "diagonal_spatial kernel (only 'nearest' works on the spatial diagonal)."
            )
        mats = [
            None if n == m else resize_matrix(n, m, self.method, self.antialias, k.dtype)
            for n, m in zip(in_spatial, out_spatial)
        ]

        def resize(x, batch):
            if x is None:
                return None
            for d, r in enumerate(mats):
                if r is None:
                    continue
                if k.diagonal_spatial:
                    x = apply_matrix(x, batch + d, r, self.precision)
                else:
                    x = apply_matrix(x, batch + 2 * d, r, self.precision)
                    x = apply_matrix(x, batch + 2 * d + 1, r, self.precision)
            return x

        def mask(m):
            # An output is unmasked when some unmasked input reaches it with a non-zero weight.
            keep = (~m).astype(k.dtype)
            for d, r in enumerate(mats):
                if r is not None:
                    keep = apply_matrix(keep, 1 + d, (r != 0).astype(k.dtype), self.precision)
            return ~(keep > 0)

        b = 1 if k.diagonal_batch else 2
        out = with_shapes(
            k,
            self,
            nngp=resize(k.nngp, 2),
            ntk=resize(k.ntk, 2),
            cov1=resize(k.cov1, b),
            cov2=resize(k.cov2, b),
            **map_masks(k, mask),
        )
        return remask_kernel(out)

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteImageResize":
        out = self.out_shape(in_shape)
        return FiniteImageResize(out, self.method, self.antialias, self.precision)


class FiniteImageResize(AbstractFinite):
    """Finite twin of `ImageResize`: `jax.image.resize` of one example."""

    shape: tuple[int, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True)
    antialias: bool = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if x.shape[:-1] == self.shape[:-1]:
            return x
        return jax.image.resize(
            x, self.shape, self.method, antialias=self.antialias, precision=self.precision
        )
