r"""Gauss–Hermite quadrature of dual activations, for nonlinearities without a
closed form.

$\mathbb{E}[f(u) g(v)]$ for $(u, v)$ Gaussian with variances $v_1, v_2$ and
covariance $c$: write $u = \sqrt{2 v_1}\, x$,
$v = \sqrt2\,\big(\tfrac{c}{\sqrt{v_1}} x + \sqrt{v_2 - c^2/v_1}\; y\big)$ with
$x, y$ independent and weight $e^{-x^2 - y^2}/\pi$, and use the tensor-product
Gauss–Hermite rule of degree $d$ in each variable. The rule is exact for polynomials
of degree $< 2d$ in each variable; for smooth $f$ the error decays geometrically in
$d$, for functions with a kink (ELU's derivative) algebraically.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._safe import safe_sqrt


def derivative(fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """Elementwise derivative of an elementwise function, by forward-mode autodiff."""

    def dfn(x: Array) -> Array:
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]

    return dfn


def gauss_hermite(
    fn: Callable[[Array], Array],
    dfn: Callable[[Array], Array] | None,
    c: ArrayLike,
    v1: ArrayLike,
    v2: ArrayLike,
    deg: int,
) -> tuple[Array, Array]:
    r"""$(\mathbb{E}[f(u)f(v)],\ \mathbb{E}[f'(u)f'(v)])$ by a $d \times d$ rule.

    Loops over the $d^2$ nodes with `lax.scan`, so memory is that of one kernel-sized
    array whatever `deg`. `dfn=None` returns zeros for the second output.
    """
    c, v1, v2 = jnp.broadcast_arrays(c, v1, v2)
    dtype = c.dtype
    x, w = np.polynomial.hermite.hermgauss(deg)
    xi, xj = np.meshgrid(x, x, indexing="ij")
    wij = np.outer(w, w) / np.pi
    nodes = (jnp.asarray(xi.ravel(), dtype), jnp.asarray(xj.ravel(), dtype), jnp.asarray(wij.ravel(), dtype))
    pos = v1 > 0
    sd1 = safe_sqrt(v1)
    slope = jnp.where(pos, c / jnp.where(pos, sd1, 1), 0)
    resid = safe_sqrt(v2 - jnp.where(pos, c * c / jnp.where(pos, v1, 1), 0))
    r2 = np.sqrt(2.0)

    def body(carry, node):
        a, b, weight = node
        u = r2 * sd1 * a
        v = r2 * (slope * a + resid * b)
        nngp, dot = carry
        nngp = nngp + weight * fn(u) * fn(v)
        if dfn is not None:
            dot = dot + weight * dfn(u) * dfn(v)
        return (nngp, dot), None

    zero = jnp.zeros_like(c)
    (nngp, dot), _ = jax.lax.scan(body, (zero, zero), nodes)
    return nngp, dot
