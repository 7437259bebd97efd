r"""Output-axis bookkeeping of empirical kernels: `trace_axes`, `diagonal_axes` and
neural-tangents' "zip" rule for the output shape.

For outputs $f(x_1)$ of shape $(a_0, \dots, a_{d-1})$ and $f(x_2)$ of shape
$(b_0, \dots, b_{d-1})$, the kernel has, for each axis $p$ in order: no axis if $p$ is
traced (summed over the pair $(p, p)$ and divided by its size), one axis $a_p$ if $p$
is diagonal (only the entries with equal indices), and the pair $(a_p, b_p)$
otherwise. Every kernel here is one `jnp.einsum` in which each operand names its axes
with labels: `("o", side, p)` for output axis $p$ of side 1 or 2, anything else for
axes contracted between operands (parameters, positions, channels).
"""

import math
import numbers
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array


def out_label(side: int, p: int) -> tuple[str, int, int]:
    return ("o", side, p)


def canonical_axes(name: str, axes, ndim: int) -> tuple[int, ...]:
    """Sorted non-negative axes, or an error naming `name` and the output's rank."""
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        axes = (axes,)
    if not isinstance(axes, (tuple, list)) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"`{name}` must be an int or a tuple of ints; got {axes!r}.")
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{name}={tuple(axes)}`: axis {a} is out of range for outputs with {ndim} "
                f"axes (valid: {-ndim} to {ndim - 1})."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}={tuple(axes)}` names the same output axis twice.")
    return tuple(sorted(out))


def check_axes(
    trace_axes, diagonal_axes, shape1: tuple[int, ...], shape2: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Canonicalise `trace_axes`/`diagonal_axes` for one output leaf and check that the
    two outputs agree where they are paired."""
    if len(shape1) != len(shape2):
        raise ValueError(
            f"`f(x1)` and `f(x2)` must have outputs of equal rank to be paired; got shapes "
            f"{shape1} and {shape2}."
        )
    ndim = len(shape1)
    trace = canonical_axes("trace_axes", trace_axes, ndim)
    diag = canonical_axes("diagonal_axes", diagonal_axes, ndim)
    both = set(trace) & set(diag)
    if both:
        raise ValueError(
            f"axes {sorted(both)} are in both `trace_axes={trace}` and `diagonal_axes={diag}`; "
            "an axis is either summed over (trace) or kept once (diagonal), not both."
        )
    for name, axes in (("trace_axes", trace), ("diagonal_axes", diag)):
        for p in axes:
            if shape1[p] != shape2[p]:
                raise ValueError(
                    f"`{name}` pairs output axis {p} of `f(x1)` (size {shape1[p]}) with that of "
                    f"`f(x2)` (size {shape2[p]}); the sizes must match. Shapes: {shape1} and "
                    f"{shape2}. Leave axis {p} out of `{name}` to get the full covariance along it."
                )
    return trace, diag


def kernel_shape(
    shape1: tuple[int, ...], shape2: tuple[int, ...], trace: Sequence[int], diag: Sequence[int]
) -> tuple[int, ...]:
    """neural-tangents' zip rule (see the module docstring)."""
    out: tuple[int, ...] = ()
    for p, (a, b) in enumerate(zip(shape1, shape2)):
        if p in trace:
            continue
        out += (a,) if p in diag else (a, b)
    return out


def trace_size(shape1: tuple[int, ...], trace: Sequence[int]) -> int:
    return math.prod(shape1[p] for p in trace)


def labelled_einsum(
    operands: Sequence[tuple[Array, Sequence[Hashable]]],
    ndim: int,
    trace: Sequence[int],
    diag: Sequence[int],
) -> Array:
    r"""Contract labelled operands into a kernel laid out by the zip rule.

    Output labels `("o", 1, p)` and `("o", 2, p)` become one summed index if $p$ is
    traced, one kept index if $p$ is diagonal, and two kept indices (side 1 first)
    otherwise; every other label is summed. The path is left
    to `opt_einsum` (through `jnp.einsum`), which for a structured layer chooses between
    contracting inputs and cotangents first and forming Jacobians first.
    """
    ids: dict[Hashable, int] = {}

    def index(label):
        if isinstance(label, tuple) and len(label) == 3 and label[0] == "o":
            if label[2] in trace or label[2] in diag:
                label = ("o", 0, label[2])  # both sides share one index
        if label not in ids:
            ids[label] = len(ids)
        return ids[label]

    args = []
    for array, labels in operands:
        if array.ndim != len(labels):
            raise AssertionError(f"operand of shape {array.shape} has labels {labels}")
        args += [array, [index(label) for label in labels]]
    out = []
    for p in range(ndim):
        if p in trace:
            continue
        if p in diag:
            out.append(index(("o", 0, p)))
        else:
            out += [index(("o", 1, p)), index(("o", 2, p))]
    return jnp.einsum(*args, out, precision=jax.lax.Precision.HIGHEST)
