import math
import string
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray, Shaped

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops._layout import unzip_axes, zip_axes
from ._axes import canonical_order
from ._base import AbstractFinite, AbstractLayer, check_in_shape, remask_kernel


_HIGHEST = jax.lax.Precision.HIGHEST


def _check_pattern(name: str, pattern, implementation: str, decoded: bool) -> Array | None:
    if pattern is None:
        return None
    if not hasattr(pattern, "shape") or not hasattr(pattern, "dtype"):
        raise TypeError(
            f"`Aggregate({name}=...)` must be a JAX or NumPy array; got {type(pattern).__name__}."
        )
    arr = jnp.asarray(pattern)
    if implementation == "SPARSE":
        if not jnp.issubdtype(arr.dtype, jnp.integer):
            raise TypeError(
                f"`Aggregate({name}=...)` with implementation='SPARSE' must hold integer vertex indices "
                f"`(batch, n_edges, K, 2)`; got dtype {arr.dtype}."
            )
        if arr.ndim not in (3, 4) or arr.shape[-1] != 2:
            raise ValueError(
                f"`Aggregate({name}=...)` with implementation='SPARSE' must have shape "
                f"`(batch, n_edges, K, 2)` (or `(batch, n_edges, 2)` for one aggregated axis): "
                f"(tail, head) coordinates per edge; got shape {arr.shape}."
            )
    elif decoded:
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(f"`Aggregate({name}=...)` must be real; got dtype {arr.dtype}.")
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.result_type(float))
    return arr


class Aggregate(AbstractLayer):
    r"""Aggregation over the edges of a graph (graph neural networks; Du et al. 2019,
    "Graph Neural Tangent Kernel").

    Each example has a graph on its positions (vertices): a pattern $A$ with
    $A[i, j] = w$ for an edge of weight $w$ from tail $i$ to head $j$. The layer
    replaces each vertex by the weighted sum of its predecessors,
    $y_j = \sum_i A[i, j]\, x_i$, on every channel alike. It has no parameters, so
    $$\mathcal{K}'(x, x')[j_1, j_2] = \sum_{i_1, i_2} A[i_1, j_1]\, A'[i_2, j_2]\,
    \mathcal{K}(x, x')[i_1, i_2],$$
    $A^\top \mathcal{K} A'$ with $A$ the graph of $x$ and $A'$ that of $x'$, and
    $\Theta$ likewise. It needs the full spatial covariance. Masks pass unchanged and
    kernel entries at masked vertices are zeroed, as in neural-tangents.

    **Patterns are held by the layer.** neural-tangents passes the graphs to
    `apply_fn`/`kernel_fn` through `**kwargs` (`pattern=(p1, p2)`), where a misspelt
    keyword is silently ignored. Here they are typed array fields of the layer:
    `Aggregate(...)` alone is the identity (neural-tangents' `pattern=None`), and
    `layer.with_pattern(pattern1, pattern2)` returns the same layer holding the graphs
    of `x1` and `x2`, to be placed in `Serial` like any layer (they are leaves: `jit`,
    `vmap` and `grad` see them as arrays). Consequently a network holds the graphs of
    one pair of batches; rebuild it (or swap them with `eqx.tree_at`) for other
    batches.

    - `pattern1` has a leading axis of size `n1` (one graph per example of `x1`) or 1
      (one graph shared by all examples).
    - `pattern2` is the same for `x2`; `None` means `x2` uses `pattern1`, which needs
      `x2 is None` or a shared `pattern1`. When `x2 is None` (`kernelalg.kernel(net,
      x1)`), `pattern2` must be `None`.
    - The finite twin (`init`) acts on one example, so it needs one graph: a
      `pattern1` with a leading axis of size 1. Per-example graphs have twins per
      example: `layer.with_pattern(pattern1[i:i + 1]).init(...)`.

    Formats (`K` aggregated axes of sizes $X_1..X_K$, $V = \prod X_k$ vertices):

    - `'DENSE'`: a (weighted) adjacency tensor of shape `(batch, X_1, ..., X_K, X_1,
      ..., X_K)`, tails first; `to_dense`, if given, is applied to the pattern first.
      Costs $O(V^2)$ memory and $O(V^3)$ time per pair of examples.
    - `'SPARSE'`: integer edges `(batch, n_edges, K, 2)` (or `(batch, n_edges, 2)`
      when `K == 1`), the last axis holding (tail, head) coordinates; repeated edges
      add up; an edge with any negative coordinate is padding and ignored (so negative
      indices do not count from the end). $O(V + E)$ for the finite twin, $O(E^2)$ per
      pair of examples for the kernel.

    **Arguments:**

    - `aggregate_axis`: the axes holding the vertices; `None`: every spatial axis.
      In the layout given by `batch_axis`, `channel_axis` (use the values given to
      `kernelalg.kernel`); never the batch or channel axis.
    - `to_dense`: a function decoding the dense pattern (`'DENSE'` only).
    - `implementation`: `'DENSE'` or `'SPARSE'`.
    - `pattern1`, `pattern2`: see above; usually set with `with_pattern`.

    neural-tangents: `stax.Aggregate`.
    """

    aggregate_axis: tuple[int, ...] | None = eqx.field(static=True)
    batch_axis: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    to_dense: Callable[[Array], Array] | None = eqx.field(static=True)
    implementation: str = eqx.field(static=True)
    pattern1: Shaped[Array, "..."] | None
    pattern2: Shaped[Array, "..."] | None

    def __init__(
        self,
        aggregate_axis: int | Sequence[int] | None = None,
        batch_axis: int = 0,
        channel_axis: int = -1,
        to_dense: Callable[[Array], Array] | None = None,
        implementation: Literal["DENSE", "SPARSE"] = "DENSE",
        *,
        pattern1: Shaped[ArrayLike, "..."] | None = None,
        pattern2: Shaped[ArrayLike, "..."] | None = None,
    ):
        if aggregate_axis is not None:
            axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else aggregate_axis
            if (
                isinstance(axes, (str, bytes))
                or not isinstance(axes, Sequence)
                or not axes
                or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
            ):
                raise TypeError(
                    f"`Aggregate(aggregate_axis=...)` must be an int, a non-empty tuple of ints or None; "
                    f"got {aggregate_axis!r}."
                )
            aggregate_axis = tuple(axes)
        self.aggregate_axis = aggregate_axis
        for name, ax in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
            if isinstance(ax, bool) or not isinstance(ax, int):
                raise TypeError(f"`Aggregate({name}=...)` must be an int; got {ax!r}.")
        self.batch_axis, self.channel_axis = batch_axis, channel_axis
        if not isinstance(implementation, str) or implementation.upper() not in ("DENSE", "SPARSE"):
            raise ValueError(
                f"`Aggregate(implementation=...)` must be 'DENSE' or 'SPARSE'; got {implementation!r}."
            )
        self.implementation = implementation.upper()
        if to_dense is not None and not callable(to_dense):
            raise TypeError(f"`Aggregate(to_dense=...)` must be a function or None; got {to_dense!r}.")
        if to_dense is not None and self.implementation == "SPARSE":
            raise ValueError("`Aggregate(to_dense=...)` applies to implementation='DENSE' only.")
        self.to_dense = to_dense
        if pattern1 is None and pattern2 is not None:
            raise ValueError(
                "`Aggregate(pattern2=...)` without `pattern1`: give the graphs of `x1` (and those of `x2`)."
            )
        # A pattern that `to_dense` decodes may be in any format (integer edges, ...).
        decoded = to_dense is None
        self.pattern1 = _check_pattern("pattern1", pattern1, self.implementation, decoded)
        self.pattern2 = _check_pattern("pattern2", pattern2, self.implementation, decoded)

    def with_pattern(
        self, pattern1: Shaped[ArrayLike, "..."], pattern2: Shaped[ArrayLike, "..."] | None = None
    ) -> "Aggregate":
        """This layer with the graphs of `x1` (`pattern1`) and `x2` (`pattern2`, `None`:
        those of `x1`) attached, in the format of `implementation`."""
        return Aggregate(
            self.aggregate_axis,
            self.batch_axis,
            self.channel_axis,
            self.to_dense,
            self.implementation,  # type: ignore[arg-type]
            pattern1=pattern1,
            pattern2=pattern2,
        )

    # ---------------------------------------------------------------- shapes

    def _axes(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Aggregated axes as positions among the spatial axes of one example, sorted."""
        ndim = len(in_shape) + 1
        order = canonical_order(ndim, self.batch_axis, self.channel_axis, "Aggregate")
        if ndim < 3:
            raise ValueError(
                f"`Aggregate` needs inputs with spatial axes (vertices); got examples of shape {in_shape}."
            )
        if self.aggregate_axis is None:
            return tuple(range(ndim - 2))
        out = []
        for a in self.aggregate_axis:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"`Aggregate(aggregate_axis={self.aggregate_axis})` is out of range for inputs with "
                    f"{ndim} axes (batch included)."
                )
            p = order.index(a % ndim)
            if p in (0, ndim - 1):
                raise ValueError(
                    f"`Aggregate(aggregate_axis={self.aggregate_axis})` includes the "
                    f"{'batch' if p == 0 else 'channel'} axis; aggregate over spatial axes only."
                )
            out.append(p - 1)
        if len(set(out)) != len(out):
            raise ValueError(f"`Aggregate(aggregate_axis={self.aggregate_axis})` repeats an axis.")
        return tuple(sorted(out))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("Aggregate", in_shape)
        if self.pattern1 is not None:
            self._axes(in_shape)
        return in_shape

    def requires(self, out: Diagonals) -> Diagonals:
        if self.pattern1 is None:
            return out
        return out.full_spatial("Aggregate")

    def _dense(self, pattern: Array) -> Array:
        if self.to_dense is None:
            return pattern
        out = jnp.asarray(self.to_dense(pattern))
        if not jnp.issubdtype(out.dtype, jnp.floating):
            out = out.astype(jnp.result_type(float))
        return out

    def _checked(self, name: str, pattern: Array, n: int | None, in_shape: tuple[int, ...]) -> Array:
        """The pattern, decoded and checked against a batch of `n` examples of shape
        `in_shape` (`n=None`: one example, the finite twin)."""
        axes = self._axes(in_shape)
        sizes = tuple(in_shape[a] for a in axes)
        if self.implementation == "DENSE":
            pattern = self._dense(pattern)
            want = sizes + sizes
            if pattern.ndim != 1 + len(want) or pattern.shape[1:] != want:
                raise ValueError(
                    f"`Aggregate`: `{name}` must have shape (batch, *{sizes}, *{sizes}) for aggregated "
                    f"axes of sizes {sizes} (tails, then heads); got {pattern.shape}."
                )
        else:
            if pattern.ndim == 3:
                if len(axes) != 1:
                    raise ValueError(
                        f"`Aggregate`: `{name}` of shape {pattern.shape} is `(batch, n_edges, 2)`, which "
                        f"is only for one aggregated axis; there are {len(axes)}: use `(batch, n_edges, "
                        f"{len(axes)}, 2)`."
                    )
                pattern = pattern[:, :, None, :]
            if pattern.shape[2] != len(axes):
                raise ValueError(
                    f"`Aggregate`: `{name}` of shape {pattern.shape} has {pattern.shape[2]} coordinates per "
                    f"vertex, but {len(axes)} axes are aggregated."
                )
            limit = jnp.asarray(sizes, pattern.dtype).reshape(1, 1, len(sizes), 1)
            too_big = jnp.any(pattern >= limit)
            pattern = eqx.error_if(
                pattern,
                too_big,
                f"`Aggregate`: `{name}` has vertex coordinates beyond the axes' sizes {sizes}.",
            )
        if n is None:
            if pattern.shape[0] != 1:
                raise ValueError(
                    f"`Aggregate.init`: the finite twin acts on one example, but `pattern1` holds "
                    f"{pattern.shape[0]} graphs (one per example). Use a pattern with a leading axis of "
                    "size 1 (a graph shared by all examples), or build one twin per example with "
                    "`layer.with_pattern(pattern1[i:i + 1])`."
                )
        elif pattern.shape[0] not in (1, n):
            raise ValueError(
                f"`Aggregate`: `{name}` has a leading (batch) axis of {pattern.shape[0]}, but there are {n} "
                "examples; give one graph per example, or a leading axis of 1 for a shared graph."
            )
        return pattern

    # ---------------------------------------------------------------- kernel

    def __call__(self, k: Kernel) -> Kernel:
        if self.pattern1 is None:
            return k
        in_shape = k.shape1[1:]
        self.out_shape(in_shape)
        if k.diagonal_spatial:
            raise ValueError("`Aggregate` needs the full spatial covariance; got a diagonal_spatial kernel.")
        if k.cov2 is None and self.pattern2 is not None:
            raise ValueError(
                "`Aggregate`: `x2` is None (the kernel of `x1` with itself), so `pattern2` must be None; "
                "use `layer.with_pattern(pattern1)`."
            )
        p1 = self._checked("pattern1", self.pattern1, k.shape1[0], in_shape)
        if self.pattern2 is None:
            if k.cov2 is not None and p1.shape[0] != 1:
                raise ValueError(
                    "`Aggregate`: `x2` is given but `pattern2` is None, and `pattern1` holds one graph per "
                    "example of `x1`; give the graphs of `x2` with `layer.with_pattern(pattern1, pattern2)`."
                )
            p2 = p1
        else:
            p2 = self._checked("pattern2", self.pattern2, k.shape2[0], in_shape)
        axes = self._axes(in_shape)
        n_s = len(in_shape) - 1
        if self.implementation == "DENSE":
            p1, p2 = p1.astype(k.dtype), p2.astype(k.dtype)

            def agg(x, batch, a, b):
                return None if x is None else _dense_kernel(x, batch, n_s, axes, a, b)

        else:
            sizes = tuple(in_shape[a] for a in axes)
            p1, p2 = _senders_receivers(p1, sizes), _senders_receivers(p2, sizes)

            def agg(x, batch, a, b):
                return None if x is None else _sparse_kernel(x, batch, n_s, axes, a, b)

        b = 1 if k.diagonal_batch else 2
        out = k.replace(
            nngp=agg(k.nngp, 2, p1, p2),
            ntk=agg(k.ntk, 2, p1, p2),
            cov1=agg(k.cov1, b, p1, p1),
            cov2=agg(k.cov2, b, p2, p2),
        )
        return remask_kernel(out)

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteAggregate":
        in_shape = check_in_shape("Aggregate", in_shape)
        self.out_shape(in_shape)
        if self.pattern1 is None:
            return FiniteAggregate(None, (), self.implementation)
        if self.pattern2 is not None:
            raise ValueError(
                "`Aggregate.init`: the finite twin acts on one example with one graph; build it from a "
                "layer holding only `pattern1` (`layer.with_pattern(pattern1)`)."
            )
        pattern = self._checked("pattern1", self.pattern1, None, in_shape)[0]
        return FiniteAggregate(pattern, self._axes(in_shape), self.implementation)


def _letters(n: int, start: int) -> list[str]:
    return list(string.ascii_letters[start : start + n])


def _dense_kernel(x: Array, batch: int, n_s: int, axes: tuple[int, ...], p1: Array, p2: Array) -> Array:
    r"""$A_1^\top \mathcal{K} A_2$ on the unzipped covariance, one einsum.

    `p1` indexes the first batch axis (per example, or shared when its leading axis
    is 1), `p2` the second one (or the first again, for a `diagonal_batch` `cov`)."""
    u = unzip_axes(x, batch)
    bl = ["Y", "Z"][:batch]
    s1, s2 = _letters(n_s, 0), _letters(n_s, n_s)
    h1, h2 = _letters(len(axes), 2 * n_s), _letters(len(axes), 2 * n_s + len(axes))
    b1, b2 = bl[0], bl[-1]

    def pat(p, b, s, h):
        if p.shape[0] == 1:
            return p[0], "".join(s[a] for a in axes) + "".join(h)
        return p, b + "".join(s[a] for a in axes) + "".join(h)

    def heads(s, h):
        out = list(s)
        for a, new in zip(axes, h):
            out[a] = new
        return "".join(out)

    a1, sub1 = pat(p1, b1, s1, h1)
    a2, sub2 = pat(p2, b2, s2, h2)
    sub_u = "".join(bl) + "".join(s1) + "".join(s2)
    sub_out = "".join(bl) + heads(s1, h1) + heads(s2, h2)
    out = jnp.einsum(f"{sub_u},{sub1},{sub2}->{sub_out}", u, a1, a2, precision=_HIGHEST)
    return zip_axes(out, batch)


def _senders_receivers(pattern: Array, sizes: tuple[int, ...]) -> tuple[Array, Array]:
    """Flat tail/head vertex indices `(batch, n_edges)`; padding edges (any negative
    coordinate) get tail 0 and head $V$, which `segment_sum` drops."""
    strides = jnp.asarray(np.cumprod((1,) + sizes[::-1])[:-1][::-1].copy(), pattern.dtype)
    tails, heads = pattern[..., 0], pattern[..., 1]
    valid = jnp.all(tails >= 0, axis=-1) & jnp.all(heads >= 0, axis=-1)
    v = math.prod(sizes)
    s = jnp.where(valid, jnp.tensordot(tails, strides, axes=1), 0)
    r = jnp.where(valid, jnp.tensordot(heads, strides, axes=1), v)
    return s, r


def _sparse_kernel(x: Array, batch: int, n_s: int, axes: tuple[int, ...], e1, e2) -> Array:
    r"""$A_1^\top \mathcal{K} A_2$ by gathering the tails' covariances and summing them
    into the heads (neural-tangents' segment-sum scheme): $O(E_1 E_2)$ per pair."""
    u = unzip_axes(x, batch)
    shape = u.shape
    rest = [i for i in range(n_s) if i not in axes]
    perm = (
        list(range(batch))
        + [batch + a for a in axes]
        + [batch + n_s + a for a in axes]
        + [batch + i for i in rest]
        + [batch + n_s + i for i in rest]
    )
    u = jnp.transpose(u, perm)
    sizes = tuple(shape[batch + a] for a in axes)
    v = math.prod(sizes)
    permuted = u.shape
    u = u.reshape(u.shape[:batch] + (v, v) + u.shape[batch + 2 * len(axes) :])

    def one(s1, r1, s2, r2, kk):
        kk = kk[s1[:, None], s2[None, :]]
        kk = jax.vmap(lambda col: jax.ops.segment_sum(col, r2, num_segments=v))(kk)
        return jax.ops.segment_sum(kk, r1, num_segments=v)

    (s1, r1), (s2, r2) = e1, e2
    ax1 = None if s1.shape[0] == 1 else 0
    ax2 = None if s2.shape[0] == 1 else 0
    s1, r1 = (s1[0], r1[0]) if ax1 is None else (s1, r1)
    s2, r2 = (s2[0], r2[0]) if ax2 is None else (s2, r2)
    if batch == 1:
        # A `diagonal_batch` self covariance: both sides are the same example.
        out = jax.vmap(one, (ax1, ax1, ax2, ax2, 0))(s1, r1, s2, r2, u)
    else:
        inner = jax.vmap(one, (None, None, ax2, ax2, 0))
        out = jax.vmap(inner, (ax1, ax1, None, None, 0))(s1, r1, s2, r2, u)
    out = out.reshape(permuted)
    out = jnp.transpose(out, np.argsort(perm))
    return zip_axes(out, batch)


class FiniteAggregate(AbstractFinite):
    """Finite twin of `Aggregate` on one example with one graph (`None`: the
    identity). The graph is data, not a parameter (read through `stop_gradient`)."""

    pattern: Shaped[Array, "..."] | None
    axes: tuple[int, ...] = eqx.field(static=True)
    implementation: str = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        if self.pattern is None:
            return x
        n_s = len(self.axes)
        x_moved = jnp.moveaxis(x, self.axes, tuple(range(n_s)))
        sizes = x_moved.shape[:n_s]
        if self.implementation == "DENSE":
            a = jax.lax.stop_gradient(self.pattern).astype(x.dtype)
            v = math.prod(sizes)
            flat = x_moved.reshape((v, -1))
            out = jnp.matmul(a.reshape(v, v).T, flat, precision=_HIGHEST)
        else:
            s, r = _senders_receivers(self.pattern[None], sizes)
            v = math.prod(sizes)
            flat = x_moved.reshape((v, -1))
            out = jax.ops.segment_sum(flat[s[0]], r[0], num_segments=v)
        out = out.reshape(x_moved.shape)
        return jnp.moveaxis(out, tuple(range(n_s)), self.axes)
