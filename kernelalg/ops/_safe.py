r"""Square root and angle with finite derivatives where the textbook ones blow up.

At perfectly correlated inputs the arc-cosine and erf duals take
$\sqrt{v_1 v_2 - c^2}$ at zero, whose derivative is infinite; the kernel itself is
smooth there because the infinite term is multiplied by zero. Autodiff does not know
that, so gradients with respect to inputs or hyperparameters would be NaN
(google/neural-tangents #88). These versions return the one-sided limit of the full
expression's derivative, which is what the callers need.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def safe_sqrt(x: ArrayLike, tol: float = 0.0) -> Array:
    r"""$\sqrt{\max(x, \mathrm{tol})}$ whose derivative is 0 where $x \le 0$."""
    return jnp.sqrt(jnp.maximum(x, tol))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(tol, primals, tangents):
    (x,), (dx,) = primals, tangents
    out = safe_sqrt(x, tol)
    # The derivative 1 / (2 sqrt(x)) is only used where it is finite; at x <= tiny,
    # callers' expressions multiply it by something that vanishes at least as fast.
    tiny = jnp.asarray(max(tol, 1e-30), out.dtype)
    safe = jnp.sqrt(jnp.maximum(x, tiny))
    return out, jnp.where(x > tiny, dx / (2 * safe), jnp.zeros_like(dx))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def safe_arctan2(y: ArrayLike, x: ArrayLike, fill: float) -> Array:
    r"""`arctan2(y, x)`, equal to `fill` at the origin and with a finite derivative there."""
    return jnp.where((y == 0) & (x == 0), jnp.asarray(fill, jnp.result_type(y)), jnp.arctan2(y, x))


@safe_arctan2.defjvp
def _safe_arctan2_jvp(fill, primals, tangents):
    (y, x), (dy, dx) = primals, tangents
    out = safe_arctan2(y, x, fill)
    denom = jnp.maximum(x * x + y * y, jnp.asarray(1e-30, out.dtype))
    return out, (dy * x - dx * y) / denom


def sine_and_angle(c: ArrayLike, v1: ArrayLike, v2: ArrayLike) -> tuple[Array, Array]:
    r"""$(\sqrt{v_1 v_2 - c^2},\ \theta = \arccos(c/\sqrt{v_1 v_2}))$, exact at $c = v_1 = v_2$.

    Written as $(r - c)(r + c)$ with $r = \sqrt{v_1 v_2}$: IEEE square roots give
    $\sqrt{v \cdot v} = v$ exactly, so on the diagonal the factor $r - c$ is exactly 0
    whatever the compiler fuses, whereas $v_1 v_2 - c^2$ contracted into an FMA leaves
    the rounding error of $v^2$, which the square root amplifies to $\sqrt{\epsilon}$.
    The factored form is also the more accurate one near $|c| = r$.
    """
    r = safe_sqrt(v1 * v2)
    s = safe_sqrt((r - c) * (r + c))
    return s, safe_arctan2(s, c, math.pi / 2)
