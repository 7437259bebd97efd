"""`kernelalg.batch` and the job API `kernelalg.compute`."""

import functools
import numbers
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int, PyTree

from .._inputs import canonicalize_inputs
from .._kernel import Kernel
from ..layers._base import AbstractLayer
from . import _store
from ._blocks import AbstractBlockFn, FnBlocks, LayerBlocks, Leaf, finish_tree, symmetric_ok
from ._engine import Grid, run_blocks
from ._fingerprint import hash_array, hash_tree


# ---------------------------------------------------------------------------------
# Argument checks (all before any kernel arithmetic)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _resolve_devices(devices: Any) -> list[jax.Device]:
    local = jax.local_devices()
    if devices is None:
        return local
    if isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        if devices < 1:
            raise ValueError(
                f"`devices={devices}`: at least one device is needed; pass None for all "
                f"{len(local)} local devices, or a count between 1 and {len(local)}."
            )
        if devices > len(local):
            raise ValueError(
                f"`devices={devices}` but this process has {len(local)} local devices "
                f"({local[0].platform}); pass a count between 1 and {len(local)}."
            )
        return local[: int(devices)]
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        devs = list(devices)
        if not devs:
            raise ValueError("`devices=[]`: at least one device is needed; pass None for all local devices.")
        bad = [d for d in devs if not isinstance(d, jax.Device) or d not in local]
        if bad:
            raise ValueError(f"`devices` must be local `jax.Device`s of this process; got {bad!r}.")
        return devs
    raise TypeError(f"`devices` must be None, an int or a list of `jax.Device`s; got {devices!r}.")


def _host_array(name: str, x: Any) -> np.ndarray:
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            f"`{name}` is traced (inside `jax.jit`/`vmap`?): blockwise kernels run block by block "
            "on concrete arrays and must not be jitted; call them outside of transformations."
        )
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"`{name}` must be a JAX or NumPy array; got {type(x).__name__}.")
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must have a non-empty batch axis; got shape {x.shape}.")
    return x


_KERNEL_DEFAULTS = dict(
    compute_ntk=True,
    diagonal_batch=True,
    diagonal_spatial=False,
    mask_constant=None,
    batch_axis=0,
    channel_axis=-1,
)


def _prepare(
    layer_or_fn: Any, x1: Any, x2: Any, options: dict[str, Any], extra: tuple, extra_kw: dict, owner: str
) -> tuple[AbstractBlockFn, np.ndarray, np.ndarray | None]:
    """The block function and the inputs on the host, batch first."""
    if isinstance(layer_or_fn, AbstractLayer):
        x1h, x2h = _host_array("x1", x1), None if x2 is None else _host_array("x2", x2)
        # The checks of `kernelalg.kernel`, on the whole inputs, before any block.
        canonicalize_inputs(
            x1h,
            x2h,
            batch_axis=options["batch_axis"],
            channel_axis=options["channel_axis"],
            mask_constant=options["mask_constant"],
        )
        for name, flag in [(k, options[k]) for k in ("compute_ntk", "diagonal_batch", "diagonal_spatial")]:
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}` must be a bool; got {flag!r}.")
        if not options["diagonal_batch"] and x2 is not None:
            raise ValueError(
                f"`{owner}` with `diagonal_batch=False` needs `x2=None`: the full covariance of `x1` "
                "with itself is then `nngp`. For `x1` against `x2`, compute with the default "
                "`diagonal_batch=True`, or the joint kernel of `concatenate([x1, x2])` with `x2=None`."
            )
        nd = x1h.ndim
        b, c = options["batch_axis"] % nd, options["channel_axis"] % nd
        x1h = np.moveaxis(x1h, (b, c), (0, -1))
        x2h = None if x2h is None else np.moveaxis(x2h, (b, c), (0, -1))
        fn = LayerBlocks(
            layer_or_fn,
            options["compute_ntk"],
            options["diagonal_batch"],
            options["diagonal_spatial"],
            options["mask_constant"],
        )
        return fn, x1h, x2h
    if not callable(layer_or_fn):
        raise TypeError(
            f"`{owner}` takes a kernelalg layer or a kernel function `kernel_fn(x1, x2, ...)`; "
            f"got {type(layer_or_fn).__name__}."
        )
    changed = [
        k for k, v in options.items() if v != _KERNEL_DEFAULTS[k] or type(v) is not type(_KERNEL_DEFAULTS[k])
    ]
    if changed:
        raise ValueError(
            f"`{owner}`: {', '.join(f'`{k}`' for k in changed)} apply to kernelalg layers; a kernel "
            "function takes its own options (bind them with `equinox.Partial`)."
        )
    x1h = _host_array("x1", x1)
    x2h = None if x2 is None else _host_array("x2", x2)
    if x2h is not None and x2h.shape[1:] != x1h.shape[1:]:
        raise ValueError(
            f"`x1` and `x2` must agree on every axis but the batch axis; got {x1h.shape} and {x2h.shape}."
        )
    return FnBlocks(layer_or_fn, tuple(extra), dict(extra_kw)), x1h, x2h


def _layout(fn: AbstractBlockFn, x1: np.ndarray, x2: np.ndarray | None, b1: int, b2: int):
    """`(structure, leaves, symmetric)` from the shapes of one block's outputs."""
    xa = jax.ShapeDtypeStruct((b1,) + x1.shape[1:], x1.dtype)
    xb = None if x2 is None else jax.ShapeDtypeStruct((b2,) + x2.shape[1:], x2.dtype)
    template = eqx.filter_eval_shape(fn, xa, xb)
    leaves = fn.leaves(template, b1, b1 if x2 is None else b2, x2 is None)
    if not leaves:
        raise ValueError("`kernel_fn` returned no arrays on a block; there is nothing to compute.")
    symmetric = x2 is None and symmetric_ok(leaves)
    if x2 is None and not symmetric:
        # Layout unknown: every block is computed, against rows of x1 as a second input.
        template = eqx.filter_eval_shape(fn, xa, xa)
        leaves = fn.leaves(template, b1, b1, False)
    return jax.tree_util.tree_structure(template), leaves, symmetric


def _with_aliases(arrays: dict[str, Any], leaves: Sequence[Leaf]) -> dict[str, Any]:
    out = dict(arrays)
    for l in leaves:
        if l.role == "alias":
            out[l.name] = out[l.source]
    return out


# ---------------------------------------------------------------------------------
# batch


class AbstractBatched(eqx.Module):
    """Shared by the functions `kernelalg.batch` returns."""

    batch_size: eqx.AbstractVar[int]
    device_count: eqx.AbstractVar[int]
    store_on_device: eqx.AbstractVar[bool]

    def _run(self, fn: AbstractBlockFn, x1: np.ndarray, x2: np.ndarray | None) -> PyTree:
        n1 = x1.shape[0]
        n2 = n1 if x2 is None else x2.shape[0]
        bs = self.batch_size or max(n1, n2)
        b1, b2 = min(bs, n1), min(bs, n2)
        structure, leaves, symmetric = _layout(fn, x1, x2, b1, b2)
        grid = Grid(n1, n2, b1, b2, symmetric)
        local = jax.local_devices()
        if self.device_count > len(local):
            raise ValueError(
                f"`batch(device_count={self.device_count})` but there are {len(local)} local devices; "
                f"pass -1 for all of them or a count up to {len(local)}."
            )
        devices = local if self.device_count < 0 else local[: max(self.device_count, 1)]
        # Blocks are assembled on the host when they are not to stay on the device, or
        # when they come from several devices (then one host copy replaces a gather).
        target = devices[0] if self.store_on_device else jax.devices("cpu")[0]
        out = _assemble_device(
            grid, leaves, run_blocks(fn, leaves, x1, x2, grid, grid.blocks(), devices, to_host=False), target
        )
        arrays = _with_aliases(out, leaves)
        tree = jax.tree_util.tree_unflatten(structure, [arrays[l.name] for l in leaves])
        return finish_tree(tree, n1, n2)


class BatchedKernel(AbstractBatched):
    """`kernelalg.kernel(layer, ...)` computed in blocks; made by `kernelalg.batch(layer,
    ...)`. Call with the arguments of `kernelalg.kernel` after the layer."""

    layer: AbstractLayer
    batch_size: int = eqx.field(static=True)
    device_count: int = eqx.field(static=True)
    store_on_device: bool = eqx.field(static=True)

    def __call__(
        self,
        x1: ArrayLike,
        x2: ArrayLike | None = None,
        *,
        compute_ntk: bool = True,
        diagonal_batch: bool = True,
        diagonal_spatial: bool = False,
        mask_constant: float | None = None,
        batch_axis: int = 0,
        channel_axis: int = -1,
    ) -> Kernel:
        options = dict(
            compute_ntk=compute_ntk,
            diagonal_batch=diagonal_batch,
            diagonal_spatial=diagonal_spatial,
            mask_constant=mask_constant,
            batch_axis=batch_axis,
            channel_axis=channel_axis,
        )
        fn, x1h, x2h = _prepare(self.layer, x1, x2, options, (), {}, "batch")
        return self._run(fn, x1h, x2h)


class BatchedKernelFn(AbstractBatched):
    """`kernel_fn(x1, x2, *args, **kwargs)` computed in blocks; made by
    `kernelalg.batch(kernel_fn, ...)`. Called exactly as `kernel_fn`."""

    kernel_fn: Callable
    batch_size: int = eqx.field(static=True)
    device_count: int = eqx.field(static=True)
    store_on_device: bool = eqx.field(static=True)

    # *args/**kwargs: the wrapped function's own signature (`get`, `params`, ...), as
    # in neural-tangents' `batch`; they are forwarded unchanged to every block.
    def __call__(self, x1: ArrayLike, x2: ArrayLike | None = None, *args: Any, **kwargs: Any) -> PyTree:
        if isinstance(x1, Kernel):
            raise TypeError(
                "`x1` is a Kernel: `batch` splits inputs, not kernels; pass the input arrays "
                "(neural-tangents' batching of `kernel_fn(Kernel)` is not supported)."
            )
        fn, x1h, x2h = _prepare(self.kernel_fn, x1, x2, dict(_KERNEL_DEFAULTS), args, kwargs, "batch")
        return self._run(fn, x1h, x2h)


def batch(
    kernel_fn: AbstractLayer | Callable,
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
) -> BatchedKernel | BatchedKernelFn:
    r"""A kernel computed in `batch_size` x `batch_size` blocks, spread over devices.

    The $N_1 \times N_2$ kernel is split into blocks of `batch_size` examples of `x1`
    and of `x2`; each block is one call of the kernel on those examples, and blocks
    run in steps of one block per device (`shard_map` over a mesh of local devices).
    Any $N$ works: the last blocks are padded with copies of an example and the
    padding is dropped. When `x2` is None only the blocks on and above the diagonal
    are computed; the others are their transposes (the zipped spatial axes
    `(h1, h2, ...)` swap too).

    Peak memory is the assembled output plus two steps of blocks (one computing,
    one being copied out), so it falls with `batch_size`
    (google/neural-tangents#89: NT's peak grew with batching).

    **Arguments:**

    - `kernel_fn`: a kernelalg layer (the result is called like `kernelalg.kernel`
      without the layer), or a function `kernel_fn(x1, x2, *args, **kwargs)` returning
      a `Kernel`, an array or a pytree of arrays of shape `(n1, n2, ...)`
      (`empirical_kernel_fn`, `monte_carlo_kernel_fn`, ...). Inputs are split along
      axis 0 (layers: along `batch_axis`).
    - `batch_size`: examples per block along each side; `0`: one block (the whole
      kernel, as neural-tangents). Larger than $N$: one block of $N$.
    - `device_count`: devices blocks run on: `-1` all local devices, `0` or `1` the
      first one, `n` the first `n`.
    - `store_on_device`: keep the result on the first device (`True`) or assemble it
      in host memory and return it on the CPU (`False`), for kernels larger than
      device memory.

    **Returns:** a `BatchedKernel` (for a layer) or `BatchedKernelFn`, called as the
    unbatched function and returning the same type. Not to be wrapped in `jax.jit`:
    running block by block is the point.

    neural-tangents: `nt.batch`, which needs $N_1$ divisible by
    `batch_size * device_count` and $N_2$ by `batch_size`, and
    `diagonal_batch=True`; here `diagonal_batch=False` is accepted with `x2=None`.
    """
    batch_size = _check_int("batch_size", batch_size, 0)
    device_count = _check_int("device_count", device_count, -1)
    if not isinstance(store_on_device, bool):
        raise TypeError(f"`store_on_device` must be a bool; got {store_on_device!r}.")
    if isinstance(kernel_fn, AbstractLayer):
        return BatchedKernel(kernel_fn, batch_size, device_count, store_on_device)
    if not callable(kernel_fn):
        raise TypeError(
            f"`kernel_fn` must be a kernelalg layer or a callable `kernel_fn(x1, x2, ...)`; got "
            f"{type(kernel_fn).__name__}."
        )
    return BatchedKernelFn(kernel_fn, batch_size, device_count, store_on_device)


@functools.partial(jax.jit, donate_argnums=0)
def _update_pair(full: Array, blk: Array, i0: Int[ArrayLike, ""], j0: Int[ArrayLike, ""]) -> Array:
    return jax.lax.dynamic_update_slice(full, blk, (i0, j0) + (0,) * (full.ndim - 2))


@functools.partial(jax.jit, donate_argnums=0)
def _update_row(full: Array, blk: Array, i0: Int[ArrayLike, ""]) -> Array:
    return jax.lax.dynamic_update_slice(full, blk, (i0,) + (0,) * (full.ndim - 1))


def _assemble_device(grid: Grid, leaves: Sequence[Leaf], blocks, device: jax.Device) -> dict[str, Array]:
    """Blocks written into preallocated arrays on `device` as they arrive (donated
    updates: the output exists once, not once per block plus once assembled)."""
    out = {
        l.name: jax.device_put(jnp.zeros(_store.full_shape(grid, l), l.dtype), device)
        for l in leaves
        if l.role != "alias"
    }
    by_name = {l.name: l for l in leaves}
    for blk in blocks:
        r, c = grid.row_slice(blk.i), grid.col_slice(blk.j)
        for name, a in blk.arrays.items():
            leaf = by_name[name]
            a = jax.device_put(a, device)
            if leaf.role == "pair":
                out[name] = _update_pair(out[name], a, r.start, c.start)
                if grid.symmetric and blk.i != blk.j:
                    t = jnp.transpose(a, (1, 0) + tuple(2 + p for p in leaf.perm))
                    out[name] = _update_pair(out[name], t, c.start, r.start)
            elif leaf.role == "row1":
                out[name] = _update_row(out[name], a, r.start)
            else:
                out[name] = _update_row(out[name], a, c.start)
    return out


# ---------------------------------------------------------------------------------
# compute


class ComputeResult(eqx.Module):
    """The outcome of `kernelalg.compute`: the assembled kernel arrays and what was done.

    **Fields:**

    - `arrays`: name -> array, e.g. `{"nngp": ..., "ntk": ..., "cov1": ...}` for a
      layer (the fields of its `Kernel`), `{"kernel": ...}` for a function returning
      one array, or names from the output pytree's paths (`"nngp"`, `"0"`, ...).
      With a `store` these are read-only memory maps of `store/NAME.npy`; without one,
      NumPy arrays in memory.
    - `structure`: the pytree structure of one call's output, which `value` rebuilds.
    - `names`: the names of the output's array leaves, in order.
    - `n1`, `n2`: examples in `x1` and `x2` (`n2 == n1` when `x2` is None).
    - `block_size`: examples per block along each side (after clamping to `n`).
    - `blocks_total`: blocks of the job (with `x2=None`, on and above the diagonal).
    - `blocks_computed`: blocks this call (this process) computed; the rest were in
      the store already or were computed by other processes.
    - `store`: the store directory, or None.
    """

    arrays: dict[str, np.ndarray]
    structure: Any = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    n1: int = eqx.field(static=True)
    n2: int = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    blocks_total: int = eqx.field(static=True)
    blocks_computed: int = eqx.field(static=True)
    store: str | None = eqx.field(static=True)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def value(self) -> PyTree[Array]:
        """The output as the kernel function returns it (a `Kernel` for a layer), with
        every array loaded into device memory as a JAX array."""
        tree = jax.tree_util.tree_unflatten(self.structure, [jnp.asarray(self.arrays[n]) for n in self.names])
        return finish_tree(tree, self.n1, self.n2)


def _parse_budget(memory_budget: Any) -> int | None:
    if memory_budget is None:
        return None
    return _check_int("memory_budget", memory_budget, 1)


def compute(
    layer_or_fn: AbstractLayer | Callable,
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    *,
    block_size: int | None = None,
    memory_budget: int | None = None,
    store: str | os.PathLike | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    progress: bool = True,
    compute_ntk: bool = True,
    diagonal_batch: bool = True,
    diagonal_spatial: bool = False,
    mask_constant: float | None = None,
    batch_axis: int = 0,
    channel_axis: int = -1,
    poll_interval: float = 0.5,
) -> ComputeResult:
    r"""A kernel job: the $N_1 \times N_2$ kernel in blocks, over devices and hosts,
    optionally resumable from a store on disk.

    The kernel is split into blocks of `block_size` examples of `x1` by `block_size`
    of `x2` (the last ones ragged: padded with copies of an example, padding
    dropped). With `x2=None` only blocks on and above the diagonal are computed and
    the lower triangle is their transpose (zipped spatial axes swapped). Blocks run
    one per local device per step (`shard_map` over a mesh of `devices`); with
    several processes (`jax.distributed.initialize`), process $p$ of $P$ takes the
    blocks whose index is $p \bmod P$, and all write to the same `store`.

    **The store.** A directory with `manifest.json` (the job's fingerprint: sha256
    of the inputs' bytes, shapes and dtypes, of the layer's structure and
    hyperparameters, the kernel options, the grid and the output arrays) and one
    `.npy` file per array per finished block, each written to a temporary file,
    fsynced and renamed. A job killed at any moment and restarted with the same call
    computes only the missing blocks, with the same programs on the same shapes, so
    the result is bit-identical. A store of another job raises an error; blocks of
    different jobs are never mixed. When all blocks are there, each array is
    assembled into `store/NAME.npy` and returned memory-mapped
    (`numpy.load(..., mmap_mode="r", allow_pickle=False)`; nothing is pickled).

    **Arguments:**

    - `layer_or_fn`: a kernelalg layer, or a kernel function `fn(x1, x2)` returning a
      `Kernel`, an array or a pytree of arrays of shape `(n1, n2, ...)`, such as
      `empirical_kernel_fn(...)` or `monte_carlo_kernel_fn(...)` with their arguments
      bound: `equinox.Partial(kernel_fn, get="ntk", params=params)` (its arrays are
      part of the fingerprint). Symmetry is used for layers and kernelalg's empirical
      and Monte Carlo functions, whose output layout is known; other functions
      compute every block.
    - `x1`, `x2`: inputs, split along axis 0 (layers: `batch_axis`); `x2=None`: `x1`
      with itself.
    - `block_size`: examples per block along each side. Larger than $N$: clamped to
      $N$ (one block along that side).
    - `memory_budget`: bytes one block may use on a device, instead of `block_size`
      (layers only): the block size is `plan_block_size(layer, ..., memory_budget)`.
    - `store`: a directory (created if missing) to write blocks to and resume from;
      None keeps everything in memory (one process only).
    - `devices`: None for all local devices, `n` for the first `n`, or a list of
      local `jax.Device`s.
    - `progress`: a tqdm progress bar on stderr (blocks done, ETA, blocks/s and
      kernel entries/s); `False` for scripts.
    - `compute_ntk`, `diagonal_batch`, `diagonal_spatial`, `mask_constant`,
      `batch_axis`, `channel_axis`: as in `kernelalg.kernel` (layers only).
      `diagonal_batch=False` needs `x2=None` (then `cov1` is `nngp`).
    - `poll_interval`: seconds between looks at the store while waiting for other
      processes' blocks.

    **Returns:** a `ComputeResult`; `result.value()` gives the `Kernel` (or the
    function's output type) in device memory, `result["nngp"]` one array.

    Errors in the arguments, the inputs, the layer or the store (another job's, not
    writable) are raised before any kernel is computed; a full disk during the job
    raises an `OSError` that names the store, leaving every finished block usable.
    """
    options = dict(
        compute_ntk=compute_ntk,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
        mask_constant=mask_constant,
        batch_axis=batch_axis,
        channel_axis=channel_axis,
    )
    if block_size is not None:
        block_size = _check_int("block_size", block_size, 1)
    budget = _parse_budget(memory_budget)
    if (block_size is None) == (budget is None):
        raise ValueError(
            "`compute` needs exactly one of `block_size` (examples per block) and `memory_budget` "
            f"(bytes per block); got block_size={block_size!r}, memory_budget={memory_budget!r}."
        )
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be a bool; got {progress!r}.")
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"`store` must be a directory path or None; got {type(store).__name__}.")
    devs = _resolve_devices(devices)
    n_proc, proc = jax.process_count(), jax.process_index()
    if n_proc > 1 and store is None:
        raise ValueError(
            f"`store=None` with {n_proc} processes: a multi-process job needs a `store` directory "
            "that every process can read and write."
        )
    fn, x1h, x2h = _prepare(layer_or_fn, x1, x2, options, (), {}, "compute")
    n1 = x1h.shape[0]
    n2 = n1 if x2h is None else x2h.shape[0]
    if block_size is None:
        if not isinstance(fn, LayerBlocks):
            raise ValueError(
                "`memory_budget` plans blocks from a layer's cost model; for a kernel function pass "
                "`block_size`."
            )
        from ._planner import plan_block_size

        block_size = plan_block_size(
            fn.layer,
            x1h.shape[1:],
            memory_budget=budget,
            dtype=x1h.dtype,
            compute_ntk=compute_ntk,
            diagonal_batch=diagonal_batch,
            diagonal_spatial=diagonal_spatial,
            n=max(n1, n2),
        )
    b1, b2 = min(block_size, n1), min(block_size, n2)
    structure, leaves, symmetric = _layout(fn, x1h, x2h, b1, b2)
    grid = Grid(n1, n2, b1, b2, symmetric)
    blocks = grid.blocks()
    mine = [blk for k, blk in enumerate(blocks) if k % n_proc == proc]

    st = None
    if store is not None:
        manifest = {
            "format": _store.FORMAT,
            "fingerprint": {
                "x1": hash_array(x1h),
                "x2": None if x2h is None else hash_array(x2h),
                "fn": hash_tree(fn),
                "options": {k: repr(v) for k, v in options.items()},
            },
            "grid": {"n1": n1, "n2": n2, "b1": b1, "b2": b2, "symmetric": symmetric},
            "arrays": [
                {
                    "name": l.name,
                    "role": l.role,
                    "tail": list(l.tail),
                    "dtype": l.dtype,
                    "perm": None if l.perm is None else list(l.perm),
                    "source": l.source,
                }
                for l in leaves
            ],
        }
        st = _store.Store(store, manifest, create=True)
        todo = [blk for blk in mine if not st.done(grid, leaves, *blk)]
        host = None
    else:
        todo = mine
        host = {l.name: np.empty(_store.full_shape(grid, l), l.dtype) for l in leaves if l.role != "alias"}

    by_name = {l.name: l for l in leaves}
    computed = 0
    with _progress(progress, len(mine), len(mine) - len(todo), proc, n_proc) as bar:
        t0, entries = time.perf_counter(), 0
        for blk in run_blocks(fn, leaves, x1h, x2h, grid, todo, devs, to_host=True):
            if st is not None:
                st.write_block(blk.i, blk.j, blk.arrays)
            else:
                _store.fill_block(host, grid, by_name, blk.i, blk.j, blk.arrays)
            computed += 1
            entries += grid.entries(blk.i, blk.j)
            bar.update(1)
            bar.set_postfix_str(
                f"{entries / max(time.perf_counter() - t0, 1e-9):.3g} entries/s", refresh=False
            )

    if st is not None:
        if n_proc > 1:
            _wait(lambda: all(st.done(grid, leaves, *blk) for blk in blocks), poll_interval)
        if proc == 0:
            st.assemble(grid, leaves)
        else:
            _wait(st.assembled, poll_interval)
        arrays = {l.name: st.load(l.name) for l in leaves if l.role != "alias"}
    else:
        arrays = host
    return ComputeResult(
        arrays=_with_aliases(arrays, leaves),
        structure=structure,
        names=tuple(l.name for l in leaves),
        n1=n1,
        n2=n2,
        block_size=max(b1, b2),
        blocks_total=len(blocks),
        blocks_computed=computed,
        store=None if store is None else str(store),
    )


def _wait(ready: Callable[[], bool], interval: float) -> None:
    # Other processes' blocks arrive through the shared store; `jax.distributed`
    # shuts every process down if one of them dies, so this does not wait forever.
    while not ready():
        time.sleep(interval)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass


def _progress(enabled: bool, total: int, initial: int, proc: int, n_proc: int):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    desc = "kernel blocks" if n_proc == 1 else f"kernel blocks (process {proc}/{n_proc})"
    return tqdm(total=total, initial=initial, desc=desc, unit="block", smoothing=0.1)
