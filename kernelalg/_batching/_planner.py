r"""Memory of one block of a layer's kernel, and the block size a budget allows.

**Cost model.** A block of $b$ examples against $b$ holds arrays of two kinds: *pair*
arrays, with one entry set per pair of examples (`nngp`, `ntk` and their
intermediates after each layer: $b^2 P_\ell$ entries for a layer whose kernel has
$P_\ell$ entries per pair), and *row* arrays, one set per example (inputs, `cov1`,
`cov2`: $b R_\ell$). $P_\ell$ is $1$ for fully connected layers, $|S_\ell|$ with
`diagonal_spatial` and $|S_\ell|^2$ otherwise, where $|S_\ell|$ is the number of
spatial positions at layer $\ell$: a pooled CNN on 32x32 images keeps $1024^2 \approx
10^6$ entries per pair of images after its first convolution, the hard case. The
model reads $P = \max_\ell P_\ell$ and $R = \max_\ell R_\ell$ off the layer's traced
kernel program (no compilation): every intermediate array is traced at $b = 2$ and
$b = 4$; those that grow 4x are pair arrays, the others row arrays. Then

$$\text{bytes}(b) \approx 4096 + s\,(c_P\, (P + 1)\, b^2 + c_R\, R\, b),\qquad c_P = 7,\ c_R = 4,$$

with $s$ the item size (4096 bytes for a program's small buffers). $c_P$ counts the
pair arrays alive at once at the peak: the incoming `nngp` and `ntk`, the outgoing
ones, and the temporaries of an elementwise dual or a convolution; the $+1$ is the
per-pair scalars every program has (the readout's `nngp`, `ntk`), which dominate fully
connected networks (measured: 12.4 pair entries per pair at $P = 1$, 5.7 to 6.9 per
entry for pooled CNNs, whose covariance convolution is one `reduce_window`). It is calibrated
against XLA's buffer assignment on CPU
(`jax.jit(...).lower(...).compile().memory_analysis()`: arguments, outputs and
temporaries of the compiled block program), which it bounds from above within a
factor of 2 for fully connected and pooled convolutional networks
(`tests/test_planner.py`). Other backends fuse differently; leave headroom there.
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..layers._base import AbstractLayer
from ._blocks import LayerBlocks


PAIR_COPIES = 7
ROW_COPIES = 4
# Small buffers of every program (hyperparameters, shape bookkeeping).
FIXED_BYTES = 4096


def _sizes(jaxpr: Any) -> list[int]:
    """Sizes of every intermediate array of a jaxpr, sub-jaxprs included, in order."""
    out = []
    for eqn in jaxpr.eqns:
        out += [math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _sizes(sub)
    return out


def layer_cost(
    layer: AbstractLayer,
    in_shape: tuple[int, ...],
    *,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
) -> tuple[int, int]:
    """`(P, R)`: entries per pair and per example of the largest pair and row arrays
    of the layer's kernel program on inputs of shape `in_shape` (one example)."""
    fn = LayerBlocks(layer, compute_ntk, diagonal_batch, diagonal_spatial, None)
    params, static = eqx.partition(fn, eqx.is_array)

    def trace(b: int) -> list[int]:
        x = jax.ShapeDtypeStruct((b,) + tuple(in_shape), jnp.float32)
        closed = jax.make_jaxpr(lambda p, a, c: eqx.combine(p, static)(a, c))(params, x, x)
        return _sizes(closed.jaxpr)

    small, large = trace(2), trace(4)
    if len(small) != len(large):
        # The program depends on the block size; count everything as pair arrays.
        return max(max(large) // 16, 1), 0
    pair = [l // 16 for s, l in zip(small, large) if l == 4 * s and l > 0]
    row = [l // 4 for s, l in zip(small, large) if l != 4 * s]
    return max(pair, default=1), max(row, default=0)


def estimate_block_memory(
    layer: AbstractLayer,
    in_shape: tuple[int, ...],
    block_size: int,
    *,
    dtype: Any = jnp.float32,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
) -> int:
    r"""Estimated peak bytes of one `block_size` x `block_size` block of `layer`'s
    kernel on one device: $4096 + s\,(7\, (P + 1)\, b^2 + 4\, R\, b)$ bytes (see
    `kernelalg.plan_block_size` for $P$, $R$ and the constants).

    **Arguments:**

    - `layer`: a kernelalg layer.
    - `in_shape`: the shape of one input example, channels last (e.g. `(32, 32, 3)`).
    - `block_size`: $b$, examples per block along each side.
    - `dtype`: the inputs' dtype (the kernel's: float32 or float64).
    - `compute_ntk`, `diagonal_batch`, `diagonal_spatial`: as in `kernelalg.kernel`.
    """
    pair, row = layer_cost(
        layer,
        tuple(in_shape),
        compute_ntk=compute_ntk,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
    )
    s = np.dtype(dtype).itemsize
    return FIXED_BYTES + s * (PAIR_COPIES * (pair + 1) * block_size**2 + ROW_COPIES * row * block_size)


def plan_block_size(
    layer: AbstractLayer,
    in_shape: tuple[int, ...],
    *,
    memory_budget: int,
    dtype: Any = jnp.float32,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
    n: int | None = None,
) -> int:
    r"""The largest block size whose estimated peak memory fits `memory_budget` bytes.

    Solves $4096 + s\,(c_P (P + 1) b^2 + c_R R b) \le$ `memory_budget` for the largest integer
    $b$, with $P$ and $R$ the entries per pair of examples and per example of the
    largest arrays of the layer's kernel program, $c_P = 7$ and $c_R = 4$:

    - $P$ is $1$ for fully connected networks, and up to $|S|^2$ for convolutional
      networks that keep full spatial covariances (pooling, attention): $4096$ for
      8x8 images, $10^6$ for 32x32 ones, where a 16 GB budget allows blocks of about
      $\sqrt{16 \cdot 10^9 / (4 \cdot 7 \cdot 10^6)} \approx 23$ float32 examples;
    - $c_P$ counts the pair arrays alive together at the peak (input and output
      `nngp`/`ntk` of a layer and its temporaries); it was calibrated against XLA's
      memory analysis of the compiled block program on CPU, which the estimate
      bounds from above within a factor of 2.

    The budget is per device (each device holds one block at a time); the assembled
    kernel lives on the host (`compute`) and is not counted.

    **Arguments:**

    - `layer`, `in_shape`, `dtype`, `compute_ntk`, `diagonal_batch`,
      `diagonal_spatial`: as in `estimate_block_memory`.
    - `memory_budget`: bytes one block may use.
    - `n`: the number of examples; the block size is at most `n`.

    **Returns:** the block size, at least 1. Raises `ValueError` (naming
    `memory_budget` and what one example pair needs) if not even one fits.
    """
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"`memory_budget` must be a positive number of bytes; got {memory_budget!r}.")
    pair, row = layer_cost(
        layer,
        tuple(in_shape),
        compute_ntk=compute_ntk,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
    )
    s = np.dtype(dtype).itemsize
    a, c, budget = s * PAIR_COPIES * (pair + 1), s * ROW_COPIES * row, memory_budget - FIXED_BYTES
    b = int((-c + math.sqrt(c * c + 4 * a * max(budget, 0))) / (2 * a))
    while b > 1 and a * b * b + c * b > budget:  # float rounding of the root
        b -= 1
    if a + c > budget:
        raise ValueError(
            f"`memory_budget={memory_budget}` bytes is too small: one pair of examples of this layer "
            f"needs about {a + c + FIXED_BYTES} bytes ({pair} kernel entries per pair at the largest layer, "
            f"{np.dtype(dtype).name}). Raise the budget, or use `diagonal_spatial=True` if the "
            "network allows it."
        )
    return max(1, b if n is None else min(b, n))
