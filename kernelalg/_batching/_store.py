"""The on-disk store of a kernel job: a manifest and one `.npy` file per array per block.

```
store/
  manifest.json          what the job is (fingerprints, grid, arrays); written once
  blocks/nngp.3.5.npy    block (3, 5) of `nngp`, one file per array per block
  nngp.npy               the assembled array, written when every block is there
```

Every file is written to a temporary name in the same directory, flushed, fsynced
and renamed over its final name (`os.replace`, atomic on POSIX), and the directory is
fsynced, so a file that exists under its final name is complete: a job killed at any
moment leaves finished blocks and at most some temporary files, which are ignored and
overwritten. A block is finished when all its files exist. Files are read with
`numpy.load(..., mmap_mode="r", allow_pickle=False)`; nothing is pickled.
"""

import errno
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._blocks import Leaf
from ._engine import Grid


FORMAT = "kernelalg.compute/1"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write) -> None:
    """Atomically create `path` with `write(file_object)`: temp file, fsync, rename.

    The single place where the store writes (tests replace it to simulate a full disk).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _write_array(path: Path, a: np.ndarray) -> None:
    write_file(path, lambda f: np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False))


def _describe_oserror(e: OSError, path: Path, store: Path) -> OSError:
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied (is the directory read-only?)",
        errno.EPERM: "permission denied (is the directory read-only?)",
        errno.EROFS: "the file system is read-only",
    }.get(e.errno, e.strerror or str(e))
    return type(e)(
        e.errno,
        f"`store`: cannot write {path.name} in {store}: {what}. Blocks finished so far are "
        "kept and no file was left half-written; fix this and rerun the same call to resume.",
    )


def _mismatch(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class Store:
    """A store directory opened for one job (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], *, create: bool):
        self.path = Path(path)
        self.blocks = self.path / "blocks"
        manifest_path = self.path / "manifest.json"
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"`store={str(path)!r}` is a file; pass a directory (it is created if missing).")
        if manifest_path.is_file():
            with open(manifest_path) as f:
                try:
                    old = json.load(f)
                except json.JSONDecodeError:
                    raise ValueError(
                        f"`store={str(path)!r}`: manifest.json is not valid JSON; this is not a "
                        "kernelalg store. Use another directory."
                    ) from None
            self._check(old, manifest, path)
        elif self.path.is_dir() and any(
            # A job killed before its manifest was renamed into place leaves `blocks/`
            # and a temporary file; that is still an empty store.
            p.name != "blocks" and not (p.name.startswith(".") and p.name.endswith(".tmp"))
            for p in self.path.iterdir()
        ):
            raise ValueError(
                f"`store={str(path)!r}` is a non-empty directory without a kernelalg manifest; "
                "use an empty or new directory so that nothing of yours is overwritten."
            )
        elif not create:
            raise ValueError(f"`store={str(path)!r}` holds no kernelalg job (no manifest.json).")
        try:
            self.blocks.mkdir(parents=True, exist_ok=True)
            # Probe before any work: a read-only or full store fails here, not after an
            # hour of computing.
            probe = self.blocks / f".probe-{os.getpid()}"
            write_file(probe, lambda f: f.write(b"kernelalg"))
            probe.unlink()
            if not manifest_path.is_file():
                # Every process of a multi-host job writes the same bytes; the rename
                # makes the last one win harmlessly.
                text = json.dumps(manifest, indent=1, sort_keys=True).encode()
                write_file(manifest_path, lambda f: f.write(text))
        except OSError as e:
            raise _describe_oserror(e, manifest_path, self.path) from e
        self.manifest = manifest

    @staticmethod
    def _check(old: dict, new: dict, path) -> None:
        if old.get("format") != FORMAT:
            raise ValueError(
                f"`store={str(path)!r}` was written by another tool or version "
                f"(format {old.get('format')!r}, expected {FORMAT!r}); use another directory."
            )
        labels = {
            "x1": "`x1` (its values, shape or dtype)",
            "x2": "`x2` (its values, shape or dtype)",
            "fn": "the layer or kernel function (its structure or hyperparameters)",
            "options": "the kernel options",
        }
        diff = [labels.get(k, k) for k in _mismatch(old.get("fingerprint", {}), new["fingerprint"])]
        if old.get("grid") != new["grid"]:
            diff.append(f"the block grid (stored {old.get('grid')}, requested {new['grid']})")
        if old.get("arrays") != new["arrays"]:
            diff.append("the output arrays (their shapes or dtypes)")
        if diff:
            raise ValueError(
                f"`store={str(path)!r}` holds a different job: it differs in "
                + "; ".join(diff)
                + ". Blocks of different jobs are never mixed: pass another `store` directory, "
                "or delete this one to start over."
            )

    def block_path(self, name: str, i: int, j: int) -> Path:
        return self.blocks / f"{name}.{i}.{j}.npy"

    def done(self, grid: Grid, leaves: Sequence[Leaf], i: int, j: int) -> bool:
        return all(self.block_path(n, i, j).is_file() for n in grid.names(leaves, i, j))

    def write_block(self, i: int, j: int, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            path = self.block_path(name, i, j)
            try:
                _write_array(path, a)
            except OSError as e:
                raise _describe_oserror(e, path, self.path) from e

    def read_block(self, name: str, i: int, j: int) -> np.ndarray:
        return np.load(self.block_path(name, i, j), mmap_mode="r", allow_pickle=False)

    def result_path(self, name: str) -> Path:
        return self.path / f"{name}.npy"

    def assemble(self, grid: Grid, leaves: Sequence[Leaf]) -> None:
        """Write the assembled arrays `name.npy` from the blocks, memory-mapped (no array
        is held in memory whole), each atomically."""
        todo = [l for l in leaves if l.role != "alias" and not self.result_path(l.name).is_file()]
        if not todo:
            return
        tmps = {l.name: self.path / f".{l.name}.npy.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp" for l in todo}
        try:
            out = {
                l.name: np.lib.format.open_memmap(
                    tmps[l.name], mode="w+", dtype=l.dtype, shape=full_shape(grid, l)
                )
                for l in todo
            }
            by_name = {l.name: l for l in todo}
            for i, j in grid.blocks():
                names = [n for n in grid.names(leaves, i, j) if n in by_name]
                fill_block(out, grid, by_name, i, j, {n: self.read_block(n, i, j) for n in names})
            for a in out.values():
                a.flush()
            # The maps are closed before the files are fsynced and renamed.
            del out, a
            for name, tmp in tmps.items():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.result_path(name))
            _fsync_dir(self.path)
        except OSError as e:
            raise _describe_oserror(e, self.path / f"{todo[0].name}.npy", self.path) from e
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)

    def assembled(self) -> bool:
        return all(
            self.result_path(l["name"]).is_file() for l in self.manifest["arrays"] if l["role"] != "alias"
        )

    def load(self, name: str) -> np.ndarray:
        return np.load(self.result_path(name), mmap_mode="r", allow_pickle=False)


def full_shape(grid: Grid, leaf: Leaf) -> tuple[int, ...]:
    if leaf.role == "pair":
        return (grid.n1, grid.n2) + leaf.tail
    if leaf.role == "row1":
        return (grid.n1,) + leaf.tail
    return (grid.n2,) + leaf.tail


def fill_block(out: dict, grid: Grid, leaves: dict[str, Leaf], i: int, j: int, arrays: dict) -> None:
    """Copy block (i, j)'s `arrays` into the assembled arrays `out` (NumPy or memmaps);
    in a symmetric job a block off the diagonal also fills its transposed place."""
    r, c = grid.row_slice(i), grid.col_slice(j)
    for name, blk in arrays.items():
        leaf = leaves[name]
        if leaf.role == "pair":
            out[name][r, c] = blk
            if grid.symmetric and i != j:
                out[name][c, r] = np.transpose(blk, (1, 0) + tuple(2 + p for p in leaf.perm))
        elif leaf.role == "row1":
            out[name][r] = blk
        else:
            out[name][c] = blk
