"""Blocks of the N1 x N2 kernel, computed over a mesh of local devices.

Every block has the same shape: the last row and column blocks are padded with
copies of their last example (so that one program serves all blocks; the padded
outputs are dropped), and a step of `D` devices that has fewer than `D` blocks left
repeats its last one. Each device runs the unsharded block program on its own block
(`shard_map` over a one-axis mesh), so a sharded job computes what a blockwise one
does.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._blocks import AbstractBlockFn, Leaf, leaf_name


_AXIS = "blocks"


@dataclasses.dataclass(frozen=True)
class Grid:
    """Rows `0..n1` of `x1` and `0..n2` of `x2` in blocks of `b1` and `b2`; with
    `symmetric` (x2 is x1), only blocks `(i, j)` with `i <= j` are computed."""

    n1: int
    n2: int
    b1: int
    b2: int
    symmetric: bool

    @property
    def rows(self) -> int:
        return -(-self.n1 // self.b1)

    @property
    def cols(self) -> int:
        return -(-self.n2 // self.b2)

    def blocks(self) -> list[tuple[int, int]]:
        if self.symmetric:
            return [(i, j) for i in range(self.rows) for j in range(i, self.cols)]
        return [(i, j) for i in range(self.rows) for j in range(self.cols)]

    def row_slice(self, i: int) -> slice:
        return slice(i * self.b1, min((i + 1) * self.b1, self.n1))

    def col_slice(self, j: int) -> slice:
        return slice(j * self.b2, min((j + 1) * self.b2, self.n2))

    def row1_source(self, i: int, j: int) -> bool:
        """Whether block (i, j) supplies the per-row arrays of row block i."""
        return j == (i if self.symmetric else 0)

    def row2_source(self, i: int, j: int) -> bool:
        return i == 0 and not self.symmetric

    def names(self, leaves: Sequence[Leaf], i: int, j: int) -> list[str]:
        """Names of the arrays block (i, j) stores."""
        out = []
        for l in leaves:
            if (
                l.role == "pair"
                or (l.role == "row1" and self.row1_source(i, j))
                or (l.role == "row2" and self.row2_source(i, j))
            ):
                out.append(l.name)
        return out

    def entries(self, i: int, j: int) -> int:
        r, c = self.row_slice(i), self.col_slice(j)
        return (r.stop - r.start) * (c.stop - c.start) * (1 if i == j or not self.symmetric else 2)


def _padded_rows(x: np.ndarray, start: int, size: int) -> np.ndarray:
    idx = np.minimum(np.arange(start, start + size), x.shape[0] - 1)
    return x[idx]


@eqx.filter_jit
def _step(fn: AbstractBlockFn, mesh: Mesh, xa, xb):
    params, static = eqx.partition(fn, eqx.is_array)

    def one(p, a, b):
        out = eqx.combine(p, static)(a[0], None if b is None else b[0])
        return jax.tree_util.tree_map(lambda v: v[None], out)

    if xb is None:
        body = lambda p, a: one(p, a, None)
        args, specs = (params, xa), (P(), P(_AXIS))
    else:
        body, args, specs = one, (params, xa, xb), (P(), P(_AXIS), P(_AXIS))
    # check_vma=False: the body holds no collectives; nothing to check.
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(_AXIS), check_vma=False)(*args)


@dataclasses.dataclass(frozen=True)
class BlockOut:
    """Outputs of one block, trimmed to its real rows: one array per leaf it stores
    (host NumPy arrays, or device arrays)."""

    i: int
    j: int
    arrays: dict[str, object]


def run_blocks(
    fn: AbstractBlockFn,
    leaves: Sequence[Leaf],
    x1: np.ndarray,
    x2: np.ndarray | None,
    grid: Grid,
    todo: Sequence[tuple[int, int]],
    devices: Sequence[jax.Device],
    *,
    to_host: bool,
) -> Iterator[BlockOut]:
    """Compute the blocks `todo`, yielding them as they finish (in order).

    One step is in flight while the previous one is handed out, so that writing
    blocks to disk overlaps with computing the next ones.
    """
    xb_all = x1 if x2 is None else x2
    if not fn.traceable:
        for i, j in todo:
            sym = grid.symmetric and i == j
            xa = _padded_rows(x1, i * grid.b1, grid.b1)
            xb = None if sym else _padded_rows(xb_all, j * grid.b2, grid.b2)
            yield _trim(leaves, grid, i, j, _named(fn(xa, xb)), to_host)
        return
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, P(_AXIS))
    d = len(devices)
    # Diagonal blocks of a symmetric job run the x-with-itself program (x2=None), as a
    # single call does; they go in steps of their own.
    diag = [b for b in todo if grid.symmetric and b[0] == b[1]]
    rest = [b for b in todo if not (grid.symmetric and b[0] == b[1])]
    steps = [(diag[s : s + d], True) for s in range(0, len(diag), d)]
    steps += [(rest[s : s + d], False) for s in range(0, len(rest), d)]

    def launch(blocks: list[tuple[int, int]], sym: bool):
        full = blocks + [blocks[-1]] * (d - len(blocks))
        xa = np.stack([_padded_rows(x1, i * grid.b1, grid.b1) for i, _ in full])
        xa = jax.device_put(xa, sharding)
        xb = None
        if not sym:
            xb = np.stack([_padded_rows(xb_all, j * grid.b2, grid.b2) for _, j in full])
            xb = jax.device_put(xb, sharding)
        return blocks, _named(_step(fn, mesh, xa, xb))

    def hand_out(blocks, outs):
        if to_host:
            per_leaf = {n: np.asarray(a) for n, a in outs.items()}
        else:
            # Each device's block stays on that device; the caller moves it.
            per_leaf = {
                n: [s.data[0] for s in sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)]
                for n, a in outs.items()
            }
        for k, (i, j) in enumerate(blocks):
            yield _trim(leaves, grid, i, j, {n: a[k] for n, a in per_leaf.items()}, to_host)

    pending = None
    for blocks, sym in steps:
        launched = launch(blocks, sym)
        if pending is not None:
            yield from hand_out(*pending)
        pending = launched
    if pending is not None:
        yield from hand_out(*pending)


def _named(tree) -> dict[str, object]:
    return {leaf_name(p): a for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _trim(leaves: Sequence[Leaf], grid: Grid, i: int, j: int, outs: dict, to_host: bool) -> BlockOut:
    r = grid.row_slice(i).stop - grid.row_slice(i).start
    c = grid.col_slice(j).stop - grid.col_slice(j).start
    arrays = {}
    for leaf in leaves:
        if leaf.name not in grid.names(leaves, i, j):
            continue
        if leaf.name not in outs:
            raise ValueError(
                f"`kernel_fn` returned no `{leaf.name}` on block ({i}, {j}) but did on another; "
                "its outputs must have one structure for every block."
            )
        a = outs[leaf.name]
        if leaf.role == "pair":
            a = a[:r, :c]
        elif leaf.role == "row1":
            a = a[:r]
        else:
            a = a[:c]
        arrays[leaf.name] = np.asarray(a) if to_host else a
    return BlockOut(i, j, arrays)
