from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._kernel import Kernel
from .._requirements import Diagonals
from ._base import (
    AbstractFinite,
    AbstractLayer,
    check_in_shape,
    check_int,
    hyperparameter,
    lift_channels,
    with_shapes,
)


Parameterization = Literal["ntk", "standard"]


def check_parameterization(
    owner: str, parameterization: str, s: tuple[int, int]
) -> tuple[str, tuple[int, int]]:
    if not isinstance(parameterization, str) or parameterization.lower() not in ("ntk", "standard"):
        raise ValueError(
            f"`{owner}(parameterization=...)` must be 'ntk' or 'standard'; got {parameterization!r}."
        )
    if (
        not isinstance(s, (tuple, list))
        or len(s) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)
    ):
        raise ValueError(f"`{owner}(s=...)` must be a pair of positive ints; got {s!r}.")
    parameterization = parameterization.lower()
    if parameterization == "ntk" and tuple(s) != (1, 1):
        raise ValueError(f"`{owner}(s=...)` applies to parameterization='standard' only; got s={s}.")
    return parameterization, (int(s[0]), int(s[1]))


def affine_kernel(
    k: Kernel,
    W_std: Array,
    b_std: Array | None,
    parameterization: str,
    fan_in: float,
) -> tuple[Array, Array | None, Array, Array | None]:
    r"""Kernel of $z = W x + b$ given that of $x$, for either parameterization.

    NNGP: $\mathcal{K}' = \sigma_W^2 \mathcal{K} + \sigma_b^2$. NTK ('ntk'):
    $\Theta' = \sigma_W^2 \Theta + \mathcal{K}'$; ('standard', Sohl-Dickstein et al.
    2020): $\Theta' = \sigma_W^2 \Theta + n\,\mathcal{K} + [b \text{ present}]$ with
    `fan_in` $n$ the (scaled) input width. Returns `(nngp, ntk, cov1, cov2)`.
    """
    b2 = 0.0 if b_std is None else b_std**2

    def aff(x):
        return None if x is None else W_std**2 * x + b2

    nngp = aff(k.nngp)
    ntk = k.ntk
    if ntk is not None:
        if parameterization == "ntk":
            ntk = nngp + W_std**2 * ntk
        else:
            ntk = fan_in * k.nngp + W_std**2 * ntk + (0.0 if b_std is None else 1.0)
    return nngp, ntk, aff(k.cov1), aff(k.cov2)


class Dense(AbstractLayer):
    r"""Fully connected layer acting on the channel (last) axis.

    Finite twin, 'ntk' parameterization (Jacot et al. 2018):
    $z = \frac{\sigma_W}{\sqrt{n}} W x + \sigma_b b$ with $W_{ij}, b_i \sim
    \mathcal{N}(0, 1)$. 'standard' (Sohl-Dickstein et al. 2020, "On the infinite width
    limit of neural networks with a standard parameterization"):
    $z = W x / \sqrt{s_0} + b$ with $W_{ij} \sim \mathcal{N}(0, \sigma_W^2 s_0 / n)$,
    $b_i \sim \mathcal{N}(0, \sigma_b^2)$, and $s_1 \cdot$ `out_dim` outputs.

    Kernel: $\mathcal{K}' = \sigma_W^2\mathcal{K} + \sigma_b^2$;
    $\Theta' = \sigma_W^2\Theta + \mathcal{K}'$ ('ntk') or
    $\Theta' = \sigma_W^2\Theta + \frac{n}{s_0}\mathcal{K} + 1_{b}$ ('standard').
    neural-tangents: `stax.Dense`.

    **Arguments:**

    - `out_dim`: output channels of the finite twin (ignored by the 'ntk' kernel).
    - `W_std`, `b_std`: weight and bias standard deviations; `b_std=None`: no bias.
    - `parameterization`: `'ntk'` or `'standard'`.
    - `s`: width multipliers `(s_in, s_out)` of the standard parameterization.
    """

    out_dim: int = eqx.field(static=True)
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    parameterization: str = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        out_dim: int,
        W_std: Real[ArrayLike, ""] = 1.0,
        b_std: Real[ArrayLike, ""] | None = None,
        *,
        parameterization: Parameterization = "ntk",
        s: tuple[int, int] = (1, 1),
    ):
        self.out_dim = check_int("Dense", "out_dim", out_dim, minimum=1)
        self.W_std = hyperparameter("Dense", "W_std", W_std, nonnegative=True)
        self.b_std = None if b_std is None else hyperparameter("Dense", "b_std", b_std, nonnegative=True)
        self.parameterization, self.s = check_parameterization("Dense", parameterization, s)

    def __call__(self, k: Kernel) -> Kernel:
        fan_in = k.shape1[-1] / self.s[0]
        nngp, ntk, cov1, cov2 = affine_kernel(k, self.W_std, self.b_std, self.parameterization, fan_in)
        return with_shapes(
            k, self, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=True, is_input=False
        )

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape("Dense", in_shape)
        return in_shape[:-1] + (self.out_dim * self.s[1],)

    def requires(self, out: Diagonals) -> Diagonals:
        return out

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteDense":
        in_shape = check_in_shape("Dense", in_shape)
        n_in, n_out = in_shape[-1], self.out_dim * self.s[1]
        kw, kb = jax.random.split(key)
        dtype = jnp.result_type(float)
        W = jax.random.normal(kw, (n_in, n_out), dtype)
        b = None if self.b_std is None else jax.random.normal(kb, (n_out,), dtype)
        if self.parameterization == "standard":
            W = W * (self.W_std / jnp.sqrt(n_in / self.s[0]))
            b = None if b is None else b * self.b_std
        return FiniteDense(W, b, self.W_std, self.b_std, self.parameterization, self.s[0])


class FiniteDense(AbstractFinite):
    """Finite twin of `Dense`: `weight` `(n_in, n_out)`, `bias` `(n_out,)` or None."""

    weight: Float[Array, "n_in n_out"]
    bias: Float[Array, " n_out"] | None
    # Hyperparameters, not parameters: read through stop_gradient so that they add
    # nothing to empirical NTKs and receive no updates from an optimiser.
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    parameterization: str = eqx.field(static=True)
    s_in: int = eqx.field(static=True)

    def __call__(self, x: Float[Array, "*spatial n_in"], *, key: PRNGKeyArray | None = None) -> Array:
        y = jnp.tensordot(x, self.weight, axes=1, precision=jax.lax.Precision.HIGHEST)
        if self.parameterization == "ntk":
            y = y * (jax.lax.stop_gradient(self.W_std) / jnp.sqrt(x.shape[-1]))
            if self.bias is not None:
                y = y + jax.lax.stop_gradient(self.b_std) * lift_channels(self.bias, y.ndim)
        else:
            y = y / jnp.sqrt(self.s_in)
            if self.bias is not None:
                y = y + lift_channels(self.bias, y.ndim)
        return y
