import dataclasses
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float


def _spatial_ndim(shape: tuple[int, ...]) -> int:
    # Batch first, channels last: everything in between is spatial.
    return max(len(shape) - 2, 0)


class Kernel(eqx.Module):
    r"""Covariances of a network's outputs on two batches of inputs.

    The value passed between layers and to `kernelalg.predict`. Immutable; update
    with `dataclasses.replace`.

    **Fields:**

    - `nngp`: $\mathcal{K}(x_1, x_2)$, the output covariance of the infinitely wide
      network (NNGP kernel), shape `(n1, n2, *spatial)`.
    - `ntk`: $\Theta(x_1, x_2)$, the neural tangent kernel, same shape as `nngp`; `None`
      when not requested.
    - `cov1`: $\mathcal{K}(x_1, x_1)$: shape `(n1, *spatial)` if `diagonal_batch`
      (variances only), else `(n1, n1, *spatial)`.
    - `cov2`: the same for $x_2$; `None` means $x_2$ is $x_1$.
    - `shape1`, `shape2`: shapes of the finite network's outputs on $x_1$, $x_2$
      (batch first, channels last); the channel size is that of a finite twin.
    - `is_gaussian`: the layer outputs are mean-zero Gaussian processes (true after an
      affine layer), so that a nonlinearity may follow.
    - `is_reversed`: kept for parity with neural-tangents; always `False` here, since
      kernelalg stores spatial axes in one fixed order.
    - `is_input`: the kernel is still that of the raw inputs.
    - `diagonal_batch`: `cov1`/`cov2` hold only the per-example variances.
    - `diagonal_spatial`: only the spatial diagonal is stored: `nngp[i, j, h, w]`
      instead of `nngp[i, j, h1, h2, w1, w2]`.
    - `mask1`, `mask2`: `(n, *spatial)` booleans, `True` at masked positions of
      variable-length inputs (see `kernelalg.kernel`'s `mask_constant`); `None`:
      nothing masked. Kernel entries involving a masked position are zero.

    Spatial axes are doubled unless `diagonal_spatial`, in neural-tangents' zipped
    order: `nngp[i, j, h1, h2, w1, w2]` is the covariance of sample `i` at `(h1, w1)`
    with sample `j` at `(h2, w2)`.

    **Algebra:** `k1 + k2` is the kernel of the sum of two independent networks with
    these kernels (`nngp`, `ntk` and covariances add); `c * k` with `c >= 0` scales them
    all by `c`, the kernel of $\sqrt{c}\, f$.
    """

    nngp: Float[Array, "n1 n2 *spatial"]
    ntk: Float[Array, "n1 n2 *spatial"] | None
    cov1: Float[Array, "n1 *cov1"]
    cov2: Float[Array, "n2 *cov2"] | None
    shape1: tuple[int, ...] = eqx.field(static=True)
    shape2: tuple[int, ...] = eqx.field(static=True)
    is_gaussian: bool = eqx.field(static=True, default=False)
    is_reversed: bool = eqx.field(static=True, default=False)
    is_input: bool = eqx.field(static=True, default=False)
    diagonal_batch: bool = eqx.field(static=True, default=True)
    diagonal_spatial: bool = eqx.field(static=True, default=False)
    mask1: Bool[Array, "n1 *mask_spatial"] | None = None
    mask2: Bool[Array, "n2 *mask_spatial"] | None = None

    def __check_init__(self):
        s = _spatial_ndim(self.shape1)
        if _spatial_ndim(self.shape2) != s:
            raise ValueError(
                f"`Kernel.shape1` {self.shape1} and `shape2` {self.shape2} must have the "
                "same number of spatial axes."
            )
        per_spatial = 1 if self.diagonal_spatial else 2
        want = 2 + per_spatial * s
        if self.nngp.ndim != want:
            raise ValueError(
                f"`Kernel.nngp` must have {want} axes for {s} spatial axes with "
                f"diagonal_spatial={self.diagonal_spatial}; got shape {self.nngp.shape}."
            )
        want_cov = (1 if self.diagonal_batch else 2) + per_spatial * s
        for name, cov in (("cov1", self.cov1), ("cov2", self.cov2)):
            if cov is not None and cov.ndim != want_cov:
                raise ValueError(
                    f"`Kernel.{name}` must have {want_cov} axes (diagonal_batch="
                    f"{self.diagonal_batch}, diagonal_spatial={self.diagonal_spatial}, "
                    f"{s} spatial axes); got shape {cov.shape}."
                )
        if self.nngp.shape[0] != self.shape1[0]:
            raise ValueError(
                f"`Kernel.nngp` has {self.nngp.shape[0]} rows but `shape1` {self.shape1} says otherwise."
            )

    @property
    def x1_is_x2(self) -> bool:
        """Whether the kernel is of $x_1$ with itself (`cov2 is None`)."""
        return self.cov2 is None

    @property
    def dtype(self) -> Any:
        return self.nngp.dtype

    def replace(self, **changes: Any) -> "Kernel":
        """`dataclasses.replace(self, **changes)`."""
        return dataclasses.replace(self, **changes)

    def __add__(self, other: "Kernel") -> "Kernel":
        if not isinstance(other, Kernel):
            return NotImplemented
        if (
            self.nngp.shape != other.nngp.shape
            or self.diagonal_batch != other.diagonal_batch
            or self.diagonal_spatial != other.diagonal_spatial
            or self.x1_is_x2 != other.x1_is_x2
        ):
            raise ValueError(
                "`k1 + k2` needs kernels of the same layout: nngp shapes "
                f"{self.nngp.shape} vs {other.nngp.shape}, diagonal_batch "
                f"{self.diagonal_batch} vs {other.diagonal_batch}, diagonal_spatial "
                f"{self.diagonal_spatial} vs {other.diagonal_spatial}, x1_is_x2 "
                f"{self.x1_is_x2} vs {other.x1_is_x2}."
            )
        if (self.ntk is None) != (other.ntk is None):
            raise ValueError("`k1 + k2`: either both kernels have an `ntk` or neither.")
        return dataclasses.replace(
            self,
            nngp=self.nngp + other.nngp,
            ntk=None if self.ntk is None else self.ntk + other.ntk,
            cov1=self.cov1 + other.cov1,
            cov2=None if self.cov2 is None else self.cov2 + other.cov2,
            is_gaussian=self.is_gaussian and other.is_gaussian,
            is_input=False,
        )

    def __mul__(self, c: Any) -> "Kernel":
        if isinstance(c, Kernel) or not (
            isinstance(c, (int, float)) or (hasattr(c, "shape") and np.shape(c) == ())
        ):
            return NotImplemented
        if isinstance(c, (int, float)) and c < 0:
            raise ValueError(f"`c * kernel` needs a non-negative scalar `c`; got {c}.")
        return dataclasses.replace(
            self,
            nngp=c * self.nngp,
            ntk=None if self.ntk is None else c * self.ntk,
            cov1=c * self.cov1,
            cov2=None if self.cov2 is None else c * self.cov2,
        )

    __rmul__ = __mul__

    @staticmethod
    def from_inputs(
        x1: Float[ArrayLike, "n1 ..."],
        x2: Float[ArrayLike, "n2 ..."] | None = None,
        *,
        compute_ntk: bool = True,
        diagonal_batch: bool = True,
        diagonal_spatial: bool = False,
        batch_axis: int = 0,
        channel_axis: int = -1,
    ) -> "Kernel":
        """The kernel of the inputs themselves, see `kernelalg.kernel`."""
        from ._inputs import kernel_from_inputs

        return kernel_from_inputs(
            x1,
            x2,
            compute_ntk=compute_ntk,
            diagonal_batch=diagonal_batch,
            diagonal_spatial=diagonal_spatial,
            batch_axis=batch_axis,
            channel_axis=channel_axis,
        )
