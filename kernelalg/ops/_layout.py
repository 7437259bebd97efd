"""Index bookkeeping of covariance tensors: zipped spatial axes and their diagonals.

A cross covariance has shape `(n1, n2, *zipped)` where, with spatial sizes
`(s_1, ..., s_k)`, `zipped` is `(s_1, s_1, ..., s_k, s_k)` ("full") or
`(s_1, ..., s_k)` ("diagonal spatial"). A self covariance `cov1` has one batch axis
when `diagonal_batch`, else two.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped


def zip_axes(x: Array, start: int) -> Array:
    """`(..., a1, ..., ak, b1, ..., bk)` -> `(..., a1, b1, ..., ak, bk)` from `start`."""
    k = (x.ndim - start) // 2
    perm = list(range(start))
    for i in range(k):
        perm += [start + i, start + k + i]
    return jnp.transpose(x, perm)


def unzip_axes(x: Array, start: int) -> Array:
    """Inverse of `zip_axes`."""
    k = (x.ndim - start) // 2
    perm = list(range(start)) + [start + 2 * i for i in range(k)]
    perm += [start + 2 * i + 1 for i in range(k)]
    return jnp.transpose(x, perm)


def spatial_diagonal(x: Array, start: int) -> Array:
    """Diagonal of every zipped pair of axes from `start`: `(.., a, a, b, b)` -> `(.., a, b)`."""
    k = (x.ndim - start) // 2
    for _ in range(k):
        # Each diagonal call moves the new axis to the end, so the next pair is again
        # at `start`; after k calls the spatial axes are in their original order.
        x = jnp.diagonal(x, axis1=start, axis2=start + 1)
    return x


def variances(
    cov: Float[Array, "..."], diagonal_batch: bool, diagonal_spatial: bool
) -> Float[Array, "n *spatial"]:
    """Per-example, per-position variances `(n, *spatial)` from a self covariance."""
    if not diagonal_batch:
        cov = jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)
    if not diagonal_spatial:
        cov = spatial_diagonal(cov, 1)
    return cov


def outer_variances(
    var1: Shaped[Array, "n1 *spatial"],
    var2: Shaped[Array, "n2 *spatial"],
    diagonal_spatial: bool,
    batch_axes: int,
) -> tuple[Array, Array]:
    r"""Broadcast `var1`, `var2` against a covariance tensor's layout.

    Returns arrays that broadcast to the covariance of `x1` at `(i, p)` with `x2` at
    `(j, q)`: `v1[i, p]` and `v2[j, q]`. With `batch_axes == 2` the layout is
    `(n1, n2, *zipped)`; with `batch_axes == 1` it is `(n, *zipped)` (a
    `diagonal_batch` self covariance, where `var1 is var2` belong to one example).
    """
    s = var1.ndim - 1
    if batch_axes == 2:
        v1 = var1[:, None]
        v2 = var2[None, :]
    else:
        v1, v2 = var1, var2
    if diagonal_spatial or s == 0:
        return v1, v2
    b = batch_axes
    shape1 = list(v1.shape[:b])
    shape2 = list(v2.shape[:b])
    for i in range(s):
        shape1 += [v1.shape[b + i], 1]
        shape2 += [1, v2.shape[b + i]]
    return v1.reshape(shape1), v2.reshape(shape2)


def set_batch_diagonal(cross: Array, diag: Array) -> Array:
    """`cross` `(n, n, ...)` with `cross[i, i, ...] = diag[i, ...]`."""
    idx = jnp.arange(cross.shape[0])
    return cross.at[idx, idx].set(diag)


def _outer_masks(m1: Array, m2: Array, diagonal_spatial: bool, batch_axes: int) -> Array:
    a, b = outer_variances(m1, m2, diagonal_spatial, batch_axes)
    return a | b


def remask(
    cov: Array | None, m1: Array | None, m2: Array | None, diagonal_spatial: bool, batch_axes: int
) -> Array | None:
    """Zero the entries of a covariance tensor that involve a masked position.

    `m1`, `m2`: `(n, *spatial)` booleans (`True` = masked) of the two sides, or None.
    """
    if cov is None or (m1 is None and m2 is None):
        return cov
    if m1 is None:
        m1 = jnp.zeros((cov.shape[0],) + m2.shape[1:], bool)
    if m2 is None:
        m2 = jnp.zeros(((cov.shape[1] if batch_axes == 2 else cov.shape[0]),) + m1.shape[1:], bool)
    return jnp.where(_outer_masks(m1, m2, diagonal_spatial, batch_axes), jnp.zeros((), cov.dtype), cov)


def masked_counts(m: Array | None, n: int, size: int) -> Array:
    """Unmasked positions per example: `(n,)` (all `size` when there is no mask)."""
    if m is None:
        return jnp.full((n,), size)
    return jnp.sum(~m.reshape(m.shape[0], -1), axis=1)
