"""What every predictor shares: reading kernels, the `trace_axes` layout, checks.

Kernels follow neural-tangents' layout: for targets `y_train` of shape `(n, *rest)`
and `trace_axes` (the output axes the kernel is a multiple of the identity along), a
train-train kernel has the non-traced axes of `y_train` twice, zipped:
`(n, n, h, h, ...)`. Internally every kernel is flattened to a matrix
(`N x N` with $N$ the product of the non-traced sizes) and targets to `(N, C)` with
$C$ the product of the traced sizes; results are reshaped back at the end.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Real

from .._kernel import Kernel


@runtime_checkable
class HasNNGP(Protocol):
    """Anything with an `nngp` attribute (a `Kernel`, neural-tangents' `Kernel`, a namedtuple)."""

    @property
    def nngp(self) -> Any: ...


@runtime_checkable
class HasNTK(Protocol):
    """Anything with an `ntk` attribute."""

    @property
    def ntk(self) -> Any: ...


KernelLike = Kernel | HasNNGP | HasNTK | Float[ArrayLike, "..."]
"""A kernel as the predictors accept it: a `kernelalg.Kernel`, any object with `nngp`
and/or `ntk` attributes, or a plain array (then used for whichever of NNGP and NTK is
asked for)."""

Get = str | tuple[str, ...] | None


# ----------------------------------------------------------------------- concreteness
def is_concrete(*xs: Any) -> bool:
    """Whether all arrays are concrete values (not traced under jit/grad/vmap)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def check(
    anchor: Any,
    bad: Bool[ArrayLike, ""],
    message: str,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Raise `ValueError` if `bad`; returns `anchor`, a pytree of arrays (to be used downstream).

    On concrete values this is an immediate, ordinary `ValueError`, whose message is
    `message` with `detail()` (numbers describing the failure) inserted at `{detail}`.
    Under `jit`, `grad` or `vmap` the check goes through `equinox.error_if`, which
    raises when the compiled program runs (without the numbers); every array of the
    returned `anchor` carries the check, and must be what is used downstream so that
    the check is not dead code.
    """
    if is_concrete(anchor, bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message.format(detail="" if detail is None else detail()))
        return anchor
    return jax.tree_util.tree_map(lambda a: eqx.error_if(a, bad, message.format(detail="")), anchor)


def finite_message(name: str) -> str:
    return (
        f"`{name}` is not finite{{detail}}. Check how it was computed: inputs with NaN, an "
        "activation overflowing (float32 overflows near 3e38; use float64), or a division "
        "by a zero variance."
    )


def check_finite(x: Array, name: str) -> Array:
    """`x`, after checking that it holds no NaN or infinity."""
    bad = ~jnp.all(jnp.isfinite(x))

    def detail():
        n_bad = int(np.sum(~np.isfinite(np.asarray(x))))
        return f": {n_bad} of its {x.size} entries are NaN or infinite"

    return check(x, bad, finite_message(name), detail)


def checked_finite(tree: Any, nonfinite: dict[str, Array]) -> Any:
    """`tree` (outputs), after checking that no input had non-finite entries.

    `nonfinite[name]` counts the NaN or infinite entries of the input `name`, measured
    in the same compiled call that computed `tree`, so the check costs no extra pass.
    """
    for name, count in nonfinite.items():
        # On concrete counts, numpy decides: no compiled comparison for a check.
        bad = np.asarray(count) > 0 if is_concrete(count) else count > 0
        tree = check(
            tree,
            bad,
            finite_message(name),
            lambda count=count: f": {int(count)} of its entries are NaN or infinite",
        )
    return tree


def count_nonfinite(x: Array) -> Array:
    return jnp.sum(~jnp.isfinite(x))


def check_nonnegative(value: Real[ArrayLike, ""], name: str) -> None:
    """Raise if a concrete scalar is negative (traced values are trusted)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real scalar; got {type(value).__name__} {value!r}.")
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {np.shape(value)}.")
    if is_concrete(value) and not float(value) >= 0:
        raise ValueError(f"`{name}` must be non-negative; got {float(value)}.")


# --------------------------------------------------------------------- reading kernels
def _as_float_array(x: Any, name: str) -> Array:
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"`{name}` must be a JAX or NumPy array (or a Kernel); got {type(x).__name__}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must hold real floating-point values; got dtype {x.dtype}.")
    return x


def is_array(k: Any) -> bool:
    return isinstance(k, (jax.Array, np.ndarray, np.generic))


def has(k: Any, g: str) -> bool:
    """Whether the kernel `k` provides the kernel `g` ('nngp' or 'ntk')."""
    return is_array(k) or getattr(k, g, None) is not None


def kernel_array(k: Any, g: str, name: str) -> Array:
    """The `g` kernel ('nngp' or 'ntk') of `k`: `k` itself if it is an array."""
    if is_array(k):
        return _as_float_array(k, name)
    if not isinstance(k, (HasNNGP, HasNTK)):
        raise TypeError(
            f"`{name}` must be a kernelalg.Kernel, an object with `nngp`/`ntk` attributes, "
            f"or an array; got {type(k).__name__}."
        )
    v = getattr(k, g, None)
    if v is None:
        hint = (
            "compute it with `kernelalg.kernel(..., compute_ntk=True)`, or ask for NNGP "
            "predictions (`get='nngp'`)"
            if g == "ntk"
            else "pass a kernel that has its NNGP, or ask for NTK predictions only"
        )
        raise ValueError(f"`{name}.{g}` is missing (None), but {g.upper()} predictions need it: {hint}.")
    return _as_float_array(v, f"{name}.{g}")


def canonicalize_get(get: Get, allowed: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """`(single, gets)`: whether one string was asked for, and the tuple of names."""
    if get is None:
        return False, ("nngp", "ntk")
    single = isinstance(get, str)
    gets = (get,) if single else tuple(get)
    if not gets:
        raise ValueError("`get` must name at least one of " + ", ".join(map(repr, allowed)) + ".")
    for g in gets:
        if not isinstance(g, str) or g.lower() not in allowed:
            raise ValueError(f"`get` entries must be among {allowed}; got {g!r}.")
    gets = tuple(g.lower() for g in gets)
    if len(set(gets)) != len(gets):
        raise ValueError(f"`get` entries must be unique; got {gets}.")
    return single, gets


# ---------------------------------------------------------------------------- layout
def zip_shape(a: tuple[int | str, ...], b: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """`(a0, b0, a1, b1, ...)`: the shape of a kernel between outputs shaped `a` and `b`."""
    return tuple(s for pair in zip(a, b) for s in pair)


def to_matrix(k: Array) -> Array:
    """A zipped kernel `(a0, b0, a1, b1, ...)` as an `(a0 a1 ..., b0 b1 ...)` matrix."""
    first = k.shape[::2]
    second = k.shape[1::2]
    perm = tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2))
    return jnp.transpose(k, perm).reshape(math.prod(first), math.prod(second))


def from_matrix(m: Array, a: tuple[int, ...], b: tuple[int, ...], lead: int = 0) -> Array:
    """Inverse of `to_matrix` for a matrix with `lead` leading (time) axes."""
    x = m.reshape(m.shape[:lead] + a + b)
    k = len(a)
    perm = list(range(lead))
    for i in range(k):
        perm += [lead + i, lead + k + i]
    return jnp.transpose(x, perm)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How targets `y_train` split into kernel axes and traced axes.

    - `trace_axes`: sorted non-negative traced axes of `y_train`.
    - `x_shape`: the non-traced sizes of `y_train` (batch first); a train-train kernel
      has shape `zip_shape(x_shape, x_shape)`.
    - `c_shape`: the traced sizes.
    """

    ndim: int
    trace_axes: tuple[int, ...]
    x_shape: tuple[int, ...]
    c_shape: tuple[int, ...]

    @staticmethod
    def of(y_shape: tuple[int, ...], trace_axes: int | tuple[int, ...] | list[int]) -> "Layout":
        ndim = len(y_shape)
        if ndim == 0:
            raise ValueError("`y_train` must have a batch axis; got a scalar.")
        axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
        canon = []
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
                raise ValueError(
                    f"`trace_axes` must be axes of `y_train` (shape {y_shape}); got {trace_axes!r}."
                )
            canon.append(int(a) % ndim)
        if len(set(canon)) != len(canon):
            raise ValueError(f"`trace_axes` must not repeat an axis; got {trace_axes!r}.")
        if 0 in canon:
            raise ValueError(
                f"`trace_axes` must not contain the batch axis 0 of `y_train`; got {trace_axes!r}."
            )
        ta = tuple(sorted(canon))
        x_shape = tuple(s for i, s in enumerate(y_shape) if i not in ta)
        c_shape = tuple(y_shape[i] for i in ta)
        return Layout(ndim, ta, x_shape, c_shape)

    @property
    def n(self) -> int:
        return math.prod(self.x_shape)

    @property
    def c(self) -> int:
        return math.prod(self.c_shape)

    def train_shape(self, k: Array, name: str) -> None:
        """Check a train-train kernel's shape."""
        want = zip_shape(self.x_shape, self.x_shape)
        if k.shape != want:
            raise ValueError(
                f"`{name}` has shape {k.shape}, but targets with non-traced shape "
                f"{self.x_shape} (`y_train` minus `trace_axes`={self.trace_axes}) need a "
                f"train-train kernel of shape {want}. Check that the kernel is of x_train "
                "with itself and that `trace_axes` matches the kernel's traced output axes."
            )

    def test_shape(self, k: Array, name: str) -> tuple[int, ...]:
        """Check a test-train kernel's shape; return the test outputs' non-traced shape."""
        if k.ndim != 2 * len(self.x_shape) or k.shape[1::2] != self.x_shape:
            raise ValueError(
                f"`{name}` has shape {k.shape}, but a test-train kernel needs shape "
                f"{zip_shape(('m',) + self.x_shape[1:], self.x_shape)} for training targets "
                f"with non-traced shape {self.x_shape} (`trace_axes`={self.trace_axes})."
            )
        return tuple(k.shape[::2])

    def test_test_shape(self, k: Array, x_shape: tuple[int, ...], name: str) -> None:
        want = zip_shape(x_shape, x_shape)
        if k.shape != want:
            raise ValueError(
                f"`{name}` has shape {k.shape}; for a test-train kernel with test shape "
                f"{x_shape} it must have shape {want}."
            )

    def flatten(self, y: Array, lead: int = 0) -> Array:
        """Outputs `(*lead, *y_shape)` -> `(*lead, N, C)` (traced axes last, merged)."""
        src = tuple(lead + a for a in self.trace_axes)
        dst = tuple(range(-len(self.trace_axes), 0))
        y = jnp.moveaxis(y, src, dst)
        return y.reshape(y.shape[:lead] + (-1, self.c))

    def unflatten(self, m: Array, x_shape: tuple[int, ...], lead: int = 0) -> Array:
        """`(*lead, M, C)` -> outputs `(*lead, *out_shape)` with traced axes in place."""
        y = m.reshape(m.shape[:lead] + x_shape + self.c_shape)
        src = tuple(range(-len(self.trace_axes), 0))
        dst = tuple(lead + a for a in self.trace_axes)
        return jnp.moveaxis(y, src, dst)

    def out_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for non-traced shape `x_shape`: traced sizes put back."""
        shape = list(x_shape)
        for a, s in zip(self.trace_axes, self.c_shape):
            shape.insert(a, s)
        return tuple(shape)


def targets(y: Any, name: str, dtype: Any) -> Array:
    """`y` as an array of the kernels' dtype (computations run in the kernel's precision)."""
    if not isinstance(y, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"`{name}` must be a JAX or NumPy array; got {type(y).__name__}.")
    if jnp.issubdtype(y.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real; got dtype {y.dtype}.")
    if isinstance(y, (np.ndarray, np.generic)):
        return jnp.asarray(np.asarray(y, dtype=dtype))
    return y if y.dtype == dtype else y.astype(dtype)


def outputs(fx: Any, shape: tuple[int, ...], name: str, dtype: Any) -> Array:
    """Initial outputs `fx` (a scalar or an array that broadcasts to `shape`), as an array.

    Broadcasting is left to the compiled computation (`jnp.broadcast_to(fx, shape)`).
    """
    if isinstance(fx, numbers.Real) and not isinstance(fx, bool):
        return jnp.asarray(np.asarray(fx, dtype=dtype))
    fx = targets(fx, name, dtype)
    try:
        ok = np.broadcast_shapes(fx.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"`{name}` has shape {fx.shape}; it must broadcast to {shape}.")
    return fx


def same_dtype(arrays: dict[str, Array]) -> Any:
    """The common dtype of the kernels, or a TypeError naming the odd one out."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"`{n}`: {d}" for n, d in dtypes.items())
        raise TypeError(
            f"The kernels must share one dtype; got {listing}. Compute them all from inputs "
            "of the same precision (float64 is safest for solves)."
        )
    return next(iter(dtypes.values()))


def shape_of(y: Any, name: str) -> tuple[int, ...]:
    """The shape of an array argument, or a TypeError naming it."""
    if not isinstance(y, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"`{name}` must be a JAX or NumPy array; got {type(y).__name__}.")
    return tuple(y.shape)
