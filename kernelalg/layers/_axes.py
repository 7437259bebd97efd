"""Layers whose arguments name axes of the batched input (`ImageResize(shape)`,
`Index(idx)`, `DotGeneral(dimension_numbers)`, `Aggregate(aggregate_axis)`) take them
in the user's layout, described by `batch_axis`/`channel_axis` as in neural-tangents;
kernelalg itself works batch first, channels last."""


def canonical_order(ndim: int, batch_axis: int, channel_axis: int, owner: str) -> list[int]:
    """Axes of a batched array in the user's layout, listed in kernelalg's order
    (batch, spatial axes in their order, channels)."""
    for name, ax in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
        if isinstance(ax, bool) or not isinstance(ax, int) or not -ndim <= ax < ndim:
            raise ValueError(f"`{owner}({name}=...)` must be an axis in [{-ndim}, {ndim}); got {ax!r}.")
    b, c = batch_axis % ndim, channel_axis % ndim
    if b == c:
        raise ValueError(
            f"`{owner}`: `batch_axis` ({batch_axis}) and `channel_axis` ({channel_axis}) must differ."
        )
    return [b] + [a for a in range(ndim) if a not in (b, c)] + [c]
