r"""Fixed linear maps of positions applied to covariance tensors.

A parameter-free layer $y = L x$ that mixes positions with fixed weights (image
resizing, indexing, multiplication by a constant tensor, graph aggregation) and
acts on every channel alike maps covariances by

$$\mathcal{K}'(x, x')[o_1, o_2] = \sum_{p_1, p_2} L[o_1, p_1]\, L'[o_2, p_2]\,
\mathcal{K}(x, x')[p_1, p_2],$$

i.e. $L \mathcal{K} L'^\top$ on the spatial part, and $\Theta$ likewise (no
parameters). Covariance layouts are those of `kernelalg.ops._layout`: `batch`
leading axes (1 or 2), then zipped pairs of spatial axes (full) or one axis per
spatial dimension (`diagonal`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._layout import unzip_axes, zip_axes


def resize_matrix(n_in: int, n_out: int, method: str, antialias: bool, dtype) -> Array:
    """The `(n_out, n_in)` matrix of `jax.image.resize` along one axis.

    `jax.image.resize` is separable and linear, so resizing the identity along its
    first axis gives the weights row by row (triangle filter for 'linear', one-hot
    rows for 'nearest', Keys/Lanczos kernels otherwise; antialiased when
    downsampling if `antialias`).
    """
    eye = jnp.eye(n_in, dtype=dtype)
    return jax.image.resize(
        eye, (n_out, n_in), method, antialias=antialias, precision=jax.lax.Precision.HIGHEST
    )


def apply_matrix(x: Array, axis: int, m: Array, precision) -> Array:
    """$\\sum_p m[o, p]\\, x[\\ldots, p, \\ldots]$ along `axis`; the new axis stays at `axis`."""
    out = jnp.tensordot(m, x, axes=((1,), (axis,)), precision=precision)
    return jnp.moveaxis(out, 0, axis)


def map_block(x: Array, start: int, n: int, g: Callable[[Array], Array]) -> Array:
    """Apply `g` (a map of arrays of `n` axes) to axes `start .. start + n` of `x`,
    vectorised over all other axes; the output axes of `g` take their place."""
    lead = x.shape[:start]
    x = jnp.moveaxis(x, tuple(range(start, start + n)), tuple(range(x.ndim - n, x.ndim)))
    rest = x.shape[: x.ndim - n]
    flat = x.reshape((-1,) + x.shape[x.ndim - n :])
    out = jax.vmap(g)(flat)
    m = out.ndim - 1
    out = out.reshape(rest + out.shape[1:])
    return jnp.moveaxis(out, tuple(range(out.ndim - m, out.ndim)), tuple(range(len(lead), len(lead) + m)))


def map_covariance(
    cov: Array | None,
    batch: int,
    n_spatial: int,
    diagonal: bool,
    g: Callable[[Array], Array],
    g_diagonal: Callable[[Array], Array] | None = None,
) -> Array | None:
    r"""$L \mathcal{K} L^\top$ for the linear map `g` of spatial arrays.

    Full layout: unzip the pairs, apply `g` to the positions of the first example,
    then to those of the second, zip again. Diagonal layout: only valid when every
    output position reads a single input position, $y_o = c_o x_{\pi(o)}$; then
    $\mathcal{K}'[o, o] = c_o^2 \mathcal{K}[\pi(o), \pi(o)]$, which `g_diagonal`
    (the same map with squared weights) computes from the diagonal alone.
    """
    if cov is None:
        return None
    if diagonal:
        if g_diagonal is None:
            raise ValueError("internal: this linear map needs the full spatial covariance.")
        return map_block(cov, batch, n_spatial, g_diagonal)
    x = unzip_axes(cov, batch)
    x = map_block(x, batch, n_spatial, g)
    n_out = x.ndim - batch - n_spatial
    x = map_block(x, batch + n_out, n_spatial, g)
    return zip_axes(x, batch)
