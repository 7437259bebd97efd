import math
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._kernel import Kernel
from .._requirements import Diagonals
from ..ops import _conv as conv_ops
from ..ops._layout import spatial_diagonal
from ._base import (
    AbstractFinite,
    AbstractLayer,
    check_in_shape,
    check_int,
    hyperparameter,
    lift_channels,
    map_masks,
    with_shapes,
)
from ._dense import check_parameterization


Padding = Literal["VALID", "SAME", "CIRCULAR"]
_LETTERS = "HWDEFGJKLM"


def check_padding(owner: str, padding: str) -> str:
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME", "CIRCULAR"):
        raise ValueError(
            f"`{owner}(padding=...)` must be one of 'VALID', 'SAME', 'CIRCULAR'; got {padding!r}."
        )
    return padding.upper()


def check_window(owner: str, name: str, value: Sequence[int] | None, n: int | None = None) -> tuple[int, ...]:
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{owner}({name}=...)` must be a tuple of positive ints; got {value!r}.")
    out = tuple(value)
    if not out or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out):
        raise ValueError(f"`{owner}({name}=...)` must be a non-empty tuple of positive ints; got {value!r}.")
    if n is not None and len(out) != n:
        raise ValueError(f"`{owner}({name}=...)` must have {n} entries, one per spatial axis; got {value!r}.")
    return out


def check_spatial_input(owner: str, in_shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    in_shape = check_in_shape(owner, in_shape, min_ndim=2)
    if len(in_shape) != n + 1:
        raise ValueError(
            f"`{owner}` has a {n}-D window, so it needs examples of shape (*{n} spatial axes, channels); "
            f"got `in_shape={in_shape}`."
        )
    return in_shape


def _specs(n: int) -> tuple[str, str, str]:
    sp = _LETTERS[:n]
    return "N" + sp + "C", sp + "IO", "N" + sp + "C"


class AbstractConv(AbstractLayer):
    r"""Convolutions: shared weights (`Conv`), unshared (`ConvLocal`), transposed
    (`ConvTranspose`).

    Finite twin ('ntk'): $z_i = \frac{\sigma_W}{\sqrt{C F}} \sum_{d, c} W_{d c}
    x_{s i + d, c} + \sigma_b b$ with $F$ the filter size and $C$ the input channels.
    Kernel (Novak et al. 2019; Arora et al. 2019): per spatial dimension
    $\mathcal{K}'[i, j] = \frac{\sigma_W^2}{F}\sum_d \mathcal{K}[s i + d, s j + d] +
    \sigma_b^2$ (see `kernelalg.ops.conv_pair`), $\Theta' = \frac{\sigma_W^2}{F}\sum_d
    \Theta[\ldots] + \mathcal{K}'$; 'standard' as for `Dense`, with fan-in $C F / s_0$.
    A layer with spatial diagonal input keeps it diagonal: $O(N^2 |S|)$.
    """

    out_chan: eqx.AbstractVar[int]
    filter_shape: eqx.AbstractVar[tuple[int, ...]]
    strides: eqx.AbstractVar[tuple[int, ...]]
    padding: eqx.AbstractVar[str]
    W_std: eqx.AbstractVar[Array]
    b_std: eqx.AbstractVar[Array | None]
    parameterization: eqx.AbstractVar[str]
    s: eqx.AbstractVar[tuple[int, int]]

    def _spatial_out(self, size: int, window: int, stride: int) -> int:
        return conv_ops.out_size(size, window, stride, self.padding)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        name = type(self).__name__
        in_shape = check_spatial_input(name, in_shape, len(self.filter_shape))
        out = []
        for size, f, st in zip(in_shape[:-1], self.filter_shape, self.strides):
            o = self._spatial_out(size, f, st)
            if o <= 0:
                raise ValueError(
                    f"`{name}`: filter {self.filter_shape} with padding='{self.padding}' is larger than "
                    f"the input's spatial shape {in_shape[:-1]}; use padding='SAME' or a smaller filter."
                )
            out.append(o)
        return tuple(out) + (self.out_chan * self.s[1],)

    def requires(self, out: Diagonals) -> Diagonals:
        return out

    def _map(self, x: Array | None, batch: int, diagonal: bool) -> Array | None:
        """The covariance map without the $\\sigma_W^2$ factor or the bias."""
        if x is None:
            return None
        return conv_ops.apply_per_dimension(
            x,
            batch,
            diagonal,
            conv_ops.conv_pair,
            conv_ops.conv_diagonal,
            list(zip(self.filter_shape, self.strides)),
            self.padding,
        )

    def _finalise(self, x: Array | None, batch: int, diagonal: bool) -> Array | None:
        return x

    def _mask(self, m: Array) -> Array:
        for i, (f, st) in enumerate(zip(self.filter_shape, self.strides)):
            m = conv_ops.pool_mask(m, 1 + i, f, st, self.padding)
        return m

    def __call__(self, k: Kernel) -> Kernel:
        self.out_shape(k.shape1[1:])
        b_cov1 = 1 if k.diagonal_batch else 2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        w2 = self.W_std**2

        def go(x, batch, scale, shift):
            if x is None:
                return None
            return self._finalise(
                scale * self._map(x, batch, k.diagonal_spatial) + shift, batch, k.diagonal_spatial
            )

        nngp = go(k.nngp, 2, w2, b2)
        ntk = k.ntk
        if ntk is not None:
            if self.parameterization == "ntk":
                ntk = go(ntk, 2, w2, 0.0) + nngp
            else:
                fan_in = k.shape1[-1] * math.prod(self.filter_shape) / self.s[0]
                bias = 0.0 if self.b_std is None else 1.0
                ntk = go(ntk, 2, w2, 0.0) + go(k.nngp, 2, fan_in, bias)
        return with_shapes(
            k,
            self,
            nngp=nngp,
            ntk=ntk,
            cov1=go(k.cov1, b_cov1, w2, b2),
            cov2=go(k.cov2, b_cov1, w2, b2),
            is_gaussian=True,
            is_input=False,
            **map_masks(k, self._mask),
        )

    def _init_params(self, key: PRNGKeyArray, in_shape: tuple[int, ...], w_shape, b_shape):
        kw, kb = jax.random.split(key)
        dtype = jnp.result_type(float)
        W = jax.random.normal(kw, w_shape, dtype)
        b = None if self.b_std is None else jax.random.normal(kb, b_shape, dtype)
        if self.parameterization == "standard":
            fan_in = in_shape[-1] * math.prod(self.filter_shape)
            W = W * (self.W_std / jnp.sqrt(fan_in / self.s[0]))
            b = None if b is None else b * self.b_std
        return W, b


def _conv_init(owner, out_chan, filter_shape, strides, padding, W_std, b_std, parameterization, s):
    out_chan = check_int(owner, "out_chan", out_chan, minimum=1)
    filter_shape = check_window(owner, "filter_shape", filter_shape)
    strides = (
        (1,) * len(filter_shape)
        if strides is None
        else check_window(owner, "strides", strides, len(filter_shape))
    )
    padding = check_padding(owner, padding)
    W_std = hyperparameter(owner, "W_std", W_std, nonnegative=True)
    b_std = None if b_std is None else hyperparameter(owner, "b_std", b_std, nonnegative=True)
    parameterization, s = check_parameterization(owner, parameterization, s)
    return out_chan, filter_shape, strides, padding, W_std, b_std, parameterization, s


_CONV_ARGS = """

    **Arguments:**

    - `out_chan`: output channels of the finite twin (ignored by the 'ntk' kernel).
    - `filter_shape`: window per spatial axis, e.g. `(3, 3)`; any number of axes.
    - `strides`: per spatial axis; default 1.
    - `padding`: `'VALID'`, `'SAME'` (zeros) or `'CIRCULAR'` (wrap-around, SAME size).
    - `W_std`, `b_std`, `parameterization`, `s`: as for `Dense`.

    Inputs are batch first, channels last (see `kernelalg.kernel`'s `batch_axis`,
    `channel_axis`), so neural-tangents' `dimension_numbers` has no counterpart here.
    """


class Conv(AbstractConv):
    __doc__ = (
        "Convolution with weights shared across positions. neural-tangents: `stax.Conv`."
        + AbstractConv.__doc__.split("\n", 2)[2]
        + _CONV_ARGS
    )

    out_chan: int = eqx.field(static=True)
    filter_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    parameterization: str = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        out_chan: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        W_std: Real[ArrayLike, ""] = 1.0,
        b_std: Real[ArrayLike, ""] | None = None,
        *,
        parameterization: Literal["ntk", "standard"] = "ntk",
        s: tuple[int, int] = (1, 1),
    ):
        (
            self.out_chan,
            self.filter_shape,
            self.strides,
            self.padding,
            self.W_std,
            self.b_std,
            self.parameterization,
            self.s,
        ) = _conv_init("Conv", out_chan, filter_shape, strides, padding, W_std, b_std, parameterization, s)

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteConv":
        in_shape = check_spatial_input("Conv", in_shape, len(self.filter_shape))
        self.out_shape(in_shape)
        n_out = self.out_chan * self.s[1]
        W, b = self._init_params(key, in_shape, self.filter_shape + (in_shape[-1], n_out), (n_out,))
        return FiniteConv(
            W,
            b,
            self.W_std,
            self.b_std,
            self.strides,
            self.padding,
            self.parameterization,
            self.s[0],
            "shared",
        )


class ConvLocal(AbstractConv):
    __doc__ = (
        "Locally connected layer: a convolution whose weights (and biases) differ at "
        "every output position. Outputs at different positions are then uncorrelated, "
        "so the kernel is zero off the spatial diagonal; on it, it equals `Conv`'s "
        "(Novak et al. 2019: without pooling, CNN and LCN share their NNGP after "
        "`Flatten`). neural-tangents: `stax.ConvLocal`." + _CONV_ARGS
    )

    out_chan: int = eqx.field(static=True)
    filter_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    parameterization: str = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        out_chan: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        W_std: Real[ArrayLike, ""] = 1.0,
        b_std: Real[ArrayLike, ""] | None = None,
        *,
        parameterization: Literal["ntk", "standard"] = "ntk",
        s: tuple[int, int] = (1, 1),
    ):
        (
            self.out_chan,
            self.filter_shape,
            self.strides,
            self.padding,
            self.W_std,
            self.b_std,
            self.parameterization,
            self.s,
        ) = _conv_init(
            "ConvLocal", out_chan, filter_shape, strides, padding, W_std, b_std, parameterization, s
        )

    def _map(self, x, batch, diagonal):
        if x is None:
            return None
        if not diagonal:
            x = spatial_diagonal(x, batch)
        return conv_ops.apply_per_dimension(
            x,
            batch,
            True,
            conv_ops.conv_pair,
            conv_ops.conv_diagonal,
            list(zip(self.filter_shape, self.strides)),
            self.padding,
        )

    def _finalise(self, x, batch, diagonal):
        return x if diagonal else conv_ops.embed_diagonal(x, batch)

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteConv":
        in_shape = check_spatial_input("ConvLocal", in_shape, len(self.filter_shape))
        out = self.out_shape(in_shape)
        n_out = self.out_chan * self.s[1]
        w_shape = out[:-1] + (in_shape[-1] * math.prod(self.filter_shape), n_out)
        W, b = self._init_params(key, in_shape, w_shape, out)
        return FiniteConv(
            W,
            b,
            self.W_std,
            self.b_std,
            self.strides,
            self.padding,
            self.parameterization,
            self.s[0],
            "local",
            self.filter_shape,
        )


class ConvTranspose(AbstractConv):
    __doc__ = (
        "Transposed convolution (`lax.conv_transpose`): input position $p$ feeds outputs "
        "$s p + d$. Kernel: the pair of spatial axes is transposed-convolved with the "
        "diagonal filter $I_F/F$, see `kernelalg.ops.conv_transpose_pair`. "
        "neural-tangents: `stax.ConvTranspose`." + _CONV_ARGS
    )

    out_chan: int = eqx.field(static=True)
    filter_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    parameterization: str = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        out_chan: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        W_std: Real[ArrayLike, ""] = 1.0,
        b_std: Real[ArrayLike, ""] | None = None,
        *,
        parameterization: Literal["ntk", "standard"] = "ntk",
        s: tuple[int, int] = (1, 1),
    ):
        (
            self.out_chan,
            self.filter_shape,
            self.strides,
            self.padding,
            self.W_std,
            self.b_std,
            self.parameterization,
            self.s,
        ) = _conv_init(
            "ConvTranspose", out_chan, filter_shape, strides, padding, W_std, b_std, parameterization, s
        )

    def _spatial_out(self, size, window, stride):
        return conv_ops.transpose_out_size(
            size, window, stride, "SAME" if self.padding == "CIRCULAR" else self.padding
        )

    def _map(self, x, batch, diagonal):
        if x is None:
            return None
        return conv_ops.apply_per_dimension(
            x,
            batch,
            diagonal,
            conv_ops.conv_transpose_pair,
            conv_ops.conv_transpose_diagonal,
            list(zip(self.filter_shape, self.strides)),
            self.padding,
        )

    def _mask(self, m):
        for i, (f, st) in enumerate(zip(self.filter_shape, self.strides)):
            m = conv_ops.transpose_mask(m, 1 + i, f, st, self.padding)
        return m

    def init(self, key: PRNGKeyArray, in_shape: tuple[int, ...]) -> "FiniteConv":
        in_shape = check_spatial_input("ConvTranspose", in_shape, len(self.filter_shape))
        self.out_shape(in_shape)
        n_out = self.out_chan * self.s[1]
        W, b = self._init_params(key, in_shape, self.filter_shape + (in_shape[-1], n_out), (n_out,))
        return FiniteConv(
            W,
            b,
            self.W_std,
            self.b_std,
            self.strides,
            self.padding,
            self.parameterization,
            self.s[0],
            "transpose",
        )


class FiniteConv(AbstractFinite):
    """Finite twin of `Conv`, `ConvLocal` and `ConvTranspose` on one example
    `(*spatial, channels)`."""

    weight: Float[Array, "..."]
    bias: Float[Array, "..."] | None
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: str = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)
    s_in: int = eqx.field(static=True)
    kind: Literal["shared", "local", "transpose"] = eqx.field(static=True)
    filter_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)

    def __call__(self, x: Float[Array, "*spatial c"], *, key: PRNGKeyArray | None = None) -> Array:
        n = x.ndim - 1
        dn = _specs(n)
        hi = jax.lax.Precision.HIGHEST
        lhs = x[None]
        if self.kind == "transpose":
            filter_shape = self.weight.shape[:n]
            pad = "VALID" if self.padding == "CIRCULAR" else self.padding
            y = jax.lax.conv_transpose(
                lhs, self.weight, self.strides, pad, dimension_numbers=dn, precision=hi
            )
            if self.padding == "CIRCULAR":
                for k in range(n):
                    size = conv_ops.transpose_out_size(x.shape[k], filter_shape[k], self.strides[k], "SAME")
                    y = conv_ops.circular_fold(y, 1 + k, size)
            fan_in = x.shape[-1] * math.prod(filter_shape)
        else:
            filter_shape = self.weight.shape[:n] if self.kind == "shared" else self.filter_shape
            if self.padding == "CIRCULAR":
                widths = [(0, 0)]
                for k in range(n):
                    ((lo, hi_),) = jax.lax.padtype_to_pads(
                        (x.shape[k],), (filter_shape[k],), (self.strides[k],), "SAME"
                    )
                    widths.append((lo, hi_))
                lhs = jnp.pad(lhs, widths + [(0, 0)], mode="wrap")
            pad = "VALID" if self.padding == "CIRCULAR" else self.padding
            if self.kind == "shared":
                y = jax.lax.conv_general_dilated(
                    lhs, self.weight, self.strides, pad, dimension_numbers=dn, precision=hi
                )
            else:
                y = jax.lax.conv_general_dilated_local(
                    lhs, self.weight, self.strides, pad, filter_shape, dimension_numbers=dn, precision=hi
                )
            fan_in = x.shape[-1] * math.prod(filter_shape)
        y = y[0]
        if self.parameterization == "ntk":
            y = y * (jax.lax.stop_gradient(self.W_std) / jnp.sqrt(fan_in))
            if self.bias is not None:
                y = y + jax.lax.stop_gradient(self.b_std) * lift_channels(self.bias, y.ndim)
        else:
            y = y / jnp.sqrt(self.s_in)
            if self.bias is not None:
                y = y + lift_channels(self.bias, y.ndim)
        return y
