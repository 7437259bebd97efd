import numbers
from types import EllipsisType
from typing import Any, NamedTuple

import equinox as eqx
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._kernel import Kernel
from .._requirements import Diagonals
from ._axes import canonical_order
from ._base import AbstractFinite, AbstractLayer, check_in_shape


class _Span(NamedTuple):
    """A hashable `slice` (Python 3.11 slices are not hashable, static fields must be)."""

    start: int | None
    stop: int | None
    step: int | None

    def __repr__(self) -> str:
        return f"slice({self.start}, {self.stop}, {self.step})"

    def to_slice(self) -> slice:
        return slice(self.start, self.stop, self.step)


_Entry = int | _Span | EllipsisType
IndexLike = int | slice | EllipsisType | tuple[Any, ...]


def _is_int(v: Any) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_idx(idx: Any) -> tuple[_Entry, ...]:
    entries = idx if isinstance(idx, tuple) else (idx,)
    out: list[_Entry] = []
    for e in entries:
        if e is Ellipsis:
            out.append(Ellipsis)
        elif isinstance(e, slice):
            for part in (e.start, e.stop, e.step):
                if part is not None and not _is_int(part):
                    raise TypeError(f"`Index(idx=...)`: slice bounds must be ints or None; got {e!r}.")
            if e.step is not None and int(e.step) == 0:
                raise ValueError(f"`Index(idx=...)`: slice step cannot be zero; got {e!r}.")
            out.append(_Span(*(None if p is None else int(p) for p in (e.start, e.stop, e.step))))
        elif _is_int(e):
            out.append(int(e))
        elif e is None:
            raise ValueError(
                "`Index(idx=...)` does not add axes (`None`/`np.newaxis`); the number of spatial axes "
                "changes only by integer indices."
            )
        else:
            raise TypeError(
                "`Index(idx=...)` takes ints, slices and `...` (build it with `Slice[...]`, e.g. "
                f"`Slice[:, 1:-1, ::2]`); got {type(e).__name__} {e!r}. Arrays (fancy indexing) "
                "are not supported."
            )
    if sum(e is Ellipsis for e in out) > 1:
        raise ValueError(f"`Index(idx=...)` may hold at most one `...`; got {idx!r}.")
    return tuple(out)


def _full(e: _Entry) -> bool:
    return isinstance(e, _Span) and e.start in (None, 0) and e.stop is None and e.step in (None, 1)


def _as_index(e: _Entry) -> int | slice:
    return e.to_slice() if isinstance(e, _Span) else e  # type: ignore[return-value]


class _SliceHelper:
    """`Slice[...]` returns its index unchanged: `Slice[1:-1, ::2]` is
    `(slice(1, -1), slice(None, None, 2))`."""

    def __getitem__(self, idx: Any) -> Any:
        return idx

    def __repr__(self) -> str:
        return "Slice"


Slice = _SliceHelper()
"""Helper to write the index of `Index`: `Index(Slice[:, 1:-1, ::2])` indexes like
`x[:, 1:-1, ::2]` (Python accepts slice syntax only inside brackets).
neural-tangents: `stax.Slice`."""


class Index(AbstractLayer):
    r"""Indexing of the batched outputs, as `x[idx]` in NumPy: crops, strides, flips
    spatial axes, or removes one with an integer index.

    Selecting positions $\pi$ selects the same entries of the covariance on both
    sides: $\mathcal{K}'[o_1, o_2] = \mathcal{K}[\pi(o_1), \pi(o_2)]$ for every
    spatially doubled pair (and $\mathcal{K}'[o] = \mathcal{K}[\pi(o)]$ on the spatial
    diagonal, so any layout works), likewise $\Theta$. Masks are indexed the same way.

    - Spatial axes: ints, slices (any step, negative ones flip), `...`.
    - The channel axis must be left whole (`:` or `...`): channels are infinitely many
      in the kernel.
    - The batch axis accepts a slice, which selects examples of `x1` and of `x2`
      alike, in the kernel only: the finite twin acts on one example, so `init`
      refuses a batch slice (index the inputs instead). An integer would remove the
      batch axis and is refused, as in neural-tangents.

    **Arguments:**

    - `idx`: an index such as `Slice[:, 1:-1, ::2]` over the axes of the batched
      input (batch included), in the layout given by `batch_axis` and `channel_axis`.
    - `batch_axis`, `channel_axis`: where `idx` has its batch and channel entries; use
      the values given to `kernelalg.kernel`.

    neural-tangents: `stax.Index`.
    """

    idx: tuple[_Entry, ...] = eqx.field(static=True)
    batch_axis: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)

    def __init__(self, idx: IndexLike, batch_axis: int = 0, channel_axis: int = -1):
        self.idx = _check_idx(idx)
        for name, ax in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
            if isinstance(ax, bool) or not isinstance(ax, int):
                raise TypeError(f"`Index({name}=...)` must be an int; got {ax!r}.")
        self.batch_axis = batch_axis
        self.channel_axis = channel_axis

    def _canonical(self, ndim: int) -> tuple[_Entry, ...]:
        """`idx` with `...` expanded, one entry per axis of a batched input of `ndim`
        axes, in kernelalg's order (batch, spatial axes, channels)."""
        order = canonical_order(ndim, self.batch_axis, self.channel_axis, "Index")
        idx = self.idx
        n_explicit = sum(e is not Ellipsis for e in idx)
        if n_explicit > ndim:
            raise ValueError(
                f"`Index(idx={_show(idx)})` has {n_explicit} entries, but its inputs have {ndim} axes "
                "(batch included)."
            )
        full = _Span(None, None, None)
        if Ellipsis in idx:
            i = idx.index(Ellipsis)
            idx = idx[:i] + (full,) * (ndim - n_explicit) + idx[i + 1 :]
        idx = idx + (full,) * (ndim - len(idx))
        canon = tuple(idx[a] for a in order)
        if not _full(canon[-1]):
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` indexes the channel axis {self.channel_axis}; channels "
                "are infinitely many in the kernel, so the channel entry must be `:` (or covered by "
                "`...`). Change the width with a `Dense`/`Conv` layer instead."
            )
        if isinstance(canon[0], int):
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` indexes the batch axis {self.batch_axis} with an integer, "
                "which removes it; kernels always keep a batch axis. Use a slice (`i:i + 1`)."
            )
        return canon

    def _spatial(self, ndim: int) -> tuple[int | slice, ...]:
        return tuple(_as_index(e) for e in self._canonical(ndim)[1:-1])

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("Index", in_shape)
        spatial = self._spatial(len(in_shape) + 1)
        try:
            out = np.empty(in_shape[:-1] + (0,))[spatial].shape[:-1]
        except IndexError as e:
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` does not fit examples of shape {in_shape}: {e}."
            ) from None
        if 0 in out:
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` selects no positions of examples of shape {in_shape} "
                f"(output spatial shape {out})."
            )
        return tuple(out) + in_shape[-1:]

    def requires(self, out: Diagonals) -> Diagonals:
        return out

    def __call__(self, k: Kernel) -> Kernel:
        ndim = len(k.shape1)
        canon = self._canonical(ndim)
        out = self.out_shape(k.shape1[1:])
        b = _as_index(canon[0])
        sel1, sel2 = range(k.shape1[0])[b], range(k.shape2[0])[b]
        if len(sel1) == 0 or len(sel2) == 0:
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` selects no examples of batches of {k.shape1[0]} and "
                f"{k.shape2[0]}."
            )
        spatial = tuple(_as_index(e) for e in canon[1:-1])
        pos = spatial if k.diagonal_spatial else tuple(s for s in spatial for _ in (0, 1))
        cross = (b, b) + pos
        self_ = ((b,) if k.diagonal_batch else (b, b)) + pos

        def at(x, index):
            return None if x is None else x[index]

        return k.replace(
            nngp=at(k.nngp, cross),
            ntk=at(k.ntk, cross),
            cov1=at(k.cov1, self_),
            cov2=at(k.cov2, self_),
            mask1=at(k.mask1, (b,) + spatial),
            mask2=at(k.mask2, (b,) + spatial),
            shape1=(len(sel1),) + out,
            shape2=(len(sel2),) + out,
        )

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteIndex":
        in_shape = check_in_shape("Index", in_shape)
        self.out_shape(in_shape)
        canon = self._canonical(len(in_shape) + 1)
        if not _full(canon[0]):
            raise ValueError(
                f"`Index(idx={_show(self.idx)})` selects examples (batch axis {self.batch_axis}); the "
                "finite twin acts on one example, so it has no such twin. Index the inputs instead "
                "(`x[::2]`), or use this layer in `kernelalg.kernel` only."
            )
        return FiniteIndex(tuple(canon[1:]))


def _show(idx: tuple[_Entry, ...]) -> str:
    def one(e):
        if e is Ellipsis:
            return "..."
        if isinstance(e, _Span):
            s = "" if e.start is None else str(e.start)
            s += ":" + ("" if e.stop is None else str(e.stop))
            return s + ("" if e.step is None else f":{e.step}")
        return str(e)

    return "Slice[" + ", ".join(one(e) for e in idx) + "]"


class FiniteIndex(AbstractFinite):
    """Finite twin of `Index`: `x[idx]` on one example (no batch entry)."""

    idx: tuple[_Entry, ...] = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        return x[tuple(_as_index(e) for e in self.idx)]
