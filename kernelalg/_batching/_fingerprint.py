"""Content hashes that tell whether a store was made by the same job."""

import hashlib
import re
import types
from typing import Any

import jax
import numpy as np


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def hash_array(x: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    # Hashed through a byte view in chunks: `tobytes()` would copy a 1 GB input.
    flat = a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)
    step = 1 << 26
    for start in range(0, flat.size, step):
        h.update(memoryview(flat[start : start + step]))
    return h.hexdigest()


def _hash_callable(f: Any, h: "hashlib._Hash", depth: int) -> None:
    h.update(f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__name__)}|".encode())
    code = getattr(f, "__code__", None)
    if isinstance(code, types.CodeType):
        h.update(code.co_code)
        h.update(_ADDRESS.sub("", repr(code.co_consts)).encode())
    # Values a closure captured change what it computes; arrays and scalars among them
    # are hashed (a closure over a network's parameters is a different job when they change).
    for cell in getattr(f, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _hash_value(value, h, depth + 1)


def _hash_value(v: Any, h: "hashlib._Hash", depth: int) -> None:
    if depth > 8:  # self-referencing closures
        h.update(b"...")
        return
    if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        h.update(hash_array(v).encode())
    elif isinstance(v, (bool, int, float, complex, str, bytes, type(None))):
        h.update(repr(v).encode())
    else:
        leaves, _ = jax.tree_util.tree_flatten(v)
        if len(leaves) == 1 and leaves[0] is v:  # not a container
            if callable(v):
                _hash_callable(v, h, depth)
            else:
                h.update(_ADDRESS.sub("", repr(v)).encode())
        else:
            _hash_tree(v, h, depth + 1)


def _hash_tree(tree: Any, h: "hashlib._Hash", depth: int) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    # The tree structure carries the static fields of equinox modules (widths, strides,
    # flags); object addresses in it differ between processes and are dropped.
    h.update(_ADDRESS.sub("", str(treedef)).encode())
    for leaf in leaves:
        _hash_value(leaf, h, depth + 1)


def hash_tree(tree: Any) -> str:
    """sha256 of a pytree (a layer, a kernel function): its structure with static
    fields, and the values of its leaves. Functions are hashed by name, bytecode,
    constants and captured values."""
    h = hashlib.sha256()
    _hash_tree(tree, h, 0)
    return h.hexdigest()
