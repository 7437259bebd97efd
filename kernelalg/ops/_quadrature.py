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

import math
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
    r2 = math.sqrt(2.0)  # a Python float: weakly typed, keeps float32 float32

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


_HALF_WIDTH = 9.0  # Gaussian mass beyond 9 standard deviations is below 1e-18.


def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2  # nodes and weights on [0, 1]


def split_gauss_legendre(
    fn: Callable[[Array], Array],
    dfn: Callable[[Array], Array] | None,
    c: ArrayLike,
    v1: ArrayLike,
    v2: ArrayLike,
    n: int,
) -> tuple[Array, Array]:
    r"""$(\mathbb{E}[f(u)f(v)],\ \mathbb{E}[f'(u)f'(v)])$ for nonlinearities whose
    kink or steepest point is at 0 (ELU, SELU, tanh, ...).

    With $u = \sigma_1 z_1$ and $v = m(z_1) + t z_2$, $m = c z_1/\sigma_1$,
    $t = \sqrt{v_2 - c^2/v_1}$: the outer integral over $z_1$ is split at $0$ (where
    $u = 0$) and the inner one over $z_2$ at $-m/t$ (where $v = 0$), so that every
    piece is smooth; each piece on $[-9, 9]$ uses an $n$-point Gauss–Legendre rule.
    Piecewise-smooth integrands then converge geometrically in $n$, where a
    tensor Gauss–Hermite rule converges only algebraically across a kink. Cost:
    $4n^2$ evaluations of `fn` per entry, scanned so that memory is one kernel-sized
    array.
    """
    c, v1, v2 = jnp.broadcast_arrays(c, v1, v2)
    dtype = c.dtype
    x, w = _legendre(n)
    L = _HALF_WIDTH
    # Outer nodes on [-L, 0] and [0, L] with the Gaussian density folded into weights.
    z1 = np.concatenate([-L * x[::-1], L * x])
    w1 = np.concatenate([L * w[::-1], L * w]) * np.exp(-(z1**2) / 2) / np.sqrt(2 * np.pi)
    pos = v1 > 0
    sd1 = safe_sqrt(v1)
    slope = jnp.where(pos, c / jnp.where(pos, sd1, 1), 0)
    t = safe_sqrt(v2 - jnp.where(pos, c * c / jnp.where(pos, v1, 1), 0))
    has_t = t > 0
    xs = jnp.asarray(x, dtype)
    ws = jnp.asarray(w, dtype)

    def outer(carry, node):
        a, wa = node
        u = sd1 * a
        m = slope * a
        split = jnp.clip(jnp.where(has_t, -m / jnp.where(has_t, t, 1), 0), -L, L)

        def inner(carry2, node2):
            xi, wi = node2
            acc_f, acc_d = carry2
            for lo, hi in ((-L, split), (split, L)):
                z2 = lo + (hi - lo) * xi
                weight = wi * (hi - lo) * jnp.exp(-(z2 * z2) / 2) / math.sqrt(2 * math.pi)
                v = m + t * z2
                acc_f = acc_f + weight * fn(v)
                if dfn is not None:
                    acc_d = acc_d + weight * dfn(v)
            return (acc_f, acc_d), None

        zero = jnp.zeros_like(c)
        (g, dg), _ = jax.lax.scan(inner, (zero, zero), (xs, ws))
        nngp, dot = carry
        nngp = nngp + wa * fn(u) * g
        if dfn is not None:
            dot = dot + wa * dfn(u) * dg
        return (nngp, dot), None

    zero = jnp.zeros_like(c)
    nodes = (jnp.asarray(z1, dtype), jnp.asarray(w1, dtype))
    (nngp, dot), _ = jax.lax.scan(outer, (zero, zero), nodes)
    return nngp, dot
