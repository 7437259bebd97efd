import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, Real

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops import _attention as attn
from ._base import AbstractFinite, AbstractLayer, check_in_shape, check_int, hyperparameter, with_shapes


AttentionMechanism = Literal["SOFTMAX", "IDENTITY", "ABS", "RELU", "softmax", "identity", "abs", "relu"]
PositionalEmbedding = Literal["NONE", "SUM", "CONCAT", "none", "sum", "concat"]

_MECHANISMS = ("SOFTMAX", "IDENTITY", "ABS", "RELU")
_POS_EMB = ("NONE", "SUM", "CONCAT")
_NAME = "GlobalSelfAttention"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{_NAME}({name}=...)` must be one of {options} (any case); got {value!r}.")
    return value.upper()


class GlobalSelfAttention(AbstractLayer):
    r"""Global scaled dot-product self-attention over all spatial positions, with
    `n_heads` heads and an output projection.

    **Finite twin** (neural-tangents' parameterization, all weights $\mathcal N(0, 1)$).
    For one example $x \in \mathbb R^{S \times C}$ (positions flattened), head $h$ has
    keys $K_h = \tilde x W^K_h$ and values $V_h = \bar x W^V_h$, with $W^K_h \in
    \mathbb R^{\tilde C \times d_k}$, $W^V_h \in \mathbb R^{\bar C \times d_v}$ and
    $\tilde x \in \mathbb R^{S \times \tilde C}$, $\bar x \in \mathbb R^{S \times
    \bar C}$ the inputs with or without positional embeddings (below; both are $x$
    without them). With `linear_scaling` the queries are tied to the keys and
    $G_h = \frac{\sigma_Q \sigma_K}{\tilde C d_k} K_h K_h^\top$; otherwise
    $Q_h = \tilde x W^Q_h$ is independent and $G_h = \frac{\sigma_Q
    \sigma_K}{\tilde C \sqrt{d_k}} Q_h K_h^\top$.
    The output is
    $f(x) = \frac{\sigma_O \sigma_V}{\sqrt{H d_v \bar C}}\,
    [\phi(G_1) V_1, \ldots, \phi(G_H) V_H]\, W^O + \sigma_b b$,
    with $\phi$ the `attention_mechanism` (softmax over keys, identity, $|\cdot|$,
    ReLU). Positional embeddings $E \in \mathbb R^{S \times C_E}$ are trained
    parameters, $\mathcal N(0, 1)$ and shared by all examples, multiplied by the
    Cholesky factor of $R$ (below) when `pos_emb_decay_fn` is given and by
    $\sigma_E$: 'SUM' uses $\tilde x = x + \sigma_E E$ for keys and queries, 'CONCAT'
    $\tilde x = [x, \sigma_E E]$; values see them ($\bar x = \tilde x$) only with
    `val_pos_emb`, else $\bar x = x$. `init` splits the key and draws in
    neural-tangents' order and shapes, so a key gives neural-tangents' parameters
    (up to rounding, with `jax_threefry_partitionable=False`, JAX's default before 0.5).

    **Kernel** (Hron et al. 2020, "Infinite attention: NNGP and NTK for deep attention
    networks"), as $d_k$, $d_v$, $H$ and the input width go to infinity. Positional
    embeddings turn the input covariance into $\tilde{\mathcal K} = \alpha\,\mathcal K
    + \beta\,\sigma_E^2 R$, with $(\alpha, \beta) = (1, 1)$ for 'SUM' and
    $(\frac{C}{C + C_E}, \frac{C_E}{C + C_E})$ for 'CONCAT'; $R = I$, or
    $R_{pq} = \text{decay}(\sum_a |p_a - q_a|^{p})$ over position coordinates
    $p_a, q_a$ with `pos_emb_decay_fn`; values use $\tilde{\mathcal K}$ with
    `val_pos_emb`, else $\mathcal K$ (call it $\bar{\mathcal K}$; likewise $\bar\Theta$).

    - `linear_scaling=True`: $G \to \sigma_Q\sigma_K\,\tilde{\mathcal K}(x, x)$, a
      deterministic matrix per example, so with $A(x) = \phi(\sigma_Q\sigma_K
      \tilde{\mathcal K}(x, x))$,
      $\mathcal K'(x, y) = \sigma_O^2\sigma_V^2\, A(x)\, \bar{\mathcal K}(x, y)\,
      A(y)^\top + \sigma_b^2$ and $\Theta' = \sigma_O^2\sigma_V^2\, A(x)
      [\bar\Theta + 2 \bar{\mathcal K}] A(y)^\top + \sigma_b^2$ ($W^O$ and $W^V$
      each contribute $\bar{\mathcal K}$; keys and queries contribute nothing in the
      limit).
    - `linear_scaling=False`, `'IDENTITY'`: $G$ is Gaussian in the limit, and with
      $\langle a, b \rangle = \sum_{q, q'} a_{q q'} b_{q q'}$ and $s =
      \sigma_Q\sigma_K\sigma_O\sigma_V$, $\mathcal K'[p, p'] = s^2 \langle
      \tilde{\mathcal K}, \bar{\mathcal K}\rangle\, \tilde{\mathcal K}[p, p'] +
      \sigma_b^2$ and $\Theta'[p, p'] = s^2 \big(\langle \tilde{\mathcal K}, \bar\Theta
      \rangle + \langle \tilde\Theta, \bar{\mathcal K}\rangle\big) \tilde{\mathcal K}[p,
      p'] + s^2 \langle \tilde{\mathcal K}, \bar{\mathcal K}\rangle (\tilde\Theta[p, p']
      + 4 \tilde{\mathcal K}[p, p']) + \sigma_b^2$.
    - `linear_scaling=False` with another mechanism has no known closed form: the
      kernel raises `NotImplementedError` (the finite twin works).

    Needs the full spatial covariance of its input. **Masks** (`Kernel.mask1/2`):
    masked keys get zero attention weight (softmax logit $-\infty$, else logit 0),
    positional embeddings are zero at masked positions, and output entries involving a
    masked position are zero, as in neural-tangents.

    neural-tangents: `stax.GlobalSelfAttention` (same arguments; `batch_axis` and
    `channel_axis` are `kernelalg.kernel`'s).

    **Arguments:**

    - `n_chan_out`: output channels of the finite twin.
    - `n_chan_key`: $d_k$, channels of keys and queries.
    - `n_chan_val`: $d_v$, channels of values.
    - `n_heads`: $H$.
    - `linear_scaling`: scale $G$ by $1/d_k$ and tie queries to keys (a closed form
      for every mechanism), or by $1/\sqrt{d_k}$ with independent queries.
    - `W_key_std`, `W_query_std`: $\sigma_K$, $\sigma_Q$; only $\sigma_Q\sigma_K$ matters.
    - `W_value_std`, `W_out_std`: $\sigma_V$, $\sigma_O$; only $\sigma_O\sigma_V$ matters.
    - `b_std`: $\sigma_b$, one bias per output channel; `None`: no bias.
    - `attention_mechanism`: $\phi$: `'SOFTMAX'`, `'IDENTITY'`, `'ABS'` or `'RELU'`.
    - `pos_emb_type`: `'NONE'`, `'SUM'` or `'CONCAT'`.
    - `pos_emb_p_norm`: $p$ of the distance given to `pos_emb_decay_fn`.
    - `pos_emb_decay_fn`: maps distances to covariances of the embeddings (e.g.
      `lambda d: jnp.exp(-d)`), elementwise on an array; `None`: $R = I$.
    - `val_pos_emb`: values see the positional embeddings too.
    - `W_pos_emb_std`: $\sigma_E$.
    - `n_chan_pos_emb`: $C_E$; `None`: the input channels $C$. With 'SUM' it must be
      `None` or $C$.
    """

    n_chan_out: int = eqx.field(static=True)
    n_chan_key: int = eqx.field(static=True)
    n_chan_val: int = eqx.field(static=True)
    n_heads: int = eqx.field(static=True)
    linear_scaling: bool = eqx.field(static=True)
    W_key_std: Float[Array, ""]
    W_value_std: Float[Array, ""]
    W_query_std: Float[Array, ""]
    W_out_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    attention_mechanism: str = eqx.field(static=True)
    pos_emb_type: str = eqx.field(static=True)
    pos_emb_p_norm: Float[Array, ""]
    pos_emb_decay_fn: Callable[[Array], Array] | None = eqx.field(static=True)
    n_chan_pos_emb: int | None = eqx.field(static=True)
    W_pos_emb_std: Float[Array, ""]
    val_pos_emb: bool = eqx.field(static=True)

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: Real[ArrayLike, ""] = 1.0,
        W_value_std: Real[ArrayLike, ""] = 1.0,
        W_query_std: Real[ArrayLike, ""] = 1.0,
        W_out_std: Real[ArrayLike, ""] = 1.0,
        b_std: Real[ArrayLike, ""] | None = None,
        attention_mechanism: AttentionMechanism = "SOFTMAX",
        pos_emb_type: PositionalEmbedding = "NONE",
        pos_emb_p_norm: Real[ArrayLike, ""] = 2.0,
        pos_emb_decay_fn: Callable[[Array], Array] | None = None,
        n_chan_pos_emb: int | None = None,
        W_pos_emb_std: Real[ArrayLike, ""] = 1.0,
        val_pos_emb: bool = False,
    ):
        self.n_chan_out = check_int(_NAME, "n_chan_out", n_chan_out, minimum=1)
        self.n_chan_key = check_int(_NAME, "n_chan_key", n_chan_key, minimum=1)
        self.n_chan_val = check_int(_NAME, "n_chan_val", n_chan_val, minimum=1)
        self.n_heads = check_int(_NAME, "n_heads", n_heads, minimum=1)
        for name, flag in (("linear_scaling", linear_scaling), ("val_pos_emb", val_pos_emb)):
            if not isinstance(flag, bool):
                raise TypeError(f"`{_NAME}({name}=...)` must be a bool; got {flag!r}.")
        self.linear_scaling = linear_scaling
        self.val_pos_emb = val_pos_emb
        self.W_key_std = hyperparameter(_NAME, "W_key_std", W_key_std, nonnegative=True)
        self.W_value_std = hyperparameter(_NAME, "W_value_std", W_value_std, nonnegative=True)
        self.W_query_std = hyperparameter(_NAME, "W_query_std", W_query_std, nonnegative=True)
        self.W_out_std = hyperparameter(_NAME, "W_out_std", W_out_std, nonnegative=True)
        self.b_std = None if b_std is None else hyperparameter(_NAME, "b_std", b_std, nonnegative=True)
        self.attention_mechanism = _check_choice("attention_mechanism", attention_mechanism, _MECHANISMS)
        self.pos_emb_type = _check_choice("pos_emb_type", pos_emb_type, _POS_EMB)
        self.pos_emb_p_norm = hyperparameter(_NAME, "pos_emb_p_norm", pos_emb_p_norm, positive=True)
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise TypeError(
                f"`{_NAME}(pos_emb_decay_fn=...)` must be a function of an array of distances, or "
                f"None; got {pos_emb_decay_fn!r}."
            )
        self.pos_emb_decay_fn = pos_emb_decay_fn
        self.n_chan_pos_emb = (
            None if n_chan_pos_emb is None else check_int(_NAME, "n_chan_pos_emb", n_chan_pos_emb, minimum=1)
        )
        self.W_pos_emb_std = hyperparameter(_NAME, "W_pos_emb_std", W_pos_emb_std, nonnegative=True)

    # ------------------------------------------------------------------ shapes

    def _pos_channels(self, n_chan_in: int) -> int:
        """$C_E$; checks that 'SUM' embeddings match the input channels."""
        n_pe = n_chan_in if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        if self.pos_emb_type == "SUM" and n_pe != n_chan_in:
            raise ValueError(
                f"`{_NAME}(pos_emb_type='SUM')` adds the embeddings to the inputs, so "
                f"`n_chan_pos_emb` must be None or the input channels ({n_chan_in}); got "
                f"{self.n_chan_pos_emb}. Use pos_emb_type='CONCAT' for embeddings of another width."
            )
        return n_pe

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        in_shape = check_in_shape(_NAME, in_shape)
        if len(in_shape) < 2:
            raise ValueError(
                f"`{_NAME}` attends over spatial positions, so it needs examples with at least one "
                f"spatial axis, shape (*spatial, channels), e.g. (length, channels) for sequences; got "
                f"`in_shape={in_shape}`. Add a spatial axis, e.g. `x[:, None, :]` for one position."
            )
        self._pos_channels(in_shape[-1])
        return in_shape[:-1] + (self.n_chan_out,)

    def requires(self, out: Diagonals) -> Diagonals:
        # Attention weights read every pair of positions of one example (but only the
        # example with itself, so the batch may stay diagonal).
        return out.full_spatial(_NAME)

    # ------------------------------------------------------------------ kernel

    def _weights(self, n_chan_in: int) -> tuple[Array | float, Array | float]:
        r"""$(\alpha, \beta\sigma_E^2)$ of $\tilde{\mathcal K} = \alpha \mathcal K + \beta
        \sigma_E^2 R$."""
        if self.pos_emb_type == "NONE":
            return 1.0, 0.0
        e2 = self.W_pos_emb_std**2
        if self.pos_emb_type == "SUM":
            return 1.0, e2
        n_pe = self._pos_channels(n_chan_in)
        total = n_chan_in + n_pe
        return n_chan_in / total, e2 * (n_pe / total)

    def __call__(self, k: Kernel) -> Kernel:
        self.out_shape(k.shape1[1:])
        if k.diagonal_spatial:
            raise ValueError(
                f"`{_NAME}` needs the full spatial covariance (attention mixes positions); got a "
                "diagonal_spatial kernel. Pass `diagonal_spatial=False`."
            )
        if not self.linear_scaling and self.attention_mechanism != "IDENTITY":
            raise NotImplementedError(
                f"`{_NAME}(linear_scaling=False, attention_mechanism='{self.attention_mechanism}')` "
                "has no known closed-form kernel (Hron et al. 2020). Use linear_scaling=True, or "
                "attention_mechanism='IDENTITY'; the finite twin (`init`) works for every setting."
            )
        spatial = tuple(k.shape1[1:-1])
        nb = 1 if k.diagonal_batch else 2
        m1 = attn.flat_mask(k.mask1)
        m2 = attn.flat_mask(k.mask2)
        if m2 is None and k.cov2 is None:
            m2 = m1
        mask12 = attn.pair_mask(m1, m2, cross=True)
        if nb == 1:
            mask11, mask22 = attn.pair_mask(m1, None, False), attn.pair_mask(m2, None, False)
        else:
            mask11, mask22 = attn.pair_mask(m1, m1, True), attn.pair_mask(m2, m2, True)

        def mat(x, b, mask):
            # Entries involving a masked position are zero by the Kernel's convention;
            # zeroing them again makes the sums over keys below exact whatever came before.
            return None if x is None else attn.apply_mask(attn.to_matrix(x, b), mask)

        nngp, ntk = mat(k.nngp, 2, mask12), mat(k.ntk, 2, mask12)
        cov1, cov2 = mat(k.cov1, nb, mask11), mat(k.cov2, nb, mask22)

        alpha, beta = self._weights(k.shape1[-1])
        if self.pos_emb_type == "NONE":
            R = None
        else:
            R = attn.positional_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, k.nngp.dtype)

        def interp(x, mask):
            if x is None or R is None:
                return x
            return alpha * x + beta * attn.apply_mask(jnp.broadcast_to(R, x.shape), mask)

        nngp_i, ntk_i = interp(nngp, mask12), interp(ntk, mask12)
        cov1_i, cov2_i = interp(cov1, mask11), interp(cov2, mask22)
        if self.val_pos_emb:
            nngp_v, ntk_v, cov1_v, cov2_v = nngp_i, ntk_i, cov1_i, cov2_i
        else:
            nngp_v, ntk_v, cov1_v, cov2_v = nngp, ntk, cov1, cov2

        b2 = 0.0 if self.b_std is None else self.b_std**2
        ov2 = (self.W_out_std * self.W_value_std) ** 2
        qk = self.W_query_std * self.W_key_std

        if self.linear_scaling:
            out = self._linear(qk, ov2, b2, nb, m1, m2, cov1_i, cov2_i, nngp_v, ntk_v, cov1_v, cov2_v)
        else:
            out = self._identity(qk, ov2, b2, nngp_i, ntk_i, cov1_i, cov2_i, nngp_v, ntk_v, cov1_v, cov2_v)
        nngp, ntk, cov1, cov2 = out

        def back(x, b, mask):
            return None if x is None else attn.from_matrix(attn.apply_mask(x, mask), b, spatial)

        return with_shapes(
            k,
            self,
            nngp=back(nngp, 2, mask12),
            ntk=back(ntk, 2, mask12),
            cov1=back(cov1, nb, mask11),
            cov2=back(cov2, nb, mask22),
            is_gaussian=True,
            is_input=False,
        )

    def _linear(self, qk, ov2, b2, nb, m1, m2, cov1_i, cov2_i, nngp_v, ntk_v, cov1_v, cov2_v):
        def self_cov(cov):
            # Attention weights need each example with itself: the batch diagonal.
            return cov if nb == 1 else jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)

        def weights(cov, mask):
            key_mask = None if mask is None else mask[:, None, :]
            return attn.mechanism_fn(self.attention_mechanism, qk * self_cov(cov), key_mask)

        G1 = weights(cov1_i, m1)
        G2 = G1 if cov2_i is None else weights(cov2_i, m2)

        def weigh(x, Ga, Gb):
            if x is None:
                return None
            return attn.weigh(Ga, x, None if x.ndim == 3 else Gb)

        nngp_w = weigh(nngp_v, G1, G2)
        nngp = ov2 * nngp_w + b2
        ntk = None if ntk_v is None else ov2 * (weigh(ntk_v, G1, G2) + 2 * nngp_w) + b2
        cov1 = ov2 * weigh(cov1_v, G1, G1) + b2
        cov2 = None if cov2_v is None else ov2 * weigh(cov2_v, G2, G2) + b2
        return nngp, ntk, cov1, cov2

    def _identity(self, qk, ov2, b2, nngp_i, ntk_i, cov1_i, cov2_i, nngp_v, ntk_v, cov1_v, cov2_v):
        s2 = qk**2 * ov2
        dot12 = attn.frobenius(nngp_i, nngp_v)
        nngp = s2 * dot12 * nngp_i + b2
        cov1 = s2 * attn.frobenius(cov1_i, cov1_v) * cov1_i + b2
        cov2 = None if cov2_i is None else s2 * attn.frobenius(cov2_i, cov2_v) * cov2_i + b2
        ntk = None
        if ntk_i is not None:
            # Queries (at p) contribute <K~, K-bar> Theta~[p, p']; keys and values (summed
            # over q) contribute <K~, Theta-bar> + <Theta~, K-bar>; the four weight
            # matrices W^Q, W^K, W^V, W^O contribute <K~, K-bar> K~[p, p'] each.
            dot_ntk = attn.frobenius(nngp_i, ntk_v) + attn.frobenius(ntk_i, nngp_v)
            ntk = s2 * (dot_ntk * nngp_i + dot12 * (ntk_i + 4 * nngp_i)) + b2
        return nngp, ntk, cov1, cov2

    # ------------------------------------------------------------------ finite twin

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteSelfAttention":
        in_shape = check_in_shape(_NAME, in_shape)
        self.out_shape(in_shape)
        c = in_shape[-1]
        k_q, k_k, k_v, k_o, k_b, k_e = jax.random.split(key, 6)
        dtype = jnp.result_type(float)
        c_keys = c_vals = c
        pos_emb = None
        if self.pos_emb_type != "NONE":
            n_pe = self._pos_channels(c)
            pos_emb = jax.random.normal(k_e, in_shape[:-1] + (n_pe,), dtype)
            if self.pos_emb_type == "CONCAT":
                c_keys += n_pe
                if self.val_pos_emb:
                    c_vals += n_pe
            if self.pos_emb_decay_fn is not None:
                self._check_decay(in_shape[:-1], dtype)
        H = self.n_heads
        W_key = jax.random.normal(k_k, (H, c_keys, self.n_chan_key), dtype)
        W_query = None if self.linear_scaling else jax.random.normal(k_q, (H, c_keys, self.n_chan_key), dtype)
        W_value = jax.random.normal(k_v, (H, c_vals, self.n_chan_val), dtype)
        W_out = jax.random.normal(k_o, (self.n_chan_val * H, self.n_chan_out), dtype)
        bias = None if self.b_std is None else jax.random.normal(k_b, (self.n_chan_out,), dtype)
        return FiniteSelfAttention(
            W_query,
            W_key,
            W_value,
            W_out,
            bias,
            pos_emb,
            self.W_key_std,
            self.W_value_std,
            self.W_query_std,
            self.W_out_std,
            self.b_std,
            self.W_pos_emb_std,
            self.pos_emb_p_norm,
            self.linear_scaling,
            self.attention_mechanism,
            self.pos_emb_type,
            self.pos_emb_decay_fn,
            self.val_pos_emb,
        )

    def _check_decay(self, spatial: tuple[int, ...], dtype) -> None:
        if isinstance(self.pos_emb_p_norm, jax.core.Tracer):
            return
        R = attn.positional_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, dtype)
        if isinstance(R, jax.core.Tracer):
            return
        if R.shape != (math.prod(spatial),) * 2 or not bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(R)))):
            raise ValueError(
                f"`{_NAME}(pos_emb_decay_fn=...)` must map the pairwise distances of positions "
                f"{spatial} to a positive definite covariance (the finite twin samples embeddings "
                "from it through a Cholesky factor); e.g. `lambda d: jnp.exp(-d)`."
            )


class FiniteSelfAttention(AbstractFinite):
    r"""Finite twin of `GlobalSelfAttention` on one example `(*spatial, channels)`.

    Parameters (neural-tangents' layout, all $\mathcal N(0, 1)$): `W_query` `(H, C_k,
    d_k)` (None with linear scaling: queries are tied to keys), `W_key` `(H, C_k, d_k)`,
    `W_value` `(H, C_v, d_v)`, `W_out` `(d_v H, n_out)` (rows ordered value channel
    major, head minor), `bias` `(n_out,)` or None, `pos_emb` `(*spatial, C_E)` or None.
    Call with `mask` `(*spatial)` (or `(*spatial, channels)`, reduced over channels),
    True at masked positions, to ignore those keys.
    """

    W_query: Float[Array, "h c_k d_k"] | None
    W_key: Float[Array, "h c_k d_k"]
    W_value: Float[Array, "h c_v d_v"]
    W_out: Float[Array, "hd_v n_out"]
    bias: Float[Array, " n_out"] | None
    pos_emb: Float[Array, "*spatial c_e"] | None
    # Hyperparameters, not parameters: read through stop_gradient.
    W_key_std: Float[Array, ""]
    W_value_std: Float[Array, ""]
    W_query_std: Float[Array, ""]
    W_out_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    W_pos_emb_std: Float[Array, ""]
    pos_emb_p_norm: Float[Array, ""]
    linear_scaling: bool = eqx.field(static=True)
    attention_mechanism: str = eqx.field(static=True)
    pos_emb_type: str = eqx.field(static=True)
    pos_emb_decay_fn: Callable[[Array], Array] | None = eqx.field(static=True)
    val_pos_emb: bool = eqx.field(static=True)

    def __call__(
        self,
        x: Float[Array, "*spatial c"],
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "*spatial"] | Bool[Array, "*spatial c"] | None = None,
    ) -> Float[Array, "*spatial n_out"]:
        sg = jax.lax.stop_gradient
        spatial = x.shape[:-1]
        if not spatial:
            raise ValueError(
                f"`FiniteSelfAttention` needs an example with at least one spatial axis, shape "
                f"(*spatial, channels); got shape {x.shape}."
            )
        if mask is not None:
            if mask.shape not in (spatial, x.shape):
                raise ValueError(
                    f"`FiniteSelfAttention(mask=...)` must have shape {spatial} (or {x.shape}); got "
                    f"{mask.shape}."
                )
            if mask.shape == x.shape:
                mask = jnp.all(mask, axis=-1)
        dtype = x.dtype
        s = math.prod(spatial)
        flat_mask = None if mask is None else mask.reshape(s)
        xs = x.reshape(s, x.shape[-1])
        inputs_k = inputs_v = xs
        if self.pos_emb is not None:
            e = self.pos_emb.reshape(s, self.pos_emb.shape[-1]).astype(dtype)
            if self.pos_emb_decay_fn is not None:
                R = attn.positional_covariance(spatial, sg(self.pos_emb_p_norm), self.pos_emb_decay_fn, dtype)
                e = jnp.matmul(jnp.linalg.cholesky(R), e, precision=attn._HI)
            if flat_mask is not None:
                e = jnp.where(flat_mask[:, None], jnp.zeros((), dtype), e)
            e = sg(self.W_pos_emb_std) * e
            if self.pos_emb_type == "SUM":
                inputs_k = xs + e
            else:
                inputs_k = jnp.concatenate([xs, e], axis=-1)
            if self.val_pos_emb:
                inputs_v = inputs_k
        hi = attn._HI
        keys = jnp.einsum("sc,hcd->hsd", inputs_k, self.W_key, precision=hi)
        values = jnp.einsum("sc,hcd->hsd", inputs_v, self.W_value, precision=hi)
        if self.linear_scaling:
            queries, norm = keys, inputs_k.shape[-1] * self.W_key.shape[-1]
        else:
            queries = jnp.einsum("sc,hcd->hsd", inputs_k, self.W_query, precision=hi)
            norm = inputs_k.shape[-1] * math.sqrt(self.W_key.shape[-1])
        qk = sg(self.W_query_std) * sg(self.W_key_std)
        logits = jnp.einsum("hpd,hqd->hpq", queries, keys, precision=hi) * (qk / norm)
        key_mask = None if flat_mask is None else flat_mask[None, None, :]
        A = attn.mechanism_fn(self.attention_mechanism, logits, key_mask)
        heads = jnp.einsum("hpq,hqv->pvh", A, values, precision=hi)
        heads = heads.reshape(s, -1)  # value channel major, head minor: neural-tangents' order
        n_heads, d_v = self.W_value.shape[0], self.W_value.shape[-1]
        ov = sg(self.W_out_std) * sg(self.W_value_std)
        y = jnp.matmul(heads, self.W_out, precision=hi) * (ov / math.sqrt(d_v * n_heads * inputs_v.shape[-1]))
        if self.bias is not None:
            y = y + sg(self.b_std) * self.bias[None, :]
        return y.reshape(spatial + (y.shape[-1],))
