r"""Dual activations: closed forms of Gaussian expectations of nonlinearities.

For $(u, v)$ jointly Gaussian with mean zero, $\mathrm{Var}\,u = v_1$,
$\mathrm{Var}\,v = v_2$, $\mathrm{Cov}(u, v) = c$, each function here returns

$$\hat\phi(c) = \mathbb{E}[\phi(u)\phi(v)], \qquad
  \hat\phi'(c) = \mathbb{E}[\phi'(u)\phi'(v)] = \partial_c \hat\phi(c),$$

the NNGP map and the factor multiplying the NTK (Jacot et al. 2018; Lee et al. 2019;
Novak et al. 2020, "Neural Tangents"). All arguments broadcast elementwise; `v1`,
`v2` are the variances at the positions of the two inputs. The diagonal
($c = v_1 = v_2$) needs no special case.
"""

import functools
import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._safe import fast_arctan2, safe_sqrt, sine_and_angle


Duals = tuple[Array, Array]


def ab_relu(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, a: ArrayLike, b: ArrayLike) -> Duals:
    r"""$\phi(x) = a \min(x, 0) + b \max(x, 0)$ (Cho & Saul 2009, arc-cosine kernel).

    With $\theta = \arccos(c / \sqrt{v_1 v_2})$:
    $\hat\phi = \frac{(a-b)^2}{2\pi}\sqrt{v_1 v_2 - c^2}
      + \left(\frac{a^2+b^2}{2} - \frac{(a-b)^2}{2\pi}\theta\right) c$ and
    $\hat\phi' = \frac{a^2+b^2}{2} - \frac{(a-b)^2}{2\pi}\theta$.
    """
    s, theta = sine_and_angle(c, v1, v2)
    factor = (a - b) ** 2 / (2 * math.pi)
    dot = (a * a + b * b) / 2 - factor * theta
    return factor * s + dot * c, dot


def sign(c: ArrayLike, v1: ArrayLike, v2: ArrayLike) -> Duals:
    r"""$\phi(x) = \mathrm{sign}(x)$: $\hat\phi = 1 - 2\theta/\pi$, $\hat\phi' = 0$.

    $\phi' = 0$ almost everywhere, so the NTK contribution is zero (as in
    neural-tangents). A zero-variance input gives $\mathrm{sign}(0) = 0$.
    """
    _, theta = sine_and_angle(c, v1, v2)
    nngp = 1 - 2 * theta / math.pi
    return nngp, jnp.zeros_like(nngp)


def erf_dual(
    c: ArrayLike, v1: ArrayLike, v2: ArrayLike, a: ArrayLike, b: ArrayLike, shift: ArrayLike
) -> Duals:
    r"""$\phi(x) = a\,\mathrm{erf}(b x) + \text{shift}$ (Williams 1997).

    $\hat\phi = a^2 \frac{2}{\pi}\arcsin\frac{2 b^2 c}{\sqrt{(1+2b^2v_1)(1+2b^2v_2)}}
      + \text{shift}^2$, $\hat\phi' = a^2 b^2 \frac{4}{\pi}
      \left[(1+2b^2v_1)(1+2b^2v_2) - 4b^4c^2\right]^{-1/2}$.
    The shift adds $\text{shift}^2$ to the NNGP: $\mathbb{E}\,\mathrm{erf} = 0$, so no
    cross term.
    """
    b2 = b * b
    c, v1, v2 = b2 * c, b2 * v1, b2 * v2
    root = safe_sqrt((1 + 2 * v1) * (1 + 2 * v2) - 4 * c * c)
    nngp = a * a * (2 / math.pi) * fast_arctan2(2 * c, root) + shift * shift
    dot = a * a * b2 * (4 / math.pi) / root
    return nngp, dot


def gelu(c: ArrayLike, v1: ArrayLike, v2: ArrayLike) -> Duals:
    r"""$\phi(x) = x\,\Phi(x)$ (Tsuchida et al. 2021; as neural-tangents' `Gelu`).

    With $p = v_1 v_2$, $q = (1 + v_1)(1 + v_2)$, $\delta = \sqrt{q - c^2}$:
    $\hat\phi = \frac{c}{4} + \frac{1}{2\pi}\left(\frac{c^2 + p\,\delta^2}{q\,\delta}
      + c \arctan\frac{c}{\delta}\right)$ and
    $\hat\phi' = \frac14 + \frac{1}{2\pi}\arctan\frac{c}{\delta}
      + \frac{c}{2\pi\delta}\left(\frac{1}{\delta^2} + \frac{1 - p}{q} + 1\right)$.
    """
    p = v1 * v2
    q = (1 + v1) * (1 + v2)
    delta2 = q - c * c
    delta = safe_sqrt(delta2)
    angle = fast_arctan2(c, delta)
    nngp = c / 4 + ((c * c + p * delta2) / (q * delta) + c * angle) / (2 * math.pi)
    dot = 0.25 + angle / (2 * math.pi)
    dot = dot + c / delta / (2 * math.pi) * (1 / delta2 + (1 - p) / q + 1)
    return nngp, dot


def sin(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, a: ArrayLike, b: ArrayLike, shift: ArrayLike) -> Duals:
    r"""$\phi(x) = a \sin(b x + \text{shift})$.

    $\hat\phi = \frac{a^2}{2}\left(e^{b^2(c - \frac{v_1+v_2}{2})}
      - \cos(2\,\text{shift})\, e^{-b^2(c + \frac{v_1+v_2}{2})}\right)$,
    $\hat\phi' = \frac{a^2 b^2}{2}\left(e^{b^2(c - \frac{v_1+v_2}{2})}
      + \cos(2\,\text{shift})\, e^{-b^2(c + \frac{v_1+v_2}{2})}\right)$.
    """
    b2 = b * b
    half = (v1 + v2) / 2
    s1 = jnp.exp(b2 * (c - half))
    s2 = jnp.exp(-b2 * (c + half)) * jnp.cos(2 * shift)
    return a * a / 2 * (s1 - s2), a * a * b2 / 2 * (s1 + s2)


def rbf(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, gamma: ArrayLike) -> Duals:
    r"""$\phi(x) = \sqrt2 \sin(\sqrt{2\gamma} x + \pi/4)$ (random Fourier features).

    $\hat\phi = e^{-\gamma(v_1 + v_2 - 2c)}$, the RBF kernel of the pre-activations
    (Rahimi & Recht 2007), and $\hat\phi' = 2\gamma\hat\phi$.
    """
    nngp = jnp.exp(gamma * (2 * c - v1 - v2))
    return nngp, 2 * gamma * nngp


def exp(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, a: ArrayLike, b: ArrayLike) -> Duals:
    r"""$\phi(x) = a e^{b x}$: $\hat\phi = a^2 e^{b^2 (c + (v_1 + v_2)/2)}$,
    $\hat\phi' = b^2 \hat\phi$."""
    nngp = a * a * jnp.exp(b * b * (c + (v1 + v2) / 2))
    return nngp, b * b * nngp


def gaussian(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, a: ArrayLike, b: ArrayLike) -> Duals:
    r"""$\phi(x) = a e^{b x^2}$ ($b < 1/(4 \max v)$ for finiteness).

    $\hat\phi = a^2 / \sqrt{(1 - 2bv_1)(1 - 2bv_2) - 4b^2c^2}$,
    $\hat\phi' = 4 a^2 b^2 c / \left[(1 - 2bv_1)(1 - 2bv_2) - 4b^2c^2\right]^{3/2}$.
    """
    det = safe_sqrt((1 - 2 * b * v1) * (1 - 2 * b * v2) - 4 * b * b * c * c)
    return a * a / det, a * a * 4 * b * b * c / det**3


def gabor(c: ArrayLike, v1: ArrayLike, v2: ArrayLike) -> Duals:
    r"""$\phi(x) = e^{-x^2}\sin x$ (as neural-tangents' `Gabor`).

    With $\Sigma = v_1 + v_2$, $\Delta = 4(v_1 v_2 - c^2)$, $D = 2\Sigma + \Delta + 1$:
    $\hat\phi = \frac{e^{-(\Sigma + \Delta + 2c)/(2D)}\,(e^{2c/D} - 1)}{2\sqrt D}$.
    """
    total = v1 + v2
    diff = 4 * (v1 * v2 - c * c)
    denom = 2 * total + diff + 1
    exp_left = jnp.exp(-(total + diff + 2 * c) / (2 * denom))
    exp_right = jnp.exp(2 * c / denom)
    shared = 1 + 2 * total + 4 * (c * c + v1 * v2)
    cross = 4 * c * (diff + 3 * total + 2)
    dot = exp_left * ((shared - cross) + exp_right * (shared + cross)) / denom**2.5 / 2
    nngp = exp_left * (exp_right - 1) / (2 * safe_sqrt(denom))
    return nngp, dot


def exp_normalized(
    c: ArrayLike, v1: ArrayLike, v2: ArrayLike, gamma: ArrayLike, shift: ArrayLike, do_clip: bool
) -> Duals:
    r"""Gaussian normalised kernel (Shankar et al. 2020, "Neural Kernels Without
    Tangents"): $\hat\phi = \sqrt{v_1 v_2}\,
    \exp\!\big(\gamma (c / \sqrt{v_1 v_2} + \text{shift})\big)$,
    $\hat\phi' = \gamma \exp\!\big(\gamma (c / \sqrt{v_1 v_2} + \text{shift})\big)$."""
    norm = safe_sqrt(v1 * v2, 1e-30)
    r = c / norm
    if do_clip:
        r = jnp.clip(r, -1, 1)
    e = jnp.exp(gamma * (r + shift))
    return norm * e, gamma * e


@functools.cache
def _hermite_coefficients(coef: tuple[float, ...]) -> tuple[tuple[int, tuple[float, ...]], ...]:
    # p(sigma z) = sum_l sigma^l R_l(sigma^2) h_l(z) with h_l = He_l / sqrt(l!), from
    # z^m = sum_i m! / (2^i i! (m - 2i)!) He_{m - 2i}(z). Returns (l, coefficients of
    # R_l as a polynomial in the variance, lowest power first).
    out = []
    for l in range(len(coef)):
        r = []
        for i in range((len(coef) - 1 - l) // 2 + 1):
            m = l + 2 * i
            r.append(coef[m] * math.factorial(m) / (2**i * math.factorial(i) * math.sqrt(math.factorial(l))))
        if any(x != 0 for x in r):
            out.append((l, tuple(r)))
    return tuple(out)


def _polyval_low_first(coefs: tuple[float, ...], x: ArrayLike) -> Array:
    out = jnp.zeros_like(x)
    for a in reversed(coefs):
        out = out * x + a
    return out


def polynomial(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, coef: tuple[float, ...]) -> Duals:
    r"""$\phi(x) = \sum_k a_k x^k$ via its Hermite expansion.

    Writing $\phi(\sigma z) = \sum_l \sigma^l R_l(\sigma^2)\, h_l(z)$ with orthonormal
    Hermite polynomials $h_l = \mathrm{He}_l/\sqrt{l!}$ and Mehler's formula
    $\mathbb{E}[h_l(z_1) h_m(z_2)] = \delta_{lm}\rho^l$:
    $\hat\phi = \sum_l R_l(v_1) R_l(v_2)\, c^l$ and
    $\hat\phi' = \sum_l l\, R_l(v_1) R_l(v_2)\, c^{l-1}$, polynomials in
    $(c, v_1, v_2)$: exact at zero variance, with no square roots.
    """
    nngp = jnp.zeros_like(c * v1 * v2)
    dot = jnp.zeros_like(nngp)
    for l, r in _hermite_coefficients(coef):
        rr = _polyval_low_first(r, v1) * _polyval_low_first(r, v2)
        nngp = nngp + rr * c**l
        if l > 0:
            dot = dot + l * rr * c ** (l - 1)
    return nngp, dot


def monomial(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, degree: int) -> Duals:
    r"""$\phi(x) = x^n$: $\hat\phi = \sum_{l \equiv n (2)} \frac{(n!)^2}
    {l!\,(i!)^2\,4^i} (v_1 v_2)^i c^l$ with $i = (n - l)/2$; see `polynomial`."""
    return polynomial(c, v1, v2, (0.0,) * degree + (1.0,))


def hermite(c: ArrayLike, degree: int) -> Duals:
    r"""$\phi(x) = \mathrm{He}_n(x)/\sqrt{n!}$ on inputs of unit variance:
    $\hat\phi = c^n$, $\hat\phi' = n c^{n-1}$ (Mehler's formula)."""
    if degree == 0:
        return jnp.ones_like(c), jnp.zeros_like(c)
    return c**degree, degree * c ** (degree - 1)


@functools.cache
def _arccos_polynomials(degree: int) -> tuple[np.ndarray, np.ndarray]:
    # F_n(rho) = E[u_+^n v_+^n] for unit variances = (A_n(rho) (pi - theta) + B_n(rho)
    # sqrt(1 - rho^2)) / (2 pi). Price's theorem gives F_n' = n^2 F_{n-1}, so
    # A_n' = n^2 A_{n-1} and (1 - rho^2) B_n' - rho B_n + A_n = n^2 (1 - rho^2) B_{n-1};
    # the constant of A_n is fixed by F_n(0) = (E u_+^n)^2. Solved once per degree.
    P = np.polynomial.Polynomial
    a, b = P([1.0]), P([0.0])
    one_minus = P([1.0, 0.0, -1.0])
    rho = P([0.0, 1.0])
    for n in range(1, degree + 1):
        a_int = (n * n * a).integ()
        # Unknowns: constant k of A_n and coefficients b_0..b_n of B_n.
        m = n + 1
        cols = []
        # Equation: (1 - rho^2) B' - rho B + (a_int + k) - n^2 (1 - rho^2) B_{n-1} = 0.
        for j in range(m):
            e = P([0.0] * j + [1.0])
            cols.append((one_minus * e.deriv() - rho * e).coef)
        cols.append(P([1.0]).coef)
        const = (a_int - n * n * one_minus * b).coef
        size = max(len(x) for x in cols + [const]) + 1
        mat = np.zeros((size + 1, m + 1))
        rhs = np.zeros(size + 1)
        for j, col in enumerate(cols):
            mat[: len(col), j] = col
        rhs[: len(const)] = -const
        # F_n(0) = (k pi / 2 + b_0) / (2 pi) = (E u_+^n)^2.
        moment = 2 ** (n / 2) * math.gamma((n + 1) / 2) / (2 * math.sqrt(math.pi))
        mat[size, m] = math.pi / 2
        mat[size, 0] = 1.0
        rhs[size] = 2 * math.pi * moment**2
        sol, *_ = np.linalg.lstsq(mat, rhs, rcond=None)
        if not np.allclose(mat @ sol, rhs, atol=1e-9 * max(1.0, np.abs(rhs).max())):
            raise RuntimeError(f"arc-cosine recursion failed at degree {n}")
        a = a_int + sol[m]
        b = P(sol[:m])
    # The coefficients are integers; rounding removes the solver's 1e-13 noise.
    return np.round(a.coef), np.round(b.coef)


def _homogeneous(coefs: np.ndarray, c: ArrayLike, prod: ArrayLike, total: int) -> Array:
    # sum_k coefs[k] rho^k (sqrt prod)^total with rho = c / sqrt(prod): only terms with
    # total - k even survive (parity), so this is a polynomial in c and prod.
    out = jnp.zeros_like(c * prod)
    for k, a in enumerate(coefs):
        if abs(a) < 1e-13 or (total - k) % 2:
            continue
        # float(a): a NumPy float64 scalar would promote float32 kernels.
        out = out + float(a) * c**k * prod ** ((total - k) // 2)
    return out


def rectified_monomial(c: ArrayLike, v1: ArrayLike, v2: ArrayLike, degree: int) -> Duals:
    r"""$\phi(x) = \max(x, 0)^n$ (Cho & Saul 2009, arc-cosine kernel of degree $n$).

    $\hat\phi = \frac{(v_1 v_2)^{n/2}}{2\pi} J_n(\theta)$ with
    $J_n = A_n(\cos\theta)(\pi - \theta) + B_n(\cos\theta)\sin\theta$, polynomials
    obtained from Price's theorem $\partial_\rho F_n = n^2 F_{n-1}$; and
    $\hat\phi' = n^2 \hat\phi_{n-1}$. Finite at zero variance and on the diagonal
    (neural-tangents returns NaN variances for this layer).
    """
    prod = v1 * v2
    s, theta = sine_and_angle(c, v1, v2)

    def f(n):
        if n == 0:
            return (math.pi - theta) / (2 * math.pi) * jnp.ones_like(prod)
        a, b = _arccos_polynomials(n)
        return (_homogeneous(a, c, prod, n) * (math.pi - theta) + _homogeneous(b, c, prod, n - 1) * s) / (
            2 * math.pi
        )

    nngp = f(degree)
    dot = jnp.zeros_like(nngp) if degree == 0 else degree**2 * f(degree - 1)
    return nngp, dot
