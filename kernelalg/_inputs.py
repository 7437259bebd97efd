import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._kernel import Kernel
from .ops._layout import zip_axes


_HIGHEST = jax.lax.Precision.HIGHEST


def _is_concrete(x: ArrayLike) -> bool:
    return not isinstance(x, jax.core.Tracer)


def canonicalize_inputs(
    x1: ArrayLike,
    x2: ArrayLike | None,
    *,
    batch_axis: int = 0,
    channel_axis: int = -1,
    mask_constant: float | None = None,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Check the inputs and move them to batch-first, channels-last float arrays.

    Returns `(x1, x2, mask1, mask2)`: with `mask_constant`, entries equal to it (NaN
    matches NaN) are replaced by 0, and a position is masked (`True`) where all its
    channels are. Raises `TypeError`/`ValueError` naming the argument, before any
    computation.
    """
    arrays = []
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            arrays.append(None)
            continue
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"`{name}` must be a JAX or NumPy array; got {type(x).__name__}.")
        if jnp.issubdtype(x.dtype, jnp.complexfloating) or x.dtype == jnp.bool_:
            raise TypeError(f"`{name}` must hold real numbers; got dtype {x.dtype}.")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            if not jnp.issubdtype(x.dtype, jnp.integer):
                raise TypeError(f"`{name}` must hold real numbers; got dtype {x.dtype}.")
            x = jnp.asarray(x, dtype=jnp.result_type(float))
        x = jnp.asarray(x)
        if x.ndim < 2:
            raise ValueError(
                f"`{name}` must have a batch axis and a feature axis (ndim >= 2); got "
                f"shape {x.shape}. For a single example use `{name}[None]`, for scalar "
                f"features `{name}[:, None]`."
            )
        if x.size == 0:
            raise ValueError(f"`{name}` must not be empty; got shape {x.shape}.")
        arrays.append(x)
    x1c, x2c = arrays
    ndim = x1c.ndim
    for name, ax in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
        if not isinstance(ax, int) or not -ndim <= ax < ndim:
            raise ValueError(f"`{name}` must be an axis of `x1` (an int in [{-ndim}, {ndim})); got {ax!r}.")
    b, c = batch_axis % ndim, channel_axis % ndim
    if b == c:
        raise ValueError(f"`batch_axis` ({batch_axis}) and `channel_axis` ({channel_axis}) must differ.")

    def canon(x):
        return jnp.moveaxis(x, (b, c), (0, -1))

    x1c = canon(x1c)
    if x2c is not None:
        if x2c.ndim != ndim:
            raise ValueError(
                f"`x1` and `x2` must have the same number of axes; got shapes "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}."
            )
        x2c = canon(x2c)
        if x2c.shape[1:] != x1c.shape[1:]:
            raise ValueError(
                "`x1` and `x2` must agree on every axis but the batch axis; got shapes "
                f"{tuple(x1.shape)} and {tuple(x2.shape)} (batch_axis={batch_axis})."
            )
        if x1c.dtype != x2c.dtype:
            dtype = jnp.promote_types(x1c.dtype, x2c.dtype)
            x1c, x2c = x1c.astype(dtype), x2c.astype(dtype)
    if mask_constant is not None and not isinstance(mask_constant, (int, float)):
        raise TypeError(f"`mask_constant` must be a float (or None); got {mask_constant!r}.")
    masks = []
    outs = []
    for x in (x1c, x2c):
        if x is None or mask_constant is None:
            outs.append(x)
            masks.append(None)
            continue
        hit = jnp.isnan(x) if np.isnan(mask_constant) else x == mask_constant
        outs.append(jnp.where(hit, jnp.zeros((), x.dtype), x))
        masks.append(jnp.all(hit, axis=-1))
    x1c, x2c = outs
    for name, x in (("x1", x1c), ("x2", x2c)):
        if x is not None and _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(
                f"`{name}` contains NaN or infinite values; kernels of such inputs are "
                "undefined. Clean the inputs, or mark padding with `mask_constant`."
            )
    return x1c, x2c, masks[0], masks[1]


def _cross(x1: Array, x2: Array, diagonal_spatial: bool) -> Array:
    n1, n2, c = x1.shape[0], x2.shape[0], x1.shape[-1]
    spatial = x1.shape[1:-1]
    if not spatial:
        # A plain GEMM: the general einsum below costs 2.5x as much for (n, 1, c) operands.
        out = jnp.matmul(x1, x2.T, precision=_HIGHEST)
    elif diagonal_spatial:
        out = jnp.einsum("n...c,m...c->nm...", x1, x2, precision=_HIGHEST)
    else:
        p = int(np.prod(spatial, dtype=int))
        a = x1.reshape(n1, p, c)
        b = x2.reshape(n2, p, c)
        out = jnp.einsum("npc,mqc->nmpq", a, b, precision=_HIGHEST)
        out = zip_axes(out.reshape((n1, n2) + spatial + spatial), 2)
    return out / c


def _self(x: Array, diagonal_batch: bool, diagonal_spatial: bool) -> Array:
    if not diagonal_batch:
        return _cross(x, x, diagonal_spatial)
    n, c = x.shape[0], x.shape[-1]
    spatial = x.shape[1:-1]
    if diagonal_spatial:
        return jnp.sum(x * x, axis=-1) / c
    p = int(np.prod(spatial, dtype=int))
    a = x.reshape(n, p, c)
    out = jnp.einsum("npc,nqc->npq", a, a, precision=_HIGHEST)
    return zip_axes(out.reshape((n,) + spatial + spatial), 1) / c


def kernel_from_inputs(
    x1: Float[ArrayLike, "..."],
    x2: Float[ArrayLike, "..."] | None = None,
    *,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
    batch_axis: int = 0,
    channel_axis: int = -1,
) -> Kernel:
    r"""The kernel of the inputs: $\mathcal{K}(x, x') = x \cdot x' / C$ per position pair.

    Inputs are `(batch, *spatial, channels)` after moving `batch_axis` and
    `channel_axis`; the covariance averages over channels, as in neural-tangents. The
    NTK of the inputs is zero (they have no parameters).
    """
    x1c, x2c, m1, m2 = canonicalize_inputs(x1, x2, batch_axis=batch_axis, channel_axis=channel_axis)
    return _kernel_from_canonical(
        x1c,
        x2c,
        compute_ntk=compute_ntk,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
        mask1=m1,
        mask2=m2,
    )


def _kernel_from_canonical(
    x1: Array,
    x2: Array | None,
    *,
    compute_ntk: bool,
    diagonal_batch: bool,
    diagonal_spatial: bool,
    mask1: Array | None = None,
    mask2: Array | None = None,
) -> Kernel:
    diagonal_spatial = diagonal_spatial and x1.ndim > 2
    nngp = _cross(x1, x1 if x2 is None else x2, diagonal_spatial)
    if x2 is None:
        # cov1 is read off nngp rather than recomputed, so that the diagonal of nngp
        # and the variances agree bit for bit. Otherwise round-off puts c slightly
        # below sqrt(v1 v2) on the diagonal, and arc-cosine-type duals (infinite slope
        # at correlation 1) amplify it to sqrt(eps) per layer.
        cov1 = nngp if not diagonal_batch else jnp.moveaxis(jnp.diagonal(nngp, 0, 0, 1), -1, 0)
    else:
        cov1 = _self(x1, diagonal_batch, diagonal_spatial)
    return Kernel(
        nngp=nngp,
        # 0 * nngp rather than zeros: a literal zero array is a compile-time constant,
        # and XLA then spends seconds constant-folding every convolution applied to it.
        ntk=0 * nngp if compute_ntk else None,
        cov1=cov1,
        cov2=None if x2 is None else _self(x2, diagonal_batch, diagonal_spatial),
        shape1=tuple(x1.shape),
        shape2=tuple(x1.shape if x2 is None else x2.shape),
        is_gaussian=False,
        is_input=True,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
        mask1=mask1,
        mask2=mask2 if x2 is not None else None,
    )
