from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._linear import map_block, map_covariance
from ._axes import canonical_order
from ._base import AbstractFinite, AbstractLayer, check_in_shape, map_masks, with_shapes


_DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]
DimensionNumbersLike = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]


def _check_constant(name: str, value: Any) -> Array | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not (
        isinstance(value, (int, float)) or hasattr(value, "shape") or isinstance(value, (list, tuple))
    ):
        raise TypeError(f"`DotGeneral({name}=...)` must be an array or a number; got {type(value).__name__}.")
    arr = jnp.asarray(value)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"`DotGeneral({name}=...)` must be real; got dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _check_dimension_numbers(value: Any) -> _DimensionNumbers:
    def axes(v):
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            raise TypeError
        out = tuple(v)
        if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in out):
            raise TypeError
        if len(set(out)) != len(out):
            raise TypeError
        return out

    try:
        (lc, rc), (lb, rb) = value
        (lc, rc), (lb, rb) = (axes(lc), axes(rc)), (axes(lb), axes(rb))
    except (TypeError, ValueError):
        raise ValueError(
            "`DotGeneral(dimension_numbers=...)` must be `((lhs_contracting, rhs_contracting), "
            "(lhs_batch, rhs_batch))` with tuples of distinct non-negative ints, as "
            f"`jax.lax.dot_general`; got {value!r}."
        ) from None
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(
            "`DotGeneral(dimension_numbers=...)`: lhs and rhs need as many contracting (and batch) "
            f"dimensions; got {value!r}."
        )
    if set(lc) & set(lb) or set(rc) & set(rb):
        raise ValueError(
            f"`DotGeneral(dimension_numbers=...)`: an axis is both contracted and batched; got {value!r}."
        )
    return (lc, rc), (lb, rb)


class DotGeneral(AbstractLayer):
    r"""Multiplication by a constant (non-trainable) tensor: `jax.lax.dot_general`
    of the outputs with `rhs` (or of `lhs` with the outputs).

    Any fixed linear map of positions applied to every channel alike (weighted sums of
    positions, differences, permutations, scalings, outer products with new axes) is
    $y = L x$ with $L$ built from the constant, so
    $\mathcal{K}'(x, x') = L\, \mathcal{K}(x, x')\, L^\top$ on the spatial axes
    (each side of a zipped pair multiplied by the constant), and $\Theta$ likewise.
    Without contracted axes every output position reads one input position,
    $y_o = c_o x_{\pi(o)}$, so the spatial diagonal suffices:
    $\mathcal{K}'[o, o] = c_o^2\, \mathcal{K}[\pi(o), \pi(o)]$. Contracting an axis
    needs the full spatial covariance. An output position is masked when every input
    position it reads with a non-zero weight is.

    Axes of the output: those of `jax.lax.dot_general` (batch dimensions, then the free
    axes of the left operand, then those of the right one), with the input's batch axis
    moved first and its channel axis last, kernelalg's layout.

    **Arguments:**

    - `lhs`, `rhs`: the constant; at most one, the other operand is the layer's input.
      Both `None`: the identity.
    - `dimension_numbers`: `((lhs_contracting, rhs_contracting), (lhs_batch,
      rhs_batch))`; the input's axes in the layout given by `batch_axis` and
      `channel_axis` (batch included).
    - `precision`: of `dot_general`, in the finite twin and the kernel.
    - `batch_axis`, `channel_axis`: use the values given to `kernelalg.kernel`.

    The batch and channel axes can be neither contracted nor batched: contracting
    channels has no infinite-width limit, and contracting examples (allowed by
    neural-tangents, after which no layer may follow) would mix the examples a kernel
    is between and has no finite twin acting on one example.

    neural-tangents: `stax.DotGeneral`.
    """

    lhs: Float[Array, "..."] | None
    rhs: Float[Array, "..."] | None
    dimension_numbers: _DimensionNumbers = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)
    batch_axis: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        lhs: Float[ArrayLike, "..."] | None = None,
        rhs: Float[ArrayLike, "..."] | None = None,
        dimension_numbers: DimensionNumbersLike = (((), ()), ((), ())),
        precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST,
        batch_axis: int = 0,
        channel_axis: int = -1,
    ):
        if lhs is not None and rhs is not None:
            raise ValueError(
                "`DotGeneral(lhs=..., rhs=...)`: give at most one constant; the other operand is the "
                "layer's input."
            )
        self.lhs = _check_constant("lhs", lhs)
        self.rhs = _check_constant("rhs", rhs)
        self.dimension_numbers = _check_dimension_numbers(dimension_numbers)
        constant = self.lhs if self.lhs is not None else self.rhs
        (lc, rc), (lb, rb) = self.dimension_numbers
        if constant is not None:
            c_axes = (lc + lb) if self.lhs is not None else (rc + rb)
            if any(a >= constant.ndim for a in c_axes):
                raise ValueError(
                    f"`DotGeneral(dimension_numbers={self.dimension_numbers})` names axes {c_axes} of the "
                    f"constant, which has shape {constant.shape}."
                )
        elif lc or rc or lb or rb:
            raise ValueError("`DotGeneral(dimension_numbers=...)` needs a constant `lhs` or `rhs`.")
        if precision is not None and not isinstance(precision, jax.lax.Precision):
            raise TypeError(f"`DotGeneral(precision=...)` must be a `jax.lax.Precision`; got {precision!r}.")
        self.precision = precision
        for name, ax in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
            if isinstance(ax, bool) or not isinstance(ax, int):
                raise TypeError(f"`DotGeneral({name}=...)` must be an int; got {ax!r}.")
        self.batch_axis = batch_axis
        self.channel_axis = channel_axis

    def _input_axes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        (lc, rc), (lb, rb) = self.dimension_numbers
        return (rc, rb) if self.lhs is not None else (lc, lb)

    def _spatial_dimension_numbers(self, in_shape: tuple[int, ...]) -> Any:
        """`dimension_numbers` for the map of one channel of one example, `(*spatial)`,
        after checking the input's axes and sizes."""
        ndim = len(in_shape) + 1
        order = canonical_order(ndim, self.batch_axis, self.channel_axis, "DotGeneral")
        constant = self.lhs if self.lhs is not None else self.rhs
        (lc, rc), (lb, rb) = self.dimension_numbers
        in_c, in_b = self._input_axes()
        c_c, c_b = (lc, lb) if self.lhs is not None else (rc, rb)

        def spatial(a: int) -> int:
            if a >= ndim:
                raise ValueError(
                    f"`DotGeneral(dimension_numbers={self.dimension_numbers})` names axis {a} of the input, "
                    f"which has {ndim} axes (batch included)."
                )
            p = order.index(a)
            if p == 0:
                raise ValueError(
                    f"`DotGeneral(dimension_numbers={self.dimension_numbers})` contracts or batches the "
                    f"batch axis {self.batch_axis}: that mixes the examples the kernel is between and has no "
                    "finite twin acting on one example. Use spatial axes only."
                )
            if p == ndim - 1:
                raise ValueError(
                    f"`DotGeneral(dimension_numbers={self.dimension_numbers})` contracts or batches the "
                    f"channel axis {self.channel_axis}, which has no infinite-width limit. Use spatial "
                    "axes only (and `Dense` to mix channels)."
                )
            return p - 1

        s_c, s_b = tuple(spatial(a) for a in in_c), tuple(spatial(a) for a in in_b)
        for s, c in zip(s_c + s_b, c_c + c_b):
            if in_shape[s] != constant.shape[c]:
                raise ValueError(
                    f"`DotGeneral`: axis {c} of the constant (shape {constant.shape}) has size "
                    f"{constant.shape[c]}, but the input axis paired with it has size {in_shape[s]} "
                    f"(examples of shape {in_shape})."
                )
        if self.lhs is not None:
            return (c_c, s_c), (c_b, s_b)
        return (s_c, c_c), (s_b, c_b)

    def _map(self, constant: Array, dn: Any):
        def g(s: Array) -> Array:
            c = constant.astype(s.dtype)
            args = (c, s) if self.lhs is not None else (s, c)
            return jax.lax.dot_general(*args, dn, precision=self.precision)

        return g

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("DotGeneral", in_shape)
        constant = self.lhs if self.lhs is not None else self.rhs
        if constant is None:
            return in_shape
        dn = self._spatial_dimension_numbers(in_shape)
        g = self._map(constant, dn)
        out = jax.eval_shape(g, jax.ShapeDtypeStruct(in_shape[:-1], constant.dtype))
        return tuple(out.shape) + in_shape[-1:]

    def requires(self, out: Diagonals) -> Diagonals:
        in_c, _ = self._input_axes()
        if in_c and (self.lhs is not None or self.rhs is not None):
            return out.full_spatial("DotGeneral")
        return out

    def __call__(self, k: Kernel) -> Kernel:
        constant = self.lhs if self.lhs is not None else self.rhs
        if constant is None:
            return k
        in_shape = k.shape1[1:]
        self.out_shape(in_shape)
        dn = self._spatial_dimension_numbers(in_shape)
        constant = constant.astype(k.dtype)
        contracts = bool(self._input_axes()[0])
        if contracts and k.diagonal_spatial:
            raise ValueError(
                "`DotGeneral` contracts spatial axes, so it needs the full spatial covariance; got a "
                "diagonal_spatial kernel."
            )
        g = self._map(constant, dn)
        g_sq = None if contracts else self._map(constant**2, dn)
        g_nz = self._map((constant != 0).astype(k.dtype), dn)
        n_s = len(in_shape) - 1
        b = 1 if k.diagonal_batch else 2

        def go(x, batch):
            return map_covariance(x, batch, n_s, k.diagonal_spatial, g, g_sq)

        def mask(m):
            return ~(map_block((~m).astype(k.dtype), 1, n_s, g_nz) > 0)

        return with_shapes(
            k,
            self,
            nngp=go(k.nngp, 2),
            ntk=go(k.ntk, 2),
            cov1=go(k.cov1, b),
            cov2=go(k.cov2, b),
            **map_masks(k, mask),
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteDotGeneral":
        in_shape = check_in_shape("DotGeneral", in_shape)
        self.out_shape(in_shape)
        constant = self.lhs if self.lhs is not None else self.rhs
        dn = None if constant is None else self._spatial_dimension_numbers(in_shape)
        return FiniteDotGeneral(constant, self.lhs is not None, dn, self.precision)


class FiniteDotGeneral(AbstractFinite):
    """Finite twin of `DotGeneral` on one example: the constant applied to every
    channel (`None`: the identity). The constant is not a parameter of the network
    (read through `stop_gradient`)."""

    constant: Float[Array, "..."] | None
    is_lhs: bool = eqx.field(static=True)
    dimension_numbers: Any = eqx.field(static=True)
    precision: jax.lax.Precision | None = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if self.constant is None:
            return x
        c = jax.lax.stop_gradient(self.constant).astype(x.dtype)

        def g(s):
            args = (c, s) if self.is_lhs else (s, c)
            return jax.lax.dot_general(*args, self.dimension_numbers, precision=self.precision)

        return jax.vmap(g, in_axes=-1, out_axes=-1)(x)
