r"""Hypothesis strategies: inputs, nonlinearities, fully connected architectures, kernels.

Arrays come from `jax.random` with a drawn seed rather than from `hypothesis.extra.numpy`:
shrinking over thousands of float entries is slow and says nothing about a kernel, and
Gaussian inputs are what the maths assumes anyway. Hyperparameters are drawn from
ranges where every kernel is finite and well scaled after a few layers (pre-activation
variances of order one), so that the properties tested are about algebra, not overflow.
"""

import contextlib
import math
import random
import typing
from collections.abc import Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
from hypothesis import strategies as st
from jaxtyping import Array

from .. import layers as kl
from .._entry import kernel as _kernel
from .._kernel import Kernel


# beartype, when installed over kernelalg through jaxtyping's import hook, samples
# container items with the global `random` module, and hypothesis rejects strategies that
# advance it (they would not replay). So the composite strategies opt out of the hook
# (`typing.no_type_check`, which jaxtyping honours), and calls into kernelalg from a
# strategy restore the state afterwards. Nothing here needs that randomness.


@contextlib.contextmanager
def _keep_global_random_state() -> Iterator[None]:
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _construct(fn, *args):
    with _keep_global_random_state():
        return fn(*args)


def _as_strategy(value: Any) -> st.SearchStrategy:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for `jax.random.key`."""
    return st.integers(0, 2**31 - 1)


def _key(seed: int):
    # The 'rbg' generator: threefry is slow to compile on CPU, once per array shape,
    # and drawn shapes vary from example to example.
    return jax.random.key(seed, impl="rbg")


@st.composite
@typing.no_type_check
def inputs(
    draw,
    *,
    batch_size: int | st.SearchStrategy[int] = st.integers(1, 4),
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] = st.integers(1, 4).map(lambda d: (d,)),
    dtype: Any = None,
    scale: float = 1.0,
) -> Array:
    r"""Inputs `(batch_size, *shape)` with i.i.d. $\mathcal N(0, \text{scale}^2)$ entries.

    **Arguments:**

    - `batch_size`: the number of examples, or a strategy for it.
    - `shape`: the shape of one example (channels last), or a strategy for it; draw
      it once with `hypothesis.strategies.shared` to get `x1`, `x2` that agree.
    - `dtype`: a floating dtype; `None` is JAX's default float (float64 under
      `jax_enable_x64`).
    - `scale`: standard deviation of the entries.
    """
    n = draw(_as_strategy(batch_size))
    s = tuple(draw(_as_strategy(shape)))
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    x = jax.random.normal(_key(draw(seeds())), (n,) + s, dtype)
    return x if scale == 1.0 else x * jnp.asarray(scale, dtype)


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
@typing.no_type_check
def _polynomial(draw) -> kl.Polynomial:
    return _construct(kl.Polynomial, draw(st.lists(_floats(-1.0, 1.0), min_size=1, max_size=4)))


def _builds(cls, *args: st.SearchStrategy) -> st.SearchStrategy:
    def build(*values):
        return _construct(cls, *values)

    # Named after the class, so that hypothesis reports `Erf(1.0, 0.5, 0.0)`.
    build.__name__ = build.__qualname__ = cls.__name__
    return st.builds(build, *args)


def nonlinearities() -> st.SearchStrategy[kl.AbstractElementwise]:
    r"""Every elementwise layer with a closed-form dual, with random arguments.

    Ranges keep duals finite and of order one for pre-activation variances of order
    one: `Gaussian(a, b)` has $b \in [-0.5, -0.05]$ (its dual diverges at
    $b \ge 1/(4v)$), `Exp(a, b)` has $|b| \le 0.5$, monomials have degree at most 3.
    `Hermite` is left out: its kernel assumes unit-variance pre-activations.
    """
    ab = _floats(-1.5, 1.5)
    amp = _floats(0.5, 1.5)
    return st.one_of(
        st.just(kl.Relu()),
        _builds(kl.ABRelu, ab, ab),
        _builds(kl.LeakyRelu, _floats(-0.5, 0.5)),
        st.just(kl.Abs()),
        _builds(kl.Erf, amp, amp, _floats(-0.5, 0.5)),
        st.just(kl.Gelu()),
        _builds(kl.Sin, amp, amp, _floats(-math.pi, math.pi)),
        _builds(kl.Cos, amp, amp, _floats(-math.pi, math.pi)),
        _builds(kl.Rbf, _floats(0.1, 1.0)),
        _builds(kl.Exp, amp, _floats(-0.5, 0.5)),
        _builds(kl.Gaussian, amp, _floats(-0.5, -0.05)),
        _builds(kl.Monomial, st.integers(0, 3)),
        _builds(kl.RectifiedMonomial, st.integers(0, 3)),
        _polynomial(),
        st.just(kl.Sign()),
        st.just(kl.Gabor()),
    )


_S = ((1, 1), (2, 1), (1, 2))


def _residual(first: kl.Dense, act: kl.AbstractElementwise, last: kl.Dense) -> kl.FanInSum:
    return kl.FanInSum(kl.Identity(), kl.Serial(first, act, last))


def _fan_in(cls, branches: list[list[kl.AbstractLayer]]) -> kl.AbstractFanIn:
    return cls(*(kl.Serial(*b) for b in branches))


@st.composite
@typing.no_type_check
def _dense(
    draw, out_dim: int, *, parameterization: Literal["ntk", "standard"] | None, bias: bool, allow_s: bool
):
    if parameterization is None:
        parameterization = draw(st.sampled_from(("ntk", "standard")))
    b_std = draw(st.one_of(st.none(), _floats(0.0, 0.5))) if bias else None
    s = draw(st.sampled_from(_S)) if allow_s and parameterization == "standard" else (1, 1)
    W_std = draw(_floats(0.5, 1.5))
    layer = _construct(lambda: kl.Dense(out_dim, W_std, b_std, parameterization=parameterization, s=s))
    return layer, out_dim * s[1]


@st.composite
@typing.no_type_check
def fc_architectures(
    draw,
    *,
    max_blocks: int = 3,
    widths: st.SearchStrategy[int] = st.integers(1, 4),
    out_dim: int | st.SearchStrategy[int] = st.integers(1, 3),
    nonlinearity: st.SearchStrategy[kl.AbstractElementwise] | None = None,
    parameterization: Literal["ntk", "standard"] | None = None,
    bias: bool = True,
    branches: bool = True,
) -> kl.Serial:
    r"""Random fully connected networks: `Serial(block, ..., Dense(out_dim))`.

    Up to `max_blocks` blocks, each one of

    - `Dense(width)` (`parameterization`, or either if `None`; `s` drawn for
      'standard'; a bias or not if `bias`);
    - a nonlinearity from `nonlinearity` (default `nonlinearities()`), only where the
      kernel is Gaussian, i.e. right after an affine layer;
    - a residual block `FanInSum(Identity(), Serial(Dense(w), φ, Dense(n)))` with `n`
      the current width;
    - `FanInProd(Serial(Dense(w), φ?), Serial(Dense(w), φ?))` or
      `FanInConcat(Serial(Dense(w1), φ?), Serial(Dense(w2), φ?))` (with `branches`);

    and a final `Dense(out_dim)`, so that the output is Gaussian. Widths are those of
    the finite twins (small: the kernels do not depend on them, except through the
    'standard' parameterization's NTK).
    """
    act = nonlinearities() if nonlinearity is None else nonlinearity

    def dense(width, allow_s=True):
        return draw(_dense(width, parameterization=parameterization, bias=bias, allow_s=allow_s))

    def maybe_act(layers):
        if draw(st.booleans()):
            layers.append(draw(act))
        return layers

    kinds = ["dense", "act", "residual"] + (["prod", "concat"] if branches else [])
    layers = []
    width = None  # channels of the current output; None: the inputs'
    gaussian = False
    for _ in range(draw(st.integers(0, max_blocks))):
        kind = draw(st.sampled_from(kinds))
        if kind == "act" and not gaussian:
            kind = "dense"
        if kind == "dense":
            layer, width = dense(draw(widths))
            gaussian = True
        elif kind == "act":
            layer, gaussian = draw(act), False
        elif kind == "residual":
            if width is None:
                # An identity branch on raw inputs needs their width: start with a Dense.
                layer, width = dense(draw(widths))
                layers.append(layer)
                gaussian = True
            first, _ = dense(draw(widths))
            last, _ = dense(width, allow_s=False)
            layer = _construct(_residual, first, draw(act), last)
        elif kind == "prod":
            w = draw(widths)
            branch = [maybe_act([dense(w, allow_s=False)[0]]) for _ in range(2)]
            layer = _construct(_fan_in, kl.FanInProd, branch)
            width, gaussian = w, False
        else:
            parts = [dense(draw(widths)) for _ in range(2)]
            layer = _construct(_fan_in, kl.FanInConcat, [maybe_act([d]) for d, _ in parts])
            width, gaussian = sum(w for _, w in parts), False
        layers.append(layer)
    layers.append(dense(draw(_as_strategy(out_dim)), allow_s=False)[0])
    return _construct(kl.Serial, *layers)


@st.composite
@typing.no_type_check
def kernels(
    draw,
    *,
    architectures: st.SearchStrategy[kl.AbstractLayer] | None = None,
    features: int | st.SearchStrategy[int] = st.integers(1, 4),
    batch_size: int | st.SearchStrategy[int] = st.integers(1, 4),
    dtype: Any = None,
    same_inputs: bool | None = None,
    compute_ntk: bool = True,
    diagonal_batch: bool | None = None,
) -> Kernel:
    """A `Kernel` from `kernelalg.kernel` of a drawn architecture on drawn inputs.

    **Arguments:**

    - `architectures`: strategy for the network (default `fc_architectures()`).
    - `features`, `batch_size`: input width and batch sizes, or strategies for them.
    - `dtype`: dtype of the inputs (`None`: JAX's default float).
    - `same_inputs`: `x2=None` (`True`), a second batch (`False`), or drawn (`None`).
    - `compute_ntk`: passed to `kernelalg.kernel`.
    - `diagonal_batch`: passed to `kernelalg.kernel`; drawn if `None`.
    """
    net = draw(fc_architectures() if architectures is None else architectures)
    shape = (draw(_as_strategy(features)),)
    x1 = draw(inputs(batch_size=batch_size, shape=shape, dtype=dtype))
    same = draw(st.booleans()) if same_inputs is None else same_inputs
    x2 = None if same else draw(inputs(batch_size=batch_size, shape=shape, dtype=dtype))
    flag = draw(st.booleans()) if diagonal_batch is None else diagonal_batch
    return _construct(lambda: _kernel(net, x1, x2, compute_ntk=compute_ntk, diagonal_batch=flag))
