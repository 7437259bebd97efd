"""Peak memory of the pooled CNN kernel (case (b) of bench_cnn.py), kernelalg vs NT.

    python benchmarks/mem_cnn.py [--n 8 16 32] [--dtype float32]

21 × [Conv(16, (3, 3), SAME), Relu] + GlobalAvgPool + Dense(1) on n × 8×8×3 inputs,
NNGP + NTK of x with itself: each library's plain call (`ka.kernel(net, x)`, NT's
jitted `kernel_fn(x, None, ("nngp", "ntk"))`), each in a fresh process; with
`--block-size B`, kernelalg's side is `ka.compute(net, x, block_size=B)` (blocks of
B × B examples, upper triangle only) on one device. Memory is
the process's peak resident set (`ru_maxrss`) after the call minus its level just
before it (imports done, inputs on the device), so compilation is included on both
sides. NT runs in `$NT_PYTHON` or `~/.cache/nt-ref/bin/python`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


HERE = Path(__file__).resolve().parent

_KA = """
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import kernelalg as ka
from kernelalg import layers as kl
x = jax.device_put(np.load(sys.argv[1]))
C = dict(W_std=1.4, b_std=0.05)
net = kl.Serial(*[m for _ in range(21) for m in (kl.Conv(16, (3, 3), padding="SAME", **C), kl.Relu())],
                kl.GlobalAvgPool(), kl.Dense(1, **C))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
block = int(sys.argv[3])
if block:
    k = ka.compute(net, x, block_size=block, devices=1, progress=False).value()
else:
    k = jax.block_until_ready(ka.kernel(net, x))
t = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[2], np.asarray(k.ntk))
print(json.dumps({"mib": (after - before) / 1024, "first_s": t}))
"""

_NT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import jax
import numpy as np
x_np = np.load(sys.argv[1])
jax.config.update("jax_enable_x64", x_np.dtype == np.float64)
from _nt_side import _import_nt
nt = _import_nt()
from neural_tangents import stax
x = jax.device_put(x_np)
C = dict(W_std=1.4, b_std=0.05)
layers = [m for _ in range(21) for m in (stax.Conv(16, (3, 3), padding="SAME", **C), stax.Relu())]
_, _, kernel_fn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, **C))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
k = jax.block_until_ready(kernel_fn(x, None, ("nngp", "ntk")))
t = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[2], np.asarray(k[1]))
print(json.dumps({"mib": (after - before) / 1024, "first_s": t}))
"""


def _run(python: str, code: str, args: list[str]) -> dict:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--block-size", type=int, default=0, help="kernelalg side through ka.compute in blocks (0: one call)"
    )
    args = parser.parse_args()
    nt_python = os.environ.get("NT_PYTHON", str(Path.home() / ".cache/nt-ref/bin/python"))
    have_nt = Path(nt_python).exists()
    how = f"ka.compute, block_size={args.block_size}" if args.block_size else "ka.kernel, one call"
    print(f"pooled CNN (b), NNGP + NTK, {args.dtype}; kernelalg: {how}; peak RSS above the pre-call level")
    print()
    print("| n | kernelalg MiB | NT MiB | ratio | kernelalg 1st s | NT 1st s | max rel diff (ntk) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            x = np.random.default_rng(0).standard_normal((n, 8, 8, 3)).astype(args.dtype)
            xp = os.path.join(tmp, "x.npy")
            np.save(xp, x)
            ka = _run(sys.executable, _KA, [xp, os.path.join(tmp, "ka.npy"), str(args.block_size)])
            if have_nt:
                ntr = _run(nt_python, _NT, [xp, os.path.join(tmp, "nt.npy"), str(HERE)])
                a, b = np.load(os.path.join(tmp, "ka.npy")), np.load(os.path.join(tmp, "nt.npy"))
                diff = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                print(
                    f"| {n} | {ka['mib']:.0f} | {ntr['mib']:.0f} | {ka['mib'] / max(ntr['mib'], 1):.2f} "
                    f"| {ka['first_s']:.1f} | {ntr['first_s']:.1f} | {diff:.1e} |"
                )
            else:
                print(f"| {n} | {ka['mib']:.0f} | — | — | {ka['first_s']:.1f} | — | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
