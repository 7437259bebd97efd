r"""Covariance maths of global self-attention (Hron et al. 2020, "Infinite attention:
NNGP and NTK for deep attention networks").

Attention mixes positions, so its kernels are handled as matrices over flattened
positions: a covariance `(*batch, *zipped)` with spatial sizes `(s_1, ..., s_k)`
becomes `(*batch, S, S)` with `S = s_1 ... s_k`, positions in row-major order, and
back. Masks `(n, *spatial)` become `(n, S)`.
"""

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._layout import unzip_axes, zip_axes


_HI = jax.lax.Precision.HIGHEST

Mechanism = Literal["SOFTMAX", "IDENTITY", "ABS", "RELU"]


def to_matrix(x: Array, batch: int) -> Array:
    """`(*batch, *zipped)` -> `(*batch, S, S)`: rows are positions of the first example."""
    lead = x.shape[:batch]
    s = math.prod(x.shape[batch::2]) if x.ndim > batch else 1
    return unzip_axes(x, batch).reshape(lead + (s, s))


def from_matrix(m: Array, batch: int, spatial: tuple[int, ...]) -> Array:
    """Inverse of `to_matrix` for spatial sizes `spatial`."""
    return zip_axes(m.reshape(m.shape[:batch] + spatial + spatial), batch)


def flat_mask(mask: Bool[Array, "n *spatial"] | None) -> Bool[Array, "n s"] | None:
    return None if mask is None else mask.reshape(mask.shape[0], -1)


def pair_mask(m1: Array | None, m2: Array | None, cross: bool) -> Array | None:
    r"""Where a covariance matrix involves a masked position: `(n1, n2, S, S)` if
    `cross` else `(n, S, S)` (one example with itself, `m2` ignored)."""
    if m1 is None and m2 is None:
        return None
    if not cross:
        return m1[:, :, None] | m1[:, None, :]
    s = (m1 if m1 is not None else m2).shape[-1]
    a = jnp.zeros((1, s), bool) if m1 is None else m1
    b = jnp.zeros((1, s), bool) if m2 is None else m2
    return a[:, None, :, None] | b[None, :, None, :]


def apply_mask(x: Array | None, mask: Array | None) -> Array | None:
    """Zero the entries of `x` that involve a masked position."""
    if x is None or mask is None:
        return x
    return jnp.where(mask, jnp.zeros((), x.dtype), x)


def positional_covariance(
    spatial: tuple[int, ...],
    p_norm: Float[Array, ""],
    decay_fn: Callable[[Array], Array] | None,
    dtype,
) -> Float[Array, "s s"]:
    r"""Covariance $R$ of positional embeddings between flattened positions.

    Without `decay_fn`, $R = I$ (independent embeddings per position). Otherwise
    $R_{pq} = \text{decay\_fn}\big(\sum_a |p_a - q_a|^{p}\big)$, the unnormalised
    $\ell_p$ distance to the power $p$ = `p_norm` (as neural-tangents'
    `_pos_emb_pdist`). The caller's `decay_fn` must make $R$ positive semi-definite.
    """
    s = math.prod(spatial)
    if decay_fn is None:
        return jnp.eye(s, dtype=dtype)
    grids = jnp.meshgrid(*[jnp.arange(n) for n in spatial], indexing="ij")
    coords = jnp.stack([g.reshape(-1) for g in grids], axis=-1).astype(dtype)  # (S, k)
    diff = jnp.abs(coords[:, None, :] - coords[None, :, :])
    # 0 ** p with a traced p has a NaN derivative in p; zero distances contribute 0.
    safe = jnp.where(diff > 0, diff, jnp.ones((), dtype))
    powered = jnp.where(diff > 0, safe ** p_norm.astype(dtype), jnp.zeros((), dtype))
    return jnp.asarray(decay_fn(jnp.sum(powered, axis=-1)), dtype)


def mechanism_fn(mechanism: str, logits: Array, key_mask: Array | None) -> Array:
    r"""Attention weights $\phi(G)$ over the last axis (keys), ignoring masked keys.

    `key_mask` broadcasts against `logits` (True = masked key). Masked keys get weight 0:
    softmax gives them logit $-\infty$ (the finite minimum, so that a row with every
    key masked is uniform rather than NaN, as in neural-tangents), the other mechanisms
    a logit of 0, which they map to 0.
    """
    if mechanism == "SOFTMAX":
        if key_mask is not None:
            logits = jnp.where(key_mask, jnp.finfo(logits.dtype).min, logits)
        return jax.nn.softmax(logits, axis=-1)
    if key_mask is not None:
        logits = jnp.where(key_mask, jnp.zeros((), logits.dtype), logits)
    if mechanism == "IDENTITY":
        return logits
    if mechanism == "ABS":
        return jnp.abs(logits)
    return jax.nn.relu(logits)


def weigh(G1: Array, mat: Array, G2: Array | None) -> Array:
    r"""$G_1[i]\, M[i, j]\, G_2[j]^\top$ for a cross covariance `mat` `(n1, n2, S, S)`,
    or $G_1[i]\, M[i]\, G_1[i]^\top$ for a `diagonal_batch` one `(n, S, S)` (`G2` None).
    """
    if mat.ndim == 3:
        t = jnp.einsum("ipq,iqr->ipr", G1, mat, precision=_HI)
        return jnp.einsum("ipr,isr->ips", t, G1, precision=_HI)
    t = jnp.einsum("ipq,ijqr->ijpr", G1, mat, precision=_HI)
    return jnp.einsum("ijpr,jsr->ijps", t, G2, precision=_HI)


def frobenius(a: Array, b: Array) -> Array:
    r"""$\sum_{q, q'} a[\ldots, q, q']\, b[\ldots, q, q']$, kept as `(..., 1, 1)`."""
    return jnp.sum(a * b, axis=(-2, -1), keepdims=True)
