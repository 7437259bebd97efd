import equinox as eqx
from jaxtyping import ArrayLike, Float

from ._inputs import _kernel_from_canonical, canonicalize_inputs
from ._kernel import Kernel
from ._requirements import Diagonals
from .layers._base import AbstractLayer, remask_kernel


@eqx.filter_jit
def _compute(layer, x1, x2, m1, m2, compute_ntk, diagonal_batch, diagonal_spatial):
    k = _kernel_from_canonical(
        x1,
        x2,
        compute_ntk=compute_ntk,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
        mask1=m1,
        mask2=m2,
    )
    return remask_kernel(layer(remask_kernel(k)))


def input_layout(
    layer: AbstractLayer, *, diagonal_batch: bool, diagonal_spatial: bool, has_spatial: bool
) -> Diagonals:
    """The cheapest input layout serving the requested output layout, or a clear error."""
    req = layer.requires(Diagonals(bool(diagonal_batch), bool(diagonal_spatial)))
    if diagonal_batch and not req.batch:
        raise ValueError(
            f"`diagonal_batch=True` was requested, but `{req.batch_blocker}` needs the full "
            "batch covariance; pass `diagonal_batch=False`."
        )
    if diagonal_spatial and has_spatial and not req.spatial:
        raise ValueError(
            f"`diagonal_spatial=True` was requested, but `{req.spatial_blocker}` needs "
            "covariances between different positions; pass `diagonal_spatial=False`."
        )
    return req


def kernel(
    layer: AbstractLayer,
    x1: Float[ArrayLike, "n1 ..."],
    x2: Float[ArrayLike, "n2 ..."] | None = None,
    *,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
    mask_constant: float | None = None,
    batch_axis: int = 0,
    channel_axis: int = -1,
) -> Kernel:
    r"""NNGP and NTK of the infinitely wide network `layer` on inputs `x1`, `x2`.

    **Arguments:**

    - `layer`: a kernelalg layer (`kernelalg.layers.Serial(...)` etc.).
    - `x1`: inputs of shape `(n1, *spatial, channels)` (or other axis order, see
      `batch_axis`, `channel_axis`).
    - `x2`: second inputs `(n2, ...)`; `None` means `x1` with itself (`cov2` is then
      `None`).
    - `compute_ntk`: also compute $\Theta$; otherwise `ntk` is `None`.
    - `diagonal_batch`: the returned `cov1`/`cov2` hold only variances `(n, ...)`.
    - `mask_constant`: inputs equal to it (NaN matches NaN) are padding of
      variable-length examples: a position whose channels all equal it is masked,
      pooling and attention ignore it, and kernel entries involving it are 0
      (neural-tangents' convention).
    - `diagonal_spatial`: return only the spatial diagonal
      (`nngp[i, j, h, w]`, `O(N^2 |S|)`); an error if a layer needs more.

    **Returns:** a `kernelalg.Kernel`. Internally the cheapest layout that serves the
    request is used: a CNN ending in `Flatten` is computed on the spatial diagonal.

    Every structural problem (shapes, a nonlinearity on raw inputs, an impossible
    layout) is raised before any kernel arithmetic; the computation is compiled with
    `equinox.filter_jit` and cached per layer structure and input shape.
    """
    if not isinstance(layer, AbstractLayer):
        raise TypeError(
            f"`layer` must be a kernelalg layer (e.g. `kernelalg.layers.Serial(...)`); got "
            f"{type(layer).__name__}."
        )
    for name, flag in (
        ("compute_ntk", compute_ntk),
        ("diagonal_batch", diagonal_batch),
        ("diagonal_spatial", diagonal_spatial),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool; got {flag!r}.")
    x1c, x2c, m1, m2 = canonicalize_inputs(
        x1, x2, batch_axis=batch_axis, channel_axis=channel_axis, mask_constant=mask_constant
    )
    layer.out_shape(x1c.shape[1:])
    req = input_layout(
        layer, diagonal_batch=diagonal_batch, diagonal_spatial=diagonal_spatial, has_spatial=x1c.ndim > 2
    )
    return _compute(layer, x1c, x2c, m1, m2, compute_ntk, req.batch, req.spatial)
