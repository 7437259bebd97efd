"""`kernelalg compute ...`: a kernel job from the command line, for schedulers.

```
kernelalg compute --spec net.py:net --inputs x.npy [--inputs2 y.npy] --store out/ \
    (--block-size 256 | --memory-budget 8G) [--no-ntk] [--diagonal-spatial] [--quiet]
```

`--spec FILE.py:NAME` names a kernelalg layer (or a kernel function `fn(x1, x2)`)
defined in a Python file. Inputs are `.npy` files (batch axis first, channels last),
read memory-mapped. Float64 inputs switch on `jax_enable_x64`. Rerunning the same
command resumes the job from `--store`. With `--coordinator`, `--num-processes` and
`--process-id` the process joins a `jax.distributed` job; every process writes to
the same store. On success one JSON line goes to stdout: the store, the blocks of
the job and those this process computed, and the arrays' shapes.
"""

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """`"512M"`, `"8G"`, `"1.5GiB"`, `"1000000"` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 512M, 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def load_spec(spec: str):
    """`FILE.py:NAME` -> the object `NAME` defined in `FILE.py`."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise SystemExit(f"kernelalg: --spec must be FILE.py:NAME; got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"kernelalg: --spec file {file} not found")
    module_spec = importlib.util.spec_from_file_location(f"_kernelalg_spec_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise SystemExit(f"kernelalg: --spec file {file} defines no {name!r}")
    return getattr(module, name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernelalg", description="kernelalg command line")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compute", help="compute a kernel in blocks into a resumable store")
    c.add_argument("--spec", required=True, help="FILE.py:NAME, a kernelalg layer or kernel function")
    c.add_argument("--inputs", required=True, type=Path, help="x1 as a .npy file (batch first)")
    c.add_argument("--inputs2", type=Path, help="x2 as a .npy file; omitted: x1 with itself")
    c.add_argument("--store", required=True, type=Path, help="store directory (created or resumed)")
    size = c.add_mutually_exclusive_group(required=True)
    size.add_argument("--block-size", type=int, help="examples per block along each side")
    size.add_argument("--memory-budget", type=parse_bytes, help="bytes per block, e.g. 8G (layers only)")
    c.add_argument("--no-ntk", action="store_true", help="NNGP only")
    c.add_argument("--diagonal-spatial", action="store_true", help="only the spatial diagonal")
    c.add_argument("--devices", type=int, help="local devices to use (default: all)")
    c.add_argument("--cpu-devices", type=int, help="set jax_num_cpu_devices (CPU runs)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--coordinator", help="HOST:PORT of the jax.distributed coordinator")
    c.add_argument("--num-processes", type=int, help="processes of a jax.distributed job")
    c.add_argument("--process-id", type=int, help="this process's index in the job")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dist = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in dist) and any(v is None for v in dist):
        raise SystemExit("kernelalg: --coordinator, --num-processes and --process-id go together")
    x1 = np.load(args.inputs, mmap_mode="r", allow_pickle=False)
    x2 = None if args.inputs2 is None else np.load(args.inputs2, mmap_mode="r", allow_pickle=False)
    import jax

    # Configuration first: it must precede the first computation.
    if any(x is not None and x.dtype == np.float64 for x in (x1, x2)):
        jax.config.update("jax_enable_x64", True)
    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.coordinator is not None:
        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    import kernelalg
    from kernelalg.layers import AbstractLayer

    net = load_spec(args.spec)
    layer_options = {}
    if isinstance(net, AbstractLayer):
        layer_options = dict(compute_ntk=not args.no_ntk, diagonal_spatial=args.diagonal_spatial)
    elif args.no_ntk or args.diagonal_spatial:
        raise SystemExit("kernelalg: --no-ntk and --diagonal-spatial apply to layers only")
    result = kernelalg.compute(
        net,
        x1,
        x2,
        block_size=args.block_size,
        memory_budget=args.memory_budget,
        store=args.store,
        devices=args.devices,
        progress=not args.quiet,
        **layer_options,
    )
    summary = {
        "store": str(args.store),
        "blocks_total": result.blocks_total,
        "blocks_computed": result.blocks_computed,
        "block_size": result.block_size,
        "arrays": {k: list(v.shape) for k, v in result.arrays.items()},
    }
    print(json.dumps(summary), flush=True)
    if args.coordinator is not None:
        jax.distributed.shutdown()
    return 0
