r"""Convolution and pooling of covariance tensors, one spatial dimension at a time.

A convolution with filter size $F$, stride $s$ and weights shared across positions
maps a covariance $K$ (positions $p, q$ of one spatial dimension) to

$$K'[i, j] = \frac{1}{F}\sum_{d=0}^{F-1} K[s i + d, s j + d]$$

on the padded input (Novak et al. 2019; Arora et al. 2019), a sum along the
diagonal direction only. Over several spatial dimensions the filter is a product, so
the map is applied dimension by dimension, each a 2-D convolution of the axis pair
with the diagonal filter $I_F/F$. (Written as $F$ shifted slices it needs fewer
multiply-adds, but XLA on CPU ran it 2.7x slower and compiled it 2.3x slower.)
Pooling, $K'[i, j] = \frac{1}{W^2}\sum_{d, d'} K[s i + d, s j + d']$, is one
`reduce_window` over both axes of the pair.

Layouts: `batch` leading axes (1 or 2), then per spatial dimension either a zipped
pair of axes (full covariance) or one axis (`diagonal`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def out_size(size: int, window: int, stride: int, padding: str) -> int:
    """Output length of a convolution/pooling along one axis (lax conventions)."""
    if padding == "VALID":
        return (size - window) // stride + 1
    return -(-size // stride)  # SAME and CIRCULAR


def _pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "VALID":
        return 0, 0
    ((lo, hi),) = jax.lax.padtype_to_pads((size,), (window,), (stride,), "SAME")
    return lo, hi


def _pad(x: Array, axes: tuple[int, ...], pads: tuple[int, int], circular: bool) -> Array:
    widths = [(0, 0)] * x.ndim
    for a in axes:
        widths[a] = pads
    return jnp.pad(x, widths, mode="wrap" if circular else "constant")


def _explicit_pads(x: Array, axes: tuple[int, ...], window: int, stride: int, padding: str):
    # CIRCULAR wraps the input itself; VALID/SAME become explicit (lo, hi) pads.
    lo, hi = _pads(x.shape[axes[0]], window, stride, padding)
    if padding == "CIRCULAR":
        return _pad(x, axes, (lo, hi), True), (0, 0)
    return x, (lo, hi)


def conv_pair(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    r"""$\frac1F\sum_d x[s i + d, s j + d]$ over the axis pair `(axis, axis + 1)`.

    Stride 1: the padded pair, flattened to one axis of length $m^2$, is summed by one
    `reduce_window` of size $F$ with dilation $m + 1$ (a diagonal step), $F$ adds per
    entry. Strided: a 2-D convolution of every pair plane with the diagonal filter
    $I_F / F$ (as neural-tangents; $F^2$ multiply-adds). XLA's CPU convolution of
    single-channel planes is slow in float32 (measured, (1024, 8, 8, 8, 8), 3x3, both
    dimensions: 1234 ms float32, 212 ms float64, against 99 ms and 193 ms for the
    dilated window sum).
    """
    x, pads = _explicit_pads(x, (axis, axis + 1), window, stride, padding)
    if stride == 1:
        widths = [(0, 0)] * x.ndim
        widths[axis] = widths[axis + 1] = pads
        x = jnp.pad(x, widths)
        m = x.shape[axis]
        n = m - window + 1
        shape = x.shape
        flat = x.reshape(shape[:axis] + (m * m,) + shape[axis + 2 :])
        dims = [1] * flat.ndim
        dims[axis] = window
        dilation = [1] * flat.ndim
        dilation[axis] = m + 1
        out = jax.lax.reduce_window(
            flat,
            np.zeros((), x.dtype),
            jax.lax.add,
            dims,
            [1] * flat.ndim,
            [(0, 0)] * flat.ndim,
            window_dilation=dilation,
        )
        # Entry a*m + b of `out` is the sum starting at (a, b); those with a, b < n are
        # the outputs. Pad the tail back to m*m to restore the (m, m) pair.
        tail = [(0, 0)] * flat.ndim
        tail[axis] = (0, m * m - out.shape[axis])
        out = jnp.pad(out, tail).reshape(shape)
        out = jax.lax.slice_in_dim(jax.lax.slice_in_dim(out, 0, n, axis=axis), 0, n, axis=axis + 1)
        return out / window
    y = jnp.moveaxis(x, (axis, axis + 1), (-2, -1))
    shape = y.shape
    y = y.reshape((-1, 1) + shape[-2:])
    rhs = (jnp.eye(window, dtype=x.dtype) / window).reshape(1, 1, window, window)
    out = jax.lax.conv_general_dilated(
        y, rhs, (stride, stride), [pads, pads], precision=jax.lax.Precision.HIGHEST
    )
    out = out.reshape(shape[:-2] + out.shape[-2:])
    return jnp.moveaxis(out, (-2, -1), (axis, axis + 1))


def window_sum(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    r"""$\sum_d x[s i + d]$ along one axis (`lax.reduce_window`)."""
    x, pads = _explicit_pads(x, (axis,), window, stride, padding)
    dims = [1] * x.ndim
    dims[axis] = window
    strides = [1] * x.ndim
    strides[axis] = stride
    widths = [(0, 0)] * x.ndim
    widths[axis] = pads
    return jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, dims, strides, widths)


def conv_diagonal(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    r"""$\frac1F\sum_d x[s i + d]$ along `axis` (a spatially diagonal covariance)."""
    return window_sum(x, axis, window, stride, padding) / window


def _transpose_1d(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    # Transposed convolution of every 1-D fibre along `axis` with an all-ones filter.
    x = jnp.moveaxis(x, axis, -1)
    shape = x.shape
    flat = x.reshape((-1, 1, shape[-1]))
    rhs = jnp.ones((window, 1, 1), x.dtype)
    pad = "VALID" if padding == "CIRCULAR" else padding
    out = jax.lax.conv_transpose(flat, rhs, (stride,), pad, dimension_numbers=("NCH", "HIO", "NCH"))
    return jnp.moveaxis(out.reshape(shape[:-1] + out.shape[-1:]), -1, axis)


def circular_fold(x: Array, axis: int, size: int) -> Array:
    """Fold a VALID transposed-convolution output of length `L` onto `size` positions
    circularly, cropping as neural-tangents' CIRCULAR `ConvTranspose` does."""
    length = x.shape[axis]
    width = int(np.ceil(length / size)) // 2 * 2 + 1
    dims = [1] * x.ndim
    dims[axis] = width
    dil = [1] * x.ndim
    dil[axis] = size
    x = jax.lax.reduce_window(
        x, np.zeros((), x.dtype), jax.lax.add, tuple(dims), (1,) * x.ndim, "SAME", window_dilation=tuple(dil)
    )
    if length != size:
        lo = (length - size) // 2
        x = jax.lax.slice_in_dim(x, lo, lo + size, axis=axis)
    return x


def transpose_out_size(size: int, window: int, stride: int, padding: str) -> int:
    """Output length of `lax.conv_transpose`, which NT's twin and kernel both follow.

    'VALID' gives $(n-1)s + F$ when $F \\ge s$, and $ns$ (not $(n-1)s + F$) when the
    stride exceeds the filter: lax pads the gaps between outputs up to a whole stride.
    """
    if padding == "VALID":
        return size * stride + max(window - stride, 0)
    return size * stride


def conv_transpose_pair(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    """Covariance after a transposed convolution along the pair `(axis, axis + 1)`.

    The same filter tap connects input $p$ to output $s p + d$ on both sides, so the
    pair is treated as a 2-D image convolved (transposed) with the diagonal filter
    $I_F / F$.
    """
    x = jnp.moveaxis(x, (axis, axis + 1), (-2, -1))
    shape = x.shape
    flat = x.reshape((-1, 1) + shape[-2:])
    rhs = jnp.eye(window, dtype=x.dtype).reshape(window, window, 1, 1) / window
    pad = "VALID" if padding == "CIRCULAR" else padding
    out = jax.lax.conv_transpose(flat, rhs, (stride, stride), pad, dimension_numbers=("NCHW", "HWIO", "NCHW"))
    out = out.reshape(shape[:-2] + out.shape[-2:])
    if padding == "CIRCULAR":
        n = transpose_out_size(shape[-1], window, stride, "SAME")
        out = circular_fold(circular_fold(out, out.ndim - 2, n), out.ndim - 1, n)
    return jnp.moveaxis(out, (-2, -1), (axis, axis + 1))


def conv_transpose_diagonal(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    """Transposed convolution of a spatially diagonal covariance along `axis`."""
    out = _transpose_1d(x, axis, window, stride, padding) / window
    if padding == "CIRCULAR":
        out = circular_fold(out, axis, transpose_out_size(x.shape[axis], window, stride, "SAME"))
    return out


def pool_pair(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    r"""$\sum_{d, d'} x[s i + d, s j + d']$: one window sum over both axes of the pair."""
    x, pads = _explicit_pads(x, (axis, axis + 1), window, stride, padding)
    dims = [1] * x.ndim
    dims[axis] = dims[axis + 1] = window
    strides = [1] * x.ndim
    strides[axis] = strides[axis + 1] = stride
    widths = [(0, 0)] * x.ndim
    widths[axis] = widths[axis + 1] = pads
    return jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, dims, strides, widths)


def edge_counts(size: int, window: int, stride: int, padding: str) -> np.ndarray:
    """Number of non-padding inputs in each output window (for `normalize_edges`)."""
    # Static shapes only, so this is evaluated now even inside a jit trace: the counts are
    # baked into the computation as constants.
    with jax.ensure_compile_time_eval():
        ones = jnp.ones((size,))
        counts = window_sum(ones, 0, window, stride, "VALID" if padding == "CIRCULAR" else padding)
    return np.asarray(counts)


def apply_per_dimension(
    x: Array, batch: int, diagonal: bool, fn_pair, fn_diagonal, params: list[tuple[int, int]], padding: str
) -> Array:
    """Apply a per-dimension map over every spatial dimension of a covariance tensor."""
    for k, (window, stride) in enumerate(params):
        if diagonal:
            x = fn_diagonal(x, batch + k, window, stride, padding)
        else:
            x = fn_pair(x, batch + 2 * k, window, stride, padding)
    return x


def embed_diagonal(x: Array, batch: int) -> Array:
    """Spatially diagonal `(.., h, w)` -> full zipped `(.., h, h, w, w)`, zero off the
    diagonal (the covariance of a layer with unshared weights)."""
    s = x.ndim - batch
    for k in range(s):
        axis = batch + 2 * k
        n = x.shape[axis]
        eye = jnp.eye(n, dtype=x.dtype).reshape((1,) * axis + (n, n) + (1,) * (x.ndim - axis - 1))
        x = jnp.expand_dims(x, axis + 1) * eye
    return x


def global_size(x: Array, batch: int) -> int:
    return math.prod(x.shape[batch:])


def pool_mask(mask: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    """Output mask of a window operation along `axis`: an output position is masked
    where the input at its window's centre is (neural-tangents' convention)."""
    size = mask.shape[axis]
    n = out_size(size, window, stride, padding)
    lo, _ = _pads(size, window, stride, padding)
    start = -lo + (window - 1) // 2
    idx = (start + stride * np.arange(n)) % size  # wraps only for CIRCULAR padding
    return jnp.take(mask, jnp.asarray(idx), axis=axis)


def transpose_mask(mask: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    """Output mask of a transposed convolution: masked where any input reaching it is.
    CIRCULAR padding propagates masks as SAME (no wrap-around), as neural-tangents."""
    pad = "SAME" if padding == "CIRCULAR" else padding
    return _transpose_1d(mask.astype(jnp.float32), axis, window, stride, pad) > 0
